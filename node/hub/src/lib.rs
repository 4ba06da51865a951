//! The provincial hub (the province's one door to other lgsp instances:
//! the national platform, other provinces).
//!
//! A hub is an lgsp node in the `hub` role, run by the provincial IT
//! department, with three things a node does not do:
//! - [`outbound`]: province nodes call other instances' services (imported
//!   into the provincial catalog) through it; it checks the caller's signed
//!   record of on whose behalf and carries the call to the peer's hub, with
//!   a deadline and a circuit breaker per peer;
//! - [`inbound`]: on its outward listener, peers' hubs call the services
//!   this province exports to them; it checks the peer, the record, the
//!   export and the foreign consumer's grant, then calls the provider node
//!   with its own certificate plus the record, which the provider verifies
//!   again and logs;
//! - [`sync`]: it keeps the provincial catalog's imported services equal to
//!   what each peer exports to the province, within seconds, and probes
//!   every peer each round.
//!
//! Both carry query streams too ([`query`]): pages pass one at a time,
//! within the caller's deadline, under the same checks, limits and log.
//!
//! Around them: [`limiter`] (calls in flight and per second per peer, each
//! direction), [`health`] (each link's breaker, last success and failure,
//! latency and counts, in `/metrics`) and [`trust`] (the peers' CAs and
//! CRLs the outward listener trusts, followed from the catalog while the
//! hub runs).
//!
//! Federation peers, exports and imports are catalog records the
//! provincial admin changes (`lgsp hub peer|export|import`).
//!
//! The hub also carries province nodes' calls to external REST systems (a
//! ministry's HTTP/JSON API, or an X-Road security server): [`rest_out`]
//! maps the envelope to HTTP and back, [`rest_client`] speaks HTTPS with
//! the system's authentication (`lgsp hub rest`).

pub mod breaker;
pub mod health;
pub mod inbound;
pub mod limiter;
pub mod outbound;
pub mod peer_link;
pub mod query;
pub mod rest_client;
pub mod rest_in;
pub mod rest_out;
pub mod sync;
pub mod trust;
pub mod xroad;

use lgsp_certs::{ClientTrust, Credentials, Expected, Role, SpiffeId};
use lgsp_node::config::NodeConfig;
use lgsp_node::context::NodeContext;
use lgsp_node::server::{NodeError, NodeServer};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{FederationPeer, RecordKind};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tonic::transport::Channel;

/// What can stop a hub from starting.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The node underneath could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The certificate is not a hub's.
    #[error(
        "{0} is not a hub certificate; a hub needs one (lgsp ca issue --role hub --privileged)"
    )]
    NotAHub(String),
    /// The outward listener.
    #[error("cannot listen on {addr} for federation peers: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup for the outward listener.
    #[error(transparent)]
    Tls(#[from] lgsp_certs::CertError),
}

/// What the parts of the hub share.
#[derive(Debug)]
pub struct Hub {
    /// The node underneath: catalog copy, sharing log, credentials.
    pub ctx: Arc<NodeContext>,
    /// The hub's own identity.
    pub id: SpiffeId,
    /// `<agency>/<name>`, as services it carries name it (looked at per call).
    key: String,
    /// Connections and breakers per peer, by peer name.
    peers: Mutex<HashMap<String, PeerLink>>,
    /// Links to peers' hubs carrying calls (see [`peer_link`]), by peer name.
    pub(crate) peer_links: lgsp_node::link::Links,
    /// How long an outward call may take at most.
    pub call_timeout: Duration,
    /// Each peer's link health, by peer name.
    health: Mutex<HashMap<String, Arc<health::LinkHealth>>>,
    /// Limits on province nodes' calls to each peer.
    pub outward_limits: Arc<limiter::PeerLimits>,
    /// Limits on each peer's calls into the province.
    pub inward_limits: Arc<limiter::PeerLimits>,
    /// The peers' CRLs in force.
    pub trust: trust::PeerTrust,
    /// HTTPS toward REST systems.
    pub rest: rest_client::RestClient,
    /// Limits on province nodes' calls to each REST system.
    pub rest_limits: Arc<limiter::PeerLimits>,
    /// Each REST system's breaker, by system name.
    rest_breakers: Mutex<HashMap<String, Arc<breaker::Breaker>>>,
}

/// One outside link as `/metrics` and `lgsp hub status` show it.
#[derive(Debug)]
pub struct LinkStatus {
    /// The peer's name.
    pub peer: String,
    /// Its breaker (closed when nothing was called yet).
    pub state: breaker::State,
    /// Its counts and times.
    pub health: Arc<health::LinkHealth>,
}

/// A connection to a peer's hub, built from its catalog record (rebuilt
/// when the record changes), and its breaker.
#[derive(Debug)]
struct PeerLink {
    record: FederationPeer,
    channel: Channel,
    breaker: Arc<breaker::Breaker>,
    /// What the channel's handshakes check the peer's hub against, and the
    /// certificates it accepted.
    trust: Arc<ClientTrust>,
    /// The number of the peer's CRL in force when the link was made.
    crl_number: Option<u64>,
}

/// A connection to a peer's hub, as [`Hub::link`] gives it.
pub(crate) struct Link {
    pub(crate) channel: Channel,
    pub(crate) breaker: Arc<breaker::Breaker>,
    /// The trust its handshakes check the peer's hub against, which keeps
    /// the serials of the certificates the peer's hub presented.
    pub(crate) trust: Arc<ClientTrust>,
}

impl Hub {
    /// The key this hub has in services it carries: `<agency>/<name>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Federation peer `name`, as the catalog holds it.
    pub fn peer(&self, name: &str) -> Option<FederationPeer> {
        match self.ctx.cache.get(RecordKind::Peer, name)? {
            Value::Peer(p) if p.name == name => Some(p),
            _ => None,
        }
    }

    /// Every federation peer.
    pub fn peers(&self) -> Vec<FederationPeer> {
        self.ctx
            .cache
            .all_of(RecordKind::Peer)
            .into_iter()
            .filter_map(|r| match r.value {
                Some(Value::Peer(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// A connection to `peer`'s hub, which must present a hub certificate
    /// of the peer's trust domain issued by the peer's CA, and its breaker.
    pub(crate) fn link(&self, peer: &FederationPeer) -> Result<Link, tonic::Status> {
        let mut links = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        // The CRL is put in force after the record changes (`follow_peers`):
        // a link made in between is made again once it is.
        let crl_number = self.trust.crl_number_of(&peer.name);
        if let Some(l) = links.get(&peer.name)
            && &l.record == peer
            && l.crl_number == crl_number
        {
            return Ok(Link {
                channel: l.channel.clone(),
                breaker: l.breaker.clone(),
                trust: l.trust.clone(),
            });
        }
        let roots = self.ctx.obo_verifier.roots_of(peer).to_vec();
        if roots.is_empty() {
            return Err(tonic::Status::failed_precondition(format!(
                "federation peer {} has no CA certificate in the catalog",
                peer.name
            )));
        }
        let creds = Credentials {
            roots,
            ca_pem: peer.ca_pem.clone(),
            ..self.ctx.creds.clone()
        };
        let trust = ClientTrust::new(&creds).map_err(|e| tonic::Status::internal(e.to_string()))?;
        // The peer's hub is checked against the peer's CRL in force too.
        let crl = self.trust.crl_of(&peer.name);
        let crl_number = crl.as_ref().map(|(number, _)| *number);
        if let Some((_, der)) = crl {
            trust
                .set_crl(&der)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
        }
        let channel = lgsp_certs::server_identity::connect_lazy(
            &peer.hub_endpoint,
            &creds,
            trust.clone(),
            Expected::hub(&peer.trust_domain),
            |e| e.connect_timeout(Duration::from_secs(3)),
        )
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
        // The link opened on the old connection goes with it.
        self.peer_links.close(&peer.name);
        let breaker = links
            .get(&peer.name)
            .map(|l| l.breaker.clone())
            .unwrap_or_else(|| Arc::new(breaker::Breaker::new(3, Duration::from_secs(5))));
        links.insert(
            peer.name.clone(),
            PeerLink {
                record: peer.clone(),
                channel: channel.clone(),
                breaker: breaker.clone(),
                trust: trust.clone(),
                crl_number,
            },
        );
        Ok(Link {
            channel,
            breaker,
            trust,
        })
    }

    /// Whether agency `agency` of trust domain `trust_domain` (another
    /// instance's, or an outside REST system's) holds an active grant for
    /// `service_id`.
    pub fn granted(&self, service_id: &str, agency: &str, trust_domain: &str) -> bool {
        self.ctx
            .cache
            .with_grant(service_id, agency, |g| {
                g.consumer_trust_domain == trust_domain
                    && lgsp_node::catalog_cache::CatalogCache::grant_is_active(g)
            })
            .unwrap_or(false)
    }

    /// Serves `env` for agency `agency` of another instance (`trust_domain`),
    /// or of an outside REST system, once the hub checked its grant: the
    /// provider node answers ([`call_provider`](Self::call_provider)), with
    /// `signed` by `deadline`. A service this hub carries to a REST system
    /// (X-Road included) is called from here, as its node is this hub, after
    /// the checks that node makes (the grant, the service's status and
    /// maintenance windows).
    pub(crate) async fn serve_outside(
        &self,
        agency: &str,
        trust_domain: &str,
        env: &lgsp_proto::Envelope,
        signed: &lgsp_proto::SignedOnBehalfOf,
        deadline: lgsp_node::deadline::Deadline,
    ) -> Result<lgsp_node::context::Forwarded, tonic::Status> {
        let Some(route) = rest_out::route_of(self, &env.service_id) else {
            return self.call_provider(env, signed, deadline).await;
        };
        lgsp_node::access::authorize_agency(
            &self.ctx.cache,
            &self.ctx.config.agency,
            agency,
            trust_domain,
            &env.service_id,
            lgsp_registry::calendar::unix_now(),
        )?;
        rest_out::carry(self, agency, trust_domain, env, route, Some(deadline)).await
    }

    /// Calls the province node that serves `env`'s service, with the hub's
    /// certificate plus `signed`, the record of on whose behalf (which the
    /// provider verifies and logs), on the hub's link to that node, by
    /// `deadline`; the payload it answers, or its status.
    pub async fn call_provider(
        &self,
        env: &lgsp_proto::Envelope,
        signed: &lgsp_proto::SignedOnBehalfOf,
        deadline: lgsp_node::deadline::Deadline,
    ) -> Result<lgsp_node::context::Forwarded, tonic::Status> {
        let cache = &self.ctx.cache;
        let node = cache
            .with_service(&env.service_id, |s| (s.agency_code.clone(), s.node.clone()))
            .and_then(|(agency, node)| cache.node(&agency, &node))
            .ok_or_else(|| {
                tonic::Status::failed_precondition(format!(
                    "service {} has no registered node to serve it",
                    env.service_id
                ))
            })?;
        // On the hub's link to the provider node, as a node calls another.
        self.ctx
            .call_node(
                &node,
                Role::Node,
                env.clone(),
                Some(signed.clone()),
                Some(deadline),
                prost::Message::encoded_len(env),
            )
            .await
            .map(|r| lgsp_node::context::Forwarded {
                payload: r.payload,
                metadata: r.metadata,
                record_carried: false,
            })
    }

    /// The breaker of REST system `name` (3 consecutive failures open it,
    /// one probe after 5 s).
    pub fn rest_breaker(&self, name: &str) -> Arc<breaker::Breaker> {
        self.rest_breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(breaker::Breaker::new(3, Duration::from_secs(5))))
            .clone()
    }

    /// The health record of `peer`'s link.
    pub fn health_of(&self, peer: &str) -> Arc<health::LinkHealth> {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(peer.to_owned())
            .or_default()
            .clone()
    }

    /// Every peer and REST system of the catalog with its link's breaker
    /// and health, by name (a REST system's as `rest:<name>`). Those no
    /// longer in the catalog are forgotten here (their connection, breaker,
    /// health and limits), so what `/metrics` shows is as long as the list.
    pub fn links(&self) -> Vec<LinkStatus> {
        let mut peers = self.peers();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        let mut links = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        links.retain(|name, _| {
            let keep = names.contains(name);
            if !keep {
                self.peer_links.close(name);
            }
            keep
        });
        let mut states: Vec<_> = names
            .iter()
            .map(|n| {
                links
                    .get(n)
                    .map_or(breaker::State::Closed, |l| l.breaker.state())
            })
            .collect();
        drop(links);
        // The external REST systems the hub calls, each with its breaker.
        let mut systems: Vec<String> = rest_out::systems(self)
            .into_iter()
            .map(|s| s.name)
            .collect();
        systems.sort();
        self.rest_limits.retain(&systems);
        self.rest.retain(&systems);
        let mut breakers = self
            .rest_breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        breakers.retain(|name, _| systems.contains(name));
        states.extend(systems.iter().map(|n| {
            breakers
                .get(n)
                .map_or(breaker::State::Closed, |b| b.state())
        }));
        drop(breakers);
        names.extend(systems.iter().map(|s| rest_out::link_name(s)));
        // The outside REST systems that call in (no breaker: the hub does
        // not call them).
        let mut clients: Vec<String> = self
            .ctx
            .cache
            .rest_clients()
            .into_iter()
            .map(|c| format!("{}{}", rest_in::LINK_PREFIX, c.name))
            .collect();
        clients.sort();
        states.extend(clients.iter().map(|_| breaker::State::Closed));
        names.extend(clients);
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| names.contains(name));
        self.outward_limits.retain(&names);
        self.inward_limits.retain(&names);
        names
            .into_iter()
            .zip(states)
            .map(|(peer, state)| LinkStatus {
                health: self.health_of(&peer),
                peer,
                state,
            })
            .collect()
    }
}

/// How a hub runs, beyond its node's configuration.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Where peers' hubs connect.
    pub outward: SocketAddr,
    /// Connections open at once on the outward listener (whoever they are
    /// from, before the handshake says); more are closed on accept.
    pub max_peer_connections: usize,
    /// Where outside REST systems and X-Road security servers connect
    /// (HTTP/JSON over mTLS); none: no REST endpoint.
    pub rest: Option<SocketAddr>,
    /// Where the secrets of REST systems are (`<name>.api-key`,
    /// `<name>.client-secret`); none: systems needing one are refused.
    pub rest_secrets: Option<std::path::PathBuf>,
}

impl HubOptions {
    /// The defaults, listening on `outward`.
    pub fn new(outward: SocketAddr) -> Self {
        Self {
            outward,
            max_peer_connections: 1024,
            rest: None,
            rest_secrets: None,
        }
    }
}

/// A running hub.
#[derive(Debug)]
pub struct HubServer {
    /// The node underneath (its provider listener is the hub's inward side).
    pub node: NodeServer,
    /// Where peers' hubs reach this one, as bound.
    pub outward_addr: SocketAddr,
    /// Where outside REST systems reach this one, as bound, if it listens.
    pub rest_addr: Option<SocketAddr>,
    /// What the parts share.
    pub hub: Arc<Hub>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl HubServer {
    /// Starts a hub with the default options: see [`Self::start_with`].
    pub async fn start(config: NodeConfig, outward: SocketAddr) -> Result<Self, HubError> {
        Self::start_with(config, HubOptions::new(outward)).await
    }

    /// Starts a hub: the node described by `config` (with a hub
    /// certificate), its outward listener, the import sync, and the
    /// follower that keeps the listener's trust equal to the catalog's
    /// peers. Fails when the node cannot start, the certificate is not a
    /// hub's, or the outward address cannot be bound.
    pub async fn start_with(config: NodeConfig, options: HubOptions) -> Result<Self, HubError> {
        let outward = options.outward;
        let rest = options.rest.or(config.hub.rest_listen);
        let node = NodeServer::start(config).await?;
        let ctx = node.ctx.clone();
        let own = lgsp_certs::inspect::CertInfo::from_der(
            &ctx.creds.chain[0],
            std::path::Path::new("hub certificate"),
        )?;
        let id = own
            .spiffe_id
            .map_err(|why| HubError::NotAHub(why.to_string()))?;
        if id.role != Role::Hub {
            return Err(HubError::NotAHub(id.to_string()));
        }
        let hub = Arc::new(Hub {
            ctx: ctx.clone(),
            key: format!("{}/{}", id.agency, id.name),
            id,
            peers: Mutex::default(),
            peer_links: lgsp_node::link::Links::default(),
            call_timeout: Duration::from_secs(10),
            health: Mutex::default(),
            outward_limits: limiter::PeerLimits::new(limiter::Direction::Outward),
            inward_limits: limiter::PeerLimits::new(limiter::Direction::Inward),
            trust: trust::PeerTrust::default(),
            rest: rest_client::RestClient::new(
                ctx.creds.clone(),
                options.rest_secrets.clone(),
                ctx.config.limits.max_message_bytes,
            ),
            rest_limits: limiter::PeerLimits::new(limiter::Direction::Outward),
            rest_breakers: Mutex::default(),
        });
        let _ = ctx
            .forwarder
            .set(Arc::new(outbound::Outbound::new(hub.clone())));
        ctx.metrics
            .register_collector(Box::new(health::LinkCollector::new(Arc::downgrade(&hub))));
        // Until the catalog names a peer, the listener holds the province's
        // own CA (rustls needs one); `Inbound` refuses province certificates.
        let tls = lgsp_certs::tls::ServerTls::new(ctx.creds.clone())?;
        let listener = tokio::net::TcpListener::bind(outward)
            .await
            .map_err(|source| HubError::Listen {
                addr: outward,
                source,
            })?;
        let outward_addr = listener.local_addr().map_err(|source| HubError::Listen {
            addr: outward,
            source,
        })?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // The peers' CAs and CRLs, from the catalog as it changes.
        tokio::spawn(follow_peers(hub.clone(), tls.clone(), stopped.clone()));
        let inbound = inbound::Inbound::new(hub.clone());
        let peer_links = peer_link::PeerLinkServer::new(inbound.clone(), stopped.clone());
        let max = ctx.config.limits.max_message_bytes;
        let mut until = stopped.clone();
        // Admission: a bounded number of connections, each with a deadline
        // for its first bytes and an idle timeout; per-peer call limits
        // (`Inbound`) keep one certified peer from starving the others.
        let guard = lgsp_node::listener::Guard {
            max_connections: options.max_peer_connections.max(1),
            preface: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        }
        .within_file_limit();
        let incoming = tls.handshakes(lgsp_node::listener::accept(listener, guard));
        tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(
                    lgsp_proto::data_exchange_server::DataExchangeServer::new(inbound.clone())
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                )
                .add_service(lgsp_proto::federation_server::FederationServer::new(
                    inbound,
                ))
                .add_service(
                    lgsp_proto::node_link_server::NodeLinkServer::new(peer_links)
                        .max_decoding_message_size(max + lgsp_node::link::FRAMING)
                        .max_encoding_message_size(max + lgsp_node::link::FRAMING),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = until.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "outward listener failed");
            }
        });
        let rest_addr = match rest {
            Some(addr) => Some(rest_in::listen(hub.clone(), addr, guard, stopped.clone()).await?),
            None => None,
        };
        tokio::spawn(sync::run(hub.clone(), stopped));
        tracing::info!(%outward_addr, ?rest_addr, hub = %hub.id, "hub started");
        Ok(Self {
            node,
            outward_addr,
            rest_addr,
            hub,
            stop,
        })
    }

    /// Stops the outward listener, the sync and the node.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.node.shutdown().await;
    }
}

/// Keeps the outward listener's trust equal to the catalog's peers: their
/// CA certificates and their CRLs in force (see [`trust`]), rebuilt at
/// each catalog change that touches a peer, until `stopped` turns true.
async fn follow_peers(
    hub: Arc<Hub>,
    tls: Arc<lgsp_certs::tls::ServerTls>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = hub.ctx.cache.subscribe();
    let mut applied: Option<Vec<FederationPeer>> = None;
    loop {
        let mut peers = hub.peers();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        if applied.as_ref() != Some(&peers) {
            for change in hub.trust.update(&peers) {
                match change {
                    trust::CrlChange::Installed { peer, number } => {
                        tracing::info!(%peer, crl.number = number, "federation peer's CRL in force");
                    }
                    trust::CrlChange::Refused { peer, why } => {
                        tracing::warn!(%peer, %why, "federation peer's CRL refused; the last good one stays");
                    }
                }
            }
            let (mut roots, crls) = hub.trust.listener_trust(&peers);
            if roots.is_empty() {
                roots = hub.ctx.creds.roots.clone();
            }
            match tls.set_trust(roots, crls) {
                Ok(()) => {
                    tracing::info!(
                        peers = peers.len(),
                        "outward listener trusts the catalog's federation peers"
                    );
                    applied = Some(peers);
                }
                Err(error) => {
                    tracing::warn!(%error, "a federation peer's CA or CRL is unusable; the listener keeps its trust");
                    applied = Some(peers);
                }
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

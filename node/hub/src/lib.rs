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
//!   what each peer exports to the province, within seconds.
//!
//! Federation peers, exports and imports are catalog records the
//! provincial admin changes (`lgsp hub peer|export|import`).

pub mod breaker;
pub mod inbound;
pub mod outbound;
pub mod sync;

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
    /// How long an outward call may take at most.
    pub call_timeout: Duration,
}

/// A connection to a peer's hub, built from its catalog record (rebuilt
/// when the record changes), and its breaker.
#[derive(Debug)]
struct PeerLink {
    record: FederationPeer,
    channel: Channel,
    breaker: Arc<breaker::Breaker>,
}

impl Hub {
    /// The key this hub has in services it carries: `<agency>/<name>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Federation peer `name`, as the catalog holds it.
    pub fn peer(&self, name: &str) -> Option<FederationPeer> {
        self.ctx
            .cache
            .all_of(RecordKind::Peer)
            .into_iter()
            .find_map(|r| match r.value {
                Some(Value::Peer(p)) if p.name == name => Some(p),
                _ => None,
            })
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
    fn link(
        &self,
        peer: &FederationPeer,
    ) -> Result<(Channel, Arc<breaker::Breaker>), tonic::Status> {
        let mut links = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = links.get(&peer.name)
            && &l.record == peer
        {
            return Ok((l.channel.clone(), l.breaker.clone()));
        }
        let roots = lgsp_node::obo::peer_roots(peer);
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
        let channel = lgsp_certs::server_identity::connect_lazy(
            &peer.hub_endpoint,
            &creds,
            trust,
            Expected::hub(&peer.trust_domain),
            |e| e.connect_timeout(Duration::from_secs(3)),
        )
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
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
            },
        );
        Ok((channel, breaker))
    }

    /// Each peer's breaker state, for `lgsp hub status` and the log.
    pub fn health(&self) -> Vec<(String, breaker::State)> {
        let links = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = links
            .iter()
            .map(|(name, l)| (name.clone(), l.breaker.state()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// A running hub.
#[derive(Debug)]
pub struct HubServer {
    /// The node underneath (its provider listener is the hub's inward side).
    pub node: NodeServer,
    /// Where peers' hubs reach this one, as bound.
    pub outward_addr: SocketAddr,
    /// What the parts share.
    pub hub: Arc<Hub>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl HubServer {
    /// Starts a hub: the node described by `config` (with a hub
    /// certificate), its outward listener on `outward`, and the import sync.
    pub async fn start(config: NodeConfig, outward: SocketAddr) -> Result<Self, HubError> {
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
            call_timeout: Duration::from_secs(10),
        });
        let _ = ctx
            .forwarder
            .set(Arc::new(outbound::Outbound::new(hub.clone())));
        // The peers' CAs, from the catalog once the node has its copy: the
        // outward listener accepts their hubs' certificates.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hub.peers().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut roots: Vec<_> = hub
            .peers()
            .iter()
            .flat_map(lgsp_node::obo::peer_roots)
            .collect();
        if roots.is_empty() {
            tracing::warn!(
                "no federation peer in the catalog yet: the outward listener accepts no one until the hub restarts after `lgsp hub peer add`"
            );
            roots = ctx.creds.roots.clone();
        }
        let tls = lgsp_certs::tls::ServerTls::new(Credentials {
            roots,
            ..ctx.creds.clone()
        })?;
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
        let inbound = inbound::Inbound::new(hub.clone());
        let max = ctx.config.limits.max_message_bytes;
        let mut until = stopped.clone();
        let incoming = tls.incoming(listener);
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
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = until.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "outward listener failed");
            }
        });
        tokio::spawn(sync::run(hub.clone(), stopped));
        tracing::info!(%outward_addr, hub = %hub.id, "hub started");
        Ok(Self {
            node,
            outward_addr,
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

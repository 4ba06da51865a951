//! What the provider and consumer sides of a node share: its configuration,
//! its copy of the catalog, its datasets and sharing log, its limits and
//! metrics, and its pooled connections to other nodes and to the agency's
//! own systems.

use crate::backend::HttpBackend;
use crate::catalog_cache::CatalogCache;
use crate::config::NodeConfig;
use crate::deadline::Deadline;
use crate::limits::Limits;
use crate::link::{Links, MAX_LINK_ENVELOPE, Sent};
use crate::metrics::Metrics;
use lgsp_certs::{AgencyCode, ClientTrust, Credentials, Expected, Role};
use lgsp_dataset::DatasetCache;
use lgsp_proto::NodeRecord;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_sharing_log::SharingLog;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;
use tonic::transport::Channel;

/// Everything both sides share.
pub struct NodeContext {
    /// The node's configuration, as loaded from `node.toml`.
    pub config: NodeConfig,
    /// The node's copy of the catalog (services, nodes, grants), kept
    /// current by the registry watch.
    pub cache: Arc<CatalogCache>,
    /// The datasets this node holds, for `dataset` services.
    pub datasets: DatasetCache,
    /// The sharing log every exchange is recorded in, on both sides.
    pub log: Arc<SharingLog>,
    /// The client for the agency's HTTP backends.
    pub http: HttpBackend,
    /// The provider side's limits per consumer agency.
    pub limits: Arc<Limits>,
    /// The node's certificate and private key, presented to other nodes.
    pub creds: Credentials,
    /// What the node trusts in other nodes' certificates: the provincial
    /// CA and the CRL in force (kept current from the catalog).
    pub trust: Arc<ClientTrust>,
    /// The province's trust domain, from the node's own certificate.
    pub trust_domain: String,
    /// The serial of the node's own certificate (lower-case hex), named
    /// when a provider refuses it.
    pub serial: String,
    /// The node's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Pooled HTTP/2 connections to other nodes (mTLS), by [`route_key`].
    node_channels: Mutex<HashMap<String, Channel>>,
    /// Pooled plain HTTP/2 connections to the agency's gRPC backends, by URL.
    backend_channels: Mutex<HashMap<String, Channel>>,
    /// Links to other nodes, carrying unary calls (see [`crate::link`]).
    pub(crate) links: Links,
    /// What carries calls this node takes for services it does not serve
    /// itself: a hub's imported services (set once by the hub).
    pub forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
    /// On-behalf-of records already used (a provider called through a hub).
    pub replays: crate::obo::ReplayGuard,
    /// Federation peers' CRLs in force for on-behalf-of records.
    pub peer_crls: crate::peer_crl::PeerCrls,
    /// Outside REST systems' CRLs in force (their `RestClient` records),
    /// for the hub's REST endpoint and for records made for them.
    pub rest_client_crls: crate::peer_crl::PeerCrls,
    /// Verifies on-behalf-of records, remembering checked certificates.
    pub obo_verifier: crate::obo::Verifier,
    /// This node's key for signing on-behalf-of records, parsed once.
    obo_signer: std::sync::OnceLock<Result<crate::obo::Signer, crate::obo::OboError>>,
}

/// Carries calls for services a node takes but does not serve itself: the
/// province hub's imported services, called across to another instance.
#[tonic::async_trait]
pub trait Forwarder: Send + Sync + std::fmt::Debug {
    /// Whether this node carries calls to `service_id` elsewhere.
    fn carries(&self, service_id: &str) -> bool;
    /// Carries `envelope` from `caller`, with the record of on whose behalf
    /// (`obo`), and returns the answer.
    async fn forward(
        &self,
        caller: &lgsp_certs::Peer,
        envelope: &lgsp_proto::Envelope,
        obo: Option<&lgsp_proto::SignedOnBehalfOf>,
    ) -> Result<Forwarded, tonic::Status>;
    /// Opens `query` from `caller` elsewhere, with the record of on whose
    /// behalf (`obo`), within `deadline`; the pages as they come. A stream
    /// opened means `obo` was checked (the caller's own, its signature, for
    /// this query) and carried on: the log entry keeps it. A forwarder that
    /// carries no query streams refuses, saying so.
    async fn forward_query(
        &self,
        caller: &lgsp_certs::Peer,
        query: lgsp_proto::QueryRequest,
        obo: Option<&lgsp_proto::SignedOnBehalfOf>,
        deadline: Option<crate::deadline::Deadline>,
    ) -> Result<crate::provider::PageStream, tonic::Status> {
        let _ = (caller, obo, deadline);
        Err(tonic::Status::unimplemented(format!(
            "this node carries no query streams for {}; call it with `get`",
            query.service_id
        )))
    }
}

/// The answer to a call a [`Forwarder`] carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The payload.
    pub payload: Vec<u8>,
    /// What the far side said of the exchange that the caller gets back
    /// (`CallResponse.metadata`, and the node's gRPC response metadata) and
    /// the sharing log keeps: an X-Road security server's `x-road-id` and
    /// `x-road-request-id`.
    pub metadata: std::collections::HashMap<String, String>,
    /// The caller's record of on whose behalf it called was checked (its
    /// own certificate, for this request, fresh, not replayed) and carried
    /// on to another instance: the log entry keeps it.
    pub record_carried: bool,
}

impl From<Vec<u8>> for Forwarded {
    fn from(payload: Vec<u8>) -> Self {
        Self {
            payload,
            metadata: Default::default(),
            record_carried: false,
        }
    }
}

// By hand, so that logging the context never prints the node's private key
// (`Credentials` prints its PEM).
impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .field("datasets", &self.datasets)
            .field("log", &self.log)
            .field("http", &self.http)
            .field("limits", &self.limits)
            .field("metrics", &self.metrics)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl NodeContext {
    /// The shared context of a node, its limits and HTTP client sized from
    /// `config.limits`, with no connection to another node open yet.
    // The parts are built by the server one by one; a struct of them would
    // be this struct again.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        cache: Arc<CatalogCache>,
        datasets: DatasetCache,
        log: Arc<SharingLog>,
        creds: Credentials,
        trust: Arc<ClientTrust>,
        trust_domain: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let limits = Limits::new(
            config.limits.max_concurrent_per_consumer,
            config.limits.rate_per_consumer,
        );
        let http = HttpBackend::new(config.limits.max_message_bytes);
        let serial = creds
            .chain
            .first()
            .and_then(|der| {
                lgsp_certs::inspect::CertInfo::from_der(der, std::path::Path::new("own")).ok()
            })
            .map_or_else(|| "unknown".to_owned(), |info| info.serial);
        Arc::new(Self {
            config,
            cache,
            datasets,
            log,
            http,
            limits,
            creds,
            trust,
            trust_domain,
            serial,
            metrics,
            node_channels: Mutex::default(),
            backend_channels: Mutex::default(),
            links: Links::default(),
            forwarder: std::sync::OnceLock::new(),
            replays: crate::obo::ReplayGuard::default(),
            obo_verifier: crate::obo::Verifier::default(),
            peer_crls: crate::peer_crl::PeerCrls::default(),
            rest_client_crls: crate::peer_crl::PeerCrls::default(),
            obo_signer: std::sync::OnceLock::new(),
        })
    }

    /// This node's signer of on-behalf-of records.
    pub fn obo_signer(&self) -> Result<&crate::obo::Signer, crate::obo::OboError> {
        self.obo_signer
            .get_or_init(|| crate::obo::Signer::new(&self.creds))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A pooled HTTP/2 connection to the provider listener of `node`, which
    /// accepts only that node: its SPIFFE ID (agency, role, name) and the
    /// certificate fingerprint the catalog holds for it, not revoked. The
    /// address the catalog gives is where to dial, never who answers.
    /// The server is of `role`: a node, or the province's hub (which
    /// carries calls to other instances' services).
    pub fn channel_to(&self, node: &NodeRecord, role: Role) -> Result<Channel, Status> {
        let mut pool = self
            .node_channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The role expected is part of the key: a channel checked for a node
        // must not be reused for the hub of the same record, nor the reverse.
        let key = match role {
            Role::Node => route_key(node),
            other => format!("{other}:{}", route_key(node)),
        };
        if let Some(channel) = pool.get(&key) {
            return Ok(channel.clone());
        }
        let agency = AgencyCode::new(&node.agency_code).map_err(|e| {
            Status::failed_precondition(format!(
                "the catalog's node record {}/{} is unusable: {e}",
                node.agency_code, node.name
            ))
        })?;
        let expected = Expected {
            role,
            ..Expected::node(
                &self.trust_domain,
                agency,
                &node.name,
                Some(&node.cert_sha256),
            )
        };
        let channel = lgsp_certs::server_identity::connect_lazy(
            &node.endpoint,
            &self.creds,
            self.trust.clone(),
            expected,
            // A provider that vanished without closing the connection
            // (host down, cable cut) is found out within half a minute,
            // and its link closed, instead of at TCP's timeout.
            |e| {
                e.http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
            },
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        pool.insert(key, channel.clone());
        Ok(channel)
    }

    /// Calls `node` (a server of `role`: a provider node, or the province's
    /// hub) with `env`, and `obo` for a call across instances: on the link
    /// to it when the envelope is small (`size` is its encoded size), as a
    /// unary call when it is large or the server has no link service.
    /// `deadline` bounds the call.
    pub async fn call_node(
        &self,
        node: &NodeRecord,
        role: Role,
        env: lgsp_proto::Envelope,
        obo: Option<lgsp_proto::SignedOnBehalfOf>,
        deadline: Option<Deadline>,
        size: usize,
    ) -> Result<lgsp_proto::CallResponse, Status> {
        let max = self.config.limits.max_message_bytes;
        let (env, obo) = if size <= MAX_LINK_ENVELOPE {
            // The role is part of the key, as for the pooled channels.
            let key = match role {
                Role::Node => route_key(node),
                other => format!("{other}:{}", route_key(node)),
            };
            let sent = self
                .links
                .call(
                    &key,
                    || self.channel_to(node, role),
                    max,
                    env,
                    obo.clone(),
                    deadline,
                )
                .await;
            match sent {
                Sent::Done(result) => return result,
                Sent::Unsupported(env) => (env, obo),
            }
        } else {
            (env, obo)
        };
        let mut request = tonic::Request::new(env);
        if let Some(deadline) = deadline {
            request.set_timeout(deadline.left());
        }
        if let Some(signed) = &obo {
            crate::obo::to_metadata(request.metadata_mut(), signed);
        }
        DataExchangeClient::new(self.channel_to(node, role)?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .call(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Drops the pooled connections and node links to other nodes, so that
    /// every later call makes a new handshake: after a CRL change, a
    /// provider revoked since a connection opened is refused from its next
    /// call. Calls in flight finish on their old connection.
    pub fn forget_connections(&self) {
        self.node_channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.links.close_all();
    }

    /// A pooled plain HTTP/2 connection to one of the agency's own gRPC systems.
    pub(crate) fn backend_channel(&self, url: &str) -> Result<Channel, Status> {
        pooled(&self.backend_channels, url, || {
            tonic::transport::Endpoint::from_shared(url.to_owned())
                .map_err(|e| Status::internal(format!("backend URL {url:?}: {e}")))
        })
    }
}

/// What tells connections to provider nodes apart: who the node is, where
/// it is, and which certificate the catalog holds for it. A node that moves
/// or gets a new certificate gets new connections (and a new link).
pub(crate) fn route_key(node: &NodeRecord) -> String {
    format!(
        "{}/{}@{}#{}",
        node.agency_code, node.name, node.endpoint, node.cert_sha256
    )
}

/// The channel for `key` in `pool`, connected lazily from `endpoint` the
/// first time.
fn pooled(
    pool: &Mutex<HashMap<String, Channel>>,
    key: &str,
    endpoint: impl FnOnce() -> Result<tonic::transport::Endpoint, Status>,
) -> Result<Channel, Status> {
    let mut pool = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(channel) = pool.get(key) {
        return Ok(channel.clone());
    }
    let channel = endpoint()?.connect_lazy();
    pool.insert(key.to_owned(), channel.clone());
    Ok(channel)
}

//! What the provider and consumer sides of a node share: its configuration,
//! its copy of the catalog, its datasets and sharing log, its limits and
//! metrics, and its pooled connections to other nodes and to the agency's
//! own systems.

use crate::backend::HttpBackend;
use crate::catalog_cache::CatalogCache;
use crate::config::NodeConfig;
use crate::limits::Limits;
use crate::link::Links;
use crate::metrics::Metrics;
use lgsp_certs::Credentials;
use lgsp_dataset::DatasetCache;
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
    /// The node's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Pooled HTTP/2 connections to other nodes (mTLS), by endpoint.
    node_channels: Mutex<HashMap<String, Channel>>,
    /// Pooled plain HTTP/2 connections to the agency's gRPC backends, by URL.
    backend_channels: Mutex<HashMap<String, Channel>>,
    /// Links to other nodes, carrying unary calls (see [`crate::link`]).
    pub(crate) links: Links,
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
    pub fn new(
        config: NodeConfig,
        cache: Arc<CatalogCache>,
        datasets: DatasetCache,
        log: Arc<SharingLog>,
        creds: Credentials,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let limits = Limits::new(
            config.limits.max_concurrent_per_consumer,
            config.limits.rate_per_consumer,
        );
        let http = HttpBackend::new(config.limits.max_message_bytes);
        Arc::new(Self {
            config,
            cache,
            datasets,
            log,
            http,
            limits,
            creds,
            metrics,
            node_channels: Mutex::default(),
            backend_channels: Mutex::default(),
            links: Links::default(),
        })
    }

    /// A pooled HTTP/2 connection to another node's provider listener.
    pub(crate) fn channel(&self, endpoint: &str) -> Result<Channel, Status> {
        pooled(&self.node_channels, endpoint, || {
            lgsp_certs::tls::client_endpoint(endpoint, &self.creds, None)
                .map_err(|e| Status::internal(e.to_string()))
                // A provider that vanished without closing the connection
                // (host down, cable cut) is found out within half a minute,
                // and its link closed, instead of at TCP's timeout.
                .map(|e| {
                    e.http2_keep_alive_interval(Duration::from_secs(20))
                        .keep_alive_timeout(Duration::from_secs(10))
                        .keep_alive_while_idle(true)
                })
        })
    }

    /// A pooled plain HTTP/2 connection to one of the agency's own gRPC systems.
    pub(crate) fn backend_channel(&self, url: &str) -> Result<Channel, Status> {
        pooled(&self.backend_channels, url, || {
            tonic::transport::Endpoint::from_shared(url.to_owned())
                .map_err(|e| Status::internal(format!("backend URL {url:?}: {e}")))
        })
    }
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

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
#[derive(Debug)]
pub struct NodeContext {
    pub config: NodeConfig,
    pub cache: Arc<CatalogCache>,
    pub datasets: DatasetCache,
    pub log: Arc<SharingLog>,
    pub http: HttpBackend,
    pub limits: Arc<Limits>,
    pub creds: Credentials,
    pub metrics: Arc<Metrics>,
    /// Pooled HTTP/2 connections to other nodes (mTLS), by endpoint.
    node_channels: Mutex<HashMap<String, Channel>>,
    /// Pooled plain HTTP/2 connections to the agency's gRPC backends, by URL.
    backend_channels: Mutex<HashMap<String, Channel>>,
    /// Links to other nodes, carrying unary calls (see [`crate::link`]).
    pub(crate) links: Links,
}

impl NodeContext {
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

//! Nodes run inside this process on 127.0.0.1 (`lgsp demo`, `lgsp bench`).

use lgsp_certs::TlsFiles;
use lgsp_node::config::{ConsumerConfig, LimitsConfig, NodeConfig, ProviderConfig, ServiceConfig};
use std::net::SocketAddr;
use std::path::Path;

/// The configuration of a node or hub in `dir` with its listeners on free
/// ports of 127.0.0.1, no metrics listener, and `limits`.
pub(crate) fn node_config(
    dir: &Path,
    agency: &str,
    name: &str,
    registry: &[String],
    tls: TlsFiles,
    services: Vec<ServiceConfig>,
    limits: LimitsConfig,
) -> NodeConfig {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    NodeConfig {
        agency: agency.to_owned(),
        name: name.to_owned(),
        data_dir: dir.join("data"),
        registry: registry.to_vec(),
        tls,
        provider: ProviderConfig {
            listen: any,
            advertise: String::new(),
        },
        consumer: ConsumerConfig::plain(any),
        metrics_listen: None,
        limits,
        audit: Default::default(),
        hub: Default::default(),
        services,
    }
}

//! `lgsp hub`: the provincial hub, the province's door to other lgsp
//! instances (the national platform, other provinces). Run it, and manage
//! its federation peers, exports and imports (provincial admin).

use super::{RegistryArgs, records_of};
use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{FederationPeer, RecordKind};
use lgsp_registry::Catalog;
use lgsp_registry::ServiceId;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum HubCommand {
    /// Run the hub: a node with a hub certificate (its provider listener
    /// takes province nodes' calls to imported services) plus an outward
    /// listener for federation peers' hubs.
    ///
    /// Example: lgsp hub start --config /etc/lgsp/hub.toml --outward-listen 0.0.0.0:7501
    Start {
        /// The hub's node.toml (made by `lgsp node init`, with a hub certificate).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where peers' hubs connect (mTLS, their CAs from the catalog).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7501")]
        outward_listen: SocketAddr,
    },
    /// Federation peers: other lgsp instances and their CAs (provincial admin).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Offer a province service to a peer.
    ///
    /// Example: lgsp hub export --service 000.00.12.H62/ho-tich --peer ndxp
    Export {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The province service.
        #[arg(long)]
        service: ServiceId,
        /// The peer's name.
        #[arg(long)]
        peer: String,
    },
    /// Stop offering a service to a peer; its hub drops it within seconds.
    ///
    /// Example: lgsp hub unexport --service 000.00.12.H62/ho-tich --peer ndxp
    Unexport {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The province service.
        #[arg(long)]
        service: ServiceId,
        /// The peer's name.
        #[arg(long)]
        peer: String,
    },
    /// Take a peer's service into the provincial catalog (once the peer
    /// exports it, it appears within seconds as a service of the peer).
    ///
    /// Example: lgsp hub import --peer ndxp --service G01.00.01/dan-cu
    Import {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The peer's name.
        #[arg(long)]
        peer: String,
        /// The service's id in the peer's catalog.
        #[arg(long)]
        service: ServiceId,
    },
    /// Stop importing a peer's service; it leaves the catalog within seconds.
    ///
    /// Example: lgsp hub unimport --peer ndxp --service G01.00.01/dan-cu
    Unimport {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The peer's name.
        #[arg(long)]
        peer: String,
        /// The service's id in the peer's catalog.
        #[arg(long)]
        service: ServiceId,
    },
    /// Peers, exports and imports, and whether each import is in the catalog.
    ///
    /// Example: lgsp hub status
    Status {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum PeerCommand {
    /// Add (or update) a peer: its trust domain, CA and hub address.
    ///
    /// Example: lgsp hub peer add --name ndxp --trust-domain ndxp.gov.vn --ca ndxp-ca.pem
    /// --endpoint hub.ndxp.gov.vn:7501
    Add {
        #[command(flatten)]
        registry: RegistryArgs,
        /// A short name for the peer.
        #[arg(long)]
        name: String,
        /// The peer's trust domain (its SPIFFE IDs' host).
        #[arg(long)]
        trust_domain: String,
        /// The peer's CA certificate(s), PEM.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// host:port of the peer hub's outward listener.
        #[arg(long)]
        endpoint: String,
    },
    /// List the peers.
    ///
    /// Example: lgsp hub peer list
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
}

pub(super) fn run(cmd: HubCommand) -> Result<()> {
    if let HubCommand::Start {
        config,
        outward_listen,
    } = cmd
    {
        let config = lgsp_node::config::NodeConfig::load(&config)?;
        let rt = super::runtime()?;
        return rt.block_on(async {
            let mut hub = lgsp_hub::HubServer::start(config, outward_listen).await?;
            println!(
                "hub taking province nodes' calls on {} (mTLS) and federation peers' on {}",
                hub.node.provider_addr, hub.outward_addr
            );
            // As a node: another live instance holding its name stops it.
            let failed = tokio::select! {
                signal = crate::signal::stop_signal() => {
                    tracing::info!("{}; shutting down", signal?);
                    None
                }
                error = hub.node.failure() => Some(error),
            };
            hub.shutdown().await;
            match failed {
                None => Ok(()),
                Some(error) => Err(error.into()),
            }
        });
    }
    let rt = super::runtime()?;
    rt.block_on(async {
        match cmd {
            HubCommand::Start { .. } => unreachable!("handled above"),
            HubCommand::Peer(PeerCommand::Add {
                registry,
                name,
                trust_domain,
                ca,
                endpoint,
            }) => {
                let ca_pem = std::fs::read_to_string(&ca)
                    .with_context(|| format!("cannot read {}", ca.display()))?;
                let rev = Catalog::new(registry.client()?)
                    .add_peer(FederationPeer {
                        name: name.clone(),
                        trust_domain,
                        ca_pem,
                        hub_endpoint: endpoint,
                    })
                    .await?;
                println!("Federation peer {name} set (revision {rev})");
            }
            HubCommand::Peer(PeerCommand::List { registry, output }) => {
                let mut listing = super::output::Listing::new("federation_peers");
                for v in records_of(&registry.client()?, RecordKind::Peer, Some).await? {
                    if let Value::Peer(p) = v {
                        listing.row(
                            format!("{:<16} {:<32} {}", p.name, p.trust_domain, p.hub_endpoint),
                            serde_json::json!({
                                "name": p.name,
                                "trust_domain": p.trust_domain,
                                "hub_endpoint": p.hub_endpoint,
                            }),
                        );
                    }
                }
                output.print(&listing)?;
            }
            HubCommand::Export {
                registry,
                service,
                peer,
            } => {
                let rev = Catalog::new(registry.client()?)
                    .export(&service, &peer)
                    .await?;
                println!("Exported {service} to {peer} (revision {rev})");
            }
            HubCommand::Unexport {
                registry,
                service,
                peer,
            } => {
                let rev = Catalog::new(registry.client()?)
                    .unexport(&service, &peer)
                    .await?;
                println!("No longer exported {service} to {peer} (revision {rev})");
            }
            HubCommand::Import {
                registry,
                peer,
                service,
            } => {
                let rev = Catalog::new(registry.client()?)
                    .import(&peer, &service)
                    .await?;
                println!(
                    "Importing {service} from {peer} (revision {rev}); it appears in the catalog once the peer exports it"
                );
            }
            HubCommand::Unimport {
                registry,
                peer,
                service,
            } => {
                let rev = Catalog::new(registry.client()?)
                    .unimport(&peer, &service)
                    .await?;
                println!("No longer importing {service} from {peer} (revision {rev})");
            }
            HubCommand::Status { registry, output } => {
                let client = registry.client()?;
                // Items of three types ("peer", "export", "import"); the text
                // shows them in sections.
                let mut listing = super::output::Listing::new("hub_status");
                let mut text = String::from("Peers:");
                for v in records_of(&client, RecordKind::Peer, Some).await? {
                    if let Value::Peer(p) = v {
                        text.push_str(&format!(
                            "\n  {:<16} {:<32} {}",
                            p.name, p.trust_domain, p.hub_endpoint
                        ));
                        listing.item(serde_json::json!({
                            "type": "peer",
                            "name": p.name,
                            "trust_domain": p.trust_domain,
                            "hub_endpoint": p.hub_endpoint,
                        }));
                    }
                }
                text.push_str("\nExports:");
                for v in records_of(&client, RecordKind::Export, Some).await? {
                    if let Value::Export(e) = v {
                        text.push_str(&format!("\n  {:<40} to {}", e.service_id, e.peer));
                        listing.item(serde_json::json!({
                            "type": "export",
                            "service": e.service_id,
                            "peer": e.peer,
                        }));
                    }
                }
                let services = records_of(&client, RecordKind::Service, Some).await?;
                text.push_str("\nImports:");
                for v in records_of(&client, RecordKind::Import, Some).await? {
                    if let Value::Import(i) = v {
                        let present = services.iter().any(
                            |s| matches!(s, Value::Service(s) if s.id == i.service_id && s.origin == i.peer),
                        );
                        text.push_str(&format!(
                            "\n  {:<40} from {:<16} {}",
                            i.service_id,
                            i.peer,
                            if present {
                                "in the catalog"
                            } else {
                                "not (yet) exported by the peer"
                            }
                        ));
                        listing.item(serde_json::json!({
                            "type": "import",
                            "service": i.service_id,
                            "peer": i.peer,
                            "in_catalog": present,
                        }));
                    }
                }
                output.print(&listing.header(text))?;
            }
        }
        Ok::<(), anyhow::Error>(())
    })
    .map_err(|e| anyhow!(e))
}

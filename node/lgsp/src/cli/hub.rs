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
        /// Where peers' hubs connect (mTLS, their CAs and CRLs from the
        /// catalog, followed while the hub runs).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7501")]
        outward_listen: SocketAddr,
        /// Connections open at once on the outward listener; more are
        /// closed on accept (calls per peer are limited by the peer record).
        #[arg(long, value_name = "N", default_value_t = 1024)]
        max_peer_connections: usize,
        /// Where outside REST systems and X-Road security servers call
        /// province services (HTTP/JSON over mTLS, see `lgsp hub
        /// rest-client`); overrides `rest_listen` in the config's [hub]
        /// table. None by default.
        #[arg(long, value_name = "ADDR")]
        rest_listen: Option<SocketAddr>,
        /// The directory of REST systems' secrets (<name>.api-key,
        /// <name>.client-secret), read at each use; see `lgsp hub rest add`.
        #[arg(long, value_name = "DIR")]
        rest_secrets: Option<PathBuf>,
    },
    /// Outside REST systems (and X-Road clients behind a security server)
    /// that call province services through the hub's REST endpoint
    /// (provincial admin).
    #[command(subcommand)]
    RestClient(RestClientCommand),
    /// External REST systems (ministry HTTP/JSON APIs, X-Road security
    /// servers) and the province services carried to them (provincial admin).
    #[command(subcommand)]
    Rest(super::hub_rest::RestCommand),
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
    /// Peers, exports and imports, and whether each import is in the
    /// catalog; with --hub-metrics, the health of each outside link as the
    /// running hub sees it (circuit, last success and failure, latency,
    /// calls and refusals).
    ///
    /// Example: lgsp hub status --hub-metrics 127.0.0.1:9301
    Status {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The running hub's metrics address (`metrics_listen` in its
        /// node.toml), to show its links' health.
        #[arg(long, value_name = "ADDR")]
        hub_metrics: Option<String>,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RestClientCommand {
    /// Add (or replace) an outside REST system: the CA its client
    /// certificates chain to, the outside agency it acts for (registered
    /// with `lgsp agency register --trust-domain`), and the province
    /// services offered to it. Its agency still needs a grant per service.
    ///
    /// Example: lgsp hub rest-client add --name btp-hotich --ca btp-ca.pem --trust-domain
    /// moj.gov.vn --agency 000.00.07.G01 --service 000.00.12.H62/ho-tich
    Add {
        #[command(flatten)]
        registry: RegistryArgs,
        /// A short name for the system.
        #[arg(long)]
        name: String,
        /// The CA certificate(s), PEM, its client certificates chain to (for
        /// an X-Road client: those of its security server).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// The trust domain of the agency it acts for.
        #[arg(long)]
        trust_domain: String,
        /// The agency it acts for.
        #[arg(long, value_name = "CODE")]
        agency: String,
        /// A province service offered to it (repeat for several).
        #[arg(long = "service", value_name = "SERVICE_ID")]
        services: Vec<ServiceId>,
        /// Its X-Road identifier, INSTANCE/CLASS/MEMBER[/SUBSYSTEM], when it
        /// calls through an X-Road security server.
        #[arg(long, value_name = "ID")]
        xroad_client: Option<String>,
        /// Calls in flight at once from it (default 256); more are refused
        /// with 429.
        #[arg(long, value_name = "N")]
        max_in_flight: Option<u32>,
        /// Calls per second from it (default 10000); more are refused with 429.
        #[arg(long, value_name = "N")]
        rate: Option<u32>,
        /// The --ca file holds a new CA that replaces the old one: the CRL
        /// in force (the old CA's) is dropped. Without it a change of CA
        /// with a CRL in force is refused (the same CA re-exported keeps
        /// its CRL).
        #[arg(long)]
        new_ca_drops_crl: bool,
    },
    /// Publish the CRL of an outside REST system's CA (PEM or DER): checked
    /// here against the CA in its record and against the CRL in force, then
    /// put into the record; the hub refuses the client certificates it
    /// revokes from the next call (401, naming the serial and the CRL
    /// number), on connections already open too. `rest-client add` keeps it
    /// while the CA is the same; only a newer CRL replaces it.
    ///
    /// Example: lgsp hub rest-client crl --name btp-hotich --crl btp-crl.pem
    Crl {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The system's name.
        #[arg(long)]
        name: String,
        /// The CRL file, PEM (`X509 CRL`) or DER, signed by the system's CA.
        #[arg(long, value_name = "FILE")]
        crl: PathBuf,
    },
    /// Remove an outside REST system: the hub refuses it at once.
    ///
    /// Example: lgsp hub rest-client remove --name btp-hotich
    Remove {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The system's name.
        #[arg(long)]
        name: String,
    },
    /// List the outside REST systems.
    ///
    /// Example: lgsp hub rest-client list
    List {
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
        /// Calls in flight at once with this peer, in each direction
        /// (default 256); more are refused with RESOURCE_EXHAUSTED.
        #[arg(long, value_name = "N")]
        max_in_flight: Option<u32>,
        /// Calls per second with this peer, in each direction (default
        /// 10000); more are refused with RESOURCE_EXHAUSTED.
        #[arg(long, value_name = "N")]
        rate: Option<u32>,
        /// The --ca file holds a new CA that replaces the old one: the
        /// peer's CRL in force (the old CA's) is dropped. Without it a
        /// change of CA with a CRL in force is refused (the same CA
        /// re-exported keeps its CRL).
        #[arg(long)]
        new_ca_drops_crl: bool,
    },
    /// Publish a peer's CRL (PEM or DER, from the peer's CA): checked here
    /// against the peer's CA and against the one in force, then put into
    /// the peer record; the hub refuses the certificates it revokes within
    /// seconds, without restart.
    ///
    /// Example: lgsp hub peer crl --name ndxp --crl ndxp-crl.pem
    Crl {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The peer's name.
        #[arg(long)]
        name: String,
        /// The CRL file, PEM (`X509 CRL`) or DER.
        #[arg(long, value_name = "FILE")]
        crl: PathBuf,
    },
    /// Remove a peer: the hub refuses its hub's calls within seconds. Its
    /// exports and imports go first (`lgsp hub unexport|unimport`).
    ///
    /// Example: lgsp hub peer remove --name ndxp
    Remove {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The peer's name.
        #[arg(long)]
        name: String,
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
        max_peer_connections,
        rest_listen,
        rest_secrets,
    } = cmd
    {
        let config = lgsp_node::config::NodeConfig::load(&config)?;
        let rt = super::runtime()?;
        return rt.block_on(async {
            let options = lgsp_hub::HubOptions {
                outward: outward_listen,
                max_peer_connections,
                rest: rest_listen,
                rest_secrets,
            };
            let mut hub = lgsp_hub::HubServer::start_with(config, options).await?;
            println!(
                "hub taking province nodes' calls on {} (mTLS) and federation peers' on {}",
                hub.node.provider_addr, hub.outward_addr
            );
            if let Some(addr) = hub.rest_addr {
                println!("hub taking outside REST systems' calls on https://{addr} (mTLS)");
            }
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
            HubCommand::Rest(cmd) => super::hub_rest::run(cmd).await?,
            HubCommand::Peer(PeerCommand::Add {
                registry,
                name,
                trust_domain,
                ca,
                endpoint,
                max_in_flight,
                rate,
                new_ca_drops_crl,
            }) => {
                let ca_pem = std::fs::read_to_string(&ca)
                    .with_context(|| format!("cannot read {}", ca.display()))?;
                let client = registry.client()?;
                let (before, revision) = peer_record(&client, &name).await?;
                // A CRL published before stays while it is the same CA's.
                let crl_der = before
                    .as_ref()
                    .filter(|b| lgsp_certs::inspect::same_certificates(&b.ca_pem, &ca_pem))
                    .map(|b| b.crl_der.clone())
                    .unwrap_or_default();
                let peer = FederationPeer {
                    name: name.clone(),
                    trust_domain,
                    ca_pem,
                    hub_endpoint: endpoint,
                    crl_der,
                    max_in_flight: max_in_flight
                        .or(before.as_ref().map(|b| b.max_in_flight))
                        .unwrap_or(0),
                    rate_per_second: rate
                        .or(before.as_ref().map(|b| b.rate_per_second))
                        .unwrap_or(0),
                    new_ca_drops_crl,
                };
                let rev = client.put(Value::Peer(peer), revision).await?.revision;
                println!("Federation peer {name} set (revision {rev})");
            }
            HubCommand::RestClient(command) => rest_client(command).await?,
            HubCommand::Peer(PeerCommand::Crl {
                registry,
                name,
                crl,
            }) => {
                let bytes = std::fs::read(&crl)
                    .with_context(|| format!("cannot read {}", crl.display()))?;
                let der = crl_der(&bytes).with_context(|| format!("{}", crl.display()))?;
                let client = registry.client()?;
                let (Some(mut peer), revision) = peer_record(&client, &name).await? else {
                    return Err(anyhow!(
                        "there is no federation peer {name:?}; add it with `lgsp hub peer add`"
                    ));
                };
                let roots = lgsp_node::obo::peer_roots(&peer);
                let info = lgsp_certs::inspect::verify_crl(&der, &roots).map_err(|e| {
                    anyhow!("{}: not a CRL of peer {name}'s CA: {e}", crl.display())
                })?;
                let number = info.number.ok_or_else(|| {
                    anyhow!("{}: the CRL has no CRL number", crl.display())
                })?;
                if !peer.crl_der.is_empty()
                    && let Ok(current) = lgsp_certs::inspect::CrlInfo::from_der(
                        &peer.crl_der,
                        std::path::Path::new("<peer record>"),
                    )
                    && current.number.is_some_and(|c| c >= number)
                {
                    return Err(anyhow!(
                        "CRL number {number} is not newer than the one in force for {name} ({}); ask the peer for its latest CRL",
                        current.number.unwrap_or_default()
                    ));
                }
                peer.crl_der = der;
                let rev = client.put(Value::Peer(peer), revision).await?.revision;
                println!(
                    "CRL number {number} of federation peer {name} published ({} revoked certificate(s); revision {rev})",
                    info.revoked.len()
                );
            }
            HubCommand::Peer(PeerCommand::Remove { registry, name }) => {
                let client = registry.client()?;
                let mut uses = Vec::new();
                for v in records_of(&client, RecordKind::Export, Some).await? {
                    if let Value::Export(e) = v
                        && e.peer == name
                    {
                        uses.push(format!("lgsp hub unexport --service {} --peer {name}", e.service_id));
                    }
                }
                for v in records_of(&client, RecordKind::Import, Some).await? {
                    if let Value::Import(i) = v
                        && i.peer == name
                    {
                        uses.push(format!("lgsp hub unimport --peer {name} --service {}", i.service_id));
                    }
                }
                if !uses.is_empty() {
                    return Err(anyhow!(
                        "federation peer {name} still has exports or imports; remove them first:\n  {}",
                        uses.join("\n  ")
                    ));
                }
                let (Some(_), revision) = peer_record(&client, &name).await? else {
                    return Err(anyhow!("there is no federation peer {name:?} (see `lgsp hub peer list`)"));
                };
                let rev = client
                    .delete(RecordKind::Peer, &name, revision)
                    .await?
                    .revision;
                println!("Federation peer {name} removed (revision {rev}); its hub is refused from now on");
            }
            HubCommand::Peer(PeerCommand::List { registry, output }) => {
                let mut listing = super::output::Listing::new("federation_peers");
                for v in records_of(&registry.client()?, RecordKind::Peer, Some).await? {
                    if let Value::Peer(p) = v {
                        // The CRL in force for the peer: published by the
                        // admin or followed from the peer's hub.
                        let crl_number = lgsp_certs::inspect::CrlInfo::from_der(
                            &p.crl_der,
                            std::path::Path::new("<crl>"),
                        )
                        .ok()
                        .and_then(|c| c.number);
                        let crl = crl_number.map_or("no CRL".to_owned(), |n| format!("CRL {n}"));
                        listing.row(
                            format!(
                                "{:<16} {:<32} {:<28} {}",
                                p.name, p.trust_domain, p.hub_endpoint, crl
                            ),
                            serde_json::json!({
                                "name": p.name,
                                "trust_domain": p.trust_domain,
                                "hub_endpoint": p.hub_endpoint,
                                "crl_number": crl_number,
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
            HubCommand::Status {
                registry,
                hub_metrics,
                output,
            } => {
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
                if let Some(addr) = hub_metrics {
                    let metrics = scrape(&addr).await?;
                    let rows = link_rows(&metrics);
                    text.push('\n');
                    text.push_str(
                        links_table(&rows, std::time::SystemTime::now()).trim_end(),
                    );
                    for (peer, row) in &rows {
                        listing.item(row.to_json(peer));
                    }
                }
                output.print(&listing.header(text))?;
            }
        }
        Ok::<(), anyhow::Error>(())
    })
    .map_err(|e| anyhow!(e))
}

/// `lgsp hub rest-client add|remove|list`.
async fn rest_client(command: RestClientCommand) -> Result<()> {
    match command {
        RestClientCommand::Add {
            registry,
            name,
            ca,
            trust_domain,
            agency,
            services,
            xroad_client,
            max_in_flight,
            rate,
            new_ca_drops_crl,
        } => {
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("cannot read {}", ca.display()))?;
            let xroad_client = match xroad_client {
                Some(id) => lgsp_hub::xroad::client_id(&id).map_err(|e| {
                    anyhow!("--xroad-client {id:?} is not INSTANCE/CLASS/MEMBER[/SUBSYSTEM]: {e}")
                })?,
                None => String::new(),
            };
            let registry = registry.client()?;
            let (before, revision) = rest_client_record(&registry, &name).await?;
            // A CRL published before stays while it is the same CA's.
            let crl_der = before
                .filter(|b| lgsp_certs::inspect::same_certificates(&b.ca_pem, &ca_pem))
                .map(|b| b.crl_der)
                .unwrap_or_default();
            let client = lgsp_proto::RestClient {
                name: name.clone(),
                trust_domain,
                ca_pem,
                agency_code: agency,
                services: services.iter().map(ToString::to_string).collect(),
                max_in_flight: max_in_flight.unwrap_or(0),
                rate_per_second: rate.unwrap_or(0),
                xroad_client,
                crl_der,
                new_ca_drops_crl,
            };
            let rev = registry
                .put(Value::RestClient(client), revision)
                .await?
                .revision;
            println!("REST client {name} set (revision {rev}); the hub takes it within seconds");
        }
        RestClientCommand::Crl {
            registry,
            name,
            crl,
        } => {
            let bytes =
                std::fs::read(&crl).with_context(|| format!("cannot read {}", crl.display()))?;
            let der = crl_der(&bytes).with_context(|| format!("{}", crl.display()))?;
            let registry = registry.client()?;
            let (Some(mut client), revision) = rest_client_record(&registry, &name).await? else {
                return Err(anyhow!(
                    "there is no REST client {name:?} (see `lgsp hub rest-client list`)"
                ));
            };
            let roots = lgsp_node::obo::rest_client_roots(&client);
            let info = lgsp_certs::inspect::verify_crl(&der, &roots).map_err(|e| {
                anyhow!(
                    "{}: not a CRL of REST client {name}'s CA: {e}",
                    crl.display()
                )
            })?;
            let number = info
                .number
                .ok_or_else(|| anyhow!("{}: the CRL has no CRL number", crl.display()))?;
            if let Some(current) = crl_number(&client.crl_der)
                && current >= number
            {
                return Err(anyhow!(
                    "CRL number {number} is not newer than the one in force for {name} ({current}); ask the system's CA for its latest CRL"
                ));
            }
            client.crl_der = der;
            let rev = registry
                .put(Value::RestClient(client), revision)
                .await?
                .revision;
            println!(
                "CRL number {number} of REST client {name} published ({} revoked certificate(s); revision {rev}); the hub refuses them from the next call",
                info.revoked.len()
            );
        }
        RestClientCommand::Remove { registry, name } => {
            let client = registry.client()?;
            match client.get(RecordKind::RestClient, &name, false).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {
                    return Err(anyhow!(
                        "there is no REST client {name:?} (see `lgsp hub rest-client list`)"
                    ));
                }
                Err(s) => return Err(anyhow!(s)),
            }
            let rev = client
                .delete(RecordKind::RestClient, &name, 0)
                .await?
                .revision;
            println!("REST client {name} removed (revision {rev}); the hub refuses it from now on");
        }
        RestClientCommand::List { registry, output } => {
            let mut listing = super::output::Listing::new("rest_clients");
            for v in records_of(&registry.client()?, RecordKind::RestClient, Some).await? {
                if let Value::RestClient(c) = v {
                    let number = crl_number(&c.crl_der);
                    listing.row(
                        format!(
                            "{:<16} {:<16} {:<24} {:<28} {:<8} {}",
                            c.name,
                            c.agency_code,
                            c.trust_domain,
                            if c.xroad_client.is_empty() {
                                "-"
                            } else {
                                &c.xroad_client
                            },
                            number.map_or("no CRL".to_owned(), |n| format!("CRL {n}")),
                            c.services.join(",")
                        ),
                        serde_json::json!({
                            "name": c.name,
                            "agency": c.agency_code,
                            "trust_domain": c.trust_domain,
                            "xroad_client": c.xroad_client,
                            "crl_number": number,
                            "services": c.services,
                        }),
                    );
                }
            }
            output.print(&listing)?;
        }
    }
    Ok(())
}

/// Peer `name`'s record and its modify revision (0 when there is none), so
/// a change made from it is written only if nobody changed it meanwhile.
async fn peer_record(
    client: &lgsp_registry::RegistryClient,
    name: &str,
) -> Result<(Option<FederationPeer>, u64)> {
    match client.get(RecordKind::Peer, name, false).await {
        Ok(r) => {
            let record = r.record.unwrap_or_default();
            let revision = record.meta.as_ref().map_or(0, |m| m.mod_revision);
            match record.value {
                Some(Value::Peer(p)) => Ok((Some(p), revision)),
                _ => Ok((None, 0)),
            }
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok((None, 0)),
        Err(s) => Err(anyhow!(s)),
    }
}

/// REST client `name`'s record and its modify revision (0 when there is
/// none), so a change made from it is written only if nobody changed it
/// meanwhile.
async fn rest_client_record(
    client: &lgsp_registry::RegistryClient,
    name: &str,
) -> Result<(Option<lgsp_proto::RestClient>, u64)> {
    match client.get(RecordKind::RestClient, name, false).await {
        Ok(r) => {
            let record = r.record.unwrap_or_default();
            let revision = record.meta.as_ref().map_or(0, |m| m.mod_revision);
            match record.value {
                Some(Value::RestClient(c)) => Ok((Some(c), revision)),
                _ => Ok((None, 0)),
            }
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok((None, 0)),
        Err(s) => Err(anyhow!(s)),
    }
}

/// The number of CRL `der` (DER; none when empty or unreadable).
fn crl_number(der: &[u8]) -> Option<u64> {
    if der.is_empty() {
        return None;
    }
    lgsp_certs::inspect::CrlInfo::from_der(der, std::path::Path::new("<crl>"))
        .ok()
        .and_then(|c| c.number)
}

/// The DER of a CRL file, PEM (`X509 CRL`) or DER.
pub(super) fn crl_der(bytes: &[u8]) -> Result<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(bytes.to_vec());
    };
    if !text.contains("-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    lgsp_certs::inspect::pem_blocks(text)
        .map_err(|e| anyhow!("not a PEM file: {e}"))?
        .into_iter()
        .find(|(label, _)| label == "X509 CRL")
        .map(|(_, der)| der)
        .ok_or_else(|| anyhow!("it holds no X509 CRL block (is it the peer's CA certificate?)"))
}

/// The hub's metrics text, from `GET http://{addr}/metrics`.
async fn scrape(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let why = |e: &dyn std::fmt::Display| {
        anyhow!(
            "cannot read the hub's metrics at {addr}: {e}; give the address the hub's node.toml sets as metrics_listen"
        )
    };
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|e| why(&e))?
        .map_err(|e| why(&e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| why(&"not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(why(&head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_owned())
}

/// One sample of the exposition: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of a Prometheus text exposition.
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(pair) => pair,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        out.push((name.to_owned(), parse_labels(labels), value));
    }
    out
}

/// `a="x",b="y\"z"` as pairs, with the exposition's escapes undone.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// What a running hub says of one link.
#[derive(Debug, Default)]
struct LinkRow {
    state: Option<f64>,
    last_success: f64,
    last_failure: f64,
    calls: std::collections::BTreeMap<(String, String), f64>,
    latency_sum: f64,
    latency_count: f64,
    buckets: Vec<(f64, f64)>,
}

impl LinkRow {
    /// The row as an item of `lgsp hub status -o json`.
    fn to_json(&self, peer: &str) -> serde_json::Value {
        let calls: serde_json::Map<String, serde_json::Value> = self
            .calls
            .iter()
            .map(|((d, o), n)| (format!("{d}_{o}"), serde_json::json!(*n as u64)))
            .collect();
        serde_json::json!({
            "type": "link",
            "peer": peer,
            "breaker_state": self.state.map(|s| s as u8),
            "last_success_unix": self.last_success as i64,
            "last_failure_unix": self.last_failure as i64,
            "latency_avg_ms": (self.latency_count > 0.0).then(|| self.latency_sum / self.latency_count * 1e3),
            "calls": calls,
        })
    }
}

/// Each peer's link, from the hub's metrics text.
fn link_rows(metrics: &str) -> std::collections::BTreeMap<String, LinkRow> {
    let mut rows: std::collections::BTreeMap<String, LinkRow> = Default::default();
    for (name, labels, value) in samples(metrics) {
        let Some(metric) = name.strip_prefix("lgsp_hub_peer_") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let row = rows.entry(label("peer")).or_default();
        match metric {
            "breaker_state" => row.state = Some(value),
            "last_success_timestamp_seconds" => row.last_success = value,
            "last_failure_timestamp_seconds" => row.last_failure = value,
            "calls_total" => {
                row.calls
                    .insert((label("direction"), label("outcome")), value);
            }
            "call_duration_seconds_sum" => row.latency_sum = value,
            "call_duration_seconds_count" => row.latency_count = value,
            "call_duration_seconds_bucket" => {
                let le = label("le");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                row.buckets.push((bound, value));
            }
            _ => {}
        }
    }
    rows
}

/// The links table of `lgsp hub status`, with times said relative to `now`.
fn links_table(
    rows: &std::collections::BTreeMap<String, LinkRow>,
    now: std::time::SystemTime,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "Links (as the running hub sees them):");
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "  none: the hub has no federation peer in its catalog copy (or these are not a hub's metrics)"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<16} {:<22} {:<14} {:<14} {:<18} {:<28} IN served/refused",
        "PEER",
        "CIRCUIT",
        "LAST SUCCESS",
        "LAST FAILURE",
        "LATENCY avg/p99",
        "OUT answered/failed/refused",
    );
    let now_s = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ago = |t: f64| {
        if t <= 0.0 {
            "never".to_owned()
        } else {
            format!("{:.0} s ago", (now_s - t).max(0.0))
        }
    };
    for (peer, row) in rows {
        let circuit = match row.state {
            Some(s) if s < 0.5 => "closed (up)",
            Some(s) if s < 1.5 => "half-open (probing)",
            Some(_) => "open (failing)",
            None => "?",
        };
        let latency = if row.latency_count > 0.0 {
            let mut buckets = row.buckets.clone();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let p99 = buckets
                .iter()
                .find(|(_, n)| *n >= 0.99 * row.latency_count)
                .map_or(f64::INFINITY, |(le, _)| *le);
            format!(
                "{:.1}/{} ms",
                row.latency_sum / row.latency_count * 1e3,
                if p99.is_finite() {
                    format!("≤{:.1}", p99 * 1e3)
                } else {
                    "∞".to_owned()
                }
            )
        } else {
            "-".to_owned()
        };
        let n = |d: &str, o: &str| {
            row.calls
                .get(&(d.to_owned(), o.to_owned()))
                .copied()
                .unwrap_or(0.0)
        };
        let out_calls = format!(
            "{}/{}/{}",
            n("out", "answered"),
            n("out", "failed"),
            n("out", "refused")
        );
        let in_calls = format!("{}/{}", n("in", "served"), n("in", "refused"));
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<14} {:<14} {:<18} {:<28} {}",
            peer,
            circuit,
            ago(row.last_success),
            ago(row.last_failure),
            latency,
            out_calls,
            in_calls,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP lgsp_hub_peer_breaker_state x\n\
# TYPE lgsp_hub_peer_breaker_state gauge\n\
lgsp_hub_peer_breaker_state{peer=\"hanoi\"} 0\n\
lgsp_hub_peer_breaker_state{peer=\"ndxp\"} 2\n\
lgsp_hub_peer_last_success_timestamp_seconds{peer=\"hanoi\"} 990.0\n\
lgsp_hub_peer_last_failure_timestamp_seconds{peer=\"ndxp\"} 995.5\n\
lgsp_hub_peer_calls_total{peer=\"ndxp\",direction=\"out\",outcome=\"failed\"} 3\n\
lgsp_hub_peer_calls_total{peer=\"ndxp\",direction=\"out\",outcome=\"refused\"} 7\n\
lgsp_hub_peer_calls_total{peer=\"hanoi\",direction=\"in\",outcome=\"served\"} 12\n\
lgsp_hub_peer_call_duration_seconds_sum{peer=\"hanoi\"} 0.02\n\
lgsp_hub_peer_call_duration_seconds_count{peer=\"hanoi\"} 4\n\
lgsp_hub_peer_call_duration_seconds_bucket{le=\"0.004\",peer=\"hanoi\"} 3\n\
lgsp_hub_peer_call_duration_seconds_bucket{le=\"0.008\",peer=\"hanoi\"} 4\n\
lgsp_hub_peer_call_duration_seconds_bucket{le=\"+Inf\",peer=\"hanoi\"} 4\n\
lgsp_calls_total{side=\"provider\",service=\"s\",consumer=\"c\",code=\"OK\"} 1\n\
# EOF\n";

    #[test]
    fn the_links_table_shows_each_peer_circuit_times_latency_and_counts() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let table = links_table(&link_rows(METRICS), now);
        let hanoi = table.lines().find(|l| l.contains("hanoi")).unwrap();
        let ndxp = table.lines().find(|l| l.contains("ndxp")).unwrap();
        assert!(hanoi.contains("closed (up)"), "{table}");
        assert!(hanoi.contains("10 s ago"), "{table}");
        assert!(hanoi.contains("5.0/≤8.0 ms"), "{table}");
        assert!(hanoi.contains("12/0"), "{table}");
        assert!(ndxp.contains("open (failing)"), "{table}");
        assert!(ndxp.contains("never"), "{table}");
        assert!(ndxp.contains("0/3/7"), "{table}");
        assert_eq!(table.lines().count(), 4, "{table}");
    }

    #[test]
    fn labels_with_escapes_are_read_back() {
        assert_eq!(
            parse_labels(r#"peer="a\"b",le="+Inf""#),
            vec![
                ("peer".to_owned(), "a\"b".to_owned()),
                ("le".to_owned(), "+Inf".to_owned())
            ]
        );
    }

    #[test]
    fn a_crl_file_is_read_as_pem_or_der() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        assert_eq!(crl_der(&der).unwrap(), der);
        let err =
            crl_der(b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n").unwrap_err();
        assert!(err.to_string().contains("X509 CRL"), "{err}");
    }
}

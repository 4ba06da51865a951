//! `lgsp node`: set up and run an agency node.

use super::UsageError;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use lgsp_certs::ca::{LeafSpec, make_csr};
use lgsp_certs::{AgencyCode, Role, SpiffeId, write_new};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process run
pub(super) enum NodeCommand {
    /// Prepare a node on this server: make its key (kept here), a signing
    /// request for the provincial CA, and a commented node.toml.
    ///
    /// The province's trust domain is read from the provincial CA's
    /// certificate (--ca), which is also copied to tls/ca.pem; or give it
    /// with --trust-domain. Names below are examples.
    ///
    /// Example: lgsp node init --agency 000.00.12.H62 --name node-1 --dir /etc/lgsp --ca ca.crt
    /// --dns node.stp.phutho.gov.vn --registry 10.0.0.11:7101
    Init {
        /// The agency's QCVN 102 code, e.g. 000.00.12.H62.
        #[arg(long)]
        agency: AgencyCode,
        /// The node's name, e.g. node-1.
        #[arg(long)]
        name: String,
        /// Directory for node.toml, tls/key.pem, tls/csr.pem and data/.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The provincial CA's certificate (ca.crt, from the provincial IT
        /// department): the node takes the province's trust domain from it,
        /// and it is copied to tls/ca.pem.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// The province's trust domain (a DNS name, e.g. phutho.gov.vn),
        /// when the CA certificate is not at hand; must match it when both
        /// are given.
        #[arg(long)]
        trust_domain: Option<String>,
        /// The agency's display name for the certificate (UTF-8).
        #[arg(long)]
        display_name: Option<String>,
        /// Registry client addresses, comma-separated.
        #[arg(
            long,
            env = "LGSP_REGISTRY",
            value_name = "ADDRS",
            default_value = "127.0.0.1:7101"
        )]
        registry: String,
        /// Province-facing (mTLS) listener.
        #[arg(long, default_value = "0.0.0.0:7301")]
        provider_listen: String,
        /// Listener for the agency's own applications.
        #[arg(long, default_value = "127.0.0.1:7401")]
        consumer_listen: String,
        /// DNS names other nodes reach this server by (repeat for several;
        /// none by default). The CA signs only names its policy allows the
        /// agency (`lgsp ca policy`).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP addresses other nodes reach this server on (repeat for
        /// several; none by default).
        #[arg(long = "ip")]
        ip: Vec<IpAddr>,
    },
    /// Run the node until SIGTERM or Ctrl-C.
    ///
    /// Example: lgsp node start --config /etc/lgsp/node.toml
    Start {
        /// The node.toml made by `lgsp node init`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List the nodes registered in the catalog: endpoint, the lgsp version
    /// each runs (with its commit), and the SHA-256 of the certificate each
    /// registered (compare with `lgsp ca show`).
    ///
    /// Example: lgsp node list --registry 10.0.0.11:7101
    List {
        #[command(flatten)]
        registry: super::RegistryArgs,
        /// Only this agency's nodes.
        #[arg(long)]
        agency: Option<AgencyCode>,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
}

pub(super) fn run(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Init {
            agency,
            name,
            dir,
            ca,
            trust_domain,
            display_name,
            registry,
            provider_listen,
            consumer_listen,
            dns,
            ip,
        } => {
            let config_path = dir.join("node.toml");
            let tls = dir.join("tls");
            for p in [&config_path, &tls.join("key.pem")] {
                if p.exists() {
                    bail!("{} already exists; refusing to overwrite it", p.display());
                }
            }
            let ca_pem = match &ca {
                Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the CA certificate {}", path.display())
                })?),
                None => None,
            };
            let trust_domain =
                province_trust_domain(ca.as_deref(), ca_pem.as_deref(), trust_domain)?;
            let id = SpiffeId::new(&trust_domain, agency.clone(), Role::Node, &name)
                .map_err(|e| UsageError(e.to_string()))?;
            let mut spec = LeafSpec::for_days(id.clone(), 365)?;
            spec.display_name = display_name;
            let advertise = lgsp_node::config::derive_advertise(&provider_listen, &dns, &ip);
            spec.dns = dns;
            spec.ips = ip;
            let (csr, key) = make_csr(&spec)?;
            let registry_list = registry
                .split(',')
                .map(|r| format!("\"{}\"", r.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            let toml = lgsp_node::config::template(
                agency.as_str(),
                &name,
                &registry_list,
                &provider_listen,
                advertise.as_deref(),
                &consumer_listen,
            );
            std::fs::create_dir_all(&tls)
                .with_context(|| format!("cannot create {}", tls.display()))?;
            std::fs::create_dir_all(dir.join("data"))?;
            write_new(&tls.join("key.pem"), key.as_bytes(), 0o600)?;
            write_new(&tls.join("csr.pem"), csr.as_bytes(), 0o644)?;
            write_new(&config_path, toml.as_bytes(), 0o644)?;
            if let Some(pem) = &ca_pem {
                write_new(&tls.join("ca.pem"), pem.as_bytes(), 0o644)?;
            }
            println!("Prepared node {id} in {}", dir.display());
            println!(
                "  1. send {} to the provincial IT department (Sở KH&CN) to sign:",
                tls.join("csr.pem").display()
            );
            println!("       lgsp ca sign --ca CA_DIR --csr csr.pem --out cert.pem");
            if ca_pem.is_some() {
                println!(
                    "  2. put the signed certificate in {} (the CA certificate is in {})",
                    tls.join("cert.pem").display(),
                    tls.join("ca.pem").display()
                );
            } else {
                println!(
                    "  2. put the signed certificate in {} and the CA certificate in {}",
                    tls.join("cert.pem").display(),
                    tls.join("ca.pem").display()
                );
            }
            match &advertise {
                Some(address) => println!(
                    "  other agencies' nodes will connect to {address} (advertise in node.toml)"
                ),
                None if provider_listen.starts_with("0.0.0.0")
                    || provider_listen.starts_with("[::]") =>
                {
                    println!(
                        "  set advertise in node.toml to the name or address other agencies' nodes reach this server by (give --dns or --ip to have it written): the node refuses to start without it"
                    )
                }
                None => {}
            }
            println!(
                "  3. review {}, then: lgsp node start --config {}",
                config_path.display(),
                config_path.display()
            );
            Ok(())
        }
        NodeCommand::List {
            registry,
            agency,
            output,
        } => {
            let rt = super::runtime()?;
            rt.block_on(async {
                let (records, revision) = registry
                    .client()?
                    .list_all(lgsp_proto::ListRequest {
                        kind: lgsp_proto::RecordKind::Node as i32,
                        prefix: agency.map(|a| format!("{a}/")).unwrap_or_default(),
                        ..Default::default()
                    })
                    .await?;
                let mut listing = super::output::Listing::new("nodes");
                for r in records {
                    if let Some(lgsp_proto::catalog_record::Value::Node(n)) = r.value {
                        listing.row(
                            format!(
                                "{}/{}  endpoint {}  version {}  certificate SHA-256 {}",
                                n.agency_code,
                                n.name,
                                n.endpoint,
                                if n.version.is_empty() {
                                    "unknown (an older node)"
                                } else {
                                    &n.version
                                },
                                if n.cert_sha256.is_empty() {
                                    "(none)"
                                } else {
                                    &n.cert_sha256
                                }
                            ),
                            serde_json::json!({
                                "agency": n.agency_code,
                                "name": n.name,
                                "endpoint": n.endpoint,
                                "version": (!n.version.is_empty()).then_some(&n.version),
                                "cert_sha256": n.cert_sha256,
                            }),
                        );
                    }
                }
                listing.fact("catalog_revision", revision);
                listing.footer(format!("(catalog revision {revision})"));
                output.print(&listing)
            })
        }
        NodeCommand::Start { config } => {
            let config = lgsp_node::config::NodeConfig::load(&config)?;
            let rt = super::runtime()?;
            rt.block_on(async {
                let mut node = lgsp_node::server::NodeServer::start(config).await?;
                println!(
                    "node serving other agencies on {} (mTLS) and this agency's applications on {}",
                    node.provider_addr, node.consumer_addr
                );
                if let Some(m) = node.metrics_addr {
                    println!("metrics on http://{m}/metrics");
                }
                // Stops on a signal, or when another live instance holds
                // this node's name (a configuration error: exit code 2).
                let failed = tokio::select! {
                    signal = crate::signal::stop_signal() => {
                        tracing::info!("{}; shutting down", signal?);
                        None
                    }
                    error = node.failure() => Some(error),
                };
                node.shutdown().await;
                match failed {
                    None => Ok(()),
                    Some(error) => Err(error.into()),
                }
            })
        }
    }
}

/// The province's trust domain for a new identity: read from the provincial
/// CA's certificate when one is given, or as typed; both must agree. lgsp
/// has no province of its own, so with neither it refuses, saying what to
/// give.
pub(super) fn province_trust_domain(
    ca_path: Option<&std::path::Path>,
    ca_pem: Option<&str>,
    typed: Option<String>,
) -> Result<String> {
    let from_ca = match (ca_path, ca_pem) {
        (Some(path), Some(pem)) => Some(
            lgsp_certs::inspect::ca_trust_domain(pem, path)
                .map_err(|e| UsageError(e.to_string()))?,
        ),
        _ => None,
    };
    match (from_ca, typed) {
        (Some(ca), Some(typed)) if ca != typed => Err(UsageError(format!(
            "--trust-domain {typed} is not the trust domain of the CA certificate {} ({ca}); leave --trust-domain out to use the CA's",
            ca_path.map(|p| p.display().to_string()).unwrap_or_default()
        ))
        .into()),
        (Some(ca), _) => Ok(ca),
        (None, Some(typed)) => Ok(typed),
        (None, None) => Err(UsageError(
            "the province's trust domain is unknown: give --ca with the provincial CA's certificate (ca.crt, from the provincial IT department), or --trust-domain (e.g. phutho.gov.vn)".into(),
        )
        .into()),
    }
}

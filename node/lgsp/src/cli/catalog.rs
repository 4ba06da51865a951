//! `lgsp agency` and `lgsp service`: the catalog from the command line.

use super::RegistryArgs;
use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use lgsp_certs::AgencyCode;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{FocalPoint, ListRequest, RecordKind, Service, ServiceKind, ServiceStatus};
use lgsp_registry::{Catalog, Publication, ServiceId};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum AgencyCommand {
    /// Register an agency (cơ quan, đơn vị) in the provincial catalog, or
    /// update its name and focal point (đầu mối). Needs an admin certificate
    /// for a new agency.
    Register {
        #[command(flatten)]
        registry: RegistryArgs,
        /// QCVN 102 code, e.g. 000.00.12.H62.
        #[arg(long)]
        code: AgencyCode,
        /// Name, UTF-8, e.g. "Sở Tư pháp tỉnh Vĩnh Phúc".
        #[arg(long)]
        name: String,
        /// The focal point's name.
        #[arg(long)]
        focal_name: Option<String>,
        #[arg(long)]
        focal_phone: Option<String>,
        #[arg(long)]
        focal_email: Option<String>,
    },
    /// List registered agencies.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum KindArg {
    Dataset,
    Http,
    Grpc,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum StatusArg {
    Active,
    Suspended,
    Withdrawn,
}

impl StatusArg {
    fn proto(self) -> ServiceStatus {
        match self {
            StatusArg::Active => ServiceStatus::Active,
            StatusArg::Suspended => ServiceStatus::Suspended,
            StatusArg::Withdrawn => ServiceStatus::Withdrawn,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum ServiceCommand {
    /// Publish (or update) a data-sharing service (dịch vụ chia sẻ dữ liệu)
    /// of your agency in the catalog.
    Publish {
        #[command(flatten)]
        registry: RegistryArgs,
        /// <agency-code>/<service-name>, e.g. 000.00.12.H62/ho-tich.
        #[arg(long)]
        id: ServiceId,
        #[arg(long, value_enum)]
        kind: KindArg,
        /// The node of the agency that serves it.
        #[arg(long, default_value = "")]
        node: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The service's version.
        #[arg(long = "service-version", default_value = "1")]
        service_version: String,
        /// A JSON Schema file of the exchanged records.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
    },
    /// Show one service, as the catalog holds it.
    Show {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
    },
    /// List services, by agency, keyword and status.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        agency: Option<AgencyCode>,
        #[arg(long, default_value = "")]
        keyword: String,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
    },
    /// Withdraw a service: it stays in the catalog, marked withdrawn, and
    /// nodes refuse calls to it.
    Withdraw {
        #[command(flatten)]
        registry: RegistryArgs,
        id: String,
    },
}

pub(super) fn run_agency(cmd: AgencyCommand) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        match cmd {
            AgencyCommand::Register {
                registry,
                code,
                name,
                focal_name,
                focal_phone,
                focal_email,
            } => {
                let focal_point = (focal_name.is_some()
                    || focal_phone.is_some()
                    || focal_email.is_some())
                .then(|| FocalPoint {
                    name: focal_name.unwrap_or_default(),
                    phone: focal_phone.unwrap_or_default(),
                    email: focal_email.unwrap_or_default(),
                    role: String::new(),
                });
                let revision = Catalog::new(registry.client()?)
                    .register_agency(&code, &name, focal_point)
                    .await?;
                println!("Registered agency {code} \"{name}\" at revision {revision}");
            }
            AgencyCommand::List { registry } => {
                let (records, revision) = registry
                    .client()?
                    .list_all(ListRequest {
                        kind: RecordKind::Agency as i32,
                        ..Default::default()
                    })
                    .await?;
                for r in records {
                    if let Some(Value::Agency(a)) = r.value {
                        let focal = a
                            .focal_point
                            .map(|f| format!("  (đầu mối: {} {} {})", f.name, f.phone, f.email))
                            .unwrap_or_default();
                        println!("{:<20} {}{focal}", a.code, a.name);
                    }
                }
                println!("(catalog revision {revision})");
            }
        }
        Ok(())
    })
}

pub(super) fn run_service(cmd: ServiceCommand) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        match cmd {
            ServiceCommand::Publish {
                registry,
                id,
                kind,
                node,
                description,
                service_version,
                schema,
            } => {
                let schema_json = match schema {
                    Some(path) => std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                    None => String::new(),
                };
                let kind = match kind {
                    KindArg::Dataset => ServiceKind::Dataset,
                    KindArg::Http => ServiceKind::Http,
                    KindArg::Grpc => ServiceKind::Grpc,
                };
                let publication = Publication {
                    schema_json,
                    version: service_version,
                    ..Publication::new(id.clone(), kind, &node, &description)
                };
                let revision = Catalog::new(registry.client()?)
                    .publish(publication)
                    .await?;
                println!("Published service {id} at revision {revision}");
            }
            ServiceCommand::Show { registry, id } => {
                let r = registry
                    .client()?
                    .get(RecordKind::Service, &id, false)
                    .await?;
                let record = r.record.unwrap_or_default();
                let meta = record.meta.unwrap_or_default();
                if let Some(Value::Service(s)) = record.value {
                    print_service(&s);
                    println!(
                        "  created at revision {}, changed at revision {}",
                        meta.create_revision, meta.mod_revision
                    );
                    if !s.schema_json.is_empty() {
                        println!("  schema: {}", s.schema_json);
                    }
                }
            }
            ServiceCommand::List {
                registry,
                agency,
                keyword,
                status,
            } => {
                let (records, revision) = registry
                    .client()?
                    .list_all(ListRequest {
                        kind: RecordKind::Service as i32,
                        prefix: agency.map(|a| format!("{a}/")).unwrap_or_default(),
                        keyword,
                        service_status: status.map_or(0, |s| s.proto() as i32),
                        ..Default::default()
                    })
                    .await?;
                let n = records.len();
                for r in records {
                    if let Some(Value::Service(s)) = r.value {
                        print_service(&s);
                    }
                }
                println!("({n} service(s), catalog revision {revision})");
            }
            ServiceCommand::Withdraw { registry, id } => {
                let client = registry.client()?;
                let current = client.get(RecordKind::Service, &id, false).await?;
                let record = current.record.unwrap_or_default();
                let rev = record.meta.map_or(0, |m| m.mod_revision);
                let Some(Value::Service(mut s)) = record.value else {
                    anyhow::bail!("{id} is not a service");
                };
                s.status = ServiceStatus::Withdrawn as i32;
                let r = client.put(Value::Service(s), rev).await?;
                println!("Withdrew service {id} at revision {}", r.revision);
            }
        }
        Ok(())
    })
}

fn print_service(s: &Service) {
    let kind = ServiceKind::try_from(s.kind)
        .unwrap_or_default()
        .as_str_name();
    let status = ServiceStatus::try_from(s.status)
        .unwrap_or_default()
        .as_str_name();
    println!(
        "{:<40} {:<8} {:<10} v{} node {}  {}",
        s.id,
        kind.trim_start_matches("SERVICE_KIND_").to_lowercase(),
        status.trim_start_matches("SERVICE_STATUS_").to_lowercase(),
        s.version,
        if s.node.is_empty() { "-" } else { &s.node },
        s.description
    );
}

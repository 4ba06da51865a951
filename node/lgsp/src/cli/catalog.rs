//! `lgsp agency` and `lgsp service`: the catalog from the command line.

use super::RegistryArgs;
use super::output::{Listing, OutputArgs};
use super::time::province_calendar;
use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use lgsp_certs::AgencyCode;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{
    DataItem, DataValidity, FocalPoint, ItemClass, ListRequest, Maintenance, RecordKind,
    SecurityClass, Service, ServiceKind, ServiceStatus, SharingMethod, ValidityKind,
};
use lgsp_registry::calendar::WorkCalendar;
use lgsp_registry::{Catalog, Publication, ServiceId};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum AgencyCommand {
    /// Register an agency (cơ quan, đơn vị) in the provincial catalog, or
    /// update its name and focal point (đầu mối). Needs an admin certificate
    /// for a new agency.
    ///
    /// Example: lgsp agency register --code 000.00.12.H62 --name "Sở Tư pháp" --focal-name "Nguyễn
    /// Văn An" --focal-phone 0211384000 --focal-email an@stp.example.gov.vn
    Register {
        #[command(flatten)]
        registry: RegistryArgs,
        /// QCVN 102 code, e.g. 000.00.12.H62.
        #[arg(long)]
        code: AgencyCode,
        /// Name, UTF-8, e.g. "Sở Tư pháp tỉnh Phú Thọ".
        #[arg(long)]
        name: String,
        /// The focal point's name.
        #[arg(long)]
        focal_name: Option<String>,
        /// The focal point's telephone number.
        #[arg(long)]
        focal_phone: Option<String>,
        /// The focal point's e-mail address.
        #[arg(long)]
        focal_email: Option<String>,
        /// For an agency of another lgsp instance (the national platform,
        /// another province) that calls this province's services through
        /// the hubs: that instance's trust domain. Grants to it then name it.
        #[arg(long)]
        trust_domain: Option<String>,
    },
    /// List registered agencies.
    ///
    /// Example: lgsp agency list --registry 10.0.0.11:7101
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum KindArg {
    Dataset,
    Http,
    Grpc,
}

/// How a service shares its data (D47 Art. 23).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum SharingArg {
    /// Online connection between systems (preferred).
    Online,
    /// Synchronisation between databases.
    DatabaseSync,
    /// Data packaged on media.
    DataPackage,
}

/// Security classification.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum SecurityArg {
    Public,
    Restricted,
    /// Refused: state-secret data never enters the platform (Art. 1.2).
    StateSecret,
}

/// Parses `NAME:open|shared|special[:description]`.
fn parse_item(s: &str) -> Result<DataItem> {
    let mut parts = s.splitn(3, ':');
    let name = parts.next().unwrap_or_default().trim();
    let class = match parts.next().map(str::trim) {
        Some("open") => ItemClass::Open,
        Some("shared") | None => ItemClass::Shared,
        Some("special") => ItemClass::Special,
        Some(other) => {
            anyhow::bail!("--item {s:?}: class {other:?} is not open, shared or special")
        }
    };
    Ok(DataItem {
        name: lgsp_registry::text::nfc(name),
        description: lgsp_registry::text::nfc(parts.next().unwrap_or_default()),
        class: class as i32,
        security: SecurityClass::Unspecified as i32,
    })
}

/// Parses `on-use`, `period:<days>` or `window:<from>..<to>`.
fn parse_validity(s: &str, cal: &WorkCalendar) -> Result<DataValidity> {
    let bad =
        || anyhow::anyhow!("--validity {s:?} is not on-use, period:<days> or window:<from>..<to>");
    if s == "on-use" {
        return Ok(DataValidity {
            kind: ValidityKind::OnUse as i32,
            ..Default::default()
        });
    }
    if let Some(days) = s.strip_prefix("period:") {
        let days: i64 = days.parse().map_err(|_| bad())?;
        return Ok(DataValidity {
            kind: ValidityKind::Period as i32,
            period_seconds: days * 86_400,
            ..Default::default()
        });
    }
    let (from, to) = s
        .strip_prefix("window:")
        .and_then(|w| w.split_once(".."))
        .ok_or_else(bad)?;
    Ok(DataValidity {
        kind: ValidityKind::Window as i32,
        from_unix: cal.parse_local(from).ok_or_else(bad)?,
        until_unix: cal.end_of_day(to).ok_or_else(bad)?,
        ..Default::default()
    })
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
    ///
    /// Example: lgsp service publish 000.00.12.H62/ho-tich --kind dataset --node node-1
    /// --description "Hộ tịch" --item so_dinh_danh:shared --item ho_ten:shared
    #[command(override_usage = "lgsp service publish <SERVICE> --kind <KIND> [OPTIONS]")]
    Publish {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The service, <agency-code>/<service-name>, e.g. 000.00.12.H62/ho-tich.
        #[arg(value_name = "SERVICE", required_unless_present = "old_id")]
        id: Option<ServiceId>,
        /// The service, as older scripts give it (`--id SERVICE`).
        #[arg(
            long = "id",
            value_name = "SERVICE",
            hide = true,
            conflicts_with = "id"
        )]
        old_id: Option<ServiceId>,
        /// What serves it: a dataset the node holds, or an HTTP or gRPC system of the agency.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// The node of the agency that serves it (`lgsp node list --agency
        /// CODE` shows them); required for a service shared online, since
        /// consumers' calls go to that node.
        #[arg(long)]
        node: Option<String>,
        /// What the service provides, UTF-8, e.g. "Tra cứu hộ tịch".
        #[arg(long, default_value = "")]
        description: String,
        /// The service's version.
        #[arg(long = "service-version", default_value = "1")]
        service_version: String,
        /// A JSON Schema file of the exchanged records.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
        /// How it shares its data (D47 Art. 23).
        #[arg(long, value_enum, default_value = "online")]
        sharing: SharingArg,
        /// A data item and its class (D47 Art. 11.4), repeated:
        /// NAME:open|shared|special[:description]. Consumers are granted items.
        #[arg(long = "item", value_name = "NAME:CLASS[:DESCRIPTION]")]
        items: Vec<String>,
        /// Link to the service's documentation.
        #[arg(long, default_value = "")]
        doc_url: String,
        /// How long shared data stays valid (D47 Art. 41): on-use,
        /// period:<days> (from the last sync) or window:<from>..<to> (dates).
        #[arg(long, value_name = "VALIDITY")]
        validity: Option<String>,
        /// How often the data is updated, e.g. "hàng ngày".
        #[arg(long, default_value = "")]
        update_cycle: String,
        /// Security classification; state-secret data is refused (Art. 1.2).
        #[arg(long, value_enum, default_value = "public")]
        security: SecurityArg,
    },
    /// Announce a maintenance window (D47 Art. 43): every consumer is refused
    /// from START to END, told the reason and the restore time. Needs 7
    /// working days' notice, or --force-majeure (takes effect at once).
    ///
    /// Example: lgsp service maintenance 000.00.12.H62/ho-tich --start "2026-12-21 08:00"
    /// --end "2026-12-21 12:00" --reason "Nâng cấp cơ sở dữ liệu"
    #[command(
        override_usage = "lgsp service maintenance <SERVICE> --end <END> --reason <REASON> \
                          (--start <START> | --force-majeure) [OPTIONS]"
    )]
    Maintenance {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The service, <agency-code>/<service-name>.
        #[arg(value_name = "SERVICE", required_unless_present = "old_id")]
        id: Option<ServiceId>,
        /// The service, as older scripts give it (`--id SERVICE`).
        #[arg(
            long = "id",
            value_name = "SERVICE",
            hide = true,
            conflicts_with = "id"
        )]
        old_id: Option<ServiceId>,
        /// When it starts, the province's time: "YYYY-MM-DD HH:MM".
        #[arg(
            long,
            required_unless_present = "force_majeure",
            conflicts_with = "force_majeure"
        )]
        start: Option<String>,
        /// The expected restore time: "YYYY-MM-DD HH:MM".
        #[arg(long)]
        end: String,
        /// What and why: consumers are told this.
        #[arg(long)]
        reason: String,
        /// Force majeure: starts now, without notice.
        #[arg(long)]
        force_majeure: bool,
    },
    /// Show one service, as the catalog holds it.
    ///
    /// Example: lgsp service show 000.00.12.H62/ho-tich
    Show {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The service, <agency-code>/<service-name>, e.g. 000.00.12.H62/ho-tich.
        id: String,
    },
    /// List services, by agency, keyword and status.
    ///
    /// Example: lgsp service list --keyword "ho tich" --status active
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Only this agency's services (its QCVN 102 code).
        #[arg(long)]
        agency: Option<AgencyCode>,
        /// Only services whose id, name or description contain this, ignoring case and diacritics ("ho tich" finds "Hộ tịch").
        #[arg(long, default_value = "")]
        keyword: String,
        /// Only services in this state.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Withdraw a service: it stays in the catalog, marked withdrawn, and
    /// nodes refuse calls to it.
    ///
    /// Example: lgsp service withdraw 000.00.12.H62/ho-tich
    Withdraw {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The service, <agency-code>/<service-name>.
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
                trust_domain,
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
                let revision = match trust_domain {
                    None => {
                        Catalog::new(registry.client()?)
                            .register_agency(&code, &name, focal_point)
                            .await?
                    }
                    Some(trust_domain) => {
                        Catalog::new(registry.client()?)
                            .register_foreign_agency(&code, &name, focal_point, &trust_domain)
                            .await?
                    }
                };
                println!("Registered agency {code} \"{name}\" at revision {revision}");
            }
            AgencyCommand::List { registry, output } => {
                let (records, revision) = registry
                    .client()?
                    .list_all(ListRequest {
                        kind: RecordKind::Agency as i32,
                        ..Default::default()
                    })
                    .await?;
                let mut listing = Listing::new("agencies");
                for r in records {
                    if let Some(Value::Agency(a)) = r.value {
                        let focal = a
                            .focal_point
                            .as_ref()
                            .map(|f| format!("  (đầu mối: {} {} {})", f.name, f.phone, f.email))
                            .unwrap_or_default();
                        listing.row(
                            format!("{:<20} {}{focal}", a.code, a.name),
                            serde_json::json!({
                                "code": a.code,
                                "name": a.name,
                                "trust_domain": a.trust_domain,
                                "focal_point": a.focal_point.map(|f| serde_json::json!({
                                    "name": f.name,
                                    "phone": f.phone,
                                    "email": f.email,
                                    "role": f.role,
                                })),
                            }),
                        );
                    }
                }
                listing.fact("catalog_revision", revision);
                listing.footer(format!("(catalog revision {revision})"));
                output.print(&listing)?;
            }
        }
        Ok(())
    })
}

/// The service a command acts on: given as its first argument, or with
/// `--id` as older scripts do (clap makes sure exactly one is there).
fn service_argument(id: Option<ServiceId>, old_id: Option<ServiceId>) -> Result<ServiceId> {
    id.or(old_id).ok_or_else(|| {
        super::UsageError(
            "no service given: name it first, e.g. `lgsp service publish 000.00.12.H62/ho-tich ...`"
                .into(),
        )
        .into()
    })
}

pub(super) fn run_service(cmd: ServiceCommand) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        match cmd {
            ServiceCommand::Publish {
                registry,
                id,
                old_id,
                kind,
                node,
                description,
                service_version,
                schema,
                sharing,
                items,
                doc_url,
                validity,
                update_cycle,
                security,
            } => {
                let id = service_argument(id, old_id)?;
                let online = matches!(sharing, SharingArg::Online);
                let node = match node {
                    Some(node) => node,
                    None if online => {
                        return Err(super::UsageError(format!(
                            "--node is missing: a service shared online is called through the node that serves it; name it (e.g. --node node-1; `lgsp node list --agency {}` shows agency {}'s nodes)",
                            id.agency(),
                            id.agency()
                        ))
                        .into());
                    }
                    None => String::new(),
                };
                let client = registry.client()?;
                let cal = province_calendar(&client).await?;
                let items = items
                    .iter()
                    .map(|i| parse_item(i))
                    .collect::<Result<Vec<_>>>()?;
                let validity = validity
                    .as_deref()
                    .map(|v| parse_validity(v, &cal))
                    .transpose()?;
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
                    sharing_method: match sharing {
                        SharingArg::Online => SharingMethod::Online,
                        SharingArg::DatabaseSync => SharingMethod::DatabaseSync,
                        SharingArg::DataPackage => SharingMethod::DataPackage,
                    },
                    items,
                    documentation_url: doc_url,
                    validity,
                    update_cycle,
                    security: match security {
                        SecurityArg::Public => SecurityClass::Public,
                        SecurityArg::Restricted => SecurityClass::Restricted,
                        SecurityArg::StateSecret => SecurityClass::StateSecret,
                    },
                    ..Publication::new(
                        id.clone(),
                        kind,
                        &node,
                        &lgsp_registry::text::nfc(&description),
                    )
                };
                let revision = Catalog::new(client).publish(publication).await?;
                println!("Published service {id} at revision {revision}");
            }
            ServiceCommand::Maintenance {
                registry,
                id,
                old_id,
                start,
                end,
                reason,
                force_majeure,
            } => {
                let id = service_argument(id, old_id)?;
                let client = registry.client()?;
                let cal = province_calendar(&client).await?;
                let at = |flag: &str, s: &str| {
                    cal.parse_local(s).ok_or_else(|| {
                        anyhow::anyhow!(
                            "{flag} {s:?} is not \"YYYY-MM-DD HH:MM\" (the province's time)"
                        )
                    })
                };
                let start_unix = match start.as_deref() {
                    Some(s) => at("--start", s)?,
                    None => super::time::unix_now(),
                };
                let end_unix = at("--end", &end)?;
                let current = client
                    .get(RecordKind::Service, &id.to_string(), false)
                    .await?;
                let record = current.record.unwrap_or_default();
                let rev = record.meta.map_or(0, |m| m.mod_revision);
                let Some(Value::Service(mut s)) = record.value else {
                    anyhow::bail!("{id} is not a service");
                };
                s.maintenance.push(Maintenance {
                    start_unix,
                    end_unix,
                    force_majeure,
                    reason: lgsp_registry::text::nfc(&reason),
                    announced_unix: 0,
                });
                let r = client.put(Value::Service(s), rev).await?;
                println!(
                    "Announced maintenance of {id} from {} to {} (revision {})",
                    if force_majeure {
                        "now".to_owned()
                    } else {
                        cal.show(start_unix)
                    },
                    cal.show(end_unix),
                    r.revision
                );
            }
            ServiceCommand::Show { registry, id } => {
                let r = registry
                    .client()?
                    .get(RecordKind::Service, &id, false)
                    .await?;
                let record = r.record.unwrap_or_default();
                let meta = record.meta.unwrap_or_default();
                if let Some(Value::Service(s)) = record.value {
                    let cal = province_calendar(&registry.client()?).await?;
                    println!("{}", service_line(&s));
                    println!(
                        "  created at revision {}, changed at revision {}",
                        meta.create_revision, meta.mod_revision
                    );
                    print_details(&s, &cal);
                    if !s.schema_json.is_empty() {
                        println!("  schema: {}", s.schema_json);
                    }
                    super::time::print_history(&s.history, &cal);
                }
            }
            ServiceCommand::List {
                registry,
                agency,
                keyword,
                status,
                output,
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
                let mut listing = Listing::new("services");
                for r in records {
                    if let Some(Value::Service(s)) = r.value {
                        listing.row(service_line(&s), service_json(&s));
                    }
                }
                listing.fact("catalog_revision", revision);
                listing.footer(format!(
                    "({} service(s), catalog revision {revision})",
                    listing.len()
                ));
                output.print(&listing)?;
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

fn word(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix)
        .to_lowercase()
        .replace('_', "-")
}

/// What D47 Art. 23-26 and 41 ask a service to carry.
fn print_details(s: &Service, cal: &WorkCalendar) {
    println!(
        "  sharing: {}   security: {}   update cycle: {}",
        word(
            SharingMethod::try_from(s.sharing_method)
                .unwrap_or_default()
                .as_str_name(),
            "SHARING_METHOD_"
        ),
        word(
            SecurityClass::try_from(s.security)
                .unwrap_or_default()
                .as_str_name(),
            "SECURITY_CLASS_"
        ),
        if s.update_cycle.is_empty() {
            "-"
        } else {
            &s.update_cycle
        }
    );
    if !s.documentation_url.is_empty() {
        println!("  documentation: {}", s.documentation_url);
    }
    if let Some(v) = &s.validity {
        println!(
            "  validity: {} {}",
            word(
                ValidityKind::try_from(v.kind)
                    .unwrap_or_default()
                    .as_str_name(),
                "VALIDITY_KIND_"
            ),
            match ValidityKind::try_from(v.kind).unwrap_or_default() {
                ValidityKind::Period =>
                    format!("{} day(s) from the last sync", v.period_seconds / 86_400),
                ValidityKind::Window => format!(
                    "{} to {}",
                    cal.show(v.from_unix),
                    cal.show_last_day(v.until_unix)
                ),
                _ => String::new(),
            }
        );
    }
    if !s.items.is_empty() {
        println!("  data items:");
        for i in &s.items {
            println!(
                "    {:<24} {:<8} {}",
                i.name,
                word(
                    ItemClass::try_from(i.class)
                        .unwrap_or_default()
                        .as_str_name(),
                    "ITEM_CLASS_"
                ),
                i.description
            );
        }
    }
    for w in &s.maintenance {
        println!(
            "  maintenance {} to {}{}: {}",
            cal.show(w.start_unix),
            cal.show(w.end_unix),
            if w.force_majeure {
                " (force majeure)"
            } else {
                ""
            },
            w.reason
        );
    }
}

/// A service's line in `service list`.
fn service_line(s: &Service) -> String {
    let kind = ServiceKind::try_from(s.kind)
        .unwrap_or_default()
        .as_str_name();
    let status = ServiceStatus::try_from(s.status)
        .unwrap_or_default()
        .as_str_name();
    format!(
        "{:<40} {:<8} {:<10} v{} node {}  {}",
        s.id,
        kind.trim_start_matches("SERVICE_KIND_").to_lowercase(),
        status.trim_start_matches("SERVICE_STATUS_").to_lowercase(),
        s.version,
        if s.node.is_empty() { "-" } else { &s.node },
        s.description
    )
}

/// A service in `service list -o json`.
fn service_json(s: &Service) -> serde_json::Value {
    let name = |n: &str, prefix: &str| word(n, prefix);
    serde_json::json!({
        "id": s.id,
        "agency": s.agency_code,
        "name": s.name,
        "kind": name(ServiceKind::try_from(s.kind).unwrap_or_default().as_str_name(), "SERVICE_KIND_"),
        "status": name(ServiceStatus::try_from(s.status).unwrap_or_default().as_str_name(), "SERVICE_STATUS_"),
        "version": s.version,
        "node": s.node,
        "description": s.description,
        "update_cycle": s.update_cycle,
        "items": s.items.iter().map(|i| serde_json::json!({
            "name": i.name,
            "description": i.description,
            "class": name(ItemClass::try_from(i.class).unwrap_or_default().as_str_name(), "ITEM_CLASS_"),
        })).collect::<Vec<_>>(),
        "origin": s.origin,
        "via_hub": s.via_hub,
    })
}

//! `lgsp requests` and `lgsp inbox`: the access procedure of D47 Art. 35.
//! A consumer agency files a request; the provider agency approves it (the
//! grant is created from it) or refuses it with a reason, within 5 working
//! days; everyone sees what waits for them.

use super::access::print_grant;
use super::time::{Clock, print_history, province_calendar};
use super::{RegistryArgs, records_of};
use anyhow::{Result, anyhow};
use clap::Subcommand;
use lgsp_certs::{AgencyCode, SpiffeId};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{AccessRequest, Agreement, Calendar, RecordKind, RequestStatus, Service};
use lgsp_registry::calendar::WorkCalendar;
use lgsp_registry::procedure::request_status;
use lgsp_registry::{Catalog, Decision, ServiceId, Validity};

#[derive(Debug, Subcommand)]
pub(super) enum RequestsCommand {
    /// File an access request (D47 Art. 35) for a service of another agency,
    /// with an admin certificate of your agency. The provider decides within
    /// 5 working days.
    ///
    /// Example: lgsp requests file --service 000.00.12.H62/ho-tich --items so_dinh_danh,ho_ten
    /// --app-id mot-cua --app-name "Một cửa điện tử" --purpose "Giải quyết thủ tục" --frequency "hàng ngày"
    File {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The service requested.
        #[arg(long)]
        service: ServiceId,
        /// The data items requested, comma-separated.
        #[arg(long, value_delimiter = ',')]
        items: Vec<String>,
        /// The consuming application's identifier.
        #[arg(long)]
        app_id: String,
        /// The consuming application's name.
        #[arg(long)]
        app_name: String,
        /// What the data is for.
        #[arg(long)]
        purpose: String,
        /// How often the data will be pulled (e.g. "hàng ngày", "100 lượt/giờ").
        #[arg(long)]
        frequency: String,
        /// Anything else the provider should know.
        #[arg(long, default_value = "")]
        other: String,
        /// The requesting agency (default: your certificate's); the
        /// provincial admin may file for any agency.
        #[arg(long)]
        consumer: Option<AgencyCode>,
        /// A name for the request (default: one made from the time).
        #[arg(long)]
        name: Option<String>,
    },
    /// Approve a request (provider agency admin): the grant is created from
    /// it, for all items requested or a subset, optionally until a date.
    ///
    /// Example: lgsp requests approve 000.00.13.H62/r-20261207-0900 --items so_dinh_danh --until 2027-12-31
    Approve {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The request id, <consumer-agency>/<name>.
        id: String,
        /// The items granted, a subset of those requested (none: all).
        #[arg(long, value_delimiter = ',')]
        items: Vec<String>,
        /// Last day of the grant, YYYY-MM-DD (none: until terminated).
        #[arg(long)]
        until: Option<String>,
        /// Reference of the agreement covering special-request items (D47 Art. 38).
        #[arg(long)]
        agreement: Option<String>,
        /// Last day of that agreement, YYYY-MM-DD.
        #[arg(long, requires = "agreement")]
        agreement_until: Option<String>,
        /// A note for the consumer.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Refuse a request, stating the reason (required; Art. 13.1a).
    ///
    /// Example: lgsp requests refuse 000.00.13.H62/r-20261207-0900 --reason "Mục đích chưa rõ ràng"
    Refuse {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The request id.
        id: String,
        /// Why the request is refused (required): the requester is told this.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Withdraw your own request before it is decided.
    ///
    /// Example: lgsp requests withdraw 000.00.13.H62/r-20261207-0900
    Withdraw {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The request id.
        id: String,
    },
    /// List requests: the ones you filed, the ones waiting for your
    /// decision, and those overdue (past 5 working days).
    ///
    /// Example: lgsp requests list --overdue
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Only requests your agency filed.
        #[arg(long, conflicts_with_all = ["incoming", "overdue"])]
        mine: bool,
        /// Only requests for your agency's services.
        #[arg(long, conflicts_with = "overdue")]
        incoming: bool,
        /// Only undecided requests past their due date.
        #[arg(long)]
        overdue: bool,
        /// Every agency's requests, not only those your agency filed or
        /// decides (what the provincial admin follows up).
        #[arg(long, conflicts_with_all = ["mine", "incoming"])]
        all: bool,
        #[command(flatten)]
        clock: Clock,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
    /// Show one request with every field and its history.
    ///
    /// Example: lgsp requests show 000.00.13.H62/r-20261207-0900
    Show {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The request id.
        id: String,
    },
}

/// What waits for an agency.
#[derive(Debug, clap::Args)]
pub(super) struct InboxArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// The agency (default: your certificate's).
    #[arg(long)]
    agency: Option<AgencyCode>,
    #[command(flatten)]
    clock: Clock,
}

fn me(registry: &RegistryArgs) -> Result<SpiffeId> {
    Ok(registry.credentials()?.spiffe_id()?)
}

fn provider_of(r: &AccessRequest) -> &str {
    r.service_id.split('/').next().unwrap_or_default()
}

fn is_overdue(r: &AccessRequest, now: i64) -> bool {
    r.status == RequestStatus::Filed as i32 && r.due_unix <= now
}

/// The state a request is in at `now`: `OVERDUE` once its decision is late.
fn request_state(r: &AccessRequest, now: i64) -> &'static str {
    if is_overdue(r, now) {
        "OVERDUE"
    } else {
        request_status(r.status)
    }
}

/// A request's line in `requests list`.
fn request_line(r: &AccessRequest, cal: &WorkCalendar, now: i64) -> String {
    format!(
        "{:<36} {:<9} {:<36} due {:<22} items {}  {}",
        r.id,
        request_state(r, now),
        r.service_id,
        cal.show(r.due_unix),
        if r.items.is_empty() {
            "all".to_owned()
        } else {
            r.items.join(",")
        },
        if r.decision_reason.is_empty() {
            r.purpose.as_str()
        } else {
            r.decision_reason.as_str()
        }
    )
}

/// A request in `requests list -o json`.
fn request_json(r: &AccessRequest, cal: &WorkCalendar, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "state": request_status(r.status),
        "overdue": is_overdue(r, now),
        "service": r.service_id,
        "consumer": r.consumer_agency,
        "provider": provider_of(r),
        "due": super::output::time(cal, r.due_unix),
        "items": r.items,
        "application_id": r.application_id,
        "application_name": r.application_name,
        "purpose": r.purpose,
        "frequency": r.frequency,
        "decision_reason": r.decision_reason,
    })
}

fn agreement(
    cal: &WorkCalendar,
    reference: Option<String>,
    until: Option<String>,
) -> Result<Option<Agreement>> {
    let Some(reference) = reference else {
        return Ok(None);
    };
    let until_unix = match until.as_deref() {
        Some(d) => cal
            .end_of_day(d)
            .ok_or_else(|| anyhow!("--agreement-until {d:?} is not a date (YYYY-MM-DD)"))?,
        None => 0,
    };
    Ok(Some(Agreement {
        reference,
        until_unix,
    }))
}

pub(super) fn run(cmd: RequestsCommand) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        match cmd {
            RequestsCommand::File {
                registry,
                service,
                items,
                app_id,
                app_name,
                purpose,
                frequency,
                other,
                consumer,
                name,
            } => {
                let me = me(&registry)?;
                let consumer = consumer.unwrap_or_else(|| me.agency.clone());
                let name = name.unwrap_or_else(|| {
                    let t = super::time::unix_now();
                    format!("r-{t}")
                });
                let id = format!("{consumer}/{name}");
                let catalog = Catalog::new(registry.client()?);
                let cal = province_calendar(catalog.client()).await?;
                let rev = catalog
                    .file_request(AccessRequest {
                        id: id.clone(),
                        consumer_agency: consumer.to_string(),
                        service_id: service.to_string(),
                        items,
                        application_id: app_id,
                        application_name: app_name,
                        purpose,
                        frequency,
                        other,
                        ..Default::default()
                    })
                    .await?;
                let filed = catalog
                    .client()
                    .get(RecordKind::Request, &id, false)
                    .await?;
                if let Some(Value::Request(r)) = filed.record.and_then(|r| r.value) {
                    println!(
                        "Filed request {id} for {service} (revision {rev}); agency {} decides by {}",
                        provider_of(&r),
                        cal.show(r.due_unix)
                    );
                }
            }
            RequestsCommand::Approve {
                registry,
                id,
                items,
                until,
                agreement: reference,
                agreement_until,
                reason,
            } => {
                let catalog = Catalog::new(registry.client()?);
                let cal = province_calendar(catalog.client()).await?;
                let until = match until.as_deref() {
                    Some(d) => Validity::Until(cal.end_of_day(d).ok_or_else(|| {
                        anyhow!("--until {d:?} is not a date (YYYY-MM-DD)")
                    })?),
                    None => Validity::Open,
                };
                let decision = Decision::Approve {
                    items,
                    until,
                    agreement: agreement(&cal, reference, agreement_until)?,
                    reason,
                };
                let rev = catalog.decide(&id, decision).await?;
                println!("Approved request {id}; the grant is in force (revision {rev})");
            }
            RequestsCommand::Refuse {
                registry,
                id,
                reason,
            } => {
                let rev = Catalog::new(registry.client()?)
                    .decide(&id, Decision::Refuse { reason })
                    .await?;
                println!("Refused request {id} (revision {rev})");
            }
            RequestsCommand::Withdraw { registry, id } => {
                let rev = Catalog::new(registry.client()?)
                    .decide(&id, Decision::Withdraw)
                    .await?;
                println!("Withdrew request {id} (revision {rev})");
            }
            RequestsCommand::List {
                registry,
                mine,
                incoming,
                overdue,
                all,
                clock,
                output,
            } => {
                let me = me(&registry)?;
                let client = registry.client()?;
                let cal = province_calendar(&client).await?;
                let now = clock.now(&cal)?;
                let requests = records_of(&client, RecordKind::Request, |v| match v {
                    Value::Request(r) => Some(r),
                    _ => None,
                })
                .await?;
                let own = me.agency.as_str();
                let mut listing = super::output::Listing::new("requests");
                for r in &requests {
                    let filed_by_me = r.consumer_agency == own;
                    let for_me = provider_of(r) == own;
                    let show = if overdue {
                        is_overdue(r, now) && (for_me || filed_by_me || all)
                    } else if mine {
                        filed_by_me
                    } else if incoming {
                        for_me
                    } else {
                        filed_by_me || for_me || all
                    };
                    if show {
                        listing.row(request_line(r, &cal, now), request_json(r, &cal, now));
                    }
                }
                listing.fact("as_of", super::output::time(&cal, now));
                listing.footer(format!(
                    "({} request(s), as of {})",
                    listing.len(),
                    cal.show(now)
                ));
                output.print(&listing)?;
            }
            RequestsCommand::Show { registry, id } => {
                let client = registry.client()?;
                let cal = province_calendar(&client).await?;
                let r = client.get(RecordKind::Request, &id, false).await?;
                let Some(Value::Request(r)) = r.record.and_then(|r| r.value) else {
                    return Err(anyhow!("{id} is not an access request"));
                };
                let now = super::time::unix_now();
                println!("{}", request_line(&r, &cal, now));
                println!("  requester:   {} ({})", r.requester_name, r.consumer_agency);
                println!("  application: {} ({})", r.application_name, r.application_id);
                println!("  purpose:     {}", r.purpose);
                println!("  frequency:   {}", r.frequency);
                if !r.other.is_empty() {
                    println!("  other:       {}", r.other);
                }
                println!("  filed:       {}", cal.show(r.filed_unix));
                if r.decided_unix != 0 {
                    println!(
                        "  decided:     {} {}",
                        cal.show(r.decided_unix),
                        request_status(r.status)
                    );
                    if !r.granted_items.is_empty() {
                        println!("  granted:     {}", r.granted_items.join(","));
                    }
                    println!(
                        "  until:       {}",
                        super::time::last_day_or_dash(&cal, r.granted_until_unix)
                    );
                }
                print_history(&r.history, &cal);
            }
        }
        Ok(())
    })
}

/// `lgsp inbox`: requests to decide, decisions received, maintenance
/// announced on services the agency uses, its suspended grants.
pub(super) fn inbox(args: InboxArgs) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let me = me(&args.registry)?;
        let agency = args.agency.unwrap_or(me.agency);
        let own = agency.as_str();
        let client = args.registry.client()?;
        let cal = province_calendar(&client).await?;
        let now = args.clock.now(&cal)?;
        let requests = records_of(&client, RecordKind::Request, |v| match v {
            Value::Request(r) => Some(r),
            _ => None,
        })
        .await?;
        let grants = records_of(&client, RecordKind::Grant, |v| match v {
            Value::Grant(g) => Some(g),
            _ => None,
        })
        .await?;
        let services: Vec<Service> = records_of(&client, RecordKind::Service, |v| match v {
            Value::Service(s) => Some(s),
            _ => None,
        })
        .await?;
        println!("Inbox of agency {own}, as of {}", cal.show(now));

        println!("\nRequests to decide (Yêu cầu chờ quyết định):");
        for r in requests
            .iter()
            .filter(|r| provider_of(r) == own && r.status == RequestStatus::Filed as i32)
        {
            println!("{}", request_line(r, &cal, now));
        }
        println!("\nDecisions received (Kết quả yêu cầu):");
        for r in requests
            .iter()
            .filter(|r| r.consumer_agency == own && r.status != RequestStatus::Filed as i32)
        {
            println!("{}", request_line(r, &cal, now));
        }
        println!("\nMaintenance announced (Lịch tạm dừng bảo trì):");
        for s in &services {
            let uses = grants
                .iter()
                .any(|g| g.service_id == s.id && g.consumer_agency == own);
            if !(uses || s.agency_code == own) {
                continue;
            }
            for w in s.maintenance.iter().filter(|w| w.end_unix > now) {
                println!(
                    "{:<40} {} to {}{}  {}",
                    s.id,
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
        println!("\nSuspended or ended access (Tạm dừng, chấm dứt):");
        for g in grants.iter().filter(|g| {
            (g.consumer_agency == own || g.service_id.starts_with(&format!("{own}/")))
                && super::access::grant_state(g, now) != "active"
        }) {
            print_grant(g, &cal, now);
        }
        Ok(())
    })
}

#[derive(Debug, Subcommand)]
pub(super) enum CalendarCommand {
    /// Show the time zone and holidays.
    ///
    /// Example: lgsp calendar show
    Show {
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Set the province's time zone (an IANA name).
    ///
    /// Example: lgsp calendar set-time-zone Asia/Ho_Chi_Minh
    SetTimeZone {
        #[command(flatten)]
        registry: RegistryArgs,
        /// An IANA time zone name, e.g. Asia/Ho_Chi_Minh.
        zone: String,
    },
    /// Add holidays (not working days), YYYY-MM-DD.
    ///
    /// Example: lgsp calendar add-holiday 2027-02-05 2027-02-08
    AddHoliday {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The holidays, YYYY-MM-DD, one or more.
        #[arg(required = true)]
        dates: Vec<String>,
    },
    /// Remove holidays.
    ///
    /// Example: lgsp calendar remove-holiday 2027-02-05
    RemoveHoliday {
        #[command(flatten)]
        registry: RegistryArgs,
        /// The holidays to remove, YYYY-MM-DD, one or more.
        #[arg(required = true)]
        dates: Vec<String>,
    },
}

/// `lgsp calendar`.
pub(super) fn calendar(cmd: CalendarCommand) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let registry = match &cmd {
            CalendarCommand::Show { registry }
            | CalendarCommand::SetTimeZone { registry, .. }
            | CalendarCommand::AddHoliday { registry, .. }
            | CalendarCommand::RemoveHoliday { registry, .. } => registry,
        };
        let client = registry.client()?;
        let (mut current, rev) = match client.get(RecordKind::Calendar, "province", false).await {
            Ok(r) => {
                let rec = r.record.unwrap_or_default();
                let rev = rec.meta.map_or(0, |m| m.mod_revision);
                match rec.value {
                    Some(Value::Calendar(c)) => (c, rev),
                    _ => (Calendar::default(), 0),
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => (Calendar::default(), 0),
            Err(s) => return Err(s.into()),
        };
        match cmd {
            CalendarCommand::Show { .. } => {
                let cal = WorkCalendar::from_record(Some(&current))?;
                println!("time zone: {}", cal.time_zone());
                println!("holidays:  {}", current.holidays.join(" "));
                return Ok(());
            }
            CalendarCommand::SetTimeZone { zone, .. } => current.time_zone = zone,
            CalendarCommand::AddHoliday { dates, .. } => {
                for d in dates {
                    if lgsp_registry::calendar::parse_date(&d).is_none() {
                        return Err(anyhow!("{d:?} is not a date (YYYY-MM-DD)"));
                    }
                    if !current.holidays.contains(&d) {
                        current.holidays.push(d);
                    }
                }
                current.holidays.sort();
            }
            CalendarCommand::RemoveHoliday { dates, .. } => {
                current.holidays.retain(|h| !dates.contains(h));
            }
        }
        let r = client.put(Value::Calendar(current), rev).await?;
        println!("Calendar changed (revision {})", r.revision);
        Ok(())
    })
}

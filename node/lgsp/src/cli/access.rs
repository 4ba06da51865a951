//! `lgsp access`: who may call what. Grants are normally made by approving
//! an access request (`lgsp requests`); these are the provincial admin's
//! direct tools, and the provider agency's for suspending, resuming and
//! terminating (D47 Art. 43-44). Every change is recorded in the grant's
//! history with the certificate that made it.

use super::RegistryArgs;
use super::time::{Clock, province_calendar};
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use lgsp_certs::AgencyCode;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{
    Agreement, Grant, GrantStatus, ListRequest, RecordKind, SuspensionKind, TerminationKind,
};
use lgsp_registry::calendar::WorkCalendar;
use lgsp_registry::{Catalog, GrantKey, ServiceId, Validity};

/// Which grant: the service and the consumer agency, and how to reach the registry.
#[derive(Debug, Args)]
pub(super) struct GrantTarget {
    #[command(flatten)]
    registry: RegistryArgs,
    /// The service id, <agency-code>/<service-name>.
    #[arg(long)]
    service: ServiceId,
    /// The consumer agency's code.
    #[arg(long)]
    consumer: AgencyCode,
}

impl GrantTarget {
    fn key(&self) -> GrantKey {
        GrantKey {
            service: self.service.clone(),
            consumer: self.consumer.clone(),
        }
    }

    fn catalog(&self) -> Result<Catalog> {
        Ok(Catalog::new(self.registry.client()?))
    }
}

/// Why one consumer is suspended (D47 Art. 43).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum SuspendKind {
    /// The consumer breached the terms of use.
    Breach,
    /// A security risk (a leaked key, an attack from its systems).
    SecurityRisk,
}

/// Why a connection is terminated (D47 Art. 44).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum TerminateKind {
    /// The purpose no longer matches.
    PurposeMismatch,
    /// The connection cannot be restored.
    CannotRestore,
    /// Ordered by a competent authority.
    Ordered,
    /// The consumer no longer needs it.
    NoLongerNeeded,
    /// The agreement expired.
    AgreementExpired,
}

/// What a suspended consumer is told: the operator's words, or the D47
/// Art. 43 ground in words when none were given.
fn suspension_reason(kind: SuspendKind, reason: &str) -> String {
    let reason = lgsp_registry::text::nfc(reason.trim());
    if !reason.is_empty() {
        return reason;
    }
    match kind {
        SuspendKind::Breach => "Vi phạm quy định khai thác, sử dụng dữ liệu",
        SuspendKind::SecurityRisk => "Nguy cơ mất an toàn thông tin",
    }
    .to_owned()
}

#[derive(Debug, Subcommand)]
pub(super) enum AccessCommand {
    /// Grant a consumer agency access directly (provincial admin). Agencies
    /// use `lgsp requests file` and `lgsp requests approve` instead.
    ///
    /// Example: lgsp access grant --service 000.00.12.H62/ho-tich --consumer 000.00.13.H62
    /// --until 2027-12-31 --items so_dinh_danh,ho_ten --reason "Công văn số 123/UBND"
    Grant {
        #[command(flatten)]
        target: GrantTarget,
        /// Last day of the grant, YYYY-MM-DD, in the province's time zone
        /// (none: until terminated). A date already past is refused.
        #[arg(long)]
        until: Option<String>,
        /// The data items granted, comma-separated (none: every item).
        #[arg(long, value_delimiter = ',')]
        items: Vec<String>,
        /// Reference of the agreement covering special-request items (D47 Art. 38).
        #[arg(long)]
        agreement: Option<String>,
        /// Last day of that agreement, YYYY-MM-DD.
        #[arg(long, requires = "agreement")]
        agreement_until: Option<String>,
        /// Why (the request it answers, the agreement).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Suspend one consumer for a breach or a security risk (D47 Art. 43):
    /// it is refused, and told the reason and how to restore, until resumed.
    ///
    /// Example: lgsp access suspend --service 000.00.12.H62/ho-tich --consumer 000.00.13.H62
    /// --kind breach --reason "Truy vấn vượt mục đích" --restore "Gửi báo cáo giải trình"
    Suspend {
        #[command(flatten)]
        target: GrantTarget,
        /// Why (D47 Art. 43): a breach of the rules or a security risk.
        #[arg(long, value_enum)]
        kind: SuspendKind,
        /// What happened and why: the consumer is told this. Optional, as
        /// on every other grant command; without it the consumer is told
        /// the kind in words (e.g. "Vi phạm quy định khai thác, sử dụng dữ liệu").
        #[arg(long, default_value = "")]
        reason: String,
        /// How the consumer restores access: it is told this too.
        #[arg(long)]
        restore: String,
    },
    /// Resume a suspended grant.
    ///
    /// Example: lgsp access resume --service 000.00.12.H62/ho-tich --consumer 000.00.13.H62
    Resume {
        #[command(flatten)]
        target: GrantTarget,
        /// Why access is restored, kept in the grant's history.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Terminate a grant for one of the D47 Art. 44 reasons. Nodes refuse the
    /// consumer within a second. (`revoke` is the old name of this command.)
    ///
    /// Example: lgsp access terminate --service 000.00.12.H62/ho-tich --consumer 000.00.13.H62
    /// --kind no-longer-needed --reason "Hệ thống đã ngừng sử dụng"
    #[command(alias = "revoke")]
    Terminate {
        #[command(flatten)]
        target: GrantTarget,
        /// Which D47 Art. 44 reason applies.
        #[arg(long, value_enum)]
        kind: TerminateKind,
        /// What happened, in words: kept in the history and told to the consumer.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List grants by service or by consumer, with their state, dates and items.
    ///
    /// Example: lgsp access list --consumer 000.00.13.H62
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Only the grants of this service.
        #[arg(long)]
        service: Option<ServiceId>,
        /// Only the grants held by this consumer agency.
        #[arg(long)]
        consumer: Option<AgencyCode>,
        #[command(flatten)]
        clock: Clock,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
    /// Show one grant with its history.
    ///
    /// Example: lgsp access show --service 000.00.12.H62/ho-tich --consumer 000.00.13.H62
    Show {
        #[command(flatten)]
        target: GrantTarget,
    },
}

/// The state a grant is in at `now`: an expired grant shows as expired.
pub(super) fn grant_state(g: &Grant, now: i64) -> &'static str {
    match GrantStatus::try_from(g.status).unwrap_or_default() {
        GrantStatus::Active if g.expires_unix != 0 && g.expires_unix <= now => "expired",
        GrantStatus::Active => "active",
        GrantStatus::Suspended => "suspended",
        GrantStatus::Terminated => "terminated",
        GrantStatus::Unspecified => "unknown",
    }
}

fn date(cal: &WorkCalendar, flag: &str, value: &str) -> Result<i64> {
    cal.end_of_day(value)
        .ok_or_else(|| anyhow!("{flag} {value:?} is not a date (YYYY-MM-DD)"))
}

pub(super) fn print_grant(g: &Grant, cal: &WorkCalendar, now: i64) {
    println!("{}", grant_line(g, cal, now));
}

/// A grant's line in `access list`.
fn grant_line(g: &Grant, cal: &WorkCalendar, now: i64) -> String {
    let until = if g.expires_unix == 0 {
        "-".to_owned()
    } else {
        cal.show_last_day(g.expires_unix)
    };
    let items = if g.items.is_empty() {
        "all items".to_owned()
    } else {
        g.items.join(",")
    };
    format!(
        "{:<40} {:<16} {:<10} until {:<22} {}  {}{}",
        g.service_id,
        g.consumer_agency,
        grant_state(g, now),
        until,
        items,
        g.reason,
        if g.restore.is_empty() {
            String::new()
        } else {
            format!(" (to restore: {})", g.restore)
        }
    )
}

/// A grant in `access list -o json`: `items` empty means every item;
/// `until` is the last day covered (null: until terminated).
fn grant_json(g: &Grant, cal: &WorkCalendar, now: i64) -> serde_json::Value {
    serde_json::json!({
        "service": g.service_id,
        "consumer": g.consumer_agency,
        "state": grant_state(g, now),
        "until": (g.expires_unix != 0).then(|| cal.show_last_day(g.expires_unix)),
        "expires": super::output::time(cal, g.expires_unix),
        "items": g.items,
        "reason": g.reason,
        "restore": g.restore,
    })
}

pub(super) fn run(cmd: AccessCommand) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        match cmd {
            AccessCommand::Grant {
                target,
                until,
                items,
                agreement,
                agreement_until,
                reason,
            } => {
                let catalog = target.catalog()?;
                let cal = province_calendar(catalog.client()).await?;
                let validity = match until.as_deref() {
                    Some(d) => {
                        let end = date(&cal, "--until", d)?;
                        if end <= super::time::unix_now() {
                            return Err(anyhow!(
                                "--until {d} has already passed; a grant must end in the future"
                            ));
                        }
                        Validity::Until(end)
                    }
                    None => Validity::Open,
                };
                let agreement = match agreement {
                    Some(reference) => Some(Agreement {
                        reference,
                        until_unix: match agreement_until.as_deref() {
                            Some(d) => date(&cal, "--agreement-until", d)?,
                            None => 0,
                        },
                    }),
                    None => None,
                };
                let rev = catalog
                    .grant_items(&target.key(), validity, &reason, items, agreement)
                    .await?;
                println!(
                    "Agency {} may call {} (revision {rev})",
                    target.consumer, target.service
                );
            }
            AccessCommand::Suspend {
                target,
                kind,
                reason,
                restore,
            } => {
                let reason = suspension_reason(kind, &reason);
                let kind = match kind {
                    SuspendKind::Breach => SuspensionKind::Breach,
                    SuspendKind::SecurityRisk => SuspensionKind::SecurityRisk,
                };
                let rev = target
                    .catalog()?
                    .suspend(&target.key(), kind, &reason, &restore)
                    .await?;
                println!(
                    "Suspended agency {}'s access to {} (revision {rev}); it is told: {reason}; to restore: {restore}",
                    target.consumer, target.service
                );
            }
            AccessCommand::Resume { target, reason } => {
                let rev = target.catalog()?.resume(&target.key(), &reason).await?;
                println!(
                    "Resumed agency {}'s access to {} (revision {rev})",
                    target.consumer, target.service
                );
            }
            AccessCommand::Terminate {
                target,
                kind,
                reason,
            } => {
                let kind = match kind {
                    TerminateKind::PurposeMismatch => TerminationKind::PurposeMismatch,
                    TerminateKind::CannotRestore => TerminationKind::CannotRestore,
                    TerminateKind::Ordered => TerminationKind::Ordered,
                    TerminateKind::NoLongerNeeded => TerminationKind::NoLongerNeeded,
                    TerminateKind::AgreementExpired => TerminationKind::AgreementExpired,
                };
                let rev = target
                    .catalog()?
                    .terminate(&target.key(), kind, &reason)
                    .await?;
                println!(
                    "Terminated agency {}'s access to {} (revision {rev})",
                    target.consumer, target.service
                );
            }
            AccessCommand::List {
                registry,
                service,
                consumer,
                clock,
                output,
            } => {
                let client = registry.client()?;
                let cal = province_calendar(&client).await?;
                let now = clock.now(&cal)?;
                let (records, revision) = client
                    .list_all(ListRequest {
                        kind: RecordKind::Grant as i32,
                        prefix: service
                            .as_ref()
                            .map(GrantKey::prefix_of)
                            .unwrap_or_default(),
                        ..Default::default()
                    })
                    .await?;
                let mut listing = super::output::Listing::new("grants");
                for r in records {
                    if let Some(Value::Grant(g)) = r.value {
                        if consumer
                            .as_ref()
                            .is_some_and(|c| c.as_str() != g.consumer_agency)
                        {
                            continue;
                        }
                        listing.row(grant_line(&g, &cal, now), grant_json(&g, &cal, now));
                    }
                }
                listing.fact("catalog_revision", revision);
                listing.footer(format!(
                    "({} grant(s), catalog revision {revision})",
                    listing.len()
                ));
                output.print(&listing)?;
            }
            AccessCommand::Show { target } => {
                let client = target.registry.client()?;
                let cal = province_calendar(&client).await?;
                let key = target.key().to_string();
                let r = client.get(RecordKind::Grant, &key, false).await?;
                let Some(Value::Grant(g)) = r.record.and_then(|r| r.value) else {
                    return Err(anyhow!("{key} is not a grant"));
                };
                print_grant(&g, &cal, super::time::unix_now());
                if !g.request_id.is_empty() {
                    println!("  answers request {}", g.request_id);
                }
                if let Some(a) = &g.agreement {
                    println!("  agreement {} until {}", a.reference, super::time::last_day_or_dash(&cal, a.until_unix));
                }
                super::time::print_history(&g.history, &cal);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspension_without_reason_tells_the_consumer_its_ground() {
        assert_eq!(
            suspension_reason(SuspendKind::Breach, "  "),
            "Vi phạm quy định khai thác, sử dụng dữ liệu"
        );
        assert_eq!(
            suspension_reason(SuspendKind::SecurityRisk, ""),
            "Nguy cơ mất an toàn thông tin"
        );
        // The operator's words win, in NFC (typed "Truy vấn" decomposed).
        assert_eq!(
            suspension_reason(SuspendKind::Breach, "Truy va\u{302}\u{301}n vượt mục đích"),
            "Truy vấn vượt mục đích"
        );
    }
}

//! `lgsp access`: grant, suspend and terminate other agencies' access to a
//! service (by the provider agency or the provincial admin).

use super::RegistryArgs;
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use lgsp_certs::AgencyCode;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{GrantStatus, ListRequest, RecordKind};
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

#[derive(Debug, Subcommand)]
pub(super) enum AccessCommand {
    /// Let a consumer agency call a service.
    Grant {
        #[command(flatten)]
        target: GrantTarget,
        /// Last day of the grant, YYYY-MM-DD (none: until terminated).
        #[arg(long)]
        until: Option<String>,
        /// Why (the request it answers, the agreement).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Suspend a grant (D47 Art. 43): the consumer is refused until it is granted again.
    Suspend {
        #[command(flatten)]
        target: GrantTarget,
        /// What, why and how to restore: the consumer is told this.
        #[arg(long)]
        reason: String,
    },
    /// Terminate a grant (D47 Art. 44). Nodes refuse the consumer within a second.
    /// (`revoke` is the old name of this command.)
    #[command(alias = "revoke")]
    Terminate {
        #[command(flatten)]
        target: GrantTarget,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List the grants of a service.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        service: ServiceId,
    },
}

/// The end of `date` (YYYY-MM-DD, UTC) in seconds since 1970.
fn until_unix(date: &str) -> Result<i64> {
    let bad = || anyhow!("--until {date:?} is not a date (YYYY-MM-DD)");
    let parts: Vec<&str> = date.split('-').collect();
    let [year, month, day] = parts.as_slice() else {
        return Err(bad());
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if year.len() != 4 || month.len() != 2 || day.len() != 2 || !parts.iter().all(|p| digits(p)) {
        return Err(bad());
    }
    let number = |s: &str| s.parse::<u8>().map_err(|_| bad());
    let year: i32 = year.parse().map_err(|_| bad())?;
    let month = time::Month::try_from(number(month)?).map_err(|_| bad())?;
    let day = time::Date::from_calendar_date(year, month, number(day)?).map_err(|_| bad())?;
    Ok(day
        .next_day()
        .ok_or_else(bad)?
        .midnight()
        .assume_utc()
        .unix_timestamp())
}

pub(super) fn run(cmd: AccessCommand) -> Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        match cmd {
            AccessCommand::Grant {
                target,
                until,
                reason,
            } => {
                let validity = match until.as_deref() {
                    Some(date) => Validity::Until(until_unix(date)?),
                    None => Validity::Open,
                };
                let rev = target
                    .catalog()?
                    .grant(&target.key(), validity, &reason)
                    .await?;
                println!(
                    "Agency {} may call {} (revision {rev})",
                    target.consumer, target.service
                );
            }
            AccessCommand::Suspend { target, reason } => {
                let rev = target.catalog()?.suspend(&target.key(), &reason).await?;
                println!(
                    "Suspended agency {}'s access to {} (revision {rev})",
                    target.consumer, target.service
                );
            }
            AccessCommand::Terminate { target, reason } => {
                let rev = target.catalog()?.terminate(&target.key(), &reason).await?;
                println!(
                    "Terminated agency {}'s access to {} (revision {rev})",
                    target.consumer, target.service
                );
            }
            AccessCommand::List { registry, service } => {
                let (records, revision) = registry
                    .client()?
                    .list_all(ListRequest {
                        kind: RecordKind::Grant as i32,
                        prefix: GrantKey::prefix_of(&service),
                        ..Default::default()
                    })
                    .await?;
                for r in records {
                    if let Some(Value::Grant(g)) = r.value {
                        let status = GrantStatus::try_from(g.status)
                            .unwrap_or_default()
                            .as_str_name()
                            .trim_start_matches("GRANT_STATUS_")
                            .to_lowercase();
                        println!("{:<20} {:<10} {}", g.consumer_agency, status, g.reason);
                    }
                }
                println!("(catalog revision {revision})");
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn until_is_the_end_of_that_day_utc() {
        assert_eq!(super::until_unix("1970-01-01").unwrap(), 86_400);
        assert_eq!(super::until_unix("2026-11-27").unwrap(), 1_795_824_000);
        assert!(super::until_unix("2026-13-01").is_err());
        // A day the month does not have is refused, not rolled over.
        for bad in ["2026-02-31", "2026-04-31", "2026-1-01"] {
            let err = super::until_unix(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}

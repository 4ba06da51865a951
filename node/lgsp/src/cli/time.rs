//! Times as operators read and type them: on the province's clocks (the
//! catalog's calendar, Asia/Ho_Chi_Minh by default), never UTC.

use anyhow::{Result, anyhow};
use clap::Args;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Change, RecordKind};
use lgsp_registry::RegistryClient;
use lgsp_registry::calendar::WorkCalendar;
use tonic::Code;

/// As of when a listing is drawn up.
#[derive(Debug, Args)]
pub(super) struct Clock {
    /// Draw the listing up as of this time (YYYY-MM-DD or "YYYY-MM-DD HH:MM",
    /// the province's time) instead of now: what was overdue or expired then.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
}

impl Clock {
    /// The time the listing is drawn up for, Unix seconds.
    pub(super) fn now(&self, cal: &WorkCalendar) -> Result<i64> {
        match &self.at {
            None => Ok(unix_now()),
            Some(s) => cal
                .parse_local(s)
                .ok_or_else(|| anyhow!("--at {s:?} is not YYYY-MM-DD or \"YYYY-MM-DD HH:MM\"")),
        }
    }
}

/// The province's time zone, for commands that work without the registry
/// (whose calendar otherwise says it).
#[derive(Debug, Args)]
pub(super) struct ZoneArg {
    /// The province's time zone (an IANA name) for times shown and typed.
    #[arg(
        long = "time-zone",
        env = "LGSP_TIME_ZONE",
        value_name = "ZONE",
        default_value = lgsp_registry::calendar::DEFAULT_TIME_ZONE,
        hide_env = true
    )]
    zone: String,
}

impl ZoneArg {
    /// A calendar on the zone's clocks (without holidays). Fails on a name
    /// that is not an IANA time zone.
    pub(super) fn calendar(&self) -> Result<WorkCalendar> {
        let record = lgsp_proto::Calendar {
            time_zone: self.zone.clone(),
            ..Default::default()
        };
        WorkCalendar::from_record(Some(&record))
            .map_err(|e| super::UsageError(format!("--time-zone: {e}")).into())
    }
}

/// A time an operator types, on the province's clocks unless it carries
/// its own offset: RFC 3339 (`2026-11-01T08:00:00+07:00`), `YYYY-MM-DD
/// HH:MM` or a date `YYYY-MM-DD` (its start, or with `end_of_day` its last
/// millisecond). Unix milliseconds, or `None` when it is none of those.
pub(super) fn parse_bound_ms(cal: &WorkCalendar, s: &str, end_of_day: bool) -> Option<i64> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Some(ts.as_millisecond());
    }
    if lgsp_registry::calendar::parse_date(s).is_some() {
        return if end_of_day {
            cal.end_of_day(s).map(|t| t * 1000 - 1)
        } else {
            cal.parse_local(s).map(|t| t * 1000)
        };
    }
    cal.parse_local(s).map(|t| t * 1000)
}

/// The time now, Unix seconds.
pub(super) use lgsp_registry::calendar::unix_now;

/// The province's calendar, as the catalog holds it (the default when it
/// holds none).
pub(super) async fn province_calendar(client: &RegistryClient) -> Result<WorkCalendar> {
    match client.get(RecordKind::Calendar, "province", true).await {
        Ok(r) => match r.record.and_then(|r| r.value) {
            Some(Value::Calendar(c)) => Ok(WorkCalendar::from_record(Some(&c))?),
            _ => Ok(WorkCalendar::default()),
        },
        Err(status) if status.code() == Code::NotFound => Ok(WorkCalendar::default()),
        Err(status) => Err(status.into()),
    }
}

/// The last day an end time covers (`YYYY-MM-DD`), or `-` for none (0).
pub(super) fn last_day_or_dash(cal: &WorkCalendar, end_unix: i64) -> String {
    if end_unix == 0 {
        "-".to_owned()
    } else {
        cal.show_last_day(end_unix)
    }
}

/// A record's history, oldest first.
pub(super) fn print_history(history: &[Change], cal: &WorkCalendar) {
    if history.is_empty() {
        return;
    }
    println!("  history:");
    for c in history {
        println!(
            "    {}  {:<28} {}{}",
            cal.show(c.at_unix),
            c.action,
            c.actor,
            if c.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.reason)
            }
        );
    }
}

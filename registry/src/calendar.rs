//! Working days in the province's time zone (D47 counts its deadlines in
//! working days): Saturdays, Sundays and the holidays in the catalog's
//! `Calendar` record are not working days, and a day is a day on the
//! province's clocks (Asia/Ho_Chi_Minh unless the calendar says otherwise),
//! not in UTC.
//!
//! The registry uses this when it applies a command, so the answer must be
//! the same on every server: the time zone database is the one compiled in,
//! never the host's.

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use lgsp_proto::Calendar;
use std::collections::BTreeSet;

/// The time zone a province uses when its calendar names none.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Ho_Chi_Minh";

/// The most holidays a calendar may list.
pub const MAX_HOLIDAYS: usize = 1_000;

/// What is wrong with a calendar.
#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    /// The time zone is not an IANA name this build knows.
    #[error("time zone {0:?} is not an IANA time zone name (e.g. Asia/Ho_Chi_Minh)")]
    TimeZone(String),
    /// A holiday is not a date.
    #[error("holiday {0:?} is not a date (YYYY-MM-DD)")]
    Holiday(String),
    /// Too many holidays.
    #[error("the calendar lists {0} holidays; at most {MAX_HOLIDAYS}")]
    TooMany(usize),
}

/// The province's working days.
#[derive(Clone, Debug)]
pub struct WorkCalendar {
    tz: TimeZone,
    holidays: BTreeSet<Date>,
}

impl Default for WorkCalendar {
    fn default() -> Self {
        Self {
            tz: TimeZone::get(DEFAULT_TIME_ZONE).expect("the bundled time zone database"),
            holidays: BTreeSet::new(),
        }
    }
}

impl WorkCalendar {
    /// The calendar a `Calendar` record describes (the default when there is
    /// none).
    pub fn from_record(record: Option<&Calendar>) -> Result<Self, CalendarError> {
        let Some(record) = record else {
            return Ok(Self::default());
        };
        let name = if record.time_zone.is_empty() {
            DEFAULT_TIME_ZONE
        } else {
            record.time_zone.as_str()
        };
        let tz = TimeZone::get(name).map_err(|_| CalendarError::TimeZone(name.to_owned()))?;
        if record.holidays.len() > MAX_HOLIDAYS {
            return Err(CalendarError::TooMany(record.holidays.len()));
        }
        let holidays = record
            .holidays
            .iter()
            .map(|h| parse_date(h).ok_or_else(|| CalendarError::Holiday(h.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Self { tz, holidays })
    }

    /// The time zone's name.
    pub fn time_zone(&self) -> &str {
        self.tz.iana_name().unwrap_or(DEFAULT_TIME_ZONE)
    }

    /// Whether `day` is a working day: not a Saturday, a Sunday or a holiday.
    pub fn is_working_day(&self, day: Date) -> bool {
        !matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday)
            && !self.holidays.contains(&day)
    }

    /// The local date at `unix` seconds.
    pub fn date_of(&self, unix: i64) -> Date {
        self.zoned(unix).date()
    }

    fn zoned(&self, unix: i64) -> Zoned {
        Timestamp::from_second(unix)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
    }

    /// The end of the `n`-th working day after the day of `from_unix`, in
    /// Unix seconds: what "within n working days" allows. Filed on a Friday
    /// with n = 5, it is the end of the next Friday (or later, past
    /// holidays).
    pub fn add_working_days(&self, from_unix: i64, n: u32) -> i64 {
        let mut day = self.date_of(from_unix);
        let mut counted = 0;
        // Bounded: a year of holidays cannot hide more than 366 days.
        for _ in 0..(n as usize * 7 + 400) {
            if counted == n {
                break;
            }
            day = day.tomorrow().unwrap_or(day);
            if self.is_working_day(day) {
                counted += 1;
            }
        }
        self.start_of(day.tomorrow().unwrap_or(day))
    }

    /// Working days strictly after the day of `from_unix` and strictly
    /// before the day of `to_unix`: the full working days of notice between
    /// an announcement and the day something starts.
    pub fn working_days_between(&self, from_unix: i64, to_unix: i64) -> u32 {
        let (mut day, last) = (self.date_of(from_unix), self.date_of(to_unix));
        let mut n = 0;
        for _ in 0..3_700 {
            day = match day.tomorrow() {
                Ok(d) if d < last => d,
                _ => break,
            };
            if self.is_working_day(day) {
                n += 1;
            }
        }
        n
    }

    /// The first second of `day` on the province's clocks.
    pub fn start_of(&self, day: Date) -> i64 {
        day.to_zoned(self.tz.clone())
            .map(|z| z.timestamp().as_second())
            .unwrap_or(0)
    }

    /// The last day an end time set by [`Self::end_of_day`] covers,
    /// `YYYY-MM-DD`: what an operator typed as `--until`.
    pub fn show_last_day(&self, end_unix: i64) -> String {
        self.date_of(end_unix - 1).to_string()
    }

    /// `unix` as the province's clocks show it: `2026-12-07 09:30 +07`.
    pub fn show(&self, unix: i64) -> String {
        self.zoned(unix).strftime("%Y-%m-%d %H:%M %:z").to_string()
    }
}

impl WorkCalendar {
    /// A time as an operator types it, on the province's clocks:
    /// `YYYY-MM-DD` (the start of that day) or `YYYY-MM-DD HH:MM` (also with
    /// a `T`); Unix seconds.
    pub fn parse_local(&self, s: &str) -> Option<i64> {
        if let Some(day) = parse_date(s) {
            return Some(self.start_of(day));
        }
        let dt: jiff::civil::DateTime = s.replacen(' ', "T", 1).parse().ok()?;
        dt.to_zoned(self.tz.clone())
            .ok()
            .map(|z| z.timestamp().as_second())
    }

    /// The end of day `YYYY-MM-DD` on the province's clocks (the start of
    /// the next), Unix seconds: what "until that date" means.
    pub fn end_of_day(&self, s: &str) -> Option<i64> {
        let day = parse_date(s)?;
        Some(self.start_of(day.tomorrow().ok()?))
    }
}

/// The time now, Unix seconds: what every "now" of the platform reads.
pub fn unix_now() -> i64 {
    Timestamp::now().as_second()
}

/// The time now, Unix milliseconds.
pub fn unix_now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<Date> {
    (s.len() == 10).then(|| s.parse::<Date>().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(local: &str) -> i64 {
        // Vietnam is UTC+7 all year.
        let ts: Timestamp = format!("{local}+07:00").parse().unwrap();
        ts.as_second()
    }

    fn calendar(holidays: &[&str]) -> WorkCalendar {
        WorkCalendar::from_record(Some(&Calendar {
            time_zone: String::new(),
            holidays: holidays.iter().map(|h| h.to_string()).collect(),
        }))
        .unwrap()
    }

    #[test]
    fn five_working_days_from_a_friday_end_the_next_friday() {
        // 2026-12-04 is a Friday.
        let due = calendar(&[]).add_working_days(at("2026-12-04T10:00:00"), 5);
        assert_eq!(due, at("2026-12-12T00:00:00"));
    }

    #[test]
    fn a_holiday_pushes_the_deadline_a_day() {
        let due = calendar(&["2026-12-08"]).add_working_days(at("2026-12-04T10:00:00"), 5);
        assert_eq!(
            due,
            at("2026-12-15T00:00:00"),
            "Saturday and Sunday skipped too"
        );
    }

    #[test]
    fn days_are_counted_on_the_provinces_clocks_not_utc() {
        // 23:30 UTC on Thursday is already Friday 06:30 in Vietnam.
        let filed = Timestamp::from_second(at("2026-12-04T06:30:00"))
            .unwrap()
            .as_second();
        let cal = calendar(&[]);
        assert_eq!(cal.date_of(filed).to_string(), "2026-12-04");
        assert_eq!(cal.add_working_days(filed, 1), at("2026-12-08T00:00:00"));
    }

    #[test]
    fn notice_counts_the_full_working_days_in_between() {
        let cal = calendar(&["2026-12-09"]);
        // Announced Monday 7 Dec; starts Friday 18 Dec: 8, (9 holiday), 10, 11, 14, 15, 16, 17.
        assert_eq!(
            cal.working_days_between(at("2026-12-07T09:00:00"), at("2026-12-18T08:00:00")),
            7
        );
        assert_eq!(
            cal.working_days_between(at("2026-12-07T09:00:00"), at("2026-12-10T08:00:00")),
            1
        );
    }

    #[test]
    fn operators_type_times_on_the_provinces_clocks() {
        let cal = calendar(&[]);
        assert_eq!(
            cal.parse_local("2026-12-17 09:00"),
            Some(at("2026-12-17T09:00:00"))
        );
        assert_eq!(
            cal.parse_local("2026-12-17T09:00"),
            Some(at("2026-12-17T09:00:00"))
        );
        assert_eq!(
            cal.parse_local("2026-12-17"),
            Some(at("2026-12-17T00:00:00"))
        );
        assert_eq!(
            cal.end_of_day("2026-12-31"),
            Some(at("2027-01-01T00:00:00"))
        );
        assert_eq!(cal.parse_local("17/12/2026"), None);
        assert_eq!(
            cal.show(at("2026-12-17T09:00:00")),
            "2026-12-17 09:00 +07:00"
        );
    }

    #[test]
    fn a_bad_time_zone_or_holiday_is_refused_by_name() {
        let bad = |tz: &str, h: &str| {
            WorkCalendar::from_record(Some(&Calendar {
                time_zone: tz.into(),
                holidays: vec![h.into()],
            }))
            .unwrap_err()
            .to_string()
        };
        assert!(bad("Mars/Olympus", "2026-01-01").contains("Mars/Olympus"));
        assert!(bad("", "2026-13-01").contains("2026-13-01"));
        assert!(bad("", "2026-1-1").contains("2026-1-1"));
    }
}

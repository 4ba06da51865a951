//! The log's times: entries and seals carry RFC 3339 UTC with milliseconds
//! (`2025-03-01T01:02:03.456Z`); export bounds are RFC 3339 or whole days.
//!
//! The calendar is the `time` crate's. Only the RFC 3339 layout is read here by hand, so
//! that `time` needs no features beyond its defaults and the log keeps accepting what it
//! always has: a space or `t` for the `T`, and a leap second (`:60`) at any minute.

use crate::error::AuditError;
use time::{Date, Month, OffsetDateTime, Time, UtcOffset};

const DAY_MS: i64 = 86_400_000;

/// Milliseconds since the Unix epoch of a bound: RFC 3339, or a date meaning its first
/// (`end_of_day` false) or last millisecond, UTC.
pub(crate) fn parse_bound(s: &str, end_of_day: bool) -> Result<i64, AuditError> {
    let s = s.trim();
    let bad = || AuditError::BadTime(s.to_owned());
    if s.len() == 10 {
        let day = parse_date(s).ok_or_else(bad)?;
        let start = day.midnight().assume_utc().unix_timestamp() * 1000;
        return Ok(start + if end_of_day { DAY_MS - 1 } else { 0 });
    }
    parse_time(s).ok_or_else(bad)
}

/// A `YYYY-MM-DD` date that exists in the Gregorian calendar.
fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::from(digits(&b[0..4])?);
    let month = Month::try_from(u8::try_from(digits(&b[5..7])?).ok()?).ok()?;
    let day = u8::try_from(digits(&b[8..10])?).ok()?;
    Date::from_calendar_date(year, month, day).ok()
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`T` or a space between date
/// and time; fractions beyond milliseconds are cut).
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = parse_date(s.get(..10)?)?;
    let [hour, minute, second] =
        [&b[11..13], &b[14..16], &b[17..19]].map(|two| u8::try_from(digits(two)?).ok());
    let (hour, minute, second) = (hour?, minute?, second?);
    // `time` has no leap seconds: `:60` is counted as the next second.
    let leap = second == 60;
    let time = Time::from_hms(hour, minute, if leap { 59 } else { second }).ok()?;
    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in tail[..n.min(3)].iter().enumerate() {
            millis += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &tail[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => UtcOffset::UTC,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = i8::try_from(digits(&[*h1, *h2])?).ok()?;
            let minutes = i8::try_from(digits(&[*m1, *m2])?).ok()?;
            // `time` takes offsets up to 25 hours; RFC 3339's hour is a time of day.
            if hours > 23 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?
        }
        _ => return None,
    };
    let seconds = date.with_time(time).assume_offset(offset).unix_timestamp() + i64::from(leap);
    Some(seconds * 1000 + millis)
}

/// The number an ASCII decimal field of up to four digits spells.
fn digits(b: &[u8]) -> Option<u16> {
    b.iter().try_fold(0u16, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))
    })
}

/// `2025-03-01T01:02:03.456Z`: the instant in UTC, always with three digits of
/// milliseconds, so that every entry's time has the same length.
///
/// Panics for an instant within a day of the years -9999 and 9999 given in another
/// offset than UTC, which `time` cannot move to UTC; the log gives only `now_utc()`.
pub(crate) fn format_utc(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    let (year, month, day) = at.to_calendar_date();
    format!(
        "{year:04}-{:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        u8::from(month),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

pub(crate) fn now_rfc3339() -> String {
    format_utc(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instant `ms` milliseconds after the Unix epoch.
    fn at_ms(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
    }

    #[test]
    fn times_format_and_parse_consistently() {
        assert_eq!(format_utc(at_ms(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_utc(at_ms(1_709_251_323_456)),
            "2024-03-01T00:02:03.456Z"
        );
        for ms in [0, 951_782_400_000, 1_709_251_323_456, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_utc(at_ms(ms))), Some(ms));
        }
        assert_eq!(
            parse_time("2024-03-01T07:02:03.456789+07:00"),
            Some(1_709_251_323_456)
        );
        assert_eq!(parse_time("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_time("2024-03-01T24:00:00Z"), None);
    }

    fn bound(s: &str, end_of_day: bool) -> i64 {
        parse_bound(s, end_of_day).unwrap()
    }

    #[test]
    fn leap_days_exist_only_in_leap_years() {
        for leap in ["2024-02-29", "2000-02-29", "1600-02-29"] {
            assert!(parse_bound(leap, false).is_ok(), "{leap}");
            assert_eq!(
                bound(leap, true) + 1,
                bound(&format!("{}-03-01", &leap[..4]), false),
                "{leap} is the day before 1 March"
            );
        }
        for not_leap in ["2023-02-29", "1900-02-29", "2100-02-29", "2024-02-30"] {
            assert!(parse_bound(not_leap, false).is_err(), "{not_leap}");
            assert_eq!(parse_time(&format!("{not_leap}T12:00:00Z")), None);
        }
        assert_eq!(parse_time("2024-02-29T12:00:00Z"), Some(1_709_208_000_000));
    }

    #[test]
    fn a_date_bound_covers_its_whole_day_in_utc() {
        assert_eq!(
            bound("2025-03-01", false),
            parse_time("2025-03-01T00:00:00.000Z").unwrap()
        );
        assert_eq!(
            bound("2025-03-01", true),
            parse_time("2025-03-01T23:59:59.999Z").unwrap()
        );
        assert_eq!(bound("2024-12-31", true) + 1, bound("2025-01-01", false));
        assert_eq!(
            bound(" 1970-01-01 ", false),
            0,
            "spaces around a bound are ignored"
        );
    }

    #[test]
    fn offsets_fractions_and_leap_seconds_are_read() {
        let utc = parse_time("2025-03-01T01:00:00Z").unwrap();
        assert_eq!(parse_time("2025-03-01T08:00:00+07:00"), Some(utc));
        assert_eq!(parse_time("2025-02-28T19:30:00-05:30"), Some(utc));
        assert_eq!(parse_time("2025-03-01 01:00:00z"), Some(utc));
        assert_eq!(parse_time("2025-03-01t01:00:00.5Z"), Some(utc + 500));
        assert_eq!(parse_time("2025-03-01T01:00:00.123999Z"), Some(utc + 123));
        assert_eq!(
            parse_time("2025-03-01T00:59:60Z"),
            Some(utc),
            "a leap second"
        );
        assert_eq!(
            parse_time("0000-01-01T00:00:00Z"),
            Some(-62_167_219_200_000),
            "year 0 of the proleptic calendar"
        );
    }

    #[test]
    fn junk_times_are_refused_naming_the_bound() {
        for junk in [
            "",
            "1/3/2025",
            "2025-3-01",
            "2025-13-01",
            "2025-00-10",
            "2025-03-00",
            "2025-03-01T08:00:00",
            "2025-03-01T08:00Z",
            "2025-03-01T24:00:00Z",
            "2025-03-01T08:60:00Z",
            "2025-03-01T08:00:61Z",
            "2025-03-01T08:00:00.Z",
            "2025-03-01T08:00:00+7:00",
            "2025-03-01T08:00:00+24:00",
            "2025-03-01T08:00:00+07:60",
            "2025-03-01T08:00:00+0700",
            "2025-03-01T08:00:00Z ago",
            "2025-03-01x08:00:00Z",
            "２０２５-03-01",
            "ngày 1/3/25",
        ] {
            match parse_bound(junk, false) {
                Err(AuditError::BadTime(s)) => assert_eq!(s, junk.trim()),
                other => panic!("{junk:?} should be refused, got {other:?}"),
            }
        }
        assert!(
            AuditError::BadTime("1/3/2025".into())
                .to_string()
                .starts_with("malformed time \"1/3/2025\": expected RFC 3339")
        );
    }

    #[test]
    fn times_are_written_in_utc_with_three_digits_of_milliseconds() {
        assert_eq!(format_utc(at_ms(5)), "1970-01-01T00:00:00.005Z");
        assert_eq!(format_utc(at_ms(-1)), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_utc(at_ms(1_709_208_000_000).to_offset(UtcOffset::from_hms(7, 0, 0).unwrap())),
            "2024-02-29T12:00:00.000Z"
        );
        assert_eq!(
            format_utc(OffsetDateTime::from_unix_timestamp_nanos(1_999_999).unwrap()),
            "1970-01-01T00:00:00.001Z",
            "cut, not rounded"
        );
    }
}

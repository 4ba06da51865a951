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
}

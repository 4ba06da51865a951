//! A caller's deadline, read from `grpc-timeout` or sent on a node link,
//! and the rules for telling an abandoned call from a cancelled one.

use std::time::{Duration, Instant};

/// A caller's deadline: when it falls, and how long the caller allowed.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// When the caller stops waiting.
    pub at: Instant,
    /// How long the caller allowed in all, as it sent it; reported in a
    /// [`DeadlineExceeded`](crate::refusal::Refusal::DeadlineExceeded) refusal.
    pub total: Duration,
}

impl Deadline {
    /// The deadline in `metadata` (`grpc-timeout`), counted from `started`.
    pub fn of(metadata: &tonic::metadata::MetadataMap, started: Instant) -> Option<Self> {
        deadline_of(metadata).map(|total| Self::after(started, total))
    }

    /// `total` from `started`.
    pub fn after(started: Instant, total: Duration) -> Self {
        Self {
            at: started + total,
            total,
        }
    }

    /// The earlier of this deadline and `total` from `started`: a caller's
    /// deadline bounded by a server's own limit on the calls it makes.
    pub fn within(deadline: Option<Self>, started: Instant, total: Duration) -> Self {
        let own = Self::after(started, total);
        match deadline {
            Some(d) if d.at < own.at => d,
            _ => own,
        }
    }

    /// The time left.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether a call abandoned now was abandoned because of this deadline.
    /// The caller's clock started before ours (tonic reads `grpc-timeout`
    /// before the request reaches us, and the request had to travel), so
    /// "close to" counts: within a tenth of the deadline, at least 5 ms and
    /// at most 250 ms.
    pub fn is_near_or_past(&self) -> bool {
        let slack = (self.total / 10).clamp(Duration::from_millis(5), Duration::from_millis(250));
        Instant::now() + slack >= self.at
    }
}

/// The deadline an application set on its call (the `grpc-timeout` header:
/// up to 8 digits and a unit), if any.
pub(crate) fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_read_from_grpc_timeout_in_every_unit_and_junk_is_ignored() {
        let of = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            deadline_of(&m)
        };
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(of("1500u"), Some(Duration::from_micros(1500)));
        assert_eq!(of("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(of("m"), None);
        assert_eq!(of("123456789m"), None, "more than 8 digits");
        assert_eq!(of("10x"), None);
        assert_eq!(of("-5m"), None);
        assert_eq!(deadline_of(&tonic::metadata::MetadataMap::new()), None);
    }
}

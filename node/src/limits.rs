//! Per-consumer-agency limits on the provider side: calls in flight and
//! calls per second. The provider's pipeline takes a [`Permit`] for every
//! call, whichever path it came by, and holds it until the reply is handed
//! over (for a query stream, until its last page), so a long stream counts
//! as in flight for as long as it streams.
//!
//! Time is tokio's clock, so tests can pause and advance it.

use crate::refusal::Refusal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    /// The key, shared with its permits.
    name: Arc<str>,
    tokens: f64,
    at: Instant,
    in_flight: usize,
}

/// Which limit a call ran into (see [`Buckets::take`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// This many calls were already in flight.
    InFlight(usize),
    /// Over this many calls per second.
    Rate(u32),
}

/// Calls in flight and calls per second, per key (a consumer agency, a
/// federation peer): a token bucket holding one second's calls, and the
/// slots held. The limits are given at each call, so they may change.
#[derive(Debug, Default)]
pub struct Buckets {
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

/// Holds one in-flight slot of a key until dropped.
#[derive(Debug)]
pub struct Permit {
    buckets: Arc<Buckets>,
    key: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self.buckets.lock().get_mut(&self.key) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

impl Buckets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Bucket>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `key` under `max_in_flight` calls at once and
    /// `rate_per_second` calls per second (each at least 1), or says which
    /// it hit. A key's bucket starts full: it may burst one second's calls.
    pub fn take(
        self: &Arc<Self>,
        key: &str,
        max_in_flight: usize,
        rate_per_second: u32,
    ) -> Result<Permit, Over> {
        let max = max_in_flight.max(1);
        let rate = f64::from(rate_per_second.max(1));
        let now = Instant::now();
        let mut buckets = self.lock();
        if !buckets.contains_key(key) {
            let name: Arc<str> = Arc::from(key);
            let fresh = Bucket {
                name: name.clone(),
                tokens: rate,
                at: now,
                in_flight: 0,
            };
            buckets.insert(name, fresh);
        }
        let b = buckets.get_mut(key).expect("inserted above");
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.in_flight >= max {
            return Err(Over::InFlight(max));
        }
        if b.tokens < 1.0 {
            return Err(Over::Rate(rate as u32));
        }
        b.tokens -= 1.0;
        b.in_flight += 1;
        Ok(Permit {
            buckets: self.clone(),
            key: b.name.clone(),
        })
    }

    /// How many keys the table holds.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    /// Forgets keys not in `keep` that have nothing in flight, so the table
    /// stays as small as the list it follows.
    pub fn retain(&self, keep: &[String]) {
        self.lock()
            .retain(|key, b| b.in_flight > 0 || keep.iter().any(|k| **k == **key));
    }
}

/// Calls in flight and calls per second, per consumer agency.
#[derive(Debug)]
pub struct Limits {
    max_in_flight: usize,
    rate_per_second: u32,
    buckets: Arc<Buckets>,
}

impl Limits {
    /// Limits of `max_in_flight` calls at once and `rate_per_second` calls
    /// per second for each consumer agency (each at least 1); a consumer's
    /// bucket starts full, so it may burst up to one second's calls.
    pub fn new(max_in_flight: usize, rate_per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight,
            rate_per_second,
            buckets: Arc::default(),
        })
    }

    /// Takes a slot for `consumer`, or says which limit it hit.
    pub fn acquire(&self, consumer: &str) -> Result<Permit, Refusal> {
        self.buckets
            .take(consumer, self.max_in_flight, self.rate_per_second)
            .map_err(|over| match over {
                Over::InFlight(max) => Refusal::TooManyInFlight {
                    consumer: consumer.to_owned(),
                    max,
                },
                Over::Rate(rate) => Refusal::OverRate {
                    consumer: consumer.to_owned(),
                    rate,
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const B: &str = "000.00.31.H62";
    const C: &str = "000.00.32.H62";

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_are_capped_per_agency_and_a_dropped_permit_frees_its_slot() {
        let limits = Limits::new(2, 1_000);
        let first = limits.acquire(B).unwrap();
        let _second = limits.acquire(B).unwrap();
        assert_eq!(
            limits.acquire(B).unwrap_err(),
            Refusal::TooManyInFlight {
                consumer: B.into(),
                max: 2
            }
        );
        // Another agency's budget is its own.
        let _c = limits.acquire(C).unwrap();
        drop(first);
        limits.acquire(B).expect("the slot came back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refills_with_time_and_never_beyond_one_second_of_calls() {
        let limits = Limits::new(100, 3);
        for _ in 0..3 {
            drop(limits.acquire(B).unwrap());
        }
        assert!(matches!(limits.acquire(B), Err(Refusal::OverRate { .. })));
        tokio::time::advance(Duration::from_millis(340)).await;
        drop(
            limits
                .acquire(B)
                .expect("a third of a second gives one call back"),
        );
        assert!(limits.acquire(B).is_err());
        // A long pause fills the bucket to one second's worth, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            drop(limits.acquire(B).unwrap());
        }
        assert!(limits.acquire(B).is_err());
    }
}

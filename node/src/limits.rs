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
    /// The consumer's name, shared with its permits.
    name: Arc<str>,
    tokens: f64,
    at: Instant,
    in_flight: usize,
}

/// Calls in flight and calls per second, per consumer agency.
#[derive(Debug)]
pub struct Limits {
    max_in_flight: usize,
    rate: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

/// Holds one in-flight slot of a consumer until dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    consumer: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self
            .limits
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&self.consumer)
        {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

impl Limits {
    /// Limits of `max_in_flight` calls at once and `rate_per_second` calls
    /// per second for each consumer agency (each at least 1); a consumer's
    /// bucket starts full, so it may burst up to one second's calls.
    pub fn new(max_in_flight: usize, rate_per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight: max_in_flight.max(1),
            rate: f64::from(rate_per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `consumer`, or says which limit it hit.
    pub fn acquire(self: &Arc<Self>, consumer: &str) -> Result<Permit, Refusal> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if !buckets.contains_key(consumer) {
            let name: Arc<str> = Arc::from(consumer);
            let fresh = Bucket {
                name: name.clone(),
                tokens: self.rate,
                at: now,
                in_flight: 0,
            };
            buckets.insert(name, fresh);
        }
        let b = buckets.get_mut(consumer).expect("inserted above");
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate);
        b.at = now;
        if b.in_flight >= self.max_in_flight {
            return Err(Refusal::TooManyInFlight {
                consumer: consumer.to_owned(),
                max: self.max_in_flight,
            });
        }
        if b.tokens < 1.0 {
            return Err(Refusal::OverRate {
                consumer: consumer.to_owned(),
                rate: self.rate as u32,
            });
        }
        b.tokens -= 1.0;
        b.in_flight += 1;
        Ok(Permit {
            limits: self.clone(),
            consumer: b.name.clone(),
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

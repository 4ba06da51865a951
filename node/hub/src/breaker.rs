//! A circuit breaker per external system: after `threshold` consecutive
//! failures it opens and calls fail at once, naming the system; after
//! `cool_down` one call goes through to probe it (half-open); a success
//! closes it, a failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls fail at once until the cool-down has passed.
    Open {
        /// Consecutive failures that opened it.
        failures: u32,
    },
    /// One probe is in flight.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    opened: Option<Instant>,
    probing: bool,
}

/// A breaker for one external system.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures
    /// and probes again after `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            inner: Mutex::new(Inner {
                failures: 0,
                opened: None,
                probing: false,
            }),
        }
    }

    /// Whether a call may go now (at `now`); when not, how long until the
    /// next probe.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match s.opened {
            None => Ok(()),
            Some(at) if now.duration_since(at) >= self.cool_down && !s.probing => {
                s.probing = true;
                Ok(())
            }
            Some(at) => Err(self.cool_down.saturating_sub(now.duration_since(at))),
        }
    }

    /// Admits a call at `now` and returns its [`Attempt`], which records the
    /// outcome: a call dropped before it finished (its caller gave up, a
    /// deadline passed) counts as a failure, and a probe dropped so does not
    /// leave the breaker half-open for good.
    pub fn attempt(&self, now: Instant) -> Result<Attempt<'_>, Duration> {
        self.admit(now)?;
        Ok(Attempt {
            breaker: self,
            done: false,
        })
    }

    /// Records a call's outcome at `now`: `ok` is false when the system
    /// could not be reached or did not answer in time.
    pub fn record(&self, ok: bool, now: Instant) {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.probing = false;
        if ok {
            s.failures = 0;
            s.opened = None;
        } else {
            s.failures += 1;
            if s.failures >= self.threshold {
                s.opened = Some(now);
            }
        }
    }

    /// Where it stands.
    pub fn state(&self) -> State {
        let s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (s.opened, s.probing) {
            (None, _) => State::Closed,
            (Some(_), true) => State::HalfOpen,
            (Some(_), false) => State::Open {
                failures: s.failures,
            },
        }
    }
}

/// One admitted call: [`Attempt::finish`] records how it went; dropping it
/// unfinished records a failure.
#[derive(Debug)]
pub struct Attempt<'b> {
    breaker: &'b Breaker,
    done: bool,
}

impl Attempt<'_> {
    /// Records the outcome: `ok` is false when the system could not be
    /// reached or did not answer in time.
    pub fn finish(mut self, ok: bool) {
        self.done = true;
        self.breaker.record(ok, Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(false, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_after_the_cool_down_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.admit(t0).is_ok());
            b.record(false, t0);
        }
        assert_eq!(b.state(), State::Closed, "two failures do not open it");
        b.record(false, t0);
        assert_eq!(b.state(), State::Open { failures: 3 });
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(4))
        );
        // Half-open: one probe, not two.
        let later = t0 + Duration::from_secs(5);
        assert!(b.admit(later).is_ok());
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.admit(later).is_err());
        // The probe fails: open again, for another cool-down.
        b.record(false, later);
        assert!(b.admit(later + Duration::from_secs(1)).is_err());
        // The next probe succeeds: closed.
        let again = later + Duration::from_secs(5);
        assert!(b.admit(again).is_ok());
        b.record(true, again);
        assert_eq!(b.state(), State::Closed);
        assert!(b.admit(again).is_ok());
    }

    #[test]
    fn a_probe_dropped_unfinished_counts_as_a_failure_and_the_next_one_is_let_through() {
        let b = Breaker::new(1, Duration::from_millis(1));
        b.record(false, Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        // The probe's caller gives up: dropped without an outcome.
        drop(b.attempt(Instant::now()).expect("the probe is admitted"));
        assert_eq!(b.state(), State::Open { failures: 2 });
        std::thread::sleep(Duration::from_millis(2));
        let probe = b
            .attempt(Instant::now())
            .expect("another probe after the cool-down");
        probe.finish(true);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(3, Duration::from_secs(5));
        let t = Instant::now();
        b.record(false, t);
        b.record(false, t);
        b.record(true, t);
        b.record(false, t);
        b.record(false, t);
        assert_eq!(b.state(), State::Closed);
    }
}

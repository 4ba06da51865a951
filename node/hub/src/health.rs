//! The health of each outside link, for the hub's `/metrics` and
//! `lgsp hub status`: the peer's circuit breaker, when a call to it last
//! succeeded and last failed (and why), how long calls took, and how many
//! calls went out, failed or were refused, and came in or were refused.
//!
//! Series are labelled by peer name only (a REST system as `rest:<name>`),
//! and only for the peers and systems the catalog holds at scrape time: the
//! label set is as small as their list.

use crate::breaker::State;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

/// What happened to one call with a peer, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (any answer from the peer, refusals included).
    Answered,
    /// Not reached or not answered in time.
    Failed,
    /// Refused here before it went: circuit open or a limit.
    Refused,
}

/// One peer's link, in both directions.
#[derive(Debug)]
pub struct LinkHealth {
    out_answered: AtomicU64,
    out_failed: AtomicU64,
    out_refused: AtomicU64,
    in_served: AtomicU64,
    in_refused: AtomicU64,
    latency: Histogram,
    last: Mutex<Last>,
}

#[derive(Debug, Default, Clone)]
struct Last {
    success: Option<SystemTime>,
    failure: Option<(SystemTime, String)>,
}

impl Default for LinkHealth {
    fn default() -> Self {
        Self {
            out_answered: AtomicU64::new(0),
            out_failed: AtomicU64::new(0),
            out_refused: AtomicU64::new(0),
            in_served: AtomicU64::new(0),
            in_refused: AtomicU64::new(0),
            // 0.5 ms to ~16 s.
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            last: Mutex::default(),
        }
    }
}

impl LinkHealth {
    /// Counts an outward call (or a sync with the peer) that ended with
    /// `outcome` after `took`; `why` says what failed.
    pub fn outward(&self, outcome: Outcome, took: Duration, why: &str) {
        let now = SystemTime::now();
        match outcome {
            Outcome::Answered => {
                self.out_answered.fetch_add(1, Ordering::Relaxed);
                self.latency.observe(took.as_secs_f64());
                self.lock().success = Some(now);
            }
            Outcome::Failed => {
                self.out_failed.fetch_add(1, Ordering::Relaxed);
                self.lock().failure = Some((now, why.to_owned()));
            }
            Outcome::Refused => {
                self.out_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a call the peer made to this hub: served, or refused by a limit.
    pub fn inward(&self, served: bool) {
        if served {
            self.in_served.fetch_add(1, Ordering::Relaxed);
        } else {
            self.in_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When a call last succeeded.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.lock().success
    }

    /// When a call last failed, and why.
    pub fn last_failure(&self) -> Option<(SystemTime, String)> {
        self.lock().failure.clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    peer: String,
    direction: &'static str,
    outcome: &'static str,
}

/// Renders the links of a hub on each scrape of its node's `/metrics`.
#[derive(Debug)]
pub struct LinkCollector {
    hub: Weak<crate::Hub>,
}

impl LinkCollector {
    /// The collector for `hub` (held weakly: a stopped hub renders nothing).
    pub fn new(hub: Weak<crate::Hub>) -> Self {
        Self { hub }
    }
}

/// A breaker state as a number: 0 closed, 1 half-open, 2 open.
pub fn state_value(state: State) -> i64 {
    match state {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open { .. } => 2,
    }
}

fn seconds(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(hub) = self.hub.upgrade() else {
            return Ok(());
        };
        let links = hub.links();
        {
            let mut m = encoder.encode_descriptor(
                "hub_peer_breaker_state",
                "Circuit breaker toward each federation peer and REST system (rest:<name>): 0 closed, 1 half-open (probing), 2 open",
                None,
                MetricType::Gauge,
            )?;
            for l in &links {
                let label = PeerLabel {
                    peer: l.peer.clone(),
                };
                m.encode_family(&label)?
                    .encode_gauge(&state_value(l.state))?;
            }
        }
        for (name, help, pick) in [
            (
                "hub_peer_last_success_timestamp_seconds",
                "When a call to the peer last succeeded (Unix seconds; 0: never)",
                (|l: &crate::LinkStatus| seconds(l.health.last_success())) as fn(&_) -> f64,
            ),
            (
                "hub_peer_last_failure_timestamp_seconds",
                "When a call to the peer last failed to reach it or timed out (Unix seconds; 0: never)",
                |l| seconds(l.health.last_failure().map(|(t, _)| t)),
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for l in &links {
                let label = PeerLabel {
                    peer: l.peer.clone(),
                };
                m.encode_family(&label)?.encode_gauge(&pick(l))?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "hub_peer_calls",
                "Calls with each federation peer and REST system (rest:<name>): out (answered, failed: not reached, timed out or a 5xx, refused here: circuit open or limit) and in (served, refused by a limit)",
                None,
                MetricType::Counter,
            )?;
            for l in &links {
                let h = &l.health;
                for (direction, outcome, n) in [
                    ("out", "answered", &h.out_answered),
                    ("out", "failed", &h.out_failed),
                    ("out", "refused", &h.out_refused),
                    ("in", "served", &h.in_served),
                    ("in", "refused", &h.in_refused),
                ] {
                    let labels = CallLabels {
                        peer: l.peer.clone(),
                        direction,
                        outcome,
                    };
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n.load(Ordering::Relaxed), None)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "hub_peer_call_duration_seconds",
                "Time for each federation peer or REST system (rest:<name>) to answer an outward call",
                None,
                MetricType::Histogram,
            )?;
            for l in &links {
                let label = PeerLabel {
                    peer: l.peer.clone(),
                };
                l.health.latency.encode(m.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

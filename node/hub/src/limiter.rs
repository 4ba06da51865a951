//! Limits per federation peer: calls in flight at once and calls per
//! second, each direction with its own budget (the hub's calls to a peer
//! and the peer's calls to the hub). One peer that floods the hub, or one
//! the province's nodes call too often, is refused with
//! `RESOURCE_EXHAUSTED` naming it and the limit; the other peers keep
//! their share.
//!
//! The limits are the peer record's (`lgsp hub peer add --max-in-flight
//! --rate`), read at each call, so a change applies without restart; 0 in
//! the record means the hub's default. Time is tokio's clock, so tests can
//! pause and advance it.

pub use lgsp_node::limits::Permit;
use lgsp_node::limits::{Buckets, Over};
use lgsp_proto::FederationPeer;
use std::sync::Arc;

/// Calls in flight with one peer, in one direction, when its record says 0.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
/// Calls per second with one peer, in one direction, when its record says 0.
pub const DEFAULT_RATE_PER_SECOND: u32 = 10_000;

/// The limits that apply to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Calls in flight at once (at least 1).
    pub max_in_flight: u32,
    /// Calls per second, as a token bucket holding one second's calls (at least 1).
    pub rate_per_second: u32,
}

impl Limit {
    /// The limits of `peer`: its record's, or the defaults where it says 0.
    pub fn of(peer: &FederationPeer) -> Self {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        Self {
            max_in_flight: or(peer.max_in_flight, DEFAULT_MAX_IN_FLIGHT),
            rate_per_second: or(peer.rate_per_second, DEFAULT_RATE_PER_SECOND),
        }
    }
}

/// Which way the calls go, for the refusal's wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Province nodes calling the peer through this hub.
    Outward,
    /// The peer's hub calling this province.
    Inward,
}

/// A limit a call ran into.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Too many calls already in flight with the peer.
    #[error("{}", in_flight_message(*.direction, peer, *.max))]
    InFlight {
        /// The peer's name.
        peer: String,
        /// Which way.
        direction: Direction,
        /// The limit.
        max: u32,
    },
    /// Over the peer's calls per second.
    #[error("{}", rate_message(*.direction, peer, *.rate))]
    Rate {
        /// The peer's name.
        peer: String,
        /// Which way.
        direction: Direction,
        /// The limit.
        rate: u32,
    },
}

fn in_flight_message(direction: Direction, peer: &str, max: u32) -> String {
    match direction {
        Direction::Outward => format!(
            "federation peer {peer} already has {max} calls in flight from this province (its limit); retry shortly, or the provincial admin raises it with `lgsp hub peer add --name {peer} ... --max-in-flight N`"
        ),
        Direction::Inward => format!(
            "federation peer {peer} already has {max} calls in flight into this province (its limit); retry when earlier calls have finished"
        ),
    }
}

fn rate_message(direction: Direction, peer: &str, rate: u32) -> String {
    match direction {
        Direction::Outward => format!(
            "calls from this province to federation peer {peer} are over its limit of {rate} per second; retry shortly, or the provincial admin raises it with `lgsp hub peer add --name {peer} ... --rate N`"
        ),
        Direction::Inward => format!(
            "calls from federation peer {peer} are over its limit of {rate} per second into this province; slow down and retry"
        ),
    }
}

impl From<LimitError> for tonic::Status {
    fn from(e: LimitError) -> Self {
        tonic::Status::resource_exhausted(e.to_string())
    }
}

/// Calls in flight and per second, per peer, in one direction.
#[derive(Debug)]
pub struct PeerLimits {
    direction: Direction,
    buckets: Arc<Buckets>,
}

impl PeerLimits {
    /// Empty limits for calls going `direction`.
    pub fn new(direction: Direction) -> Arc<Self> {
        Arc::new(Self {
            direction,
            buckets: Arc::default(),
        })
    }

    /// Takes a slot with `peer` under `limit`, or says which limit it hit.
    /// A peer's bucket starts full: it may burst one second's calls.
    pub fn acquire(&self, peer: &str, limit: Limit) -> Result<Permit, LimitError> {
        let max = usize::try_from(limit.max_in_flight).unwrap_or(usize::MAX);
        self.buckets
            .take(peer, max, limit.rate_per_second)
            .map_err(|over| match over {
                Over::InFlight(max) => LimitError::InFlight {
                    peer: peer.to_owned(),
                    direction: self.direction,
                    max: u32::try_from(max).unwrap_or(u32::MAX),
                },
                Over::Rate(rate) => LimitError::Rate {
                    peer: peer.to_owned(),
                    direction: self.direction,
                    rate,
                },
            })
    }

    /// Forgets peers not in `keep` (removed from the catalog) that have
    /// nothing in flight, so the table stays as small as the peer list.
    pub fn retain(&self, keep: &[String]) {
        self.buckets.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(max_in_flight: u32, rate_per_second: u32) -> Limit {
        Limit {
            max_in_flight,
            rate_per_second,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_are_capped_per_peer_and_a_dropped_permit_frees_its_slot() {
        let limits = PeerLimits::new(Direction::Inward);
        let first = limits.acquire("ndxp", limit(2, 1_000)).unwrap();
        let _second = limits.acquire("ndxp", limit(2, 1_000)).unwrap();
        let refused = limits.acquire("ndxp", limit(2, 1_000)).unwrap_err();
        assert_eq!(
            refused,
            LimitError::InFlight {
                peer: "ndxp".into(),
                direction: Direction::Inward,
                max: 2
            }
        );
        // Another peer is not starved by the first one's flood.
        let _other = limits.acquire("hanoi", limit(2, 1_000)).unwrap();
        drop(first);
        limits
            .acquire("ndxp", limit(2, 1_000))
            .expect("the slot came back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refills_with_the_clock_and_never_beyond_one_second_of_calls() {
        let limits = PeerLimits::new(Direction::Outward);
        for _ in 0..4 {
            drop(limits.acquire("ndxp", limit(100, 4)).unwrap());
        }
        assert!(matches!(
            limits.acquire("ndxp", limit(100, 4)),
            Err(LimitError::Rate { rate: 4, .. })
        ));
        tokio::time::advance(Duration::from_millis(260)).await;
        drop(
            limits
                .acquire("ndxp", limit(100, 4))
                .expect("a quarter second gives one call back"),
        );
        assert!(limits.acquire("ndxp", limit(100, 4)).is_err());
        // A long quiet spell fills the bucket to one second's worth, no more.
        tokio::time::advance(Duration::from_secs(600)).await;
        for _ in 0..4 {
            drop(limits.acquire("ndxp", limit(100, 4)).unwrap());
        }
        assert!(limits.acquire("ndxp", limit(100, 4)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_changed_in_the_peer_record_applies_to_the_next_call() {
        let limits = PeerLimits::new(Direction::Outward);
        let _a = limits.acquire("ndxp", limit(1, 1_000)).unwrap();
        assert!(limits.acquire("ndxp", limit(1, 1_000)).is_err());
        let _b = limits
            .acquire("ndxp", limit(2, 1_000))
            .expect("raised to 2 in the record");
    }

    #[test]
    fn the_refusal_is_resource_exhausted_and_names_the_peer_and_the_limit() {
        let status: tonic::Status = LimitError::Rate {
            peer: "ndxp".into(),
            direction: Direction::Outward,
            rate: 50,
        }
        .into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("ndxp"), "{status:?}");
        assert!(status.message().contains("50 per second"), "{status:?}");
        assert!(status.message().contains("--rate"), "{status:?}");
    }

    #[test]
    fn zero_in_the_peer_record_means_the_default() {
        let peer = FederationPeer {
            max_in_flight: 8,
            ..Default::default()
        };
        assert_eq!(
            Limit::of(&peer),
            Limit {
                max_in_flight: 8,
                rate_per_second: DEFAULT_RATE_PER_SECOND
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_peer_is_forgotten_once_its_calls_are_done() {
        let limits = PeerLimits::new(Direction::Inward);
        let held = limits.acquire("old", limit(1, 10)).unwrap();
        limits.retain(&[]);
        assert!(
            limits.acquire("old", limit(1, 10)).is_err(),
            "kept while a call is in flight"
        );
        drop(held);
        limits.retain(&[]);
        assert_eq!(limits.buckets.tracked(), 0);
    }
}

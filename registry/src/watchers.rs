//! How many `Watch` streams a registry server holds open: at most
//! `per_client` for one certificate name and `total` in all. A watch holds a
//! task, a channel and a read of the history while it catches up; without a
//! bound one client (or a node reconnecting in a loop) could open them until
//! the server runs out of memory.

use crate::error::RegistryError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The bounds on open watches; [`Default`] gives the server's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Watches one certificate name (SPIFFE ID) may hold open at once. A
    /// node holds one; tools and tests a few.
    pub per_client: usize,
    /// Watches the server holds open in all.
    pub total: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            per_client: 64,
            total: 4096,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_client: HashMap<String, usize>,
}

/// The open watches of one server, counted; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Watchers {
    limits: WatchLimits,
    counts: Arc<Mutex<Counts>>,
}

/// One open watch, counted until it is dropped.
#[derive(Debug)]
pub struct WatchSlot {
    counts: Arc<Mutex<Counts>>,
    client: String,
}

impl Watchers {
    /// No watch open yet, bounded by `limits`.
    pub fn new(limits: WatchLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    /// A slot for one more watch of `client` (its SPIFFE ID), held until the
    /// slot is dropped. Fails with [`RegistryError::TooManyWatches`], saying
    /// which bound was reached and what to do, when the client or the server
    /// is at its limit.
    pub fn admit(&self, client: &str) -> Result<WatchSlot, RegistryError> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let held = counts.by_client.get(client).copied().unwrap_or(0);
        if held >= self.limits.per_client {
            return Err(RegistryError::TooManyWatches(format!(
                "{client} already holds {held} watches on this registry server, the most one \
                 certificate may hold: close the watches it no longer reads (each node needs \
                 one), or raise max_watches_per_client in the server's configuration"
            )));
        }
        if counts.total >= self.limits.total {
            return Err(RegistryError::TooManyWatches(format!(
                "this registry server already serves {} watches, its limit: watch through \
                 another server of the cluster, or raise max_watches in the server's \
                 configuration",
                counts.total
            )));
        }
        counts.total += 1;
        *counts.by_client.entry(client.to_owned()).or_default() += 1;
        Ok(WatchSlot {
            counts: self.counts.clone(),
            client: client.to_owned(),
        })
    }

    /// How many watches are open now.
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.by_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                counts.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "spiffe://lgsp.test/agency/000.00.12.H62/node/n1";
    const OTHER: &str = "spiffe://lgsp.test/agency/000.00.13.H62/node/n1";

    #[test]
    fn a_client_at_its_watch_limit_is_refused_and_admitted_again_once_one_closes() {
        let watchers = Watchers::new(WatchLimits {
            per_client: 2,
            total: 10,
        });
        let first = watchers.admit(NODE).unwrap();
        let _second = watchers.admit(NODE).unwrap();
        let refused = watchers.admit(NODE).unwrap_err().to_string();
        assert!(refused.contains(NODE), "{refused}");
        assert!(refused.contains("max_watches_per_client"), "{refused}");
        // Another client is not held up by this one.
        let _other = watchers.admit(OTHER).unwrap();
        drop(first);
        watchers.admit(NODE).expect("a closed watch frees its slot");
    }

    #[test]
    fn a_server_at_its_total_watch_limit_refuses_every_client_and_says_where_to_go() {
        let watchers = Watchers::new(WatchLimits {
            per_client: 10,
            total: 2,
        });
        let slots = [
            watchers.admit(NODE).unwrap(),
            watchers.admit(OTHER).unwrap(),
        ];
        let refused = watchers
            .admit("spiffe://lgsp.test/agency/x/node/y")
            .unwrap_err();
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("another server"),
            "{}",
            status.message()
        );
        assert_eq!(watchers.open(), 2);
        drop(slots);
        assert_eq!(watchers.open(), 0);
    }
}

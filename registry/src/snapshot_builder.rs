//! Raft snapshots built on a thread of their own, not on the consensus
//! thread: reading and encoding a catalog of tens of megabytes takes longer
//! than an election timeout, and a leader that stops heartbeating for that
//! long is voted out.
//!
//! raft-rs asks its storage for a snapshot when a follower needs one; the
//! storage ([`crate::storage::RaftStore`]) answers "temporarily
//! unavailable" and starts a build here, and raft-rs asks again at the next
//! heartbeat answer. A build reads a frozen view of the state machine's
//! store ([`crate::frozen`]), the state at the snapshot's index, while the
//! consensus loop goes on heartbeating, appending and applying: the store
//! has no point-in-time read of its own.

// raft-rs' protobuf 2 types are built field by field, as its own code does.
#![allow(clippy::field_reassign_with_default)]

use crate::error::RegistryError;
use raft::eraftpb::{Snapshot, SnapshotMetadata};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The snapshot being built, if any, and the last one built.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    state: Mutex<State>,
    /// Notified when a build ends, so the consensus loop offers the
    /// snapshot at once rather than at its next tick.
    done: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct State {
    building: Option<Building>,
    built: Option<Snapshot>,
}

#[derive(Debug)]
struct Building {
    meta: SnapshotMetadata,
    data: Receiver<Result<Vec<u8>, RegistryError>>,
}

impl SnapshotBuilder {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the consensus loop waits on to learn that a build ended.
    pub fn done(&self) -> Arc<tokio::sync::Notify> {
        self.done.clone()
    }

    /// Whether a build is running (one that ended is collected here).
    pub fn building(&self) -> bool {
        let mut state = self.state();
        collect(&mut state, false);
        state.building.is_some()
    }

    /// Waits for a running build to end (before the store it reads is
    /// replaced by a snapshot from the leader).
    pub fn wait(&self) {
        collect(&mut self.state(), true);
    }

    /// The index of the snapshot being built, or else of the last one built:
    /// the log keeps the entries after it while a follower may still need
    /// it (see `RaftNode::snapshot_pin`).
    pub fn pinned(&self) -> Option<u64> {
        let mut state = self.state();
        collect(&mut state, false);
        match (&state.building, &state.built) {
            (Some(building), _) => Some(building.meta.index),
            (None, Some(built)) => Some(built.get_metadata().index),
            (None, None) => None,
        }
    }

    /// Drops the last snapshot built (every follower is past it, or this
    /// server no longer leads): it no longer holds the log back, and the
    /// next follower that needs one gets a newer one.
    pub fn release(&self) {
        self.state().built = None;
    }

    /// The last snapshot built, if its index is at least `min_index`.
    pub fn built(&self, min_index: u64) -> Option<Snapshot> {
        let mut state = self.state();
        collect(&mut state, false);
        state
            .built
            .as_ref()
            .filter(|s| s.get_metadata().index >= min_index)
            .cloned()
    }

    /// Starts building a snapshot with metadata `meta` and the data `build`
    /// returns, on a thread of its own, unless a build is running already.
    /// What `build` reads must not change under it: a frozen view.
    pub fn start(
        &self,
        meta: SnapshotMetadata,
        build: impl FnOnce() -> Result<Vec<u8>, RegistryError> + Send + 'static,
    ) {
        let mut state = self.state();
        collect(&mut state, false);
        if state.building.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let done = self.done.clone();
        let index = meta.index;
        let spawned = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let data = build();
                if let Ok(data) = &data {
                    tracing::info!(
                        index,
                        bytes = data.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "built a snapshot for a follower"
                    );
                }
                let _ = tx.send(data);
                done.notify_one();
            });
        match spawned {
            Ok(_) => state.building = Some(Building { meta, data: rx }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a thread to build a snapshot; will retry")
            }
        }
    }

    /// Drops the last snapshot built (its entries were compacted away, or
    /// it was sent): memory back, and the next request builds afresh.
    pub fn forget_older_than(&self, index: u64) {
        let mut state = self.state();
        if state
            .built
            .as_ref()
            .is_some_and(|s| s.get_metadata().index < index)
        {
            state.built = None;
        }
    }
}

/// Moves a finished build into `built` (waiting for it when `wait`).
fn collect(state: &mut State, wait: bool) {
    let Some(building) = &state.building else {
        return;
    };
    let data = if wait {
        building.data.recv().map_err(|_| TryRecvError::Disconnected)
    } else {
        building.data.try_recv()
    };
    let data = match data {
        Err(TryRecvError::Empty) => return,
        Err(TryRecvError::Disconnected) => Err(RegistryError::Raft(
            "the thread building a snapshot died".into(),
        )),
        Ok(data) => data,
    };
    let Some(building) = state.building.take() else {
        return;
    };
    match data {
        Ok(data) => {
            let mut snapshot = Snapshot::default();
            snapshot.data = data.into();
            snapshot.set_metadata(building.meta);
            state.built = Some(snapshot);
        }
        Err(error) => {
            tracing::error!(%error, index = building.meta.index, "building a snapshot failed; the next request for one tries again");
        }
    }
}

//! Raft's log and state behind raft-rs' `Storage` trait, in two stores:
//!
//! - the **log** ([`LogFileKv`](crate::log_file::LogFileKv) in a server: an
//!   append-only file synced once per Ready) holds what Raft must have on
//!   disk before it answers a peer;
//! - the **catalog's store** (another [`LogFileKv`](crate::log_file::LogFileKv),
//!   `catalog.log`, in a server: every key in memory, one record appended per
//!   Ready, synced only where said below) holds the state machine and what
//!   goes with the applied index, changed atomically with it. It was sled
//!   until sled's CPU per write measured as the registry's bottleneck: with
//!   the catalog in memory the same bench wrote 1.4 to 1.7 times as many
//!   writes a second (`lgsp bench registry`, see the README).
//!
//! | store | key | value |
//! |---|---|---|
//! | log | `r:hs` | HardState |
//! | log | `r:snap` | SnapshotMetadata of the compaction point (index, term) |
//! | log | `r:e:<index BE>` | log entries |
//! | log | `l:owner` | the incarnation of the data directory it belongs to (u64 BE) |
//! | catalog | `l:log-bound` | present once the log holds `l:owner` |
//! | catalog | `r:cs` | ConfState as of the applied index |
//! | catalog | `r:installed` | SnapshotMetadata of the last snapshot installed (or the founding one) |
//! | catalog | `s:applied` | applied index (u64 BE) |
//! | catalog | `s:...`, `c:...`, `w:...` | the catalog, see `catalog.rs` |
//!
//! The two are kept in an order that a crash at any point leaves usable:
//! - an entry is applied only once it is synced in the log (raft-rs hands
//!   out committed entries up to the persisted index), so the catalog's
//!   applied index never passes the log's durable end; a hard state whose
//!   commit index was lost with an unsynced write is raised to the applied
//!   index when the store opens;
//! - entries are compacted away only after the catalog's store is flushed
//!   up to them ([`RaftStore::compact`]);
//! - a snapshot is installed into the catalog's store, flushed, and only
//!   then is the log reset; a crash between the two is finished when the
//!   store opens (the `r:installed` record is ahead of the log's compaction
//!   point).
//!
//! Data directories from before the split kept the log in sled; it is moved
//! into the log file when the store opens. Those from before `catalog.log`
//! kept the catalog in sled's `registry.sled`; it is moved into its file
//! first ([`move_catalog_out_of_sled`]).
//!
//! Writes here are staged or committed but not flushed, except
//! [`RaftStore::bootstrap`]: the Raft loop flushes the log once per Ready that
//! must be synced, before messages that depend on the write leave the server.

// raft-rs' protobuf 2 types are built field by field, as its own code does.
#![allow(clippy::field_reassign_with_default)]

use crate::error::{RegistryError, StoreError};
use crate::frozen::Capturing;
use crate::kv::KvEngine as _;
use crate::kv::read_u64;
use crate::kv::{Kv, Staged};
use crate::log_file::{CATALOG_FILE_NAME, LogFileKv};
use crate::sled_kv::SledKv;
use crate::snapshot_builder::SnapshotBuilder;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

const HARD_STATE: &[u8] = b"r:hs";
const CONF_STATE: &[u8] = b"r:cs";
const SNAP_META: &[u8] = b"r:snap";
const INSTALLED: &[u8] = b"r:installed";
const ENTRY_PREFIX: &[u8] = b"r:e:";
pub(crate) const APPLIED: &[u8] = b"s:applied";
/// How a server whose log cannot be trusted is replaced, after "by a new
/// member".
const REPLACEMENT: &str = "with a new id (docs/operations.md, \"One server lost or damaged\"): remove-member, an empty data directory, add-member and --join";

/// In the log: the incarnation of the data directory it belongs to.
const LOG_OWNER: &[u8] = b"l:owner";
/// In the catalog's store: present once the log holds [`LOG_OWNER`].
const LOG_BOUND: &[u8] = b"l:log-bound";

fn entry_key(index: u64) -> Vec<u8> {
    let mut key = ENTRY_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn fatal(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

/// What the log replicates, as far as the log must know it: raft snapshots
/// carry the state machine's whole state, taken and installed here. The
/// catalog implements it; the log never names the catalog.
pub trait StateMachine: Send + Sync + fmt::Debug {
    /// The whole state in `db`, encoded for a snapshot.
    fn snapshot_data(&self, db: &Kv) -> Result<Vec<u8>, RegistryError>;

    /// Stages in `batch` the replacement of the state in `db` by a
    /// snapshot's `data`; fails when `data` is damaged.
    fn restore(&self, db: &Kv, batch: &mut Staged, data: &[u8]) -> Result<(), RegistryError>;
}

/// The raft log and state of one registry server.
#[derive(Clone, Debug)]
pub struct RaftStore {
    /// The catalog, the applied index and the configuration.
    db: Kv,
    /// The same store, able to give a point-in-time view of it.
    capturing: Capturing,
    /// Entries, hard state and compaction point.
    log: Kv,
    /// The compaction point (index, term) as `r:snap` holds it: raft-rs asks
    /// for the first index on every pass of the consensus loop, so it is
    /// kept in memory too, changed only after the batch that writes it.
    compacted: Arc<RwLock<(u64, u64)>>,
    machine: Arc<dyn StateMachine>,
    /// Snapshots for followers, built off the consensus thread.
    snapshots: Arc<SnapshotBuilder>,
}

impl RaftStore {
    /// Opens (or creates) the store in `dir`, for the log of `machine`.
    pub fn open(dir: &Path, machine: Arc<dyn StateMachine>) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RegistryError::Storage(format!("{}: {e}", dir.display())))?;
        let lock = Arc::new(lock_dir(dir)?);
        move_catalog_out_of_sled(dir)?;
        // Synced bytes changed on disk: what follows, and whom to replace.
        let corrupt = |then: &'static str| {
            move |e: StoreError| match e {
                StoreError::Corrupt { .. } => {
                    RegistryError::Damaged(format!("{e}. {then} by a new member {REPLACEMENT}"))
                }
                e => RegistryError::Storage(format!("{}: {e}", dir.display())),
            }
        };
        // A refusal of this directory as a whole.
        let replace = |e: RegistryError| match e {
            RegistryError::Damaged(why) => RegistryError::Damaged(format!(
                "{}: {why}. Replace this server by a new member {REPLACEMENT}",
                dir.display()
            )),
            e => e,
        };
        let engine = LogFileKv::open_named(dir, CATALOG_FILE_NAME).map_err(corrupt(
            "The catalog's store lost writes it had synced. Replace this server",
        ))?;
        let log = LogFileKv::open(dir).map_err(corrupt(
            "Starting on would let this server vote as if it still held them. Replace it",
        ))?;
        // The data directory's lock: each file keeps it until its last clone
        // is dropped and its rewrite thread, if one runs, has ended.
        engine.hold_lock(lock.clone());
        log.hold_lock(lock.clone());
        let (db, log) = (Kv::new(engine), Kv::new(log));
        check_log(&db, &log).map_err(replace)?;
        let store = Self::new(db, log, machine)?;
        check_applied(&store).map_err(replace)?;
        bind_log(&store.db, &store.log)?;
        Ok(store)
    }

    /// A store over the catalog's store `db` and the log `log`, as they were
    /// left (a log still in `db` moved, an interrupted snapshot install
    /// finished), for the log of `machine`.
    pub fn new(db: Kv, log: Kv, machine: Arc<dyn StateMachine>) -> Result<Self, RegistryError> {
        move_log_out_of(&db, &log)?;
        finish_install(&db, &log)?;
        let meta: SnapshotMetadata = decode(SNAP_META, log.get(SNAP_META)?)?;
        let capturing = Capturing::new(db);
        Ok(Self {
            db: Kv::new(capturing.clone()),
            capturing,
            log,
            compacted: Arc::new(RwLock::new((meta.index, meta.term))),
            machine,
            snapshots: Arc::new(SnapshotBuilder::default()),
        })
    }

    /// The store the log shares with the catalog, so that one batch can
    /// change both.
    pub fn db(&self) -> &Kv {
        &self.db
    }

    /// A read-only view of the catalog's store as it is now, for as long as
    /// it lives, whatever is applied meanwhile (`frozen.rs`).
    pub fn freeze(&self) -> Kv {
        self.capturing.freeze()
    }

    /// The snapshots built for followers, each from a frozen view of the
    /// catalog's store (`frozen.rs`) while the loop goes on applying.
    pub fn snapshots(&self) -> &SnapshotBuilder {
        &self.snapshots
    }

    /// The store of the raft log and hard state.
    pub fn log(&self) -> &Kv {
        &self.log
    }

    /// Whether this store has ever held raft state: the hard state, which
    /// [`bootstrap`](Self::bootstrap) writes last.
    pub fn is_initialized(&self) -> Result<bool, RegistryError> {
        Ok(self.log.contains_key(HARD_STATE)?)
    }

    /// Writes the identical starting state every founding member of a new
    /// cluster has: a snapshot at index 1 whose configuration is `voters`.
    /// The log then starts at 2, so a member added later always catches up
    /// by snapshot. Written in one batch and flushed before it returns.
    pub fn bootstrap(&self, voters: &[u64]) -> Result<(), RegistryError> {
        let mut cs = ConfState::default();
        cs.voters = voters.to_vec();
        let mut meta = SnapshotMetadata::default();
        meta.index = 1;
        meta.term = 1;
        meta.set_conf_state(cs.clone());
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = 1;
        // The catalog's side first: until the hard state is in the log the
        // directory is not initialized, and founding may run again.
        let mut batch = Staged::new(&self.db);
        batch.insert(CONF_STATE, encode(&cs));
        batch.insert(INSTALLED, encode(&meta));
        batch.insert(APPLIED, 1u64.to_be_bytes());
        batch.commit()?;
        self.db.flush()?;
        let mut log = Staged::new(&self.log);
        log.insert(SNAP_META, encode(&meta));
        log.insert(HARD_STATE, encode(&hs));
        log.commit()?;
        self.set_compacted(1, 1);
        self.flush()
    }

    /// Makes every write so far durable, the log's and the catalog's.
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.log.flush()?;
        Ok(self.db.flush()?)
    }

    /// Makes the log's writes durable (entries, hard state): what a Ready
    /// must have on disk before its messages leave the server.
    pub fn flush_log(&self) -> Result<(), RegistryError> {
        Ok(self.log.flush()?)
    }

    /// Makes the catalog's writes durable (applied state).
    pub fn flush_applied(&self) -> Result<(), RegistryError> {
        Ok(self.db.flush()?)
    }

    /// The stored hard state (term, vote, commit); the default only when
    /// none was ever stored. A failed read is an error, never term 0: a
    /// server that forgot its vote could vote twice in a term.
    pub fn hard_state(&self) -> Result<HardState, StoreError> {
        decode(HARD_STATE, self.log.get(HARD_STATE)?)
    }

    /// The configuration as of the applied index; empty only when none was
    /// ever stored.
    pub fn conf_state(&self) -> Result<ConfState, StoreError> {
        decode(CONF_STATE, self.db.get(CONF_STATE)?)
    }

    /// The compaction point: (index, term) of the last entry compacted away.
    fn compaction_point(&self) -> (u64, u64) {
        *self
            .compacted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_compacted(&self, index: u64, term: u64) {
        *self
            .compacted
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (index, term);
    }

    /// The index of the last applied entry; 0 only when nothing was ever
    /// applied (a server that joins and waits for a snapshot). A failed
    /// read is an error: applied index 0 would apply the log again.
    pub fn applied(&self) -> Result<u64, StoreError> {
        Ok(read_u64(&self.db, APPLIED)?.unwrap_or(0))
    }

    fn last_entry_index(&self) -> Result<Option<u64>, StoreError> {
        self.log
            .last_key(ENTRY_PREFIX)?
            .map(|k| {
                <[u8; 8]>::try_from(&k[ENTRY_PREFIX.len()..])
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Damaged {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        reason: "a log entry key without an 8-byte index".into(),
                    })
            })
            .transpose()
    }

    /// Adds new log entries to `batch` (staged over [`log`](Self::log)),
    /// first removing any conflicting tail they replace.
    pub fn append(&self, batch: &mut Staged, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if let Some(last) = self.last_entry_index()? {
            for index in first.index..=last {
                batch.remove(entry_key(index));
            }
        }
        for e in entries {
            batch.insert(entry_key(e.index), encode(e));
        }
        Ok(())
    }

    /// Stages the hard state (term, vote, commit) in `batch` (staged over
    /// [`log`](Self::log)); durable only once the batch is committed and the
    /// log flushed.
    pub fn put_hard_state(&self, batch: &mut Staged, hs: &HardState) {
        batch.insert(HARD_STATE, encode(hs));
    }

    /// Stages the configuration (voters, learners) as of the entry being
    /// applied in `batch`.
    pub fn put_conf_state(batch: &mut Staged, cs: &ConfState) {
        batch.insert(CONF_STATE, encode(cs));
    }

    /// Replaces log, configuration and state machine with a snapshot from
    /// the leader: the state machine in one atomic batch, flushed, then the
    /// log reset to start after it (not flushed here: the loop's flush for
    /// the Ready makes it durable; a crash before it is finished when the
    /// store opens).
    pub fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), RegistryError> {
        let meta = snapshot.get_metadata();
        let mut batch = Staged::new(&self.db);
        self.machine.restore(&self.db, &mut batch, &snapshot.data)?;
        let mut stored = SnapshotMetadata::default();
        stored.index = meta.index;
        stored.term = meta.term;
        stored.set_conf_state(meta.get_conf_state().clone());
        batch.insert(INSTALLED, encode(&stored));
        batch.insert(CONF_STATE, encode(meta.get_conf_state()));
        batch.insert(APPLIED, meta.index.to_be_bytes());
        batch.commit()?;
        self.db.flush()?;
        reset_log(&self.log, &stored)?;
        self.set_compacted(meta.index, meta.term);
        Ok(())
    }

    /// Drops log entries up to and including `index` (which must be
    /// applied), keeping its term as the new compaction point. The
    /// catalog's store is flushed first, so that what the dropped entries
    /// did is on disk; the log's batch is not flushed: entries back after a
    /// crash are compacted again.
    pub fn compact(&self, index: u64) -> Result<(), RegistryError> {
        let (compacted, _) = self.compaction_point();
        if index <= compacted || index > self.applied()? {
            return Ok(());
        }
        let term =
            raft::Storage::term(self, index).map_err(|e| RegistryError::Storage(e.to_string()))?;
        self.db.flush()?;
        let mut batch = Staged::new(&self.log);
        for item in self
            .log
            .range(&entry_key(compacted), Some(&entry_key(index + 1)))
        {
            batch.remove(item?.0);
        }
        let mut next = SnapshotMetadata::default();
        next.index = index;
        next.term = term;
        batch.insert(SNAP_META, encode(&next));
        batch.commit()?;
        self.set_compacted(index, term);
        self.snapshots.forget_older_than(index);
        Ok(())
    }

    /// The index of the newest entry compacted away (the log starts after it).
    pub fn compacted_to(&self) -> u64 {
        self.compaction_point().0
    }
}

/// The catalog's store of a directory from before `catalog.log`: sled's
/// `registry.sled`.
const SLED_CATALOG: &str = "registry.sled";
/// Where the catalog is copied out of sled before it is put in place.
const MOVING_CATALOG: &str = "catalog.moving";
/// Where sled's copy goes once the move is done, to be removed.
const REMOVING_SLED: &str = "registry.sled.removing";

/// Moves the catalog of a directory from before `catalog.log` out of sled:
/// a compaction of sled's that a crash interrupted finished first, then
/// every pair copied into `catalog.log` in a directory of its own, synced,
/// renamed into place, and only then `registry.sled` renamed aside and
/// removed. A crash before the rename leaves sled the store (the copy is
/// made again); after it, `catalog.log` is, and sled's leftover copy is
/// removed, never copied over it.
fn move_catalog_out_of_sled(dir: &Path) -> Result<(), RegistryError> {
    let storage = |path: &Path, e: &dyn fmt::Display| {
        RegistryError::Storage(format!("{}: {e}", path.display()))
    };
    let exists = |path: &Path| path.try_exists().map_err(|e| storage(path, &e));
    let remove_dir = |path: &Path| match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(storage(path, &e)),
        _ => Ok(()),
    };
    let sled = dir.join(SLED_CATALOG);
    let target = dir.join(CATALOG_FILE_NAME);
    let moving = dir.join(MOVING_CATALOG);
    let removing = dir.join(REMOVING_SLED);
    crate::sled_kv::recover_compaction(&sled)?;
    if exists(&sled)? {
        if !exists(&target)? {
            remove_dir(&moving)?;
            let pairs = {
                let old = SledKv::open(&sled).map_err(|e| storage(&sled, &e))?;
                let new = LogFileKv::open_named(&moving, CATALOG_FILE_NAME)
                    .map_err(|e| storage(&moving, &e))?;
                let mut pairs = 0u64;
                let mut batch = crate::kv::Batch::new();
                for item in old.range(b"", None) {
                    let (key, value) = item?;
                    batch.insert(key, Some(value));
                    pairs += 1;
                    if batch.len() == MOVE_BATCH {
                        new.write(std::mem::take(&mut batch))?;
                    }
                }
                new.write(batch)?;
                new.flush()?;
                pairs
            };
            std::fs::rename(moving.join(CATALOG_FILE_NAME), &target)
                .map_err(|e| storage(&target, &e))?;
            crate::log_file::sync_dir(dir)?;
            tracing::info!(
                pairs,
                from = %sled.display(),
                to = %target.display(),
                "moved the catalog out of sled into its file"
            );
        }
        // Renamed aside at once: a crash while removing it must not leave
        // part of a sled store where the next start would look for one.
        std::fs::rename(&sled, &removing).map_err(|e| storage(&sled, &e))?;
        crate::log_file::sync_dir(dir)?;
    }
    // Leftovers of a move, removed as best effort: the catalog is whole
    // in its file whatever becomes of them.
    for leftover in [&moving, &removing] {
        if let Err(error) = remove_dir(leftover) {
            tracing::warn!(%error, "could not remove what is left of moving the catalog out of sled");
        }
    }
    Ok(())
}

/// Pairs copied per record when the catalog moves out of sled.
const MOVE_BATCH: usize = 4096;

/// Refuses a catalog's store that is behind the log's compaction point:
/// the entries it has not applied are gone from the log, so it can never
/// catch up from it. Only writes to the catalog lost after they were synced
/// (damage a power cut hid behind a missing sync mark) leave it so; raft-rs
/// would panic on it.
fn check_applied(store: &RaftStore) -> Result<(), RegistryError> {
    let applied = store.applied()?;
    let (compacted, _) = store.compaction_point();
    if applied < compacted {
        return Err(RegistryError::Damaged(format!(
            "the catalog applied the log up to index {applied}, but the log was compacted up to {compacted}: writes to catalog.log were lost after they were synced"
        )));
    }
    Ok(())
}

/// The file whose lock says a process has the data directory open.
const LOCK_FILE: &str = "registry.lock";
/// How long opening waits for another handle's lock to be let go (a
/// store reopened in the same process, while the old one's threads end).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Locks `dir` for this process until the returned file is dropped: two
/// processes writing one data directory would corrupt both files (each
/// cutting or rewriting what the other appends).
fn lock_dir(dir: &Path) -> Result<std::fs::File, RegistryError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RegistryError::Storage(format!("{}: {e}", path.display())))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RegistryError::Storage(format!(
                    "{} is in use by another process (it holds {LOCK_FILE}): stop the registry server using it, or give another data directory",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(RegistryError::Storage(format!("{}: {e}", path.display())));
            }
        }
    }
}

/// Refuses, before anything in the store is changed, a `log` that is not
/// the one `db`'s data directory wrote: its `l:owner` record names another
/// incarnation (a `raft.log` copied in from another server's directory, or
/// a `catalog.log` lost or replaced beside it), or it has none although
/// `db` says it was marked (`l:log-bound`) or applied entries past founding
/// (the log lost while the catalog's store stayed). Such a log holds other
/// (or no) terms, votes and entries than this server acknowledged.
fn check_log(db: &Kv, log: &Kv) -> Result<(), RegistryError> {
    let own = crate::incarnation::stored(db)?;
    let owner = read_u64(log, LOG_OWNER).map_err(|e| match e {
        StoreError::Damaged { .. } => RegistryError::Damaged(format!(
            "raft.log's record of the data directory it belongs to is damaged ({e}): it cannot be told whose log it is"
        )),
        e => e.into(),
    })?;
    match (own, owner) {
        (Some(own), Some(owner)) if own == owner => Ok(()),
        (Some(own), Some(owner)) => Err(RegistryError::Damaged(format!(
            "raft.log is another data directory's (incarnation {owner:016x}; this one is {own:016x}): it was copied in from another server, and holds other votes and entries than this server acknowledged"
        ))),
        (None, Some(owner)) => Err(RegistryError::Damaged(format!(
            "raft.log belongs to the data directory of incarnation {owner:016x}, but catalog.log beside it has none: the catalog's store was lost or replaced, or the log copied in from another server"
        ))),
        (_, None) => {
            // A directory from before the log file: its log is still in the
            // catalog's store, and is moved out next (`move_log_out_of`).
            if db.contains_key(HARD_STATE)? {
                return Ok(());
            }
            let applied = read_u64(db, APPLIED)?.unwrap_or(0);
            // Bound at its first open, but only one that founded, joined or
            // restored (applied an index, or installed a snapshot) has given
            // votes or acknowledged entries that a lost log would forget.
            if db.contains_key(LOG_BOUND)? && (applied >= 1 || db.contains_key(INSTALLED)?) {
                return Err(RegistryError::Damaged(
                    "raft.log holds no record of this data directory, which it had: the log was lost or replaced, and with it the terms and votes this server gave".into(),
                ));
            }
            // Founding writes the catalog's side first (applied index 1),
            // so only a store that applied entries since must have a log.
            if applied > 1 && !log.contains_key(HARD_STATE)? {
                return Err(RegistryError::Damaged(format!(
                    "raft.log holds no raft state, but the catalog's store applied entries up to index {applied}: the log was lost or replaced, and with it the terms and votes this server gave"
                )));
            }
            Ok(())
        }
    }
}

/// Marks `log` as `db`'s data directory's (its incarnation, made if new),
/// then `db` as having a marked log; each synced, in that order, so that a
/// crash between them leaves a store that opens and is marked again.
fn bind_log(db: &Kv, log: &Kv) -> Result<(), RegistryError> {
    let own = crate::incarnation::own(db)?;
    if read_u64(log, LOG_OWNER)?.is_none() {
        let mut batch = Staged::new(log);
        batch.insert(LOG_OWNER, own.to_be_bytes());
        batch.commit()?;
        log.flush()?;
    }
    if !db.contains_key(LOG_BOUND)? {
        let mut batch = Staged::new(db);
        batch.insert(LOG_BOUND, [1u8]);
        batch.commit()?;
        db.flush()?;
    }
    Ok(())
}

/// Moves a log kept in the catalog's store (data directories from before the
/// log file) into `log`: copied and synced first, then removed from `db`.
/// Run again after a crash, it copies nothing the log already has.
fn move_log_out_of(db: &Kv, log: &Kv) -> Result<(), RegistryError> {
    let mut old: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for key in [HARD_STATE, SNAP_META] {
        if let Some(value) = db.get(key)? {
            old.push((key.to_vec(), value));
        }
    }
    for item in db.scan_prefix(ENTRY_PREFIX) {
        old.push(item?);
    }
    if old.is_empty() {
        return Ok(());
    }
    if !log.contains_key(HARD_STATE)? {
        let mut batch = Staged::new(log);
        for (key, value) in &old {
            batch.insert(key.clone(), value.clone());
        }
        // What the last snapshot installed was, as far as the old layout
        // knew it: the compaction point.
        if let Some((_, meta)) = old.iter().find(|(k, _)| k == SNAP_META) {
            let mut installed = Staged::new(db);
            installed.insert(INSTALLED, meta.clone());
            installed.commit()?;
        }
        batch.commit()?;
        log.flush()?;
        tracing::info!(
            entries = old.len(),
            "moved the raft log out of the catalog's store into its own file"
        );
    }
    let mut batch = Staged::new(db);
    for (key, _) in old {
        batch.remove(key);
    }
    batch.commit()?;
    Ok(db.flush()?)
}

/// Finishes a snapshot install a crash interrupted after the catalog's side
/// was flushed: the log is reset to start after the snapshot.
fn finish_install(db: &Kv, log: &Kv) -> Result<(), RegistryError> {
    let installed: SnapshotMetadata = decode(INSTALLED, db.get(INSTALLED)?)?;
    let compacted: SnapshotMetadata = decode(SNAP_META, log.get(SNAP_META)?)?;
    if installed.index <= compacted.index || !log.contains_key(HARD_STATE)? {
        return Ok(());
    }
    tracing::warn!(
        index = installed.index,
        "finishing a snapshot install a crash interrupted: resetting the raft log to start after it"
    );
    reset_log(log, &installed)?;
    Ok(log.flush()?)
}

/// Stages and commits (not flushed) a log that starts after `meta`: every
/// entry removed, the compaction point set to it, the hard state's term and
/// commit raised to it.
fn reset_log(log: &Kv, meta: &SnapshotMetadata) -> Result<(), RegistryError> {
    let mut batch = Staged::new(log);
    for item in log.scan_prefix(ENTRY_PREFIX) {
        batch.remove(item?.0);
    }
    let mut hs: HardState = decode(HARD_STATE, log.get(HARD_STATE)?)?;
    hs.commit = hs.commit.max(meta.index);
    hs.term = hs.term.max(meta.term);
    batch.insert(HARD_STATE, encode(&hs));
    batch.insert(SNAP_META, encode(meta));
    Ok(batch.commit()?)
}

pub(crate) fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("encoding a raft message cannot fail")
}

/// Decodes the raft state read under `key`; the default when it is absent.
fn decode<M: protobuf::Message + Default>(key: &[u8], v: Option<Vec<u8>>) -> Result<M, StoreError> {
    match v {
        Some(bytes) => M::parse_from_bytes(&bytes).map_err(|e| StoreError::Damaged {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
        None => Ok(M::default()),
    }
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mut hs = self.hard_state().map_err(fatal)?;
        // Every applied entry was committed; the hard state's commit index
        // may have been lost with a write that was never synced (raft-rs
        // syncs only a Ready with entries, a term or a vote).
        hs.commit = hs.commit.max(self.applied().map_err(fatal)?);
        Ok(RaftState::new(hs, self.conf_state().map_err(fatal)?))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.compaction_point().0 + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        // raft-rs' size limit (`raft::util::limit_size`): the first entry
        // always, then entries while their total encoded size stays within
        // `max_size`. Applied while reading, so that a follower far behind
        // costs one message's worth of reads, not its whole lag decoded and
        // then trimmed.
        let max_size = max_size.into().filter(|m| *m != raft::NO_LIMIT);
        let mut size = 0u64;
        let mut entries = Vec::new();
        for item in self.log.range(&entry_key(low), Some(&entry_key(high))) {
            let (_, v) = item.map_err(fatal)?;
            size += v.len() as u64;
            if let Some(max) = max_size
                && !entries.is_empty()
                && size > max
            {
                return Ok(entries);
            }
            let e = Entry::parse_from_bytes(&v).map_err(fatal)?;
            if e.index != low + entries.len() as u64 {
                return Err(fatal(format!("gap in the raft log at index {}", e.index)));
            }
            entries.push(e);
        }
        if entries.len() as u64 != high - low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (compacted, compacted_term) = self.compaction_point();
        if idx == compacted {
            return Ok(compacted_term);
        }
        if idx < compacted {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.log.get(&entry_key(idx)).map_err(fatal)? {
            Some(v) => Ok(Entry::parse_from_bytes(&v).map_err(fatal)?.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compaction_point().0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self
            .last_entry_index()
            .map_err(fatal)?
            .unwrap_or_else(|| self.compaction_point().0))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = self.applied().map_err(fatal)?;
        if applied < request_index || applied == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        // A snapshot older than the log's start would leave the follower
        // needing entries that are gone: it gets a newer one.
        let usable_from = request_index.max(self.compaction_point().0);
        if let Some(snapshot) = self.snapshots.built(usable_from) {
            return Ok(snapshot);
        }
        if !self.snapshots.building() {
            let mut meta = SnapshotMetadata::default();
            meta.index = applied;
            meta.term = self.term(applied)?;
            meta.set_conf_state(self.conf_state().map_err(fatal)?);
            // The store as it is at `applied`, whatever the loop applies
            // while the build reads it.
            let (machine, view) = (self.machine.clone(), self.freeze());
            self.snapshots.start(meta, move || {
                let data = machine.snapshot_data(&view);
                // Closed before the build is collected: an install waits for
                // the build, then rewrites the whole store without copying
                // old values for it (only for a backup's view still open).
                drop(view);
                data
            });
        }
        // raft-rs asks again at the follower's next heartbeat answer.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_kv::MemKv;
    use raft::Storage;

    /// A state machine with no state: the log's own behaviour is under test.
    #[derive(Debug)]
    struct Stateless;

    impl StateMachine for Stateless {
        fn snapshot_data(&self, _db: &Kv) -> Result<Vec<u8>, RegistryError> {
            Ok(Vec::new())
        }

        fn restore(
            &self,
            _db: &Kv,
            _batch: &mut Staged,
            _data: &[u8],
        ) -> Result<(), RegistryError> {
            Ok(())
        }
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e
    }

    #[test]
    fn append_replaces_a_conflicting_tail_and_compaction_keeps_the_term() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        store.bootstrap(&[1, 2, 3]).unwrap();
        let mut batch = Staged::new(&store.log);
        store
            .append(&mut batch, &[entry(2, 1), entry(3, 1), entry(4, 1)])
            .unwrap();
        batch.commit().unwrap();
        let mut batch = Staged::new(&store.log);
        store.append(&mut batch, &[entry(3, 2)]).unwrap();
        batch.commit().unwrap();
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(store.term(3).unwrap(), 2);
        assert_eq!(store.first_index().unwrap(), 2);
        let all = store
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(all.len(), 2);

        let mut batch = Staged::new(&store.db);
        batch.insert(APPLIED, 3u64.to_be_bytes());
        batch.commit().unwrap();
        store.compact(2).unwrap();
        assert_eq!(store.first_index().unwrap(), 3);
        assert_eq!(store.term(2).unwrap(), 1);
        assert!(matches!(
            store.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));

        // The compaction point, log and hard state come back after a restart.
        let hs = store.hard_state().unwrap();
        drop(store);
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        assert_eq!(store.first_index().unwrap(), 3);
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(store.term(2).unwrap(), 1);
        assert_eq!(store.term(3).unwrap(), 2);
        assert_eq!(store.hard_state().unwrap(), hs);
        assert!(store.is_initialized().unwrap());
    }

    #[test]
    fn entries_are_read_only_up_to_the_size_budget() {
        let engine = MemKv::default();
        let store = store_over(&engine);
        let mut batch = Staged::new(store.log());
        let log: Vec<Entry> = (2..=101)
            .map(|i| {
                let mut e = entry(i, 1);
                e.data = vec![7; 100].into();
                e
            })
            .collect();
        store.append(&mut batch, &log).unwrap();
        // Past the budget, an entry that cannot be decoded: a read that
        // stops at the budget never touches it.
        batch.insert(entry_key(60), b"\xff\xff\xff".as_slice());
        batch.commit().unwrap();
        let one = log[0].compute_size() as u64;
        let ctx = || GetEntriesContext::empty(false);

        let got = store.entries(2, 102, Some(3 * one), ctx()).unwrap();
        assert_eq!(got, log[..3].to_vec());
        // The first entry always, whatever the budget (raft-rs' rule).
        let got = store.entries(2, 102, Some(0), ctx()).unwrap();
        assert_eq!(got, log[..1].to_vec());
        assert_eq!(
            store.entries(2, 40, None, ctx()).unwrap(),
            log[..38].to_vec()
        );
        assert_eq!(
            store.entries(2, 40, Some(raft::NO_LIMIT), ctx()).unwrap(),
            log[..38].to_vec()
        );
        // Without a budget the damaged entry is read, and is an error.
        assert!(store.entries(2, 102, None, ctx()).is_err());
    }

    /// A founded store over `engine`, its log over an engine of its own.
    fn store_over(engine: &MemKv) -> RaftStore {
        store_with_log(engine, &MemKv::default())
    }

    fn store_with_log(engine: &MemKv, log: &MemKv) -> RaftStore {
        let store = RaftStore::new(
            Kv::new(engine.clone()),
            Kv::new(log.clone()),
            Arc::new(Stateless),
        )
        .unwrap();
        store.bootstrap(&[1, 2, 3]).unwrap();
        store
    }

    #[test]
    fn a_failing_hard_state_read_is_an_error_not_term_zero() {
        let log = MemKv::default();
        let store = store_with_log(&MemKv::default(), &log);
        assert_eq!(store.hard_state().unwrap().term, 1);
        log.fail_reads(HARD_STATE);
        assert!(matches!(store.hard_state(), Err(StoreError::Engine(_))));
        assert!(store.initial_state().is_err());
    }

    #[test]
    fn a_failing_conf_state_read_is_an_error_not_an_empty_configuration() {
        let engine = MemKv::default();
        let store = store_over(&engine);
        assert_eq!(store.conf_state().unwrap().voters, vec![1, 2, 3]);
        engine.fail_reads(CONF_STATE);
        assert!(store.conf_state().is_err());
        assert!(store.initial_state().is_err());
    }

    #[test]
    fn a_failing_applied_index_read_is_an_error_not_zero() {
        let engine = MemKv::default();
        let store = store_over(&engine);
        assert_eq!(store.applied().unwrap(), 1);
        engine.fail_reads(APPLIED);
        assert!(store.applied().is_err());
        assert!(store.compact(2).is_err());
        assert!(store.snapshot(1, 2).is_err());
    }

    #[test]
    fn damaged_raft_state_is_an_error_not_a_panic() {
        let engine = MemKv::default();
        let store = store_over(&engine);
        let mut batch = Staged::new(store.log());
        batch.insert(HARD_STATE, b"\xff\xff\xff".as_slice());
        batch.commit().unwrap();
        let mut batch = Staged::new(store.db());
        batch.insert(APPLIED, b"short".as_slice());
        batch.commit().unwrap();
        assert!(matches!(
            store.hard_state(),
            Err(StoreError::Damaged { .. })
        ));
        assert!(matches!(store.applied(), Err(StoreError::Damaged { .. })));
    }

    #[test]
    fn a_failing_log_read_is_an_error_not_an_empty_log() {
        let log = MemKv::default();
        let store = store_with_log(&MemKv::default(), &log);
        let mut batch = Staged::new(store.log());
        store
            .append(&mut batch, &[entry(2, 1), entry(3, 1)])
            .unwrap();
        batch.commit().unwrap();
        assert_eq!(store.last_index().unwrap(), 3);
        log.fail_reads(ENTRY_PREFIX);
        assert!(store.last_index().is_err());
        assert!(store.term(3).is_err());
        assert!(
            store
                .entries(2, 4, None, GetEntriesContext::empty(false))
                .is_err()
        );
        let mut batch = Staged::new(store.log());
        assert!(store.append(&mut batch, &[entry(3, 2)]).is_err());
    }

    #[test]
    fn a_log_kept_in_the_catalogs_store_moves_into_the_log_and_leaves_it() {
        // The layout before the log file: everything in one store.
        let engine = MemKv::default();
        let db = Kv::new(engine.clone());
        let mut meta = SnapshotMetadata::default();
        meta.index = 1;
        meta.term = 1;
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 3;
        hs.commit = 3;
        let mut old = Staged::new(&db);
        old.insert(SNAP_META, encode(&meta));
        old.insert(HARD_STATE, encode(&hs));
        old.insert(entry_key(2), encode(&entry(2, 1)));
        old.insert(entry_key(3), encode(&entry(3, 2)));
        old.insert(APPLIED, 3u64.to_be_bytes());
        old.commit().unwrap();

        let log = MemKv::default();
        let store = RaftStore::new(db.clone(), Kv::new(log.clone()), Arc::new(Stateless)).unwrap();
        assert_eq!(store.hard_state().unwrap(), hs);
        assert_eq!(store.first_index().unwrap(), 2);
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(store.term(3).unwrap(), 2);
        assert!(store.is_initialized().unwrap());
        assert!(db.scan_prefix(b"r:e:").next().is_none());
        assert_eq!(db.get(HARD_STATE).unwrap(), None);
        assert_eq!(db.get(SNAP_META).unwrap(), None);
        // Opened again, nothing moves twice.
        let store = RaftStore::new(db, Kv::new(log), Arc::new(Stateless)).unwrap();
        assert_eq!(store.hard_state().unwrap(), hs);
        assert_eq!(store.last_index().unwrap(), 3);
    }

    #[test]
    fn a_snapshot_install_cut_between_the_catalog_and_the_log_is_finished_on_open() {
        let (engine, log) = (MemKv::default(), MemKv::default());
        let store = store_with_log(&engine, &log);
        let mut batch = Staged::new(store.log());
        store
            .append(&mut batch, &[entry(2, 1), entry(3, 1)])
            .unwrap();
        batch.commit().unwrap();
        // The catalog's side of an install of a snapshot at (10, 4), flushed;
        // then the crash, before the log was reset.
        let mut installed = SnapshotMetadata::default();
        installed.index = 10;
        installed.term = 4;
        let mut batch = Staged::new(store.db());
        batch.insert(INSTALLED, encode(&installed));
        batch.insert(APPLIED, 10u64.to_be_bytes());
        batch.commit().unwrap();
        drop(store);

        let store = RaftStore::new(
            Kv::new(engine.clone()),
            Kv::new(log.clone()),
            Arc::new(Stateless),
        )
        .unwrap();
        assert_eq!(store.first_index().unwrap(), 11);
        assert_eq!(store.last_index().unwrap(), 10);
        assert_eq!(store.term(10).unwrap(), 4);
        let hs = store.hard_state().unwrap();
        assert_eq!((hs.commit, hs.term), (10, 4));
        // A finished install (or a later compaction) is left alone.
        let mut batch = Staged::new(store.log());
        store.append(&mut batch, &[entry(11, 4)]).unwrap();
        batch.commit().unwrap();
        drop(store);
        let store = RaftStore::new(Kv::new(engine), Kv::new(log), Arc::new(Stateless)).unwrap();
        assert_eq!(store.last_index().unwrap(), 11);
    }

    #[test]
    fn a_commit_index_lost_with_an_unsynced_write_is_raised_to_the_applied_index() {
        let store = store_over(&MemKv::default());
        let mut batch = Staged::new(store.log());
        store
            .append(&mut batch, &[entry(2, 1), entry(3, 1)])
            .unwrap();
        batch.commit().unwrap();
        // Applied up to 3 while the hard state on disk still says commit 1.
        let mut batch = Staged::new(store.db());
        batch.insert(APPLIED, 3u64.to_be_bytes());
        batch.commit().unwrap();
        assert_eq!(store.hard_state().unwrap().commit, 1);
        assert_eq!(store.initial_state().unwrap().hard_state.commit, 3);
    }

    #[test]
    fn a_store_in_a_directory_keeps_its_log_in_the_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        store.bootstrap(&[1, 2, 3]).unwrap();
        let mut batch = Staged::new(store.log());
        let mut e = entry(2, 1);
        e.data = vec![9; 4096].into();
        store.append(&mut batch, &[e.clone()]).unwrap();
        batch.commit().unwrap();
        store.flush_log().unwrap();
        let file = std::fs::read(dir.path().join(crate::log_file::FILE_NAME)).unwrap();
        assert!(file.len() > 4096, "the log file holds {} bytes", file.len());
        drop(store);
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        let got = store
            .entries(2, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![e]);
    }

    #[test]
    fn a_store_whose_synced_log_was_damaged_on_disk_refuses_to_open_and_says_to_replace_the_server()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        store.bootstrap(&[1, 2, 3]).unwrap();
        let path = dir.path().join(crate::log_file::FILE_NAME);
        let before = std::fs::metadata(&path).unwrap().len() as usize;
        for index in 2..5 {
            let mut batch = Staged::new(store.log());
            let mut e = entry(index, 1);
            e.data = vec![7; 512].into();
            store.append(&mut batch, &[e]).unwrap();
            batch.commit().unwrap();
            store.flush_log().unwrap();
        }
        drop(store);
        // One bit of entry 2's data flipped; entries 3 and 4 synced after it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[before + 200] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let why = damaged_refusal(dir.path());
        assert!(
            why.contains("is damaged") && why.contains("Replace it by a new member"),
            "{why}"
        );
    }

    /// A founded directory whose log then had `key` set to `value`, synced.
    fn founded_with_log_record(key: &[u8], value: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        store.bootstrap(&[1, 2, 3]).unwrap();
        let mut batch = Staged::new(store.log());
        batch.insert(key, value);
        batch.commit().unwrap();
        store.log().flush().unwrap();
        dir
    }

    /// Why opening the store in `dir` is refused as damaged; panics when it
    /// opens or is refused for another reason.
    fn damaged_refusal(dir: &Path) -> String {
        match RaftStore::open(dir, Arc::new(Stateless)) {
            Err(RegistryError::Damaged(why)) => why,
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("opened a store whose raft log cannot be trusted"),
        }
    }

    #[test]
    fn a_raft_log_copied_from_another_data_directory_or_lost_refuses_to_open() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        for dir in [&a, &b] {
            let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
            store.bootstrap(&[1, 2, 3]).unwrap();
            let mut batch = Staged::new(store.db());
            batch.insert(APPLIED, 7u64.to_be_bytes());
            batch.commit().unwrap();
            store.db().flush().unwrap();
        }
        // Founded, but nothing applied since (index 1): the log is still
        // bound to the directory.
        RaftStore::open(c.path(), Arc::new(Stateless))
            .unwrap()
            .bootstrap(&[1, 2, 3])
            .unwrap();
        // Each reopens as it was left.
        for dir in [&a, &b, &c] {
            drop(RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap());
        }
        let refused = |dir: &Path| {
            let why = damaged_refusal(dir);
            assert!(why.contains("Replace this server by a new member"), "{why}");
            why
        };
        let name = crate::log_file::FILE_NAME;
        std::fs::copy(a.path().join(name), b.path().join(name)).unwrap();
        let why = refused(b.path());
        assert!(why.contains("another data directory's"), "{why}");
        // Refused before anything changed: refused again, the same way.
        assert_eq!(refused(b.path()), why);
        std::fs::remove_file(a.path().join(name)).unwrap();
        let why = refused(a.path());
        assert!(why.contains("the log was lost or replaced"), "{why}");
        std::fs::remove_file(c.path().join(name)).unwrap();
        let why = refused(c.path());
        assert!(why.contains("the log was lost or replaced"), "{why}");

        // The other way round: another server's catalog beside this log.
        let (d, e) = (
            founded_with_log_record(b"x", b""),
            founded_with_log_record(b"x", b""),
        );
        std::fs::copy(
            d.path().join(CATALOG_FILE_NAME),
            e.path().join(CATALOG_FILE_NAME),
        )
        .unwrap();
        let why = refused(e.path());
        assert!(why.contains("another data directory's"), "{why}");
    }

    #[test]
    fn a_directory_whose_log_is_still_in_sled_opens_and_moves_it_out() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Kv::new(SledKv::open(&dir.path().join("registry.sled")).unwrap());
            let mut hs = HardState::default();
            hs.term = 3;
            hs.vote = 2;
            hs.commit = 5;
            let mut batch = Staged::new(&db);
            batch.insert(HARD_STATE, encode(&hs));
            for index in 2..=5 {
                batch.insert(entry_key(index), encode(&entry(index, 3)));
            }
            batch.insert(APPLIED, 5u64.to_be_bytes());
            batch.commit().unwrap();
            db.flush().unwrap();
        }
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        let state = raft::Storage::initial_state(&store).unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.vote), (3, 2));
        assert!(store.log().contains_key(LOG_OWNER).unwrap());
        assert!(!store.db().contains_key(HARD_STATE).unwrap());
        drop(store);
        // A directory opened once and never set up may lose its log.
        let empty = tempfile::tempdir().unwrap();
        drop(RaftStore::open(empty.path(), Arc::new(Stateless)).unwrap());
        std::fs::remove_file(empty.path().join(crate::log_file::FILE_NAME)).unwrap();
        drop(RaftStore::open(empty.path(), Arc::new(Stateless)).unwrap());
    }

    /// A sled catalog of a directory from before `catalog.log`, as a
    /// server of that version left it: bound log, catalog keys, applied 7.
    fn sled_catalog_directory() -> (tempfile::TempDir, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        store.bootstrap(&[1, 2, 3]).unwrap();
        let own = crate::incarnation::stored(store.db()).unwrap().unwrap();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> =
            store.db().range(b"", None).map(Result::unwrap).collect();
        drop(store);
        std::fs::remove_file(dir.path().join(CATALOG_FILE_NAME)).unwrap();
        let sled = Kv::new(SledKv::open(&dir.path().join(SLED_CATALOG)).unwrap());
        let mut batch = Staged::new(&sled);
        for (key, value) in pairs {
            batch.insert(key, value);
        }
        batch.insert(APPLIED, 7u64.to_be_bytes());
        batch.insert("s:Ủy ban nhân dân tỉnh".as_bytes(), "Sở Tư pháp".as_bytes());
        // More pairs than one record of the move takes.
        for i in 0..MOVE_BATCH + 10 {
            batch.insert(format!("s:x/{i:05}"), [7u8; 40]);
        }
        batch.commit().unwrap();
        sled.flush().unwrap();
        (dir, own)
    }

    fn assert_moved(dir: &Path, own: u64) {
        let store = RaftStore::open(dir, Arc::new(Stateless)).unwrap();
        assert_eq!(store.applied().unwrap(), 7);
        assert_eq!(crate::incarnation::stored(store.db()).unwrap(), Some(own));
        assert_eq!(
            store.db().get("s:Ủy ban nhân dân tỉnh".as_bytes()).unwrap(),
            Some("Sở Tư pháp".as_bytes().to_vec())
        );
        let moved = store.db().range(b"s:x/", Some(b"s:x0")).count();
        assert_eq!(moved, MOVE_BATCH + 10, "every pair moves");
        assert_eq!(store.db().get(b"s:only-in-a-partial-copy").unwrap(), None);
        drop(store);
        assert!(!dir.join(SLED_CATALOG).exists(), "sled's copy is removed");
        assert!(!dir.join(REMOVING_SLED).exists());
        assert!(!dir.join(MOVING_CATALOG).exists());
        assert!(dir.join(CATALOG_FILE_NAME).exists());
    }

    #[test]
    fn a_catalog_in_sled_moves_into_its_file_whole_whatever_crash_cut_the_move() {
        // Opened as it is: every pair moves, the bound log still matches.
        let (dir, own) = sled_catalog_directory();
        assert_moved(dir.path(), own);

        // A crash while copying: a partial copy beside sled (whole records,
        // one of them a pair sled does not hold), made again from sled.
        let (dir, own) = sled_catalog_directory();
        let moving = dir.path().join(MOVING_CATALOG);
        let partial = LogFileKv::open_named(&moving, CATALOG_FILE_NAME).unwrap();
        let mut batch = crate::kv::Batch::new();
        batch.insert(b"s:only-in-a-partial-copy".to_vec(), Some(b"x".to_vec()));
        partial.write(batch).unwrap();
        partial.flush().unwrap();
        drop(partial);
        assert_moved(dir.path(), own);

        // A crash between sled's own compaction's two renames (a server of
        // the version before): the compacted copy is the store, and moves.
        let (dir, own) = sled_catalog_directory();
        let sled = dir.path().join(SLED_CATALOG);
        std::fs::rename(&sled, dir.path().join("registry.sled.compacting")).unwrap();
        std::fs::create_dir(dir.path().join("registry.sled.old")).unwrap();
        assert_moved(dir.path(), own);
        assert!(!dir.path().join("registry.sled.old").exists());

        // A crash while removing sled's copy, after it was renamed aside.
        let (dir, own) = sled_catalog_directory();
        drop(RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap());
        std::fs::create_dir_all(dir.path().join(REMOVING_SLED).join("half")).unwrap();
        assert_moved(dir.path(), own);

        // A crash after the rename: the file is the catalog, sled a leftover
        // that must not be copied over it.
        let (dir, own) = sled_catalog_directory();
        drop(RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap());
        let stale = Kv::new(SledKv::open(&dir.path().join(SLED_CATALOG)).unwrap());
        let mut batch = Staged::new(&stale);
        batch.insert(APPLIED, 3u64.to_be_bytes());
        batch.commit().unwrap();
        stale.flush().unwrap();
        drop(stale);
        assert_moved(dir.path(), own);
    }

    #[test]
    fn a_catalog_behind_the_logs_compaction_point_refuses_to_open_as_damaged() {
        // The log compacted past what the catalog still holds: as if the
        // catalog's last synced writes were cut at a start.
        let mut meta = SnapshotMetadata::default();
        meta.index = 40;
        meta.term = 2;
        let dir = founded_with_log_record(SNAP_META, &encode(&meta));
        let why = damaged_refusal(dir.path());
        assert!(
            why.contains("applied the log up to index 1, but the log was compacted up to 40")
                && why.contains("Replace this server by a new member"),
            "{why}"
        );
    }

    #[test]
    fn a_data_directory_open_in_one_process_is_refused_to_another_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap();
        let clone = store.clone();
        drop(store);
        // flock: another open file description conflicts, in this process
        // as in another.
        match RaftStore::open(dir.path(), Arc::new(Stateless)) {
            Err(RegistryError::Storage(why)) => {
                assert!(why.contains("is in use by another process"), "{why}")
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("opened a data directory another handle holds"),
        }
        drop(clone);
        drop(RaftStore::open(dir.path(), Arc::new(Stateless)).unwrap());
    }

    #[test]
    fn a_log_whose_owner_record_is_damaged_refuses_to_open_as_damaged() {
        let dir = founded_with_log_record(LOG_OWNER, &[1, 2, 3]);
        let why = damaged_refusal(dir.path());
        assert!(
            why.contains("record of the data directory it belongs to is damaged")
                && why.contains("Replace this server by a new member"),
            "{why}"
        );
    }

    #[test]
    fn a_log_from_before_the_binding_or_a_founding_a_crash_cut_opens_and_is_bound() {
        // A directory whose log was never marked: applied entries and a log
        // with its raft state. It opens, and is marked from then on.
        let old = tempfile::tempdir().unwrap();
        {
            let store = RaftStore::open(old.path(), Arc::new(Stateless)).unwrap();
            store.bootstrap(&[1, 2, 3]).unwrap();
            let mut batch = Staged::new(store.db());
            batch.insert(APPLIED, 7u64.to_be_bytes());
            batch.remove(LOG_BOUND);
            batch.commit().unwrap();
            store.db().flush().unwrap();
            let mut batch = Staged::new(store.log());
            batch.remove(LOG_OWNER);
            batch.commit().unwrap();
            store.log().flush().unwrap();
        }
        let store = RaftStore::open(old.path(), Arc::new(Stateless)).unwrap();
        assert!(store.log().contains_key(LOG_OWNER).unwrap());
        assert!(store.db().contains_key(LOG_BOUND).unwrap());
        drop(store);
        // A founding cut between the catalog's side and the log's (applied
        // index 1, no raft state in the log), before the log was marked:
        // founding may run again.
        let cut = tempfile::tempdir().unwrap();
        {
            let store = RaftStore::open(cut.path(), Arc::new(Stateless)).unwrap();
            let mut batch = Staged::new(store.db());
            batch.insert(APPLIED, 1u64.to_be_bytes());
            batch.remove(LOG_BOUND);
            batch.commit().unwrap();
            store.db().flush().unwrap();
        }
        std::fs::remove_file(cut.path().join(crate::log_file::FILE_NAME)).unwrap();
        let store = RaftStore::open(cut.path(), Arc::new(Stateless)).unwrap();
        assert!(!store.is_initialized().unwrap());
        store.bootstrap(&[1, 2, 3]).unwrap();
    }
}

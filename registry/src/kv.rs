//! The key-value store everything a registry server keeps lives in: a small
//! trait ([`KvEngine`]: read, ordered range, atomic batch write, flush), the
//! cheap handle the rest of the registry passes around ([`Kv`]), and writes
//! staged for one atomic batch ([`Staged`]).
//!
//! The engine is an append-only file with every key in memory in a server
//! (`log_file.rs`, for the Raft log and the catalog alike), sled for the
//! node's catalog cache and a directory's catalog from before that file
//! (`sled_kv.rs`), and a `BTreeMap` in unit tests (`mem_kv.rs`); only
//! `storage.rs` names the engine, so the catalog and the Raft log can be
//! tested without a disk and the engine replaced without touching them.

use crate::error::StoreError;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Key-value pairs in key order, each read possibly failing.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

/// Writes applied atomically: `Some` sets a key, `None` removes it. A map,
/// so the last write to a key wins, as in `sled::Batch`.
pub type Batch = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A storage engine.
pub trait KvEngine: Send + Sync + fmt::Debug {
    /// The value under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Pairs from `start` (included) to `end` (excluded; `None`: to the
    /// last key), in key order. The iterator borrows the engine only, not
    /// the bounds, so that callers can pass bounds they build on the spot.
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_>;

    /// The greatest key starting with `prefix`.
    fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies every write of `batch`, all or none, visible to reads at
    /// once. Not durable until [`flush`](Self::flush); after a crash an
    /// engine must keep a prefix of the batches written, never part of one
    /// (the consensus loop relies on it to leave applied state unflushed).
    fn write(&self, batch: Batch) -> Result<(), StoreError>;

    /// Makes every write so far durable, returning once they are synced.
    fn flush(&self) -> Result<(), StoreError>;
}

/// A shared handle to a storage engine, cheap to clone.
#[derive(Clone, Debug)]
pub struct Kv(Arc<dyn KvEngine>);

impl Kv {
    /// A handle to `engine`; every clone shares it.
    pub fn new(engine: impl KvEngine + 'static) -> Self {
        Self(Arc::new(engine))
    }

    /// The value under `key`, if any, as last written (flushed or not).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }

    /// Whether any value is stored under `key`; a failed read is an error,
    /// not `false`.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.0.get(key)?.is_some())
    }

    /// Pairs from `start` (included) to `end` (excluded), in key order.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
        self.0.range(start, end)
    }

    /// Pairs whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Entries<'_> {
        self.0.range(prefix, prefix_end(prefix).as_deref())
    }

    /// The greatest key starting with `prefix`.
    pub fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.last_key(prefix)
    }

    /// Applies `batch` atomically (nothing when it is empty); not durable
    /// until [`flush`](Self::flush).
    pub fn write(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.0.write(batch)
    }

    /// Makes every write so far durable, waiting for the engine's sync;
    /// writes are not durable before this (see [`KvEngine::flush`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.0.flush()
    }
}

/// The first key after every key starting with `prefix`, or `None` when
/// there is none (the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Keys and values, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reading a key, from the store or from writes staged over it.
pub trait KvRead {
    /// The value under `key` as a reader would see it now: a staged write
    /// or removal first, else what the store holds.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every key and value starting with `prefix`, in key order, as a reader
    /// would see them now (staged writes and removals included). For rare
    /// checks over a few records (what still depends on an agency), not for
    /// the data path.
    fn read_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError>;
}

impl KvRead for Kv {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }

    fn read_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.scan_prefix(prefix).collect()
    }
}

/// Writes staged for one atomic batch, visible to reads through the stage
/// before they are committed. The consensus loop applies a whole Ready (new
/// entries, hard state, every committed entry) as one batch: one record
/// appended per batch, not one per entry.
#[derive(Debug)]
pub struct Staged {
    kv: Kv,
    writes: Batch,
}

impl Staged {
    /// An empty stage over `kv`: nothing is written until [`commit`](Self::commit).
    pub fn new(kv: &Kv) -> Self {
        Self {
            kv: kv.clone(),
            writes: Batch::new(),
        }
    }

    /// Stages setting `key` to `value`, replacing any earlier staged write
    /// to that key.
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    /// Stages removing `key`, replacing any earlier staged write to it.
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// Applies every staged write atomically (nothing when none is staged);
    /// like [`Kv::write`], not flushed.
    pub fn commit(self) -> Result<(), StoreError> {
        self.kv.write(self.writes)
    }
}

impl KvRead for Staged {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.kv.get(key),
        }
    }

    fn read_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.kv.read_prefix(prefix)?.into_iter().collect();
        for (key, staged) in self.writes.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match staged {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().collect())
    }
}

/// Reads a big-endian u64 stored under `key`; `None` when the key is absent.
pub fn read_u64(db: &impl KvRead, key: &[u8]) -> Result<Option<u64>, StoreError> {
    db.read(key)?
        .map(|v| {
            <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Damaged {
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason: format!("{} bytes, not an 8-byte integer", v.len()),
                })
        })
        .transpose()
}

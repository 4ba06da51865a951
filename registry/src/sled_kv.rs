//! The sled engine under a registry server's [`Kv`](crate::kv::Kv): one
//! tree, one `sled::Batch` per atomic write, durable only at `flush`
//! (`sled::Db::flush`, which syncs to disk).

use crate::error::StoreError;
use crate::kv::{Batch, Entries, KvEngine};
use std::path::Path;

/// A sled database as a [`KvEngine`].
#[derive(Clone, Debug)]
pub struct SledKv {
    db: sled::Db,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl SledKv {
    /// Opens (or creates) the database at `path`, in sled's high-throughput
    /// mode; fails if sled cannot open it (a lock held by another process,
    /// I/O, corruption).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(engine)?;
        Ok(Self { db })
    }
}

impl KvEngine for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
        let iter = match end {
            Some(end) => self.db.range(start..end),
            None => self.db.range(start..),
        };
        Box::new(iter.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine)))
    }

    fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .scan_prefix(prefix)
            .keys()
            .next_back()
            .transpose()
            .map(|k| k.map(|k| k.to_vec()))
            .map_err(engine)
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(v) => sled_batch.insert(key, v),
                None => sled_batch.remove(key),
            }
        }
        self.db.apply_batch(sled_batch).map_err(engine)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(engine)
    }
}

//! The sled engine under a registry server's [`Kv`](crate::kv::Kv): one
//! tree, one `sled::Batch` per atomic write, durable only at `flush`.
//!
//! sled 0.34's own `flush` writes its buffers and waits with
//! `sync_file_range` (sled issue #1452): that survives a crash of the
//! process, not a power cut, because neither the drive's write cache nor the
//! file's size is made durable; sled's real fsync runs every 500 ms in a
//! background thread. So [`SledKv::flush`] follows sled's flush with an
//! `fdatasync` of sled's log file, of every blob file sled wrote since (large
//! values live in files of their own under `blobs/`) and of the directories
//! whose entries changed: when it returns, everything written before it is on
//! stable storage.

use crate::error::StoreError;
use crate::kv::{Batch, Entries, KvEngine};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// A sled database as a [`KvEngine`].
#[derive(Clone, Debug)]
pub struct SledKv {
    db: sled::Db,
    files: Arc<Mutex<SledFiles>>,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{}: {e}", path.display()))
}

/// The files sled keeps in its directory, and which of them are known to be
/// synced, so that a flush syncs only what changed.
#[derive(Debug)]
struct SledFiles {
    dir: PathBuf,
    /// `<dir>/db`: sled's log, where every write lands first.
    log: File,
    /// The names in `dir` when it was last synced.
    entries: BTreeSet<OsString>,
    /// The blob files already synced (blobs are written once, never changed).
    blobs: BTreeSet<OsString>,
}

/// `fsync` of a directory, which makes the names in it durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn names(dir: &Path) -> Result<BTreeSet<OsString>, StoreError> {
    std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .map(|entry| entry.map(|e| e.file_name()).map_err(|e| io(dir, e)))
        .collect()
}

impl SledFiles {
    /// Syncs what sled created when it opened (its `conf` file is written
    /// without a sync) and the directories up to `dir`'s grandparent, so
    /// that a data directory just made survives a power cut too.
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(|e| io(&log_path, e))?;
        let conf = dir.join("conf");
        File::open(&conf)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&conf, e))?;
        let mut files = Self {
            dir: dir.to_owned(),
            log,
            entries: BTreeSet::new(),
            blobs: BTreeSet::new(),
        };
        files.sync()?;
        sync_dir(&dir.join("blobs"))?;
        for ancestor in dir.ancestors().skip(1).take(2) {
            if !ancestor.as_os_str().is_empty() {
                sync_dir(ancestor)?;
            }
        }
        Ok(files)
    }

    /// Syncs the blob files and directory entries that changed since the
    /// last call, then sled's log.
    fn sync(&mut self) -> Result<(), StoreError> {
        let blob_dir = self.dir.join("blobs");
        let blobs = names(&blob_dir)?;
        let mut new_blobs = false;
        for name in blobs.difference(&self.blobs) {
            let path = blob_dir.join(name);
            match File::open(&path).and_then(|f| f.sync_data()) {
                Ok(()) => new_blobs = true,
                // Collected by sled since it was listed: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, e)),
            }
        }
        if new_blobs {
            sync_dir(&blob_dir)?;
        }
        self.blobs = blobs;
        let entries = names(&self.dir)?;
        if entries != self.entries {
            sync_dir(&self.dir)?;
            self.entries = entries;
        }
        self.log
            .sync_data()
            .map_err(|e| io(&self.dir.join("db"), e))
    }
}

impl SledKv {
    /// Opens (or creates) the database at `path`, in sled's high-throughput
    /// mode, and makes its files durable; fails if sled cannot open it (a
    /// lock held by another process, I/O, corruption) or a sync fails.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(engine)?;
        let files = SledFiles::open(path)?;
        Ok(Self {
            db,
            files: Arc::new(Mutex::new(files)),
        })
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

    /// sled's flush (buffers written, `sync_file_range`), then `fdatasync`
    /// of what it wrote: see the module's documentation.
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sync()
    }
}

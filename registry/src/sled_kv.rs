//! The sled engine under a [`Kv`](crate::kv::Kv): one tree, one
//! `sled::Batch` per atomic write, durable only at `flush`. A node's copy of
//! the catalog lives in it; a registry server's catalog did until
//! `catalog.log` (`storage.rs` moves it out when an older directory opens).
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

/// How long [`SledKv::open`] waits for a lock on the directory to be let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SledKv {
    /// Opens (or creates) the database at `path`, in sled's high-throughput
    /// mode, and makes its files durable; fails if sled cannot open it (a
    /// lock held by another process, I/O, corruption) or a sync fails.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // sled lets go of its lock on the directory when its background
        // thread drops the last handle, a moment after the handle is dropped:
        // a store reopened in the same process (after a compaction, a
        // restore) waits for it. Another process's lock fails after the wait.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .mode(sled::Mode::HighThroughput)
                .open()
            {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.map_err(engine)?,
            }
        };
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

/// When a sled database's files are this many times larger than the data it
/// holds, [`compact_if_wasteful`] rewrites it.
pub const COMPACT_RATIO: u64 = 4;

/// A database whose files are smaller than this is never rewritten: the
/// space to win is not worth a copy at every start.
pub const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Where a compaction writes the new database, beside the old one.
fn compact_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// What a compaction found and did, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// The files of the database before: sled's log and its blobs.
    pub before: u64,
    /// The keys and values it holds.
    pub live: u64,
    /// The files after, or `None` when they were left as they were (not
    /// wasteful enough).
    pub after: Option<u64>,
}

/// Bytes of the files under `dir`, recursively; 0 when it does not exist.
pub fn disk_usage(dir: &Path) -> Result<u64, StoreError> {
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let meta = entry.metadata().map_err(|e| io(&entry.path(), e))?;
        total += if meta.is_dir() {
            disk_usage(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Finishes or undoes a compaction a crash interrupted, so that `path` is
/// the whole database, old or new:
/// - `<path>.compacting` without `<path>.old` was being written: removed;
/// - `<path>.old` with `<path>` present: the new one is in place; removed;
/// - `<path>.old` without `<path>`: the crash fell between the two renames,
///   and the new database was complete and synced before the first: moved
///   into place.
pub(crate) fn recover_compaction(path: &Path) -> Result<(), StoreError> {
    let new = compact_path(path, ".compacting");
    let old = compact_path(path, ".old");
    let remove = |p: &Path| match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(p, e)),
    };
    if old.exists() {
        if !path.exists() {
            std::fs::rename(&new, path).map_err(|e| io(&new, e))?;
            tracing::warn!(path = %path.display(), "finished a compaction of the store that a crash interrupted");
        }
        remove(&old)?;
    }
    remove(&new)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Rewrites the sled database at `path` (closed: no one may have it open)
/// into a fresh one when its files are at least `ratio` times the data it
/// holds and at least `min_bytes`: sled 0.34 keeps the space of deleted and
/// overwritten values in its files, so a store that once held much more than
/// it does now stays that large. Returns what it found; `after` is `None`
/// when nothing was rewritten.
///
/// Nothing is lost on a crash midway: every tree is copied to
/// `<path>.compacting`, flushed and synced (files and directories); then
/// `<path>` is renamed to `<path>.old`, the copy to `<path>`, and the old one
/// removed. The next call (the next open) finishes or undoes an interrupted
/// compaction first ([`recover_compaction`]). Fails when the database cannot
/// be read or the copy written; the database is then as it was.
pub fn compact_if_wasteful(
    path: &Path,
    ratio: u64,
    min_bytes: u64,
) -> Result<Compaction, StoreError> {
    recover_compaction(path)?;
    let before = disk_usage(path)?;
    if before < min_bytes {
        return Ok(Compaction {
            before,
            live: 0,
            after: None,
        });
    }
    let db = sled::Config::new().path(path).open().map_err(engine)?;
    let mut live = 0u64;
    for name in db.tree_names() {
        for item in db.open_tree(&name).map_err(engine)?.iter() {
            let (k, v) = item.map_err(engine)?;
            live += (k.len() + v.len()) as u64;
        }
    }
    if before < live.saturating_mul(ratio) {
        return Ok(Compaction {
            before,
            live,
            after: None,
        });
    }
    let new = compact_path(path, ".compacting");
    {
        let copy = sled::Config::new().path(&new).open().map_err(engine)?;
        for name in db.tree_names() {
            let from = db.open_tree(&name).map_err(engine)?;
            let to = copy.open_tree(&name).map_err(engine)?;
            let mut batch = sled::Batch::default();
            let mut in_batch = 0usize;
            for item in from.iter() {
                let (k, v) = item.map_err(engine)?;
                in_batch += k.len() + v.len();
                batch.insert(k, v);
                if in_batch >= 4 << 20 {
                    to.apply_batch(std::mem::take(&mut batch)).map_err(engine)?;
                    in_batch = 0;
                }
            }
            to.apply_batch(batch).map_err(engine)?;
        }
        copy.flush().map_err(engine)?;
        // The copy's files, blobs and directory entries on stable storage
        // before the old database is moved away.
        SledFiles::open(&new)?.sync()?;
    }
    drop(db);
    let old = compact_path(path, ".old");
    std::fs::rename(path, &old).map_err(|e| io(path, e))?;
    std::fs::rename(&new, path).map_err(|e| io(&new, e))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    let after = disk_usage(path)?;
    tracing::info!(
        path = %path.display(),
        before, live, after,
        "rewrote the store into a fresh one: its files held far more than its data"
    );
    Ok(Compaction {
        before,
        live,
        after: Some(after),
    })
}

#[cfg(test)]
mod compaction_tests {
    use super::*;

    fn tmp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lgsp-compact-{name}-"))
            .tempdir()
            .unwrap()
    }

    /// Writes `n` values of `size` bytes under `k:<i>`, flushed.
    fn fill(kv: &SledKv, n: usize, size: usize) {
        for i in 0..n {
            let mut batch = Batch::new();
            batch.insert(format!("k:{i:05}").into_bytes(), Some(vec![i as u8; size]));
            kv.write(batch).unwrap();
        }
        kv.flush().unwrap();
    }

    #[test]
    fn space_of_deleted_records_comes_back_when_the_store_is_compacted() {
        let dir = tmp("deleted");
        let path = dir.path().join("registry.sled");
        let kv = SledKv::open(&path).unwrap();
        // 200 records of 60 KB, then all but 5 deleted.
        fill(&kv, 200, 60_000);
        let full = disk_usage(&path).unwrap();
        for i in 5..200 {
            let mut batch = Batch::new();
            batch.insert(format!("k:{i:05}").into_bytes(), None);
            kv.write(batch).unwrap();
        }
        kv.flush().unwrap();
        drop(kv);
        let deleted = disk_usage(&path).unwrap();
        // Nor does sled give it back when the store is opened again.
        drop(SledKv::open(&path).unwrap());
        let reopened = disk_usage(&path).unwrap();
        eprintln!(
            "200 x 60 KB written: {full} bytes; 195 deleted: {deleted} bytes; reopened: {reopened} bytes"
        );
        assert!(
            deleted.min(reopened) > 5 * full / 10,
            "sled gave the space back by itself ({full} -> {deleted} -> {reopened}): compaction is not needed"
        );

        let done = compact_if_wasteful(&path, COMPACT_RATIO, 1 << 20).unwrap();
        let after = done.after.expect("a wasteful store is rewritten");
        eprintln!("compacted: {done:?}");
        assert_eq!(done.live, 5 * (60_000 + 7));
        assert!(after < full / 10, "{done:?}");
        assert!(!compact_path(&path, ".old").exists());
        assert!(!compact_path(&path, ".compacting").exists());
        let kv = SledKv::open(&path).unwrap();
        for i in 0..5 {
            assert_eq!(
                kv.get(format!("k:{i:05}").as_bytes()).unwrap(),
                Some(vec![i as u8; 60_000])
            );
        }
        assert_eq!(kv.get(b"k:00005").unwrap(), None);
    }

    #[test]
    fn every_tree_survives_a_compaction_as_a_nodes_catalog_cache_has_them() {
        let dir = tmp("trees");
        let path = dir.path().join("node.sled");
        {
            let db = sled::open(&path).unwrap();
            let catalog = db.open_tree("catalog").unwrap();
            for i in 0..100u32 {
                catalog.insert(i.to_be_bytes(), vec![7; 60_000]).unwrap();
                db.insert(i.to_be_bytes(), vec![8; 1_000]).unwrap();
            }
            for i in 2..100u32 {
                catalog.remove(i.to_be_bytes()).unwrap();
            }
            db.flush().unwrap();
        }
        let done = compact_if_wasteful(&path, COMPACT_RATIO, 1 << 20).unwrap();
        assert!(done.after.is_some(), "{done:?}");
        let db = sled::open(&path).unwrap();
        let catalog = db.open_tree("catalog").unwrap();
        assert_eq!(catalog.len(), 2);
        assert_eq!(
            catalog.get(1u32.to_be_bytes()).unwrap().unwrap().len(),
            60_000
        );
        assert_eq!(db.len(), 100);
    }

    #[test]
    fn a_store_mostly_live_or_small_is_left_as_it_is() {
        let dir = tmp("live");
        let path = dir.path().join("registry.sled");
        let kv = SledKv::open(&path).unwrap();
        fill(&kv, 100, 60_000);
        drop(kv);
        let done = compact_if_wasteful(&path, COMPACT_RATIO, 1 << 20).unwrap();
        assert_eq!(done.after, None, "{done:?}");
        assert!(done.live >= 6_000_000);
        let small = compact_if_wasteful(&path, COMPACT_RATIO, 1 << 40).unwrap();
        assert_eq!((small.live, small.after), (0, None));
    }

    #[test]
    fn a_compaction_cut_short_by_a_crash_is_finished_or_undone_on_the_next_open() {
        let dir = tmp("crash");
        let path = dir.path().join("registry.sled");
        let kv = SledKv::open(&path).unwrap();
        fill(&kv, 3, 100);
        drop(kv);
        let new = compact_path(&path, ".compacting");
        let old = compact_path(&path, ".old");

        // Crashed while writing the copy: the copy is dropped, the store kept.
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("db"), b"half a copy").unwrap();
        let kv = {
            compact_if_wasteful(&path, COMPACT_RATIO, 1 << 40).unwrap();
            SledKv::open(&path).unwrap()
        };
        assert!(!new.exists());
        assert_eq!(kv.get(b"k:00002").unwrap(), Some(vec![2; 100]));
        drop(kv);

        // Crashed between the two renames: the complete copy is moved into place.
        let copy = dir.path().join("copy");
        let kv = SledKv::open(&copy).unwrap();
        fill(&kv, 1, 10);
        drop(kv);
        std::fs::rename(&path, &old).unwrap();
        std::fs::rename(&copy, &new).unwrap();
        compact_if_wasteful(&path, COMPACT_RATIO, 1 << 40).unwrap();
        assert!(!old.exists() && !new.exists());
        let kv = SledKv::open(&path).unwrap();
        assert_eq!(kv.get(b"k:00000").unwrap(), Some(vec![0; 10]));
        assert_eq!(
            kv.get(b"k:00002").unwrap(),
            None,
            "the new store, not the old"
        );
        drop(kv);

        // Crashed after the second rename: the old one is removed.
        std::fs::create_dir_all(old.join("blobs")).unwrap();
        compact_if_wasteful(&path, COMPACT_RATIO, 1 << 40).unwrap();
        assert!(!old.exists());
        assert!(
            SledKv::open(&path)
                .unwrap()
                .get(b"k:00000")
                .unwrap()
                .is_some()
        );
    }
}

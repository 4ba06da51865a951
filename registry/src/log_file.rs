//! A registry server's Raft log and hard state (`raft.log`), and its catalog
//! (`catalog.log`), each in a file of its own: a [`KvEngine`] that keeps
//! every key in memory and appends each batch to an append-only file, one
//! record per batch with a CRC, made durable by one `fdatasync` at
//! [`flush`](KvEngine::flush).
//!
//! Why not sled: sled 0.34 rewrites tree nodes and its own log for every
//! batch and flushes with several `sync_file_range` calls, about 35 KB
//! written and more than one device round trip per acknowledged write; and
//! for the catalog its tree updates were the largest share of the
//! registry's CPU per write. The log only appends, reads what it appended
//! recently and drops its oldest entries, so a plain file does it with the
//! bytes of the entries themselves and one sync per Ready; the catalog is
//! small enough for memory (a province's records and the last
//! `watch_history` changes), and needs no sync of its own per Ready since
//! the log replays what it loses.
//!
//! The file (`raft.log`, `catalog.log`) is a sequence of records:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | payload length (u32 LE) |
//! | 4 | CRC-32 of the payload (u32 LE) |
//! | n | the batch: per write, 1 byte (1 set, 0 remove), key length (u32 LE), key, and for a set the value length (u32 LE) and value |
//!
//! Each file begins with its *file id*: a record whose one write sets
//! [`FILE_KEY`] to 16 random bytes, synced before anything else is written.
//! After each `fdatasync`, a *sync mark* is appended: a record like any
//! other whose one write sets [`MARK_KEY`] to its own position and the file
//! id, saying "the bytes before me were synced". It is not synced itself;
//! the next sync takes it along (and the kernel writes it back within
//! seconds anyway). The id makes a mark unforgeable: bytes a client put in
//! a Raft entry could look like a mark at its own position, but cannot
//! carry an id they never saw. Neither record reaches the map.
//!
//! Opening replays every record into memory up to the first record that is
//! short, fails its CRC or does not parse. What follows decides what that
//! damage is:
//! - no sync mark further on: the bytes were never synced, so never
//!   acknowledged: a write a crash tore, or pages a power cut wrote out of
//!   order. The file is cut there (logged, truncated and synced); since
//!   records are only appended, what remains is a prefix of the batches
//!   written, whole.
//! - a sync mark of this file further on: bytes that were synced changed on
//!   disk. Cutting would silently drop entries this server acknowledged
//!   while keeping its term and vote, so opening refuses, naming the byte
//!   ([`StoreError::Corrupt`]). Likewise a damaged file id with bytes after
//!   it: it was synced before them.
//!
//! A file an older version wrote has no id and no marks: it opens as before
//! (damage cut off; but a damaged first record with more bytes after it is
//! refused, as a damaged id would be), and is rewritten at once with an id.
//!
//! What this cannot tell apart: damage to the batches of the very last sync
//! when its mark never reached the disk (a power cut within seconds of it).
//!
//! When the file holds much more than the live keys (entries compacted away,
//! hard states and records replaced), it is rewritten into `<name>.new` on a
//! thread of its own while writes go on (see [`Rewrite`]), synced, and
//! renamed over the old one, then the directory synced: a crash leaves the
//! old file or the new one, both complete. Writes wait only for the records
//! written meanwhile to be appended and synced, and the rename. A file
//! without an id is rewritten in place when it opens, in the same pages.

use crate::error::StoreError;
use crate::kv::{Batch, Entries, KvEngine};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// The Raft log's file name in the data directory.
pub const FILE_NAME: &str = "raft.log";
/// The catalog's file name in the data directory (see `storage.rs`).
pub const CATALOG_FILE_NAME: &str = "catalog.log";
/// Where a rewrite of the file `name` is written before it is renamed.
fn new_file_name(name: &str) -> String {
    format!("{name}.new")
}
const HEADER: usize = 8;
/// A file at least this many times its live bytes is rewritten...
const REWRITE_RATIO: u64 = 4;
/// ...once it is at least this large.
const REWRITE_MIN_BYTES: u64 = 8 << 20;
/// The key of a sync mark's one write; its value is the mark's position (u64
/// LE). Outside the Raft store's keys (`r:`…), so that a server of an older
/// version, which knows no marks, keeps it as a key nobody reads.
pub const MARK_KEY: &[u8] = b"log:synced";
/// The key of a file id's one write (see the module documentation).
pub const FILE_KEY: &[u8] = b"log:file";
/// A file's id: random, new with each file (a rewrite makes a new one).
type FileId = [u8; 16];
/// The payload of a sync mark: op, key length, key, value length, value
/// (position and file id).
const MARK_PAYLOAD: usize = 1 + 4 + MARK_KEY.len() + 4 + 8 + 16;
/// A file id record, header included.
const FILE_ID_RECORD: usize = HEADER + 1 + 4 + FILE_KEY.len() + 4 + 16;

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{}: {e}", path.display()))
}

/// A store's keys in memory over an append-only file (see the module
/// documentation). Clones share the same map and file.
#[derive(Clone, Debug)]
pub struct LogFileKv {
    map: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
    file: Arc<Mutex<LogFile>>,
}

#[derive(Debug)]
struct LogFile {
    dir: PathBuf,
    /// The file's name in `dir`.
    name: &'static str,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Bytes the live keys and values take, as the file would hold them.
    live: u64,
    /// Written since the last sync.
    dirty: bool,
    /// Where [`LogFile::append`] encodes a record, kept to reuse its buffer.
    buffer: Vec<u8>,
    /// The file's id, which its sync marks carry.
    id: FileId,
    /// A rewrite running on a thread of its own, if one is.
    rewriting: Option<Rewrite>,
    /// No rewrite starts before the file is this long (after one failed).
    next_rewrite_at: u64,
    /// A rewrite was renamed into place but the directory's sync failed:
    /// no flush succeeds until it does.
    dir_unsynced: bool,
    /// The data directory's lock, kept until this file's rewrite thread
    /// has ended (see [`LogFileKv::hold_lock`]).
    lock: Option<Arc<File>>,
    /// Why nothing more is written: an append failed part way and the file
    /// could not be cut back to `len`, so its end is not where its records
    /// end (see [`LogFile::append`]).
    torn: Option<String>,
    /// Tests only: the next append writes this many of its bytes, then
    /// fails as a full disk does; `true`: cutting it back fails too.
    #[cfg(test)]
    short_append: Option<(usize, bool)>,
}

/// A rewrite in the background: a thread copies the live pairs, a page
/// under the map's read lock at a time, into `<name>.new` after a new file
/// id; meanwhile every record written is also kept in `tail`. Finishing
/// appends the tail to the copy, syncs it and renames it into place: a key
/// written after its page was copied is in the tail, which replays last, so
/// the new file ends as the map does.
#[derive(Debug)]
struct Rewrite {
    thread: std::thread::JoinHandle<Result<File, StoreError>>,
    id: FileId,
    tail: Vec<u8>,
    started: std::time::Instant,
    /// Tells the copy to stop (the store dropped, or the tail grew too long).
    cancel: Arc<std::sync::atomic::AtomicBool>,
}

/// Pairs a background rewrite copies per hold of the map's read lock...
const REWRITE_PAGE: usize = 1024;
/// ...and bytes, whichever comes first.
const REWRITE_PAGE_BYTES: usize = 1 << 20;

/// The largest encoding buffer kept between writes.
const KEPT_BUFFER: usize = 1 << 20;

/// The bytes one set takes in a record.
fn set_size(key: &[u8], value: &[u8]) -> u64 {
    (1 + 4 + key.len() + 4 + value.len()) as u64
}

/// Appends one record holding `writes` to `out`.
fn append_record(out: &mut Vec<u8>, writes: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    for (key, value) in writes {
        out.push(u8::from(value.is_some()));
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        if let Some(value) = value {
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    let payload_len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Appends the sync mark of position `at` in file `id` to `out`.
fn append_mark(out: &mut Vec<u8>, at: u64, id: &FileId) {
    let mut value = at.to_le_bytes().to_vec();
    value.extend_from_slice(id);
    append_record(out, &mut std::iter::once((MARK_KEY, Some(&value[..]))));
}

/// Appends the record of file id `id` to `out`.
fn append_file_id(out: &mut Vec<u8>, id: &FileId) {
    append_record(out, &mut std::iter::once((FILE_KEY, Some(&id[..]))));
}

/// A new random file id.
fn new_file_id() -> Result<FileId, StoreError> {
    let mut id = FileId::default();
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| StoreError::Engine("no randomness for a log file's id".into()))?;
    Ok(id)
}

/// Reads a u32 LE at `at`, moving `at` past it; `None` past the end.
fn take_u32(payload: &[u8], at: &mut usize) -> Option<usize> {
    let bytes = payload.get(*at..*at + 4)?;
    *at += 4;
    Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
}

fn take<'a>(payload: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let bytes = payload.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(bytes)
}

/// The writes of one record's payload; `None` when it does not parse (a CRC
/// that matched damaged bytes: treated as the torn end).
fn decode_batch(payload: &[u8]) -> Option<Batch> {
    let mut at = 0;
    let mut writes = Batch::new();
    while at < payload.len() {
        let op = *payload.get(at)?;
        at += 1;
        let key_len = take_u32(payload, &mut at)?;
        let key = take(payload, &mut at, key_len)?.to_vec();
        let value = match op {
            1 => {
                let len = take_u32(payload, &mut at)?;
                Some(take(payload, &mut at, len)?.to_vec())
            }
            0 => None,
            _ => return None,
        };
        writes.insert(key, value);
    }
    Some(writes)
}

/// Makes the names in `dir` durable (a file created, renamed or removed).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// The whole record at `at`: its payload and where the next one starts;
/// `None` when it is short, fails its CRC or does not parse. No record is
/// empty: zeroes (a page a power cut never wrote) would pass as one, their
/// CRC being 0.
fn record_at(bytes: &[u8], at: usize) -> Option<(Batch, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if len == 0 {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let end = (at + HEADER).checked_add(len)?;
    let payload = bytes.get(at + HEADER..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((decode_batch(payload)?, end))
}

/// The one value `writes` sets under `key`, if that is all it does.
fn only<'a>(writes: &'a Batch, key: &[u8]) -> Option<&'a [u8]> {
    if writes.len() != 1 {
        return None;
    }
    writes.get(key)?.as_deref()
}

/// The position and file id a sync mark holds, if `writes` is one.
fn mark_of(writes: &Batch) -> Option<(u64, FileId)> {
    let value = only(writes, MARK_KEY)?;
    let (at, id) = value.split_at_checked(8)?;
    Some((u64::from_le_bytes(at.try_into().ok()?), id.try_into().ok()?))
}

/// The file id `writes` holds, if it is a file id record.
fn file_id_of(writes: &Batch) -> Option<FileId> {
    only(writes, FILE_KEY)?.try_into().ok()
}

/// The first whole sync mark of file `id` at or after `from` that holds its
/// own position: proof that the bytes before it were synced.
fn mark_after(bytes: &[u8], from: usize, id: &FileId) -> Option<usize> {
    // A mark's key sits at a fixed distance from the record's start.
    const KEY_AT: usize = HEADER + 1 + 4;
    memchr::memmem::find_iter(bytes.get(from..)?, MARK_KEY)
        .map(|found| from + found)
        .filter_map(|key| key.checked_sub(KEY_AT))
        .filter(|&at| at >= from)
        .find(|&at| {
            record_at(bytes, at).is_some_and(|(writes, end)| {
                end - at == HEADER + MARK_PAYLOAD && mark_of(&writes) == Some((at as u64, *id))
            })
        })
}

/// What [`replay`] found.
#[derive(Debug, PartialEq, Eq)]
enum Replayed {
    /// Every record is whole (`at` = the file's length), or the bytes from
    /// `at` on were never synced (a torn tail to cut off); the file's id,
    /// unless an older version wrote it.
    UpTo { at: usize, id: Option<FileId> },
    /// The record at `at` is damaged, yet a sync mark at `synced` says the
    /// bytes before it were synced.
    Damaged { at: usize, synced: usize },
}

/// Replays the records of `bytes` into `map` (sync marks excepted) up to the
/// first damaged one, and tells what the damage is (see the module
/// documentation).
fn replay(bytes: &[u8], map: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Replayed {
    let mut at = 0;
    let mut id = None;
    match record_at(bytes, 0) {
        Some((writes, end)) => {
            if let Some(found) = file_id_of(&writes) {
                id = Some(found);
                at = end;
            }
        }
        // The id is synced before anything else is written: damage to it
        // with bytes after it is the disk's.
        None if bytes.len() > FILE_ID_RECORD => {
            return Replayed::Damaged {
                at: 0,
                synced: FILE_ID_RECORD,
            };
        }
        None => {}
    }
    while let Some((writes, end)) = record_at(bytes, at) {
        if let Some(mark) = mark_of(&writes) {
            // A mark of another file, or out of place: these bytes are not
            // where this file's writes put them.
            if id.is_none_or(|id| mark != (at as u64, id)) {
                break;
            }
        } else if file_id_of(&writes).is_some() {
            break;
        } else {
            for (key, value) in writes {
                match value {
                    _ if key == MARK_KEY || key == FILE_KEY => None,
                    Some(v) => map.insert(key, v),
                    None => map.remove(&key),
                };
            }
        }
        at = end;
    }
    if at == bytes.len() {
        return Replayed::UpTo { at, id };
    }
    match id.and_then(|id| mark_after(bytes, at + 1, &id)) {
        Some(synced) => Replayed::Damaged { at, synced },
        None => Replayed::UpTo { at, id },
    }
}

impl LogFileKv {
    /// Opens (or creates) the Raft log in `dir` ([`FILE_NAME`]); see
    /// [`open_named`](Self::open_named).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_named(dir, FILE_NAME)
    }

    /// Opens (or creates) the file `name` in `dir`: replays it into memory,
    /// cuts a torn tail off (logged, then synced), removes a rewrite a crash
    /// interrupted, and makes the file's name durable. Fails on I/O.
    pub fn open_named(dir: &Path, name: &'static str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(name);
        let new = dir.join(new_file_name(name));
        match std::fs::remove_file(&new) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&new, e)),
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io(&path, e))?;
        let mut map = BTreeMap::new();
        let (whole, id) = match replay(&bytes, &mut map) {
            Replayed::UpTo { at, id } => (at, id),
            Replayed::Damaged { at, synced } => {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    at: at as u64,
                    synced: synced as u64,
                });
            }
        };
        if whole < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                kept = whole,
                cut = bytes.len() - whole,
                "{name} ends in records never synced (a write a crash tore, or pages a power cut wrote out of order): cutting them off (never synced, so never acknowledged)"
            );
            file.set_len(whole as u64).map_err(|e| io(&path, e))?;
        }
        let live = map.iter().map(|(k, v)| set_size(k, v)).sum();
        let mut log = LogFile {
            dir: dir.to_owned(),
            name,
            file,
            len: whole as u64,
            live,
            dirty: false,
            buffer: Vec::new(),
            id: id.unwrap_or_default(),
            rewriting: None,
            next_rewrite_at: 0,
            dir_unsynced: false,
            lock: None,
            torn: None,
            #[cfg(test)]
            short_append: None,
        };
        let map = RwLock::new(map);
        if id.is_none() {
            // A new file, or one an older version wrote: written anew with
            // an id, synced and renamed into place (the cut above with it).
            log.rewrite(&map)?;
        } else {
            // The cut, if any, and the file's name made durable.
            log.file.sync_all().map_err(|e| io(&path, e))?;
            sync_dir(dir)?;
        }
        Ok(Self {
            map: Arc::new(map),
            file: Arc::new(Mutex::new(log)),
        })
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes in the file now.
    pub fn file_len(&self) -> u64 {
        self.file.lock().unwrap_or_else(PoisonError::into_inner).len
    }

    /// Keeps the data directory's `lock` until this store's last clone is
    /// dropped and its rewrite thread, if one runs, has ended.
    pub fn hold_lock(&self, lock: Arc<File>) {
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lock = Some(lock);
    }

    /// Waits for a background rewrite, if one runs, and puts it in place.
    #[cfg(test)]
    fn finish_rewrite(&self) {
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finish_rewrite(true)
            .unwrap();
    }
}

impl Drop for LogFile {
    /// A background rewrite ends with the store: its thread is waited for
    /// and its copy removed, so that no copy left running can write over the
    /// rewrite of a store opened again on the same directory.
    fn drop(&mut self) {
        if let Some(rewrite) = self.rewriting.take() {
            rewrite
                .cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = rewrite.thread.join();
            let _ = std::fs::remove_file(self.dir.join(new_file_name(self.name)));
        }
    }
}

impl LogFile {
    fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    /// Appends the record in `buffer` (not synced).
    fn append_buffer(&mut self) -> Result<(), StoreError> {
        self.append()?;
        self.dirty = true;
        Ok(())
    }

    /// Appends `buffer` at `len`. An append that fails part way (a full
    /// disk) has moved the file's end: it is cut back to `len`, so that the
    /// next record lands where it is counted and a sync mark names its own
    /// position; without that, opening would take the torn bytes for the
    /// end and cut off every record after them, acknowledged or not. If
    /// the cut fails too, the store writes nothing more (opening again cuts
    /// the torn bytes off, no mark being after them).
    fn append(&mut self) -> Result<(), StoreError> {
        if let Some(torn) = &self.torn {
            return Err(StoreError::Engine(torn.clone()));
        }
        let Err(error) = self.write_buffer() else {
            self.len += self.buffer.len() as u64;
            return Ok(());
        };
        let path = self.path();
        if let Err(cut) = self.cut_back() {
            let torn = format!(
                "{}: an append failed part way ({error}) and the file could not be cut back to its last whole record at byte {} ({cut}); nothing more is written to it: restart the server, which cuts the torn bytes off",
                path.display(),
                self.len
            );
            tracing::error!("{torn}");
            self.torn = Some(torn);
        }
        Err(io(&path, error))
    }

    fn write_buffer(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some((bytes, _)) = self.short_append {
            self.file
                .write_all(&self.buffer[..bytes.min(self.buffer.len())])?;
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        self.file.write_all(&self.buffer)
    }

    fn cut_back(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some((_, cut_fails)) = self.short_append.take()
            && cut_fails
        {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        self.file.set_len(self.len)
    }

    /// Writes a new file id and `map` into a new file, synced, and puts it
    /// in place of the old one, here and now (a file opened without an id).
    fn rewrite(&mut self, map: &RwLock<BTreeMap<Vec<u8>, Vec<u8>>>) -> Result<(), StoreError> {
        let new = self.dir.join(new_file_name(self.name));
        let id = new_file_id()?;
        let file = copy_live(&new, &id, map, &std::sync::atomic::AtomicBool::new(false))?;
        let len = file.metadata().map_err(|e| io(&new, e))?.len();
        std::fs::rename(&new, self.path()).map_err(|e| io(&new, e))?;
        let before = self.adopt(file, id, len)?;
        tracing::debug!(
            before,
            after = len,
            file = self.name,
            "wrote the file anew with an id"
        );
        self.append_mark()
    }

    /// Writes on `file` (of id `id`, `len` bytes, synced), just renamed over
    /// the old one, from now on, once its name is durable; returns the old
    /// file's length. A failed directory sync is the store's, and keeps every
    /// flush failing until one succeeds; the flush that succeeds then also
    /// writes the sync mark the new file did not get.
    fn adopt(&mut self, file: File, id: FileId, len: u64) -> Result<u64, StoreError> {
        let before = std::mem::replace(&mut self.len, len);
        self.file = file;
        self.id = id;
        self.next_rewrite_at = 0;
        self.dir_unsynced = true;
        // Dirty until the directory is synced and the mark written.
        self.dirty = true;
        sync_dir(&self.dir)?;
        self.dir_unsynced = false;
        self.dirty = false;
        Ok(before)
    }

    /// No rewrite starts again before the file has doubled (one failed or
    /// was given up).
    fn postpone_rewrite(&mut self) {
        self.next_rewrite_at = self.len.saturating_mul(2);
    }

    /// Starts rewriting the file without its dead records on a thread of
    /// its own (see [`Rewrite`]). One that cannot start is logged and tried
    /// again once the file has doubled: the write that asked is done.
    fn start_rewrite(&mut self, map: &Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>) {
        let new = self.dir.join(new_file_name(self.name));
        let map = map.clone();
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancel.clone();
        let started = new_file_id().and_then(|id| {
            std::thread::Builder::new()
                .name(format!("rewrite {}", self.name))
                .spawn(move || copy_live(&new, &id, &map, &stop))
                .map(|thread| (id, thread))
                .map_err(|e| StoreError::Engine(format!("cannot start a rewrite: {e}")))
        });
        match started {
            Ok((id, thread)) => {
                self.rewriting = Some(Rewrite {
                    thread,
                    id,
                    tail: Vec::new(),
                    started: std::time::Instant::now(),
                    cancel,
                });
            }
            Err(error) => {
                tracing::warn!(%error, file = self.name, "could not start rewriting the file without its dead records; it goes on as it is");
                self.postpone_rewrite();
            }
        }
    }

    /// Keeps `record`, just written, for the rewrite running, if one is;
    /// gives the rewrite up when what it keeps outgrows the live data (writes
    /// faster than it copies): the next starts once the file has doubled.
    fn keep_for_rewrite(&mut self, record: &[u8]) {
        let Some(rewrite) = &mut self.rewriting else {
            return;
        };
        // Given up already: only waiting to be collected.
        if rewrite.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        rewrite.tail.extend_from_slice(record);
        if rewrite.tail.len() as u64 > self.live.max(REWRITE_MIN_BYTES) {
            rewrite
                .cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
            rewrite.tail = Vec::new();
            tracing::warn!(
                file = self.name,
                "gave up rewriting the file: it was written faster than copied"
            );
            self.postpone_rewrite();
        }
    }

    /// Puts a background rewrite's file in place once its copy is done
    /// (`wait`: waits for it): the records written meanwhile appended, the
    /// whole synced, renamed over the old file, the directory synced. A copy
    /// that failed is dropped and logged, and tried again only once the file
    /// has grown by as much again: the old file is whole.
    fn finish_rewrite(&mut self, wait: bool) -> Result<(), StoreError> {
        if !self
            .rewriting
            .as_ref()
            .is_some_and(|r| wait || r.thread.is_finished())
        {
            return Ok(());
        }
        let Some(rewrite) = self.rewriting.take() else {
            return Ok(());
        };
        let new = self.dir.join(new_file_name(self.name));
        let copied = rewrite
            .thread
            .join()
            .unwrap_or_else(|_| Err(StoreError::Engine("the rewrite's thread panicked".into())));
        let cancelled = rewrite.cancel.load(std::sync::atomic::Ordering::Relaxed);
        let placed = copied.and_then(|mut file| {
            if cancelled {
                return Err(StoreError::Engine("given up".into()));
            }
            file.write_all(&rewrite.tail).map_err(|e| io(&new, e))?;
            file.sync_data().map_err(|e| io(&new, e))?;
            let len = file.metadata().map_err(|e| io(&new, e))?.len();
            std::fs::rename(&new, self.path()).map_err(|e| io(&new, e))?;
            Ok((file, len))
        });
        let (file, len) = match placed {
            Ok(placed) => placed,
            Err(error) => {
                if !cancelled {
                    tracing::warn!(%error, file = self.name, "could not rewrite the file without its dead records; it goes on as it is");
                    self.postpone_rewrite();
                }
                let _ = std::fs::remove_file(&new);
                return Ok(());
            }
        };
        let before = self.adopt(file, rewrite.id, len)?;
        let took_ms = rewrite.started.elapsed().as_millis() as u64;
        tracing::debug!(
            before,
            after = len,
            file = self.name,
            took_ms,
            "rewrote the file without its dead records"
        );
        self.append_mark()
    }

    /// Appends the sync mark of everything written so far, which was just
    /// synced; the mark itself is not (see the module documentation).
    fn append_mark(&mut self) -> Result<(), StoreError> {
        if self.len == 0 {
            return Ok(());
        }
        self.buffer.clear();
        append_mark(&mut self.buffer, self.len, &self.id);
        self.append()
    }
}

/// A background rewrite's copy (see [`Rewrite`]): a new file at `new`
/// holding the file id `id`, then every pair of `map`, a page per record
/// and per hold of the read lock, synced (finishing then syncs only what
/// was written meanwhile). Stops with an error once `cancel` is set.
fn copy_live(
    new: &Path,
    id: &FileId,
    map: &RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(new)
        .map_err(|e| io(new, e))?;
    file.set_len(0).map_err(|e| io(new, e))?;
    let mut buffer = Vec::new();
    append_file_id(&mut buffer, id);
    let mut start = Vec::new();
    loop {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Engine("the rewrite was given up".into()));
        }
        let (mut copied, mut bytes, mut last) = (0, 0, false);
        {
            let map = map.read().unwrap_or_else(PoisonError::into_inner);
            let mut range = map.range(start.clone()..);
            let mut page = std::iter::from_fn(|| {
                if copied == REWRITE_PAGE || bytes >= REWRITE_PAGE_BYTES {
                    return None;
                }
                let Some((k, v)) = range.next() else {
                    last = true;
                    return None;
                };
                copied += 1;
                bytes += k.len() + v.len();
                start.clone_from(k);
                Some((k.as_slice(), Some(v.as_slice())))
            })
            .peekable();
            if page.peek().is_some() {
                append_record(&mut buffer, &mut page);
            }
        }
        file.write_all(&buffer).map_err(|e| io(new, e))?;
        buffer.clear();
        if last {
            file.sync_data().map_err(|e| io(new, e))?;
            return Ok(file);
        }
        // The least key after the last one copied.
        start.push(0);
    }
}

/// Pairs handed out a page at a time, each page copied under the lock: a
/// reader that stops early (raft-rs' size budget) copies a page, not the
/// whole range.
struct Pages<'a> {
    kv: &'a LogFileKv,
    /// Where the next page starts; `None` once the range is exhausted.
    next: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    page: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
}

/// Pairs copied per lock.
const PAGE: usize = 64;

impl Iterator for Pages<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() {
            let start = self.next.take()?;
            if self.end.as_ref().is_some_and(|end| *end <= start) {
                return None;
            }
            let map = self.kv.map();
            let range = match &self.end {
                Some(end) => map.range(start..end.clone()),
                None => map.range(start..),
            };
            self.page = range
                .take(PAGE)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if self.page.len() == PAGE
                && let Some((last, _)) = self.page.back()
            {
                // The least key after `last`.
                let mut after = last.clone();
                after.push(0);
                self.next = Some(after);
            }
        }
        self.page.pop_front().map(Ok)
    }
}

impl KvEngine for LogFileKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
        Box::new(Pages {
            kv: self,
            next: Some(start.to_vec()),
            end: end.map(<[u8]>::to_vec),
            page: std::collections::VecDeque::new(),
        })
    }

    fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let map = self.map();
        let last = match crate::kv::prefix_end(prefix) {
            Some(end) => map.range(prefix.to_vec()..end).next_back(),
            None => map.range(prefix.to_vec()..).next_back(),
        };
        Ok(last.map(|(k, _)| k.clone()))
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let file = &mut *file;
        let mut buffer = std::mem::take(&mut file.buffer);
        buffer.clear();
        append_record(
            &mut buffer,
            &mut batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        );
        file.buffer = buffer;
        // On the file first: a failed append leaves memory as the file is.
        file.append_buffer()?;
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        for (key, value) in batch {
            let old = match value {
                Some(v) => {
                    file.live += set_size(&key, &v);
                    map.insert(key.clone(), v)
                }
                None => map.remove(&key),
            };
            if let Some(old) = old {
                file.live = file.live.saturating_sub(set_size(&key, &old));
            }
        }
        drop(map);
        let record = std::mem::take(&mut file.buffer);
        file.keep_for_rewrite(&record);
        file.buffer = record;
        // A batch as large as a snapshot leaves no copy of itself behind.
        if file.buffer.capacity() > KEPT_BUFFER {
            file.buffer = Vec::new();
        }
        // The batch is written whatever happens here: a rewrite put in place
        // whose directory sync failed leaves every flush failing until the
        // sync succeeds, which is where the store learns of it.
        if let Err(error) = file.finish_rewrite(false) {
            tracing::warn!(%error, file = file.name, "the rewritten file is in place but was not finished (its directory's sync, or its first sync mark); the next flush tries again, or fails saying why");
        }
        if file.rewriting.is_none()
            && file.len >= REWRITE_MIN_BYTES.max(file.next_rewrite_at)
            && file.len >= file.live.saturating_mul(REWRITE_RATIO)
        {
            file.start_rewrite(&self.map);
        }
        Ok(())
    }

    /// One `fdatasync` of the file, when anything was written since the last,
    /// then its sync mark appended.
    fn flush(&self) -> Result<(), StoreError> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(torn) = &file.torn {
            return Err(StoreError::Engine(torn.clone()));
        }
        file.finish_rewrite(false)?;
        if file.dir_unsynced {
            sync_dir(&file.dir)?;
            file.dir_unsynced = false;
        }
        if !file.dirty {
            return Ok(());
        }
        file.file.sync_data().map_err(|e| io(&file.path(), e))?;
        file.dirty = false;
        file.append_mark()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Kv;

    fn batch(writes: &[(&str, Option<&str>)]) -> Batch {
        writes
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn batches_come_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::new(LogFileKv::open(dir.path()).unwrap());
        kv.write(batch(&[("a", Some("1")), ("b", Some("2"))]))
            .unwrap();
        kv.write(batch(&[("a", None), ("c", Some("3"))])).unwrap();
        kv.flush().unwrap();
        drop(kv);
        let kv = Kv::new(LogFileKv::open(dir.path()).unwrap());
        assert_eq!(kv.get(b"a").unwrap(), None);
        assert_eq!(kv.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get(b"c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(kv.last_key(b"").unwrap(), Some(b"c".to_vec()));
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_batches_before_it_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1")), ("b", Some("2"))]))
            .unwrap();
        kv.flush().unwrap();
        let whole = kv.file_len();
        // Written, never synced: the process died before its Ready's flush.
        kv.write(batch(&[("a", Some("changed")), ("c", Some("3"))]))
            .unwrap();
        drop(kv);
        // Every cut inside the second record, and one flipped byte in it.
        let full = std::fs::read(&path).unwrap();
        let mut damaged: Vec<Vec<u8>> = (whole as usize + 1..full.len())
            .map(|cut| full[..cut].to_vec())
            .collect();
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        damaged.push(flipped);
        for bytes in damaged {
            std::fs::write(&path, &bytes).unwrap();
            let kv = LogFileKv::open(dir.path()).unwrap();
            assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(kv.get(b"c").unwrap(), None);
            assert_eq!(kv.file_len(), whole);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
            // Appends after the cut are read back.
            kv.write(batch(&[("d", Some("4"))])).unwrap();
            kv.flush().unwrap();
            drop(kv);
            let kv = LogFileKv::open(dir.path()).unwrap();
            assert_eq!(kv.get(b"d").unwrap(), Some(b"4".to_vec()));
        }
    }

    /// Three batches, each synced; returns where each record starts.
    fn three_synced_batches(kv: &LogFileKv) -> Vec<u64> {
        let mut starts = Vec::new();
        for (key, value) in [("a", "1"), ("b", "Đắk Lắk"), ("c", "3")] {
            starts.push(kv.file_len());
            kv.write(batch(&[(key, Some(value))])).unwrap();
            kv.flush().unwrap();
        }
        starts
    }

    #[test]
    fn a_synced_record_damaged_on_disk_refuses_to_open_naming_its_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let kv = LogFileKv::open(dir.path()).unwrap();
        let starts = three_synced_batches(&kv);
        drop(kv);
        let full = std::fs::read(&path).unwrap();
        let second = starts[1] as usize;
        // A flipped byte in its payload, its length or its CRC: the disk
        // changed bytes a sync had made durable, with more synced after.
        for flip in [second + HEADER + 6, second + 1, second + 5] {
            let mut bytes = full.clone();
            bytes[flip] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            match LogFileKv::open(dir.path()) {
                Err(StoreError::Corrupt { at, synced, .. }) => {
                    assert_eq!(at, starts[1], "byte {flip} flipped");
                    assert!(synced > at);
                }
                other => panic!("byte {flip} flipped, opened anyway: {other:?}"),
            }
            // Refused, not repaired: the file is left as found.
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
        // The message names the file and the byte.
        let mut bytes = full.clone();
        bytes[second + HEADER + 6] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let message = LogFileKv::open(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains(&format!("the record at byte {second} is damaged"))
                && message.contains(FILE_NAME),
            "{message}"
        );
        // Put back whole, every batch is there.
        std::fs::write(&path, &full).unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"b").unwrap(), Some("Đắk Lắk".as_bytes().to_vec()));
        assert_eq!(kv.get(b"c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(kv.get(MARK_KEY).unwrap(), None, "marks never reach the map");
    }

    #[test]
    fn unsynced_pages_a_power_cut_wrote_out_of_order_are_cut_off_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        let synced = kv.file_len() as usize;
        // Two batches written and never synced; the cut lost the first one's
        // bytes (zeroes: its start, or all of it) but wrote the second one's.
        kv.write(batch(&[("b", Some("2"))])).unwrap();
        let second = kv.file_len() as usize;
        kv.write(batch(&[("c", Some("3"))])).unwrap();
        drop(kv);
        let full = std::fs::read(&path).unwrap();
        for lost in [synced..synced + HEADER + 3, synced..second] {
            let mut bytes = full.clone();
            bytes[lost.clone()].fill(0);
            std::fs::write(&path, &bytes).unwrap();
            let kv = LogFileKv::open(dir.path()).unwrap();
            assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(kv.get(b"b").unwrap(), None, "{lost:?} lost");
            assert_eq!(
                kv.get(b"c").unwrap(),
                None,
                "{lost:?} lost: nothing after the damage is kept"
            );
            assert_eq!(kv.file_len(), synced as u64);
        }
    }

    /// The id the file in `dir` begins with.
    fn file_id(dir: &Path) -> FileId {
        let bytes = std::fs::read(dir.join(FILE_NAME)).unwrap();
        let (writes, _) = record_at(&bytes, 0).expect("a whole first record");
        file_id_of(&writes).expect("a file id first")
    }

    #[test]
    fn a_file_an_older_server_wrote_opens_and_is_written_anew_with_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut old = Vec::new();
        append_record(&mut old, &mut std::iter::once((&b"a"[..], Some(&b"1"[..]))));
        append_record(&mut old, &mut std::iter::once((&b"b"[..], Some(&b"2"[..]))));
        std::fs::write(&path, &old).unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get(FILE_KEY).unwrap(), None, "ids never reach the map");
        drop(kv);
        let id = file_id(dir.path());
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(file_id(dir.path()), id, "an id is kept until a rewrite");
    }

    #[test]
    fn a_mark_out_of_place_or_of_another_file_is_damage_not_proof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        let whole = kv.file_len();
        drop(kv);
        let id = file_id(dir.path());
        let mine = std::fs::read(&path).unwrap();
        // A whole mark of this file at another position (copied bytes), and
        // one at its own position but of another file: neither is a sync
        // this file saw, and nothing after it is believed.
        for (at, of) in [(3, id), (whole, [7; 16])] {
            let mut bytes = mine.clone();
            append_mark(&mut bytes, at, &of);
            append_record(
                &mut bytes,
                &mut std::iter::once((&b"c"[..], Some(&b"3"[..]))),
            );
            std::fs::write(&path, &bytes).unwrap();
            let kv = LogFileKv::open(dir.path()).unwrap();
            assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(kv.get(b"c").unwrap(), None, "after a mark at {at}");
            assert_eq!(kv.file_len(), whole);
        }
    }

    #[test]
    fn a_mark_forged_inside_a_written_value_does_not_make_a_torn_tail_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        let synced = kv.file_len();
        // A client's value that holds a whole mark at its own position in
        // the file: one write of key "x" whose value is the forged record.
        let key = b"x";
        let value_at = synced as usize + HEADER + 1 + 4 + key.len() + 4;
        let mut forged = Vec::new();
        append_mark(&mut forged, value_at as u64, &[0; 16]);
        let mut writes = Batch::new();
        writes.insert(key.to_vec(), Some(forged.clone()));
        kv.write(writes).unwrap();
        drop(kv);
        // Never synced, and torn by a crash: its first byte lost.
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[value_at..value_at + forged.len()], &forged[..]);
        bytes[synced as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let kv = LogFileKv::open(dir.path()).expect("a torn tail is cut, not refused");
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(key).unwrap(), None);
        assert_eq!(kv.file_len(), synced);
    }

    #[test]
    fn a_damaged_file_id_with_records_after_it_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        drop(kv);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        match LogFileKv::open(dir.path()) {
            Err(StoreError::Corrupt { at: 0, .. }) => {}
            other => panic!("opened with a damaged id: {other:?}"),
        }
        // A file a crash tore while it was made (its id alone, torn) is
        // made again.
        std::fs::write(&path, &bytes[..FILE_ID_RECORD - 2]).unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), None);
        drop(kv);
        file_id(dir.path());
    }

    #[test]
    fn writes_made_after_a_background_rewrite_copied_all_land_in_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        let value = "x".repeat(16 << 10);
        // Enough live pairs for several pages of the copy.
        for i in 0..3 * REWRITE_PAGE {
            kv.write(batch(&[(format!("live/{i:05}").as_str(), Some("v0"))]))
                .unwrap();
        }
        // Overwrites until the file is dead enough: a rewrite starts.
        let mut i = 0;
        while kv.file.lock().unwrap().rewriting.is_none() {
            kv.write(batch(&[(
                format!("dead/{}", i % 8).as_str(),
                Some(value.as_str()),
            )]))
            .unwrap();
            i += 1;
        }
        // Written once it has copied every page (so only the records kept
        // meanwhile can carry them): a changed pair, a removed one, a new one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !kv
            .file
            .lock()
            .unwrap()
            .rewriting
            .as_ref()
            .unwrap()
            .thread
            .is_finished()
        {
            assert!(std::time::Instant::now() < deadline, "the copy never ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        kv.write(batch(&[
            ("live/00000", Some("v1")),
            ("live/02047", None),
            ("live/zz", Some("Sở Tư pháp")),
        ]))
        .unwrap();
        kv.finish_rewrite();
        kv.write(batch(&[("after", Some("1"))])).unwrap();
        kv.flush().unwrap();
        let len = kv.file_len();
        assert!(len < REWRITE_MIN_BYTES, "rewritten: {len} bytes");
        drop(kv);
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"live/00000").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(kv.get(b"live/02047").unwrap(), None);
        assert_eq!(kv.get(b"live/00001").unwrap(), Some(b"v0".to_vec()));
        assert_eq!(
            kv.get(b"live/zz").unwrap(),
            Some("Sở Tư pháp".as_bytes().to_vec())
        );
        assert_eq!(kv.get(b"after").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.range(b"live/", Some(b"live0")).count(), 3 * REWRITE_PAGE);
        assert_eq!(kv.range(b"dead/", Some(b"dead0")).count(), 8);
    }

    #[test]
    fn a_background_copy_takes_every_pair_in_pages_bounded_by_bytes_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = BTreeMap::new();
        for i in 0..40u8 {
            map.insert(vec![b'b', i], vec![i; 64 << 10]);
        }
        for i in 0..(2 * REWRITE_PAGE + 3) {
            map.insert(format!("s/{i:05}").into_bytes(), b"v".to_vec());
        }
        let map = RwLock::new(map);
        let id = new_file_id().unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        drop(copy_live(&dir.path().join(FILE_NAME), &id, &map, &stop).unwrap());
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        let mut copied = BTreeMap::new();
        assert!(
            matches!(replay(&bytes, &mut copied), Replayed::UpTo { at, id: Some(read) } if at == bytes.len() && read == id)
        );
        assert_eq!(copied, *map.read().unwrap());
        // The file id, then 2.5 MiB of large values in pages of 1 MiB (16,
        // 16, then 8 with 1,016 small pairs: 1,024), then 1,024 and 11
        // small pairs: five pages.
        let mut records = 0;
        let mut at = 0;
        while let Some((_, next)) = record_at(&bytes, at) {
            records += 1;
            at = next;
        }
        assert_eq!(records, 1 + 5);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(copy_live(&dir.path().join("other"), &id, &map, &stop).is_err());
    }

    #[test]
    fn a_rewrite_outrun_by_writes_is_given_up_and_tried_again_once_the_file_has_doubled() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        let dir = tempfile::tempdir().unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        // A copy that has not finished (a slow disk): it ends only once told
        // to stop, as a real one does.
        let cancel = Arc::new(AtomicBool::new(false));
        let told = cancel.clone();
        let thread = std::thread::spawn(move || {
            while !told.load(Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(StoreError::Engine("the rewrite was given up".into()))
        });
        kv.file.lock().unwrap().rewriting = Some(Rewrite {
            thread,
            id: new_file_id().unwrap(),
            tail: Vec::new(),
            started: std::time::Instant::now(),
            cancel: cancel.clone(),
        });
        // One key overwritten: little live data, and every record kept for
        // the copy, until what is kept outgrows 8 MiB.
        let value = "x".repeat(256 << 10);
        let write = || kv.write(batch(&[("k", Some(value.as_str()))])).unwrap();
        let mut writes = 0;
        while !cancel.load(Relaxed) {
            write();
            writes += 1;
            assert!(writes < 100, "never given up");
        }
        assert_eq!(
            writes, 32,
            "given up past 8 MiB kept (32 records of just over 256 KiB)"
        );
        let (len, next) = {
            let file = kv.file.lock().unwrap();
            (file.len, file.next_rewrite_at)
        };
        assert_eq!(next, 2 * len, "the next once the file has doubled");
        kv.finish_rewrite();
        // None starts again until then...
        while kv.file.lock().unwrap().len + value.len() as u64 + 64 < next {
            write();
            assert!(
                kv.file.lock().unwrap().rewriting.is_none(),
                "started again before the file doubled"
            );
        }
        // ...and one does once it has.
        while kv.file.lock().unwrap().len < next {
            write();
        }
        assert!(kv.file.lock().unwrap().rewriting.is_some());
        kv.finish_rewrite();
        drop(kv);
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"k").unwrap().as_deref(), Some(value.as_bytes()));
    }

    #[test]
    fn a_file_mostly_dead_is_rewritten_with_the_live_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        let value = "x".repeat(64 << 10);
        // The same few keys overwritten: the file grows, the live set does not.
        // Each rewrite is waited for, so that a slow machine's copy is not
        // given up for the writes made meanwhile (that rule has a test of
        // its own, with a copy that finishes only when told to stop).
        for i in 0..400 {
            let key = format!("k{}", i % 4);
            kv.write(batch(&[(key.as_str(), Some(value.as_str()))]))
                .unwrap();
            kv.finish_rewrite();
        }
        kv.write(batch(&[("last", Some("1"))])).unwrap();
        kv.finish_rewrite();
        kv.flush().unwrap();
        let len = kv.file_len();
        assert!(
            len < REWRITE_MIN_BYTES + (1 << 20),
            "the file holds {len} bytes for 256 KiB of live data"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            len
        );
        assert!(!dir.path().join(new_file_name(FILE_NAME)).exists());
        drop(kv);
        let kv = LogFileKv::open(dir.path()).unwrap();
        for i in 0..4 {
            assert_eq!(
                kv.get(format!("k{i}").as_bytes()).unwrap().map(|v| v.len()),
                Some(64 << 10)
            );
        }
        assert_eq!(kv.get(b"last").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn an_append_a_full_disk_tore_is_cut_off_so_the_records_after_it_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        // Half a record reaches the file, then the disk is full.
        kv.file.lock().unwrap().short_append = Some((12, false));
        kv.write(batch(&[("b", Some("Sở Tài chính"))]))
            .expect_err("the append failed");
        assert_eq!(kv.get(b"b").unwrap(), None, "memory is as the file is");
        // Space again: later writes are flushed (acknowledged) and must stay.
        kv.write(batch(&[("c", Some("3"))])).unwrap();
        kv.flush().unwrap();
        kv.write(batch(&[("d", Some("4"))])).unwrap();
        kv.flush().unwrap();
        let len = kv.file_len();
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            len,
            "the file ends where its records are counted"
        );
        drop(kv);
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"b").unwrap(), None);
        assert_eq!(kv.get(b"c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(kv.get(b"d").unwrap(), Some(b"4".to_vec()));
        assert_eq!(kv.file_len(), len, "nothing was cut at the reopen");
    }

    #[test]
    fn a_torn_append_that_cannot_be_cut_off_stops_every_write_and_flush_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        kv.file.lock().unwrap().short_append = Some((12, true));
        kv.write(batch(&[("b", Some("2"))]))
            .expect_err("the append failed");
        for refused in [kv.write(batch(&[("c", Some("3"))])), kv.flush()] {
            let error = refused
                .expect_err("refused after a torn append")
                .to_string();
            assert!(
                error.contains("could not be cut back") && error.contains("restart the server"),
                "{error}"
            );
        }
        assert_eq!(kv.get(b"c").unwrap(), None);
        drop(kv);
        // The torn bytes are the file's end, with no mark after them: cut.
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"b").unwrap(), None);
        kv.write(batch(&[("c", Some("3"))])).unwrap();
        kv.flush().unwrap();
    }

    #[test]
    fn a_store_dropped_during_a_rewrite_waits_for_the_copy_to_end_and_removes_it() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        let dir = tempfile::tempdir().unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        // A copy under way: its file exists, and it takes a while to notice
        // it was told to stop.
        let new = dir.path().join(new_file_name(FILE_NAME));
        std::fs::write(&new, b"half a copy").unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let (told, done) = (cancel.clone(), ended.clone());
        let thread = std::thread::spawn(move || {
            while !told.load(Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            done.store(true, Relaxed);
            Err(StoreError::Engine("the rewrite was given up".into()))
        });
        kv.file.lock().unwrap().rewriting = Some(Rewrite {
            thread,
            id: new_file_id().unwrap(),
            tail: Vec::new(),
            started: std::time::Instant::now(),
            cancel,
        });
        drop(kv);
        assert!(
            ended.load(Relaxed),
            "the drop returned before the copy ended"
        );
        assert!(!new.exists(), "the copy's file was left behind");
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_rewrite_left_by_a_crash_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        kv.write(batch(&[("a", Some("1"))])).unwrap();
        kv.flush().unwrap();
        drop(kv);
        std::fs::write(dir.path().join(new_file_name(FILE_NAME)), b"half a rewrite").unwrap();
        let kv = LogFileKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert!(!dir.path().join(new_file_name(FILE_NAME)).exists());
    }
}

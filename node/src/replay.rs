//! The replay guard: on-behalf-of records already used, kept as long as they
//! could still verify, so that a record seen twice is refused as a replay,
//! also after the node (or hub) restarts.
//!
//! A record verifies for twice the skew allowed ([`MAX_SKEW`]) after it
//! could first arrive, so the guard remembers each record's digest with its
//! arrival time for that long. In memory, records sit in buckets of
//! [`BUCKET_MS`] by arrival: a record is looked up in every bucket still
//! within the horizon, and a bucket past it is dropped whole.
//!
//! Each record is also appended to a journal in the node's data directory
//! (`<data_dir>/obo-seen/current`: 32 bytes of digest and 8 of arrival time,
//! one `write` per record, before the call is served), which the node reads
//! back when it starts. So a record captured and replayed after a restart
//! (a clean one or a crash of the process) is still refused. The journal is
//! not synced per record: a power cut can lose the last records written,
//! but a machine that lost power is back long after the horizon (about four
//! and a half minutes). Its size is bounded: every horizon the current file
//! becomes `previous` and the one before is deleted (all it held is past the
//! horizon), and at start the journal is rewritten with only what is still
//! within it (entries whose time is not within the horizon before now, or
//! at most the skew after it, are garbage and dropped; past
//! [`MAX_REMEMBERED`], the newest are kept). A write that fails part-way (a
//! full disk) is cut back to the last whole entry, so later entries stay
//! aligned.

use crate::obo::{MAX_SKEW, OboError};
use lgsp_proto::SignedOnBehalfOf;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// How much arrival time one bucket covers.
pub(crate) const BUCKET_MS: i64 = 10_000;

/// How long a record is remembered after it arrived: it verifies for twice
/// the skew after it could first arrive, plus a bucket either side.
const HORIZON_MS: i64 = 2 * MAX_SKEW.as_millis() as i64 + 2 * BUCKET_MS;

/// The most records remembered at once (about 7,700 a second over the
/// horizon, some 80 MB of memory and journal); past it, records are refused
/// rather than forgotten early.
pub const MAX_REMEMBERED: usize = 2_000_000;

/// The bytes of one journal entry: the digest, then the arrival time (Unix
/// milliseconds, little-endian).
const ENTRY: usize = 40;

const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";

/// Records already used: a record seen twice is a replay.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Records seen, by the start of their arrival bucket: ordered by time
    /// whatever order they came in (a clock set back, a journal read back).
    buckets: BTreeMap<i64, HashSet<[u8; 32]>>,
    /// How many records the buckets hold.
    count: usize,
    /// Where records are written, once [`ReplayGuard::open_journal`] ran.
    journal: Option<Journal>,
}

#[derive(Debug)]
struct Journal {
    dir: PathBuf,
    file: File,
    /// When the current file was started (Unix ms).
    started_ms: i64,
    /// The bytes of whole entries in the current file: where a write that
    /// failed part-way is cut back to.
    len: u64,
    /// A write failed part-way and cutting it back failed too.
    torn: bool,
    /// Makes the next write stop part-way and fail, as a full disk does.
    #[cfg(test)]
    fail_next_write: bool,
}

impl State {
    fn forget_before(&mut self, now_ms: i64) {
        while let Some(entry) = self.buckets.first_entry() {
            if now_ms.saturating_sub(*entry.key()) <= HORIZON_MS {
                break;
            }
            self.count -= entry.remove().len();
        }
    }

    fn remember(&mut self, key: [u8; 32], at_ms: i64) {
        let start = at_ms - at_ms.rem_euclid(BUCKET_MS);
        if self.buckets.entry(start).or_default().insert(key) {
            self.count += 1;
        }
    }
}

impl Journal {
    /// Appends one record, starting a new file first when the current one
    /// is older than the horizon.
    ///
    /// A write that fails part-way (a full disk) is cut back to the last
    /// whole entry before the error is returned, so the entries written
    /// after it stay aligned; when even that fails, the next append cuts
    /// it back first (and fails while it cannot).
    fn append(&mut self, key: &[u8; 32], now_ms: i64) -> std::io::Result<()> {
        if now_ms.saturating_sub(self.started_ms) > HORIZON_MS {
            std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS))?;
            self.file = append_to(&self.dir.join(CURRENT))?;
            self.started_ms = now_ms;
            self.len = 0;
            self.torn = false;
        }
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        let mut entry = [0u8; ENTRY];
        entry[..32].copy_from_slice(key);
        entry[32..].copy_from_slice(&now_ms.to_le_bytes());
        match self.write(&entry) {
            Ok(()) => {
                self.len += ENTRY as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = self.file.set_len(self.len).is_err();
                Err(e)
            }
        }
    }

    fn write(&mut self, entry: &[u8; ENTRY]) -> std::io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_write) {
            self.file.write_all(&entry[..13])?;
            return Err(std::io::Error::other("no space left on device"));
        }
        self.file.write_all(entry)
    }
}

fn append_to(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The entries of journal file `path` (none when it does not exist); a
/// torn last entry (the process died within its write) is left out.
fn read_entries(path: &Path) -> std::io::Result<Vec<([u8; 32], i64)>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .chunks_exact(ENTRY)
        .map(|c| {
            let mut key = [0u8; 32];
            key.copy_from_slice(&c[..32]);
            let mut at = [0u8; 8];
            at.copy_from_slice(&c[32..]);
            (key, i64::from_le_bytes(at))
        })
        .collect())
}

/// Of journal `entries`, those that arrived within the horizon before
/// `now_ms` (or at most the skew allowed after it: a clock set back a
/// little); other times are garbage (a torn or corrupt file, a clock far
/// off). Oldest first; past `max`, the newest are kept.
fn within_horizon(
    mut entries: Vec<([u8; 32], i64)>,
    now_ms: i64,
    max: usize,
) -> Vec<([u8; 32], i64)> {
    let skew = MAX_SKEW.as_millis() as i64;
    let earliest = now_ms.saturating_sub(HORIZON_MS);
    let latest = now_ms.saturating_add(skew);
    entries.retain(|(_, at)| (earliest..=latest).contains(at));
    entries.sort_by_key(|(_, at)| *at);
    let surplus = entries.len().saturating_sub(max);
    entries.drain(..surplus);
    entries
}

impl ReplayGuard {
    /// Reads back the records of the journal in `dir` still within the
    /// horizon at `now_ms`, rewrites the journal with only those, and from
    /// now on writes every record seen there. Returns how many it read
    /// back. Fails when the directory or its files cannot be read or
    /// written.
    pub fn open_journal(&self, dir: &Path, now_ms: i64) -> std::io::Result<usize> {
        std::fs::create_dir_all(dir)?;
        let mut entries = read_entries(&dir.join(PREVIOUS))?;
        entries.extend(read_entries(&dir.join(CURRENT))?);
        let entries = within_horizon(entries, now_ms, MAX_REMEMBERED);
        let fresh = dir.join("current.new");
        {
            let mut file = File::create(&fresh)?;
            let mut bytes = Vec::with_capacity(entries.len() * ENTRY);
            for (key, at) in &entries {
                bytes.extend_from_slice(key);
                bytes.extend_from_slice(&at.to_le_bytes());
            }
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&fresh, dir.join(CURRENT))?;
        match std::fs::remove_file(dir.join(PREVIOUS)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = append_to(&dir.join(CURRENT))?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, at) in &entries {
            state.remember(*key, *at);
        }
        // The rewritten file holds records up to a horizon old: it becomes
        // `previous` no later than a horizon from now.
        let started_ms = entries.first().map_or(now_ms, |(_, at)| *at);
        state.journal = Some(Journal {
            dir: dir.to_owned(),
            file,
            started_ms,
            len: (entries.len() * ENTRY) as u64,
            torn: false,
            #[cfg(test)]
            fail_next_write: false,
        });
        Ok(entries.len())
    }

    /// Remembers `signed` (by the record it signs) at `now_ms`; refuses it
    /// if it was seen before, or when the guard cannot remember it (full,
    /// or its journal cannot be written). A record older than the skew
    /// allowed is refused by verification anyway, so what arrived longer
    /// ago than twice that is forgotten.
    pub fn check(
        &self,
        signed: &SignedOnBehalfOf,
        request_id: &str,
        now_ms: i64,
    ) -> Result<(), OboError> {
        // Keyed by what was signed, not by the signature: an ECDSA
        // signature can be rewritten into another valid one.
        let key: [u8; 32] = Sha256::digest(&signed.record).into();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.forget_before(now_ms);
        if state.buckets.iter().any(|(_, seen)| seen.contains(&key)) {
            return Err(OboError::Replayed(request_id.to_owned()));
        }
        if state.count >= MAX_REMEMBERED {
            return Err(OboError::GuardFull(MAX_REMEMBERED));
        }
        if let Some(journal) = &mut state.journal {
            journal
                .append(&key, now_ms)
                .map_err(|e| OboError::Unrecorded(format!("{}: {e}", journal.dir.display())))?;
        }
        state.remember(key, now_ms);
        Ok(())
    }

    /// How many records the guard remembers.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count
    }

    /// Whether the guard remembers no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> SignedOnBehalfOf {
        SignedOnBehalfOf {
            record: vec![n; 16],
            signature: vec![0; 64],
            ..Default::default()
        }
    }

    #[test]
    fn the_replay_guard_remembers_a_record_as_long_as_it_could_verify() {
        let guard = ReplayGuard::default();
        let t = 1_000_000_000;
        guard.check(&record(1), "r-1", t).unwrap();
        let skew = MAX_SKEW.as_millis() as i64;
        // Still within twice the skew allowed: a replay.
        assert!(guard.check(&record(1), "r-1", t + 2 * skew).is_err());
        // Long after: forgotten (verify refuses so old a record by its time).
        assert!(
            guard
                .check(&record(1), "r-1", t + 2 * skew + 3 * BUCKET_MS)
                .is_ok()
        );
        let state = guard.state.lock().unwrap();
        assert!(state.buckets.len() <= 2, "old buckets are dropped whole");
        assert_eq!(state.count, 1);
    }

    #[test]
    fn a_record_seen_before_a_restart_is_a_replay_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = 1_000_000_000;
        let before = ReplayGuard::default();
        assert_eq!(before.open_journal(dir.path(), t).unwrap(), 0);
        before.check(&record(1), "r-1", t).unwrap();
        before.check(&record(2), "r-2", t + 1_000).unwrap();
        drop(before);
        // The process starts again a minute later.
        let after = ReplayGuard::default();
        assert_eq!(after.open_journal(dir.path(), t + 60_000).unwrap(), 2);
        assert_eq!(
            after.check(&record(1), "r-1", t + 61_000).unwrap_err(),
            OboError::Replayed("r-1".into())
        );
        after.check(&record(3), "r-3", t + 61_000).unwrap();
        // Started long after: everything read back is past the horizon.
        let much_later = ReplayGuard::default();
        assert_eq!(
            much_later
                .open_journal(dir.path(), t + 61_000 + HORIZON_MS + 1)
                .unwrap(),
            0
        );
        much_later
            .check(&record(1), "r-1", t + 62_000 + HORIZON_MS)
            .unwrap();
    }

    #[test]
    fn the_journal_stays_within_two_horizons_and_a_torn_entry_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let guard = ReplayGuard::default();
        let t = 1_000_000_000;
        guard.open_journal(dir.path(), t).unwrap();
        for i in 0..7u8 {
            guard
                .check(&record(i), "r", t + i64::from(i) * HORIZON_MS / 2)
                .unwrap();
        }
        let size =
            |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len() as usize);
        // Rotated: the oldest records' file is gone.
        assert!(
            size(CURRENT) + size(PREVIOUS) < 7 * ENTRY,
            "{} + {}",
            size(CURRENT),
            size(PREVIOUS)
        );
        // A write cut short by a crash: the whole entries still read back.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(CURRENT))
            .unwrap()
            .write_all(&[7; 13])
            .unwrap();
        let again = ReplayGuard::default();
        let read = again.open_journal(dir.path(), t + 3 * HORIZON_MS).unwrap();
        assert!(read >= 1, "{read}");
        assert!(again.check(&record(6), "r", t + 3 * HORIZON_MS).is_err());
        assert_eq!(size(CURRENT) % ENTRY, 0);
    }

    #[test]
    fn a_torn_append_in_the_middle_leaves_every_later_entry_readable() {
        let dir = tempfile::tempdir().unwrap();
        let t = 1_000_000_000;
        let guard = ReplayGuard::default();
        guard.open_journal(dir.path(), t).unwrap();
        guard.check(&record(1), "r-1", t).unwrap();
        guard.check(&record(2), "r-2", t + 1).unwrap();
        // The disk fills up within the next write: part of it is written.
        guard
            .state
            .lock()
            .unwrap()
            .journal
            .as_mut()
            .unwrap()
            .fail_next_write = true;
        assert!(matches!(
            guard.check(&record(3), "r-3", t + 2),
            Err(OboError::Unrecorded(_))
        ));
        // Space again: more records.
        guard.check(&record(4), "r-4", t + 3).unwrap();
        guard.check(&record(5), "r-5", t + 4).unwrap();
        drop(guard);
        let after = ReplayGuard::default();
        assert_eq!(after.open_journal(dir.path(), t + 10).unwrap(), 4);
        for (n, id) in [(1, "r-1"), (2, "r-2"), (4, "r-4"), (5, "r-5")] {
            assert_eq!(
                after.check(&record(n), id, t + 11).unwrap_err(),
                OboError::Replayed(id.into())
            );
        }
        // The record refused was never remembered.
        after.check(&record(3), "r-3", t + 11).unwrap();
    }

    #[test]
    fn garbage_times_in_the_journal_are_dropped_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_000_000_000;
        let skew = MAX_SKEW.as_millis() as i64;
        let mut bytes = Vec::new();
        for (n, at) in [
            (1u8, i64::MIN),
            (2, i64::MAX),
            (3, now + skew + 1),
            (4, now - HORIZON_MS - 1),
            (5, now - 1_000),
            (6, now + 1_000),
        ] {
            bytes.extend_from_slice(&Sha256::digest(&record(n).record));
            bytes.extend_from_slice(&at.to_le_bytes());
        }
        std::fs::write(dir.path().join(CURRENT), &bytes).unwrap();
        let guard = ReplayGuard::default();
        assert_eq!(guard.open_journal(dir.path(), now).unwrap(), 2);
        assert!(guard.check(&record(5), "r-5", now).is_err());
        assert!(guard.check(&record(6), "r-6", now).is_err());
        for n in 1..=4 {
            guard.check(&record(n), "r", now).unwrap();
        }
    }

    #[test]
    fn a_bucket_from_the_future_does_not_stop_older_ones_being_forgotten() {
        let guard = ReplayGuard::default();
        let t = 1_000_000_000;
        // A record stamped far ahead (a clock that jumped back since).
        guard
            .check(&record(9), "r-9", t + 100 * HORIZON_MS)
            .unwrap();
        guard.check(&record(1), "r-1", t).unwrap();
        guard.check(&record(2), "r-2", t + 2 * HORIZON_MS).unwrap();
        let state = guard.state.lock().unwrap();
        assert_eq!(state.count, 2, "the bucket of r-1 is past the horizon");
    }

    #[test]
    fn past_the_most_remembered_the_newest_records_are_kept() {
        let entries: Vec<([u8; 32], i64)> = (0..10u8).map(|n| ([n; 32], i64::from(n))).collect();
        let kept = within_horizon(entries, 10, 4);
        assert_eq!(
            kept.iter().map(|(_, at)| *at).collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
    }

    #[test]
    fn a_full_guard_refuses_rather_than_forgets() {
        let guard = ReplayGuard::default();
        guard.state.lock().unwrap().count = MAX_REMEMBERED;
        assert!(matches!(
            guard.check(&record(1), "r", 1_000_000_000),
            Err(OboError::GuardFull(_))
        ));
    }
}

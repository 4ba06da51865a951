//! Which data directory a registry server runs from, and what it was first
//! started with: state local to one server, never replicated.
//!
//! Every data directory gets a random **incarnation** id when it is first
//! opened. Servers send theirs with every Raft batch. The leader records the
//! incarnation each member is first heard under in the replicated member
//! records (so every server, and every snapshot, knows it), and every
//! server drops batches from a member under another one. A server whose
//! data directory was wiped comes back with a new incarnation, so it can
//! neither vote again in a term it voted in nor count towards a quorum for
//! entries it no longer holds, until it is removed (and may be added again).
//!
//! | key | value |
//! |---|---|
//! | `l:incarnation` | this data directory's incarnation (u64 BE) |
//! | `l:founders` | the voters this server founded the cluster with (u64 BE each) |
//! | `l:first-peers` | the server ids it was first started with, itself included |
//! | `l:log-bound` | present once `raft.log` records this incarnation (see `storage.rs`) |
//!
//! The `l:` prefix is neither raft state nor catalog: snapshots neither
//! carry nor replace it.

use crate::error::StoreError;
use crate::kv::{Kv, Staged, read_u64};
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};

const OWN: &[u8] = b"l:incarnation";
const FOUNDERS: &[u8] = b"l:founders";
const FIRST_PEERS: &[u8] = b"l:first-peers";

/// A random non-zero id: std's hasher keys come from the operating
/// system's random source, mixed with the clock and the process id.
pub(crate) fn random_id() -> u64 {
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        let id = hasher.finish();
        if id != 0 {
            return id;
        }
    }
}

/// This data directory's incarnation, if it was ever made.
pub fn stored(db: &Kv) -> Result<Option<u64>, StoreError> {
    read_u64(db, OWN)
}

/// This data directory's incarnation, made (and flushed) on first use.
pub fn own(db: &Kv) -> Result<u64, StoreError> {
    if let Some(id) = read_u64(db, OWN)? {
        return Ok(id);
    }
    let id = random_id();
    let mut batch = Staged::new(db);
    batch.insert(OWN, id.to_be_bytes());
    batch.commit()?;
    db.flush()?;
    Ok(id)
}

fn encode_ids(ids: &BTreeSet<u64>) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_be_bytes()).collect()
}

fn read_ids(db: &Kv, key: &[u8]) -> Result<Option<BTreeSet<u64>>, StoreError> {
    let Some(bytes) = db.get(key)? else {
        return Ok(None);
    };
    if bytes.len() % 8 != 0 {
        return Err(StoreError::Damaged {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: format!("{} bytes, not a list of 8-byte ids", bytes.len()),
        });
    }
    Ok(Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    ))
}

/// The voters this server founded the cluster with; `None` if it joined
/// (or its store predates this record).
pub fn founders(db: &Kv) -> Result<Option<BTreeSet<u64>>, StoreError> {
    read_ids(db, FOUNDERS)
}

/// Stages the voters this server founds the cluster with.
pub fn put_founders(batch: &mut Staged, voters: &BTreeSet<u64>) {
    batch.insert(FOUNDERS, encode_ids(voters));
}

/// The server ids this data directory was first started with (its
/// `--peers` and itself); `None` if its store predates this record.
pub fn first_peers(db: &Kv) -> Result<Option<BTreeSet<u64>>, StoreError> {
    read_ids(db, FIRST_PEERS)
}

/// Stages the server ids this data directory is first started with.
pub fn put_first_peers(batch: &mut Staged, ids: &BTreeSet<u64>) {
    batch.insert(FIRST_PEERS, encode_ids(ids));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_kv::MemKv;

    #[test]
    fn a_data_directory_keeps_its_incarnation_and_a_new_one_gets_another() {
        let db = Kv::new(MemKv::default());
        let first = own(&db).unwrap();
        assert_eq!(own(&db).unwrap(), first);
        let wiped = Kv::new(MemKv::default());
        assert_ne!(own(&wiped).unwrap(), first);
    }

    #[test]
    fn id_sets_round_trip() {
        let db = Kv::new(MemKv::default());
        let mut batch = Staged::new(&db);
        put_founders(&mut batch, &BTreeSet::from([1, 2, 3]));
        batch.commit().unwrap();
        assert_eq!(founders(&db).unwrap(), Some(BTreeSet::from([1, 2, 3])));
        assert_eq!(first_peers(&db).unwrap(), None);
    }
}

//! Idempotency keys: a write retried after an unknown outcome is applied
//! once, and an older attempt never lands after a newer write.
//!
//! A client gives each write a random 16-byte key, the same on every
//! attempt (`ApplyRequest.idempotency_key`). When a keyed command is
//! applied, its outcome (the revision, or the refusal) is stored with the
//! key in the replicated state (Raft thesis §6.3); a later entry under the
//! same key is not applied again but answered with that outcome. Every
//! server decides alike: what is known of a key, and when it is forgotten,
//! depends only on the log (each entry's `at_unix_ms`, never a local clock).
//!
//! Keys are forgotten after [`WINDOW_MS`] (by the time of the entries that
//! follow), and at most [`MAX_KEYS`] are kept (the oldest goes first). An
//! attempt that a server took before the newest time of a forgotten key is
//! refused, never applied: its key may have been applied and forgotten.
//!
//! Membership changes (`AddMember`, `RemoveMember`) use the same keys: the
//! leader looks a key up before proposing a change (see
//! [`lookup_membership`]), and applying the change records the members it
//! left under the key (see [`record_membership`]).
//!
//! | key | value |
//! |---|---|
//! | `i:<key>` | the [`AppliedKey`] outcome |
//! | `j:<seq BE>` | the key, in the order applied (a queue: oldest first) |
//! | `s:idem_head`, `s:idem_tail` | the queue's first and next sequence numbers |
//! | `s:idem_floor` | the newest time of a key forgotten (i64 BE as u64) |

use crate::error::{CatalogError, StoreError};
use crate::kv::{Kv, KvRead, Staged, read_u64};
use lgsp_proto::{AppliedKey, ApplyResponse, CatalogRecord, Command, Member};
use prost::Message as _;
use sha2::{Digest, Sha256};

/// How long a key is remembered, by the time of the entries applied after
/// it: far longer than a client retries (`RegistryClient` gives up after
/// 10 s), so that a retry always finds its key.
pub const WINDOW_MS: i64 = 10 * 60 * 1000;

/// The most keys remembered; past it the oldest is forgotten.
pub const MAX_KEYS: u64 = 100_000;

/// The length of a key.
pub const KEY_LEN: usize = 16;

/// How a refusal of a key used before for another command begins.
pub const KEY_REUSED: &str = "this idempotency key was used for another";

/// At most this many keys forgotten by time per entry applied, so that a
/// write after a long quiet spell does not delete thousands of keys in one
/// Ready. Keys past the window but not yet deleted still answer with their
/// outcome, which is still the truth.
const EXPIRE_STEP: u64 = 16;

const KEY_PREFIX: &[u8] = b"i:";
const QUEUE_PREFIX: &[u8] = b"j:";
const HEAD: &[u8] = b"s:idem_head";
const TAIL: &[u8] = b"s:idem_tail";
const FLOOR: &[u8] = b"s:idem_floor";

fn key_key(key: &[u8]) -> Vec<u8> {
    [KEY_PREFIX, key].concat()
}

fn queue_key(seq: u64) -> Vec<u8> {
    [QUEUE_PREFIX, &seq.to_be_bytes()[..]].concat()
}

/// Refuses a key of the wrong length (empty is no key).
pub fn check_key(key: &[u8]) -> Result<(), CatalogError> {
    if key.is_empty() || key.len() == KEY_LEN {
        Ok(())
    } else {
        Err(CatalogError::InvalidArgument(format!(
            "an idempotency key is {KEY_LEN} random bytes, not {}; send none, or a new random one per write",
            key.len()
        )))
    }
}

/// A new random key for one write: the operating system's random source
/// (through std's hasher keys), mixed with the clock and the process id.
pub fn new_key() -> Vec<u8> {
    let mut key = Vec::with_capacity(KEY_LEN);
    key.extend_from_slice(&crate::incarnation::random_id().to_be_bytes());
    key.extend_from_slice(&crate::incarnation::random_id().to_be_bytes());
    key
}

/// What identifies a command under its key: the actor and the command, so
/// that a key reused for something else is refused, not answered with
/// another write's outcome.
pub fn digest(actor: &str, command: &Command) -> u64 {
    let mut h = Sha256::new();
    h.update(actor.as_bytes());
    h.update([0]);
    h.update(command.encode_to_vec());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// What identifies a membership change under its key: what it does
/// (`add` with the new member's id and addresses, or `remove` with the
/// id), so that a key reused for another change is refused.
pub fn membership_digest(change: &str, member: &Member) -> u64 {
    let mut h = Sha256::new();
    h.update(b"membership:");
    h.update(change.as_bytes());
    h.update([0]);
    h.update(member.encode_to_vec());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

fn read_i64(db: &impl KvRead, key: &[u8]) -> Result<i64, StoreError> {
    Ok(read_u64(db, key)?.unwrap_or(0) as i64)
}

fn read_applied(db: &impl KvRead, key: &[u8]) -> Result<Option<AppliedKey>, StoreError> {
    let db_key = key_key(key);
    db.read(&db_key)?
        .map(|v| {
            AppliedKey::decode(v.as_slice()).map_err(|e| StoreError::Damaged {
                key: String::from_utf8_lossy(&db_key).into_owned(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// What a keyed entry does, decided from the stored keys alone.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// The key is new and the attempt recent enough: apply the command,
    /// then [`record`] its outcome.
    New,
    /// Applied (or refused) before: answer with this, change nothing.
    Repeat(Box<Result<ApplyResponse, CatalogError>>),
}

/// Looks `key` up for an entry taken at `at_ms` carrying a command of
/// `digest` (see [`digest`]).
pub fn lookup(db: &impl KvRead, key: &[u8], at_ms: i64, digest: u64) -> Result<Seen, StoreError> {
    if let Some(applied) = read_applied(db, key)? {
        if applied.command_digest != digest {
            return Ok(Seen::Repeat(Box::new(Err(CatalogError::InvalidArgument(
                format!("{KEY_REUSED} write; use a new random key for each write"),
            )))));
        }
        return Ok(Seen::Repeat(Box::new(outcome_of(&applied))));
    }
    let floor = read_i64(db, FLOOR)?;
    if at_ms < floor {
        return Ok(Seen::Repeat(Box::new(Err(
            CatalogError::FailedPrecondition(format!(
                "this attempt was taken at {at_ms} ms (Unix time), before keys up to {floor} were forgotten: \
             an earlier attempt under its idempotency key may have been applied and can no longer be told; \
             read the record back, then write again with a new key"
            )),
        ))));
    }
    Ok(Seen::New)
}

/// Looks up `key` for a membership change of `digest` (see
/// [`membership_digest`]) taken at `at_ms`: `None` when it is new, or the
/// first result (the members the change left) or refusal.
pub fn lookup_membership(
    db: &impl KvRead,
    key: &[u8],
    at_ms: i64,
    digest: u64,
) -> Result<Option<Result<Vec<Member>, CatalogError>>, StoreError> {
    if let Some(applied) = read_applied(db, key)? {
        if applied.command_digest != digest {
            return Ok(Some(Err(CatalogError::InvalidArgument(format!(
                "{KEY_REUSED} change; use a new random key for each change"
            )))));
        }
        return Ok(Some(outcome_of(&applied).map(|_| applied.members)));
    }
    match lookup(db, key, at_ms, digest)? {
        Seen::New => Ok(None),
        Seen::Repeat(outcome) => Ok(Some((*outcome).map(|_| Vec::new()))),
    }
}

/// The members a membership change recorded under `key` left, if one did.
pub fn recorded_members(db: &impl KvRead, key: &[u8]) -> Result<Option<Vec<Member>>, StoreError> {
    Ok(read_applied(db, key)?
        .filter(|applied| applied.refusal == 0)
        .map(|applied| applied.members))
}

/// The outcome stored for a key, as the client first got it (a put's
/// record carries its kind, key and revisions; the caller fills in the
/// value where it still has it).
fn outcome_of(applied: &AppliedKey) -> Result<ApplyResponse, CatalogError> {
    let message = applied.refusal_message.clone();
    match applied.refusal {
        0 => Ok(ApplyResponse {
            revision: applied.revision,
            record: applied.meta.map(|meta| CatalogRecord {
                meta: Some(meta),
                ..Default::default()
            }),
        }),
        1 => Err(CatalogError::InvalidArgument(message)),
        2 => Err(CatalogError::NotFound(message)),
        3 => Err(CatalogError::PermissionDenied(message)),
        5 => Err(CatalogError::Conflict {
            why: message,
            mod_revision: applied.refusal_mod_revision,
        }),
        6 => Err(CatalogError::InUse(message)),
        _ => Err(CatalogError::FailedPrecondition(message)),
    }
}

/// Stages the outcome of the entry taken at `at_ms` that first applied
/// `key`, then forgets what is past the window or the bound.
pub fn record(
    batch: &mut Staged,
    key: &[u8],
    at_ms: i64,
    digest: u64,
    outcome: &Result<ApplyResponse, CatalogError>,
) -> Result<(), StoreError> {
    record_bounded(batch, key, at_ms, digest, outcome, MAX_KEYS)
}

/// Stages the result of the membership change taken at `at_ms` that first
/// applied `key`: the `members` it leaves. Then forgets what is past the
/// window or the bound, as [`record`] does.
pub fn record_membership(
    batch: &mut Staged,
    key: &[u8],
    at_ms: i64,
    digest: u64,
    members: &[Member],
) -> Result<(), StoreError> {
    let applied = AppliedKey {
        key: key.to_vec(),
        at_unix_ms: at_ms,
        command_digest: digest,
        members: members.to_vec(),
        ..Default::default()
    };
    store(batch, applied, MAX_KEYS)
}

/// [`record`], keeping at most `max_keys`.
fn record_bounded(
    batch: &mut Staged,
    key: &[u8],
    at_ms: i64,
    digest: u64,
    outcome: &Result<ApplyResponse, CatalogError>,
    max_keys: u64,
) -> Result<(), StoreError> {
    let mut applied = AppliedKey {
        key: key.to_vec(),
        at_unix_ms: at_ms,
        command_digest: digest,
        ..Default::default()
    };
    match outcome {
        Ok(response) => {
            applied.revision = response.revision;
            applied.meta = response.record.as_ref().and_then(|r| r.meta);
        }
        Err(refusal) => {
            let (code, mod_revision) = match refusal {
                CatalogError::InvalidArgument(_) => (1, 0),
                CatalogError::NotFound(_) => (2, 0),
                CatalogError::PermissionDenied(_) => (3, 0),
                CatalogError::FailedPrecondition(_) => (4, 0),
                CatalogError::Conflict { mod_revision, .. } => (5, *mod_revision),
                CatalogError::InUse(_) => (6, 0),
                // Never recorded: the loop stops instead (see raft_node).
                CatalogError::Internal(_) => return Ok(()),
            };
            applied.refusal = code;
            applied.refusal_message = refusal.to_string();
            applied.refusal_mod_revision = mod_revision;
        }
    }
    store(batch, applied, max_keys)
}

/// Stages `applied` under its key at the queue's tail, then forgets what
/// is past the window (by its time) or `max_keys`.
fn store(batch: &mut Staged, applied: AppliedKey, max_keys: u64) -> Result<(), StoreError> {
    let tail = read_u64(batch, TAIL)?.unwrap_or(0);
    let (key, at_ms) = (applied.key.clone(), applied.at_unix_ms);
    batch.insert(key_key(&key), applied.encode_to_vec());
    batch.insert(queue_key(tail), key);
    batch.insert(TAIL, (tail + 1).to_be_bytes());
    expire(batch, at_ms, max_keys)
}

/// Forgets the oldest keys: any past `max_keys`, and up to
/// [`EXPIRE_STEP`] older than the window before `now_ms`.
fn expire(batch: &mut Staged, now_ms: i64, max_keys: u64) -> Result<(), StoreError> {
    let mut head = read_u64(batch, HEAD)?.unwrap_or(0);
    let tail = read_u64(batch, TAIL)?.unwrap_or(0);
    let mut floor = read_i64(batch, FLOOR)?;
    let mut by_time = 0;
    while head < tail {
        let queued = queue_key(head);
        let Some(key) = batch.read(&queued)? else {
            return Err(StoreError::Damaged {
                key: String::from_utf8_lossy(&queued).into_owned(),
                reason: "a missing entry in the idempotency key queue".into(),
            });
        };
        let at = read_applied(batch, &key)?.map_or(i64::MIN, |a| a.at_unix_ms);
        let over = tail - head > max_keys;
        let old = at < now_ms.saturating_sub(WINDOW_MS) && by_time < EXPIRE_STEP;
        if !over && !old {
            break;
        }
        if !over {
            by_time += 1;
        }
        batch.remove(queued);
        batch.remove(key_key(&key));
        floor = floor.max(at);
        head += 1;
    }
    batch.insert(HEAD, head.to_be_bytes());
    batch.insert(FLOOR, (floor as u64).to_be_bytes());
    Ok(())
}

/// Every key remembered, oldest first, and the floor: for a snapshot.
pub fn snapshot(db: &Kv) -> Result<(Vec<AppliedKey>, i64), StoreError> {
    let mut keys = Vec::new();
    for item in db.scan_prefix(QUEUE_PREFIX) {
        let (_, key) = item?;
        if let Some(applied) = read_applied(db, &key)? {
            keys.push(applied);
        }
    }
    Ok((keys, read_i64(db, FLOOR)?))
}

/// Stages replacing the keys remembered with a snapshot's.
pub fn restore(
    db: &Kv,
    batch: &mut Staged,
    keys: &[AppliedKey],
    floor: i64,
) -> Result<(), StoreError> {
    for prefix in [KEY_PREFIX, QUEUE_PREFIX] {
        for item in db.scan_prefix(prefix) {
            batch.remove(item?.0);
        }
    }
    for (seq, applied) in keys.iter().enumerate() {
        batch.insert(key_key(&applied.key), applied.encode_to_vec());
        batch.insert(queue_key(seq as u64), applied.key.clone());
    }
    batch.insert(HEAD, 0u64.to_be_bytes());
    batch.insert(TAIL, (keys.len() as u64).to_be_bytes());
    batch.insert(FLOOR, (floor as u64).to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_kv::MemKv;
    use lgsp_proto::Meta;

    const T: i64 = 1_800_000_000_000;

    fn repeat(outcome: Result<ApplyResponse, CatalogError>) -> Seen {
        Seen::Repeat(Box::new(outcome))
    }

    /// The refusal a lookup answers with, if it is one.
    fn refusal(seen: Seen) -> Option<CatalogError> {
        match seen {
            Seen::Repeat(outcome) => outcome.err(),
            Seen::New => None,
        }
    }

    fn key(n: u8) -> Vec<u8> {
        vec![n; KEY_LEN]
    }

    fn applied(revision: u64) -> Result<ApplyResponse, CatalogError> {
        Ok(ApplyResponse {
            revision,
            record: Some(CatalogRecord {
                meta: Some(Meta {
                    create_revision: 1,
                    mod_revision: revision,
                }),
                ..Default::default()
            }),
        })
    }

    fn put(db: &Kv, n: u8, at: i64, outcome: Result<ApplyResponse, CatalogError>, max: u64) {
        let mut batch = Staged::new(db);
        record_bounded(&mut batch, &key(n), at, 7, &outcome, max).unwrap();
        batch.commit().unwrap();
    }

    #[test]
    fn a_key_seen_again_answers_with_its_first_outcome_refusals_included() {
        let db = Kv::new(MemKv::default());
        put(&db, 1, T, applied(5), MAX_KEYS);
        let conflict = CatalogError::Conflict {
            why: "Agency \"000.00.12.H62\" is at mod revision 3, not the expected 2".into(),
            mod_revision: 3,
        };
        put(&db, 2, T, Err(conflict.clone()), MAX_KEYS);
        assert_eq!(
            lookup(&db, &key(1), T + 1000, 7).unwrap(),
            repeat(applied(5))
        );
        assert_eq!(
            lookup(&db, &key(2), T + 1000, 7).unwrap(),
            repeat(Err(conflict))
        );
        assert_eq!(lookup(&db, &key(3), T + 1000, 7).unwrap(), Seen::New);
        // The same key for another command is refused, not answered with
        // the first command's outcome.
        match refusal(lookup(&db, &key(1), T, 8).unwrap()) {
            Some(CatalogError::InvalidArgument(why)) => {
                assert!(why.contains("another write"), "{why}")
            }
            other => panic!("a reused key was answered {other:?}"),
        }
    }

    #[test]
    fn a_key_is_forgotten_after_the_window_and_an_attempt_older_than_it_is_refused() {
        let db = Kv::new(MemKv::default());
        put(&db, 1, T, applied(5), MAX_KEYS);
        put(&db, 2, T + WINDOW_MS - 1, applied(6), MAX_KEYS);
        assert!(matches!(
            lookup(&db, &key(1), T + WINDOW_MS, 7).unwrap(),
            Seen::Repeat(_)
        ));
        // An entry past the window after the first key forgets it.
        put(&db, 3, T + WINDOW_MS + 1, applied(7), MAX_KEYS);
        assert_eq!(snapshot(&db).unwrap().0.len(), 2);
        // An attempt taken after it was forgotten is new: the client's
        // retries ended long before.
        assert_eq!(
            lookup(&db, &key(1), T + WINDOW_MS + 2, 7).unwrap(),
            Seen::New
        );
        // One taken before it was (a first attempt delayed that long) may
        // repeat a write applied and forgotten: refused, never applied.
        match refusal(lookup(&db, &key(9), T - 1, 7).unwrap()) {
            Some(CatalogError::FailedPrecondition(why)) => {
                assert!(why.contains("new key"), "{why}")
            }
            other => panic!("an attempt older than a forgotten key was answered {other:?}"),
        }
        assert!(matches!(
            lookup(&db, &key(2), T, 7).unwrap(),
            Seen::Repeat(r) if r.is_ok()
        ));
    }

    #[test]
    fn at_most_the_bound_of_keys_is_kept_and_the_oldest_go_first() {
        let db = Kv::new(MemKv::default());
        for n in 0..5 {
            put(&db, n, T + i64::from(n), applied(u64::from(n) + 1), 3);
        }
        let (kept, floor) = snapshot(&db).unwrap();
        let kept: Vec<u8> = kept.iter().map(|k| k.key[0]).collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert_eq!(floor, T + 1);
        assert!(matches!(
            lookup(&db, &key(4), T + 5, 7).unwrap(),
            Seen::Repeat(r) if r.is_ok()
        ));
        // Key 1 was forgotten: an attempt taken before that is refused.
        assert!(matches!(
            lookup(&db, &key(1), T, 7).unwrap(),
            Seen::Repeat(r) if matches!(*r, Err(CatalogError::FailedPrecondition(_)))
        ));
    }

    #[test]
    fn a_snapshot_carries_the_keys_and_the_floor_to_another_server() {
        let db = Kv::new(MemKv::default());
        for n in 0..4 {
            put(&db, n, T + i64::from(n), applied(u64::from(n) + 1), 3);
        }
        let (keys, floor) = snapshot(&db).unwrap();
        let other = Kv::new(MemKv::default());
        put(&other, 9, T, applied(1), 3);
        let mut batch = Staged::new(&other);
        restore(&other, &mut batch, &keys, floor).unwrap();
        batch.commit().unwrap();
        assert_eq!(snapshot(&other).unwrap(), (keys, floor));
        assert_eq!(lookup(&other, &key(9), T + 9, 7).unwrap(), Seen::New);
        assert_eq!(
            lookup(&other, &key(3), T + 9, 7).unwrap(),
            repeat(applied(4))
        );
        // Recording goes on from where the snapshot left off.
        put(&other, 5, T + 5, applied(6), 3);
        let kept: Vec<u8> = snapshot(&other)
            .unwrap()
            .0
            .iter()
            .map(|k| k.key[0])
            .collect();
        assert_eq!(kept, vec![2, 3, 5]);
    }
}

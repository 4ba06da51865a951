//! The registry under faults, in-process over real mTLS on loopback: a cut-off
//! minority commits nothing and serves no linearizable read, a server that
//! fell behind the log catches up by snapshot, membership changes while
//! writes continue, and conditional writes stay linearizable while leaders
//! are isolated and followers restarted (checked by a small Wing & Gong
//! style checker, itself tested below).

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{
    AddMemberRequest, Agency, ApplyRequest, Command, GetRequest, ListRequest, RecordKind,
    RecordRef, command,
};
use lgsp_registry::{RegistryClient, RegistryServer};
use lgsp_tests::cluster::{Cluster, create_resolving, free_addr};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

fn agency(code: &str, name: &str) -> Value {
    Value::Agency(Agency {
        code: code.into(),
        name: name.into(),
        focal_point: None,
        ..Default::default()
    })
}

fn put_command(value: Value) -> Command {
    Command {
        op: Some(command::Op::Put(lgsp_proto::CatalogRecord {
            value: Some(value),
            ..Default::default()
        })),
        expected_mod_revision: 0,
        must_not_exist: false,
    }
}

fn agency_ref(code: &str) -> RecordRef {
    RecordRef {
        kind: RecordKind::Agency as i32,
        key: code.into(),
    }
}

/// Cuts Raft traffic both ways between server `id` and every other running server.
fn isolate(cluster: &Cluster, id: u64) {
    let others: Vec<u64> = cluster
        .servers
        .keys()
        .copied()
        .filter(|o| *o != id)
        .collect();
    cluster.servers[&id].faults().isolate(&others);
    for o in &others {
        cluster.servers[o].faults().isolate(&[id]);
    }
}

fn heal(cluster: &Cluster) {
    for s in cluster.servers.values() {
        s.faults().heal();
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader every server in `ids` agrees on, once they agree.
async fn leader_among(cluster: &Cluster, ids: &[u64]) -> u64 {
    eventually(
        Duration::from_secs(10),
        "a leader among the majority",
        || async {
            let mut leaders = Vec::new();
            for id in ids {
                leaders.push(cluster.servers[id].raft().status().await.ok()?.leader_id);
            }
            let l = leaders[0];
            (ids.contains(&l) && leaders.iter().all(|x| *x == l)).then_some(l)
        },
    )
    .await
}

/// The agency's name and mod revision as `client`'s server has it, without
/// asking the leader.
async fn stale_agency(client: &RegistryClient, code: &str) -> Option<(String, u64)> {
    let record = client
        .get(RecordKind::Agency, code, true)
        .await
        .ok()?
        .record?;
    let mod_revision = record.meta?.mod_revision;
    match record.value? {
        Value::Agency(a) => Some((a.name, mod_revision)),
        _ => None,
    }
}

/// The index of the first entry still in server `server`'s Raft log: entries
/// below it were compacted away (`storage.rs` keeps them under `r:e:<index BE>`
/// in the log's store).
fn first_log_index(server: &RegistryServer) -> u64 {
    let (key, _) = server
        .raft()
        .log()
        .scan_prefix(b"r:e:")
        .next()
        .expect("the log has entries")
        .expect("read the log");
    u64::from_be_bytes(key[4..].try_into().expect("an entry key"))
}

/// Asserts a request through an isolated minority was refused as a client
/// can tell: no leader (not applied) or outcome unknown; never served.
fn refused_by_minority<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
) {
    match result {
        Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {}
        Err(s) => panic!(
            "{what} through the isolated old leader failed with {:?}: {}",
            s.code(),
            s.message()
        ),
        Ok(r) => panic!(
            "{what} through the isolated old leader succeeded: {:?}",
            r.into_inner()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_cannot_commit_or_serve_linearizable_reads_and_heals_without_loss() {
    const KEY: &str = "000.00.01.H62";
    const MINORITY_KEY: &str = "000.00.66.H62";
    let cluster = Cluster::start(3).await;
    let admin = cluster.admin_client();
    // code -> (name, mod revision) of the last acknowledged write of each record.
    let mut acknowledged = BTreeMap::new();
    let before = admin.put(agency(KEY, "trước"), 0).await.expect("write");
    acknowledged.insert(KEY.to_owned(), ("trước".to_owned(), before.revision));

    let old = cluster.wait_for_leader().await;
    let majority: Vec<u64> = cluster
        .servers
        .keys()
        .copied()
        .filter(|id| *id != old)
        .collect();
    isolate(&cluster, old);

    // Straight at the old leader, while it may still believe it leads: one
    // attempt each (the client would move on to other servers).
    let via_old = cluster.client_of(&[old], &cluster.admin);
    let minority_write = tokio::spawn({
        let mut grpc = via_old.server(0);
        async move {
            let request = ApplyRequest {
                command: Some(put_command(agency(MINORITY_KEY, "thiểu số"))),
                idempotency_key: Vec::new(),
            };
            tokio::time::timeout(Duration::from_secs(15), grpc.apply(request)).await
        }
    });
    let early_read = tokio::spawn({
        let mut grpc = via_old.server(0);
        async move {
            let request = GetRequest {
                r#ref: Some(agency_ref(KEY)),
                stale: false,
            };
            tokio::time::timeout(Duration::from_secs(15), grpc.get(request)).await
        }
    });

    let new = leader_among(&cluster, &majority).await;
    assert_ne!(new, old, "the majority elects a leader of its own");
    let via_majority = cluster.client_of(&majority, &cluster.admin);
    let after = via_majority
        .put(agency(KEY, "sau"), 0)
        .await
        .expect("the majority commits");
    acknowledged.insert(KEY.to_owned(), ("sau".to_owned(), after.revision));
    for i in 0..5u32 {
        let code = format!("000.00.{:02}.H62", 30 + i);
        let name = format!("Phòng {i}");
        let r = via_majority
            .put(agency(&code, &name), 0)
            .await
            .expect("the majority commits");
        acknowledged.insert(code, (name, r.revision));
    }

    // Now the old leader holds a value the majority has overwritten: serving
    // it as a linearizable read would be a stale read.
    let late_read = via_old
        .server(0)
        .get(GetRequest {
            r#ref: Some(agency_ref(KEY)),
            stale: false,
        })
        .await;
    refused_by_minority("a late linearizable read", late_read);
    let early = early_read.await.unwrap().expect("the read hung");
    refused_by_minority("an early linearizable read", early);
    let write = minority_write.await.unwrap().expect("the write hung");
    refused_by_minority("a write", write);

    heal(&cluster);
    let last_revision = acknowledged.values().map(|(_, r)| *r).max().unwrap();
    let readers: BTreeMap<u64, RegistryClient> = cluster
        .servers
        .keys()
        .map(|id| (*id, cluster.client_of(&[*id], &cluster.admin)))
        .collect();
    for (id, reader) in &readers {
        eventually(
            Duration::from_secs(10),
            &format!("server {id} converges"),
            || async {
                let status = cluster.servers[id].raft().status().await.ok()?;
                assert!(
                    status.revision <= last_revision,
                    "server {id} is at revision {}, past the last acknowledged write ({last_revision}): the minority's write committed",
                    status.revision
                );
                if status.revision < last_revision {
                    return None;
                }
                for (code, expected) in &acknowledged {
                    if stale_agency(reader, code).await.as_ref() != Some(expected) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        // The minority's write never committed, and no server kept it.
        let absent = reader.get(RecordKind::Agency, MINORITY_KEY, true).await;
        assert!(
            matches!(&absent, Err(s) if s.code() == Code::NotFound),
            "server {id} has the minority's write: {absent:?}"
        );
    }
    // The healed old leader serves linearizable reads again.
    let got = via_old.get(RecordKind::Agency, KEY, false).await.unwrap();
    assert_eq!(
        got.record.unwrap().meta.unwrap().mod_revision,
        after.revision
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_server_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, |c| c.snapshot_entries = 20).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    let at_stop = cluster.servers[&lagging].raft().status().await.unwrap();
    cluster.stop(lagging).await;

    let live: Vec<u64> = cluster.servers.keys().copied().collect();
    let client = cluster.client_of(&live, &cluster.admin);
    let mut last = 0;
    for i in 0..100u32 {
        let code = format!("000.01.{i:03}.H62");
        last = client
            .put(agency(&code, &format!("Phòng {i}")), 0)
            .await
            .expect("write with one server down")
            .revision;
    }
    // The entries the lagging server lacks are gone from every live log.
    let compacted_to = live
        .iter()
        .map(|id| first_log_index(&cluster.servers[id]) - 1)
        .min()
        .unwrap();
    assert!(
        compacted_to > at_stop.applied_index,
        "the live servers compacted their logs past the lagging server (to {compacted_to}, it had applied {})",
        at_stop.applied_index
    );

    cluster.restart(lagging).await;
    let reader = cluster.client_of(&[lagging], &cluster.admin);
    eventually(
        Duration::from_secs(15),
        "the lagging server sees the last write",
        || async { stale_agency(&reader, "000.01.099.H62").await },
    )
    .await;
    let status = cluster.servers[&lagging].raft().status().await.unwrap();
    assert!(
        status.applied_index >= compacted_to,
        "applied {} is past the compaction point {compacted_to}",
        status.applied_index
    );
    assert!(status.revision >= last);
    // Its watch history restarts after the snapshot: proof it did not replay the log.
    assert!(
        status.compact_revision > at_stop.revision + 1,
        "the catalog came from a snapshot (compact revision {}, revision at stop {})",
        status.compact_revision,
        at_stop.revision
    );
    let (all, _) = reader
        .list_all(ListRequest {
            kind: RecordKind::Agency as i32,
            stale: true,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 100, "every record arrived with the snapshot");

    // And it takes part again: a write through it commits and reads back everywhere.
    let written = reader
        .put(agency("000.01.999.H62", "Sau khi bắt kịp"), 0)
        .await
        .expect("write through the caught-up server");
    for id in cluster.servers.keys() {
        let r = cluster.client_of(&[*id], &cluster.admin);
        let (_, mod_revision) = eventually(
            Duration::from_secs(5),
            &format!("server {id} sees the write"),
            || stale_agency(&r, "000.01.999.H62"),
        )
        .await;
        assert_eq!(mod_revision, written.revision);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fourth_server_and_removing_one_while_writes_continue() {
    let mut cluster = Cluster::start(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let writer = tokio::spawn({
        let client = cluster.admin_client();
        let stop = stop.clone();
        let acknowledged = acknowledged.clone();
        async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let code = format!("000.02.{i:04}.H62");
                let revision = create_resolving(&client, agency(&code, "Phòng")).await;
                acknowledged.lock().unwrap().push((code, revision));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let acked = || acknowledged.lock().unwrap().len();
    eventually(Duration::from_secs(10), "first writes", || async {
        (acked() >= 5).then_some(())
    })
    .await;

    let mut config = cluster.config_for(4, free_addr(), free_addr());
    config.join = true;
    config.peers = cluster.configs[&1].peers.clone();
    let admin = cluster.admin_client();
    let added = admin
        .add_member(AddMemberRequest {
            id: 4,
            peer_address: config.peer_listen.to_string(),
            client_address: config.listen.to_string(),
            ..Default::default()
        })
        .await
        .expect("add member 4");
    // A learner until it has caught up: the quorum never waits for it.
    assert!(added.members.iter().any(|m| m.id == 4 && !m.voter));
    let acked_at_add = acked();
    let fourth = RegistryServer::start(config.clone())
        .await
        .expect("start server 4");
    cluster.servers.insert(4, fourth);
    cluster.configs.insert(4, config);

    let via_fourth = cluster.client_of(&[4], &cluster.admin);
    let target = acknowledged.lock().unwrap().last().cloned().unwrap();
    eventually(
        Duration::from_secs(15),
        "server 4 sees the latest write",
        || async { stale_agency(&via_fourth, &target.0).await },
    )
    .await;

    let leader = cluster.wait_for_leader().await;
    let victim = *cluster
        .servers
        .keys()
        .find(|id| **id != leader && **id != 4)
        .unwrap();
    let admin = cluster.admin_client();
    // Right after the previous change, through whichever server the client
    // prefers: one definite answer, no retry by hand.
    let removed = admin
        .remove_member(victim)
        .await
        .expect("remove a follower");
    assert!(removed.members.iter().all(|m| m.id != victim));
    let remaining: Vec<u64> = cluster
        .servers
        .keys()
        .copied()
        .filter(|id| *id != victim)
        .collect();
    for id in &remaining {
        eventually(
            Duration::from_secs(10),
            &format!("server {id} no longer lists server {victim}"),
            || async {
                let status = cluster.servers[id].raft().status().await.ok()?;
                let ids: Vec<u64> = status.members.iter().map(|m| m.id).collect();
                let mut expected = remaining.clone();
                expected.sort_unstable();
                let mut got = ids.clone();
                got.sort_unstable();
                (got == expected && !status.joint_consensus).then_some(())
            },
        )
        .await;
    }
    cluster.stop(victim).await;
    cluster.configs.remove(&victim);
    let acked_at_remove = acked();
    assert!(
        acked_at_remove > acked_at_add,
        "writes went on during the membership changes"
    );

    // A little more load on the new configuration, then stop writing.
    let more = acked_at_remove + 5;
    eventually(
        Duration::from_secs(10),
        "writes after the removal",
        || async { (acked() >= more).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(40), writer)
        .await
        .expect("the writer stops")
        .expect("every write was resolved");

    let acknowledged = acknowledged.lock().unwrap().clone();
    let client = cluster.client_of(&remaining, &cluster.admin);
    for (code, revision) in &acknowledged {
        let got = client
            .get(RecordKind::Agency, code, false)
            .await
            .unwrap_or_else(|e| panic!("acknowledged write {code} lost: {e}"));
        assert_eq!(got.record.unwrap().meta.unwrap().create_revision, *revision);
    }
    let (on_fourth, _) = eventually(
        Duration::from_secs(10),
        "server 4 holds every acknowledged write",
        || async {
            let page = via_fourth
                .list_all(ListRequest {
                    kind: RecordKind::Agency as i32,
                    stale: true,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .ok()?;
            (page.0.len() >= acknowledged.len()).then_some(page)
        },
    )
    .await;
    assert_eq!(on_fourth.len(), acknowledged.len());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_short_by_its_server_stopping_is_never_reported_as_not_applied() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    let others: Vec<u64> = cluster
        .servers
        .keys()
        .copied()
        .filter(|id| *id != follower)
        .collect();
    let checker = cluster.client_of(&others, &cluster.admin);
    let mut cut_short = 0;
    for i in 0..40u64 {
        if i >= 20 && cut_short >= 5 {
            break;
        }
        eventually(
            Duration::from_secs(10),
            "the follower knows the leader",
            || async {
                let status = cluster.servers[&follower].raft().status().await.ok()?;
                (status.leader_id != 0).then_some(())
            },
        )
        .await;
        let code = format!("000.03.{i:03}.H62");
        // One attempt through the follower, on a connection already open.
        let mut grpc = cluster.client_of(&[follower], &cluster.admin).server(0);
        grpc.status(lgsp_proto::StatusRequest {})
            .await
            .expect("connect");
        let write = tokio::spawn({
            let command = put_command(agency(&code, "Phòng"));
            async move {
                grpc.apply(ApplyRequest {
                    command: Some(command),
                    idempotency_key: Vec::new(),
                })
                .await
            }
        });
        // Stop it at varying points of the write's way to the leader and back.
        tokio::time::sleep(Duration::from_micros(500 * (i % 10))).await;
        cluster.stop(follower).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("the write was answered")
            .unwrap();
        let stored = checker.get(RecordKind::Agency, &code, false).await;
        match answer {
            Ok(_) => assert!(stored.is_ok(), "acknowledged write {code} lost"),
            Err(status) => {
                cut_short += 1;
                if status.code() == Code::Unavailable {
                    assert!(
                        matches!(&stored, Err(s) if s.code() == Code::NotFound),
                        "write {code} was answered {:?} ({}), yet it was applied",
                        status.code(),
                        status.message()
                    );
                }
            }
        }
        cluster.restart(follower).await;
    }
    assert!(
        cut_short > 0,
        "no write was cut short: the test proved nothing"
    );
    cluster.shutdown().await;
}

/// A linearizability checker for one compare-and-set register, after Wing &
/// Gong (and Lowe's memoization): search for an order of the operations that
/// respects real time and the register's semantics.
mod linearizability {
    use std::collections::HashSet;

    /// Values are write ids; the register starts at the initial value's id.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Op {
        /// Read `value`.
        Read { value: u64 },
        /// Set `new` if the register held `expected`; succeeded.
        Cas { expected: u64, new: u64 },
        /// A compare-and-set refused because the register did not hold `expected`.
        FailedCas { expected: u64 },
    }

    /// One operation: invoked at `invoke`, answered at `complete`, or never
    /// (its outcome is unknown: it may take effect at any time after
    /// `invoke`, or not at all).
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Event {
        pub(super) op: Op,
        pub(super) invoke: u64,
        pub(super) complete: Option<u64>,
    }

    fn step(state: u64, op: Op) -> Option<u64> {
        match op {
            Op::Read { value } => (state == value).then_some(state),
            Op::Cas { expected, new } => (state == expected).then_some(new),
            Op::FailedCas { expected } => (state != expected).then_some(state),
        }
    }

    const WORDS: usize = 4;
    /// Which events are linearized; up to 256.
    type Set = [u64; WORDS];

    fn has(set: &Set, i: usize) -> bool {
        set[i / 64] & (1 << (i % 64)) != 0
    }

    fn with(set: &Set, i: usize) -> Set {
        let mut s = *set;
        s[i / 64] |= 1 << (i % 64);
        s
    }

    /// `Ok` when the history is linearizable from `initial`; otherwise says how far it got.
    pub(super) fn check(initial: u64, history: &[Event]) -> Result<(), String> {
        assert!(
            history.len() <= WORDS * 64,
            "history of {} events is too long for the checker",
            history.len()
        );
        let mut search = Search {
            history,
            failed: HashSet::new(),
            deepest: 0,
        };
        if search.linearize(initial, [0; WORDS], 0) {
            Ok(())
        } else {
            Err(format!(
                "no linearization of {} events; at most {} could be ordered",
                history.len(),
                search.deepest
            ))
        }
    }

    struct Search<'a> {
        history: &'a [Event],
        failed: HashSet<(Set, u64)>,
        deepest: usize,
    }

    impl Search<'_> {
        fn linearize(&mut self, state: u64, done: Set, depth: usize) -> bool {
            self.deepest = self.deepest.max(depth);
            let pending = |i: &usize| !has(&done, *i);
            // The earliest answer among operations not yet placed: whatever
            // goes next must have been invoked by then.
            let Some(horizon) = (0..self.history.len())
                .filter(pending)
                .filter_map(|i| self.history[i].complete)
                .min()
            else {
                return true; // only unknown outcomes left: they may never have happened
            };
            for i in (0..self.history.len()).filter(pending) {
                let event = self.history[i];
                if event.invoke > horizon {
                    continue;
                }
                let Some(next) = step(state, event.op) else {
                    continue;
                };
                let placed = with(&done, i);
                if self.failed.contains(&(placed, next)) {
                    continue;
                }
                if self.linearize(next, placed, depth + 1) {
                    return true;
                }
            }
            self.failed.insert((done, state));
            false
        }
    }
}

use linearizability::{Event, Op};

#[test]
fn the_checker_rejects_a_stale_read_and_a_lost_or_phantom_write() {
    let ev = |op, invoke, complete| Event {
        op,
        invoke,
        complete,
    };
    // A write of 1 completes, then a read still sees 0.
    let stale = [
        ev(
            Op::Cas {
                expected: 0,
                new: 1,
            },
            0,
            Some(10),
        ),
        ev(Op::Read { value: 0 }, 20, Some(30)),
    ];
    assert!(linearizability::check(0, &stale).is_err());
    // The same read overlapping the write is fine, and so is seeing the write.
    let overlapping = [stale[0], ev(Op::Read { value: 0 }, 5, Some(30))];
    assert!(linearizability::check(0, &overlapping).is_ok());
    // A value nobody wrote (or whose write was reported refused) is read.
    let phantom = [
        ev(Op::FailedCas { expected: 0 }, 0, Some(10)),
        ev(Op::Read { value: 1 }, 20, Some(30)),
    ];
    assert!(linearizability::check(0, &phantom).is_err());
    // A refusal when the register certainly held the expected value.
    let wrong_refusal = [
        ev(Op::Read { value: 0 }, 0, Some(5)),
        ev(Op::FailedCas { expected: 0 }, 10, Some(20)),
        ev(Op::Read { value: 0 }, 30, Some(40)),
    ];
    assert!(linearizability::check(0, &wrong_refusal).is_err());
    // Two compare-and-sets from the same value both succeed: a lost update.
    let lost_update = [
        ev(
            Op::Cas {
                expected: 0,
                new: 1,
            },
            0,
            Some(10),
        ),
        ev(
            Op::Cas {
                expected: 0,
                new: 2,
            },
            0,
            Some(10),
        ),
    ];
    assert!(linearizability::check(0, &lost_update).is_err());
    // An unknown outcome may take effect late, after the writer moved on...
    let late = [
        ev(
            Op::Cas {
                expected: 0,
                new: 1,
            },
            0,
            None,
        ),
        ev(Op::Read { value: 0 }, 20, Some(30)),
        ev(Op::Read { value: 1 }, 40, Some(50)),
    ];
    assert!(linearizability::check(0, &late).is_ok());
    // ...or never, but not take effect and then be undone.
    let undone = [late[0], late[2], ev(Op::Read { value: 0 }, 60, Some(70))];
    assert!(linearizability::check(0, &undone).is_err());
}

/// What one client saw of one operation on key `key`.
#[derive(Debug)]
struct Observed {
    key: usize,
    op: Op,
    invoke: Instant,
    complete: Option<Instant>,
}

const CAS_KEYS: [&str; 3] = ["000.00.01.H62", "000.00.02.H62", "000.00.03.H62"];

fn write_name(id: u64) -> String {
    format!("ghi-{id}")
}

/// The write id an agency name carries; "khởi tạo" (the initial value) is 0.
fn write_id(name: &str) -> u64 {
    if name == "khởi tạo" {
        return 0;
    }
    name.strip_prefix("ghi-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX) // no operation writes this: the checker will refuse it
}

/// A linearizable read of `key`: its write id and mod revision.
async fn read_cas_key(client: &RegistryClient, key: usize) -> Result<(u64, u64), tonic::Status> {
    let got = client.get(RecordKind::Agency, CAS_KEYS[key], false).await?;
    let record = got.record.expect("record");
    let mod_revision = record.meta.expect("meta").mod_revision;
    match record.value {
        Some(Value::Agency(a)) => Ok((write_id(&a.name), mod_revision)),
        other => panic!("not an agency: {other:?}"),
    }
}

/// One client: reads, and compare-and-sets what it read, until `done` or
/// `max_ops` operations. Each operation starts at a server chosen at random
/// (`entries` are clients of every server, each trying a different one first),
/// so isolated and restarted servers keep being asked.
async fn cas_client(
    entries: Vec<RegistryClient>,
    number: u64,
    done: Arc<AtomicBool>,
    max_ops: usize,
) -> Vec<Observed> {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (number + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut random = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut observed = Vec::new();
    let mut next_write = number * 100_000;
    while !done.load(Ordering::Relaxed) && observed.len() < max_ops {
        let key = random(CAS_KEYS.len() as u64) as usize;
        let client = &entries[random(entries.len() as u64) as usize];
        let invoke = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(20), read_cas_key(client, key)).await;
        // A failed read changed nothing and tells nothing: leave it out.
        if let Ok(Ok((value, mod_revision))) = read {
            observed.push(Observed {
                key,
                op: Op::Read { value },
                invoke,
                complete: Some(Instant::now()),
            });
            if random(2) == 0 {
                // Think time widens the window in which another client's write conflicts.
                tokio::time::sleep(Duration::from_millis(random(30))).await;
                next_write += 1;
                let new = next_write;
                let invoke = Instant::now();
                let put = client.put(agency(CAS_KEYS[key], &write_name(new)), mod_revision);
                let outcome = tokio::time::timeout(Duration::from_secs(20), put).await;
                let cas = Op::Cas {
                    expected: value,
                    new,
                };
                let (op, complete) = match outcome {
                    Ok(Ok(_)) => (Some(cas), Some(Instant::now())),
                    Ok(Err(s)) => match s.code() {
                        Code::Aborted => (
                            Some(Op::FailedCas { expected: value }),
                            Some(Instant::now()),
                        ),
                        // Certainly not applied.
                        Code::Unavailable | Code::FailedPrecondition => (None, None),
                        // Deadline exceeded, cancelled, transport error: unknown.
                        _ => (Some(cas), None),
                    },
                    Err(_) => (Some(cas), None),
                };
                if let Some(op) = op {
                    observed.push(Observed {
                        key,
                        op,
                        invoke,
                        complete,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(40 + random(120))).await;
    }
    observed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_writes_under_faults_are_linearizable() {
    let mut cluster = Cluster::start(3).await;
    for code in CAS_KEYS {
        cluster.register_agency(code, "khởi tạo").await;
    }
    let ids: Vec<u64> = cluster.servers.keys().copied().collect();
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|n| {
            let entries = (0..ids.len())
                .map(|first| {
                    let mut order = ids.clone();
                    order.rotate_left(first);
                    cluster.client_of(&order, &cluster.admin)
                })
                .collect();
            tokio::spawn(cas_client(entries, n + 1, done.clone(), 100))
        })
        .collect();

    // Faults, while the clients run. Isolations last long enough for the
    // majority to elect a leader and go on writing while clients still ask
    // the old leader.
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    pause(700).await;
    let leader = cluster.wait_for_leader().await;
    isolate(&cluster, leader);
    pause(3500).await;
    heal(&cluster);
    cluster.wait_for_leader().await;
    pause(500).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    cluster.stop(follower).await;
    pause(2000).await;
    cluster.restart(follower).await;
    cluster.wait_for_leader().await;
    pause(500).await;
    let leader = cluster.wait_for_leader().await;
    isolate(&cluster, leader);
    pause(3000).await;
    heal(&cluster);
    pause(700).await;
    done.store(true, Ordering::Relaxed);

    let mut observed = Vec::new();
    for c in clients {
        let ops = tokio::time::timeout(Duration::from_secs(40), c)
            .await
            .expect("a client hung")
            .expect("client task");
        observed.extend(ops);
    }
    // A final read of each key, after everything: the end state must fit too.
    let reader = cluster.admin_client();
    for key in 0..CAS_KEYS.len() {
        let invoke = Instant::now();
        let (value, _) = read_cas_key(&reader, key).await.expect("final read");
        observed.push(Observed {
            key,
            op: Op::Read { value },
            invoke,
            complete: Some(Instant::now()),
        });
    }

    let start = observed.iter().map(|o| o.invoke).min().unwrap();
    let nanos = |t: Instant| t.duration_since(start).as_nanos() as u64;
    let count = |f: &dyn Fn(&Observed) -> bool| observed.iter().filter(|o| f(o)).count();
    let writes_ok = count(&|o| matches!(o.op, Op::Cas { .. }) && o.complete.is_some());
    let unknown = count(&|o| o.complete.is_none());
    let refused = count(&|o| matches!(o.op, Op::FailedCas { .. }));
    let reads = count(&|o| matches!(o.op, Op::Read { .. }));
    eprintln!(
        "history: {} operations: {reads} reads, {writes_ok} writes, {refused} refused compare-and-sets, {unknown} unknown outcomes",
        observed.len()
    );
    assert!(
        writes_ok >= 10,
        "too few writes succeeded to prove anything"
    );
    for (key, code) in CAS_KEYS.iter().enumerate() {
        let history: Vec<Event> = observed
            .iter()
            .filter(|o| o.key == key)
            .map(|o| Event {
                op: o.op,
                invoke: nanos(o.invoke),
                complete: o.complete.map(nanos),
            })
            .collect();
        if let Err(why) = linearizability::check(0, &history) {
            let mut sorted = history.clone();
            sorted.sort_by_key(|e| e.invoke);
            let lines: Vec<String> = sorted
                .iter()
                .map(|e| {
                    format!(
                        "  {:>8.1} ms .. {:>10} {:?}",
                        e.invoke as f64 / 1e6,
                        e.complete
                            .map_or("unknown".into(), |c| format!("{:.1} ms", c as f64 / 1e6)),
                        e.op
                    )
                })
                .collect();
            panic!("{code}: {why}\n{}", lines.join("\n"));
        }
    }
    cluster.shutdown().await;
}

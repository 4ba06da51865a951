//! The consensus loop on an in-memory network, driven step by step by the
//! test, as raft-rs' own harness drives its nodes: each test tick ticks
//! every server, then handles Readies and moves messages until no server
//! has anything left to send. No thread, timer or socket is involved, so
//! drops, partitions and heals happen exactly where a test puts them.

use super::*;
use crate::catalog::Catalog;
use crate::mem_kv::MemKv;
use crate::mem_network::MemNetwork;
use lgsp_certs::identity::{AgencyCode, Role};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::command::Op;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::{Agency, CatalogRecord, RecordKind};
use std::collections::BTreeMap;

const ELECTION_TICKS: usize = 10;
const AGENCY: &str = "000.00.12.H62";

fn admin() -> SpiffeId {
    SpiffeId::new(
        "lgsp.test",
        AgencyCode::new("000.00.01.H62").unwrap(),
        Role::Admin,
        "ops",
    )
    .unwrap()
}

/// Registers or renames the test agency.
fn rename(name: &str) -> Command {
    Command {
        op: Some(Op::Put(CatalogRecord {
            value: Some(Value::Agency(Agency {
                code: AGENCY.into(),
                name: name.into(),
                focal_point: None,
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

type Answer = oneshot::Receiver<Result<ApplyResponse, RegistryError>>;

/// Registry servers 1..=n, bootstrapped together, on one [`MemNetwork`].
struct Cluster {
    net: MemNetwork,
    servers: BTreeMap<u64, Driver>,
    /// Each server's store, to make its reads fail.
    engines: BTreeMap<u64, MemKv>,
    /// How long a log each server keeps before compacting it.
    snapshot_entries: u64,
    /// The state machine of servers started from now on.
    machine: Arc<dyn crate::storage::StateMachine>,
    /// Whether [`settle`](Self::settle) waits for snapshots being built
    /// (off the consensus thread) before it moves messages, so that tests
    /// run the same every time; a test of the build itself turns it off.
    wait_for_snapshots: bool,
}

impl Cluster {
    /// `snapshot_entries`: how long a log each server keeps before
    /// compacting it.
    fn new(size: u64, snapshot_entries: u64) -> Self {
        Self::with_machine(size, snapshot_entries, Arc::new(Catalog))
    }

    /// [`new`](Self::new), every server's state machine `machine`.
    fn with_machine(
        size: u64,
        snapshot_entries: u64,
        machine: Arc<dyn crate::storage::StateMachine>,
    ) -> Self {
        let mut cluster = Self {
            net: MemNetwork::default(),
            servers: BTreeMap::new(),
            engines: BTreeMap::new(),
            snapshot_entries,
            machine,
            wait_for_snapshots: true,
        };
        let voters: Vec<u64> = (1..=size).collect();
        for &id in &voters {
            cluster.start_server(id, Some(&voters));
        }
        cluster
    }

    /// Starts server `id` on a new, empty store (replacing any server `id`
    /// had, as a wiped disk would), founding with `voters` or, without
    /// them, waiting to be sent a snapshot as a joining server does.
    fn start_server(&mut self, id: u64, voters: Option<&[u64]>) {
        let engine = MemKv::default();
        let kv = Kv::new(engine.clone());
        let incarnation = crate::incarnation::own(&kv).unwrap();
        let store = RaftStore::new(kv, Kv::new(MemKv::default()), self.machine.clone()).unwrap();
        if let Some(voters) = voters {
            store.bootstrap(voters).unwrap();
        }
        let config = LoopConfig {
            id,
            tick: Duration::from_millis(100),
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: 2,
            snapshot_entries: self.snapshot_entries,
            watch_history: 1000,
            // Nothing expires during a test: every outcome is decided by Raft.
            propose_timeout: Duration::from_secs(3600),
            ca: Vec::new(),
            incarnation,
            province: AgencyCode::new("000.00.01.H62").unwrap(),
        };
        let driver = Driver::new(store, self.net.endpoint(id), config).unwrap();
        self.servers.insert(id, driver);
        self.engines.insert(id, engine);
    }

    fn server(&self, id: u64) -> &Driver {
        &self.servers[&id]
    }

    /// Handles Readies and moves messages until every server is quiet.
    fn settle(&mut self) {
        if let Err((id, error)) = self.try_settle() {
            panic!("server {id} stopped: {error}");
        }
    }

    /// [`settle`](Self::settle), returning the first error a server's loop
    /// stops with.
    fn try_settle(&mut self) -> Result<(), (u64, RegistryError)> {
        for _ in 0..1000 {
            for (id, driver) in self.servers.iter_mut() {
                if self.wait_for_snapshots {
                    driver.store.snapshots().wait();
                }
                driver.on_ready().map_err(|e| (*id, e))?;
            }
            let delivery = self.net.deliver();
            if delivery.delivered.is_empty() && delivery.dropped.is_empty() {
                return Ok(());
            }
            // What the gRPC transport reports on a failed or a finished send.
            for m in &delivery.dropped {
                if let Some(sender) = self.servers.get_mut(&m.from) {
                    sender.report(Report::Unreachable(m.to));
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        sender.report(Report::Snapshot {
                            to: m.to,
                            ok: false,
                        });
                    }
                }
            }
            // Batches as the gRPC transport sends them: from one server to
            // another, under the sender's incarnation.
            let mut inboxes: BTreeMap<(u64, u64), Vec<Message>> = BTreeMap::new();
            for m in delivery.delivered {
                if m.get_msg_type() == MessageType::MsgSnapshot
                    && let Some(sender) = self.servers.get_mut(&m.from)
                {
                    sender.report(Report::Snapshot { to: m.to, ok: true });
                }
                inboxes.entry((m.to, m.from)).or_default().push(m);
            }
            for ((to, from), messages) in inboxes {
                let incarnation = self.servers.get(&from).map_or(0, |s| s.config.incarnation);
                if let Some(driver) = self.servers.get_mut(&to) {
                    driver
                        .handle(Request::Step {
                            incarnation,
                            messages,
                        })
                        .map_err(|e| (to, e))?;
                }
            }
        }
        panic!("the cluster never went quiet");
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for driver in self.servers.values_mut() {
                driver.tick();
            }
            self.settle();
        }
    }

    /// The leader of `ids`, once exactly one of them leads and all of them
    /// follow it.
    fn leader_of(&self, ids: &[u64]) -> Option<u64> {
        let leaders: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.server(*id).raw.raft.state == StateRole::Leader)
            .collect();
        match leaders.as_slice() {
            [leader]
                if ids
                    .iter()
                    .all(|id| self.server(*id).raw.raft.leader_id == *leader) =>
            {
                Some(*leader)
            }
            _ => None,
        }
    }

    /// Ticks until `ids` agree on a leader among them.
    fn elect(&mut self, ids: &[u64]) -> u64 {
        for _ in 0..20 * ELECTION_TICKS {
            if let Some(leader) = self.leader_of(ids) {
                return leader;
            }
            self.tick(1);
        }
        panic!("servers {ids:?} elected no leader");
    }

    /// Hands `command` to server `on` and lets the cluster settle.
    fn propose(&mut self, on: u64, command: Command) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.servers
            .get_mut(&on)
            .unwrap()
            .handle(Request::Propose {
                actor: Box::new(admin()),
                command: Box::new(command),
                key: Vec::new(),
                reply,
            })
            .unwrap();
        self.settle();
        answer
    }

    /// Hands `command` to server `on` under idempotency key `key` (empty:
    /// none) and lets the cluster settle.
    fn propose_keyed(&mut self, on: u64, command: Command, key: &[u8]) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.servers
            .get_mut(&on)
            .unwrap()
            .handle(Request::Propose {
                actor: Box::new(admin()),
                command: Box::new(command),
                key: key.to_vec(),
                reply,
            })
            .unwrap();
        self.settle();
        answer
    }

    /// Renames the agency through server `on`; the answer must be in.
    fn write(&mut self, on: u64, name: &str) -> ApplyResponse {
        let mut answer = self.propose(on, rename(name));
        answer
            .try_recv()
            .expect("the write was answered")
            .expect("the write was applied")
    }

    fn revision(&self, id: u64) -> u64 {
        catalog::revision(self.server(id).store.db()).unwrap()
    }

    fn agency_name(&self, id: u64) -> Option<String> {
        match catalog::get(self.server(id).store.db(), RecordKind::Agency, AGENCY)
            .unwrap()?
            .value?
        {
            Value::Agency(a) => Some(a.name),
            _ => None,
        }
    }

    fn others(&self, but: u64) -> Vec<u64> {
        self.servers
            .keys()
            .copied()
            .filter(|id| *id != but)
            .collect()
    }
}

#[test]
fn a_leader_is_elected_and_its_writes_reach_every_server() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let applied = cluster.write(leader, "Sở Tư pháp");
    cluster.tick(1);
    for id in 1..=3 {
        assert_eq!(cluster.revision(id), applied.revision, "server {id}");
        assert_eq!(cluster.agency_name(id).as_deref(), Some("Sở Tư pháp"));
    }
}

#[test]
fn a_write_sent_to_a_follower_is_forwarded_and_answered_there() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let follower = cluster.others(leader)[0];
    let applied = cluster.write(follower, "forwarded");
    assert_eq!(cluster.revision(leader), applied.revision);
    assert_eq!(cluster.agency_name(leader).as_deref(), Some("forwarded"));
}

#[test]
fn losing_the_leader_elects_another_and_its_uncommitted_write_is_discarded() {
    let mut cluster = Cluster::new(3, 1000);
    let old = cluster.elect(&[1, 2, 3]);
    cluster.write(old, "before");
    cluster.net.isolate(old);
    let mut stale = cluster.propose(old, rename("stale"));
    let others = cluster.others(old);
    let new = cluster.elect(&others);
    assert_ne!(new, old);
    let applied = cluster.write(new, "after");
    assert!(cluster.revision(old) < applied.revision);
    // With check-quorum the isolated leader stands down on its own.
    cluster.tick(2 * ELECTION_TICKS);
    assert_ne!(cluster.server(old).raw.raft.state, StateRole::Leader);
    assert!(!matches!(stale.try_recv(), Ok(Ok(_))));

    cluster.net.heal();
    cluster.tick(2 * ELECTION_TICKS);
    assert_eq!(cluster.leader_of(&[1, 2, 3]), Some(new));
    for id in 1..=3 {
        assert_eq!(cluster.revision(id), applied.revision, "server {id}");
        assert_eq!(cluster.agency_name(id).as_deref(), Some("after"));
    }
}

#[test]
fn an_isolated_minority_neither_commits_nor_disrupts_and_catches_up_after_heal() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "v0");
    let minority = cluster.others(leader)[0];
    let term = cluster.server(minority).raw.raft.term;
    cluster.net.isolate(minority);
    let mut through_minority = cluster.propose(minority, rename("lost"));
    let mut last = None;
    for i in 1..=5 {
        last = Some(cluster.write(leader, &format!("v{i}")));
    }
    cluster.tick(3 * ELECTION_TICKS);
    let last = last.unwrap();
    assert!(cluster.revision(minority) < last.revision);
    assert!(!matches!(through_minority.try_recv(), Ok(Ok(_))));
    // Pre-vote: failed elections in the minority do not raise its term, so
    // it cannot depose the leader when it comes back.
    assert_eq!(cluster.server(minority).raw.raft.term, term);

    cluster.net.heal();
    cluster.tick(ELECTION_TICKS);
    assert_eq!(cluster.leader_of(&[1, 2, 3]), Some(leader));
    assert_eq!(cluster.revision(minority), last.revision);
    assert_eq!(cluster.agency_name(minority).as_deref(), Some("v5"));
}

#[test]
fn messages_lost_on_one_link_are_resent_once_it_heals() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let cut_off = cluster.others(leader)[0];
    cluster.net.cut(leader, cut_off);
    let applied = cluster.write(leader, "while cut");
    cluster.tick(3 * ELECTION_TICKS);
    assert!(cluster.revision(cut_off) < applied.revision);
    // The third server still hears the leader, so it refuses to help the
    // cut-off server elect itself.
    assert_eq!(cluster.server(leader).raw.raft.state, StateRole::Leader);

    cluster.net.heal();
    cluster.tick(ELECTION_TICKS);
    assert_eq!(cluster.revision(cut_off), applied.revision);
    assert_eq!(cluster.leader_of(&[1, 2, 3]), Some(leader));
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::new(3, 4);
    let leader = cluster.elect(&[1, 2, 3]);
    let behind = cluster.others(leader)[0];
    cluster.net.isolate(behind);
    let mut last = None;
    for i in 0..30 {
        last = Some(cluster.write(leader, &format!("v{i}")));
    }
    let last = last.unwrap();
    let compacted = cluster.server(leader).store.compacted_to();
    let behind_log = cluster.server(behind).raw.raft.raft_log.last_index();
    assert!(
        compacted > behind_log,
        "the leader compacted to {compacted}, the follower's log ends at {behind_log}"
    );
    let mut events = cluster.server(behind).events.subscribe();

    cluster.net.heal();
    cluster.tick(ELECTION_TICKS);
    assert_eq!(cluster.revision(behind), last.revision);
    assert_eq!(cluster.agency_name(behind).as_deref(), Some("v29"));
    assert!(cluster.server(behind).store.compacted_to() >= compacted);
    // Its watchers are told they missed what the snapshot covers.
    let mut told = false;
    while let Ok(event) = events.try_recv() {
        told |= event.r#type == EventType::Compacted as i32;
    }
    assert!(told, "no Compacted event after the snapshot");
}

#[test]
fn a_store_read_failing_while_applying_stops_that_server_instead_of_refusing_alone() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "v0");
    let broken = cluster.others(leader)[0];
    // The check of a rename reads the agency record.
    cluster.engines[&broken].fail_reads(b"c:");
    let (reply, _answer) = oneshot::channel();
    cluster
        .servers
        .get_mut(&leader)
        .unwrap()
        .handle(Request::Propose {
            actor: Box::new(admin()),
            command: Box::new(rename("v1")),
            key: Vec::new(),
            reply,
        })
        .unwrap();
    let (stopped, error) = cluster
        .try_settle()
        .expect_err("the broken server applies the write");
    assert_eq!(stopped, broken);
    assert!(matches!(error, RegistryError::Storage(_)), "{error}");
}

/// Hands `count` linearizable reads to server `on` at once (as the loop
/// takes everything queued before one Ready) and returns their answers and
/// the messages its Ready sent, which are back in flight.
fn concurrent_reads(
    cluster: &mut Cluster,
    on: u64,
    count: usize,
) -> (
    Vec<oneshot::Receiver<Result<(), RegistryError>>>,
    Vec<Message>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let server = cluster.servers.get_mut(&on).unwrap();
    let answers = (0..count)
        .map(|_| {
            let (reply, answer) = oneshot::channel();
            server.handle(Request::Read { reply, deadline }).unwrap();
            answer
        })
        .collect();
    server.on_ready().unwrap();
    let sent = cluster.net.deliver().delivered;
    cluster.net.endpoint(on).send(sent.clone());
    (answers, sent)
}

#[test]
fn reads_that_arrive_together_on_the_leader_share_one_heartbeat_round() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "v1");

    let (answers, sent) = concurrent_reads(&mut cluster, leader, 32);
    let heartbeats = sent
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat)
        .count();
    assert_eq!(
        heartbeats, 2,
        "32 reads taken before one Ready are confirmed by one heartbeat to each of the 2 followers"
    );
    cluster.settle();
    for mut answer in answers {
        assert!(
            matches!(answer.try_recv(), Ok(Ok(()))),
            "every read of the batch is answered once the quorum confirmed it"
        );
    }
}

#[test]
fn reads_that_arrive_while_a_heartbeat_round_is_under_way_share_the_next_one() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "v1");
    // The test's pace must not count: a round is given up on after a
    // heartbeat interval of real time, so make that interval long.
    cluster.servers.get_mut(&leader).unwrap().config.tick = Duration::from_secs(60);

    // A first batch: its heartbeat round is under way (sent, not answered).
    let (first, sent) = concurrent_reads(&mut cluster, leader, 4);
    // The rounds in flight: each carries its read request's context.
    let rounds_in = |sent: &[Message]| {
        sent.iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat)
            .map(|m| m.context.to_vec())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(rounds_in(&sent), 1);
    // Three more batches, each before a Ready of its own, while it is.
    let mut later = Vec::new();
    for _ in 0..3 {
        let (answers, sent) = concurrent_reads(&mut cluster, leader, 4);
        assert_eq!(
            rounds_in(&sent),
            1,
            "a Ready while a read index round is under way starts no other round"
        );
        later.extend(answers);
    }
    // The first round ends; the 12 reads that waited share the next one.
    let mut rounds = 0;
    for _ in 0..100 {
        for driver in cluster.servers.values_mut() {
            driver.on_ready().unwrap();
        }
        let delivery = cluster.net.deliver();
        if delivery.delivered.is_empty() {
            break;
        }
        rounds += delivery
            .delivered
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat && m.from == leader)
            .count();
        let mut inboxes: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
        for m in delivery.delivered {
            inboxes.entry(m.to).or_default().push(m);
        }
        for (to, messages) in inboxes {
            cluster
                .servers
                .get_mut(&to)
                .unwrap()
                .handle(Request::Step {
                    incarnation: 0,
                    messages,
                })
                .unwrap();
        }
    }
    // The first round's heartbeats (already counted) and one more round.
    assert_eq!(
        rounds,
        2 + 2,
        "the waiting reads shared one heartbeat round"
    );
    for mut answer in first.into_iter().chain(later) {
        assert!(
            matches!(answer.try_recv(), Ok(Ok(()))),
            "every read is answered once a round that started after it ended"
        );
    }
}

#[test]
fn reads_that_arrive_together_on_a_follower_share_one_request_to_the_leader() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "v1");
    let follower = cluster.others(leader)[0];

    let (answers, sent) = concurrent_reads(&mut cluster, follower, 32);
    let requests = sent
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgReadIndex)
        .count();
    assert_eq!(requests, 1, "32 reads ask the leader for one read index");
    cluster.settle();
    for mut answer in answers {
        assert!(matches!(answer.try_recv(), Ok(Ok(()))));
    }
}

#[test]
fn a_read_whose_index_is_never_applied_is_answered_unavailable_at_its_deadline() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let behind = cluster.others(leader)[0];
    // The follower hears the leader's heartbeats and its answers to read
    // index requests, never the entries it would need to reach that index.
    cluster.net.drop_kind(behind, MessageType::MsgAppend);
    let applied = cluster.write(leader, "v1");
    assert!(cluster.revision(behind) < applied.revision);

    let (reply, mut answer) = oneshot::channel();
    let deadline = Instant::now() + Duration::from_secs(2);
    let server = cluster.servers.get_mut(&behind).unwrap();
    server.handle(Request::Read { reply, deadline }).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.server(behind).waiting_reads.len(),
        1,
        "the read got its read index"
    );
    assert!(
        matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
        "the read is answered only once its index is applied"
    );

    let server = cluster.servers.get_mut(&behind).unwrap();
    server.expire_at(deadline);
    match answer.try_recv() {
        Ok(Err(RegistryError::Unavailable(why))) => {
            assert!(why.contains("retry"), "{why}");
        }
        other => panic!("the read past its deadline was answered {other:?}"),
    }
}

impl Cluster {
    fn freshness(&self, id: u64) -> Freshness {
        *self.server(id).freshness.borrow()
    }
}

#[test]
fn a_server_cut_off_from_its_leader_for_an_election_timeout_is_no_longer_current() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let cut_off = cluster.others(leader)[0];
    cluster.net.isolate(cut_off);
    // It keeps its leader for one (randomized) election timeout, then
    // stands for election; after one more election timeout without a
    // leader it can no longer tell its catalog is current.
    for _ in 0..ELECTION_TICKS {
        cluster.tick(1);
        assert_eq!(cluster.freshness(cut_off), Freshness::Current);
    }
    cluster.tick(3 * ELECTION_TICKS);
    assert_eq!(cluster.freshness(cut_off), Freshness::Leaderless);
    for id in cluster.others(cut_off) {
        assert_eq!(cluster.freshness(id), Freshness::Current, "server {id}");
    }

    cluster.net.heal();
    cluster.tick(ELECTION_TICKS);
    assert_eq!(cluster.freshness(cut_off), Freshness::Current);
}

#[test]
fn a_server_removed_from_the_cluster_is_no_longer_current() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let removed = cluster.others(leader)[0];
    let (reply, mut answer) = oneshot::channel();
    cluster
        .servers
        .get_mut(&leader)
        .unwrap()
        .handle(Request::Membership {
            op: MembershipOp::Remove(removed),
            key: Vec::new(),
            reply,
        })
        .unwrap();
    cluster.tick(3 * ELECTION_TICKS);
    let members = answer
        .try_recv()
        .expect("the removal was answered")
        .expect("the removal was applied");
    assert!(members.iter().all(|m| m.id != removed));
    assert_ne!(cluster.freshness(removed), Freshness::Current);
    for id in cluster.others(removed) {
        assert_eq!(cluster.freshness(id), Freshness::Current, "server {id}");
    }
}

impl Cluster {
    /// Hands a membership change to server `on` and ticks `ticks` times.
    fn change_membership(
        &mut self,
        on: u64,
        op: MembershipOp,
        ticks: usize,
    ) -> oneshot::Receiver<Result<Vec<Member>, RegistryError>> {
        self.change_membership_keyed(on, op, &[], ticks)
    }

    /// [`change_membership`](Self::change_membership) under idempotency
    /// key `key` (empty: none).
    fn change_membership_keyed(
        &mut self,
        on: u64,
        op: MembershipOp,
        key: &[u8],
        ticks: usize,
    ) -> oneshot::Receiver<Result<Vec<Member>, RegistryError>> {
        let answer = self.hand_membership(on, op, key);
        self.tick(ticks);
        answer
    }

    /// Hands a membership change to server `on`, nothing more: no Ready is
    /// handled and no message moves until the test says so.
    fn hand_membership(
        &mut self,
        on: u64,
        op: MembershipOp,
        key: &[u8],
    ) -> oneshot::Receiver<Result<Vec<Member>, RegistryError>> {
        let (reply, answer) = oneshot::channel();
        self.servers
            .get_mut(&on)
            .unwrap()
            .handle(Request::Membership {
                op,
                key: key.to_vec(),
                reply,
            })
            .unwrap();
        answer
    }

    /// How many membership change entries server `id`'s log holds.
    fn conf_change_entries(&self, id: u64) -> usize {
        let raft_log = &self.server(id).raw.raft.raft_log;
        let entries = raft_log
            .entries(
                raft_log.first_index(),
                u64::MAX,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap();
        entries
            .iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryConfChangeV2)
            .count()
    }

    fn conf(&self, id: u64) -> ConfState {
        self.server(id).raw.raft.prs().conf().to_conf_state()
    }
}

fn member(id: u64) -> Member {
    Member {
        id,
        peer_address: format!("127.0.0.1:{}", 7200 + id),
        client_address: String::new(),
        voter: false,
        incarnation: 0,
    }
}

#[test]
fn a_wiped_server_back_under_its_old_id_cannot_help_elect_a_leader_without_its_lost_write() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "before");
    let others = cluster.others(leader);
    let (wiped, behind) = (others[0], others[1]);
    // W is acknowledged by the leader and `wiped` alone.
    cluster.net.isolate(behind);
    let w = cluster.write(leader, "W");
    cluster.tick(1);
    assert_eq!(cluster.agency_name(wiped).as_deref(), Some("W"));
    assert_ne!(cluster.agency_name(behind).as_deref(), Some("W"));

    // `wiped` loses its disk and comes back founding afresh, as a server
    // started with an empty data directory did; the leader dies.
    cluster.start_server(wiped, Some(&[1, 2, 3]));
    cluster.net.heal();
    cluster.net.isolate(leader);
    for _ in 0..10 * ELECTION_TICKS {
        cluster.tick(1);
        if let Some(new) = cluster.leader_of(&[wiped, behind]) {
            assert!(
                cluster.revision(new) >= w.revision,
                "server {new} leads without the acknowledged write W (revision {} < {})",
                cluster.revision(new),
                w.revision
            );
        }
    }
    // `behind` drops everything from the wiped server.
    assert_eq!(cluster.leader_of(&[wiped, behind]), None);

    // Once the leader is back, the cluster goes on without the wiped
    // server (cut off here: a leader's heartbeat would stop it, as
    // `check_not_wiped` does).
    cluster.net.heal();
    cluster.net.isolate(wiped);
    let leader = cluster.elect(&[leader, behind]);
    let after = cluster.write(leader, "after");
    cluster.tick(ELECTION_TICKS);
    assert_eq!(cluster.revision(behind), after.revision);
    assert!(cluster.revision(wiped) < after.revision);
}

#[test]
fn a_wiped_server_removed_and_added_again_is_heard_afresh_and_catches_up() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "before");
    let wiped = cluster.others(leader)[0];
    cluster.start_server(wiped, Some(&[1, 2, 3]));
    cluster.net.isolate(wiped);
    let rest = cluster.others(wiped);
    let leader = cluster.elect(&rest);

    let mut removed =
        cluster.change_membership(leader, MembershipOp::Remove(wiped), 2 * ELECTION_TICKS);
    assert!(removed.try_recv().expect("answered").is_ok());
    // Added again, it starts empty and waits for a snapshot, as --join does.
    cluster.start_server(wiped, None);
    cluster.net.heal();
    let mut added =
        cluster.change_membership(leader, MembershipOp::Add(member(wiped)), 5 * ELECTION_TICKS);
    assert!(added.try_recv().expect("answered").is_ok());
    let last = cluster.write(leader, "after");
    cluster.tick(2 * ELECTION_TICKS);
    assert_eq!(cluster.revision(wiped), last.revision);
    assert_eq!(cluster.agency_name(wiped).as_deref(), Some("after"));
    assert!(cluster.conf(leader).voters.contains(&wiped));
}

/// The answer a server that does not lead gives a membership change.
fn refused_as_not_leader(answer: Result<Vec<Member>, RegistryError>, leader: u64) {
    match answer {
        Err(e @ RegistryError::NotLeader { .. }) => {
            let why = e.to_string();
            assert!(why.contains(&format!("server {leader}")), "{why}");
            assert!(why.contains("nothing was applied"), "{why}");
        }
        other => panic!("a follower answered a membership change with {other:?}"),
    }
}

#[test]
fn a_membership_change_sent_to_a_follower_is_refused_at_once_naming_the_leader_who_makes_it() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let follower = cluster.others(leader)[0];
    let mut answer = cluster.hand_membership(follower, MembershipOp::Remove(leader), &[]);
    refused_as_not_leader(
        answer
            .try_recv()
            .expect("answered before any message moved"),
        leader,
    );
    assert_eq!(cluster.conf(leader).voters, vec![1, 2, 3]);

    // Sent on to the leader it named, the removal is made, and the leader
    // it removed hands leadership over.
    let mut answer =
        cluster.change_membership(leader, MembershipOp::Remove(leader), 3 * ELECTION_TICKS);
    let members = answer
        .try_recv()
        .expect("the removal was answered")
        .expect("the removal was applied");
    assert!(members.iter().all(|m| m.id != leader));
    let remaining = cluster.others(leader);
    let new = cluster
        .leader_of(&remaining)
        .expect("the remaining servers have a leader of their own");
    assert_ne!(new, leader);
    let mut write = cluster.propose(follower, rename("after"));
    cluster.tick(1);
    let applied = write
        .try_recv()
        .expect("the write was answered")
        .expect("the write was applied");
    assert_eq!(cluster.revision(new), applied.revision);
}

#[test]
fn a_membership_change_sent_through_a_follower_right_after_another_gets_a_definite_answer() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let follower = cluster.others(leader)[0];
    let victim = cluster.others(leader)[1];
    // A change under way on the leader (not yet applied there), and the
    // next one sent through a follower at that moment: raft-rs would have
    // the leader drop it silently, leaving its client without an answer.
    cluster.start_server(4, None);
    let mut added = cluster.hand_membership(leader, MembershipOp::Add(member(4)), &[]);
    let mut removed = cluster.hand_membership(follower, MembershipOp::Remove(victim), &[]);
    cluster.tick(3 * ELECTION_TICKS);
    assert!(matches!(added.try_recv(), Ok(Ok(_))), "the addition");
    refused_as_not_leader(
        removed
            .try_recv()
            .expect("the change sent through a follower was answered"),
        leader,
    );
    assert!(cluster.conf(leader).voters.contains(&victim));

    // On the leader, a change while another is under way is refused at once
    // (nothing applied), and goes through once that one is done.
    let mut first = cluster.hand_membership(leader, MembershipOp::Remove(4), &[]);
    let mut second = cluster.hand_membership(leader, MembershipOp::Remove(victim), &[]);
    match second.try_recv().expect("answered at once") {
        Err(RegistryError::Unavailable(why)) => assert!(why.contains("in progress"), "{why}"),
        other => panic!("a second change under way was answered {other:?}"),
    }
    cluster.tick(3 * ELECTION_TICKS);
    assert!(matches!(first.try_recv(), Ok(Ok(_))), "the first removal");
    let mut again =
        cluster.change_membership(leader, MembershipOp::Remove(victim), 3 * ELECTION_TICKS);
    let members = again.try_recv().expect("answered").expect("applied");
    assert!(
        members.iter().all(|m| m.id != victim && m.id != 4),
        "{members:?}"
    );
}

#[test]
fn a_membership_change_repeated_under_its_key_answers_with_its_first_result_and_applies_once() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.start_server(4, None);
    cluster.net.isolate(4);
    let (add_key, remove_key) = ([4u8; 16], [5u8; 16]);
    let mut first = cluster.change_membership_keyed(
        leader,
        MembershipOp::Add(member(4)),
        &add_key,
        2 * ELECTION_TICKS,
    );
    let added = first.try_recv().expect("answered").expect("applied");
    assert!(added.iter().any(|m| m.id == 4 && !m.voter), "{added:?}");
    let changes = cluster.conf_change_entries(leader);

    // The answer was lost (a timeout, a dropped connection): the client
    // sends the same change again under the same key.
    let mut repeat = cluster.hand_membership(leader, MembershipOp::Add(member(4)), &add_key);
    assert_eq!(repeat.try_recv().expect("answered at once").unwrap(), added);
    cluster.tick(ELECTION_TICKS);
    assert_eq!(
        cluster.conf_change_entries(leader),
        changes,
        "nothing proposed again"
    );
    // Without the key the same repeat fails, confusingly, as "already a member".
    let mut unkeyed = cluster.hand_membership(leader, MembershipOp::Add(member(4)), &[]);
    match unkeyed.try_recv().unwrap() {
        Err(RegistryError::Catalog(CatalogError::FailedPrecondition(why))) => {
            assert!(why.contains("already a member"), "{why}")
        }
        other => panic!("an unkeyed repeat was answered {other:?}"),
    }

    let mut removal = cluster.change_membership_keyed(
        leader,
        MembershipOp::Remove(4),
        &remove_key,
        3 * ELECTION_TICKS,
    );
    let removed = removal.try_recv().expect("answered").expect("applied");
    assert!(removed.iter().all(|m| m.id != 4), "{removed:?}");
    let changes = cluster.conf_change_entries(leader);

    // The keys are in the replicated state: another leader answers alike.
    let other = cluster
        .others(leader)
        .into_iter()
        .find(|id| *id != 4)
        .unwrap();
    let (reply, _moved) = oneshot::channel();
    cluster
        .servers
        .get_mut(&other)
        .unwrap()
        .handle(Request::TransferLeader {
            to: Some(other),
            reply,
        })
        .unwrap();
    cluster.tick(2 * ELECTION_TICKS);
    assert_eq!(cluster.leader_of(&cluster.others(4)), Some(other));
    let mut repeat = cluster.hand_membership(other, MembershipOp::Remove(4), &remove_key);
    assert_eq!(
        repeat.try_recv().expect("answered at once").unwrap(),
        removed
    );
    let mut repeat = cluster.hand_membership(other, MembershipOp::Add(member(4)), &add_key);
    assert_eq!(repeat.try_recv().expect("answered at once").unwrap(), added);
    cluster.tick(ELECTION_TICKS);
    assert_eq!(
        cluster.conf_change_entries(other),
        changes,
        "nothing proposed again"
    );
    assert!(!cluster.conf(other).learners.contains(&4));
    assert!(!cluster.conf(other).voters.contains(&4));

    // A key reused for another change is refused, not answered with the
    // first change's result.
    let mut reused = cluster.hand_membership(other, MembershipOp::Remove(leader), &add_key);
    match reused.try_recv().unwrap() {
        Err(RegistryError::Catalog(CatalogError::InvalidArgument(why))) => {
            assert!(why.contains("another change"), "{why}")
        }
        other => panic!("a reused key was answered {other:?}"),
    }
}

#[test]
fn removing_the_leader_through_itself_hands_leadership_over_and_writes_go_on() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let mut answer =
        cluster.change_membership(leader, MembershipOp::Remove(leader), 3 * ELECTION_TICKS);
    let members = answer
        .try_recv()
        .expect("the removal was answered")
        .expect("the removal was applied");
    assert!(members.iter().all(|m| m.id != leader));
    let remaining = cluster.others(leader);
    let new = cluster.leader_of(&remaining).expect("a new leader");
    let applied = cluster.write(new, "after");
    cluster.tick(1);
    for id in remaining {
        assert_eq!(cluster.revision(id), applied.revision, "server {id}");
    }
}

#[test]
fn a_new_member_joins_as_a_learner_so_writes_go_on_while_it_is_down_and_a_founder_too() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "v0");
    // The fourth server is added before it runs (as `add-member` is).
    cluster.start_server(4, None);
    cluster.net.isolate(4);
    let mut added =
        cluster.change_membership(leader, MembershipOp::Add(member(4)), 2 * ELECTION_TICKS);
    let members = added
        .try_recv()
        .expect("the addition was answered")
        .expect("the addition was applied");
    assert!(members.iter().any(|m| m.id == 4 && !m.voter), "{members:?}");
    assert!(cluster.conf(leader).learners.contains(&4));

    // A founder goes down too: the three voters still have a quorum.
    let down = cluster
        .others(leader)
        .into_iter()
        .find(|id| *id != 4)
        .unwrap();
    cluster.net.isolate(down);
    let mut write = cluster.propose(leader, rename("v1"));
    cluster.tick(1);
    assert!(
        matches!(write.try_recv(), Ok(Ok(_))),
        "a write with two of three voters up was not applied"
    );

    // Back up, the fourth catches up and is promoted to voter.
    cluster.net.heal();
    cluster.tick(3 * ELECTION_TICKS);
    let last = cluster.write(leader, "v2");
    cluster.tick(ELECTION_TICKS);
    assert_eq!(cluster.revision(4), last.revision);
    let conf = cluster.conf(leader);
    assert!(conf.voters.contains(&4), "{conf:?}");
    assert!(conf.learners.is_empty(), "{conf:?}");
    let status = cluster.server(leader).status().unwrap();
    assert!(status.members.iter().any(|m| m.id == 4 && m.voter));
}

#[test]
fn leadership_moves_to_the_voter_named_whichever_server_is_asked() {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    let others = cluster.others(leader);
    let (asked, to) = (others[0], others[1]);
    let (reply, mut answer) = oneshot::channel();
    cluster
        .servers
        .get_mut(&asked)
        .unwrap()
        .handle(Request::TransferLeader {
            to: Some(to),
            reply,
        })
        .unwrap();
    cluster.tick(ELECTION_TICKS);
    assert_eq!(answer.try_recv().unwrap().unwrap(), Some(to));
    assert_eq!(cluster.leader_of(&[1, 2, 3]), Some(to));

    let (reply, mut answer) = oneshot::channel();
    cluster
        .servers
        .get_mut(&to)
        .unwrap()
        .handle(Request::TransferLeader {
            to: Some(99),
            reply,
        })
        .unwrap();
    match answer.try_recv().unwrap() {
        Err(RegistryError::Catalog(CatalogError::FailedPrecondition(why))) => {
            assert!(why.contains("not a member"), "{why}");
        }
        other => panic!("a transfer to a non-member was answered {other:?}"),
    }
}

/// A client writes A through one server; A is applied but the answer is
/// lost (the connection dropped after sending: outcome unknown). Another
/// client then writes B, acknowledged. The first client retries A through
/// another server. Returns the agency's name on every server afterwards,
/// the revisions of A's first attempt, of B, and of the retry's answer.
fn retry_after_an_unknown_outcome(key: &[u8]) -> (Vec<Option<String>>, u64, u64, u64) {
    let mut cluster = Cluster::new(3, 1000);
    let leader = cluster.elect(&[1, 2, 3]);
    cluster.write(leader, "v0");
    let others = cluster.others(leader);
    let mut first = cluster.propose_keyed(others[0], rename("A"), key);
    let a = first
        .try_recv()
        .expect("answered")
        .expect("applied")
        .revision;
    drop(first);
    let b = cluster.write(leader, "B").revision;
    let mut retry = cluster.propose_keyed(others[1], rename("A"), key);
    let answered = retry
        .try_recv()
        .expect("answered")
        .expect("not refused")
        .revision;
    cluster.tick(1);
    let names = (1..=3).map(|id| cluster.agency_name(id)).collect();
    for id in 1..=3 {
        assert_eq!(
            cluster.revision(id),
            cluster.revision(leader),
            "server {id}"
        );
    }
    (names, a, b, answered)
}

#[test]
fn without_an_idempotency_key_a_retried_write_applies_twice_and_lands_after_a_newer_one() {
    let (names, a, b, answered) = retry_after_an_unknown_outcome(&[]);
    assert!(a < b && b < answered, "{a} {b} {answered}");
    assert!(names.iter().all(|n| n.as_deref() == Some("A")), "{names:?}");
}

#[test]
fn a_write_retried_under_its_idempotency_key_applies_once_and_never_lands_last() {
    let (names, a, b, answered) = retry_after_an_unknown_outcome(&[7; 16]);
    assert_eq!(
        answered, a,
        "the retry answers with the first attempt's revision"
    );
    assert!(a < b);
    assert!(names.iter().all(|n| n.as_deref() == Some("B")), "{names:?}");
}

/// The catalog, whose snapshots wait for the test to open a gate: a
/// snapshot that takes as long to build as the test likes. It waits at most
/// [`Gate::PATIENCE`], then builds anyway, noting that it had to.
#[derive(Debug, Default)]
struct GatedSnapshots {
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// (open, builds started)
    state: std::sync::Mutex<(bool, usize)>,
    changed: std::sync::Condvar,
    /// A build waited out its patience: nobody opened the gate meanwhile.
    waited_out: std::sync::atomic::AtomicBool,
}

impl Gate {
    const PATIENCE: Duration = Duration::from_secs(3);

    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }

    fn builds_started(&self) -> usize {
        self.state.lock().unwrap().1
    }

    /// Waits (a bounded time) for a build to start on its thread; how many
    /// have.
    fn wait_for_a_build(&self) -> usize {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, Self::PATIENCE, |(_, started)| *started == 0)
            .unwrap();
        state.1
    }
}

impl crate::storage::StateMachine for GatedSnapshots {
    fn snapshot_data(&self, db: &Kv) -> Result<Vec<u8>, RegistryError> {
        let mut state = self.gate.state.lock().unwrap();
        state.1 += 1;
        self.gate.changed.notify_all();
        let (state, timeout) = self
            .gate
            .changed
            .wait_timeout_while(state, Gate::PATIENCE, |(open, _)| !*open)
            .unwrap();
        drop(state);
        if timeout.timed_out() {
            self.gate
                .waited_out
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        crate::storage::StateMachine::snapshot_data(&Catalog, db)
    }

    fn restore(&self, db: &Kv, batch: &mut Staged, data: &[u8]) -> Result<(), RegistryError> {
        crate::storage::StateMachine::restore(&Catalog, db, batch, data)
    }
}

#[test]
fn a_snapshot_slower_to_build_than_an_election_timeout_keeps_the_leader_writing_and_then_catches_up()
 {
    let machine = Arc::new(GatedSnapshots::default());
    let gate = machine.gate.clone();
    let mut cluster = Cluster::with_machine(3, 4, machine);
    cluster.wait_for_snapshots = false;
    let leader = cluster.elect(&[1, 2, 3]);
    let term = cluster.server(leader).raw.raft.term;
    let behind = cluster.others(leader)[0];
    cluster.net.isolate(behind);
    for i in 0..30 {
        cluster.write(leader, &format!("v{i}"));
    }
    cluster.net.heal();

    // The leader needs a snapshot for `behind`; while it is built (the gate
    // shut) the cluster runs for three election timeouts.
    cluster.tick(3 * ELECTION_TICKS);
    assert!(
        gate.wait_for_a_build() >= 1,
        "the leader never built a snapshot for server {behind}"
    );
    assert!(
        !gate.waited_out.load(std::sync::atomic::Ordering::SeqCst),
        "the snapshot was built on the consensus loop's own thread: the loop (heartbeats, \
         elections, writes) stood still until the build gave up waiting"
    );
    assert_eq!(cluster.leader_of(&[1, 2, 3]), Some(leader));
    assert_eq!(cluster.server(leader).raw.raft.term, term);
    // Writes meanwhile are applied and answered at once: the build reads a
    // frozen view of the store, not the store. More of them than the log
    // keeps (4 entries): it must not be compacted past the snapshot's index,
    // or the snapshot would be useless once built.
    for i in 0..12 {
        cluster.write(leader, &format!("during the build {i}"));
    }
    let mut answer = cluster.propose(leader, rename("during the build"));
    cluster.tick(2);
    let applied = answer
        .try_recv()
        .expect("the leader answered a write while a snapshot was built")
        .expect("the write was applied");
    assert!(cluster.server(leader).store.snapshots().building());

    // The build reads only now, after the writes: it still holds the state
    // at its own index. Were the writes in it, `behind` would apply them a
    // second time from the log, and its revision would be ahead.
    // `behind`'s answers are lost for a while: the snapshot reaches it
    // (and its send is reported done), but the leader does not hear that it
    // was installed. Writes go on meanwhile; the log must keep the entries
    // after the snapshot until `behind` has them, or it needs another.
    cluster.net.cut_one_way(behind, leader);
    gate.open();
    cluster.server(leader).store.snapshots().wait();
    cluster.tick(1);
    for i in 0..2 * ELECTION_TICKS {
        cluster.write(leader, &format!("after the build {i}"));
        cluster.tick(1);
    }
    cluster.net.heal();
    let last = cluster.write(leader, "the last write");
    cluster.tick(ELECTION_TICKS);
    assert_eq!(cluster.leader_of(&[1, 2, 3]), Some(leader));
    assert_eq!(cluster.server(leader).raw.raft.term, term);
    assert!(last.revision > applied.revision);
    assert_eq!(cluster.revision(behind), last.revision);
    assert_eq!(
        cluster.agency_name(behind).as_deref(),
        Some("the last write")
    );
    assert_eq!(gate.builds_started(), 1, "one build served the follower");
}

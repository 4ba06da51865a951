//! The consensus loop: one task owns the raft-rs `RawNode` and drives it
//! (tick, step, propose, Ready), in the order raft-rs documents:
//!
//! 1. leader messages are sent at once (a leader may send before it persists);
//! 2. a snapshot from the leader replaces log and catalog;
//! 3. every committed entry is applied (with the applied index) in one
//!    atomic batch in the catalog's store, and its clients answered and
//!    watchers told: raft-rs hands out only entries this server's log has
//!    synced and a majority holds, so the batch needs no flush (after a
//!    crash the rest replays from the log);
//! 4. new entries and the hard state are appended to the log and synced
//!    once for the whole Ready, when it must be;
//! 5. only then are the persisted messages sent, `advance_append` called,
//!    and the `LightReady`'s commit index and committed entries written,
//!    not flushed on their own;
//! 6. clients of those are answered likewise.
//!
//! A snapshot for a follower is built off this thread from a frozen view of
//! the catalog's store (`frozen.rs`): committed entries go on being applied
//! and answered meanwhile.
//!
//! Requests from clients queue up while a Ready is handled, so one flush
//! covers many writes (batching comes from the loop, not from timers).

// raft-rs' protobuf 2 types are built field by field, as its own code does.
#![allow(clippy::field_reassign_with_default)]

use crate::catalog::{self, Asker};
use crate::error::{CatalogError, RegistryError, StoreError};
use crate::idempotency::{self, Seen};
use crate::kv::{Kv, KvRead as _, Staged};
use crate::storage::{APPLIED, RaftStore};
use crate::transport::{Network, Report};
use lgsp_certs::{AgencyCode, SpiffeId};
use lgsp_proto::{
    ApplyResponse, Command, Member, MemberChange, MemberIncarnation, PeerStatusResponse, Proposal,
    Replica, StatusResponse, WatchEvent,
};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The most raft log entries (and watch history events) deleted at once.
const COMPACT_STEP: u64 = 1024;
/// The log may grow to this many entries (or 4 times `snapshot_entries`)
/// before it is compacted past a snapshot still to be delivered.
const MIN_PINNED_LOG: u64 = 10_000;
/// How long one read-index attempt may take before it is retried.
const READ_ATTEMPT: Duration = Duration::from_millis(1000);
/// How long a linearizable read may wait in all.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// A learner whose log matches the leader's to within this many entries is
/// caught up: the leader promotes it to voter.
const PROMOTE_LAG: u64 = 16;
/// How often a refused peer's batches are logged, at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

type Reply<T> = oneshot::Sender<Result<T, RegistryError>>;

/// A membership change.
#[derive(Debug, Clone)]
pub enum MembershipOp {
    /// Adds this server (id and addresses) as a learner: it catches up by
    /// snapshot without counting towards any quorum, and the leader
    /// promotes it to voter once its log is within a few entries of its own.
    Add(Member),
    /// Removes the server with this Raft id (voter or learner). A leader
    /// that removes itself hands leadership to another voter.
    Remove(u64),
}

enum Request {
    Propose {
        actor: Box<SpiffeId>,
        command: Box<Command>,
        /// The client's idempotency key (empty: none).
        key: Vec<u8>,
        reply: Reply<ApplyResponse>,
    },
    Read {
        reply: Reply<()>,
        /// When the caller stops waiting: the read is answered by then.
        deadline: Instant,
    },
    /// Messages from one peer, with the incarnation it sent them under (0:
    /// not said).
    Step {
        incarnation: u64,
        messages: Vec<Message>,
    },
    Membership {
        op: MembershipOp,
        /// The client's idempotency key (empty: none).
        key: Vec<u8>,
        reply: Reply<Vec<Member>>,
    },
    Status {
        reply: Reply<StatusResponse>,
    },
    /// What a peer asks before it founds or joins: this server's state and
    /// what it knows of the asking server.
    PeerStatus {
        asker: u64,
        reply: Reply<PeerStatusResponse>,
    },
    /// A consistent copy of the catalog for a backup, taken between two
    /// Readies (a frozen view, read on a thread of its own): the state
    /// machine's data, the applied index and revision.
    Backup {
        reply: Reply<Backup>,
    },
    /// Hands leadership to `to`, or (`None`) to the most caught-up other
    /// voter if this server leads; answers with the server asked to take
    /// over.
    TransferLeader {
        to: Option<u64>,
        reply: Reply<Option<u64>>,
    },
}

/// A copy of the catalog as applied at one index (see
/// [`RaftHandle::backup`]).
#[derive(Debug)]
pub struct Backup {
    /// The encoded `CatalogSnapshot`, as a Raft snapshot carries it.
    pub catalog: Vec<u8>,
    /// The Raft index it was taken at.
    pub applied_index: u64,
    /// The catalog revision it holds.
    pub revision: u64,
}

/// Whether this server can tell that its catalog is current. A watch on a
/// server that cannot ends, so that its watcher goes to another server
/// instead of believing a stale catalog is fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// A leader is known, or was less than an election timeout ago.
    Current,
    /// No leader has been known for an election timeout or more (cut off
    /// from the others, or no quorum).
    Leaderless,
    /// This server is not a member of the cluster (removed, or not yet
    /// added).
    Removed,
}

/// A handle to the consensus loop, cheap to clone.
#[derive(Clone, Debug)]
pub struct RaftHandle {
    tx: mpsc::Sender<Request>,
    events: broadcast::Sender<WatchEvent>,
    freshness: tokio::sync::watch::Receiver<Freshness>,
    /// How long without a leader makes this server [`Freshness::Leaderless`].
    election_timeout: Duration,
    db: Kv,
    log: Kv,
    ca: Arc<Vec<rustls_pki_types::CertificateDer<'static>>>,
    province: AgencyCode,
    /// This server's Raft id.
    pub id: u64,
}

impl RaftHandle {
    /// The agency that runs the registry (the provincial IT department),
    /// from this server's own certificate.
    pub fn province(&self) -> &AgencyCode {
        &self.province
    }

    /// This server's store, as applied here: reading it directly is a stale
    /// read unless [`read_index`](Self::read_index) was awaited first.
    pub fn db(&self) -> &Kv {
        &self.db
    }

    /// This server's Raft log and hard state (see `storage.rs`).
    pub fn log(&self) -> &Kv {
        &self.log
    }

    /// Changes after now, in revision order, as this server applies them:
    /// each is sent once its batch is written and the Ready's flush is done
    /// (see the module docs). A receiver that lags loses events and must
    /// reload.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    /// Fails with [`RegistryError::Unavailable`], saying why, when this
    /// server cannot tell that its catalog is current.
    pub fn check_fresh(&self) -> Result<(), RegistryError> {
        let freshness = *self.freshness.borrow();
        match freshness {
            Freshness::Current => Ok(()),
            stale => Err(self.stale_error(stale)),
        }
    }

    /// Resolves, with the [`RegistryError::Unavailable`] that says why, once
    /// this server can no longer tell that its catalog is current (at once
    /// if it already cannot); with [`RegistryError::ShuttingDown`] when the
    /// consensus loop stops.
    pub async fn until_stale(&self) -> RegistryError {
        let mut freshness = self.freshness.clone();
        let stale = match freshness.wait_for(|f| *f != Freshness::Current).await {
            Ok(stale) => *stale,
            Err(_) => return RegistryError::ShuttingDown,
        };
        self.stale_error(stale)
    }

    fn stale_error(&self, stale: Freshness) -> RegistryError {
        RegistryError::Unavailable(match stale {
            Freshness::Removed => format!(
                "registry server {} is not a member of the registry cluster (removed, or not yet added): its catalog may be stale; watch another server",
                self.id
            ),
            _ => format!(
                "registry server {} has known no leader for {} ms or more (cut off from the other servers, or no quorum): its catalog may be stale; watch another server",
                self.id,
                self.election_timeout.as_millis()
            ),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, RegistryError> {
        self.call_or(make, || RegistryError::ShuttingDown).await
    }

    /// Sends a request to the loop; `lost` is the error when the loop
    /// stops after taking the request but before answering it.
    async fn call_or<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
        lost: impl FnOnce() -> RegistryError,
    ) -> Result<T, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| RegistryError::ShuttingDown)?;
        rx.await.map_err(|_| lost())?
    }

    /// Proposes a catalog command and waits until it is applied here. Fails
    /// with the catalog's refusal (checked here first, then again when
    /// applied), [`RegistryError::Unavailable`] when no leader is known, or
    /// [`RegistryError::Indeterminate`] when the outcome is unknown. Under
    /// an idempotency key (`key`, empty for none) a command already applied
    /// is not applied again: the answer is its first outcome (see
    /// `idempotency.rs`).
    pub async fn propose(
        &self,
        actor: SpiffeId,
        command: Command,
        key: Vec<u8>,
    ) -> Result<ApplyResponse, RegistryError> {
        crate::idempotency::check_key(&key)?;
        // Only what does not depend on this server's copy of the catalog is
        // checked here: a server that is behind must never refuse from its
        // stale state (compare-and-set, "agency must exist" are decided when
        // the command is applied, in log order, on every server alike).
        let asker = Asker {
            actor: &actor,
            province: &self.province,
            now_unix: crate::calendar::unix_now_ms() / 1000,
        };
        let (_, _, value) = catalog::precheck(&asker, &command)?;
        if let Some(lgsp_proto::catalog_record::Value::Crl(crl)) = &value {
            lgsp_certs::inspect::verify_crl(&crl.der, &self.ca)
                .map_err(|e| CatalogError::InvalidArgument(e.to_string()))?;
        }
        // Once the loop has the proposal it may reach the leader and commit
        // even if this server stops before it hears so: "shutting down" here
        // would tell the client, wrongly, that nothing was applied.
        self.call_or(
            |reply| Request::Propose {
                actor: Box::new(actor),
                command: Box::new(command),
                key,
                reply,
            },
            || {
                RegistryError::Indeterminate(
                    "the registry server stopped before the write's outcome was known; it may or may not be applied: read it back before retrying".into(),
                )
            },
        )
        .await
    }

    /// Waits until this server has applied everything committed before the
    /// call (Raft read index), so a read after it is linearizable.
    pub async fn read_index(&self) -> Result<(), RegistryError> {
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            match self.call(|reply| Request::Read { reply, deadline }).await {
                Err(RegistryError::Unavailable(why)) if Instant::now() < deadline => {
                    tracing::debug!(%why, "read index not confirmed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Hands messages from a peer, sent under its data directory's
    /// `incarnation` (0: not said), to Raft. A member known under another
    /// incarnation has its messages dropped, with a logged reason.
    pub async fn step(
        &self,
        incarnation: u64,
        messages: Vec<Message>,
    ) -> Result<(), RegistryError> {
        self.tx
            .send(Request::Step {
                incarnation,
                messages,
            })
            .await
            .map_err(|_| RegistryError::ShuttingDown)
    }

    /// What server `asker` learns before it founds or joins a cluster:
    /// this server's state, and the incarnation it knows `asker` by.
    pub async fn peer_status(&self, asker: u64) -> Result<PeerStatusResponse, RegistryError> {
        self.call(|reply| Request::PeerStatus { asker, reply })
            .await
    }

    /// Adds a learner or removes a member (joint consensus, left
    /// explicitly); returns the members once the change is complete. Only
    /// the leader makes the change: another server fails at once with
    /// [`RegistryError::NotLeader`] (naming the leader) or
    /// [`RegistryError::Unavailable`] (none known), and the leader with
    /// `Unavailable` while another change is under way; nothing is applied
    /// then. Under an idempotency key (`key`, empty for none) a change
    /// applied before answers with the members it left, and is not made
    /// again.
    pub async fn change_membership(
        &self,
        op: MembershipOp,
        key: Vec<u8>,
    ) -> Result<Vec<Member>, RegistryError> {
        crate::idempotency::check_key(&key)?;
        self.call_or(
            |reply| Request::Membership { op, key, reply },
            || {
                RegistryError::Indeterminate(
                    "the registry server stopped before the membership change completed; check `lgsp registry status`".into(),
                )
            },
        )
        .await
    }

    /// A copy of the whole catalog for a backup, linearizable: taken after
    /// a read barrier, so it holds every write acknowledged before the
    /// call, and by the consensus loop between two Readies, so it is the
    /// catalog at one applied index. Fails as [`read_index`](Self::read_index)
    /// does, or when the store cannot be read.
    pub async fn backup(&self) -> Result<Backup, RegistryError> {
        self.read_index().await?;
        self.call(|reply| Request::Backup { reply }).await
    }

    /// This server's view of the cluster: its id, role, the leader it knows,
    /// term, commit and applied indexes, catalog revision, members. Fails
    /// when the consensus loop has stopped or the store cannot be read.
    pub async fn status(&self) -> Result<StatusResponse, RegistryError> {
        self.call(|reply| Request::Status { reply }).await
    }

    /// If this server leads, hands leadership to the most caught-up other
    /// voter and returns it (`None` when it does not lead or is alone).
    /// The transfer completes when that server wins its election.
    pub async fn transfer_leadership(&self) -> Result<Option<u64>, RegistryError> {
        self.call(|reply| Request::TransferLeader { to: None, reply })
            .await
    }

    /// Asks the leader (through this server, whichever it is) to hand
    /// leadership to voter `to`. Fails with
    /// [`CatalogError::FailedPrecondition`] when `to` is not a voter, and
    /// [`RegistryError::Unavailable`] when no leader is known. The
    /// transfer completes when `to` wins its election: watch the status.
    pub async fn transfer_leadership_to(&self, to: u64) -> Result<(), RegistryError> {
        self.call(|reply| Request::TransferLeader {
            to: Some(to),
            reply,
        })
        .await
        .map(|_| ())
    }
}

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// This server's Raft id.
    pub id: u64,
    /// How often Raft ticks; elections and heartbeats count in ticks.
    pub tick: Duration,
    /// Ticks without hearing a leader before a follower stands for election.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats; less than `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Log entries kept before the oldest are compacted away, a step at a
    /// time and never past the applied index; a follower that needs older
    /// ones catches up by snapshot.
    pub snapshot_entries: u64,
    /// Changes kept for watchers; one older than this must reload.
    pub watch_history: u64,
    /// How long a proposal may wait to be applied before its outcome is
    /// reported unknown ([`RegistryError::Indeterminate`]).
    pub propose_timeout: Duration,
    /// The CA certificates (DER) a published CRL must be signed by; checked
    /// before the CRL is proposed. Empty: no CRL is accepted.
    pub ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The agency that runs the registry (from this server's certificate):
    /// its admin certificates act as the provincial admin.
    pub province: AgencyCode,
    /// This server's data directory incarnation (see `incarnation.rs`).
    pub incarnation: u64,
}

/// A linearizable read: answered once this server has applied up to its
/// read index, or with [`RegistryError::Unavailable`] at its deadline.
struct PendingRead {
    reply: Reply<()>,
    since: Instant,
    deadline: Instant,
}

struct PendingMembership {
    op: MembershipOp,
    /// The client's idempotency key (empty: none).
    key: Vec<u8>,
    reply: Reply<Vec<Member>>,
    deadline: Instant,
}

struct Driver {
    raw: RawNode<RaftStore>,
    store: RaftStore,
    transport: Arc<dyn Network>,
    config: LoopConfig,
    next_id: u64,
    proposals: HashMap<u64, (Reply<ApplyResponse>, Instant)>,
    /// Reads taken since the last Ready: they share one read index
    /// request (one heartbeat round on the leader), made in `on_ready`.
    read_batch: Vec<PendingRead>,
    /// Reads waiting for their read index, by request, with the end of
    /// this attempt.
    reads: HashMap<u64, (Vec<PendingRead>, Instant)>,
    /// Reads that have their read index, waiting to apply up to it.
    waiting_reads: Vec<(u64, PendingRead)>,
    /// When the last read index was asked for.
    read_requested: Option<Instant>,
    membership: Option<PendingMembership>,
    events: broadcast::Sender<WatchEvent>,
    // Filled while a Ready is handled, released after the flush.
    replies: Vec<(Reply<ApplyResponse>, Result<ApplyResponse, RegistryError>)>,
    published: Vec<WatchEvent>,
    membership_done: Option<(Reply<Vec<Member>>, ConfState, Vec<u8>)>,
    members_changed: bool,
    /// Ticks in a row without a known leader.
    leaderless_ticks: usize,
    freshness: tokio::sync::watch::Sender<Freshness>,
    /// The incarnation each member was first heard under, as recorded in
    /// the replicated member records.
    incarnations: BTreeMap<u64, u64>,
    /// When the leader last proposed recording a member's incarnation.
    incarnations_proposed: HashMap<u64, Instant>,
    /// An incarnation was recorded in the batch being applied: flush it
    /// before going on. Peers check the record when they restart, before
    /// the log replays, so it must not wait for a later sync.
    flush_applied: bool,
    /// When a refused peer's batches were last logged, by peer.
    refusals_logged: HashMap<u64, Instant>,
    /// The index of the last entry applied (or snapshot installed).
    applied: u64,
}

/// Starts the consensus loop over `store`. The loop ends (after a last
/// flush) when `shutdown` fires or the server meets a fatal condition, which
/// it returns.
pub fn start(
    store: RaftStore,
    transport: Arc<dyn Network>,
    mut reports: mpsc::UnboundedReceiver<Report>,
    config: LoopConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<
    (
        RaftHandle,
        tokio::task::JoinHandle<Result<(), RegistryError>>,
    ),
    RegistryError,
> {
    let mut driver = Driver::new(store, transport, config)?;
    let snapshot_built = driver.store.snapshots().done();
    let (tx, mut rx) = mpsc::channel::<Request>(4096);
    let handle = RaftHandle {
        tx,
        events: driver.events.clone(),
        freshness: driver.freshness.subscribe(),
        election_timeout: driver.config.tick * driver.config.election_ticks as u32,
        db: driver.store.db().clone(),
        log: driver.store.log().clone(),
        ca: Arc::new(driver.config.ca.clone()),
        province: driver.config.province.clone(),
        id: driver.config.id,
    };
    // The loop blocks on fsync: it gets a thread of its own, so that a flush
    // never stalls the gRPC tasks of the server's runtime.
    let (done_tx, done_rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RegistryError::Raft(format!("cannot start the consensus thread: {e}")))?;
    let run = async move {
        let mut ticker = tokio::time::interval(driver.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = ticker.tick() => driver.tick(),
                request = rx.recv() => {
                    let Some(request) = request else { break Ok(()) };
                    if let Err(e) = driver.handle(request) {
                        break Err(e);
                    }
                    // Take whatever else is queued: one Ready, one flush, for all of it.
                    let mut fatal = None;
                    for _ in 0..1024 {
                        match rx.try_recv() {
                            Ok(r) => if let Err(e) = driver.handle(r) { fatal = Some(e); break; },
                            Err(_) => break,
                        }
                    }
                    if let Some(e) = fatal { break Err(e); }
                }
                Some(report) = reports.recv() => driver.report(report),
                // A snapshot was built: raft-rs may send it now.
                () = snapshot_built.notified() => {}
                _ = shutdown.changed() => break Ok(()),
            }
            if let Err(e) = driver.on_ready() {
                break Err(e);
            }
        };
        let _ = driver.store.flush();
        if let Err(error) = &result {
            tracing::error!(%error, "registry consensus loop stopped");
        }
        result
    };
    // Everything the loop logs carries the server's id.
    let span = tracing::info_span!("raft", id = handle.id);
    std::thread::Builder::new()
        .name(format!("raft-{}", handle.id))
        .spawn(move || {
            let _ = done_tx.send(runtime.block_on(tracing::Instrument::instrument(run, span)));
        })
        .map_err(|e| RegistryError::Raft(format!("cannot start the consensus thread: {e}")))?;
    let task = tokio::spawn(async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err(RegistryError::Raft("the consensus thread died".into())))
    });
    Ok((handle, task))
}

/// Removes and returns the waiters whose deadline has passed.
fn take_expired<T>(waiting: &mut HashMap<u64, (T, Instant)>, now: Instant) -> Vec<T> {
    let expired: Vec<u64> = waiting
        .iter()
        .filter(|(_, (_, deadline))| *deadline <= now)
        .map(|(id, _)| *id)
        .collect();
    expired
        .into_iter()
        .filter_map(|id| waiting.remove(&id).map(|(waiter, _)| waiter))
        .collect()
}

fn rand_start() -> u64 {
    // Request ids only need to be unique on this server across restarts.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

impl Driver {
    /// A consensus loop over `store` that sends through `transport`, not
    /// yet running: [`start`] runs it on a thread of its own, and tests
    /// drive it step by step.
    fn new(
        store: RaftStore,
        transport: Arc<dyn Network>,
        config: LoopConfig,
    ) -> Result<Self, RegistryError> {
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: store.applied()?,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, store.clone(), &crate::raft_log::logger())?;
        for m in catalog::members(store.db())? {
            transport.set_address(m.id, &m.peer_address);
        }
        let incarnations = recorded_incarnations(store.db())?;
        let (events, _) = broadcast::channel(4096);
        Ok(Self {
            raw,
            store,
            transport,
            next_id: rand_start(),
            config,
            proposals: HashMap::new(),
            read_batch: Vec::new(),
            reads: HashMap::new(),
            waiting_reads: Vec::new(),
            read_requested: None,
            membership: None,
            events,
            replies: Vec::new(),
            published: Vec::new(),
            membership_done: None,
            members_changed: false,
            leaderless_ticks: 0,
            freshness: tokio::sync::watch::Sender::new(Freshness::Current),
            incarnations,
            incarnations_proposed: HashMap::new(),
            flush_applied: false,
            refusals_logged: HashMap::new(),
            applied: raft_config.applied,
        })
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn handle(&mut self, request: Request) -> Result<(), RegistryError> {
        match request {
            Request::Propose {
                actor,
                command,
                key,
                reply,
            } => {
                let request_id = self.id();
                let proposal = Proposal {
                    request_id,
                    origin: self.config.id,
                    actor: actor.to_string(),
                    command: Some(*command),
                    at_unix_ms: crate::calendar::unix_now_ms(),
                    member_incarnation: None,
                    idempotency_key: key,
                };
                match self.raw.propose(vec![], proposal.encode_to_vec()) {
                    Ok(()) => {
                        self.proposals.insert(
                            request_id,
                            (reply, Instant::now() + self.config.propose_timeout),
                        );
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(self.no_leader()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Request::Read { reply, deadline } => {
                let since = Instant::now();
                // A read never outwaits a write: a server that got its read
                // index and then lost the leader would otherwise hold it
                // until the leader came back.
                let deadline = deadline.min(since + self.config.propose_timeout);
                // Asked for in `on_ready`, with every other read taken
                // before it.
                self.read_batch.push(PendingRead {
                    reply,
                    since,
                    deadline,
                });
            }
            Request::Step {
                incarnation,
                messages,
            } => {
                for m in messages {
                    if !self.transport.accepts(m.from) || !self.admits(m.from, incarnation) {
                        continue;
                    }
                    self.check_not_wiped(&m)?;
                    match self.raw.step(m) {
                        Ok(()) | Err(raft::Error::StepPeerNotFound) => {}
                        Err(e) => tracing::debug!(error = %e, "raft refused a message"),
                    }
                }
            }
            Request::Membership { op, key, reply } => self.propose_membership(op, key, reply),
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::PeerStatus { asker, reply } => {
                let _ = reply.send(self.peer_status(asker));
            }
            Request::Backup { reply } => {
                // The catalog as applied now, copied off this thread: the
                // loop goes on applying while a large catalog is read.
                let view = self.store.freeze();
                let copy = move || {
                    let backup = catalog::snapshot_data(&view).and_then(|catalog| {
                        Ok(Backup {
                            catalog,
                            applied_index: crate::kv::read_u64(&view, crate::storage::APPLIED)?
                                .unwrap_or(0),
                            revision: catalog::revision(&view)?,
                        })
                    });
                    let _ = reply.send(backup);
                };
                if let Err(e) = std::thread::Builder::new()
                    .name("registry-backup".into())
                    .spawn(copy)
                {
                    tracing::error!(error = %e, "cannot start a thread to copy the catalog for a backup");
                }
            }
            Request::TransferLeader { to: None, reply } => {
                let _ = reply.send(Ok(self.hand_over()));
            }
            Request::TransferLeader {
                to: Some(to),
                reply,
            } => {
                let _ = reply.send(self.transfer_to(to).map(Some));
            }
        }
        Ok(())
    }

    /// If this server leads, starts handing leadership to the voter of the
    /// (incoming) configuration whose log matches the most (it can take
    /// over at once); returns it.
    fn hand_over(&mut self) -> Option<u64> {
        if self.raw.raft.state != StateRole::Leader {
            return None;
        }
        let own = self.config.id;
        let voters = self.raw.raft.prs().conf().to_conf_state().voters;
        let target = voters
            .into_iter()
            .filter(|id| *id != own)
            .filter_map(|id| self.raw.raft.prs().get(id).map(|p| (id, p.matched)))
            .max_by_key(|(id, matched)| (*matched, std::cmp::Reverse(*id)))
            .map(|(id, _)| id)?;
        self.raw.transfer_leader(target);
        Some(target)
    }

    /// Asks the leader to hand leadership to voter `to` (a follower passes
    /// the request on to the leader it knows).
    fn transfer_to(&mut self, to: u64) -> Result<u64, RegistryError> {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if !cs.voters.contains(&to) {
            let what = if cs.learners.contains(&to) {
                "a learner (it becomes a voter once it has caught up)"
            } else {
                "not a member"
            };
            return Err(CatalogError::FailedPrecondition(format!(
                "server {to} is {what}: leadership goes to a voter only (voters: {:?})",
                cs.voters
            ))
            .into());
        }
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return Err(self.no_leader());
        }
        if self.raw.raft.leader_id != to {
            self.raw.transfer_leader(to);
        }
        Ok(to)
    }

    /// A leader that is no longer a voter of the (incoming) configuration
    /// stays leader in raft-rs 0.7, dropping every proposal: it hands
    /// leadership to the most caught-up remaining voter instead, however
    /// the removal reached it.
    fn step_aside_if_removed(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.lead_transferee.is_some() {
            return;
        }
        let cs = raft.prs().conf().to_conf_state();
        if cs.voters.contains(&self.config.id) {
            return;
        }
        if let Some(to) = self.hand_over() {
            tracing::info!(
                to,
                "this server leads but is no longer a voter: handing leadership over"
            );
        }
    }

    /// The leader promotes each learner whose log has caught up with its
    /// own (matched within [`PROMOTE_LAG`] entries) to voter, one at a
    /// time, when no other membership change is under way.
    fn promote_caught_up_learners(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || raft.has_pending_conf()
            || self.membership.is_some()
            || raft.lead_transferee.is_some()
        {
            return;
        }
        let cs = raft.prs().conf().to_conf_state();
        if !cs.voters_outgoing.is_empty() {
            return;
        }
        let last = raft.raft_log.last_index();
        let Some(learner) = cs.learners.iter().copied().find(|id| {
            raft.prs().get(*id).is_some_and(|p| {
                p.state == raft::ProgressState::Replicate
                    && p.recent_active
                    && p.matched + PROMOTE_LAG >= last
            })
        }) else {
            return;
        };
        let mut single = ConfChangeSingle::default();
        single.node_id = learner;
        single.set_change_type(ConfChangeType::AddNode);
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Explicit);
        cc.set_changes(vec![single].into());
        match self.raw.propose_conf_change(vec![], cc) {
            Ok(()) => tracing::info!(learner, "the learner has caught up: promoting it to voter"),
            Err(e) => tracing::debug!(learner, error = %e, "could not propose promoting a learner"),
        }
    }

    /// Whether a batch from `from`, sent under `incarnation`, may be
    /// stepped. A member recorded under another incarnation was wiped or
    /// replaced: it is refused until it is removed from the cluster (and
    /// may be added again). The leader records the incarnation a member is
    /// first heard under, through the log, so every server checks it.
    fn admits(&mut self, from: u64, incarnation: u64) -> bool {
        if incarnation == 0 {
            return true;
        }
        match self.incarnations.get(&from) {
            Some(known) if *known == incarnation => true,
            Some(known) => {
                let known = *known;
                let now = Instant::now();
                let due = self
                    .refusals_logged
                    .get(&from)
                    .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_EVERY);
                if due {
                    self.refusals_logged.insert(from, now);
                    tracing::warn!(
                        peer = from,
                        incarnation = format_args!("{incarnation:016x}"),
                        known = format_args!("{known:016x}"),
                        "dropping messages from server {from}: it runs from a data directory other than the one it was a member with \
                         (wiped or replaced), and must not vote or count towards a quorum under its old id; \
                         remove it (`lgsp registry remove-member --id {from}`) and add it again (under a new id, with --join), \
                         or restore its data directory from a backup"
                    );
                }
                false
            }
            None => {
                self.record_incarnation(from, incarnation);
                true
            }
        }
    }

    /// On the leader, proposes recording member `id`'s incarnation, at
    /// most once a second per member until it is applied.
    fn record_incarnation(&mut self, id: u64, incarnation: u64) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.prs().get(id).is_none() {
            return;
        }
        let now = Instant::now();
        if self
            .incarnations_proposed
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(1))
        {
            return;
        }
        let proposal = Proposal {
            origin: self.config.id,
            member_incarnation: Some(MemberIncarnation { id, incarnation }),
            ..Default::default()
        };
        if self.raw.propose(vec![], proposal.encode_to_vec()).is_ok() {
            self.incarnations_proposed.insert(id, now);
        }
    }

    /// Applies the record of a member's incarnation: the first one recorded
    /// stays, and only for a member of the configuration as applied so far
    /// (so every server decides alike).
    fn apply_incarnation(
        &mut self,
        batch: &mut Staged,
        recorded: &MemberIncarnation,
    ) -> Result<(), RegistryError> {
        if self.raw.raft.prs().get(recorded.id).is_none() || recorded.incarnation == 0 {
            return Ok(());
        }
        let mut member = Member::default();
        for (key, value) in batch.read_prefix(MEMBER_PREFIX)? {
            let m = Member::decode(value.as_slice()).map_err(|e| StoreError::Damaged {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: e.to_string(),
            })?;
            if m.id == recorded.id {
                member = m;
            }
        }
        if member.incarnation != 0 {
            return Ok(());
        }
        member.id = recorded.id;
        member.incarnation = recorded.incarnation;
        catalog::put_member(batch, &member);
        self.incarnations.insert(recorded.id, recorded.incarnation);
        self.flush_applied = true;
        tracing::info!(
            peer = recorded.id,
            incarnation = format_args!("{:016x}", recorded.incarnation),
            "recorded a member's data directory incarnation"
        );
        Ok(())
    }

    fn peer_status(&self, asker: u64) -> Result<PeerStatusResponse, RegistryError> {
        let cs = self.store.conf_state()?;
        let db = self.store.db();
        Ok(PeerStatusResponse {
            id: self.config.id,
            applied_index: self.store.applied()?,
            voters: cs.voters,
            learners: cs.learners,
            incarnation: self.config.incarnation,
            known_incarnation: self.incarnations.get(&asker).copied().unwrap_or(0),
            founders: crate::incarnation::founders(db)?
                .map(|f| f.into_iter().collect())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    /// A leader that believes this server holds entries it does not have
    /// means the data directory was wiped (raft-rs would panic on it).
    fn check_not_wiped(&self, m: &Message) -> Result<(), RegistryError> {
        if m.get_msg_type() == MessageType::MsgHeartbeat
            && m.commit > self.raw.raft.raft_log.last_index()
        {
            return Err(RegistryError::Config(format!(
                "the leader (server {}) says server {} has entries up to {}, but its data directory holds only up to {}: \
                 was the data directory wiped? A server that lost its data must rejoin under a new id: \
                 `lgsp registry remove-member {}`, then `lgsp registry add-member` with a new id and start it with --join",
                m.from,
                self.config.id,
                m.commit,
                self.raw.raft.raft_log.last_index(),
                self.config.id
            )));
        }
        Ok(())
    }

    fn no_leader(&self) -> RegistryError {
        RegistryError::Unavailable(format!(
            "registry server {} knows no leader at the moment (election in progress or no quorum); the request was not applied, retry",
            self.config.id
        ))
    }

    /// The error for a request only the leader takes, on a server that
    /// does not lead: names the leader and its client address when known.
    fn not_leader(&self, what: &str) -> RegistryError {
        let leader = self.raw.raft.leader_id;
        if leader == raft::INVALID_ID {
            return self.no_leader();
        }
        let leader_address = catalog::members(self.store.db())
            .ok()
            .and_then(|ms| ms.into_iter().find(|m| m.id == leader))
            .map(|m| m.client_address)
            .unwrap_or_default();
        let at = if leader_address.is_empty() {
            String::new()
        } else {
            format!(" at {leader_address}")
        };
        RegistryError::NotLeader {
            why: format!(
                "registry server {} is not the leader: {what} is made by the leader, server {leader}{at}; \
                 nothing was applied: send it there (lgsp commands do so themselves, when given every server)",
                self.config.id
            ),
            leader_address,
        }
    }

    /// Starts a membership change on the leader. Every check here is
    /// linearizable: the leader has no configuration change pending (raft-rs
    /// sets one pending up to its last index when it takes over), so every
    /// change in the log is applied here, with the keys it recorded.
    fn propose_membership(&mut self, op: MembershipOp, key: Vec<u8>, reply: Reply<Vec<Member>>) {
        // A follower would forward the change to the leader inside Raft,
        // which drops it silently when a change is pending there: the
        // client would wait for an outcome that never comes.
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader("a membership change")));
            return;
        }
        let joint = !self
            .raw
            .raft
            .prs()
            .conf()
            .to_conf_state()
            .voters_outgoing
            .is_empty();
        if let Some(to) = self.raw.raft.lead_transferee {
            let _ = reply.send(Err(RegistryError::Unavailable(format!(
                "registry server {} is handing leadership to server {to}; nothing was applied: retry in a moment",
                self.config.id
            ))));
            return;
        }
        if self.membership.is_some() || self.raw.raft.has_pending_conf() || joint {
            let _ = reply.send(Err(RegistryError::Unavailable(
                "another membership change is in progress (or a learner is being promoted); nothing was applied: retry when it completes".into(),
            )));
            return;
        }
        let now_ms = crate::calendar::unix_now_ms();
        let digest = match &op {
            MembershipOp::Add(m) => {
                let mut asked = m.clone();
                asked.voter = false;
                asked.incarnation = 0;
                idempotency::membership_digest("add", &asked)
            }
            MembershipOp::Remove(id) => idempotency::membership_digest(
                "remove",
                &Member {
                    id: *id,
                    ..Default::default()
                },
            ),
        };
        if !key.is_empty() {
            match idempotency::lookup_membership(self.store.db(), &key, now_ms, digest) {
                Ok(None) => {}
                Ok(Some(first)) => {
                    // Made before under this key: its first result, and
                    // nothing proposed again.
                    let _ = reply.send(first.map_err(RegistryError::from));
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
            }
        }
        let cs = match self.store.conf_state() {
            Ok(cs) => cs,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        let (node_id, change_type, add) = match &op {
            MembershipOp::Add(m) => {
                if cs.voters.contains(&m.id) || cs.learners.contains(&m.id) {
                    let _ = reply.send(Err(CatalogError::FailedPrecondition(format!(
                        "server {} is already a member",
                        m.id
                    ))
                    .into()));
                    return;
                }
                let mut learner = m.clone();
                learner.voter = false;
                (m.id, ConfChangeType::AddLearnerNode, vec![learner])
            }
            MembershipOp::Remove(id) => {
                if !cs.voters.contains(id) && !cs.learners.contains(id) {
                    let _ = reply.send(Err(CatalogError::NotFound(format!(
                        "server {id} is not a member"
                    ))
                    .into()));
                    return;
                }
                if cs.voters == [*id] {
                    let _ = reply.send(Err(CatalogError::FailedPrecondition(format!(
                        "server {id} is the only voter; add and promote another server first"
                    ))
                    .into()));
                    return;
                }
                // A leader removing itself goes on leading until the change
                // is applied, then hands over (see `step_aside_if_removed`).
                (*id, ConfChangeType::RemoveNode, vec![])
            }
        };
        if let MembershipOp::Add(m) = &op {
            self.transport.set_address(m.id, &m.peer_address);
        }
        let request_id = self.id();
        let mut single = ConfChangeSingle::default();
        single.node_id = node_id;
        single.set_change_type(change_type);
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Explicit);
        cc.set_changes(vec![single].into());
        cc.set_context(
            MemberChange {
                request_id,
                origin: self.config.id,
                add,
                command_digest: if key.is_empty() { 0 } else { digest },
                idempotency_key: key.clone(),
                at_unix_ms: now_ms,
            }
            .encode_to_vec()
            .into(),
        );
        match self.raw.propose_conf_change(vec![], cc) {
            Ok(()) => {
                self.membership = Some(PendingMembership {
                    op,
                    key,
                    reply,
                    deadline: Instant::now() + Duration::from_secs(15),
                });
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(self.no_leader()));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Unreachable(id) => self.raw.report_unreachable(id),
            Report::Snapshot { to, ok } => self.raw.report_snapshot(
                to,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
        }
    }

    /// One tick of the clock: Raft's, the deadlines', and this server's
    /// freshness.
    fn tick(&mut self) {
        self.raw.tick();
        if self.raw.raft.leader_id == raft::INVALID_ID {
            self.leaderless_ticks = self.leaderless_ticks.saturating_add(1);
        }
        // Again on every tick: a transfer raft-rs gave up on is retried.
        self.step_aside_if_removed();
        if !self.incarnations.contains_key(&self.config.id) {
            self.record_incarnation(self.config.id, self.config.incarnation);
        }
        self.promote_caught_up_learners();
        self.expire();
        self.check_freshness();
    }

    /// Tells watchers whether this server can still tell its catalog is
    /// current: it is a member, and has known a leader within about an
    /// election timeout (counted in ticks). Checked after every tick and
    /// every Ready, so a leader found is known at once. (A removed server
    /// that learned of its removal never stands for election, so it may
    /// keep its old leader forever: membership is checked too.)
    fn check_freshness(&mut self) {
        let raft = &self.raw.raft;
        let member = raft.prs().get(self.config.id).is_some();
        if raft.leader_id != raft::INVALID_ID {
            self.leaderless_ticks = 0;
        }
        let now = if !member {
            Freshness::Removed
        } else if self.leaderless_ticks >= self.config.election_ticks {
            Freshness::Leaderless
        } else {
            Freshness::Current
        };
        self.freshness.send_if_modified(|f| {
            let changed = *f != now;
            *f = now;
            changed
        });
    }

    /// Answers requests that waited too long.
    fn expire(&mut self) {
        self.expire_at(Instant::now());
    }

    /// Answers requests whose deadline is `now` or earlier.
    fn expire_at(&mut self, now: Instant) {
        for reply in take_expired(&mut self.proposals, now) {
            let _ = reply.send(Err(RegistryError::Indeterminate(
                "the write was proposed but not committed in time (leader change or lost quorum); it may or may not be applied: read it back before retrying".into(),
            )));
        }
        for read in take_expired(&mut self.reads, now).into_iter().flatten() {
            let _ = read.reply.send(Err(RegistryError::Unavailable(format!(
                "registry server {} could not confirm a linearizable read with a quorum (no leader reachable); use a stale read or retry",
                self.config.id
            ))));
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_reads)
            .into_iter()
            .partition(|(_, read)| read.deadline <= now);
        self.waiting_reads = waiting;
        for (index, read) in expired {
            let _ = read.reply.send(Err(RegistryError::Unavailable(format!(
                "registry server {}: no leader confirmed the read within {} ms (this server did not catch up to the read index {index}); retry, or use a stale read",
                self.config.id,
                now.saturating_duration_since(read.since).as_millis()
            ))));
        }
        if self.membership.as_ref().is_some_and(|m| m.deadline <= now)
            && let Some(m) = self.membership.take()
        {
            let _ = m.reply.send(Err(RegistryError::Indeterminate(
                "the membership change did not complete in time; check `lgsp registry status`"
                    .into(),
            )));
        }
    }

    /// Asks for one read index for every read taken since the last one was
    /// asked for, with one request in flight at a time (as etcd's read loop
    /// does): reads that arrive while a confirmation by a quorum (on the
    /// leader, a round of heartbeats) is under way wait for it to end and
    /// share the next, instead of each Ready sending a round of its own. A
    /// request unanswered for a heartbeat interval (raft-rs drops one
    /// silently when no leader is known) no longer holds the next back.
    fn request_read_index(&mut self) -> bool {
        if self.read_batch.is_empty() {
            return false;
        }
        let now = Instant::now();
        let patience = self.config.tick * self.config.heartbeat_ticks as u32;
        if !self.reads.is_empty()
            && self
                .read_requested
                .is_some_and(|at| now.saturating_duration_since(at) < patience)
        {
            return false;
        }
        self.read_requested = Some(now);
        let reads = std::mem::take(&mut self.read_batch);
        let ctx = self.id();
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        let attempt = reads
            .iter()
            .map(|read| (read.since + READ_ATTEMPT).min(read.deadline))
            .min()
            .unwrap_or_else(|| Instant::now() + READ_ATTEMPT);
        self.reads.insert(ctx, (reads, attempt));
        true
    }

    fn on_ready(&mut self) -> Result<(), RegistryError> {
        self.request_read_index();
        self.check_freshness();
        self.handle_ready()?;
        // Reads that waited for a round this Ready ended start the next
        // one now, not at the next request or tick.
        if self.request_read_index() {
            self.handle_ready()?;
        }
        Ok(())
    }

    fn handle_ready(&mut self) -> Result<(), RegistryError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.transport.send(ready.take_messages());

        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            // A build reading a view of the store this replaces ends first.
            self.store.snapshots().wait();
            self.store.install_snapshot(&snapshot)?;
            self.applied = index;
            self.members_changed = true;
            let revision = catalog::revision(self.store.db())?;
            tracing::info!(index, revision, "installed a snapshot from the leader");
            // Watchers of this server missed the changes the snapshot covers.
            self.published.push(WatchEvent {
                r#type: lgsp_proto::watch_event::Type::Compacted as i32,
                revision,
                record: None,
            });
        }

        // Every committed entry applied: one atomic batch in the catalog's
        // store, and its clients answered, before this Ready's new entries
        // are synced (raft-rs' order): they are committed, so on a
        // majority's disks already, and need not wait for the next sync.
        // The batch needs no flush of its own: raft-rs hands out committed
        // entries only up to what this server's log has synced, so after a
        // crash the applied index never runs ahead of the log and the rest
        // replays. The exception is an incarnation record (see
        // `flush_applied`).
        let mut batch = Staged::new(self.store.db());
        self.apply_committed(&mut batch, ready.take_committed_entries())?;
        batch.commit()?;
        if std::mem::take(&mut self.flush_applied) {
            self.store.flush_applied()?;
        }
        self.release()?;

        // New entries and the hard state: one batch in the log, synced
        // when raft-rs says so, before anyone hears of them.
        let mut log = Staged::new(self.store.log());
        self.store.append(&mut log, ready.entries())?;
        if let Some(hs) = ready.hs() {
            self.store.put_hard_state(&mut log, hs);
        }
        log.commit()?;
        if ready.must_sync() {
            self.store.flush_log()?;
        }
        self.transport.send(ready.take_persisted_messages());
        let read_states = ready.take_read_states();

        // Not `advance`: raft-rs is told the Ready's committed entries are
        // applied once their batch is written (`advance_apply_to`).
        let mut light = self.raw.advance_append(ready);
        if light.commit_index().is_some() {
            // raft-rs holds the hard state; its term and vote were saved
            // with this Ready, only the commit index moved (not synced: it
            // is raised to the applied index again when the store opens).
            let hs = self.raw.raft.hard_state();
            let mut log = Staged::new(self.store.log());
            self.store.put_hard_state(&mut log, &hs);
            log.commit()?;
        }
        self.transport.send(light.take_messages());
        let mut batch = Staged::new(self.store.db());
        self.apply_committed(&mut batch, light.take_committed_entries())?;
        batch.commit()?;
        if std::mem::take(&mut self.flush_applied) {
            self.store.flush_applied()?;
        }
        self.raw.advance_apply_to(self.applied);

        for rs in read_states {
            let ctx = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or_default());
            if let Some((reads, _)) = self.reads.remove(&ctx) {
                self.waiting_reads
                    .extend(reads.into_iter().map(|read| (rs.index, read)));
            }
        }
        self.release()?;
        self.after_apply()
    }

    /// Answers clients and watchers for everything now durable and applied.
    fn release(&mut self) -> Result<(), RegistryError> {
        for (reply, outcome) in self.replies.drain(..) {
            let _ = reply.send(outcome);
        }
        for event in self.published.drain(..) {
            let _ = self.events.send(event);
        }
        if let Some((reply, cs, key)) = self.membership_done.take() {
            let db = self.store.db();
            // Under a key, the result recorded with it: what a repeat
            // answers too.
            let recorded = if key.is_empty() {
                Ok(None)
            } else {
                idempotency::recorded_members(db, &key).map_err(RegistryError::from)
            };
            let _ = reply.send(recorded.and_then(|recorded| match recorded {
                Some(members) => Ok(members),
                None => members_of(db, &cs.voters, &cs.learners),
            }));
        }
        if self.waiting_reads.is_empty() {
            return Ok(());
        }
        let applied = self.store.applied()?;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .waiting_reads
            .drain(..)
            .partition(|(index, _)| *index <= applied);
        self.waiting_reads = waiting;
        for (_, read) in ready {
            let _ = read.reply.send(Ok(()));
        }
        Ok(())
    }

    /// Housekeeping after applying: leave joint consensus, learn new
    /// addresses, compact the log and the watch history.
    fn after_apply(&mut self) -> Result<(), RegistryError> {
        // Only a leader leaves joint consensus: followers need not read the
        // configuration on every Ready.
        if self.raw.raft.state == StateRole::Leader
            && !self.raw.raft.has_pending_conf()
            && !self.store.conf_state()?.voters_outgoing.is_empty()
        {
            tracing::info!("leaving joint consensus");
            if let Err(e) = self
                .raw
                .propose_conf_change(vec![], ConfChangeV2::default())
            {
                tracing::warn!(error = %e, "could not propose leaving joint consensus; will retry");
            }
        }
        if std::mem::take(&mut self.members_changed) {
            for m in catalog::members(self.store.db())? {
                self.transport.set_address(m.id, &m.peer_address);
            }
            self.incarnations = recorded_incarnations(self.store.db())?;
            self.step_aside_if_removed();
        }
        // The oldest entries go a step at a time, so that no Ready stalls
        // on deleting thousands of keys (a latency spike for every client).
        let step = (self.config.snapshot_entries / 8).clamp(1, COMPACT_STEP);
        // The log's length from what raft-rs and the store hold in memory,
        // not a scan of sled on every Ready.
        let log_len = self
            .raw
            .raft
            .raft_log
            .last_index()
            .saturating_sub(self.store.compacted_to());
        let excess = log_len.saturating_sub(self.config.snapshot_entries);
        if excess >= step {
            let mut upto =
                (self.store.compacted_to() + excess.min(COMPACT_STEP)).min(self.store.applied()?);
            // Not past a snapshot being built or not yet delivered: the
            // follower it is for goes on from the entry after it, and writes
            // go on meanwhile. Unless the log grows too long for memory
            // first; the follower then needs a newer snapshot.
            let pin_limit = self
                .config
                .snapshot_entries
                .saturating_mul(4)
                .max(MIN_PINNED_LOG);
            if let Some(pinned) = self.snapshot_pin()
                && log_len <= pin_limit
            {
                upto = upto.min(pinned);
            }
            self.store.compact(upto)?;
            tracing::debug!(upto, "compacted the raft log");
        }
        catalog::compact_history(self.store.db(), self.config.watch_history, COMPACT_STEP)?;
        Ok(())
    }

    /// The index the log is not compacted past: that of the snapshot being
    /// built, or of the last one built while some follower's log still
    /// ends before it (it may be on its way to that follower, which then
    /// goes on from the entry after it). A snapshot every follower has
    /// passed, or one built while this server led and no longer does, is
    /// released here.
    fn snapshot_pin(&mut self) -> Option<u64> {
        let snapshots = self.store.snapshots();
        let pinned = snapshots.pinned()?;
        if snapshots.building() {
            return Some(pinned);
        }
        let me = self.config.id;
        let needed = self.raw.raft.state == StateRole::Leader
            && pinned >= self.store.compacted_to()
            && self
                .raw
                .raft
                .prs()
                .iter()
                .any(|(id, pr)| *id != me && pr.matched < pinned);
        if needed {
            Some(pinned)
        } else {
            snapshots.release();
            None
        }
    }

    /// Stages committed entries in order, each seeing the ones before it,
    /// with the applied index.
    fn apply_committed(
        &mut self,
        batch: &mut Staged,
        entries: Vec<Entry>,
    ) -> Result<(), RegistryError> {
        for entry in entries {
            batch.insert(APPLIED, entry.index.to_be_bytes());
            self.applied = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => self.apply_proposal(&entry, batch)?,
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| RegistryError::Raft(e.to_string()))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.apply_membership(&cc, &cs, batch)?;
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| RegistryError::Raft(e.to_string()))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    RaftStore::put_conf_state(batch, &cs);
                }
            }
        }
        Ok(())
    }

    /// Applies one catalog command. A refusal is the command's outcome; a
    /// failed read of the store is not, and stops the loop: refusing on this
    /// server alone would make its catalog differ from the others'.
    fn apply_proposal(&mut self, entry: &Entry, batch: &mut Staged) -> Result<(), RegistryError> {
        let Ok(proposal) = Proposal::decode(entry.data.as_ref()) else {
            tracing::error!(index = entry.index, "undecodable entry skipped");
            return Ok(());
        };
        if let Some(recorded) = &proposal.member_incarnation {
            return self.apply_incarnation(batch, recorded);
        }
        let command = proposal.command.clone().unwrap_or_default();
        let key = &proposal.idempotency_key;
        let digest = (!key.is_empty()).then(|| idempotency::digest(&proposal.actor, &command));
        if let Some(digest) = digest
            && let Seen::Repeat(outcome) =
                idempotency::lookup(batch, key, proposal.at_unix_ms, digest)?
        {
            // Applied (or refused) before under this key: answered as then,
            // and nothing changes, on every server alike.
            let outcome = (*outcome)
                .map(|answer| catalog::repeated_answer(batch, &command, answer))
                .map_err(RegistryError::from);
            self.answer(&proposal, outcome);
            return Ok(());
        }
        let applied = catalog::apply_command(
            batch,
            &self.config.province,
            &proposal.actor,
            &command,
            proposal.at_unix_ms,
        )?;
        let outcome = match applied {
            Ok(applied) => {
                let revision = applied.events.last().map_or(0, |e| e.revision);
                self.published.extend(applied.events);
                // A refusal that still writes (a node name in use: the
                // running node is told) is recorded as a refusal.
                match applied.refusal {
                    None => Ok(ApplyResponse {
                        revision,
                        record: applied.record,
                    }),
                    Some(refused) => Err(refused),
                }
            }
            Err(CatalogError::Internal(why)) => {
                return Err(RegistryError::Storage(format!(
                    "applying entry {}: {why}",
                    entry.index
                )));
            }
            Err(refused) => Err(refused),
        };
        if let Some(digest) = digest {
            idempotency::record(batch, key, proposal.at_unix_ms, digest, &outcome)?;
        }
        self.answer(&proposal, outcome.map_err(RegistryError::from));
        Ok(())
    }

    /// Queues the answer to a proposal this server took, sent once the
    /// batch that applied it is written.
    fn answer(&mut self, proposal: &Proposal, outcome: Result<ApplyResponse, RegistryError>) {
        if proposal.origin == self.config.id
            && let Some((reply, _)) = self.proposals.remove(&proposal.request_id)
        {
            self.replies.push((reply, outcome));
        }
    }

    fn apply_membership(
        &mut self,
        cc: &ConfChangeV2,
        cs: &ConfState,
        batch: &mut Staged,
    ) -> Result<(), RegistryError> {
        RaftStore::put_conf_state(batch, cs);
        let change = MemberChange::decode(cc.context.as_ref()).ok();
        if let Some(change) = &change {
            for m in &change.add {
                catalog::put_member(batch, m);
            }
        }
        for single in cc.changes.iter() {
            match single.get_change_type() {
                ConfChangeType::RemoveNode => catalog::remove_member(batch, single.node_id),
                ConfChangeType::AddNode => {
                    tracing::info!(id = single.node_id, "a learner became a voter");
                }
                ConfChangeType::AddLearnerNode => {}
            }
        }
        if let Some(change) = change.filter(|c| !c.idempotency_key.is_empty()) {
            // What the client gets once the joint configuration is left:
            // the incoming configuration's members.
            let members = staged_members(batch, &cs.voters, &cs.learners)?;
            idempotency::record_membership(
                batch,
                &change.idempotency_key,
                change.at_unix_ms,
                change.command_digest,
                &members,
            )?;
        }
        self.members_changed = true;
        tracing::info!(voters = ?cs.voters, outgoing = ?cs.voters_outgoing, learners = ?cs.learners, "membership changed");
        let own = self.config.id;
        let done = self.membership.as_ref().is_some_and(|p| match &p.op {
            MembershipOp::Add(m) => {
                cs.voters_outgoing.is_empty()
                    && (cs.learners.contains(&m.id) || cs.voters.contains(&m.id))
            }
            // A server removing itself may never hear that the joint
            // configuration was left (the others stop sending to it): the
            // joint one that leaves it out decides the change.
            MembershipOp::Remove(id) => {
                !cs.voters.contains(id)
                    && !cs.learners.contains(id)
                    && (cs.voters_outgoing.is_empty() || *id == own)
            }
        });
        if done && let Some(p) = self.membership.take() {
            // Answered in `release`, once this entry's batch is written.
            self.membership_done = Some((p.reply, cs.clone(), p.key));
        }
        Ok(())
    }

    fn status(&self) -> Result<StatusResponse, RegistryError> {
        let raft = &self.raw.raft;
        let cs = self.store.conf_state()?;
        let db = self.store.db();
        Ok(StatusResponse {
            id: self.config.id,
            leader_id: raft.leader_id,
            term: raft.term,
            role: format!("{:?}", raft.state).to_lowercase(),
            commit_index: raft.raft_log.committed,
            applied_index: self.store.applied()?,
            revision: catalog::revision(db)?,
            members: members_of(db, &cs.voters, &cs.learners)?,
            compact_revision: catalog::compact_revision(db)?,
            joint_consensus: !cs.voters_outgoing.is_empty(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            last_index: raft.raft_log.last_index(),
            replicas: if raft.state == StateRole::Leader {
                let mut replicas: Vec<Replica> = raft
                    .prs()
                    .iter()
                    .filter(|(id, _)| **id != self.config.id)
                    .map(|(id, p)| Replica {
                        id: *id,
                        matched_index: p.matched,
                        state: format!("{:?}", p.state).to_lowercase(),
                        recent_active: p.recent_active,
                        voter: !cs.learners.contains(id),
                    })
                    .collect();
                replicas.sort_by_key(|r| r.id);
                replicas
            } else {
                Vec::new()
            },
        })
    }
}

/// The catalog's member records' key prefix (see `catalog.rs`), read here
/// through a stage so that a record staged earlier in the batch counts.
const MEMBER_PREFIX: &[u8] = b"s:member:";

/// The incarnation of each member, as the member records hold them.
fn recorded_incarnations(db: &Kv) -> Result<BTreeMap<u64, u64>, RegistryError> {
    Ok(catalog::members(db)?
        .into_iter()
        .filter(|m| m.incarnation != 0)
        .map(|m| (m.id, m.incarnation))
        .collect())
}

/// As [`members_of`], reading the member records through `batch`, so that
/// those staged earlier in it count.
fn staged_members(
    batch: &Staged,
    voters: &[u64],
    learners: &[u64],
) -> Result<Vec<Member>, RegistryError> {
    let mut known = HashMap::new();
    for (key, value) in batch.read_prefix(MEMBER_PREFIX)? {
        let m = Member::decode(value.as_slice()).map_err(|e| StoreError::Damaged {
            key: String::from_utf8_lossy(&key).into_owned(),
            reason: e.to_string(),
        })?;
        known.insert(m.id, m);
    }
    Ok(with_roles(&known, voters, learners))
}

/// Members in the configuration, with the addresses this server knows.
fn members_of(db: &Kv, voters: &[u64], learners: &[u64]) -> Result<Vec<Member>, RegistryError> {
    let known: HashMap<u64, Member> = catalog::members(db)?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    Ok(with_roles(&known, voters, learners))
}

/// `voters` then `learners`, each with what `known` holds of it.
fn with_roles(known: &HashMap<u64, Member>, voters: &[u64], learners: &[u64]) -> Vec<Member> {
    voters
        .iter()
        .map(|id| (id, true))
        .chain(learners.iter().map(|id| (id, false)))
        .map(|(id, voter)| {
            let mut m = known.get(id).cloned().unwrap_or_default();
            m.id = *id;
            m.voter = voter;
            m
        })
        .collect()
}

#[cfg(test)]
mod tests;

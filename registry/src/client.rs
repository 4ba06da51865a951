//! A registry client for nodes, hubs, tools and tests: it knows every
//! server, moves on to the next when one is unavailable (straight to the
//! leader when the answer names it: membership changes are the leader's
//! alone), and retries reads, writes under an idempotency key (every write
//! and membership change it makes), and other requests that were certainly
//! not applied.

use lgsp_certs::{ClientTrust, Credentials, Expected};
use lgsp_proto::registry_client::RegistryClient as Grpc;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a request keeps trying other servers.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// A client of a registry cluster.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    servers: Vec<(String, Channel)>,
    preferred: std::sync::Arc<AtomicUsize>,
    /// How to reach a server named in an answer (`lgsp-leader`) that is
    /// not among `servers`: the same credentials, trust and expected
    /// identity (a registry server of our trust domain).
    connector: Arc<Connector>,
    /// Where the idempotency keys of this client's writes come from.
    keys: Arc<WriteKeys>,
}

/// The idempotency keys of a client's writes: the `n`th write made is
/// keyed by a digest of a seed and `n`. A command run again under the seed
/// an earlier run printed (after an unknown outcome) makes its writes under
/// the same keys, in the same order: what the first run applied answers
/// with its first outcome instead of being applied twice, and a write the
/// first run did not make under that key is refused, never misapplied
/// (the registry remembers which command each key was for).
#[derive(Debug)]
struct WriteKeys {
    seed: Vec<u8>,
    next: AtomicU64,
    /// A keyed write ended with its outcome unknown.
    unknown: std::sync::atomic::AtomicBool,
}

impl WriteKeys {
    fn new(seed: Vec<u8>) -> Self {
        Self {
            seed,
            next: AtomicU64::new(0),
            unknown: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The key of write `n`.
    fn key(&self, n: u64) -> Vec<u8> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"lgsp-write-key\0");
        h.update(&self.seed);
        h.update(n.to_be_bytes());
        h.finalize()[..crate::idempotency::KEY_LEN].to_vec()
    }

    fn next(&self) -> Vec<u8> {
        self.key(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct Connector {
    creds: Credentials,
    trust: Arc<ClientTrust>,
    expected: Expected,
}

/// What repeating a request could do, which decides when it is repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// A read: repeating it changes nothing.
    Read,
    /// A write under an idempotency key: a repeat that reaches the registry
    /// after the first attempt was applied answers with that attempt's
    /// outcome instead of applying again.
    Keyed,
    /// A write without a key (a leadership transfer, a write given no
    /// key): repeated only while it was certainly not applied.
    Unkeyed,
}

/// Whether another attempt may follow `status`. A refusal the registry
/// decided (`lgsp-outcome: refused`) is final whatever its code. A read or
/// a keyed write is repeated on any outcome that is not a decision: the
/// server had no leader or was stopping, the outcome is unknown (the leader
/// changed, the deadline passed), or the connection failed before or after
/// sending. A write without a key is repeated only on `UNAVAILABLE`.
fn transient(status: &Status, repeat: Repeat) -> bool {
    let decided = status
        .metadata()
        .get(crate::error::OUTCOME)
        .is_some_and(|o| o == "refused");
    if decided {
        return false;
    }
    let broken = matches!(status.code(), Code::Unknown | Code::Cancelled)
        && status.message().contains("transport error");
    match repeat {
        Repeat::Read => status.code() == Code::Unavailable || broken,
        Repeat::Keyed => {
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) || broken
        }
        Repeat::Unkeyed => status.code() == Code::Unavailable,
    }
}

/// Whether a write that ended with `status` may have been applied: the
/// registry did not say it was refused or certainly not applied, and the
/// status is one a write in flight can end with (a deadline, a server going
/// away, a connection that broke). A refusal made before any write (an
/// identity or argument refused) carries its own code.
fn ambiguous(status: &Status) -> bool {
    let definite = status
        .metadata()
        .get(crate::error::OUTCOME)
        .is_some_and(|o| o == "refused" || o == "not-applied");
    !definite
        && matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        )
}

/// Whether the registry decided against the request (`lgsp-outcome:
/// refused`): final whatever came before.
fn refused(status: &Status) -> bool {
    status
        .metadata()
        .get(crate::error::OUTCOME)
        .is_some_and(|o| o == "refused")
}

/// The leader's client address an answer names (`lgsp-leader`), if any.
fn leader_named(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(crate::error::LEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl RegistryClient {
    /// A client of the servers at `endpoints` (host:port of their client
    /// listeners), presenting `creds`. Connections are made on first use,
    /// and only to a registry server of our own trust domain: a certificate
    /// with another role (a node's, say, on a redirected address) is
    /// refused in the handshake, whatever host name it carries.
    pub fn new(endpoints: &[String], creds: &Credentials) -> Result<Self, lgsp_certs::CertError> {
        Self::with_trust(endpoints, creds, ClientTrust::new(creds)?)
    }

    /// As [`Self::new`], checking servers against `trust` (which a node
    /// keeps current with the catalog's CRL, so a revoked registry
    /// certificate is refused too).
    pub fn with_trust(
        endpoints: &[String],
        creds: &Credentials,
        trust: Arc<ClientTrust>,
    ) -> Result<Self, lgsp_certs::CertError> {
        let expected = Expected::registry(&creds.spiffe_id()?.trust_domain);
        let mut servers = Vec::new();
        for e in endpoints {
            let channel = lgsp_certs::server_identity::connect_lazy(
                e,
                creds,
                trust.clone(),
                expected.clone(),
                |endpoint| endpoint,
            )?;
            servers.push((e.clone(), channel));
        }
        Ok(Self {
            servers,
            preferred: std::sync::Arc::new(AtomicUsize::new(0)),
            connector: Arc::new(Connector {
                creds: creds.clone(),
                trust,
                expected,
            }),
            keys: Arc::new(WriteKeys::new(crate::idempotency::new_key())),
        })
    }

    /// This client with its writes keyed from `seed` (see
    /// [`Self::key_seed`]): a command run again under the seed an earlier
    /// run printed applies none of that run's writes twice.
    pub fn with_key_seed(mut self, seed: Vec<u8>) -> Self {
        self.keys = Arc::new(WriteKeys::new(seed));
        self
    }

    /// The seed this client's idempotency keys come from: random unless
    /// given ([`Self::with_key_seed`]); what to print after a write whose
    /// outcome is unknown.
    pub fn key_seed(&self) -> &[u8] {
        &self.keys.seed
    }

    /// How many writes this client (and its clones) have keyed.
    pub fn writes_keyed(&self) -> u64 {
        self.keys.next.load(Ordering::Relaxed)
    }

    /// Whether a keyed write of this client (or a clone) failed with its
    /// outcome unknown: it may or may not have been applied, and running
    /// the same writes again under [`Self::key_seed`] resolves it.
    pub fn write_outcome_unknown(&self) -> bool {
        self.keys.unknown.load(Ordering::Relaxed)
    }

    /// A channel to `address`, which an answer named as the leader.
    fn connect(&self, address: &str) -> Result<Channel, lgsp_certs::CertError> {
        let c = &self.connector;
        lgsp_certs::server_identity::connect_lazy(
            address,
            &c.creds,
            c.trust.clone(),
            c.expected.clone(),
            |endpoint| endpoint,
        )
    }

    /// The servers' client addresses, as given.
    pub fn endpoints(&self) -> Vec<&str> {
        self.servers.iter().map(|(e, _)| e.as_str()).collect()
    }

    /// The gRPC client of server `i`.
    pub fn server(&self, i: usize) -> Grpc<Channel> {
        Grpc::new(self.servers[i % self.servers.len()].1.clone())
            .max_decoding_message_size(64 << 20)
    }

    /// Runs `call` on the preferred server, moving on through the others
    /// while the answer is "unavailable" (so nothing was applied), or for a
    /// read or keyed write, any answer that is not a decision. An answer
    /// that names the leader (`lgsp-leader`) sends the next attempt there,
    /// whether or not it is among the servers this client was given.
    async fn retry<T, F, Fut>(&self, repeat: Repeat, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Grpc<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        let n = self.servers.len();
        let mut attempt = 0;
        // The next attempt's server, when an answer named the leader.
        let mut redirect: Option<(Option<usize>, String, Channel)> = None;
        // An attempt of a keyed write ended without a decision: whatever
        // the last attempt says, the write may have been applied.
        let mut maybe_applied = false;
        loop {
            let (i, name, channel) = redirect.take().unwrap_or_else(|| {
                let i = (self.preferred.load(Ordering::Relaxed) + attempt) % n;
                (
                    Some(i),
                    self.servers[i].0.clone(),
                    self.servers[i].1.clone(),
                )
            });
            let grpc = Grpc::new(channel).max_decoding_message_size(64 << 20);
            match call(grpc).await {
                Ok(r) => {
                    if let Some(i) = i {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Ok(r.into_inner());
                }
                Err(status) if transient(&status, repeat) && Instant::now() < deadline => {
                    maybe_applied |= repeat == Repeat::Keyed && ambiguous(&status);
                    tracing::debug!(server = %name, error = %status.message(), "registry server unavailable; trying another");
                    if let Some(leader) = leader_named(&status).filter(|l| *l != name) {
                        let known = self.servers.iter().position(|(e, _)| *e == leader);
                        let channel = match known {
                            Some(j) => Some(self.servers[j].1.clone()),
                            None => self
                                .connect(&leader)
                                .inspect_err(|e| tracing::debug!(%leader, error = %e, "cannot reach the leader named"))
                                .ok(),
                        };
                        if let Some(channel) = channel {
                            redirect = Some((known, leader, channel));
                            // Servers that disagree on the leader (an
                            // election under way) must not make a busy loop.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                    attempt += 1;
                    if attempt % n == 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(status) => {
                    let mut explained = lgsp_certs::tls::explain_status(&status);
                    if status.code() == Code::Unavailable {
                        // Which address failed is what an operator checks first.
                        let tried: Vec<&str> =
                            self.servers.iter().map(|(e, _)| e.as_str()).collect();
                        explained = format!(
                            "registry server {name} unavailable (tried {}): {explained}",
                            tried.join(", ")
                        );
                    }
                    // The metadata says what became of a write
                    // (`lgsp-outcome`, `lgsp-mod-revision`): keep it, but
                    // "not applied" only if no attempt may have been.
                    let mut metadata = status.metadata().clone();
                    if repeat == Repeat::Keyed
                        && !refused(&status)
                        && (maybe_applied || ambiguous(&status))
                    {
                        metadata.insert(crate::error::OUTCOME, "unknown".parse().expect("ASCII"));
                        self.keys.unknown.store(true, Ordering::Relaxed);
                    }
                    return Err(Status::with_metadata(status.code(), explained, metadata));
                }
            }
        }
    }

    /// Applies one command under a new idempotency key, the same on every
    /// attempt: retried on another server whenever the outcome is not a
    /// decision of the registry (no leader, unknown, a connection that
    /// broke), since an attempt repeated after one was applied answers with
    /// that one's outcome instead of applying again. Fails with the
    /// catalog's refusal, or the last error once no server answered for
    /// 10 s (then the write may or may not be applied).
    pub async fn apply(&self, command: Command) -> Result<ApplyResponse, Status> {
        self.apply_keyed(command, self.keys.next()).await
    }

    /// [`apply`](Self::apply) under the idempotency key `key` (16 bytes;
    /// empty for none, and then retried only while certainly not applied).
    /// A client that restarts may send a write again under the key it
    /// used before and get its first outcome.
    pub async fn apply_keyed(
        &self,
        command: Command,
        key: Vec<u8>,
    ) -> Result<ApplyResponse, Status> {
        let repeat = if key.is_empty() {
            Repeat::Unkeyed
        } else {
            Repeat::Keyed
        };
        let request = ApplyRequest {
            command: Some(command),
            idempotency_key: key,
        };
        self.retry(repeat, |mut c| {
            let request = request.clone();
            async move { c.apply(request).await }
        })
        .await
    }

    /// Puts a record (unconditionally, or only at `expected_mod_revision`).
    pub async fn put(
        &self,
        value: catalog_record::Value,
        expected_mod_revision: u64,
    ) -> Result<ApplyResponse, Status> {
        self.apply(Command {
            op: Some(command::Op::Put(CatalogRecord {
                value: Some(value),
                ..Default::default()
            })),
            expected_mod_revision,
            must_not_exist: false,
        })
        .await
    }

    /// Deletes a record (unconditionally, or only at
    /// `expected_mod_revision`); like [`apply`](Self::apply), under an
    /// idempotency key. Fails with the catalog's refusal
    /// (e.g. `Aborted` when the mod revision no longer matches) or when no
    /// server answers.
    pub async fn delete(
        &self,
        kind: RecordKind,
        key: &str,
        expected_mod_revision: u64,
    ) -> Result<ApplyResponse, Status> {
        self.apply(Command {
            op: Some(command::Op::Delete(RecordRef {
                kind: kind as i32,
                key: key.to_owned(),
            })),
            expected_mod_revision,
            must_not_exist: false,
        })
        .await
    }

    /// The bytes of a backup file of the whole catalog (see `backup.rs`),
    /// as one server streams it: linearizable, taken at one revision, its
    /// checksum last (check it with [`crate::backup::decode`]). Tried on
    /// another server while none answers.
    pub async fn snapshot(&self) -> Result<Vec<u8>, Status> {
        self.retry(Repeat::Read, |mut c| async move {
            let mut stream = c.snapshot(SnapshotRequest {}).await?.into_inner();
            let mut file = Vec::new();
            while let Some(chunk) = stream.message().await? {
                file.extend_from_slice(&chunk.data);
            }
            Ok(tonic::Response::new(file))
        })
        .await
    }

    /// Reads one record; linearizable unless `stale`.
    pub async fn get(
        &self,
        kind: RecordKind,
        key: &str,
        stale: bool,
    ) -> Result<GetResponse, Status> {
        self.retry(Repeat::Read, |mut c| {
            let request = GetRequest {
                r#ref: Some(RecordRef {
                    kind: kind as i32,
                    key: key.to_owned(),
                }),
                stale,
            };
            async move { c.get(request).await }
        })
        .await
    }

    /// One page of records as `request` asks, with the revision it was read
    /// at; retried on another server while none answers.
    pub async fn list(&self, request: ListRequest) -> Result<ListResponse, Status> {
        self.retry(Repeat::Read, |mut c| {
            let request = request.clone();
            async move { c.list(request).await }
        })
        .await
    }

    /// Every record of a list, following pages, and the revision the
    /// listing is consistent from: watch from it + 1 and nothing is missed.
    /// See [`all_pages`] for why that is the first page's revision.
    pub async fn list_all(
        &self,
        request: ListRequest,
    ) -> Result<(Vec<CatalogRecord>, u64), Status> {
        all_pages(request, |request| self.list(request)).await
    }

    /// The answering server's view of the cluster: its id, the leader it
    /// knows, its term and indexes, and the members; retried on another
    /// server while none answers.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        self.retry(Repeat::Read, |mut c| async move {
            c.status(StatusRequest {}).await
        })
        .await
    }

    /// Adds a server, through the leader (a follower's answer names it);
    /// like [`apply`](Self::apply), under one idempotency key on every
    /// attempt (`request.idempotency_key`, or a new one when it has none),
    /// so it is retried on every outcome that is not a decision: a repeat
    /// of a change that went through answers with its first result.
    pub async fn add_member(
        &self,
        mut request: AddMemberRequest,
    ) -> Result<MembershipResponse, Status> {
        if request.idempotency_key.is_empty() {
            request.idempotency_key = self.keys.next();
        }
        self.retry(Repeat::Keyed, |mut c| {
            let request = request.clone();
            async move { c.add_member(request).await }
        })
        .await
    }

    /// Removes a server, as [`add_member`](Self::add_member) adds one,
    /// under a new idempotency key.
    pub async fn remove_member(&self, id: u64) -> Result<MembershipResponse, Status> {
        self.remove_member_keyed(id, self.keys.next()).await
    }

    /// [`remove_member`](Self::remove_member) under the idempotency key
    /// `key` (16 bytes; empty for none, and then retried only while
    /// certainly not applied).
    pub async fn remove_member_keyed(
        &self,
        id: u64,
        key: Vec<u8>,
    ) -> Result<MembershipResponse, Status> {
        let repeat = if key.is_empty() {
            Repeat::Unkeyed
        } else {
            Repeat::Keyed
        };
        let request = RemoveMemberRequest {
            id,
            idempotency_key: key,
        };
        self.retry(repeat, |mut c| {
            let request = request.clone();
            async move { c.remove_member(request).await }
        })
        .await
    }

    /// Hands leadership to voter `to` (0: the leader picks the most
    /// caught-up other voter); answers once the servers agree on the new
    /// leader. Retried on another server only while the answer is
    /// "unavailable" (no leader known, or a server that does not lead
    /// asked to pick).
    pub async fn transfer_leader(&self, to: u64) -> Result<TransferLeaderResponse, Status> {
        self.retry(Repeat::Unkeyed, |mut c| async move {
            c.transfer_leader(TransferLeaderRequest { to }).await
        })
        .await
    }

    /// Follows every change from `from_revision` on, across servers: when a
    /// server goes away the watch resumes on another from the next revision.
    /// Ends after passing on a `COMPACTED` event (the caller reloads) or
    /// when the receiver is dropped.
    pub fn watch(&self, from_revision: u64) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let client = self.clone();
        tokio::spawn(async move {
            let mut next = from_revision.max(1);
            let mut attempt = 0usize;
            loop {
                let i = (client.preferred.load(Ordering::Relaxed) + attempt) % client.servers.len();
                let stream = client
                    .server(i)
                    .watch(WatchRequest {
                        from_revision: next,
                    })
                    .await;
                let mut stream = match stream {
                    Ok(s) => s.into_inner(),
                    Err(_) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                loop {
                    // A watcher that went away ends the stream now, not at the next change.
                    let event = tokio::select! {
                        m = stream.message() => match m {
                            Ok(Some(event)) => event,
                            Ok(None) | Err(_) => break,
                        },
                        () = tx.closed() => return,
                    };
                    let compacted = event.r#type == EventType::Compacted as i32;
                    if event.r#type == EventType::Put as i32
                        || event.r#type == EventType::Delete as i32
                    {
                        next = event.revision + 1;
                    }
                    if tx.send(event).await.is_err() || compacted {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        rx
    }
}

/// Follows `request` from page to page through `page` (one `List` call),
/// returning every record and the oldest revision a page was read at: the
/// first page's, for linearizable reads, whose revisions only grow.
///
/// Each page is read at its own revision. A record on the first page may
/// change while later pages are read, and that change is in no page; a
/// later page may already hold changes made after the first was read.
/// So the listing is consistent from the oldest page's revision R on: a
/// watch from R + 1 replays every change the pages missed, and the changes
/// they already hold arrive again as the same records, which a cache
/// applies again to the same effect. A watch from the last page's revision
/// would miss the changes to earlier pages for good.
pub async fn all_pages<F, Fut>(
    mut request: ListRequest,
    mut page: F,
) -> Result<(Vec<CatalogRecord>, u64), Status>
where
    F: FnMut(ListRequest) -> Fut,
    Fut: std::future::Future<Output = Result<ListResponse, Status>>,
{
    let mut all = Vec::new();
    let mut consistent_from = u64::MAX;
    loop {
        let listed = page(request.clone()).await?;
        consistent_from = consistent_from.min(listed.revision);
        all.extend(listed.records);
        if listed.next_page_token.is_empty() {
            return Ok((all, consistent_from));
        }
        request.page_token = listed.next_page_token;
    }
}

#[cfg(test)]
mod paging_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{CatalogError, RegistryError};

    fn transport_error() -> Status {
        Status::unknown("transport error: connection reset by peer")
    }

    #[test]
    fn a_write_is_ambiguous_only_when_it_may_have_been_applied() {
        let unknown = Status::from(RegistryError::Indeterminate("leader changed".into()));
        let not_applied = Status::from(RegistryError::Unavailable("no leader".into()));
        let decided = Status::from(RegistryError::Catalog(CatalogError::InvalidArgument(
            "bad".into(),
        )));
        assert!(ambiguous(&unknown) && ambiguous(&transport_error()));
        assert!(!ambiguous(&not_applied) && !ambiguous(&decided));
        assert!(
            !ambiguous(&Status::permission_denied("not an admin")),
            "refused before any write, though the registry put no outcome on it"
        );
        assert!(refused(&decided) && !refused(&not_applied));
    }

    #[test]
    fn a_run_again_under_the_same_seed_keys_its_writes_alike_and_in_order() {
        let seed = crate::idempotency::new_key();
        let (first, again) = (WriteKeys::new(seed.clone()), WriteKeys::new(seed));
        let keys: Vec<Vec<u8>> = (0..3).map(|_| first.next()).collect();
        assert_eq!(keys, (0..3).map(|_| again.next()).collect::<Vec<_>>());
        assert!(keys.iter().all(|k| k.len() == crate::idempotency::KEY_LEN));
        assert!(
            keys[0] != keys[1] && keys[1] != keys[2],
            "one key per write"
        );
        let other = WriteKeys::new(crate::idempotency::new_key());
        assert_ne!(other.next(), keys[0], "another run's keys are its own");
    }

    #[test]
    fn a_keyed_write_is_retried_on_every_outcome_but_a_decision() {
        let unknown = Status::from(RegistryError::Indeterminate("leader changed".into()));
        let no_leader = Status::from(RegistryError::Unavailable("no leader".into()));
        for status in [unknown.clone(), no_leader.clone(), transport_error()] {
            assert!(transient(&status, Repeat::Keyed), "{status:?}");
        }
        // Without a key, only what was certainly not applied.
        assert!(transient(&no_leader, Repeat::Unkeyed));
        assert!(!transient(&unknown, Repeat::Unkeyed));
        assert!(!transient(&transport_error(), Repeat::Unkeyed));
    }

    #[test]
    fn a_refusal_is_never_retried_whatever_its_code() {
        let refusals = [
            CatalogError::Conflict {
                why: "at 7".into(),
                mod_revision: 7,
            },
            CatalogError::FailedPrecondition("too old".into()),
            CatalogError::InvalidArgument("bad key".into()),
        ];
        for refusal in refusals {
            let status = Status::from(RegistryError::from(refusal));
            for repeat in [Repeat::Read, Repeat::Keyed, Repeat::Unkeyed] {
                assert!(!transient(&status, repeat), "{status:?} {repeat:?}");
            }
        }
    }
}

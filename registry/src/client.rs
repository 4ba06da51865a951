//! A registry client for nodes, hubs, tools and tests: it knows every
//! server, moves on to the next when one is unavailable, and retries
//! requests that were certainly not applied.

use lgsp_certs::{ClientTrust, Credentials, Expected};
use lgsp_proto::registry_client::RegistryClient as Grpc;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

/// Whether another server may be tried: the request was certainly not
/// applied (unavailable), or it is a read, which is safe to repeat.
fn transient(status: &Status, idempotent: bool) -> bool {
    status.code() == Code::Unavailable
        || (idempotent
            && matches!(status.code(), Code::Unknown | Code::Cancelled)
            && status.message().contains("transport error"))
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
        })
    }

    /// The gRPC client of server `i`.
    pub fn server(&self, i: usize) -> Grpc<Channel> {
        Grpc::new(self.servers[i % self.servers.len()].1.clone())
            .max_decoding_message_size(64 << 20)
    }

    /// Runs `call` on the preferred server, moving on through the others
    /// while the answer is "unavailable" (so nothing was applied).
    async fn retry<T, F, Fut>(&self, idempotent: bool, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Grpc<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        let n = self.servers.len();
        let mut attempt = 0;
        loop {
            let i = (self.preferred.load(Ordering::Relaxed) + attempt) % n;
            match call(self.server(i)).await {
                Ok(r) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Err(status) if transient(&status, idempotent) && Instant::now() < deadline => {
                    tracing::debug!(server = %self.servers[i].0, error = %status.message(), "registry server unavailable; trying another");
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
                            "registry server {} unavailable (tried {}): {explained}",
                            self.servers[i].0,
                            tried.join(", ")
                        );
                    }
                    // The metadata says what became of a write
                    // (`lgsp-outcome`, `lgsp-mod-revision`): keep it.
                    return Err(Status::with_metadata(
                        status.code(),
                        explained,
                        status.metadata().clone(),
                    ));
                }
            }
        }
    }

    /// Applies one command; retried only while it was certainly not applied.
    pub async fn apply(&self, command: Command) -> Result<ApplyResponse, Status> {
        self.retry(false, |mut c| {
            let command = command.clone();
            async move {
                c.apply(ApplyRequest {
                    command: Some(command),
                })
                .await
            }
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
    /// `expected_mod_revision`); like [`apply`](Self::apply), retried only
    /// while it was certainly not applied. Fails with the catalog's refusal
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

    /// Reads one record; linearizable unless `stale`.
    pub async fn get(
        &self,
        kind: RecordKind,
        key: &str,
        stale: bool,
    ) -> Result<GetResponse, Status> {
        self.retry(true, |mut c| {
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
        self.retry(true, |mut c| {
            let request = request.clone();
            async move { c.list(request).await }
        })
        .await
    }

    /// Every record of a list, following pages.
    pub async fn list_all(
        &self,
        mut request: ListRequest,
    ) -> Result<(Vec<CatalogRecord>, u64), Status> {
        let mut all = Vec::new();
        loop {
            let page = self.list(request.clone()).await?;
            all.extend(page.records);
            if page.next_page_token.is_empty() {
                return Ok((all, page.revision));
            }
            request.page_token = page.next_page_token;
        }
    }

    /// The answering server's view of the cluster: its id, the leader it
    /// knows, its term and indexes, and the members; retried on another
    /// server while none answers.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        self.retry(
            true,
            |mut c| async move { c.status(StatusRequest {}).await },
        )
        .await
    }

    /// Adds a server; like [`apply`](Self::apply), retried only while it was
    /// certainly not applied (a repeat of a change that went through would
    /// answer "already a member").
    pub async fn add_member(
        &self,
        request: AddMemberRequest,
    ) -> Result<MembershipResponse, Status> {
        self.retry(false, |mut c| {
            let request = request.clone();
            async move { c.add_member(request).await }
        })
        .await
    }

    /// Removes a server; retried only while it was certainly not applied.
    pub async fn remove_member(&self, id: u64) -> Result<MembershipResponse, Status> {
        self.retry(false, |mut c| async move {
            c.remove_member(RemoveMemberRequest { id }).await
        })
        .await
    }

    /// Hands leadership to voter `to` (0: the leader picks the most
    /// caught-up other voter); answers once the servers agree on the new
    /// leader. Retried on another server only while the answer is
    /// "unavailable" (no leader known, or a server that does not lead
    /// asked to pick).
    pub async fn transfer_leader(&self, to: u64) -> Result<TransferLeaderResponse, Status> {
        self.retry(false, |mut c| async move {
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

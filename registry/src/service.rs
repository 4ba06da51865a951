//! The registry's gRPC services: `Registry` for nodes, hubs and admins, and
//! `RegistryPeer` for Raft traffic between registry servers. Callers are
//! authenticated by their certificates before any of this runs; a `Watch`,
//! which can stay open for days, is checked again before each event and
//! whenever a new CRL comes into force.

use crate::backup::BackupSigner;
use crate::catalog::{self, ListQuery};
use crate::error::{CatalogError, RegistryError, StoreError};
use crate::kv::Kv;
use crate::raft_node::{MembershipOp, RaftHandle};
use crate::transport::MAX_PEER_MESSAGE;
use crate::watchers::{WatchLimits, Watchers};
use futures::Stream;
use lgsp_certs::{AgencyCode, Authenticator, Peer, Role};
use lgsp_proto::registry_peer_server::RegistryPeer;
use lgsp_proto::registry_server::Registry;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::*;
use prost::Message as _;
use protobuf::Message as _;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The catalog API.
#[derive(Clone, Debug)]
pub struct RegistryService {
    raft: RaftHandle,
    auth: Authenticator,
    watchers: Watchers,
    /// This server's key, which signs the backups it takes.
    signer: Arc<BackupSigner>,
}

impl RegistryService {
    /// The catalog API over this server's consensus loop; `auth` is the
    /// client listener's authenticator, which knows the CRL in force and
    /// ends the watches of certificates it revokes; `watch_limits` bounds
    /// the watches it holds open; `signer` (this server's key) signs the
    /// backups it takes.
    pub fn new(
        raft: RaftHandle,
        auth: Authenticator,
        watch_limits: WatchLimits,
        signer: Arc<BackupSigner>,
    ) -> Self {
        Self {
            raft,
            auth,
            watchers: Watchers::new(watch_limits),
            signer,
        }
    }

    async fn consistent(&self, stale: bool) -> Result<(), Status> {
        if !stale {
            self.raft.read_index().await?;
        }
        Ok(())
    }
}

/// Refuses anyone but the provincial IT department's admins: an `admin`
/// certificate of the agency that runs the registry (`province`, taken
/// from the registry servers' own certificates). An admin of another agency
/// administers that agency's records only, never the registry itself.
fn require_admin<T>(request: &Request<T>, province: &AgencyCode, what: &str) -> Result<(), Status> {
    let peer = Peer::of(request)?;
    if peer.id.role != Role::Admin {
        return Err(Status::permission_denied(format!(
            "{what} needs an admin certificate of the provincial IT department ({province}); {} is a {}",
            peer.id, peer.id.role
        )));
    }
    if &peer.id.agency != province {
        return Err(Status::permission_denied(format!(
            "{what} needs an admin certificate of the provincial IT department ({province}); {} is an admin of agency {}, which administers its own records only",
            peer.id, peer.id.agency
        )));
    }
    Ok(())
}

fn kind(k: i32) -> Result<RecordKind, Status> {
    RecordKind::try_from(k)
        .ok()
        .filter(|k| *k != RecordKind::Unspecified)
        .ok_or_else(|| {
            Status::invalid_argument(
                "a record kind is required (agency, node, service, grant, crl)",
            )
        })
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let actor = Peer::of(&request)?.id.clone();
        let request = request.into_inner();
        let command = request
            .command
            .ok_or_else(|| Status::invalid_argument("the request carries no command"))?;
        Ok(Response::new(
            self.raft
                .propose(actor, command, request.idempotency_key)
                .await?,
        ))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = request.into_inner();
        let r = req.r#ref.unwrap_or_default();
        let kind = kind(r.kind)?;
        self.consistent(req.stale).await?;
        let db = self.raft.db();
        let revision = catalog::revision(db).map_err(RegistryError::from)?;
        let record = catalog::get(db, kind, &r.key)?.ok_or_else(|| {
            RegistryError::from(CatalogError::NotFound(format!(
                "{kind:?} {:?} does not exist",
                r.key
            )))
        })?;
        Ok(Response::new(GetResponse {
            record: Some(record),
            revision,
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = request.into_inner();
        kind(req.kind)?;
        self.consistent(req.stale).await?;
        let db = self.raft.db();
        let revision = catalog::revision(db).map_err(RegistryError::from)?;
        let (records, next_page_token) = catalog::list(
            db,
            &ListQuery {
                kind: req.kind,
                prefix: req.prefix,
                keyword: req.keyword,
                service_status: req.service_status,
                page_size: req.page_size,
                page_token: req.page_token,
            },
        )
        .map_err(RegistryError::from)?;
        Ok(Response::new(ListResponse {
            records,
            next_page_token,
            revision,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let watcher = Peer::of(&request)?.clone();
        let from = request.into_inner().from_revision.max(1);
        // A server that cannot tell its catalog is current sends the
        // watcher elsewhere, now and whenever it loses its leader later.
        self.raft.check_fresh()?;
        // Held by the streaming task: the slot frees when the watch ends.
        let slot = self.watchers.admit(&watcher.id.to_string())?;
        // Subscribe before reading the history, so nothing falls between.
        let live = self.raft.subscribe();
        let db = self.raft.db().clone();
        let (tx, rx) = mpsc::channel(256);
        let raft = self.raft.clone();
        let stale = async move { raft.until_stale().await };
        tokio::spawn(async move {
            stream_changes(db, from, live, stale, tx).await;
            drop(slot);
        });
        // Events already queued are not handed to a watcher revoked since.
        let events = self.auth.while_admitted(watcher, ReceiverStream::new(rx));
        Ok(Response::new(Box::pin(events)))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.raft.status().await?))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        require_admin(&request, self.raft.province(), "adding a registry server")?;
        let req = request.into_inner();
        if req.id == 0 || req.peer_address.is_empty() {
            return Err(Status::invalid_argument(
                "a new member needs a positive id and a peer address",
            ));
        }
        let members = self
            .raft
            .change_membership(
                MembershipOp::Add(Member {
                    id: req.id,
                    peer_address: req.peer_address,
                    client_address: req.client_address,
                    voter: false,
                    incarnation: 0,
                }),
                req.idempotency_key,
            )
            .await?;
        Ok(Response::new(MembershipResponse { members }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        require_admin(&request, self.raft.province(), "removing a registry server")?;
        let req = request.into_inner();
        let members = self
            .raft
            .change_membership(MembershipOp::Remove(req.id), req.idempotency_key)
            .await?;
        Ok(Response::new(MembershipResponse { members }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        require_admin(
            &request,
            self.raft.province(),
            "taking a backup of the catalog",
        )?;
        let backup = self.raft.backup().await?;
        let catalog = CatalogSnapshot::decode(backup.catalog.as_slice())
            .map_err(|e| Status::internal(format!("the catalog copy cannot be read back: {e}")))?;
        let taken = RegistryBackup {
            revision: backup.revision,
            applied_index: backup.applied_index,
            server_id: self.raft.id,
            taken_unix_ms: crate::calendar::unix_now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            catalog: Some(catalog),
        };
        // Encoding, hashing and signing a catalog of many megabytes takes a
        // while: off the threads that serve calls.
        let signer = self.signer.clone();
        let file = tokio::task::spawn_blocking(move || crate::backup::encode(&taken, &signer))
            .await
            .map_err(|e| Status::internal(format!("signing the backup stopped: {e}")))?
            .map_err(|e| Status::internal(format!("the backup cannot be signed: {e}")))?;
        let chunks: Vec<Result<SnapshotChunk, Status>> = file
            .chunks(BACKUP_CHUNK)
            .map(|data| {
                Ok(SnapshotChunk {
                    data: data.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        require_admin(
            &request,
            self.raft.province(),
            "moving the registry's leadership",
        )?;
        let to = request.into_inner().to;
        let to = if to == 0 {
            match self.raft.transfer_leadership().await? {
                Some(to) => to,
                None => {
                    let status = self.raft.status().await?;
                    return Err(RegistryError::Unavailable(format!(
                        "registry server {} is not the leader (leader: {}); ask the leader, or name the new leader with --to",
                        status.id, status.leader_id
                    ))
                    .into());
                }
            }
        } else {
            self.raft.transfer_leadership_to(to).await?;
            to
        };
        // The transfer completes when `to` wins its election, about one
        // round trip after it hears it may; give up after a few elections.
        let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
        loop {
            let status = self.raft.status().await?;
            if status.leader_id == to {
                return Ok(Response::new(TransferLeaderResponse { leader_id: to }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RegistryError::Unavailable(format!(
                    "leadership did not move to server {to} within {} ms (leader now: {}); is it caught up and reachable? Check `lgsp registry status`",
                    TRANSFER_WAIT.as_millis(),
                    status.leader_id
                ))
                .into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The size of the pieces a backup is streamed in.
const BACKUP_CHUNK: usize = 1 << 20;

/// How long a leadership transfer may take before it is reported failed.
const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends every change from `from` on: the stored history first, then live
/// events, re-reading the history whenever the live feed skips or lags.
/// Ends with the error `stale` resolves to, if it does: this server can no
/// longer tell that its catalog is current.
async fn stream_changes(
    db: Kv,
    from: u64,
    live: broadcast::Receiver<WatchEvent>,
    stale: impl std::future::Future<Output = RegistryError>,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
) {
    // A watch that ended (its watcher left, or was refused) stops now, not
    // at the next change in the catalog.
    let sent = tokio::select! {
        sent = send_changes(&db, from, live, &tx) => sent,
        () = tx.closed() => Ok(()),
        why = stale => {
            tracing::info!(error = %why, "a watch ended: this server's catalog may be stale");
            let _ = tx.send(Err(why.into())).await;
            Ok(())
        }
    };
    if let Err(error) = sent {
        // The watcher must learn its feed broke, not wait on a silent one.
        tracing::error!(%error, "a watch ended: the catalog could not be read");
        let _ = tx.send(Err(RegistryError::from(error).into())).await;
    }
}

/// History events a watch reads at a time: a watcher far behind (up to the
/// whole history, 100,000 events by default) costs the server one chunk
/// and the channel's 256 events, not its whole lag.
pub const CATCH_UP_CHUNK: u64 = 256;

/// How a catch-up through the stored history ended.
enum CatchUp {
    /// Every stored event from the asked revision on was sent.
    Done,
    /// The revision asked for is no longer in the history.
    Compacted,
    /// The watcher went away.
    Closed,
}

/// Sends the history from `*next` on, [`CATCH_UP_CHUNK`] events at a time,
/// advancing `*next` past what was sent. The consensus loop compacts the
/// history while watches read it, so a check of the compact revision made
/// before a read proves nothing: only an unbroken run of revisions from
/// `*next` is sent, and a chunk that does not start there means compacted.
async fn catch_up(
    db: &Kv,
    next: &mut u64,
    tx: &mpsc::Sender<Result<WatchEvent, Status>>,
) -> Result<CatchUp, StoreError> {
    loop {
        let chunk = catalog::history_chunk(db, *next, CATCH_UP_CHUNK)?;
        if chunk.is_empty() {
            return Ok(if *next < catalog::compact_revision(db)? {
                CatchUp::Compacted
            } else {
                CatchUp::Done
            });
        }
        for event in chunk {
            if event.revision != *next {
                return Ok(CatchUp::Compacted);
            }
            *next += 1;
            if tx.send(Ok(event)).await.is_err() {
                return Ok(CatchUp::Closed);
            }
        }
    }
}

/// Does the work of [`stream_changes`]; a closed stream is not an error.
async fn send_changes(
    db: &Kv,
    from: u64,
    mut live: broadcast::Receiver<WatchEvent>,
    tx: &mpsc::Sender<Result<WatchEvent, Status>>,
) -> Result<(), StoreError> {
    let compacted = |revision| WatchEvent {
        r#type: EventType::Compacted as i32,
        revision,
        record: None,
    };
    if from < catalog::compact_revision(db)? {
        let _ = tx.send(Ok(compacted(catalog::revision(db)?))).await;
        return Ok(());
    }
    let mut next = from;
    match catch_up(db, &mut next, tx).await? {
        CatchUp::Done => {}
        CatchUp::Compacted => {
            let _ = tx.send(Ok(compacted(catalog::revision(db)?))).await;
            return Ok(());
        }
        CatchUp::Closed => return Ok(()),
    }
    // The server's own revision: a client whose copy is newer than this
    // (a registry restored from a backup) learns it here.
    let synced = WatchEvent {
        r#type: EventType::Synced as i32,
        revision: catalog::revision(db)?,
        record: None,
    };
    if tx.send(Ok(synced)).await.is_err() {
        return Ok(());
    }
    loop {
        let event = match live.recv().await {
            Ok(event) if event.r#type == EventType::Compacted as i32 => {
                let _ = tx.send(Ok(event)).await;
                return Ok(());
            }
            Ok(event) if event.revision < next => continue,
            Ok(event) if event.revision == next => {
                next += 1;
                event
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                match catch_up(db, &mut next, tx).await? {
                    CatchUp::Done => continue,
                    CatchUp::Compacted => {
                        let _ = tx.send(Ok(compacted(catalog::revision(db)?))).await;
                        return Ok(());
                    }
                    CatchUp::Closed => return Ok(()),
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        if tx.send(Ok(event)).await.is_err() {
            return Ok(());
        }
    }
}

/// Raft traffic from other registry servers.
#[derive(Clone, Debug)]
pub struct PeerService {
    raft: RaftHandle,
}

impl PeerService {
    /// The peer API, stepping what other servers send into this server's
    /// consensus loop.
    pub fn new(raft: RaftHandle) -> Self {
        Self { raft }
    }
}

#[tonic::async_trait]
impl RegistryPeer for PeerService {
    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let batch = request.into_inner();
        let mut messages = Vec::new();
        for bytes in batch.messages {
            let m = raft::eraftpb::Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            messages.push(m);
        }
        self.raft.step(batch.incarnation, messages).await?;
        Ok(Response::new(RaftAck {}))
    }

    async fn send_snapshot(
        &self,
        request: Request<tonic::Streaming<RaftSnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut chunks = request.into_inner();
        let mut bytes = Vec::new();
        let mut sender = None;
        while let Some(chunk) = chunks.message().await? {
            let (incarnation, total) = *sender.get_or_insert((chunk.incarnation, chunk.total));
            if total > MAX_PEER_MESSAGE as u64 {
                return Err(Status::resource_exhausted(format!(
                    "a snapshot of {total} bytes is larger than a server accepts ({MAX_PEER_MESSAGE})"
                )));
            }
            if chunk.incarnation != incarnation || chunk.total != total {
                return Err(Status::invalid_argument(
                    "the chunks of one snapshot disagree on its sender or size",
                ));
            }
            if bytes.is_empty() {
                bytes.reserve_exact(total as usize);
            }
            if (bytes.len() + chunk.data.len()) as u64 > total {
                return Err(Status::invalid_argument(format!(
                    "the snapshot's chunks run past the {total} bytes it announced"
                )));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let Some((incarnation, total)) = sender else {
            return Err(Status::invalid_argument("a snapshot stream without chunks"));
        };
        if bytes.len() as u64 != total {
            return Err(Status::invalid_argument(format!(
                "the snapshot stream ended after {} of its {total} bytes",
                bytes.len()
            )));
        }
        let message = raft::eraftpb::Message::parse_from_bytes(&bytes)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        if message.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "only a snapshot may be sent as a snapshot stream",
            ));
        }
        self.raft.step(incarnation, vec![message]).await?;
        Ok(Response::new(RaftAck {}))
    }

    async fn peer_status(
        &self,
        request: Request<PeerStatusRequest>,
    ) -> Result<Response<PeerStatusResponse>, Status> {
        let asker = request.into_inner().from;
        Ok(Response::new(self.raft.peer_status(asker).await?))
    }
}

#[cfg(test)]
mod tests;

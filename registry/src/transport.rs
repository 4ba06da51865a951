//! Sending Raft messages to other registry servers: the [`Network`] trait
//! the consensus loop sends through, and its gRPC implementation with mTLS,
//! [`Transport`] (the in-memory one for tests is in `mem_network.rs`).
//!
//! Each peer has its own queue and sending task, so one slow or dead peer
//! never holds up the others. A full queue drops messages (Raft resends);
//! a failed send is reported back to Raft as unreachable, and the task backs
//! off before trying again. Each batch must be delivered within the peer
//! deadline (5 s by default).
//!
//! A snapshot (the whole catalog) goes on its own, in a task of its own, as
//! a stream of chunks ([`SNAPSHOT_CHUNK`] bytes): its deadline applies to
//! each chunk, not to the whole, so a catalog that takes longer than the
//! deadline to send still reaches a follower that is far behind, and a peer
//! that stops reading is still given up on.

use crate::storage::encode;
use lgsp_certs::{ClientTrust, Credentials, Expected};
use lgsp_proto::registry_peer_client::RegistryPeerClient;
use lgsp_proto::{RaftBatch, RaftSnapshotChunk};
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
#[cfg(feature = "faults")]
use std::collections::HashSet;
use std::fmt;
#[cfg(feature = "faults")]
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the transport reports back to the Raft loop.
#[derive(Debug)]
pub enum Report {
    /// A message to this peer could not be queued or sent; Raft slows its
    /// replication to it.
    Unreachable(u64),
    /// A snapshot sent to a peer was delivered (`ok`) or not.
    Snapshot {
        /// The peer's Raft id.
        to: u64,
        /// Whether the peer accepted the batch carrying the snapshot.
        ok: bool,
    },
}

/// Reports `message` as not delivered when it carries a snapshot: raft-rs
/// waits for a snapshot's report before it sends the follower anything more,
/// so a snapshot dropped silently would strand the follower until the next
/// leader change.
fn dropped(reports: &mpsc::UnboundedSender<Report>, message: &Message) {
    if message.get_msg_type() == MessageType::MsgSnapshot {
        let _ = reports.send(Report::Snapshot {
            to: message.to,
            ok: false,
        });
    }
}

/// Network faults injected by tests: messages to and from isolated peers
/// are dropped on this server. Behind the `faults` feature, so that a
/// production server takes no lock per Raft message to ask.
#[cfg(feature = "faults")]
#[derive(Debug, Default)]
pub struct Faults {
    isolated: RwLock<HashSet<u64>>,
}

#[cfg(feature = "faults")]
impl Faults {
    /// Drops all traffic between this server and `peers`.
    pub fn isolate(&self, peers: &[u64]) {
        self.isolated.write().expect("faults lock").extend(peers);
    }

    /// Restores all traffic.
    pub fn heal(&self) {
        self.isolated.write().expect("faults lock").clear();
    }

    /// Whether traffic with `peer` is dropped now.
    pub fn blocks(&self, peer: u64) -> bool {
        self.isolated.read().expect("faults lock").contains(&peer)
    }
}

/// Where the consensus loop sends Raft messages. Sending never blocks the
/// loop: what cannot be sent is dropped (Raft resends), and what the network
/// learns (an unreachable peer, a snapshot delivered or not) it reports back
/// to the loop on a channel of its own.
pub trait Network: Send + Sync + fmt::Debug {
    /// Queues messages for their peers.
    fn send(&self, messages: Vec<Message>);

    /// Sets where peer `id` listens (ignored by a network that needs no
    /// address).
    fn set_address(&self, id: u64, address: &str);

    /// Whether a message received from `from` may be stepped; `false` drops
    /// it (fault injection).
    fn accepts(&self, from: u64) -> bool {
        let _ = from;
        true
    }
}

/// Outgoing Raft traffic of one server, over gRPC.
pub struct Transport {
    id: u64,
    /// This server's data directory incarnation, sent with every batch.
    incarnation: u64,
    creds: Credentials,
    addresses: RwLock<HashMap<u64, String>>,
    queues: Mutex<HashMap<u64, (String, mpsc::Sender<Message>)>>,
    reports: mpsc::UnboundedSender<Report>,
    /// How long a batch may take to be delivered, and a snapshot chunk to be
    /// taken, before the peer is reported unreachable.
    timeout: Duration,
    /// The server's runtime, where sending tasks run (the consensus loop
    /// calls `send` from a thread of its own).
    runtime: tokio::runtime::Handle,
    /// The faults tests inject on this server, shared with the sending tasks.
    #[cfg(feature = "faults")]
    pub faults: Arc<Faults>,
}

// By hand, so that logging the transport never prints the server's private
// key (`Credentials` prints its PEM).
impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.id)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

const QUEUE: usize = 4096;

/// The size of the pieces a snapshot is sent in.
pub const SNAPSHOT_CHUNK: usize = 256 << 10;

/// The largest raft message a server accepts from a peer, in a batch or as
/// a snapshot.
pub const MAX_PEER_MESSAGE: usize = 256 << 20;

impl Transport {
    /// The transport of server `id`, whose data directory is `incarnation`,
    /// giving up on a batch (or a snapshot chunk) that is not delivered
    /// within `timeout`. Must be called inside the server's tokio runtime.
    pub fn new(
        id: u64,
        incarnation: u64,
        creds: Credentials,
        reports: mpsc::UnboundedSender<Report>,
        timeout: Duration,
    ) -> Self {
        Self {
            id,
            incarnation,
            creds,
            addresses: RwLock::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            reports,
            timeout,
            runtime: tokio::runtime::Handle::current(),
            #[cfg(feature = "faults")]
            faults: Arc::new(Faults::default()),
        }
    }

    fn put_address(&self, id: u64, address: &str) {
        if id != self.id && !address.is_empty() {
            self.addresses
                .write()
                .expect("address lock")
                .insert(id, address.to_owned());
        }
    }

    fn queue_all(&self, messages: Vec<Message>) {
        for msg in messages {
            let to = msg.to;
            #[cfg(feature = "faults")]
            if self.faults.blocks(to) {
                dropped(&self.reports, &msg);
                continue;
            }
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(msg);
                continue;
            }
            let Some(sender) = self.queue(to) else {
                tracing::debug!(peer = to, "no address for peer; message dropped");
                let _ = self.reports.send(Report::Unreachable(to));
                dropped(&self.reports, &msg);
                continue;
            };
            if let Err(e) = sender.try_send(msg) {
                let _ = self.reports.send(Report::Unreachable(to));
                let (mpsc::error::TrySendError::Full(msg) | mpsc::error::TrySendError::Closed(msg)) =
                    e;
                dropped(&self.reports, &msg);
            }
        }
    }

    fn address(&self, to: u64) -> Option<String> {
        self.addresses
            .read()
            .expect("address lock")
            .get(&to)
            .cloned()
    }

    /// Sends a snapshot in a task of its own, reporting whether it was
    /// delivered.
    fn send_snapshot(&self, message: Message) {
        let to = message.to;
        let Some(address) = self.address(to) else {
            tracing::debug!(peer = to, "no address for peer; snapshot dropped");
            let _ = self.reports.send(Report::Unreachable(to));
            dropped(&self.reports, &message);
            return;
        };
        let reports = self.reports.clone();
        let (creds, incarnation, timeout) = (self.creds.clone(), self.incarnation, self.timeout);
        self.runtime.spawn(async move {
            let started = std::time::Instant::now();
            let index = message.get_snapshot().get_metadata().index;
            let sent = send_snapshot(&address, &creds, incarnation, &message, timeout).await;
            match &sent {
                Ok(bytes) => tracing::info!(
                    peer = to,
                    index,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot sent"
                ),
                Err(error) => {
                    tracing::warn!(peer = to, %address, index, %error, "sending a snapshot failed");
                    let _ = reports.send(Report::Unreachable(to));
                }
            }
            let _ = reports.send(Report::Snapshot {
                to,
                ok: sent.is_ok(),
            });
        });
    }

    fn queue(&self, to: u64) -> Option<mpsc::Sender<Message>> {
        let address = self.address(to)?;
        let mut queues = self.queues.lock().expect("queue lock");
        if let Some((addr, tx)) = queues.get(&to)
            && *addr == address
            && !tx.is_closed()
        {
            return Some(tx.clone());
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        self.runtime.spawn(peer_sender(
            Link {
                to,
                incarnation: self.incarnation,
                address: address.clone(),
                creds: self.creds.clone(),
                timeout: self.timeout,
            },
            rx,
            self.reports.clone(),
            #[cfg(feature = "faults")]
            self.faults.clone(),
        ));
        queues.insert(to, (address, tx.clone()));
        Some(tx)
    }
}

impl Network for Transport {
    fn send(&self, messages: Vec<Message>) {
        self.queue_all(messages);
    }

    fn set_address(&self, id: u64, address: &str) {
        self.put_address(id, address);
    }

    #[cfg(feature = "faults")]
    fn accepts(&self, from: u64) -> bool {
        !self.faults.blocks(from)
    }
}

/// Where and how a sending task reaches its peer.
struct Link {
    to: u64,
    /// This server's data directory incarnation, sent with every batch.
    incarnation: u64,
    address: String,
    creds: Credentials,
    /// The peer deadline: how long one batch may take.
    timeout: Duration,
}

async fn peer_sender(
    link: Link,
    mut rx: mpsc::Receiver<Message>,
    reports: mpsc::UnboundedSender<Report>,
    #[cfg(feature = "faults")] faults: Arc<Faults>,
) {
    let Link {
        to,
        incarnation,
        address,
        creds,
        timeout,
    } = link;
    let channel = match peer_channel(&address, &creds, timeout, Some(timeout)) {
        Ok(channel) => channel,
        Err(error) => {
            tracing::error!(peer = to, %address, %error, "cannot reach peer");
            rx.close();
            while let Ok(m) = rx.try_recv() {
                dropped(&reports, &m);
            }
            return;
        }
    };
    let mut client = RegistryPeerClient::new(channel)
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        #[cfg(feature = "faults")]
        if faults.blocks(to) {
            for m in &batch {
                dropped(&reports, m);
            }
            continue;
        }
        let snapshots: Vec<u64> = batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .map(|m| m.to)
            .collect();
        let request = RaftBatch {
            messages: batch.iter().map(encode).collect(),
            incarnation,
        };
        match client.send(request).await {
            Ok(_) => {
                backoff = Duration::from_millis(50);
                for to in snapshots {
                    let _ = reports.send(Report::Snapshot { to, ok: true });
                }
            }
            Err(status) => {
                tracing::debug!(peer = to, %address, error = %lgsp_certs::tls::explain_status(&status), "sending to peer failed");
                let _ = reports.send(Report::Unreachable(to));
                for to in snapshots {
                    let _ = reports.send(Report::Snapshot { to, ok: false });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                // Whatever queued up meanwhile is stale; Raft resends
                // (snapshots once they are reported).
                while let Ok(m) = rx.try_recv() {
                    dropped(&reports, &m);
                }
            }
        }
    }
}

/// Sends `message` (a snapshot) to the peer listener at `address` as a
/// stream of [`SNAPSHOT_CHUNK`]-byte pieces, giving up when a piece is not
/// taken, or the peer does not answer once it has them all, within
/// `timeout`; however long the whole takes. Returns the bytes sent, or why
/// it failed.
async fn send_snapshot(
    address: &str,
    creds: &Credentials,
    incarnation: u64,
    message: &Message,
    timeout: Duration,
) -> Result<usize, String> {
    let channel = peer_channel(address, creds, timeout, None).map_err(|e| e.to_string())?;
    let mut client = RegistryPeerClient::new(channel);
    // Encoded here, on the runtime, not on the consensus thread.
    let bytes = encode(message);
    let total = bytes.len();
    let (chunks, stream) = mpsc::channel::<RaftSnapshotChunk>(1);
    let call = client.send_snapshot(tokio_stream::wrappers::ReceiverStream::new(stream));
    tokio::pin!(call);
    let feed = async {
        for piece in bytes.chunks(SNAPSHOT_CHUNK) {
            let chunk = RaftSnapshotChunk {
                data: piece.to_vec(),
                incarnation,
                total: total as u64,
            };
            match tokio::time::timeout(timeout, chunks.send(chunk)).await {
                Ok(Ok(())) => {}
                // The call ended early; its answer says why.
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    return Err(format!(
                        "the peer took no part of the snapshot for {} ms",
                        timeout.as_millis()
                    ));
                }
            }
        }
        drop(chunks);
        Ok(())
    };
    let answer = tokio::select! {
        answer = &mut call => answer,
        fed = feed => {
            fed?;
            tokio::time::timeout(timeout, &mut call).await.map_err(|_| {
                format!("no answer within {} ms after the whole snapshot", timeout.as_millis())
            })?
        }
    };
    answer
        .map(|_| total)
        .map_err(|status| lgsp_certs::tls::explain_status(&status))
}

/// A lazy channel to the peer listener at `address`, connecting within
/// `connect` and giving each call `request` (`None`: no deadline of its
/// own). Only another registry server of the province may be reached
/// there: the peer is checked by its identity, not its address.
fn peer_channel(
    address: &str,
    creds: &Credentials,
    connect: Duration,
    request: Option<Duration>,
) -> Result<tonic::transport::Channel, lgsp_certs::CertError> {
    // A peer is a registry server of this server's own agency (the
    // province's): the catalog's rules take the province from it.
    let own = creds.spiffe_id()?;
    let expected = Expected {
        agency: Some(own.agency.clone()),
        ..Expected::registry(&own.trust_domain)
    };
    let trust = ClientTrust::new(creds)?;
    lgsp_certs::server_identity::connect_lazy(address, creds, trust, expected, |e| {
        let e = e.connect_timeout(connect);
        match request {
            Some(request) => e.timeout(request),
            None => e,
        }
    })
}

/// Asks the registry server at `address` (its peer listener) for its state
/// and what it knows of server `asker`, within `timeout`. Fails, with the
/// reason in words, when it cannot be reached or does not answer in time.
pub async fn ask_peer(
    address: &str,
    creds: &Credentials,
    asker: u64,
    timeout: Duration,
) -> Result<lgsp_proto::PeerStatusResponse, String> {
    let channel =
        peer_channel(address, creds, timeout, Some(timeout)).map_err(|e| e.to_string())?;
    let mut client = RegistryPeerClient::new(channel);
    let call = client.peer_status(lgsp_proto::PeerStatusRequest { from: asker });
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(lgsp_certs::tls::explain_status(&status)),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_to(to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = to;
        m
    }

    fn append_to(to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = to;
        m
    }

    fn snapshot_reports(rx: &mut mpsc::UnboundedReceiver<Report>) -> Vec<(u64, bool)> {
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            if let Report::Snapshot { to, ok } = r {
                got.push((to, ok));
            }
        }
        got
    }

    fn transport() -> (Transport, mpsc::UnboundedReceiver<Report>) {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = lgsp_certs::ca::CertificateAuthority::init(
            &dir.path().join("ca"),
            "test.lgsp.local",
            "test CA",
            1,
        )
        .unwrap();
        let id = lgsp_certs::SpiffeId::new(
            "test.lgsp.local",
            lgsp_certs::AgencyCode::new("000.00.00.H62").unwrap(),
            lgsp_certs::Role::Registry,
            "registry-1",
        )
        .unwrap();
        let spec = lgsp_certs::ca::LeafSpec::for_days(id, 1).unwrap();
        let issued = ca.issue(&spec).unwrap();
        let creds =
            Credentials::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem()).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        (Transport::new(1, 1, creds, tx, Duration::from_secs(5)), rx)
    }

    #[tokio::test]
    async fn a_snapshot_for_a_peer_without_an_address_is_reported_not_delivered() {
        let (transport, mut reports) = transport();
        transport.send(vec![append_to(2), snapshot_to(2)]);
        assert_eq!(snapshot_reports(&mut reports), vec![(2, false)]);
    }

    #[tokio::test]
    async fn a_snapshot_is_not_held_up_by_a_full_queue_and_reported_when_it_fails() {
        let (transport, mut reports) = transport();
        // Nothing listens there; the batch sending task does not run before
        // the test yields, so the queue is full.
        transport.set_address(2, "127.0.0.1:9");
        transport.send((0..QUEUE).map(|_| append_to(2)).collect());
        transport.send(vec![snapshot_to(2)]);
        assert_eq!(
            snapshot_reports(&mut reports),
            vec![],
            "the snapshot goes on its own, not into the full queue"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let report = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, reports.recv()).await {
                Ok(Some(Report::Snapshot { to, ok })) => break (to, ok),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => panic!("the failed snapshot was never reported"),
            }
        };
        assert_eq!(report, (2, false));
    }
}

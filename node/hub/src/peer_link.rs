//! Links between hubs: a peer's hub carries the calls of its nodes to this
//! province on one long-lived `NodeLink.Calls` stream on the outward
//! listener, as a node carries its calls to a provider node (see
//! `lgsp_node::link`), instead of a new HTTP/2 stream per call.
//!
//! Each call on the link is handed to [`Inbound`]'s `Call` exactly as if it
//! had come alone, with the link's TLS connection (so the peer's certificate
//! is checked against the peer's CA and CRL per call), its record of on
//! whose behalf and its deadline: the same checks, limits and log entry.
//! A call the peer gives up on is dropped (and logged as such by
//! [`Inbound`]); when the hub stops, a link stops reading, answers what it
//! read and ends.

use crate::inbound::Inbound;
use lgsp_proto::data_exchange_server::DataExchange as _;
use lgsp_proto::node_link_server::NodeLink;
use lgsp_proto::{LinkCall, LinkReply};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Calls one peer link may have in flight at once; then the hub stops
/// reading it until some are answered (HTTP/2 flow control holds the peer).
const IN_FLIGHT_PER_LINK: usize = 1024;

/// Replies queued before HTTP/2 takes them.
const QUEUE: usize = 256;

/// The outward listener's link service.
#[derive(Debug, Clone)]
pub struct PeerLinkServer {
    inbound: Inbound,
    stopped: watch::Receiver<bool>,
}

impl PeerLinkServer {
    /// Serves links with `inbound` until `stopped` turns true.
    pub fn new(inbound: Inbound, stopped: watch::Receiver<bool>) -> Self {
        Self { inbound, stopped }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<LinkReply, Status>> + Send>>;

#[tonic::async_trait]
impl NodeLink for PeerLinkServer {
    type CallsStream = ReplyStream;

    async fn calls(
        &self,
        request: Request<Streaming<LinkCall>>,
    ) -> Result<Response<Self::CallsStream>, Status> {
        // Who opens a link is checked now; every call on it again.
        let peer = self.inbound.peer_of(&request)?;
        let caller = self.inbound.link_caller_of(&request)?;
        let (_, mut extensions, incoming) = request.into_parts();
        extensions.insert(caller);
        let (replies, queued) = mpsc::channel(QUEUE);
        tracing::debug!(peer = %peer.name, "peer link opened");
        tokio::spawn(read_calls(
            self.inbound.clone(),
            extensions,
            incoming,
            replies,
            self.stopped.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(queued))))
    }
}

/// Reads one link's calls and serves each on its own task; cancellations
/// abort the call they name. Ends when the peer ends the link, the link
/// breaks, or the hub stops (then after answering every call read).
async fn read_calls(
    inbound: Inbound,
    extensions: tonic::Extensions,
    mut incoming: Streaming<LinkCall>,
    replies: mpsc::Sender<Result<LinkReply, Status>>,
    mut stopped: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_LINK));
    let serving: Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>> = Arc::default();
    loop {
        let message = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => break,
            message = incoming.message() => message,
        };
        let call = match message {
            Ok(Some(call)) => call,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(error = %status, "peer link broken");
                // The peer's hub gave up on everything it sent.
                for (_, task) in serving
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .drain()
                {
                    task.abort();
                }
                return;
            }
        };
        if call.cancel != 0 {
            let task = serving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&call.id);
            if let Some(task) = task {
                task.abort();
            }
            continue;
        }
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let id = call.id;
        let Some(envelope) = call.envelope else {
            let status = Status::invalid_argument("a link call without an envelope");
            let _ = replies
                .send(Ok(lgsp_node::link::refusal(id, &status)))
                .await;
            continue;
        };
        let mut request = Request::from_parts(Default::default(), extensions.clone(), envelope);
        if call.timeout_ms > 0 {
            request.set_timeout(Duration::from_millis(call.timeout_ms));
        }
        if let Some(signed) = &call.obo {
            lgsp_node::obo::to_metadata(request.metadata_mut(), signed);
        }
        let (inbound, replies, done) = (inbound.clone(), replies.clone(), serving.clone());
        // Held while the task is spawned, so that it cannot remove itself
        // before it is inserted.
        let mut serving_now = serving.lock().unwrap_or_else(PoisonError::into_inner);
        let task = tokio::spawn(async move {
            let result = inbound.call(request).await;
            done.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            let reply = match result {
                Ok(response) => LinkReply {
                    id,
                    response: Some(response.into_inner()),
                    ..Default::default()
                },
                Err(status) => lgsp_node::link::refusal(id, &status),
            };
            let _ = replies.send(Ok(reply)).await;
            drop(slot);
        });
        serving_now.insert(id, task.abort_handle());
    }
    // Answer what was read before ending the link.
    let _ = in_flight.acquire_many(IN_FLIGHT_PER_LINK as u32).await;
}

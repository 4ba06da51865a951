//! The provider side of node links: reads the calls on each link another
//! node opened and serves each through the provider's one pipeline.

use super::{
    IN_FLIGHT_PER_LINK, LINKS_PER_CONSUMER, MAX_MESSAGE_HEADER, MAX_STATUS_DETAILS,
    MAX_STATUS_MESSAGE, QUEUE,
};
use crate::deadline::Deadline;
use crate::limits::Permit;
use crate::provider::{Incoming, Provider};
use crate::refusal::Refusal;
use futures::{FutureExt as _, Stream, StreamExt as _};
use lgsp_certs::Peer;
use lgsp_proto::node_link_server::NodeLink;
use lgsp_proto::{Envelope, LinkCall, LinkReply, SignedOnBehalfOf};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

/// The provider side: answers the calls on links other nodes open.
#[derive(Debug, Clone)]
pub struct LinkServer {
    provider: Provider,
    shutdown: watch::Receiver<bool>,
    /// Links open now, by consumer agency.
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// A reply on its way out, holding its call's place on the link and the
/// consumer's in-flight permit until HTTP/2 takes it.
type Queued = (LinkReply, Option<OwnedSemaphorePermit>, Option<Permit>);

/// Tells the call a cancellation names, if it is still being served, that
/// the consumer gave up on it. The consumer may only say why: its deadline
/// passed, or it cancelled.
fn cancel(serving: &Serving, call: &LinkCall) {
    let gave_up = serving
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&call.id);
    if let Some(gave_up) = gave_up {
        let status = if call.cancel == Code::DeadlineExceeded as i32 {
            Status::deadline_exceeded("the caller's deadline passed")
        } else {
            Status::cancelled("the caller gave up on the call")
        };
        let _ = gave_up.send(status);
    }
}

/// Calls being served on one link, by id: how to tell each that the
/// consumer gave up on it.
type Serving = Arc<Mutex<HashMap<u64, oneshot::Sender<Status>>>>;

type ReplyStream = Pin<Box<dyn Stream<Item = Result<LinkReply, Status>> + Send>>;

impl LinkServer {
    /// Serves links until `shutdown` turns true: then each link stops
    /// taking calls, answers those it took, and ends (status OK, so the
    /// consumer knows the calls left unanswered were never read), and the
    /// node's graceful shutdown does not wait on links that never end.
    pub fn new(provider: Provider, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            provider,
            shutdown,
            open: Arc::default(),
        }
    }

    /// Counts a new link of `agency`, or refuses it past [`LINKS_PER_CONSUMER`].
    fn register(&self, agency: &str) -> Result<OpenLink, Status> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(agency.to_owned()).or_default();
        if *n >= LINKS_PER_CONSUMER {
            return Err(Refusal::TooManyLinks {
                consumer: agency.to_owned(),
                max: LINKS_PER_CONSUMER,
            }
            .into());
        }
        *n += 1;
        let (gauge, calls) = self.provider.ctx().metrics.link_opened(agency);
        Ok(OpenLink {
            open: self.open.clone(),
            agency: agency.to_owned(),
            gauge,
            calls,
        })
    }

    /// Answers one call on a link from `peer` through the provider's one
    /// pipeline, as if it had come alone. `cancelled` ends the call when
    /// the consumer gives up on it; `reply_limit` is the largest response
    /// the consumer takes. Returns the reply and the consumer's permit,
    /// which must be held until the reply is sent.
    async fn answer(
        &self,
        peer: &Peer,
        call: LinkCall,
        cancelled: oneshot::Receiver<Status>,
        reply_limit: usize,
    ) -> (LinkReply, Option<Permit>) {
        let started = Instant::now();
        let id = call.id;
        let (result, permit) = match self.unwrap(call, started) {
            Ok((envelope, obo, deadline)) => {
                let gave_up = async move {
                    match cancelled.await {
                        Ok(status) => status,
                        // Never cancelled.
                        Err(_) => std::future::pending().await,
                    }
                };
                let incoming = Incoming {
                    envelope,
                    started,
                    deadline,
                    cancelled: gave_up,
                    response_limit: reply_limit,
                    obo,
                };
                self.provider.serve(peer, incoming).await
            }
            Err(status) => (Err(status), None),
        };
        let reply = match result {
            Ok(response) => LinkReply {
                id,
                response: Some(response),
                ..Default::default()
            },
            Err(status) => refusal(id, &status),
        };
        (reply, permit)
    }

    /// The envelope a link call carries, its record of on whose behalf (if
    /// any) and its deadline, counted from `started`. A link frame may be a
    /// little larger than the node's largest message, so the envelope's own
    /// size is checked here.
    fn unwrap(
        &self,
        call: LinkCall,
        started: Instant,
    ) -> Result<(Envelope, Option<SignedOnBehalfOf>, Option<Deadline>), Status> {
        let envelope = call
            .envelope
            .ok_or_else(|| Status::invalid_argument("a link call without an envelope"))?;
        let max = self.provider.ctx().config.limits.max_message_bytes;
        let size = envelope.encoded_len();
        if size > max {
            return Err(Refusal::EnvelopeTooLarge { size, max }.into());
        }
        let deadline = (call.timeout_ms > 0)
            .then(|| Deadline::after(started, Duration::from_millis(call.timeout_ms)));
        Ok((envelope, call.obo, deadline))
    }
}

/// The reply for call `id` that ended with `status` (its message and
/// details cut to what a link carries).
pub fn refusal(id: u64, status: &Status) -> LinkReply {
    let mut message = status.message().to_owned();
    if message.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    let details = status.details();
    LinkReply {
        id,
        response: None,
        code: status.code() as i32,
        message,
        details: if details.len() <= MAX_STATUS_DETAILS {
            details.to_vec()
        } else {
            Vec::new()
        },
        external_ids: crate::trace::status_external_ids(status),
    }
}

/// One open link, counted in its server's `open` and in the metrics until
/// dropped (when its reply stream ends).
#[derive(Debug)]
struct OpenLink {
    open: Arc<Mutex<HashMap<String, usize>>>,
    agency: String,
    /// `lgsp_node_links_open` of the agency, counting this link.
    gauge: Gauge,
    /// `lgsp_link_calls_total` of the agency.
    calls: Counter,
}

impl Drop for OpenLink {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.agency) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.agency);
            }
        }
        self.gauge.dec();
    }
}

#[tonic::async_trait]
impl NodeLink for LinkServer {
    type CallsStream = ReplyStream;

    async fn calls(
        &self,
        request: Request<Streaming<LinkCall>>,
    ) -> Result<Response<Self::CallsStream>, Status> {
        let peer = Peer::of(&request)?.clone();
        let own_max = self.provider.ctx().config.limits.max_message_bytes;
        let reply_limit = request
            .metadata()
            .get(MAX_MESSAGE_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .map_or(own_max, |theirs| theirs.min(own_max));
        let registered = self.register(peer.id.agency.as_str())?;
        let (replies, queued) = mpsc::channel::<Result<Queued, Status>>(QUEUE);
        tracing::debug!(consumer = %peer.id, "node link opened");
        let span = tracing::info_span!("link", side = "provider", consumer = %peer.id);
        tokio::spawn(
            read_calls(
                Arc::new(self.clone()),
                Arc::new(peer),
                request.into_inner(),
                replies,
                reply_limit,
                registered.calls.clone(),
            )
            .instrument(span),
        );
        let replies = ReceiverStream::new(queued).map(move |queued| {
            let _ = &registered;
            queued.map(|(reply, _slot, _permit)| reply)
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Reads one link's calls and serves each on its own task, so a slow
/// backend holds up only its own calls. At most [`IN_FLIGHT_PER_LINK`] are
/// taken at once: a consumer that sends faster than it is answered, or stops
/// reading replies, stops being read (HTTP/2 flow control then holds it
/// back), instead of growing this node's memory. Cancellations are read
/// whatever the calls in flight.
///
/// When the node shuts down, the link stops taking calls (those arriving are
/// answered as not served), still hears the consumer give up on the calls it
/// is serving (so both logs agree), and ends in order once every call taken
/// is answered and handed over: the consumer then knows that calls left
/// unanswered were never read. A broken request stream abandons the calls
/// being served (logged CANCELLED, as for a dropped connection) and ends the
/// replies with an error.
async fn read_calls(
    server: Arc<LinkServer>,
    peer: Arc<Peer>,
    mut incoming: Streaming<LinkCall>,
    replies: mpsc::Sender<Result<Queued, Status>>,
    reply_limit: usize,
    calls: Counter,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_LINK));
    let serving: Serving = Arc::default();
    let mut stop = server.shutdown.clone();
    let mut stopping = false;
    let all_back = in_flight
        .clone()
        .acquire_many_owned(IN_FLIGHT_PER_LINK as u32);
    tokio::pin!(all_back);
    let not_served = |id| {
        let status = Status::unavailable(
            "the provider node is shutting down: this call was not served; retrying is safe",
        );
        Ok((refusal(id, &status), None, None))
    };
    let broken = loop {
        let message = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                continue;
            }
            _ = &mut all_back, if stopping => break None,
            message = incoming.message() => message,
        };
        let call = match message {
            Ok(Some(call)) => call,
            Ok(None) => break None,
            Err(status) => break Some(status),
        };
        if call.cancel != 0 {
            cancel(&serving, &call);
            continue;
        }
        let id = call.id;
        let slot = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop), if !stopping => None,
            slot = in_flight.clone().acquire_owned(), if !stopping => {
                Some(slot.expect("the semaphore is never closed"))
            }
            () = std::future::ready(()), if stopping => None,
        };
        let Some(slot) = slot else {
            stopping = true;
            let _ = replies.send(not_served(id)).await;
            continue;
        };
        calls.inc();
        let cancelled = {
            let mut serving = serving.lock().unwrap_or_else(PoisonError::into_inner);
            match serving.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => None,
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    let (cancel, cancelled) = oneshot::channel();
                    vacant.insert(cancel);
                    Some(cancelled)
                }
            }
        };
        let Some(cancelled) = cancelled else {
            let status =
                Status::invalid_argument(format!("call id {id} is already in flight on this link"));
            let _ = replies
                .send(Ok((refusal(id, &status), Some(slot), None)))
                .await;
            continue;
        };
        let (server, peer, replies, serving) = (
            server.clone(),
            peer.clone(),
            replies.clone(),
            serving.clone(),
        );
        tokio::spawn(async move {
            let answered = AssertUnwindSafe(server.answer(&peer, call, cancelled, reply_limit))
                .catch_unwind()
                .await;
            serving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            let (reply, permit) = answered.unwrap_or_else(|_| {
                tracing::error!(request = id, "serving a call on a node link panicked");
                let status = Status::internal(
                    "the provider node failed while serving this call (see its log)",
                );
                (refusal(id, &status), None)
            });
            let _ = replies.send(Ok((reply, Some(slot), permit))).await;
        });
    };
    if let Some(status) = broken {
        tracing::debug!(consumer = %peer.id, error = %status, "node link broken");
        let abandoned =
            std::mem::take(&mut *serving.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, gave_up) in abandoned {
            let _ = gave_up.send(Status::cancelled("the consumer node's link broke"));
        }
        let _ = replies
            .send(Err(Status::aborted(format!(
                "the link's request stream broke: {}",
                status.message()
            ))))
            .await;
    }
}

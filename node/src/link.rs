//! Node links: one long-lived `NodeLink.Calls` stream from a consumer node
//! to each provider node it calls, carrying the agency applications' unary
//! calls as messages.
//!
//! A unary gRPC call costs the provider a new HTTP/2 stream (HEADERS with
//! HPACK, a trip through the server's service stack, trailers) on top of
//! the work it was asked for. On a link a call is one DATA frame each way,
//! and frames of calls in flight together leave in the same writes. The
//! provider still treats every call on a link as if it came alone: the
//! certificate is checked against the CRL in force, the consumer's limits
//! apply, the grant is checked, and the exchange is logged.
//!
//! A call goes as a unary `Call` instead when its envelope is large (so that
//! one upload does not hold up the small calls behind it) or when the
//! provider node is older and has no link service.

use crate::exchange::Provider;
use crate::limits::Permit;
use futures::{FutureExt as _, Stream, StreamExt as _};
use lgsp_certs::{Authenticator, Peer};
use lgsp_proto::node_link_client::NodeLinkClient;
use lgsp_proto::node_link_server::NodeLink;
use lgsp_proto::{CallResponse, Envelope, LinkCall, LinkReply};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

/// Envelopes larger than this (encoded) go as a unary call on their own
/// HTTP/2 stream rather than on the link shared with other calls.
pub const MAX_LINK_ENVELOPE: usize = 64 * 1024;

/// Calls queued on a link before callers wait for room, and replies queued
/// on the provider before they are handed to HTTP/2.
const QUEUE: usize = 256;

/// Room for a link message's own fields (id, code, a status message of up
/// to [`MAX_STATUS_MESSAGE`], details of up to [`MAX_STATUS_DETAILS`])
/// around a message of the node's largest size.
pub const FRAMING: usize = 32 * 1024;
const MAX_STATUS_MESSAGE: usize = 4 * 1024;
const MAX_STATUS_DETAILS: usize = 16 * 1024;

/// Calls one link may have in flight on the provider, from the moment they
/// are read until their reply is handed to HTTP/2; then the provider stops
/// reading the link until some are done.
const IN_FLIGHT_PER_LINK: usize = 1024;

/// Links one consumer agency may have open to this node at once (a node
/// opens one per provider node; an agency has a few nodes).
pub const LINKS_PER_CONSUMER: usize = 16;

/// The request header in which a consumer node gives its largest message.
const MAX_MESSAGE_HEADER: &str = "x-lgsp-max-message";

/// The provider side: answers the calls on links other nodes open.
#[derive(Debug, Clone)]
pub struct LinkServer {
    provider: Provider,
    auth: Authenticator,
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
    pub fn new(provider: Provider, auth: Authenticator, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            provider,
            auth,
            shutdown,
            open: Arc::default(),
        }
    }

    /// Counts a new link of `agency`, or refuses it past [`LINKS_PER_CONSUMER`].
    fn register(&self, agency: &str) -> Result<OpenLink, Status> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(agency.to_owned()).or_default();
        if *n >= LINKS_PER_CONSUMER {
            return Err(Status::resource_exhausted(format!(
                "agency {agency} already has {LINKS_PER_CONSUMER} node links open to this node, the most it allows"
            )));
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

    /// Answers one call on a link from `peer`: the same checks, limits and
    /// log entry as a unary call. `cancelled` ends the call when the
    /// consumer gives up on it; `reply_limit` is the largest response the
    /// consumer takes. Returns the reply and the consumer's permit, which
    /// must be held until the reply is sent.
    async fn answer(
        &self,
        peer: &Peer,
        call: LinkCall,
        cancelled: oneshot::Receiver<Status>,
        reply_limit: usize,
    ) -> (LinkReply, Option<Permit>) {
        let started = Instant::now();
        let id = call.id;
        let ctx = self.provider.ctx();
        let mut permit = None;
        let result = async {
            // Authenticated when the link opened; revocation since then
            // counts from the next call on it.
            self.auth.recheck(peer)?;
            permit = Some(ctx.limits.acquire(peer.id.agency.as_str())?);
            let envelope = call
                .envelope
                .ok_or_else(|| Status::invalid_argument("a link call without an envelope"))?;
            let max = ctx.config.limits.max_message_bytes;
            let size = envelope.encoded_len();
            if size > max {
                return Err(Status::out_of_range(format!(
                    "the envelope is {size} bytes; this node accepts at most {max}"
                )));
            }
            let deadline = (call.timeout_ms > 0)
                .then(|| Deadline::after(started, Duration::from_millis(call.timeout_ms)));
            let gave_up = async move {
                match cancelled.await {
                    Ok(status) => status,
                    // Never cancelled.
                    Err(_) => std::future::pending().await,
                }
            };
            self.provider
                .provide(peer, envelope, started, deadline, gave_up, reply_limit)
                .await
        }
        .await;
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
}

/// The reply for call `id` that ended with `status` (its message and
/// details cut to what a link carries).
fn refusal(id: u64, status: &Status) -> LinkReply {
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
        tokio::spawn(read_calls(
            Arc::new(self.clone()),
            Arc::new(peer),
            request.into_inner(),
            replies,
            reply_limit,
            registered.calls.clone(),
        ));
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

/// What a consumer node has learned about calling one provider node.
#[derive(Debug)]
enum Route {
    Link(Arc<Link>),
    /// The provider has no link service (an older node): unary calls.
    Unary,
}

/// The consumer side: this node's links to provider nodes, by endpoint.
#[derive(Debug, Default)]
pub struct Links {
    routes: Mutex<HashMap<String, Arc<OnceCell<Route>>>>,
}

/// How a call over [`Links::call`] went.
pub enum Sent {
    /// The provider answered, or the call failed on the way.
    Done(Result<CallResponse, Status>),
    /// The call was not sent: the provider node has no link service.
    Unsupported(Envelope),
}

impl Links {
    /// Calls `endpoint` with `envelope` over the link to it, opening the
    /// link on first use with `channel` (the pooled mTLS connection).
    /// `deadline` is the caller's, and bounds the opening too; `max` is the
    /// node's largest message.
    pub async fn call(
        &self,
        endpoint: &str,
        channel: impl Fn() -> Result<Channel, Status>,
        max: usize,
        envelope: Envelope,
        deadline: Option<Deadline>,
    ) -> Sent {
        let attempt = self.attempt(endpoint, channel, max, envelope, deadline);
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.at.into(), attempt)
                .await
                .unwrap_or_else(|_| {
                    Sent::Done(Err(Status::deadline_exceeded(format!(
                        "the provider node did not answer within the deadline ({} ms)",
                        deadline.total.as_millis()
                    ))))
                }),
            None => attempt.await,
        }
    }

    /// [`Self::call`] without its deadline.
    async fn attempt(
        &self,
        endpoint: &str,
        channel: impl Fn() -> Result<Channel, Status>,
        max: usize,
        mut envelope: Envelope,
        deadline: Option<Deadline>,
    ) -> Sent {
        // A link found closed is replaced once; a call that was never sent
        // on it can go on the new one.
        for _ in 0..2 {
            let slot = self.slot(endpoint);
            let route = slot
                .get_or_try_init(|| async { open(channel()?, max).await })
                .await;
            let link = match route {
                Ok(Route::Link(link)) => link,
                Ok(Route::Unary) => return Sent::Unsupported(envelope),
                // The provider takes no more links from this agency: this
                // call goes on its own stream (not remembered, so a link is
                // tried again next time).
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tracing::warn!(endpoint, reason = %status.message(), "the provider node refused a link; calling without one");
                    return Sent::Unsupported(envelope);
                }
                Err(status) => return Sent::Done(Err(status)),
            };
            match link.call(envelope, deadline).await {
                Ok(result) => return Sent::Done(result),
                Err(unsent) => {
                    envelope = unsent;
                    self.forget(endpoint, &slot);
                }
            }
        }
        Sent::Done(Err(Status::unavailable(format!(
            "the link to the provider node at {endpoint} closed twice in a row"
        ))))
    }

    fn slot(&self, endpoint: &str) -> Arc<OnceCell<Route>> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        // Found, almost always: no key is allocated then.
        if let Some(slot) = routes.get_mut(endpoint) {
            if let Some(Route::Link(link)) = slot.get()
                && link.is_closed()
            {
                *slot = Arc::default();
            }
            return slot.clone();
        }
        let slot = Arc::<OnceCell<Route>>::default();
        routes.insert(endpoint.to_owned(), slot.clone());
        slot
    }

    fn forget(&self, endpoint: &str, slot: &Arc<OnceCell<Route>>) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if routes.get(endpoint).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            routes.remove(endpoint);
        }
    }
}

/// Opens a link on `channel`, or learns that the provider has none.
async fn open(channel: Channel, max: usize) -> Result<Route, Status> {
    let (outgoing, queued) = mpsc::channel(QUEUE);
    let (cancels, cancelled) = mpsc::unbounded_channel();
    let mut client = NodeLinkClient::new(channel)
        .max_decoding_message_size(max + FRAMING)
        .max_encoding_message_size(max + FRAMING);
    // Cancellations go before calls, so that a busy link does not hold them up.
    let messages = futures::stream::select_with_strategy(
        UnboundedReceiverStream::new(cancelled),
        ReceiverStream::new(queued),
        |_: &mut ()| futures::stream::PollNext::Left,
    );
    let mut request = Request::new(messages);
    if let Ok(value) = max.to_string().parse() {
        request.metadata_mut().insert(MAX_MESSAGE_HEADER, value);
    }
    let replies = match client.calls(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Ok(Route::Unary),
        Err(status) => return Err(status),
    };
    let link = Arc::new(Link {
        outgoing,
        cancels,
        pending: Mutex::default(),
        next_id: AtomicU64::new(0),
    });
    tokio::spawn(read_replies(link.clone(), replies));
    Ok(Route::Link(link))
}

/// One open link: calls go out through `outgoing`, and each waits in
/// `pending` for the reply with its id.
#[derive(Debug)]
struct Link {
    outgoing: mpsc::Sender<LinkCall>,
    cancels: mpsc::UnboundedSender<LinkCall>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

type Waiter = oneshot::Sender<Result<CallResponse, Status>>;

#[derive(Debug, Default)]
struct Pending {
    /// Set once, when the link broke; no call waits after that.
    closed: bool,
    waiting: HashMap<u64, Waiter>,
}

impl Link {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.pending().closed
    }

    /// Sends one call and waits for its reply; gives the envelope back
    /// when the link closed before the call was sent. The caller bounds the
    /// wait by `deadline`, which is sent along as the time left.
    async fn call(
        &self,
        envelope: Envelope,
        deadline: Option<Deadline>,
    ) -> Result<Result<CallResponse, Status>, Envelope> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, reply) = oneshot::channel();
        {
            let mut pending = self.pending();
            if pending.closed {
                return Err(envelope);
            }
            pending.waiting.insert(id, waiter);
        }
        // Whether answered, timed out or dropped (the application gave
        // up), the call stops waiting, and the provider is told if it
        // has not answered yet.
        let mut waiting = Forget {
            link: self,
            id,
            deadline,
            answered: false,
        };
        let call = LinkCall {
            id,
            envelope: Some(envelope),
            timeout_ms: deadline.map_or(0, |d| (d.left().as_millis() as u64).max(1)),
            cancel: 0,
        };
        if let Err(mpsc::error::SendError(call)) = self.outgoing.send(call).await {
            return Err(call.envelope.unwrap_or_default());
        }
        let reply = reply.await;
        // Whoever answered took the call out of `pending`.
        waiting.answered = true;
        Ok(reply.unwrap_or_else(|_| {
            Err(Status::unavailable(
                "the link to the provider node closed before the reply came",
            ))
        }))
    }
}

/// Removes a call from its link's waiting calls when the caller stops
/// waiting; if no reply came, tells the provider to stop serving it.
struct Forget<'a> {
    link: &'a Link,
    id: u64,
    deadline: Option<Deadline>,
    answered: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.answered || self.link.pending().waiting.remove(&self.id).is_none() {
            return; // answered, or the link closed
        }
        let code = match self.deadline {
            Some(d) if d.is_near_or_past() => Code::DeadlineExceeded,
            _ => Code::Cancelled,
        };
        // Cancellations have their own queue, read first and never full.
        let _ = self.link.cancels.send(LinkCall {
            id: self.id,
            cancel: code as i32,
            ..Default::default()
        });
    }
}

/// Hands each reply to the call waiting for it; when the link breaks,
/// fails every call still waiting with the reason.
async fn read_replies(link: Arc<Link>, mut replies: Streaming<LinkReply>) {
    let why = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let waiter = link.pending().waiting.remove(&reply.id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome(reply));
                }
            }
            // The provider ended the link in order (it is shutting down)
            // after answering every call it read.
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    tracing::debug!(error = ?why, "node link closed");
    let waiting = {
        let mut pending = link.pending();
        pending.closed = true;
        std::mem::take(&mut pending.waiting)
    };
    let status = match &why {
        None => Status::unavailable(
            "the provider node is shutting down and did not read this call: it was not served; retrying is safe",
        ),
        Some(broke) => Status::unavailable(format!(
            "the link to the provider node broke with the call in flight (it may or may not have been served): {}",
            lgsp_certs::tls::explain_status(broke)
        )),
    };
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(status.clone()));
    }
}

/// A reply as the result of the call it answers.
fn outcome(reply: LinkReply) -> Result<CallResponse, Status> {
    match Code::from_i32(reply.code) {
        Code::Ok => Ok(reply.response.unwrap_or_default()),
        code => Err(Status::with_details(
            code,
            reply.message,
            reply.details.into(),
        )),
    }
}

/// A caller's deadline: when it falls, and how long the caller allowed.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: Instant,
    pub total: Duration,
}

impl Deadline {
    /// The deadline in `metadata` (`grpc-timeout`), counted from `started`.
    pub fn of(metadata: &tonic::metadata::MetadataMap, started: Instant) -> Option<Self> {
        deadline_of(metadata).map(|total| Self::after(started, total))
    }

    fn after(started: Instant, total: Duration) -> Self {
        Self {
            at: started + total,
            total,
        }
    }

    /// The time left.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether a call abandoned now was abandoned because of this deadline.
    /// The caller's clock started before ours (tonic reads `grpc-timeout`
    /// before the request reaches us, and the request had to travel), so
    /// "close to" counts: within a tenth of the deadline, at least 5 ms and
    /// at most 250 ms.
    pub fn is_near_or_past(&self) -> bool {
        let slack = (self.total / 10).clamp(Duration::from_millis(5), Duration::from_millis(250));
        Instant::now() + slack >= self.at
    }
}

/// The deadline an application set on its call (the `grpc-timeout` header:
/// up to 8 digits and a unit), if any.
fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_proto::node_link_server::NodeLinkServer;
    use std::sync::atomic::AtomicUsize;

    /// A provider's link service that answers by operation: "echo" with
    /// the payload, "wait" never, "break" by breaking the link, "end" by
    /// ending it in order. It records each call's timeout and each
    /// cancellation (id, code).
    #[derive(Clone, Default)]
    struct FakeProvider {
        opened: Arc<AtomicUsize>,
        timeouts: Arc<Mutex<Vec<u64>>>,
        cancels: Arc<Mutex<Vec<(u64, i32)>>>,
    }

    #[tonic::async_trait]
    impl NodeLink for FakeProvider {
        type CallsStream = ReceiverStream<Result<LinkReply, Status>>;

        async fn calls(
            &self,
            request: Request<Streaming<LinkCall>>,
        ) -> Result<Response<Self::CallsStream>, Status> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            let mut incoming = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            let (timeouts, cancels) = (self.timeouts.clone(), self.cancels.clone());
            tokio::spawn(async move {
                while let Ok(Some(call)) = incoming.message().await {
                    if call.cancel != 0 {
                        cancels.lock().unwrap().push((call.id, call.cancel));
                        continue;
                    }
                    timeouts.lock().unwrap().push(call.timeout_ms);
                    let env = call.envelope.unwrap_or_default();
                    match env.operation.as_str() {
                        "echo" => {
                            let response = CallResponse {
                                payload: env.payload,
                                ..Default::default()
                            };
                            let reply = LinkReply {
                                id: call.id,
                                response: Some(response),
                                ..Default::default()
                            };
                            let _ = tx.send(Ok(reply)).await;
                        }
                        "break" => {
                            let _ = tx.send(Err(Status::internal("link broken"))).await;
                            return;
                        }
                        "end" => return,
                        _ => {}
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    /// A plain channel to a server on 127.0.0.1 with `link` as its link
    /// service, or none.
    async fn serve(link: Option<FakeProvider>) -> Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_, health) = tonic_health::server::health_reporter();
        let router = tonic::transport::Server::builder()
            .add_service(health)
            .add_optional_service(link.map(NodeLinkServer::new));
        tokio::spawn(
            router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    }

    /// Waits up to 5 s for `what` to hold.
    async fn eventually(what: &str, mut holds: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !holds() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn envelope(operation: &str, payload: &str) -> Envelope {
        Envelope {
            operation: operation.into(),
            payload: payload.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    async fn call(
        links: &Links,
        channel: &Channel,
        env: Envelope,
        deadline: Option<Duration>,
    ) -> Sent {
        links
            .call(
                "provider",
                || Ok(channel.clone()),
                1 << 20,
                env,
                deadline.map(|d| Deadline::after(Instant::now(), d)),
            )
            .await
    }

    fn done(sent: Sent) -> Result<CallResponse, Status> {
        match sent {
            Sent::Done(result) => result,
            Sent::Unsupported(_) => panic!("the provider has a link service"),
        }
    }

    #[tokio::test]
    async fn calls_go_unary_when_the_provider_node_has_no_link_service() {
        let channel = serve(None).await;
        let links = Links::default();
        for _ in 0..2 {
            match call(&links, &channel, envelope("echo", "Hà Nội"), None).await {
                Sent::Unsupported(env) => assert_eq!(env.payload, "Hà Nội".as_bytes()),
                Sent::Done(result) => panic!("sent on a link that does not exist: {result:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_broken_link_fails_the_calls_in_flight_and_the_next_call_opens_a_new_one() {
        let provider = FakeProvider::default();
        let channel = serve(Some(provider.clone())).await;
        let links = Arc::new(Links::default());
        let answered = done(call(&links, &channel, envelope("echo", "một"), None).await);
        assert_eq!(answered.unwrap().payload, "một".as_bytes());

        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let (links, channel) = (links.clone(), channel.clone());
                tokio::spawn(async move {
                    done(call(&links, &channel, envelope("wait", ""), None).await)
                })
            })
            .collect();
        eventually("the provider has the 4 calls", || {
            provider.timeouts.lock().unwrap().len() >= 4
        })
        .await;
        let broke = done(call(&links, &channel, envelope("break", ""), None).await);
        assert_eq!(broke.unwrap_err().code(), Code::Unavailable);
        for call in waiting {
            let status = call.await.unwrap().unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(status.message().contains("may or may not"), "{status:?}");
        }
        let again = done(call(&links, &channel, envelope("echo", "hai"), None).await);
        assert_eq!(again.unwrap().payload, "hai".as_bytes());
        assert_eq!(provider.opened.load(Ordering::SeqCst), 2, "one new link");
    }

    #[tokio::test]
    async fn a_call_the_application_drops_is_cancelled_on_the_provider() {
        let provider = FakeProvider::default();
        let channel = serve(Some(provider.clone())).await;
        let links = Arc::new(Links::default());
        let dropped = {
            let (links, channel) = (links.clone(), channel.clone());
            tokio::spawn(async move { call(&links, &channel, envelope("wait", ""), None).await })
        };
        eventually("the provider has the call", || {
            !provider.timeouts.lock().unwrap().is_empty()
        })
        .await;
        dropped.abort();
        let _ = dropped.await;
        eventually("the provider is told", || {
            !provider.cancels.lock().unwrap().is_empty()
        })
        .await;
        assert_eq!(
            *provider.cancels.lock().unwrap(),
            [(0, Code::Cancelled as i32)]
        );
    }

    #[tokio::test]
    async fn calls_left_unanswered_when_the_provider_ends_the_link_in_order_were_not_served() {
        let provider = FakeProvider::default();
        let channel = serve(Some(provider.clone())).await;
        let links = Arc::new(Links::default());
        let waiting = {
            let (links, channel) = (links.clone(), channel.clone());
            tokio::spawn(
                async move { done(call(&links, &channel, envelope("wait", ""), None).await) },
            )
        };
        eventually("the provider has the call", || {
            !provider.timeouts.lock().unwrap().is_empty()
        })
        .await;
        let _ = call(&links, &channel, envelope("end", ""), None).await;
        let status = waiting.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("not served"), "{status:?}");
        assert!(status.message().contains("retrying is safe"), "{status:?}");
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_tells_the_provider_and_stops_waiting() {
        let provider = FakeProvider::default();
        let channel = serve(Some(provider.clone())).await;
        let links = Links::default();
        let started = Instant::now();
        let sent = call(
            &links,
            &channel,
            envelope("wait", ""),
            Some(Duration::from_millis(150)),
        )
        .await;
        let status = done(sent).unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // The time left when the call left, after opening the link.
        let sent_with = provider.timeouts.lock().unwrap().clone();
        assert!(
            matches!(sent_with[..], [ms] if (50..=150).contains(&ms)),
            "{sent_with:?}"
        );
        eventually("the provider is told", || {
            !provider.cancels.lock().unwrap().is_empty()
        })
        .await;
        assert_eq!(
            *provider.cancels.lock().unwrap(),
            [(0, Code::DeadlineExceeded as i32)]
        );
        let slot = links.slot("provider");
        let Some(Route::Link(link)) = slot.get() else {
            panic!("the link is open")
        };
        assert!(link.pending().waiting.is_empty(), "nothing left waiting");
    }

    #[test]
    fn deadlines_are_read_from_grpc_timeout_in_every_unit_and_junk_is_ignored() {
        let of = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            deadline_of(&m)
        };
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(of("1500u"), Some(Duration::from_micros(1500)));
        assert_eq!(of("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(of("m"), None);
        assert_eq!(of("123456789m"), None, "more than 8 digits");
        assert_eq!(of("10x"), None);
        assert_eq!(of("-5m"), None);
        assert_eq!(deadline_of(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn a_reply_with_a_code_is_that_status_and_without_one_the_response() {
        let ok = outcome(LinkReply {
            id: 1,
            response: Some(CallResponse {
                payload: b"x".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(ok.unwrap().payload, b"x");
        let status =
            Status::with_details(Code::PermissionDenied, "no grant", b"why".to_vec().into());
        let refused = outcome(refusal(2, &status)).unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(refused.message(), "no grant");
        assert_eq!(refused.details(), b"why", "details travel with the status");
    }

    #[test]
    fn a_refusal_keeps_its_message_and_details_within_what_a_link_carries() {
        let long = "Sở Tư pháp ".repeat(1000);
        let huge = vec![7u8; MAX_STATUS_DETAILS + 1];
        let reply = refusal(
            3,
            &Status::with_details(Code::Internal, long.clone(), huge.into()),
        );
        assert!(reply.message.len() <= MAX_STATUS_MESSAGE);
        assert!(
            long.starts_with(&reply.message),
            "cut on a character boundary"
        );
        assert!(
            reply.details.is_empty(),
            "details too large to carry are dropped"
        );
        assert!(reply.encoded_len() < FRAMING);
    }
}

//! The consumer side of node links: one link per provider node, calls
//! matched to their replies by id, cancellations sent ahead of calls.

use super::{FRAMING, MAX_MESSAGE_HEADER, QUEUE};
use crate::deadline::Deadline;
use futures::StreamExt as _;
use lgsp_proto::node_link_client::NodeLinkClient;
use lgsp_proto::{CallResponse, Envelope, LinkCall, LinkReply, SignedOnBehalfOf};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};
use tracing::Instrument;

/// What a consumer node has learned about calling one provider node.
#[derive(Debug)]
pub(super) enum Route {
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
#[derive(Debug)]
pub enum Sent {
    /// The provider answered, or the call failed on the way.
    Done(Result<CallResponse, Status>),
    /// The call was not sent: the provider node has no link service.
    Unsupported(Envelope),
}

impl Links {
    /// Calls `endpoint` with `envelope` (and `obo`, the record of on whose
    /// behalf, for a call across instances) over the link to it, opening
    /// the link on first use with `channel` (the pooled mTLS connection).
    /// `deadline` is the caller's, and bounds the opening too; `max` is the
    /// node's largest message.
    pub async fn call(
        &self,
        endpoint: &str,
        channel: impl Fn() -> Result<Channel, Status>,
        max: usize,
        envelope: Envelope,
        obo: Option<SignedOnBehalfOf>,
        deadline: Option<Deadline>,
    ) -> Sent {
        let attempt = self.attempt(endpoint, channel, max, envelope, obo, deadline);
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
        mut obo: Option<SignedOnBehalfOf>,
        deadline: Option<Deadline>,
    ) -> Sent {
        // A link found closed is replaced once; a call that was never sent
        // on it can go on the new one.
        for _ in 0..2 {
            let slot = self.slot(endpoint);
            let route = slot
                .get_or_try_init(|| async { open(endpoint, channel()?, max).await })
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
            match link.call(envelope, obo, deadline).await {
                Ok(result) => return Sent::Done(result),
                Err((unsent, record)) => {
                    envelope = unsent;
                    obo = record;
                    self.forget(endpoint, &slot);
                }
            }
        }
        Sent::Done(Err(Status::unavailable(format!(
            "the link to the provider node at {endpoint} closed twice in a row"
        ))))
    }

    pub(super) fn slot(&self, endpoint: &str) -> Arc<OnceCell<Route>> {
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

    /// Ends every link: each stops taking calls (the provider answers the
    /// ones it read, then the link closes) and the next call to any provider
    /// opens a new one, whose handshake checks the provider's certificate
    /// again. Used when the CRL changes, so that a provider revoked since a
    /// link opened is not called on it any longer.
    pub fn close_all(&self) {
        let routes =
            std::mem::take(&mut *self.routes.lock().unwrap_or_else(PoisonError::into_inner));
        for slot in routes.into_values() {
            if let Some(Route::Link(link)) = slot.get() {
                link.end();
            }
        }
    }

    /// Ends the link to `endpoint`, if one is open (as [`Self::close_all`]
    /// does for every link): used when what the link was opened with, the
    /// server's identity or the trust it was checked with, changed.
    pub fn close(&self, endpoint: &str) {
        let slot = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(endpoint);
        if let Some(Route::Link(link)) = slot.as_deref().and_then(OnceCell::get) {
            link.end();
        }
    }

    fn forget(&self, endpoint: &str, slot: &Arc<OnceCell<Route>>) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if routes.get(endpoint).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            routes.remove(endpoint);
        }
    }
}

/// Opens a link on `channel`, or learns that the provider has none.
async fn open(endpoint: &str, channel: Channel, max: usize) -> Result<Route, Status> {
    let (outgoing, queued) = mpsc::channel(QUEUE);
    let (cancels, cancelled) = mpsc::unbounded_channel();
    let mut client = NodeLinkClient::new(channel)
        .max_decoding_message_size(max + FRAMING)
        .max_encoding_message_size(max + FRAMING);
    // Cancellations go before calls, so that a busy link does not hold them up.
    // Ending the link ends this stream: the provider then answers what it
    // read and ends its replies.
    let (end, ended) = oneshot::channel::<()>();
    let messages = futures::stream::select_with_strategy(
        UnboundedReceiverStream::new(cancelled),
        ReceiverStream::new(queued),
        |_: &mut ()| futures::stream::PollNext::Left,
    )
    .take_until(ended);
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
        end: Mutex::new(Some(end)),
    });
    let span = tracing::info_span!("link", side = "consumer", provider = %endpoint);
    tokio::spawn(read_replies(link.clone(), replies).instrument(span));
    Ok(Route::Link(link))
}

/// One open link: calls go out through `outgoing`, and each waits in
/// `pending` for the reply with its id.
#[derive(Debug)]
pub(super) struct Link {
    outgoing: mpsc::Sender<LinkCall>,
    cancels: mpsc::UnboundedSender<LinkCall>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    /// Ends the stream of calls (see [`Links::close_all`]); taken once.
    end: Mutex<Option<oneshot::Sender<()>>>,
}

type Waiter = oneshot::Sender<Result<CallResponse, Status>>;

#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Set once, when the link broke; no call waits after that.
    closed: bool,
    pub(super) waiting: HashMap<u64, Waiter>,
}

impl Link {
    /// Stops sending calls on this link; the provider answers those it read.
    fn end(&self) {
        let end = self
            .end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(end) = end {
            let _ = end.send(());
        }
    }

    pub(super) fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.pending().closed
    }

    /// Sends one call and waits for its reply; gives the envelope and
    /// record back when the link closed before the call was sent. The
    /// caller bounds the wait by `deadline`, which is sent along as the
    /// time left.
    async fn call(
        &self,
        envelope: Envelope,
        obo: Option<SignedOnBehalfOf>,
        deadline: Option<Deadline>,
    ) -> Result<Result<CallResponse, Status>, (Envelope, Option<SignedOnBehalfOf>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, reply) = oneshot::channel();
        {
            let mut pending = self.pending();
            if pending.closed {
                return Err((envelope, obo));
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
            obo,
        };
        if let Err(mpsc::error::SendError(call)) = self.outgoing.send(call).await {
            return Err((call.envelope.unwrap_or_default(), call.obo));
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
pub(super) fn outcome(reply: LinkReply) -> Result<CallResponse, Status> {
    match Code::from_i32(reply.code) {
        Code::Ok => Ok(reply.response.unwrap_or_default()),
        // Sent back by the far side on the link: an answer, not a
        // connection that failed.
        code => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            crate::trace::put_external_ids(&reply.external_ids, &mut metadata);
            Err(crate::refusal::answered(Status::with_details_and_metadata(
                code,
                reply.message,
                reply.details.into(),
                metadata,
            )))
        }
    }
}

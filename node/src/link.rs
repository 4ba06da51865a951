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
use lgsp_certs::{Authenticator, Peer};
use lgsp_proto::node_link_client::NodeLinkClient;
use lgsp_proto::node_link_server::NodeLink;
use lgsp_proto::{CallResponse, Envelope, LinkCall, LinkReply};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

/// Envelopes larger than this (encoded) go as a unary call on their own
/// HTTP/2 stream rather than on the link shared with other calls.
pub const MAX_LINK_ENVELOPE: usize = 64 * 1024;

/// Calls queued on a link before callers wait for room.
const QUEUE: usize = 1024;

/// Room for a link message's own fields around a message of the node's
/// largest size.
pub const FRAMING: usize = 1024;

/// Calls one link may have in flight on the provider (being served, or
/// answered and waiting to be sent) before the provider stops reading it.
const IN_FLIGHT_PER_LINK: usize = 1024;

/// The provider side: answers the calls on links other nodes open.
#[derive(Debug, Clone)]
pub struct LinkServer {
    provider: Provider,
    auth: Authenticator,
    shutdown: watch::Receiver<bool>,
}

impl LinkServer {
    /// Serves links until `shutdown` turns true: then each link stops
    /// taking calls, answers those it took, and ends, so that the node's
    /// graceful shutdown does not wait on links that never end by themselves.
    pub fn new(provider: Provider, auth: Authenticator, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            provider,
            auth,
            shutdown,
        }
    }

    /// Answers one call on a link from `peer`: the same checks, limits and
    /// log entry as a unary call.
    async fn answer(&self, peer: &Peer, call: LinkCall) -> LinkReply {
        let started = Instant::now();
        let id = call.id;
        let result = async {
            // Authenticated when the link opened; revocation since then
            // counts from the next call on it.
            self.auth.recheck(peer)?;
            let limits = &self.provider.ctx().limits;
            let _permit = limits.acquire(peer.id.agency.as_str())?;
            let envelope = call
                .envelope
                .ok_or_else(|| Status::invalid_argument("a link call without an envelope"))?;
            let deadline = (call.timeout_ms > 0).then(|| Duration::from_millis(call.timeout_ms));
            self.provider
                .provide(peer, envelope, started, deadline)
                .await
        }
        .await;
        match result {
            Ok(response) => LinkReply {
                id,
                response: Some(response),
                code: 0,
                message: String::new(),
            },
            Err(status) => LinkReply {
                id,
                response: None,
                code: status.code() as i32,
                message: status.message().to_owned(),
            },
        }
    }
}

#[tonic::async_trait]
impl NodeLink for LinkServer {
    type CallsStream = ReceiverStream<Result<LinkReply, Status>>;

    async fn calls(
        &self,
        request: Request<Streaming<LinkCall>>,
    ) -> Result<Response<Self::CallsStream>, Status> {
        let peer = Peer::of(&request)?.clone();
        let mut incoming = request.into_inner();
        let (replies, rx) = mpsc::channel(QUEUE);
        let server = self.clone();
        tracing::debug!(consumer = %peer.id, "node link opened");
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            // Each call runs on its own task, so a slow backend holds up
            // only its own calls. At most IN_FLIGHT_PER_LINK are taken at
            // once: a consumer that sends faster than it is answered, or
            // stops reading replies, stops being read (HTTP/2 flow control
            // then holds it back), instead of growing this node's memory.
            let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_LINK));
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => break,
                    next = async {
                        let slot = in_flight.clone().acquire_owned().await;
                        (slot, incoming.message().await)
                    } => next,
                };
                match next {
                    (Ok(slot), Ok(Some(call))) => {
                        let (server, peer, replies) =
                            (server.clone(), peer.clone(), replies.clone());
                        tokio::spawn(async move {
                            let reply = server.answer(&peer, call).await;
                            let _ = replies.send(Ok(reply)).await;
                            drop(slot);
                        });
                    }
                    (_, Ok(None)) => break,
                    (_, Err(status)) => {
                        tracing::debug!(consumer = %peer.id, error = %status, "node link broken");
                        break;
                    }
                    (Err(_), _) => break,
                }
            }
            // The reply stream ends once the calls taken are answered.
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
    /// `deadline` is the caller's; `max` the node's largest message.
    pub async fn call(
        &self,
        endpoint: &str,
        channel: impl Fn() -> Result<Channel, Status>,
        max: usize,
        mut envelope: Envelope,
        deadline: Option<Duration>,
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
        let slot = routes.entry(endpoint.to_owned()).or_default();
        if let Some(Route::Link(link)) = slot.get()
            && link.is_closed()
        {
            *slot = Arc::default();
        }
        slot.clone()
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
    let mut client = NodeLinkClient::new(channel)
        .max_decoding_message_size(max + FRAMING)
        .max_encoding_message_size(max + FRAMING);
    let replies = match client.calls(ReceiverStream::new(queued)).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Ok(Route::Unary),
        Err(status) => return Err(status),
    };
    let link = Arc::new(Link {
        outgoing,
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
    /// when the link closed before the call was sent.
    async fn call(
        &self,
        envelope: Envelope,
        deadline: Option<Duration>,
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
        // up), the call stops waiting.
        let _waiting = Forget { link: self, id };
        let call = LinkCall {
            id,
            envelope: Some(envelope),
            timeout_ms: deadline.map_or(0, |d| (d.as_millis() as u64).max(1)),
        };
        if let Err(mpsc::error::SendError(call)) = self.outgoing.send(call).await {
            return Err(call.envelope.unwrap_or_default());
        }
        let answered = match deadline {
            Some(limit) => match tokio::time::timeout(limit, reply).await {
                Ok(answered) => answered,
                Err(_) => {
                    return Ok(Err(Status::deadline_exceeded(format!(
                        "the provider node did not answer within the deadline ({} ms)",
                        limit.as_millis()
                    ))));
                }
            },
            None => reply.await,
        };
        Ok(answered.unwrap_or_else(|_| {
            Err(Status::unavailable(
                "the link to the provider node closed before the reply came",
            ))
        }))
    }
}

/// Removes a call from its link's waiting calls when the caller stops waiting.
struct Forget<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.link.pending().waiting.remove(&self.id);
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
            Ok(None) => break Status::unavailable("the provider node closed the link"),
            Err(status) => break status,
        }
    };
    tracing::debug!(error = %why, "node link closed");
    let waiting = {
        let mut pending = link.pending();
        pending.closed = true;
        std::mem::take(&mut pending.waiting)
    };
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(Status::unavailable(format!(
            "the link to the provider node broke with the call in flight (it may or may not have been served): {}",
            lgsp_certs::tls::explain_status(&why)
        ))));
    }
}

/// A reply as the result of the call it answers.
fn outcome(reply: LinkReply) -> Result<CallResponse, Status> {
    match Code::from_i32(reply.code) {
        Code::Ok => Ok(reply.response.unwrap_or_default()),
        code => Err(Status::new(code, reply.message)),
    }
}

/// The deadline an application set on its call (the `grpc-timeout` header:
/// up to 8 digits and a unit), if any.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
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
    /// the payload, "wait" never, "break" by breaking the link.
    #[derive(Clone, Default)]
    struct FakeProvider {
        opened: Arc<AtomicUsize>,
        timeouts: Arc<Mutex<Vec<u64>>>,
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
            let timeouts = self.timeouts.clone();
            tokio::spawn(async move {
                while let Ok(Some(call)) = incoming.message().await {
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
                                code: 0,
                                message: String::new(),
                            };
                            let _ = tx.send(Ok(reply)).await;
                        }
                        "break" => {
                            let _ = tx.send(Err(Status::internal("link broken"))).await;
                            return;
                        }
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
            .call("provider", || Ok(channel.clone()), 1 << 20, env, deadline)
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
        while provider.timeouts.lock().unwrap().len() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
        assert_eq!(*provider.timeouts.lock().unwrap(), [150]);
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
            code: 0,
            message: String::new(),
        });
        assert_eq!(ok.unwrap().payload, b"x");
        let refused = outcome(LinkReply {
            id: 2,
            response: None,
            code: Code::PermissionDenied as i32,
            message: "no grant".into(),
        })
        .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(refused.message(), "no grant");
    }
}

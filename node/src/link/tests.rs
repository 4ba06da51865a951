//! The link's client against a fake provider, and the wire rules of both
//! sides.

use super::client::{Links, Route, Sent, outcome};
use super::server::refusal;
use super::*;
use crate::deadline::Deadline;
use lgsp_proto::node_link_server::NodeLink;
use lgsp_proto::node_link_server::NodeLinkServer;
use lgsp_proto::{CallResponse, Envelope, LinkCall, LinkReply};
use prost::Message as _;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

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
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
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

async fn call(links: &Links, channel: &Channel, env: Envelope, deadline: Option<Duration>) -> Sent {
    links
        .call(
            "provider",
            || Ok(channel.clone()),
            1 << 20,
            env,
            None,
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
            tokio::spawn(
                async move { done(call(&links, &channel, envelope("wait", ""), None).await) },
            )
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
        tokio::spawn(async move { done(call(&links, &channel, envelope("wait", ""), None).await) })
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
    let status = Status::with_details(Code::PermissionDenied, "no grant", b"why".to_vec().into());
    let refused = outcome(refusal(2, &status)).unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "no grant");
    assert_eq!(refused.details(), b"why", "details travel with the status");
}

#[test]
fn a_refusal_carries_an_external_systems_ids_in_its_metadata_and_nothing_else() {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-road-id", "xr-0002".parse().unwrap());
    metadata.insert("x-road-request-id", "5d1e07c4".parse().unwrap());
    metadata.insert("x-secret", "not for the caller".parse().unwrap());
    let status = Status::with_metadata(
        Code::PermissionDenied,
        "Server.ServerProxy.AccessDenied",
        metadata,
    );
    let refused = outcome(refusal(4, &status)).unwrap_err();
    assert_eq!(refused.metadata().get("x-road-id").unwrap(), "xr-0002");
    assert_eq!(
        refused.metadata().get("x-road-request-id").unwrap(),
        "5d1e07c4"
    );
    assert!(refused.metadata().get("x-secret").is_none());
    // An id longer than an external id can be is not carried.
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-road-id", "x".repeat(300).parse().unwrap());
    let status = Status::with_metadata(Code::PermissionDenied, "refused", metadata);
    assert!(refusal(5, &status).external_ids.is_empty());
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

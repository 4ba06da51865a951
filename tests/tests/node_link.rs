//! The link between two nodes: agency B's node carries its applications'
//! calls to A's node as messages on one long-lived stream. Each call on it
//! is still checked, limited and logged on its own; replies reach the call
//! they answer; the application's deadline reaches the provider; and a
//! certificate revoked while the link is open stops the next call.

use futures::future::join_all;
use lgsp_certs::inspect::CertInfo;
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::metrics::{sample, scrape, wait_for_sample};
use lgsp_tests::province::{A, B, NodeProcess, two_agencies};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::{Code, Request};

fn get(key: &str, request_id: &str) -> Envelope {
    Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), key.into())]),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// A call to A's HTTP backend that it answers after 3 s.
fn slow(request_id: &str) -> Envelope {
    Envelope {
        service_id: format!("{A}/dkkd"),
        operation: "cham".into(),
        payload: br#"{"ma_so_doanh_nghiep":"2500150335"}"#.to_vec(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// The entry for `request_id` in each node's sharing log (stop them first).
fn logged(nodes: [&NodeProcess; 2], request_id: &str) -> [serde_json::Value; 2] {
    nodes.map(|node| {
        let log = std::fs::read_to_string(node.sharing_log()).unwrap();
        entry(&log, request_id)
    })
}

/// The JSON object of the one sharing-log entry for `request_id`.
fn entry(log: &str, request_id: &str) -> serde_json::Value {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("\"request_id\":\"{request_id}\"")))
        .collect();
    assert_eq!(lines.len(), 1, "entries for {request_id} in:\n{log}");
    serde_json::from_str(lines[0]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_link_each_get_their_own_reply_and_log_entry() {
    let (_province, mut a, mut b) = two_agencies().await;
    let app = DataExchangeClient::new(b.app_channel().await);
    let consumer = format!("consumer=\"{B}\"");
    let link_calls = async |a: &NodeProcess| {
        let (_, metrics) = scrape(&a.metrics).await;
        sample(&metrics, "lgsp_link_calls_total", &[&consumer]).unwrap_or(0.0)
    };
    let before = link_calls(&a).await;
    let people = [
        ("001099012345", "Nguyễn Thị Hương"),
        ("001088054321", "Trần Văn Đức"),
        ("001077000111", "Lê Thị Ánh"),
    ];
    // 150 calls at once: three known people and a key no record has, mixed.
    let calls = (0..150).map(|i| {
        let mut app = app.clone();
        async move {
            let key = people
                .get(i % 4)
                .map_or_else(|| format!("00100000{i:04}"), |p| p.0.to_owned());
            let result = app.call(get(&key, &format!("link-{i}"))).await;
            (i, key, result)
        }
    });
    for (i, key, result) in join_all(calls).await {
        match people.iter().find(|p| p.0 == key) {
            Some((_, name)) => {
                let response = result.unwrap_or_else(|s| panic!("call {i} ({key}): {s:?}"));
                let record: serde_json::Value =
                    serde_json::from_slice(&response.get_ref().payload).unwrap();
                assert_eq!(record["ho_ten"], *name, "call {i} got another call's reply");
                assert_eq!(response.get_ref().request_id, format!("link-{i}"));
            }
            None => {
                let status = result.expect_err("no such record");
                assert_eq!(status.code(), Code::NotFound, "call {i}: {status:?}");
                assert!(status.message().contains(&key), "call {i}: {status:?}");
            }
        }
    }

    // They all went on one link: A received the 150 on links, and counts
    // one open link from B.
    assert_eq!(link_calls(&a).await - before, 150.0);
    let (_, metrics) = scrape(&a.metrics).await;
    assert_eq!(
        sample(&metrics, "lgsp_node_links_open", &[&consumer]),
        Some(1.0),
        "{metrics}"
    );

    // A large envelope goes on its own stream, and still arrives.
    let filler = "Đăng ký kinh doanh ".repeat(5000);
    let mut app = app.clone();
    let big = app
        .call(Envelope {
            service_id: format!("{A}/dkkd"),
            operation: "tra-cuu".into(),
            payload: serde_json::json!({"ma_so_doanh_nghiep": "2500150335", "ghi_chu": filler})
                .to_string()
                .into_bytes(),
            request_id: "link-big".into(),
            ..Default::default()
        })
        .await
        .expect("a 100 KB envelope is served");
    let reply: serde_json::Value = serde_json::from_slice(&big.get_ref().payload).unwrap();
    assert_eq!(reply["ma_so_doanh_nghiep"], "2500150335");
    assert_eq!(link_calls(&a).await - before, 150.0, "not on the link");

    a.stop();
    b.stop();
    let (log_a, log_b) = (
        std::fs::read_to_string(a.sharing_log()).unwrap(),
        std::fs::read_to_string(b.sharing_log()).unwrap(),
    );
    for i in 0..150 {
        let id = format!("link-{i}");
        let (provider, consumer) = (entry(&log_a, &id), entry(&log_b, &id));
        let status = if i % 4 == 3 { "NOT_FOUND" } else { "OK" };
        assert_eq!(provider["status"], status, "{provider}");
        assert_eq!(consumer["status"], status, "{consumer}");
        assert_eq!(provider["consumer"], B);
        assert_eq!(provider["request_sha256"], consumer["request_sha256"]);
        assert_eq!(provider["response_sha256"], consumer["response_sha256"]);
    }
    assert_eq!(entry(&log_a, "link-big")["status"], "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_deadline_reaches_the_provider_and_both_logs_record_it() {
    let (_province, mut a, mut b) = two_agencies().await;
    let mut app = DataExchangeClient::new(b.app_channel().await);
    // The backend takes 3 s; the application allows 1 s.
    let mut request = Request::new(slow("link-deadline"));
    request.set_timeout(Duration::from_secs(1));
    let asked = Instant::now();
    let status = app.call(request).await.expect_err("past the deadline");
    let waited = asked.elapsed();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(waited < Duration::from_millis(2500), "waited {waited:?}");
    // The link still serves the next call.
    app.call(get("001099012345", "link-after"))
        .await
        .expect("served after a call timed out");

    a.stop();
    b.stop();
    for e in logged([&a, &b], "link-deadline") {
        assert_eq!(e["status"], "DEADLINE_EXCEEDED", "{e}");
        // The provider gave up at the caller's deadline, not the backend's 3 s.
        let latency = e["latency_us"].as_u64().unwrap();
        assert!((900_000..2_500_000).contains(&latency), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_application_abandons_is_cancelled_on_both_nodes_and_logged_so() {
    let (_province, mut a, mut b) = two_agencies().await;
    let mut app = DataExchangeClient::new(b.app_channel().await);
    app.call(get("001099012345", "link-open"))
        .await
        .expect("the link is open");
    // The backend takes 3 s; the application gives up after 500 ms without
    // a deadline (it just stops waiting).
    let abandoned = tokio::spawn(async move { app.call(slow("link-abandoned")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandoned.abort();
    let _ = abandoned.await;
    // The provider hears of it well before the backend's 3 s.
    let cancelled = ["side=\"provider\"", "code=\"CANCELLED\""];
    wait_for_sample(
        &a.metrics,
        "lgsp_calls_total",
        &cancelled,
        1.0,
        Duration::from_secs(2),
    )
    .await;

    a.stop();
    b.stop();
    for e in logged([&a, &b], "link-abandoned") {
        assert_eq!(e["status"], "CANCELLED", "{e}");
        let latency = e["latency_us"].as_u64().unwrap();
        assert!(latency < 2_500_000, "not served to the end: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_while_the_provider_shuts_down_is_still_cancelled_there() {
    let (_province, mut a, mut b) = two_agencies().await;
    let mut app = DataExchangeClient::new(b.app_channel().await);
    app.call(get("001099012345", "link-open"))
        .await
        .expect("the link is open");
    // The backend takes 3 s. A starts shutting down while it serves the
    // call; then the application gives up.
    let abandoned = tokio::spawn(async move { app.call(slow("link-shutdown")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    abandoned.abort();
    let _ = abandoned.await;
    a.stop();
    b.stop();
    // Served to its end, A's entry would say OK after 3 s.
    for e in logged([&a, &b], "link-shutdown") {
        assert_eq!(e["status"], "CANCELLED", "{e}");
        let latency = e["latency_us"].as_u64().unwrap();
        assert!(latency < 2_500_000, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_node_revoked_while_its_link_is_open_is_refused_on_the_next_call() {
    let (mut province, _a, b) = two_agencies().await;
    let mut app = DataExchangeClient::new(b.app_channel().await);
    app.call(get("001099012345", "before"))
        .await
        .expect("the link is open and serves");

    let serial = CertInfo::from_der(&b.creds.chain[0], &b.dir.join("tls/cert.pem"))
        .unwrap()
        .serial;
    let published = province.revoke(&serial).await;
    let refused_at = loop {
        match app.call(get("001099012345", "after")).await {
            Err(s) if s.code() == Code::Unauthenticated => {
                assert!(s.message().contains("revoked"), "{s:?}");
                assert!(s.message().contains(&serial), "{s:?}");
                break published.elapsed();
            }
            other => {
                assert!(
                    published.elapsed() < Duration::from_secs(5),
                    "B's node still served 5 s after its certificate was revoked: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!("revocation enforced on the open link {refused_at:?} after the CRL was published");
    assert!(
        refused_at < Duration::from_millis(1500),
        "took {refused_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_links_open_stops_promptly_and_the_consumer_relinks_after_its_restart() {
    let (_province, mut a, b) = two_agencies().await;
    let mut app = DataExchangeClient::new(b.app_channel().await);
    app.call(get("001099012345", "before-restart"))
        .await
        .expect("the link is open and serves");

    // B's link never ends by itself: A's graceful shutdown must end it.
    let stopping = Instant::now();
    a.stop();
    let stopped = stopping.elapsed();
    assert!(
        stopped < Duration::from_secs(3),
        "A took {stopped:?} to stop with B's link open"
    );
    let down = app
        .call(get("001099012345", "while-down"))
        .await
        .expect_err("A is down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    a.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match app.call(get("001099012345", "after-restart")).await {
            Ok(r) => {
                assert_eq!(r.get_ref().request_id, "after-restart");
                break;
            }
            Err(s) => {
                assert!(
                    Instant::now() < deadline,
                    "B never reached A again after its restart: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // On a new link, not as ordinary calls.
    let consumer = format!("consumer=\"{B}\"");
    let open_links = "lgsp_node_links_open";
    wait_for_sample(
        &a.metrics,
        open_links,
        &[&consumer],
        1.0,
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_may_hold_sixteen_links_to_a_node_and_gets_its_place_back_when_one_ends() {
    use lgsp_proto::LinkCall;
    use lgsp_proto::node_link_client::NodeLinkClient;
    let (_province, a, b) = two_agencies().await;
    let channel = lgsp_certs::tls::client_endpoint(&a.provider, &b.creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let consumer = format!("consumer=\"{B}\"");
    // A link is held open while its request sender lives.
    let open = || {
        let channel = channel.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<LinkCall>(1);
            let replies = NodeLinkClient::new(channel)
                .calls(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            (tx, replies)
        }
    };
    // B's node already holds one (it called A while the province started).
    let (_, metrics) = scrape(&a.metrics).await;
    let held = sample(&metrics, "lgsp_node_links_open", &[&consumer]).unwrap_or(0.0) as usize;
    assert_eq!(held, 1, "{metrics}");
    let mut links = Vec::new();
    for n in held..16 {
        let (tx, replies) = open().await;
        links.push((tx, replies.unwrap_or_else(|s| panic!("link {n}: {s:?}"))));
    }
    let (_, metrics) = scrape(&a.metrics).await;
    assert_eq!(
        sample(&metrics, "lgsp_node_links_open", &[&consumer]),
        Some(16.0)
    );
    let (_tx, refused) = open().await;
    let refused = refused.expect_err("a 17th link");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("16 node links"), "{refused:?}");

    // One ends (its request stream closes and its replies are dropped):
    // the count comes back down and a new link is accepted.
    drop(links.pop());
    let open_links = "lgsp_node_links_open";
    wait_for_sample(
        &a.metrics,
        open_links,
        &[&consumer],
        15.0,
        Duration::from_secs(5),
    )
    .await;
    let (_tx, again) = open().await;
    again.expect("a link in the place given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_refused_a_link_still_calls_without_one() {
    use lgsp_proto::LinkCall;
    use lgsp_proto::node_link_client::NodeLinkClient;
    let (_province, a, mut b) = two_agencies().await;
    let consumer = format!("consumer=\"{B}\"");
    let (open_links, link_calls) = ("lgsp_node_links_open", "lgsp_link_calls_total");
    // B's node gives up its link; then all 16 places are taken.
    b.stop();
    wait_for_sample(
        &a.metrics,
        open_links,
        &[&consumer],
        0.0,
        Duration::from_secs(5),
    )
    .await;
    let channel = lgsp_certs::tls::client_endpoint(&a.provider, &b.creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut held = Vec::new();
    for n in 0..16 {
        let (tx, rx) = tokio::sync::mpsc::channel::<LinkCall>(1);
        let replies = NodeLinkClient::new(channel.clone())
            .calls(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|s| panic!("link {n}: {s:?}"));
        held.push((tx, replies));
    }
    let (_, metrics) = scrape(&a.metrics).await;
    let before = sample(&metrics, link_calls, &[&consumer]).unwrap_or(0.0);

    // B's node, started again, is refused a link and calls A without one.
    b.start();
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let deadline = Instant::now() + Duration::from_secs(15);
    let served = loop {
        match app.call(get("001099012345", "no-link")).await {
            Ok(r) => break r.into_inner(),
            Err(s) => {
                assert!(
                    Instant::now() < deadline,
                    "never served: {s:?}\n{}",
                    b.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(served.request_id, "no-link");
    let (_, metrics) = scrape(&a.metrics).await;
    assert_eq!(sample(&metrics, open_links, &[&consumer]), Some(16.0));
    assert_eq!(
        sample(&metrics, link_calls, &[&consumer]).unwrap_or(0.0),
        before,
        "the call went on no link"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_too_large_for_the_consumer_node_fails_that_call_alone() {
    use lgsp_tests::province::{HO_TICH_CSV, two_agencies_custom, wait_until_callable};
    // A record of about 40 KB; B takes messages of at most 16 KiB.
    let csv = format!(
        "{HO_TICH_CSV}001000000001,{},2000-01-01,Vĩnh Yên\n",
        "Nguyễn Văn Dài ".repeat(2500)
    );
    let b_limits = "[limits]\nmax_message_bytes = 16384\n";
    let (_province, mut a, mut b) = two_agencies_custom(1, "", b_limits, &csv, |_, _| {}).await;
    wait_until_callable(&b).await;
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let refused = app
        .call(get("001000000001", "too-large"))
        .await
        .expect_err("a 40 KB record to a node that takes 16 KiB");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("at most 16384"), "{refused:?}");
    // The link carries on.
    app.call(get("001099012345", "after-too-large"))
        .await
        .expect("the next call on the link is served");
    let consumer = format!("consumer=\"{B}\"");
    let (_, metrics) = scrape(&a.metrics).await;
    assert_eq!(
        sample(&metrics, "lgsp_node_links_open", &[&consumer]),
        Some(1.0)
    );

    a.stop();
    b.stop();
    // Not delivered, so not logged as delivered.
    for e in logged([&a, &b], "too-large") {
        assert_eq!(e["status"], "RESOURCE_EXHAUSTED", "{e}");
        assert_eq!(e["bytes_out"], 0, "{e}");
    }
}

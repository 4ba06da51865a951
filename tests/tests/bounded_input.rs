//! A certified peer cannot grow a node's memory or logs with fields it
//! chooses: service ids outside the catalog share one metrics label, and a
//! request id is bounded at the edge (a bad one is refused, and the log
//! keeps an id of the node's own).

use lgsp_certs::tls::client_endpoint;
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::metrics::scrape;
use lgsp_tests::province::{A, two_agencies};
use std::collections::HashMap;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_ids_outside_the_catalog_do_not_grow_the_metrics() {
    let (_province, a, b) = two_agencies().await;
    let channel = client_endpoint(&a.provider, &b.creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = DataExchangeClient::new(channel);
    let (_, before) = scrape(&a.metrics).await;
    for n in 0..2_000 {
        let refused = client
            .call(Envelope {
                service_id: format!("{A}/khong-co-{n}"),
                operation: "get".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    }
    let (_, after) = scrape(&a.metrics).await;
    // Before the bound: a label set and a latency histogram per id (about
    // 3 MB for 2,000 ids). After: the same few series, their counts higher.
    assert!(
        after.len() < before.len() + 16 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(after.contains("(not in the catalog)"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_id_is_refused_and_never_reaches_the_log() {
    let (_province, a, b) = two_agencies().await;
    let channel = client_endpoint(&a.provider, &b.creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = DataExchangeClient::new(channel);
    let log_before = std::fs::metadata(a.sharing_log()).map_or(0, |m| m.len());
    let refused = client
        .call(Envelope {
            service_id: format!("{A}/ho-tich"),
            operation: "get".into(),
            parameters: HashMap::from([("key".into(), "001099012345".into())]),
            request_id: "x".repeat(3 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("request id"),
        "{}",
        refused.message()
    );
    // Give the log a seal's time to reach the disk.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let log_after = std::fs::metadata(a.sharing_log()).map_or(0, |m| m.len());
    assert!(
        log_after < log_before + 64 * 1024,
        "the sharing log grew by {} bytes",
        log_after - log_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_page_larger_than_the_consumer_takes_is_refused_and_logged_so() {
    use lgsp_proto::QueryRequest;
    use lgsp_tests::province::two_agencies_custom;
    // 200 records of about 1 KB; A's node sends messages of at most 64 KiB.
    let mut csv = String::from(
        "so_dinh_danh,ho_ten,ngay_sinh,noi_sinh\n001099012345,Nguyễn Thị Hương,1999-03-12,Vĩnh Yên\n",
    );
    for i in 0..200 {
        csv.push_str(&format!(
            "{:012},{},2000-01-01,Vĩnh Yên\n",
            i,
            "Nguyễn Thị Hương ".repeat(60)
        ));
    }
    let (_province, a, b) = two_agencies_custom(
        1,
        "[limits]\nmax_message_bytes = 65536\n",
        "",
        &csv,
        |_, _| {},
    )
    .await;
    lgsp_tests::province::wait_until_callable(&b).await;
    let mut client = DataExchangeClient::new(b.app_channel().await);
    let mut pages = client
        .query(QueryRequest {
            service_id: format!("{A}/ho-tich"),
            page_size: 200,
            request_id: "big-page".into(),
            ..Default::default()
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let ended = loop {
        match pages.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a page over the limit was delivered"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("page_size"), "{}", ended.message());
    // A's log does not claim the page was delivered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(a.sharing_log()).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .rfind(|l| l.contains("\"request_id\":\"big-page\""))
        {
            assert!(line.contains("RESOURCE_EXHAUSTED"), "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A logged no big-page:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

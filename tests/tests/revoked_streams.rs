//! A certificate revoked while one of its streams is open loses the stream,
//! not only its next call: a provider's `Query` and the registry's `Watch`
//! end with UNAUTHENTICATED once the CRL that revokes it is published,
//! instead of delivering the rest of the dataset or of the catalog. A grant
//! ended while a query stream runs ends it the same way, PERMISSION_DENIED.

use lgsp_certs::tls::client_endpoint;
use lgsp_certs::{Credentials, Role};
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::{Envelope, QueryRequest, RecordKind, WatchRequest};
use lgsp_registry::RegistryClient;
use lgsp_tests::province::{A, B, NodeProcess, Province, two_agencies_custom};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tonic::Code;

/// Records in the large dataset, and records per page: 80 pages of about
/// 100 KB, several times what HTTP/2 keeps in flight to a reader that
/// pauses (its 2 MB window), so most pages are still to be sent when the
/// CRL comes.
const RECORDS: usize = 8000;
const PAGE: u32 = 100;

/// A's `ho-tich` dataset, [`RECORDS`] records of about 1 KB each.
fn large_dataset() -> String {
    let mut csv = String::from("so_dinh_danh,ho_ten,ghi_chu\n");
    let note = "Trích lục khai sinh bản sao ".repeat(36);
    for i in 0..RECORDS {
        writeln!(csv, "{:012},Công dân {i},{note}", 1_000_000 + i).unwrap();
    }
    csv
}

/// A channel to A's provider listener presenting `creds`, once A serves a
/// record to it (A's copy of the catalog has B's grant). Panics with A's
/// log after 15 s.
async fn provider_channel(a: &NodeProcess, creds: &Credentials) -> tonic::transport::Channel {
    let channel = client_endpoint(&a.provider, creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let get = Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), "000001000000".into())]),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(status) = DataExchangeClient::new(channel.clone())
        .call(get.clone())
        .await
    {
        assert!(
            Instant::now() < deadline,
            "A never served B: {status:?}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    channel
}

/// A query of A's large dataset on `channel`, its first page read.
async fn open_large_query(
    channel: tonic::transport::Channel,
    request_id: &str,
) -> tonic::Streaming<lgsp_proto::QueryPage> {
    let mut pages = DataExchangeClient::new(channel)
        .max_decoding_message_size(4 << 20)
        .query(QueryRequest {
            service_id: format!("{A}/ho-tich"),
            page_size: PAGE,
            request_id: request_id.into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner();
    let first = pages.message().await.expect("first page").expect("a page");
    assert_eq!(first.records.len(), PAGE as usize);
    pages
}

/// Reads `pages` on, after its first page, until it is refused; the
/// refusal. Panics if the whole dataset arrives (`after` says after what).
async fn read_to_refusal(
    pages: &mut tonic::Streaming<lgsp_proto::QueryPage>,
    after: &str,
) -> tonic::Status {
    let mut read = 1;
    let refused = loop {
        match pages.message().await {
            Ok(Some(page)) => {
                read += 1;
                assert!(
                    !page.resume_token.is_empty(),
                    "the whole dataset ({read} pages) was delivered after {after}"
                );
            }
            Ok(None) => panic!("the stream ended OK after {read} pages, short of the dataset"),
            Err(status) => break status,
        }
    };
    let total = RECORDS.div_ceil(PAGE as usize);
    eprintln!("{read} of {total} pages delivered after {after}, then: {refused:?}");
    assert!(read < total);
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_stream_ends_when_its_certificate_is_revoked_or_its_grant_ends_mid_stream() {
    let (mut province, mut a, _b) =
        two_agencies_custom(1, "", "", &large_dataset(), |_, _| {}).await;
    let (creds, serial) = province.issue(B, Role::Node, "node-b2");
    let (other_creds, _) = province.issue(B, Role::Node, "node-b3");
    let channel = provider_channel(&a, &creds).await;
    let other_channel = provider_channel(&a, &other_creds).await;
    let mut pages = open_large_query(channel, "truy-van-bi-thu-hoi").await;

    // The consumer reads slowly; meanwhile its certificate is revoked.
    province.revoke(&serial).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = read_to_refusal(&mut pages, "the CRL").await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains(&serial) && refused.message().contains("revoked"),
        "{refused:?}"
    );

    // Another certificate of B, still good; B's grant ends while it reads.
    let mut pages = open_large_query(other_channel, "truy-van-het-quyen").await;
    province
        .grant(
            &format!("{A}/ho-tich"),
            B,
            lgsp_proto::GrantStatus::Terminated,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = read_to_refusal(&mut pages, "the grant ended").await;
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("grant of service")
            && refused.message().contains("was terminated"),
        "{refused:?}"
    );

    // The provider's sharing log records both streams as refused, not served.
    a.stop();
    let log = std::fs::read_to_string(a.sharing_log()).unwrap();
    for (request_id, status) in [
        ("truy-van-bi-thu-hoi", "UNAUTHENTICATED"),
        ("truy-van-het-quyen", "PERMISSION_DENIED"),
    ] {
        let entry = log
            .lines()
            .find(|l| l.contains(&format!("\"request_id\":\"{request_id}\"")))
            .unwrap_or_else(|| panic!("no entry for {request_id}:\n{log}"));
        assert!(
            entry.contains(&format!("\"status\":\"{status}\"")),
            "{entry}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_watch_ends_unauthenticated_when_the_crl_revokes_its_watcher() {
    let mut province = Province::start().await;
    let (creds, serial) = province.issue(B, Role::Node, "node-b2");
    let registry = RegistryClient::new(&province.registry_addrs(), &creds).unwrap();
    let mut events = registry
        .server(0)
        .watch(WatchRequest { from_revision: 1 })
        .await
        .expect("watch")
        .into_inner();
    let next = async |events: &mut tonic::Streaming<lgsp_proto::WatchEvent>| {
        tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("an event within 5 s")
    };
    while next(&mut events)
        .await
        .expect("event")
        .expect("open")
        .r#type
        != EventType::Synced as i32
    {}
    // Changes reach the watcher while its certificate is good.
    province
        .register_agency(A, "Sở Tư pháp tỉnh Vĩnh Phúc")
        .await;
    let change = next(&mut events).await.expect("event").expect("open");
    assert_eq!(change.record.expect("a record").key, A);

    let published = province.revoke(&serial).await;
    // No change follows the CRL: the watch must end on the CRL alone.
    let refused = loop {
        match next(&mut events).await {
            // The CRL itself may be on its way before it is in force.
            Ok(Some(event))
                if event
                    .record
                    .as_ref()
                    .is_some_and(|r| r.kind == RecordKind::Crl as i32) => {}
            Ok(other) => panic!("the watch went on after the CRL: {other:?}"),
            Err(status) => break status,
        }
    };
    let ended = published.elapsed();
    eprintln!("the watch ended {ended:?} after the CRL was published: {refused:?}");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains(&serial), "{refused:?}");
    assert!(ended < Duration::from_millis(1500), "took {ended:?}");
}

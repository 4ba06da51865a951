//! Per-consumer limits on the provider side: calls in flight (a query
//! stream counts until it ends) and calls per second, each refused with
//! RESOURCE_EXHAUSTED and a message that says which limit.

use lgsp_certs::Role;
use lgsp_certs::tls::client_endpoint;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, GrantStatus, QueryRequest};
use lgsp_tests::province::{A, HO_TICH_CSV, two_agencies_custom, wait_until_callable};
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_limits_refuse_excess_calls_and_recover() {
    // Enough records that a stream left unread stays open, held back by
    // HTTP/2 flow control, instead of fitting in the connection's buffers.
    let mut rows = String::from(HO_TICH_CSV);
    for i in 0..6000 {
        rows.push_str(&format!(
            "0020{i:08},Người thứ {i} trong danh sách hộ tịch thử nghiệm,2000-01-01,Vĩnh Yên\n"
        ));
    }
    let limits = "[limits]\nmax_concurrent_per_consumer = 2\nrate_per_consumer = 5\n";
    let (mut province, a, b) = two_agencies_custom(1, limits, "", &rows, |_, _| {}).await;
    // A third agency, also granted, calling A's node directly.
    const C: &str = "000.00.14.H62";
    province.register_agency(C, "UBND huyện Lập Thạch").await;
    province
        .grant(&format!("{A}/ho-tich"), C, GrantStatus::Active)
        .await;
    let (c_creds, _) = province.issue(C, Role::Node, "node-c");
    let mut agency_c = DataExchangeClient::new(
        client_endpoint(&a.provider, &c_creds, None)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    wait_until_callable(&b).await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // the bucket refills

    let mut app = DataExchangeClient::new(b.app_channel().await);
    let get = Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), "001099012345".into())]),
        ..Default::default()
    };

    // Two query streams left open hold both in-flight slots.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut s = app
            .query(QueryRequest {
                service_id: format!("{A}/ho-tich"),
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner();
        s.message().await.expect("first page").expect("a page");
        streams.push(s);
    }
    let err = app.call(get.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("2 calls in flight"), "{err:?}");
    drop(streams);

    // Once they end, calls go through; a burst beyond 5 per second is refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..12 {
        match app.call(get.clone()).await {
            Ok(_) => ok += 1,
            Err(e) => refused = Some(e),
        }
    }
    let refused = refused.expect("a burst of 12 within a second is refused in part");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("calls per second"),
        "{refused:?}"
    );
    assert!((5..12).contains(&ok), "{ok} of 12 served");

    // Another agency's budget is its own: right after B is refused (a shared
    // budget would need 200 ms to allow one more call), C is served.
    let mut refused_b = None;
    for _ in 0..12 {
        if let Err(status) = app.call(get.clone()).await {
            refused_b = Some(status.code());
            break;
        }
    }
    assert_eq!(
        refused_b,
        Some(Code::ResourceExhausted),
        "B is over its rate"
    );
    agency_c
        .call(get.clone())
        .await
        .expect("agency C is served while agency B is over its rate");

    // The consumer recovers.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.call(get)
        .await
        .expect("served again after the bucket refills");
}

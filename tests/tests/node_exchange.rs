//! Two agencies and a registry as real processes on loopback: agency B's
//! application calls agency A's dataset and A's HTTP backend through B's
//! node; both sharing logs record the exchange and `lgsp audit verify`
//! proves them untouched, or names the entry that was changed.

use futures::StreamExt;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, FieldFilter, QueryRequest};
use lgsp_tests::lgsp;
use lgsp_tests::province::{A, B, two_agencies};
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_calls_another_agency_through_its_node_and_both_logs_prove_it() {
    let (_province, mut a, mut b) = two_agencies().await;
    let mut app = DataExchangeClient::new(b.app_channel().await);

    let r = app
        .call(Envelope {
            service_id: format!("{A}/ho-tich"),
            operation: "get".into(),
            parameters: HashMap::from([("key".into(), "001088054321".into())]),
            request_id: "req-ho-tich-1".into(),
            ..Default::default()
        })
        .await
        .expect("dataset call")
        .into_inner();
    let record: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(record["ho_ten"], "Trần Văn Đức");
    assert_eq!(record["noi_sinh"], "Phúc Yên");
    assert_eq!(r.request_id, "req-ho-tich-1");

    let r = app
        .call(Envelope {
            service_id: format!("{A}/dkkd"),
            operation: "tra-cuu".into(),
            payload: br#"{"ma_so_doanh_nghiep":"2500123456"}"#.to_vec(),
            request_id: "req-dkkd-1".into(),
            ..Default::default()
        })
        .await
        .expect("http backend call")
        .into_inner();
    let reply: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(reply["path"], "/api/tra-cuu");
    assert_eq!(reply["ten"], "Công ty TNHH Hoa Sen Vĩnh Phúc");
    assert_eq!(
        reply["consumer"], B,
        "the backend learns the consumer from the node, not the app"
    );

    let mut pages = app
        .query(QueryRequest {
            service_id: format!("{A}/ho-tich"),
            filters: vec![FieldFilter {
                field: "noi_sinh".into(),
                equals: "Vĩnh Yên".into(),
            }],
            fields: vec!["ho_ten".into()],
            page_size: 1,
            request_id: "req-query-1".into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner();
    let mut names = Vec::new();
    while let Some(page) = pages.next().await {
        for rec in page.expect("page").records {
            let v: serde_json::Value = serde_json::from_str(&rec.json).unwrap();
            names.push(v["ho_ten"].as_str().unwrap().to_owned());
            assert!(v.get("ngay_sinh").is_none(), "projection keeps only ho_ten");
        }
    }
    names.sort();
    assert_eq!(names, vec!["Lê Thị Ánh", "Nguyễn Thị Hương"]);

    // Both sides logged the same exchanges; the logs verify.
    a.stop();
    b.stop();
    for (node, side) in [(&a, "provider"), (&b, "consumer")] {
        let log = std::fs::read_to_string(node.sharing_log()).unwrap();
        for id in ["req-ho-tich-1", "req-dkkd-1", "req-query-1"] {
            let line = log
                .lines()
                .find(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
                .unwrap_or_else(|| panic!("{side} log lacks {id}:\n{log}"));
            assert!(line.contains(&format!("\"side\":\"{side}\"")), "{line}");
            assert!(line.contains(&format!("\"consumer\":\"{B}\"")), "{line}");
            assert!(line.contains("\"status\":\"OK\""), "{line}");
        }
        let cert = node.dir.join("tls/cert.pem");
        let out = lgsp(&[
            "audit",
            "verify",
            "--log",
            node.sharing_log().to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{side} log: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let entry_of = |log: &str, id: &str| -> (usize, String) {
        log.lines()
            .enumerate()
            .find(|(_, l)| l.contains(&format!("\"request_id\":\"{id}\"")))
            .map(|(i, l)| (i + 1, l.to_owned()))
            .unwrap()
    };
    // The request digests match across the two nodes for the same call.
    let log_a = std::fs::read_to_string(a.sharing_log()).unwrap();
    let log_b = std::fs::read_to_string(b.sharing_log()).unwrap();
    let digest = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).unwrap()["response_sha256"].clone()
    };
    assert_eq!(
        digest(&entry_of(&log_a, "req-ho-tich-1").1),
        digest(&entry_of(&log_b, "req-ho-tich-1").1)
    );

    // Change one byte of one entry in A's log: verify fails and names it.
    let (line_no, line) = entry_of(&log_a, "req-dkkd-1");
    let tampered_line = line.replacen("\"operation\":\"tra-cuu\"", "\"operation\":\"tra-cuv\"", 1);
    assert_ne!(tampered_line, line);
    std::fs::write(a.sharing_log(), log_a.replacen(&line, &tampered_line, 1)).unwrap();
    let cert = a.dir.join("tls/cert.pem");
    let out = lgsp(&[
        "audit",
        "verify",
        "--log",
        a.sharing_log().to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("line {line_no}")),
        "verify must name line {line_no}: {err}"
    );
}

//! The sharing log anchored in the registry: a node publishes its newest seal
//! there, and `lgsp audit verify --anchor` fails a log cut at its end together
//! with its last seal, which the file alone cannot show. Another agency's
//! certificate cannot write a node's anchor.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{AuditAnchor, Envelope};
use lgsp_registry::RegistryClient;
use lgsp_tests::lgsp;
use lgsp_tests::province::{
    A, B, HO_TICH_CSV, NodeProcess, two_agencies_custom, wait_until_callable,
};
use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn get(request_id: &str) -> Envelope {
    Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), "001088054321".into())]),
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The seal lines of `node`'s log.
fn seals(node: &NodeProcess) -> Vec<String> {
    std::fs::read_to_string(node.sharing_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("{\"seal\":"))
        .map(str::to_owned)
        .collect()
}

fn seq_of(seal_line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(seal_line).unwrap();
    v["seal"]["seq"].as_u64().unwrap()
}

/// `lgsp audit anchor show` for `node`, read with `reader`'s certificate,
/// saved to `out`.
fn show_anchor(registry: &str, reader: &NodeProcess, node: &NodeProcess, out: &Path) -> Output {
    lgsp(&[
        "audit",
        "anchor",
        "show",
        "--registry",
        registry,
        "--tls-dir",
        reader.dir.join("tls").to_str().unwrap(),
        "--node",
        &format!("{}/{}", node.agency, node.name),
        "--out",
        out.to_str().unwrap(),
    ])
}

/// Waits up to `within` until the registry's anchor of `node` is its log's
/// last seal; returns what `anchor show` said.
fn wait_for_anchor_of_last_seal(
    registry: &str,
    reader: &NodeProcess,
    node: &NodeProcess,
    out: &Path,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let last = seals(node).last().map(|s| seq_of(s));
        let shown = show_anchor(registry, reader, node, out);
        let said = text(&shown);
        if let Some(last) = last
            && shown.status.success()
            && said.contains(&format!("  entry {last}, chain head "))
        {
            return said;
        }
        assert!(
            Instant::now() < deadline,
            "the anchor never reached the last seal ({last:?}): {said}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn verify(log: &Path, cert: &Path, anchor: &Path) -> Output {
    lgsp(&[
        "audit",
        "verify",
        "--log",
        log.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--anchor",
        anchor.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_cut_with_its_last_seal_fails_against_the_anchor_in_the_registry() {
    // A anchors every second; B every minute, so B's anchor comes from its stop.
    let (province, mut a, mut b) = two_agencies_custom(
        1,
        "[audit]\nanchor_interval_s = 1\n",
        "",
        HO_TICH_CSV,
        |_, _| {},
    )
    .await;
    wait_until_callable(&b).await;
    let registry = province.registry_addrs().join(",");
    let mut app = DataExchangeClient::new(b.app_channel().await);
    // Two batches a seal apart, so that cutting the last seal leaves a sealed log.
    app.call(get("req-anchor-1")).await.expect("call");
    let deadline = Instant::now() + Duration::from_secs(5);
    while seals(&a).is_empty() {
        assert!(Instant::now() < deadline, "A never sealed: {}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in ["req-anchor-2", "req-anchor-3"] {
        app.call(get(id)).await.expect("call");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while seals(&a).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "A never sealed twice: {}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The anchor is read with B's certificate: any certificate of the province may.
    let anchor = a.dir.join("anchor.json");
    let said = wait_for_anchor_of_last_seal(&registry, &b, &a, &anchor, Duration::from_secs(10));
    assert!(
        said.contains(&format!(
            "sharing-log anchor of node {A}/node-a (registry revision "
        )) && said.contains(&format!(
            "by spiffe://vinhphuc.gov.vn/agency/{A}/node/node-a"
        )),
        "{said}"
    );
    let cert = a.dir.join("tls/cert.pem");

    // The live log, untouched, reaches its anchor.
    let out = verify(&a.sharing_log(), &cert, &anchor);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "; reaches the anchor of node {A}/node-a (registry revision "
        )),
        "{}",
        text(&out)
    );
    // Its seal's time on the province's clocks (Asia/Ho_Chi_Minh by default), not UTC.
    assert!(
        text(&out).contains(" +07:00)") && !text(&out).contains("Z)"),
        "{}",
        text(&out)
    );

    // A copy cut at its end with its last seal: whole as far as the file tells,
    // not against the anchor.
    let log = std::fs::read_to_string(a.sharing_log()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let last_seal = lines
        .iter()
        .rposition(|l| l.starts_with("{\"seal\":"))
        .unwrap();
    let before = lines[..last_seal]
        .iter()
        .rposition(|l| l.starts_with("{\"seal\":"))
        .expect("an earlier seal");
    let (kept, anchored) = (seq_of(lines[before]), seq_of(lines[last_seal]));
    let copy = a.dir.join("cut.jsonl");
    std::fs::write(&copy, lines[..=before].join("\n") + "\n").unwrap();
    let alone = lgsp(&[
        "audit",
        "verify",
        "--log",
        copy.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(alone.status.success(), "{}", text(&alone));
    let out = verify(&copy, &cert, &anchor);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("sharing log {} was cut", copy.display()))
            && said.contains(&format!(
                "the log ends at entry {kept}, but the anchor of node {A}/node-a (registry revision "
            ))
            && said.contains(&format!("anchored entry {anchored}: "))
            && (said.contains("and their seals are missing: the log was cut at its end")
                || said.contains("and its seal are missing: the log was cut at its end")),
        "{said}"
    );
    // The refusal names the seal's time on the province's clocks too.
    assert!(said.contains(" +07:00)") && !said.contains("Z)"), "{said}");

    // An anchor edited to fit the cut log is not trusted: its signature is the node's.
    let forged = std::fs::read_to_string(&anchor)
        .unwrap()
        .replace(&format!("\"seq\":{anchored},"), &format!("\"seq\":{kept},"));
    let forged_path = a.dir.join("forged-anchor.json");
    std::fs::write(&forged_path, forged).unwrap();
    let out = verify(&copy, &cert, &forged_path);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the anchor cannot be trusted: the seal of entry"),
        "{}",
        text(&out)
    );

    // B's node certificate cannot write A's anchor to the registry.
    let as_b = RegistryClient::new(&province.registry_addrs(), &b.creds).unwrap();
    let refused = as_b
        .put(
            Value::AuditAnchor(AuditAnchor {
                agency_code: A.into(),
                node: "node-a".into(),
                seal_version: 2,
                seq: kept,
                head: "0".repeat(64),
                seal_time: "2026-12-07T00:00:00.000Z".into(),
                signer: format!("spiffe://vinhphuc.gov.vn/agency/{A}/node/node-a"),
                cert_sha256: "0".repeat(64),
                signature: "0".repeat(128),
            }),
            0,
        )
        .await
        .expect_err("B wrote A's anchor");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "that node's own certificate ({A}/node-a anchors only its own sharing log)"
        )),
        "{}",
        refused.message()
    );

    // B anchors once a minute, and when it stops: its anchor is then its last seal.
    app.call(get("req-anchor-4")).await.expect("call");
    drop(app);
    b.stop();
    let b_anchor = b.dir.join("anchor.json");
    let said = wait_for_anchor_of_last_seal(&registry, &a, &b, &b_anchor, Duration::from_secs(1));
    assert!(said.contains(&format!("node {B}/node-b")), "{said}");
    let out = verify(&b.sharing_log(), &b.dir.join("tls/cert.pem"), &b_anchor);
    assert!(out.status.success(), "{}", text(&out));
    a.stop();
}

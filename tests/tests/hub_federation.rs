//! Two lgsp instances in one test, each with its own CA, registry, hub and
//! agency nodes, on loopback: the province (vinhphuc.gov.vn) and the
//! national platform (ndxp.gov.vn). A national agency calls a province
//! dataset and a province agency calls a national one, through both hubs,
//! with the consumer node's signed record of on whose behalf; the sharing
//! logs of every node and hub on the path hold the same request id and
//! verify. A national agency's query stream crosses both hubs the same
//! way. Refused: a consumer without a grant (call and query), an unexported
//! service, a call or query without a record, a forged and a replayed
//! record, a call's record on a query, a hub of a CA the province does not
//! trust; a peer that is down fails fast once its circuit opens, and the
//! calls work again when it is back. A province service the province's hub
//! carries to an X-Road security server answers the national agency with
//! the security server's ids, in its metadata and in both hubs' logs.

use lgsp_certs::Role;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, GrantStatus, QueryRequest, RecordKind};
use lgsp_tests::cluster::{PROVINCE, free_addr};
use lgsp_tests::https_server::HttpsServer;
use lgsp_tests::province::{NodeProcess, Province};
use lgsp_tests::{Pki, lgsp};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

const NATIONAL_DOMAIN: &str = "ndxp.gov.vn";
/// The national platform's operator.
const NATIONAL: &str = "000.00.00.G01";
/// A ministry system on the national platform: the population register.
const MINISTRY: &str = "000.00.05.G01";
/// A national consumer agency.
const NATIONAL_CONSUMER: &str = "000.00.07.G01";
/// The province's provider (Department of Justice) and consumer (a district).
const A: &str = "000.00.12.H62";
const B: &str = "000.00.13.H62";

/// Rows of the province's register besides its three named ones, about
/// 24 KB each: far more bytes (14 MB) than the hops after the province's
/// hub hold (a few pages were seen), so that a query stream of it cannot
/// have been relayed whole before the test ends its grant.
const FILLER_ROWS: usize = 600;

/// The province's civil register: three named citizens, then the filler.
fn ho_tich_csv() -> String {
    let mut csv = "id,ho_ten\n001099012345,Nguyễn Thị Hương\n001099012346,Trần Đình Quý\n001099012347,Lê Thị Ánh Tuyết\n".to_owned();
    let filler = "Phạm Văn Điền ".repeat(1200);
    for i in 0..FILLER_ROWS {
        csv.push_str(&format!("0010992{i:05},{filler}\n"));
    }
    csv
}

fn ok(registry: &str, tls: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--registry", registry, "--tls-dir", tls.to_str().unwrap()]);
    let out = lgsp(&all);
    assert!(
        out.status.success(),
        "lgsp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(service: &str, key: &str) -> Envelope {
    Envelope {
        service_id: service.into(),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), key.into())]),
        request_id: String::new(),
        ..Default::default()
    }
}

/// A provider node of `agency` serving `service` from `csv` (key `id`).
async fn provider(p: &mut Province, agency: &str, service: &str, csv: &str) -> NodeProcess {
    let mut node = p.prepare_node(
        agency,
        "node-1",
        &format!("[[services]]\nname = \"{service}\"\nkind = \"dataset\"\n"),
    );
    let file = node.dir.join("data.csv");
    std::fs::write(&file, csv).unwrap();
    let out = lgsp(&[
        "dataset",
        "import",
        "--data-dir",
        node.data_dir().to_str().unwrap(),
        "--service",
        service,
        "--file",
        file.to_str().unwrap(),
        "--key",
        "id",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.start();
    p.wait_for_node(agency, "node-1", &node).await;
    p.publish(
        &format!("{agency}/{service}"),
        lgsp_proto::ServiceKind::Dataset,
        "node-1",
        service,
    )
    .await;
    node
}

/// A `get` of a company by tax code, of the X-Road-backed `service`.
fn tax_code(service: &str) -> Envelope {
    Envelope {
        parameters: HashMap::from([("id".to_owned(), "0101234567".to_owned())]),
        ..get(service, "0101234567")
    }
}

/// An X-Road security server's answer to a GET of a company by tax code:
/// JSON, with the exchange's ids (`X-Road-Id` echoed, `X-Road-Request-Id`
/// its own).
async fn xroad_answer(
    req: hyper::Request<hyper::body::Incoming>,
    _client_cert: bool,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let xroad_id = req
        .headers()
        .get("x-road-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (consumer, user) = (seen("x-lgsp-consumer-agency"), seen("x-road-userid"));
    let id = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    hyper::Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .header("x-road-id", xroad_id)
        .header("x-road-request-id", "c0ffee-lien-thong")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::json!({
                "ma_so_thue": id,
                "ten": "Công ty TNHH Hòa Bình",
                "nguoi_goi": consumer,
                "user_id": user,
            })
            .to_string(),
        )))
        .unwrap()
}

/// Calls `service` from `node`'s applications until `done` accepts the
/// outcome, for up to `within`.
async fn until(
    node: &NodeProcess,
    service: &str,
    key: &str,
    within: Duration,
    done: impl Fn(&Result<String, tonic::Status>) -> bool,
) -> Result<String, tonic::Status> {
    let mut app = DataExchangeClient::new(node.app_channel().await);
    let start = Instant::now();
    loop {
        let outcome = app
            .call(get(service, key))
            .await
            .map(|r| String::from_utf8_lossy(&r.into_inner().payload).into_owned());
        if done(&outcome) || start.elapsed() > within {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of a query of `service` from `node`'s applications, all
/// pages read, as `key → json`; page size 2, so several pages cross.
async fn query_all(
    node: &NodeProcess,
    service: &str,
    request_id: &str,
) -> Result<Vec<(String, String)>, tonic::Status> {
    let mut app = DataExchangeClient::new(node.app_channel().await);
    let mut request = tonic::Request::new(QueryRequest {
        service_id: service.into(),
        page_size: 2,
        request_id: request_id.into(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    let mut pages = app.query(request).await?.into_inner();
    let mut records = Vec::new();
    while let Some(page) = pages.message().await? {
        records.extend(page.records.into_iter().map(|r| (r.key, r.json)));
    }
    Ok(records)
}

/// A query stream of `service` from `node`'s applications, one record a
/// page, opened once it opens (for up to 10 s) and its first page read:
/// the stream and the records received.
async fn running_stream(
    node: &NodeProcess,
    service: &str,
    request_id: &str,
) -> (tonic::Streaming<lgsp_proto::QueryPage>, usize) {
    let mut app =
        DataExchangeClient::new(node.app_channel().await).max_decoding_message_size(8 << 20);
    let start = Instant::now();
    loop {
        let mut request = tonic::Request::new(QueryRequest {
            service_id: service.into(),
            page_size: 1,
            request_id: request_id.into(),
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(60));
        let opened = match app.query(request).await {
            Ok(response) => {
                let mut pages = response.into_inner();
                pages.message().await.map(|first| (pages, first))
            }
            Err(s) => Err(s),
        };
        match opened {
            Ok((pages, Some(first))) => return (pages, first.records.len()),
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no query stream {request_id} within 10 s: {:?}",
                    other.map(|(_, first)| first.map(|p| p.records.len()))
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads `running` on until it ends; its refusal and the records received
/// in all. Panics when it runs to its end (`what` says what should have
/// stopped it).
async fn refusal_ending(
    running: &mut tonic::Streaming<lgsp_proto::QueryPage>,
    mut received: usize,
    what: &str,
) -> (tonic::Status, usize) {
    loop {
        match running.message().await {
            Ok(Some(page)) => received += page.records.len(),
            Ok(None) => panic!("the query stream ran to its end ({received} records) after {what}"),
            Err(s) => return (s, received),
        }
    }
}

/// The one entry of `node`'s sharing log for `request_id`.
fn entry_of(node: &NodeProcess, request_id: &str) -> String {
    let entries: Vec<String> = std::fs::read_to_string(node.sharing_log())
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!(r#""request_id":"{request_id}""#)))
        .map(str::to_owned)
        .collect();
    assert_eq!(entries.len(), 1, "one entry of {request_id}: {entries:?}");
    entries.into_iter().next().unwrap()
}

/// `lgsp audit verify --live` of `node`'s log, which must pass: its output.
fn audit_verify(node: &NodeProcess, who: &str) -> String {
    let out = lgsp(&[
        "audit",
        "verify",
        "--live",
        "--log",
        node.sharing_log().to_str().unwrap(),
        "--cert",
        node.dir.join("tls/cert.pem").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{who}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn log_has(node: &NodeProcess, request_id: &str) -> bool {
    std::fs::read_to_string(node.sharing_log())
        .unwrap_or_default()
        .contains(request_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_call_each_other_through_their_hubs() {
    // The province and the national platform, each with its own CA.
    let mut p = Province::start().await;
    let mut q = Province::start_instance(1, NATIONAL_DOMAIN, NATIONAL).await;
    p.register_agency(PROVINCE, "Sở Khoa học và Công nghệ tỉnh Vĩnh Phúc")
        .await;
    q.register_agency(NATIONAL, "Nền tảng NDXP").await;
    p.register_agency(A, "Sở Tư pháp tỉnh Vĩnh Phúc").await;
    p.register_agency(B, "UBND huyện Tam Dương").await;
    q.register_agency(MINISTRY, "Bộ Công an").await;
    q.register_agency(NATIONAL_CONSUMER, "Bộ Tư pháp").await;
    let node_a = provider(&mut p, A, "ho-tich", &ho_tich_csv()).await;
    let node_m = provider(
        &mut q,
        MINISTRY,
        "dan-cu",
        "id,ho_ten,thuong_tru\n036099000111,Trần Văn Đức,Hà Nội\n",
    )
    .await;
    let mut node_b = p.prepare_node(B, "node-1", "");
    node_b.start();
    p.wait_for_node(B, "node-1", &node_b).await;
    // Node C is left to decide whether to sign in batches: it does where
    // every hop says it verifies them (below).
    let mut node_c = q.prepare_node(NATIONAL_CONSUMER, "node-1", "");
    node_c.start();
    q.wait_for_node(NATIONAL_CONSUMER, "node-1", &node_c).await;

    // The hubs; each instance's admin names the other as a peer.
    let (mut hub_p, p_out) = p.prepare_hub(PROVINCE, "hub");
    let (mut hub_q, q_out) = q.prepare_hub(NATIONAL, "hub");
    let p_reg = p.registry_addrs().join(",");
    let q_reg = q.registry_addrs().join(",");
    let p_admin = p.tls_dir("admin-cli", &p.registry.admin.clone());
    let q_admin = q.tls_dir("admin-cli", &q.registry.admin.clone());
    let p_ca = p.registry.pki.ca_dir().join("ca.crt");
    let q_ca = q.registry.pki.ca_dir().join("ca.crt");
    std::fs::write(&p_ca, p.registry.pki.ca.cert_pem()).unwrap();
    std::fs::write(&q_ca, q.registry.pki.ca.cert_pem()).unwrap();
    ok(
        &p_reg,
        &p_admin,
        &[
            "hub",
            "peer",
            "add",
            "--name",
            "ndxp",
            "--trust-domain",
            NATIONAL_DOMAIN,
            "--ca",
            q_ca.to_str().unwrap(),
            "--endpoint",
            &q_out,
        ],
    );
    ok(
        &q_reg,
        &q_admin,
        &[
            "hub",
            "peer",
            "add",
            "--name",
            "vinhphuc",
            "--trust-domain",
            lgsp_tests::TRUST_DOMAIN,
            "--ca",
            p_ca.to_str().unwrap(),
            "--endpoint",
            &p_out,
        ],
    );
    hub_p.start_hub(&p_out);
    hub_q.start_hub(&q_out);
    p.wait_for_node(PROVINCE, "hub", &hub_p).await;
    q.wait_for_node(NATIONAL, "hub", &hub_q).await;

    // A province service the province's hub carries to an X-Road security
    // server (the tax authority's, say).
    let xroad = HttpsServer::new("Bộ Tài chính test CA", p.registry.pki.ca.cert_pem());
    let xroad_addr = free_addr();
    std::mem::forget(xroad.serve(xroad_addr, xroad_answer).await);
    let xroad_ca = p.registry.pki.ca_dir().join("xroad-ss-ca.pem");
    std::fs::write(&xroad_ca, &xroad.ca_pem).unwrap();
    ok(
        &p_reg,
        &p_admin,
        &[
            "hub",
            "rest",
            "add",
            "--name",
            "xroad-ss",
            "--base-url",
            &format!("https://{xroad_addr}"),
            "--ca",
            xroad_ca.to_str().unwrap(),
            "--auth",
            "client-cert",
            "--xroad-client",
            "VN/GOV/000.00.00.H62/lgsp",
        ],
    );
    let ma_so_thue = format!("{PROVINCE}/ma-so-thue");
    p.publish(
        &ma_so_thue,
        lgsp_proto::ServiceKind::Http,
        "hub",
        "ma-so-thue",
    )
    .await;
    ok(
        &p_reg,
        &p_admin,
        &[
            "hub",
            "rest",
            "route",
            "--service",
            &ma_so_thue,
            "--system",
            "xroad-ss",
            "--op",
            "get=GET /companies/{id}",
            "--xroad-service",
            "VN/GOV/000.00.01.G12/thue/tra-cuu",
        ],
    );

    // Exports, imports, and grants to the other instance's agencies.
    let ho_tich = format!("{A}/ho-tich");
    let dan_cu = format!("{MINISTRY}/dan-cu");
    for (reg, admin, args) in [
        (
            &p_reg,
            &p_admin,
            ["hub", "export", "--service", &ma_so_thue, "--peer", "ndxp"],
        ),
        (
            &q_reg,
            &q_admin,
            [
                "hub",
                "import",
                "--peer",
                "vinhphuc",
                "--service",
                &ma_so_thue,
            ],
        ),
    ] {
        ok(reg, admin, &args);
    }
    ok(
        &p_reg,
        &p_admin,
        &["hub", "export", "--service", &ho_tich, "--peer", "ndxp"],
    );
    ok(
        &q_reg,
        &q_admin,
        &["hub", "export", "--service", &dan_cu, "--peer", "vinhphuc"],
    );
    ok(
        &q_reg,
        &q_admin,
        &["hub", "import", "--peer", "vinhphuc", "--service", &ho_tich],
    );
    ok(
        &p_reg,
        &p_admin,
        &["hub", "import", "--peer", "ndxp", "--service", &dan_cu],
    );
    ok(
        &p_reg,
        &p_admin,
        &[
            "agency",
            "register",
            "--code",
            NATIONAL_CONSUMER,
            "--name",
            "Bộ Tư pháp",
            "--trust-domain",
            NATIONAL_DOMAIN,
        ],
    );
    ok(
        &q_reg,
        &q_admin,
        &[
            "agency",
            "register",
            "--code",
            B,
            "--name",
            "UBND huyện Tam Dương",
            "--trust-domain",
            lgsp_tests::TRUST_DOMAIN,
        ],
    );
    ok(
        &p_reg,
        &p_admin,
        &[
            "access",
            "grant",
            "--service",
            &ho_tich,
            "--consumer",
            NATIONAL_CONSUMER,
            "--reason",
            "Thỏa thuận kết nối NDXP",
        ],
    );
    ok(
        &q_reg,
        &q_admin,
        &[
            "access",
            "grant",
            "--service",
            &dan_cu,
            "--consumer",
            B,
            "--reason",
            "Xác thực dân cư",
        ],
    );
    ok(
        &p_reg,
        &p_admin,
        &[
            "access",
            "grant",
            "--service",
            &ma_so_thue,
            "--consumer",
            NATIONAL_CONSUMER,
            "--reason",
            "Tra cứu mã số thuế",
        ],
    );
    // Once the national hub has synchronised, the import is in its catalog.
    let start = Instant::now();
    loop {
        let status = ok(&q_reg, &q_admin, &["hub", "status"]);
        if status.contains("in the catalog") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the import never reached the national catalog: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A national agency calls the province's dataset, and a province agency the national one.
    let national = until(
        &node_c,
        &ho_tich,
        "001099012345",
        Duration::from_secs(20),
        |o| o.is_ok(),
    )
    .await;
    assert!(
        national
            .as_ref()
            .is_ok_and(|v| v.contains("Nguyễn Thị Hương")),
        "national → province: {national:?}\nhub Q:\n{}\nhub P:\n{}",
        hub_q.log(),
        hub_p.log()
    );
    let province = until(
        &node_b,
        &dan_cu,
        "036099000111",
        Duration::from_secs(20),
        |o| o.is_ok(),
    )
    .await;
    assert!(
        province.as_ref().is_ok_and(|v| v.contains("Trần Văn Đức")),
        "province → national: {province:?}"
    );
    // The national agency calls the province's X-Road-backed service: the
    // security server's ids reach its application as metadata, and both
    // hubs log them with the exchange.
    let start = Instant::now();
    let mut app_c = DataExchangeClient::new(node_c.app_channel().await);
    let answered = loop {
        let mut env = tax_code(&ma_so_thue);
        env.request_id = "lien-thong-xroad-001".into();
        match app_c.call(env).await {
            Ok(answer) => break answer,
            Err(s) => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "national → province X-Road service: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        answered.metadata().get("x-road-id").unwrap(),
        "lien-thong-xroad-001"
    );
    assert_eq!(
        answered.metadata().get("x-road-request-id").unwrap(),
        "c0ffee-lien-thong"
    );
    let reply: serde_json::Value = serde_json::from_slice(&answered.into_inner().payload).unwrap();
    assert_eq!(reply["ten"], "Công ty TNHH Hòa Bình", "{reply}");
    // The security server learns the consumer agency of the other instance.
    assert_eq!(
        reply["nguoi_goi"],
        format!("{NATIONAL_CONSUMER}@{NATIONAL_DOMAIN}"),
        "{reply}"
    );
    assert_eq!(
        reply["user_id"],
        format!("VN{NATIONAL_CONSUMER}"),
        "{reply}"
    );
    for (who, hub) in [("hub P", &hub_p), ("hub Q", &hub_q)] {
        let start = Instant::now();
        let entry = loop {
            let log = std::fs::read_to_string(hub.sharing_log()).unwrap_or_default();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("lien-thong-xroad-001") && l.contains("x-road-request-id"))
            {
                break line.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{who} logged no X-Road ids for the exchange:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(entry.contains("c0ffee-lien-thong"), "{who}: {entry}");
    }
    // In a maintenance window the province's hub refuses the peer's call as
    // the service's node would, before the security server is called.
    let tomorrow = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]"
        ))
        .unwrap();
    ok(
        &p_reg,
        &p_admin,
        &[
            "service",
            "maintenance",
            &ma_so_thue,
            "--force-majeure",
            "--end",
            &tomorrow,
            "--reason",
            "Bảo trì hệ thống thuế",
        ],
    );
    let start = Instant::now();
    let refused = loop {
        let env = tax_code(&ma_so_thue);
        match app_c.call(env).await {
            Err(s) if s.message().contains("Bảo trì hệ thống thuế") => break s,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "still served 10 s into a maintenance window: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // The province's hub answered: the national hub does not count that as
    // the peer failing, and its circuit stays closed however many are
    // refused (three failures in a row would open it).
    for _ in 0..4 {
        let env = tax_code(&ma_so_thue);
        let refused = app_c.call(env).await.unwrap_err();
        assert!(
            refused.message().contains("Bảo trì hệ thống thuế")
                && !refused.message().contains("did not answer"),
            "{refused:?}"
        );
    }

    // The imported service appears in each catalog as a service of the other instance.
    let imported = p
        .admin
        .get(RecordKind::Service, &dan_cu, false)
        .await
        .unwrap()
        .record
        .and_then(|r| r.value);
    assert!(
        matches!(&imported, Some(lgsp_proto::catalog_record::Value::Service(s)) if s.origin == "ndxp"),
        "{imported:?}"
    );

    // One request id on every hop; every log on the path verifies.
    let mut app = DataExchangeClient::new(node_c.app_channel().await);
    let mut traced = get(&ho_tich, "001099012345");
    traced.request_id = "lien-thong-001".into();
    app.call(traced).await.expect("traced call");
    // And the other way: a province agency's call to the national service.
    let mut back = get(&dan_cu, "036099000111");
    back.request_id = "lien-thong-nguoc-001".into();
    DataExchangeClient::new(node_b.app_channel().await)
        .call(back)
        .await
        .expect("traced call, province → national");
    // A query stream crosses both hubs too: every row, over several pages,
    // its Vietnamese text intact.
    let rows = query_all(&node_c, &ho_tich, "lien-thong-truy-van-001")
        .await
        .unwrap_or_else(|s| {
            panic!(
                "national → province query: {s:?}\nhub Q:\n{}\nhub P:\n{}",
                hub_q.log(),
                hub_p.log()
            )
        });
    let names: Vec<&str> = rows.iter().map(|(_, json)| json.as_str()).collect();
    assert_eq!(rows.len(), 3 + FILLER_ROWS, "all the register's records");
    for name in ["Nguyễn Thị Hương", "Trần Đình Quý", "Lê Thị Ánh Tuyết"] {
        assert!(
            names.iter().any(|j| j.contains(name)),
            "{name} missing: {rows:?}"
        );
    }
    // Calls made at the same time are signed by node C in batches (one
    // signature over a Merkle tree of their records), unasked: its hub Q,
    // hub P and node A say they verify them (their node records, and hub
    // P's export). Each still verifies at hub P and node A, and is logged
    // as the national agency's.
    let burst: Vec<String> = (0..24).map(|i| format!("lien-thong-lo-{i:02}")).collect();
    let calls = burst.iter().map(|id| {
        let mut app = app.clone();
        let mut call = get(&ho_tich, "001099012345");
        call.request_id = id.clone();
        async move { app.call(call).await }
    });
    for (id, outcome) in burst.iter().zip(futures::future::join_all(calls).await) {
        outcome.unwrap_or_else(|s| panic!("{id}: {s:?}\nhub P:\n{}", hub_p.log()));
    }
    let (_, metrics) = lgsp_tests::metrics::scrape(&node_c.metrics).await;
    let batched = metrics
        .lines()
        .find(|l| l.starts_with("lgsp_obo_records_signed_total{signature=\"batched\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        batched >= 2.0,
        "node C signed no records in batches:\n{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let provider_log = std::fs::read_to_string(node_a.sharing_log()).unwrap();
    for id in &burst {
        assert!(
            provider_log.lines().any(|l| l.contains(id.as_str())
                && l.contains(NATIONAL_CONSUMER)
                && l.contains("\"OK\"")),
            "node A's log lacks {id} served to the national agency"
        );
    }
    for (who, node) in [
        ("the national consumer node", &node_c),
        ("the national hub", &hub_q),
        ("the provincial hub", &hub_p),
        ("the province's provider node", &node_a),
    ] {
        for id in ["lien-thong-001", "lien-thong-truy-van-001"] {
            assert!(log_has(node, id), "{who}'s sharing log lacks {id}");
        }
        let query_entries: Vec<String> = std::fs::read_to_string(node.sharing_log())
            .unwrap()
            .lines()
            .filter(|l| l.contains("lien-thong-truy-van-001"))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            query_entries.len(),
            1,
            "{who} logs the query once: {query_entries:?}"
        );
        assert!(
            query_entries[0].contains(NATIONAL_CONSUMER)
                && query_entries[0].contains("\"query\"")
                && query_entries[0].contains("\"OK\""),
            "{who}'s entry names the national agency and the query: {query_entries:?}"
        );
        // Each hop's entry of the call keeps node C's signed record, and
        // `audit verify` proves node C signed it (batched records included).
        let call_entry = entry_of(node, "lien-thong-001");
        assert!(
            call_entry.contains(r#""on_behalf_of":""#),
            "{who} keeps the on-behalf-of record: {call_entry}"
        );
        let verified = audit_verify(node, who);
        assert!(
            verified.contains("on-behalf-of records OK")
                && verified.contains(&format!(
                    "spiffe://{NATIONAL_DOMAIN}/agency/{NATIONAL_CONSUMER}/node/node-1"
                )),
            "{who}: {verified}"
        );
    }
    // The province → national path: every hop logs the province agency's
    // call with node B's signed record, and every log verifies.
    let node_b_id = format!(
        "spiffe://{}/agency/{B}/node/node-1",
        lgsp_tests::TRUST_DOMAIN
    );
    for (who, node, consumer) in [
        ("the province's consumer node", &node_b, B.to_owned()),
        ("the provincial hub", &hub_p, B.to_owned()),
        (
            "the national hub",
            &hub_q,
            format!("{B}@{}", lgsp_tests::TRUST_DOMAIN),
        ),
        (
            "the ministry's provider node",
            &node_m,
            format!("{B}@{}", lgsp_tests::TRUST_DOMAIN),
        ),
    ] {
        let entry = entry_of(node, "lien-thong-nguoc-001");
        assert!(
            entry.contains(&format!(r#""consumer":"{consumer}""#))
                && entry.contains(r#""status":"OK""#)
                && entry.contains(r#""on_behalf_of":""#),
            "{who}'s entry names {consumer} and keeps node B's record: {entry}"
        );
        let verified = audit_verify(node, who);
        assert!(verified.contains(&node_b_id), "{who}: {verified}");
    }
    let provider_log = std::fs::read_to_string(node_a.sharing_log()).unwrap();
    assert!(
        provider_log.contains(&format!("{NATIONAL_CONSUMER}@{NATIONAL_DOMAIN}")),
        "the provider logs the national agency, not only the hub"
    );
    let query_entry = provider_log
        .lines()
        .find(|l| l.contains("lien-thong-truy-van-001"))
        .unwrap();
    assert!(
        query_entry.contains(&format!("{NATIONAL_CONSUMER}@{NATIONAL_DOMAIN}")),
        "the provider logs the query for the national agency: {query_entry}"
    );

    // Refusals at the province's hub, called as the national hub would.
    let (q_hub_creds, _) = q.issue(NATIONAL, Role::Hub, "hub-2");
    // Records addressed to the province, carried by that hub.
    let to_p =
        lgsp_node::obo::Audience::new(lgsp_tests::TRUST_DOMAIN, &q_hub_creds.spiffe_id().unwrap());
    let to_p_hub = |creds: &lgsp_certs::Credentials| {
        let creds = lgsp_certs::Credentials {
            roots: p.registry.admin.roots.clone(),
            ..creds.clone()
        };
        let trust = lgsp_certs::ClientTrust::new(&creds).unwrap();
        let address = p_out.clone();
        async move {
            lgsp_certs::server_identity::connect(
                &address,
                &creds,
                trust,
                lgsp_certs::Expected::hub(lgsp_tests::TRUST_DOMAIN),
            )
            .await
        }
    };
    let channel = to_p_hub(&q_hub_creds).await.unwrap();
    let mut as_q_hub = DataExchangeClient::new(channel);
    // No record.
    let err = as_q_hub
        .call(get(&ho_tich, "001099012345"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("on-behalf-of"), "{err:?}");
    // A query without a record, and one carrying a call's record.
    let mut query = QueryRequest {
        service_id: ho_tich.clone(),
        request_id: "truy-van-khong-ho-so".into(),
        ..Default::default()
    };
    let err = as_q_hub.query(query.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("on-behalf-of"), "{err:?}");
    query.request_id = "ho-so-cua-lenh-goi".into();
    let mut call = get(&ho_tich, "001099012345");
    call.request_id = query.request_id.clone();
    let signed = lgsp_node::obo::sign(&node_c.creds, &call, now_ms(), &to_p).unwrap();
    let mut request = tonic::Request::new(query);
    lgsp_node::obo::to_metadata(request.metadata_mut(), &signed);
    let err = as_q_hub.query(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("signed for a call"), "{err:?}");
    // A record signed by the national node, for another request: forged.
    let mut env = get(&ho_tich, "001099012345");
    env.request_id = "gia-mao".into();
    let signed = lgsp_node::obo::sign(&node_c.creds, &env, now_ms(), &to_p).unwrap();
    let mut other = env.clone();
    other.parameters.insert("key".into(), "001088054321".into());
    let mut request = tonic::Request::new(other);
    lgsp_node::obo::to_metadata(request.metadata_mut(), &signed);
    let err = as_q_hub.call(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("another request"), "{err:?}");
    // A record addressed to another instance, or to be carried by another
    // hub of the national platform: replays elsewhere, refused.
    for (audience, why) in [
        (
            lgsp_node::obo::Audience {
                trust_domain: "other-province.gov.vn".into(),
                ..to_p.clone()
            },
            "is addressed to other-province.gov.vn",
        ),
        (
            lgsp_node::obo::Audience {
                via_hub: format!("spiffe://{NATIONAL_DOMAIN}/agency/{NATIONAL}/hub/hub"),
                ..to_p.clone()
            },
            "a replay through another hub",
        ),
    ] {
        let mut env = get(&ho_tich, "001099012345");
        env.request_id = "noi-khac".into();
        let signed = lgsp_node::obo::sign(&node_c.creds, &env, now_ms(), &audience).unwrap();
        let mut request = tonic::Request::new(env);
        lgsp_node::obo::to_metadata(request.metadata_mut(), &signed);
        let err = as_q_hub.call(request).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains(why), "{why}: {err:?}");
    }
    // A good record, then the same record again: a replay.
    let mut env = get(&ho_tich, "001099012345");
    env.request_id = "phat-lai".into();
    let signed = lgsp_node::obo::sign(&node_c.creds, &env, now_ms(), &to_p).unwrap();
    for attempt in 0..2 {
        let mut request = tonic::Request::new(env.clone());
        lgsp_node::obo::to_metadata(request.metadata_mut(), &signed);
        let outcome = as_q_hub.call(request).await;
        if attempt == 0 {
            outcome.expect("the first use of a record is served");
        } else {
            let err = outcome.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
            assert!(err.message().contains("replay"), "{err:?}");
        }
    }
    // A record the hub refused is not kept: the forged one and the replay
    // leave entries without it, and the log still proves every record it
    // keeps.
    // (The log is written out within a second or so.)
    let kept = |request_id: &str, entries: usize| {
        let path = hub_p.sharing_log();
        let request_id = format!(r#""request_id":"{request_id}""#);
        async move {
            let start = Instant::now();
            loop {
                let kept: Vec<bool> = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .filter(|l| l.contains(&request_id))
                    .map(|l| l.contains(r#""on_behalf_of":""#))
                    .collect();
                if kept.len() >= entries || start.elapsed() > Duration::from_secs(5) {
                    return kept;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(kept("gia-mao", 1).await, [false], "the forged record");
    assert_eq!(
        kept("phat-lai", 2).await,
        [true, false],
        "served, then replayed"
    );
    audit_verify(&hub_p, "the provincial hub, after the refusals");
    // A hub of a CA the province does not trust (same trust domain name):
    // not served, and refused in the TLS handshake of the province's hub
    // (the client may see the alert, or only the connection closing).
    let refusals = || hub_p.log().matches("TLS handshake refused").count();
    let before = refusals();
    let mut stranger = Pki::new(NATIONAL_DOMAIN);
    let (impostor, _) = stranger.issue(NATIONAL, Role::Hub, "hub");
    let refused = match to_p_hub(&impostor).await {
        Err(e) => e.to_string(),
        Ok(channel) => DataExchangeClient::new(channel)
            .call(get(&ho_tich, "001099012345"))
            .await
            .map(|_| "served".to_owned())
            .unwrap_or_else(|s| s.to_string()),
    };
    assert_ne!(refused, "served");
    let start = Instant::now();
    while refusals() == before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the province's hub logged no refused handshake; the client saw: {refused}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Unexported while the grant still stands: the province's hub refuses
    // a well-signed call for it, and it leaves the national catalog.
    ok(
        &p_reg,
        &p_admin,
        &["hub", "unexport", "--service", &ho_tich, "--peer", "ndxp"],
    );
    let start = Instant::now();
    loop {
        match q.admin.get(RecordKind::Service, &ho_tich, false).await {
            Err(e) if e.code() == Code::NotFound => break,
            Err(e) => panic!("reading the national catalog: {e:?}"),
            Ok(_) => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "still imported 5 s after the unexport"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "unexport reached the national catalog in {:?}",
        start.elapsed()
    );
    let mut env = get(&ho_tich, "001099012345");
    env.request_id = "khong-xuat".into();
    let signed = lgsp_node::obo::sign(&node_c.creds, &env, now_ms(), &to_p).unwrap();
    let mut request = tonic::Request::new(env);
    lgsp_node::obo::to_metadata(request.metadata_mut(), &signed);
    let err = as_q_hub.call(request).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("is not exported to ndxp"), "{err:?}");

    // Exported again, but the national consumer's grant is terminated.
    ok(
        &p_reg,
        &p_admin,
        &["hub", "export", "--service", &ho_tich, "--peer", "ndxp"],
    );
    // A query stream running when the national hub's admin unimports the
    // service: opened once the export is back in the national catalog. The
    // province's hub would serve it on; the national hub, checking before
    // each page it relays, ends it.
    let (mut running, received) = running_stream(&node_c, &ho_tich, "truy-van-bo-nhap").await;
    ok(
        &q_reg,
        &q_admin,
        &[
            "hub",
            "unimport",
            "--peer",
            "vinhphuc",
            "--service",
            &ho_tich,
        ],
    );
    let gone = until(
        &node_c,
        &ho_tich,
        "001099012345",
        Duration::from_secs(10),
        |o| o.is_err(),
    )
    .await;
    assert!(
        gone.is_err(),
        "still called 10 s after the unimport: {gone:?}"
    );
    let (ended, received) = refusal_ending(&mut running, received, "the unimport").await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("no longer imported"), "{ended:?}");
    eprintln!(
        "the query stream ended {received} records in, after the unimport: {}",
        ended.message()
    );
    ok(
        &q_reg,
        &q_admin,
        &["hub", "import", "--peer", "vinhphuc", "--service", &ho_tich],
    );

    // A query stream running when the grant ends: opened once the import is
    // back, one record a page, one page read.
    let (mut running, received) = running_stream(&node_c, &ho_tich, "truy-van-dang-chay").await;
    p.grant(&ho_tich, NATIONAL_CONSUMER, GrantStatus::Terminated)
        .await;
    let err = until(
        &node_c,
        &ho_tich,
        "001099012345",
        Duration::from_secs(10),
        |o| matches!(o, Err(s) if s.message().contains("holds no active grant")),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("holds no active grant"), "{err:?}");
    // The running stream delivers what the hops after the province's hub
    // already hold, then ends with the refusal of whichever hop saw the
    // grant end first: the province's hub and the provider node both
    // recheck it before each page.
    let (ended, received) = refusal_ending(&mut running, received, "the grant ended").await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(
        ended.message().contains("holds no active grant")
            || ended.message().contains("was terminated (no longer needed"),
        "{ended:?}"
    );
    assert!(received < 3 + FILLER_ROWS, "{received}");
    eprintln!(
        "the running query stream ended after {received} of {} records",
        3 + FILLER_ROWS
    );
    // A query without the grant is refused the same way, before any page.
    let err = query_all(&node_c, &ho_tich, "khong-quyen-truy-van")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("holds no active grant"), "{err:?}");

    // The national hub goes down: the province's calls fail naming it, then
    // fast once its circuit opens; back up, they work again.
    hub_q.stop();
    let mut app_b = DataExchangeClient::new(node_b.app_channel().await);
    let mut messages = Vec::new();
    for _ in 0..4 {
        let err = app_b.call(get(&dan_cu, "036099000111")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        messages.push(err.message().to_owned());
    }
    assert!(messages[0].contains("ndxp"), "{messages:?}");
    let fast = Instant::now();
    let err = app_b.call(get(&dan_cu, "036099000111")).await.unwrap_err();
    assert!(err.message().contains("circuit is open"), "{err:?}");
    assert!(
        fast.elapsed() < Duration::from_millis(500),
        "took {:?}",
        fast.elapsed()
    );
    hub_q.start_hub(&q_out);
    let back = until(
        &node_b,
        &dan_cu,
        "036099000111",
        Duration::from_secs(20),
        |o| o.is_ok(),
    )
    .await;
    assert!(back.is_ok(), "after the national hub came back: {back:?}");

    // A query stream running when the province's CA revokes the province
    // hub's certificate and the national admin publishes that CRL: the
    // connection it runs on was opened before, so the national hub, which
    // relays it, checks the certificate the province's hub presented there
    // before each page. (Last: the province's hub is no longer trusted.)
    ok(
        &p_reg,
        &p_admin,
        &[
            "access",
            "grant",
            "--service",
            &ho_tich,
            "--consumer",
            NATIONAL_CONSUMER,
        ],
    );
    let (mut running, received) = running_stream(&node_c, &ho_tich, "truy-van-thu-hoi").await;
    let serial = lgsp_certs::inspect::CertInfo::from_der(
        hub_p.creds.chain[0].as_ref(),
        Path::new("hub P's certificate"),
    )
    .unwrap()
    .serial;
    let ca = &mut p.registry.pki.ca;
    ca.revoke(&serial, rcgen::RevocationReason::KeyCompromise)
        .unwrap();
    let crl = ca.sign_crl(5).unwrap();
    let crl_file = p.registry.pki.ca_dir().join("vinhphuc.crl");
    std::fs::write(&crl_file, &crl.pem).unwrap();
    ok(
        &q_reg,
        &q_admin,
        &[
            "hub",
            "peer",
            "crl",
            "--name",
            "vinhphuc",
            "--crl",
            crl_file.to_str().unwrap(),
        ],
    );
    // New connections to the province's hub are refused in the handshake.
    let refused = until(
        &node_c,
        &ho_tich,
        "001099012345",
        Duration::from_secs(10),
        |o| matches!(o, Err(s) if s.message().to_lowercase().contains("revoked")),
    )
    .await;
    assert!(
        matches!(&refused, Err(s) if s.message().contains("federation peer vinhphuc")),
        "still called 10 s after the CRL: {refused:?}"
    );
    let (ended, received) = refusal_ending(&mut running, received, "the revocation").await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains(&serial)
            && ended.message().contains("presented a certificate")
            && ended.message().contains("revoked"),
        "{ended:?}"
    );
    eprintln!(
        "the query stream ended {received} records in, after the revocation: {}",
        ended.message()
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

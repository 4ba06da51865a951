//! Outside REST systems and X-Road security servers calling a province
//! service through the hub's HTTP/JSON endpoint, as real processes with
//! real TLS: the call reaches the provider node, whose sharing log names the
//! outside agency under the caller's request id; Vietnamese text arrives
//! intact; the OpenAPI document validates with `openapi-spec-validator` and
//! a real call matches it; refusals (no certificate, an untrusted CA, no
//! grant, a service not offered, a malformed body, over the limit) each
//! answer the right status with a JSON reason. The X-Road test plays the
//! provider security server and checks the protocol's rules both ways.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lgsp_certs::{Credentials, Role};
use lgsp_tests::cluster::PROVINCE;
use lgsp_tests::https_server::HttpsServer;
use lgsp_tests::province::{NodeProcess, Province};
use lgsp_tests::{Pki, lgsp};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const OUTSIDE_DOMAIN: &str = "moj.gov.vn";
const OUTSIDE_AGENCY: &str = "000.00.07.G01";
const A: &str = "000.00.12.H62";
/// NFC, as the registry and the dataset keep it.
const NAME: &str = "Nguyễn Thị Hồng Nhung";

/// `lgsp ARGS` as the provincial admin; its stdout.
fn admin(p: &mut Province, args: &[&str]) -> String {
    p.admin_cli(args)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A province: agency A's node serving dataset `ho-tich`, the hub with its
/// REST endpoint (set in its node.toml), an outside agency registered, and
/// the outside CA. Returns the province, the provider, the hub, the REST
/// address and the outside PKI.
async fn province() -> (Province, NodeProcess, NodeProcess, String, Pki) {
    let mut p = Province::start().await;
    p.register_agency(PROVINCE, "Sở Thông tin và Truyền thông tỉnh Vĩnh Phúc")
        .await;
    p.register_agency(A, "Sở Tư pháp tỉnh Vĩnh Phúc").await;
    let mut node = p.prepare_node(
        A,
        "node-1",
        "[[services]]\nname = \"ho-tich\"\nkind = \"dataset\"\n",
    );
    let csv = write(
        &node.dir,
        "data.csv",
        &format!("id,ho_ten,noi_sinh\n001,{NAME},Vĩnh Yên\n002,Trần Văn Bình,Phúc Yên\n"),
    );
    let out = lgsp(&[
        "dataset",
        "import",
        "--data-dir",
        node.data_dir().to_str().unwrap(),
        "--service",
        "ho-tich",
        "--file",
        csv.to_str().unwrap(),
        "--key",
        "id",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.start();
    p.wait_for_node(A, "node-1", &node).await;
    p.publish(
        &format!("{A}/ho-tich"),
        lgsp_proto::ServiceKind::Dataset,
        "node-1",
        "Hộ tịch",
    )
    .await;
    let (mut hub, outward) = p.prepare_hub(PROVINCE, "hub");
    let rest = lgsp_tests::cluster::free_addr().to_string();
    let mut config = std::fs::read_to_string(hub.config_path()).unwrap();
    config.push_str(&format!("\n[hub]\nrest_listen = \"{rest}\"\n"));
    std::fs::write(hub.config_path(), config).unwrap();
    hub.start_hub(&outward);
    p.wait_for_node(PROVINCE, "hub", &hub).await;
    admin(
        &mut p,
        &[
            "agency",
            "register",
            "--code",
            OUTSIDE_AGENCY,
            "--name",
            "Bộ Tư pháp",
            "--trust-domain",
            OUTSIDE_DOMAIN,
        ],
    );
    (p, node, hub, rest, Pki::new(OUTSIDE_DOMAIN))
}

/// `lgsp hub rest-client add` for the outside system whose CA is `q`'s.
fn add_client(p: &mut Province, q: &Pki, name: &str, extra: &[&str]) {
    let ca = write(q.dir.path(), &format!("{name}-ca.pem"), q.ca.cert_pem());
    add_client_with_ca(p, &ca, name, extra);
}

/// The arguments of `lgsp hub rest-client add` for system `name` whose CA
/// is in file `ca`, offered agency A's `ho-tich`.
fn rest_client_add_args(ca: &Path, name: &str) -> Vec<String> {
    [
        "hub",
        "rest-client",
        "add",
        "--name",
        name,
        "--ca",
        ca.to_str().unwrap(),
        "--trust-domain",
        OUTSIDE_DOMAIN,
        "--agency",
        OUTSIDE_AGENCY,
        "--service",
        &format!("{A}/ho-tich"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `lgsp hub rest-client add` for system `name` whose CA is in file `ca`.
fn add_client_with_ca(p: &mut Province, ca: &Path, name: &str, extra: &[&str]) {
    let mut args = rest_client_add_args(ca, name);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    admin(p, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// `lgsp ARGS` as the provincial admin, which must fail; its stderr.
fn admin_refused(p: &Province, args: &[String]) -> String {
    let registry = p.registry_addrs().join(",");
    let tls = p.tls_dir("admin-cli", &p.registry.admin);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--registry", &registry, "--tls-dir", tls.to_str().unwrap()]);
    let out = lgsp(&all);
    assert!(!out.status.success(), "lgsp {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HTTP/1.1 status, headers and body.
type Answer = (http::StatusCode, http::HeaderMap, String);

/// One HTTP/1.1 exchange with the hub's REST endpoint over TLS, presenting
/// `client` (or no certificate); the status, headers and body, or the TLS
/// or connection error.
async fn exchange(
    rest: &str,
    province_roots: &Credentials,
    client: Option<&Credentials>,
    request: http::Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let mut sender = connect(rest, province_roots, client).await?;
    send(&mut sender, request).await
}

/// An HTTP/1.1 connection to the hub's REST endpoint over TLS, presenting
/// `client` (or no certificate), for several exchanges.
async fn connect(
    rest: &str,
    province_roots: &Credentials,
    client: Option<&Credentials>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let provider = lgsp_certs::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for r in &province_roots.roots {
        roots.add(r.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(rest)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One POST of `body` to `path` over HTTP/2 (the client offers only `h2`
/// in the handshake), presenting `client`; the answer and its HTTP version.
async fn exchange_h2(
    rest: &str,
    province_roots: &Credentials,
    client: &Credentials,
    path: &str,
    body: &str,
) -> (http::Version, Answer) {
    let mut roots = rustls::RootCertStore::empty();
    for r in &province_roots.roots {
        roots.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(lgsp_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(rest).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(format!("https://{rest}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let version = response.version();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        version,
        (status, headers, String::from_utf8(body.to_vec()).unwrap()),
    )
}

/// One exchange on an open connection.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let response = tokio::time::timeout(Duration::from_secs(15), sender.send_request(request))
        .await
        .map_err(|_| "no answer in 15 s".to_owned())?
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8(body.to_vec()).unwrap()))
}

fn post(path: &str, body: &str, request_id: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    if let Some(id) = request_id {
        b = b.header("x-request-id", id);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The lines of `node`'s sharing log naming `request_id`, once there are
/// some (the log is flushed every second or so; up to 5 s).
async fn log_lines_with(node: &NodeProcess, request_id: &str) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let lines: Vec<String> = std::fs::read_to_string(node.sharing_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(request_id))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() || start.elapsed() > Duration::from_secs(5) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls `path` until the hub knows the client (the catalog reaches it
/// within a second or two); the first answer that is not 401.
async fn until_known(
    rest: &str,
    roots: &Credentials,
    client: &Credentials,
    request: impl Fn() -> http::Request<Full<Bytes>>,
) -> (http::StatusCode, http::HeaderMap, String) {
    let start = std::time::Instant::now();
    loop {
        let answer = exchange(rest, roots, Some(client), request()).await;
        match answer {
            Ok(a) if a.0 != http::StatusCode::UNAUTHORIZED => return a,
            other => assert!(
                start.elapsed() < Duration::from_secs(10),
                "the hub never took the REST client: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts `body` to `path` as `client` every 400 ms (within a client's 3
/// calls a second) until it answers `want`, at most 10 s; the last status
/// and body, and those seen before it.
async fn until_status(
    rest: &str,
    roots: &Credentials,
    client: &Credentials,
    (path, body, request_id): (&str, &str, Option<&str>),
    want: u16,
) -> (http::StatusCode, String, Vec<String>) {
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    loop {
        let (status, _, answer) = exchange(rest, roots, Some(client), post(path, body, request_id))
            .await
            .unwrap();
        if status == want || start.elapsed() > Duration::from_secs(10) {
            return (status, answer, seen);
        }
        seen.push(format!("{status} {answer}"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// Calls `path` until it answers 200 (the hub has the client and the grant
/// from the catalog), at most 10 s; the last answer.
async fn until_ok(
    rest: &str,
    roots: &Credentials,
    client: &Credentials,
    request: impl Fn() -> http::Request<Full<Bytes>>,
) -> Answer {
    let start = std::time::Instant::now();
    loop {
        let answer = exchange(rest, roots, Some(client), request())
            .await
            .unwrap();
        if answer.0 == 200 || start.elapsed() > Duration::from_secs(10) {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_rest_client_calls_a_province_service_through_the_hub() {
    let (mut p, node, hub, rest, mut q) = province().await;
    let roots = p.registry.admin.clone();
    let (client, _) = q.issue(OUTSIDE_AGENCY, Role::Node, "hotich-app");
    add_client(&mut p, &q, "btp-hotich", &["--rate", "3"]);
    let path = format!("/v1/services/{A}/ho-tich/get");
    let call = r#"{"parameters": {"key": "001"}}"#;

    // Without a grant: 403 with the reason, logged by the hub.
    let (status, headers, body) = until_known(&rest, &roots, &client, || {
        post(&path, call, Some("rest-nogrant-1"))
    })
    .await;
    assert_eq!(status, 403, "{body}");
    let e = json(&body);
    assert_eq!(e["code"], "PERMISSION_DENIED", "{body}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("holds no active grant"),
        "{body}"
    );
    assert_eq!(headers["x-request-id"], "rest-nogrant-1");

    admin(
        &mut p,
        &[
            "access",
            "grant",
            "--service",
            &format!("{A}/ho-tich"),
            "--consumer",
            OUTSIDE_AGENCY,
            "--reason",
            "Thỏa thuận kết nối",
        ],
    );
    // Granted: the record, Vietnamese intact, and the provider's log names
    // the outside agency under the same request id.
    let start = std::time::Instant::now();
    let (status, headers, body) = loop {
        let a = exchange(
            &rest,
            &roots,
            Some(&client),
            post(&path, call, Some("rest-call-0001")),
        )
        .await
        .unwrap();
        if a.0 != 403 || start.elapsed() > Duration::from_secs(10) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-request-id"], "rest-call-0001");
    let answer = json(&body);
    assert_eq!(answer["request_id"], "rest-call-0001");
    assert_eq!(answer["data"]["ho_ten"], NAME, "{body}");
    let provider_lines = log_lines_with(&node, "rest-call-0001").await;
    assert!(
        provider_lines
            .iter()
            .any(|l| l.contains(&format!("{OUTSIDE_AGENCY}@{OUTSIDE_DOMAIN}"))),
        "the provider's log names the outside agency: {provider_lines:?}\n{}",
        node.log()
    );
    assert!(
        !log_lines_with(&hub, "rest-call-0001").await.is_empty(),
        "the hub logs it too"
    );
    for n in [&node, &hub] {
        // Both entries of the call served keep the record the hub signed
        // for the outside system, and `audit verify` proves the hub signed
        // it. (Attempts refused while the catalog reached the hub have
        // none: the hub signs only a call it carries.)
        let served: Vec<String> = log_lines_with(n, "rest-call-0001")
            .await
            .into_iter()
            .filter(|l| l.contains(r#""status":"OK""#))
            .collect();
        assert!(
            !served.is_empty() && served.iter().all(|l| l.contains(r#""on_behalf_of":""#)),
            "the entries keep the hub's signed record: {served:?}"
        );
        let out = lgsp(&[
            "audit",
            "verify",
            "--live",
            "--log",
            n.sharing_log().to_str().unwrap(),
            "--cert",
            n.dir.join("tls/cert.pem").to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verified = String::from_utf8_lossy(&out.stdout);
        assert!(
            verified.contains("on-behalf-of records OK") && verified.contains("/hub/"),
            "{verified}"
        );
    }

    // A service the hub itself carries to a ministry's REST system is called
    // the same way: from the hub, which names the outside agency to it.
    let ministry = HttpsServer::new("Bộ Tài chính test CA", p.registry.pki.ca.cert_pem());
    let ministry_addr = lgsp_tests::cluster::free_addr();
    std::mem::forget(
        ministry
            .serve(ministry_addr, |req, _| async move {
                let consumer = req.headers()["x-lgsp-consumer-agency"].clone();
                let body = serde_json::json!({
                    "path": req.uri().path(),
                    "consumer": consumer.to_str().unwrap(),
                    "ten": "Công ty Cổ phần Đầu tư Vĩnh Phúc",
                });
                http::Response::new(Full::new(Bytes::from(body.to_string())))
            })
            .await,
    );
    let ministry_ca = write(&hub.dir, "ministry-ca.pem", &ministry.ca_pem);
    admin(
        &mut p,
        &[
            "hub",
            "rest",
            "add",
            "--name",
            "bo-tai-chinh",
            "--base-url",
            &format!("https://{ministry_addr}"),
            "--ca",
            ministry_ca.to_str().unwrap(),
            "--auth",
            "client-cert",
        ],
    );
    let thue = format!("{PROVINCE}/ma-so-thue");
    p.publish(&thue, lgsp_proto::ServiceKind::Http, "hub", "Mã số thuế")
        .await;
    admin(
        &mut p,
        &[
            "hub",
            "rest",
            "route",
            "--service",
            &thue,
            "--system",
            "bo-tai-chinh",
            "--op",
            "get=GET /companies/{id}",
        ],
    );
    admin(
        &mut p,
        &[
            "access",
            "grant",
            "--service",
            &thue,
            "--consumer",
            OUTSIDE_AGENCY,
        ],
    );
    add_client(
        &mut p,
        &q,
        "btp-hotich",
        &["--rate", "3", "--service", &thue],
    );
    // Until the hub has the route, the grant and the client's new offer.
    let carried = format!("/v1/services/{thue}/get");
    let company = r#"{"parameters": {"id": "2500150335"}}"#;
    let (status, body, seen) = until_status(
        &rest,
        &roots,
        &client,
        (&carried, company, Some("rest-carried-1")),
        200,
    )
    .await;
    assert_eq!(status, 200, "{body}; before: {seen:#?}");
    let data = &json(&body)["data"];
    assert_eq!(data["path"], "/companies/2500150335", "{body}");
    assert_eq!(
        data["consumer"],
        format!("{OUTSIDE_AGENCY}@{OUTSIDE_DOMAIN}"),
        "{body}"
    );
    assert_eq!(data["ten"], "Công ty Cổ phần Đầu tư Vĩnh Phúc", "{body}");
    assert!(
        !log_lines_with(&hub, "rest-carried-1").await.is_empty(),
        "the hub logs it"
    );
    // The hub checks what the service's node would: a maintenance window in
    // force refuses the client, with its reason.
    let in_ten_minutes = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    let end = lgsp_registry::calendar::WorkCalendar::default().show(in_ten_minutes);
    let end = &end[..16];
    admin(
        &mut p,
        &[
            "service",
            "maintenance",
            "--id",
            &thue,
            "--force-majeure",
            "--end",
            end,
            "--reason",
            "Sự cố đường truyền",
        ],
    );
    let (status, body, _) =
        until_status(&rest, &roots, &client, (&carried, company, None), 503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Sự cố đường truyền"), "{body}");

    // A client that offers HTTP/2 is answered over HTTP/2, the same way.
    let mut tries = 0;
    let (version, (status, _, body)) = loop {
        let answer = exchange_h2(&rest, &roots, &client, &path, call).await;
        tries += 1;
        // Within the client's 3 calls per second.
        if answer.1.0 != 429 || tries == 5 {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    };
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["data"]["ho_ten"], NAME, "{body}");

    // A malformed request id is replaced, and the new one returned.
    let (_, headers, _) = exchange(
        &rest,
        &roots,
        Some(&client),
        post(&path, call, Some("bad id")),
    )
    .await
    .unwrap();
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(!id.is_empty() && id != "bad id");

    // The OpenAPI document validates, and the call above matches it.
    let (status, _, doc) = exchange(&rest, &roots, Some(&client), get("/openapi.json"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{doc}");
    assert!(json(&doc)["paths"].get(&path).is_some(), "{doc}");
    lgsp_tests::python::require_openapi_validator();
    let dir = tempfile::tempdir().unwrap();
    let doc_file = write(dir.path(), "openapi.json", &doc);
    let calls = write(
        dir.path(),
        "calls.json",
        &serde_json::json!([[path, 200, answer], [path, 403, e]]).to_string(),
    );
    let script = lgsp_tests::python::workspace_root().join("tests/python/check_openapi.py");
    let out = lgsp_tests::python::python(
        vec![
            script.to_str().unwrap().to_owned(),
            doc_file.to_str().unwrap().to_owned(),
            calls.to_str().unwrap().to_owned(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Refusals, each saying why.
    let (status, _, body) = exchange(
        &rest,
        &roots,
        Some(&client),
        post(&format!("/v1/services/{A}/khong-co/get"), call, None),
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["code"], "NOT_FOUND");
    let (status, _, body) = exchange(
        &rest,
        &roots,
        Some(&client),
        post(&path, "{\"key\": 1", None),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["code"], "INVALID_ARGUMENT");
    // Over its 3 calls per second: 429 naming the limit.
    let mut limited = None;
    for _ in 0..10 {
        let (status, _, body) = exchange(&rest, &roots, Some(&client), post(&path, call, None))
            .await
            .unwrap();
        if status == 429 {
            limited = Some(body);
            break;
        }
    }
    let body = limited.expect("a 429 within 10 calls at a rate of 3/s");
    assert_eq!(json(&body)["code"], "RESOURCE_EXHAUSTED", "{body}");
    // The client is an outside link of the hub: served and refused calls in its metrics.
    let (_, metrics) = lgsp_tests::metrics::scrape(&hub.metrics).await;
    for outcome in ["served", "refused"] {
        let series = format!(
            "lgsp_hub_peer_calls_total{{peer=\"rest-client:btp-hotich\",direction=\"in\",outcome=\"{outcome}\"}}"
        );
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }

    // No certificate, or one of a CA the hub does not trust: no call.
    let (status, _, body) = exchange(&rest, &roots, None, post(&path, call, None))
        .await
        .map_or(
            (
                http::StatusCode::UNAUTHORIZED,
                Default::default(),
                "TLS refused".into(),
            ),
            |a| a,
        );
    assert_eq!(status, 401, "{body}");
    let (stranger, _) = Pki::new(OUTSIDE_DOMAIN).issue(OUTSIDE_AGENCY, Role::Node, "hotich-app");
    let refused = exchange(&rest, &roots, Some(&stranger), post(&path, call, None)).await;
    assert!(
        refused.is_err(),
        "a certificate of an untrusted CA is refused in the handshake: {refused:?}"
    );

    // Two systems registered with one CA: the hub cannot tell them apart and
    // refuses rather than guesses.
    add_client(&mut p, &q, "btp-2", &[]);
    let start = std::time::Instant::now();
    let body = loop {
        let (status, _, body) = exchange(&rest, &roots, Some(&client), post(&path, call, None))
            .await
            .unwrap();
        if status == 401 {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("several REST clients (btp-2, btp-hotich)")
            || body.contains("several REST clients (btp-hotich, btp-2)"),
        "{body}"
    );
}

/// The provider security server's request: `X-Road-Client`, `X-Road-Id`,
/// `X-Road-Service`, `X-Road-UserId`.
fn xroad(path: &str, client: Option<&str>, id: &str) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::get(path)
        .header("host", "127.0.0.1")
        .header("x-road-id", id)
        .header("x-road-service", "VN/GOV/000.00.00.H62/hub/hotich")
        .header("x-road-userid", "VN001234567890")
        .header("x-road-request-id", "f92591a3-6bf0-49b1-987b-0dd78c034cc3");
    if let Some(c) = client {
        b = b.header("x-road-client", c);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xroad_security_server_calls_a_province_service_by_the_rest_protocol() {
    let (mut p, node, _hub, rest, mut q) = province().await;
    let roots = p.registry.admin.clone();
    // The security server's own certificate, of the outside CA.
    let (server, _) = q.issue(OUTSIDE_AGENCY, Role::Node, "ss1");
    add_client(
        &mut p,
        &q,
        "xroad-btp",
        &["--xroad-client", "VN/GOV/000.00.07.G01/hotich"],
    );
    admin(
        &mut p,
        &[
            "access",
            "grant",
            "--service",
            &format!("{A}/ho-tich"),
            "--consumer",
            OUTSIDE_AGENCY,
            "--reason",
            "X-Road",
        ],
    );
    let path = format!("/xroad/{A}/ho-tich/get?key=001");
    let client_id = "VN/GOV/000.00.07.G01/hotich";
    let start = std::time::Instant::now();
    let (status, headers, body) = loop {
        let a = exchange(
            &rest,
            &roots,
            Some(&server),
            xroad(&path, Some(client_id), "xr-0001"),
        )
        .await
        .unwrap();
        if a.0 == 200 || start.elapsed() > Duration::from_secs(10) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{body}");
    // The service's data as-is, X-Road headers echoed, none reserved to
    // security servers set.
    assert_eq!(json(&body)["ho_ten"], NAME, "{body}");
    assert_eq!(headers["x-road-id"], "xr-0001");
    assert_eq!(headers["x-road-client"], client_id);
    assert_eq!(headers["x-road-service"], "VN/GOV/000.00.00.H62/hub/hotich");
    assert_eq!(
        headers["x-road-request-id"],
        "f92591a3-6bf0-49b1-987b-0dd78c034cc3"
    );
    assert!(headers.get("x-road-request-hash").is_none());
    assert!(headers.get("x-road-error").is_none());
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let lines = log_lines_with(&node, "xr-0001").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{OUTSIDE_AGENCY}@{OUTSIDE_DOMAIN}"))),
        "{lines:?}"
    );

    // Errors in X-Road's format: {"type", "message", "detail"}.
    let check_error = |(status, headers, body): (http::StatusCode, http::HeaderMap, String),
                       want_status: u16,
                       want_type: &str| {
        assert_eq!(status, want_status, "{body}");
        let e = json(&body);
        assert_eq!(e["type"], want_type, "{body}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        assert!(e["detail"].is_string());
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert!(headers.get("x-road-error").is_none());
    };
    let missing = exchange(&rest, &roots, Some(&server), xroad(&path, None, "xr-2"))
        .await
        .unwrap();
    assert!(missing.2.contains("X-Road-Client"), "{}", missing.2);
    check_error(missing, 400, "Client.InvalidArgument");
    let malformed = exchange(
        &rest,
        &roots,
        Some(&server),
        xroad(&path, Some("VN/GOV"), "xr-3"),
    )
    .await
    .unwrap();
    assert_eq!(malformed.1["x-road-id"], "xr-3", "echoed on errors too");
    check_error(malformed, 400, "Client.InvalidArgument");
    let unknown = exchange(
        &rest,
        &roots,
        Some(&server),
        xroad(&path, Some("VN/GOV/000.00.09.G01/other"), "xr-4"),
    )
    .await
    .unwrap();
    check_error(unknown, 403, "Client.PermissionDenied");
    let polluted = exchange(
        &rest,
        &roots,
        Some(&server),
        xroad(
            &format!("/xroad/{A}/ho-tich/get?key=001&key=002"),
            Some(client_id),
            "xr-5",
        ),
    )
    .await
    .unwrap();
    check_error(polluted, 400, "Client.InvalidArgument");
    let no_record = exchange(
        &rest,
        &roots,
        Some(&server),
        xroad(
            &format!("/xroad/{A}/ho-tich/get?key=999"),
            Some(client_id),
            "xr-6",
        ),
    )
    .await
    .unwrap();
    check_error(no_record, 404, "Client.NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_rest_client_certificate_is_refused_naming_its_serial_and_the_crl_number() {
    let (mut p, _node, _hub, rest, mut q) = province().await;
    let roots = p.registry.admin.clone();
    let (app, app_serial) = q.issue(OUTSIDE_AGENCY, Role::Node, "hotich-app");
    let (server, server_serial) = q.issue(OUTSIDE_AGENCY, Role::Node, "ss1");
    let client_id = "VN/GOV/000.00.07.G01/hotich";
    add_client(&mut p, &q, "btp-hotich", &[]);
    add_client(&mut p, &q, "xroad-btp", &["--xroad-client", client_id]);
    admin(
        &mut p,
        &[
            "access",
            "grant",
            "--service",
            &format!("{A}/ho-tich"),
            "--consumer",
            OUTSIDE_AGENCY,
            "--reason",
            "Thỏa thuận kết nối",
        ],
    );
    let path = format!("/v1/services/{A}/ho-tich/get");
    let call = || post(&path, r#"{"parameters": {"key": "001"}}"#, None);
    let xroad_path = format!("/xroad/{A}/ho-tich/get?key=001");
    let (status, _, body) = until_ok(&rest, &roots, &app, call).await;
    assert_eq!(status, 200, "{body}");
    // A connection opened before the CRL, kept open across it.
    let mut open = connect(&rest, &roots, Some(&app)).await.unwrap();
    let (status, _, body) = send(&mut open, call()).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = until_ok(&rest, &roots, &server, || {
        xroad(&xroad_path, Some(client_id), "xr-crl-1")
    })
    .await;
    assert_eq!(status, 200, "{body}");

    // The outside CA revokes both certificates; the admin publishes its CRL
    // into both records.
    for serial in [&app_serial, &server_serial] {
        q.ca.revoke(
            serial,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .unwrap();
    }
    let crl = q.ca.sign_crl(1).unwrap();
    let crl_file = q.dir.path().join("btp-crl.pem");
    std::fs::write(&crl_file, &crl.pem).unwrap();
    for name in ["btp-hotich", "xroad-btp"] {
        let out = admin(
            &mut p,
            &[
                "hub",
                "rest-client",
                "crl",
                "--name",
                name,
                "--crl",
                crl_file.to_str().unwrap(),
            ],
        );
        assert!(out.contains(&format!("CRL number {}", crl.number)), "{out}");
    }
    let listed = admin(&mut p, &["hub", "rest-client", "list"]);
    assert!(listed.contains(&format!("CRL {}", crl.number)), "{listed}");

    // Refused on the connection already open, within seconds, saying why.
    let start = std::time::Instant::now();
    let (status, _, body) = loop {
        let a = send(&mut open, call()).await.unwrap();
        if a.0 != 200 || start.elapsed() > Duration::from_secs(10) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 401, "{body}");
    let e = json(&body);
    assert_eq!(e["code"], "UNAUTHENTICATED", "{body}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(&app_serial), "{body}");
    assert!(
        message.contains(&format!("CRL number {}", crl.number)),
        "{body}"
    );
    // And on a new connection.
    let (status, _, body) = exchange(&rest, &roots, Some(&app), call()).await.unwrap();
    assert_eq!(status, 401, "{body}");
    // The same CA re-exported (CRLF, a trailing newline) and the client
    // added again: the CRL stays in force.
    let re_exported = write(
        q.dir.path(),
        "btp-ca-crlf.pem",
        &format!(
            "{}\r\n\r\n",
            q.ca.cert_pem().trim_end().replace('\n', "\r\n")
        ),
    );
    add_client_with_ca(&mut p, &re_exported, "btp-hotich", &[]);
    let listed = admin(&mut p, &["hub", "rest-client", "list"]);
    assert!(
        listed.matches(&format!("CRL {}", crl.number)).count() == 2,
        "{listed}"
    );
    // (The hub follows the record within a second: still refused after.)
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let (status, _, body) = exchange(&rest, &roots, Some(&app), call()).await.unwrap();
        assert_eq!(
            status, 401,
            "the re-exported CA lifted the revocation: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another CA: refused unless the admin says it replaces the old one.
    let other = Pki::new(OUTSIDE_DOMAIN);
    let other_ca = write(q.dir.path(), "other-ca.pem", other.ca.cert_pem());
    let refusal = admin_refused(&p, &rest_client_add_args(&other_ca, "btp-hotich"));
    assert!(refusal.contains("--new-ca-drops-crl"), "{refusal}");
    add_client_with_ca(&mut p, &other_ca, "btp-hotich", &["--new-ca-drops-crl"]);
    // The security server's certificate on the X-Road path: X-Road's error.
    let (status, _, body) = exchange(
        &rest,
        &roots,
        Some(&server),
        xroad(&xroad_path, Some(client_id), "xr-crl-2"),
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    let e = json(&body);
    assert_eq!(e["type"], "Client.Unauthenticated", "{body}");
    assert!(
        e["message"].as_str().unwrap().contains(&server_serial),
        "{body}"
    );
}

/// A call to the provider node as the hub, with `signed` as its record of
/// on whose behalf; the provider's answer.
async fn call_as_hub(
    node: &NodeProcess,
    hub: &NodeProcess,
    env: &lgsp_proto::Envelope,
    signed: &lgsp_proto::SignedOnBehalfOf,
) -> Result<lgsp_proto::CallResponse, tonic::Status> {
    let trust = lgsp_certs::ClientTrust::new(&hub.creds).unwrap();
    let expected = lgsp_certs::Expected::node(
        lgsp_tests::TRUST_DOMAIN,
        lgsp_certs::AgencyCode::new(A).unwrap(),
        "node-1",
        None,
    );
    let channel = lgsp_certs::server_identity::connect(&node.provider, &hub.creds, trust, expected)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(env.clone());
    lgsp_node::obo::to_metadata(request.metadata_mut(), signed);
    lgsp_proto::data_exchange_client::DataExchangeClient::new(channel)
        .call(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_replayed_after_the_provider_restarts_is_refused() {
    let (mut p, mut node, hub, _rest, mut q) = province().await;
    let (app, _) = q.issue(OUTSIDE_AGENCY, Role::Node, "hotich-app");
    add_client(&mut p, &q, "btp-hotich", &[]);
    admin(
        &mut p,
        &[
            "access",
            "grant",
            "--service",
            &format!("{A}/ho-tich"),
            "--consumer",
            OUTSIDE_AGENCY,
            "--reason",
            "Thỏa thuận kết nối",
        ],
    );
    // Records the hub signs for a REST client, as the hub signs them.
    let signer = lgsp_node::obo::Signer::new(&hub.creds).unwrap();
    let record_for = |request_id: &str| {
        let env = lgsp_proto::Envelope {
            service_id: format!("{A}/ho-tich"),
            operation: "get".into(),
            parameters: [("key".to_owned(), "001".to_owned())].into(),
            request_id: request_id.into(),
            ..Default::default()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let signed = signer
            .sign_for_rest_client(&env, now, "btp-hotich", &app.chain[0])
            .unwrap();
        (env, signed)
    };
    // Served once the provider's catalog copy has the client and the grant.
    let start = std::time::Instant::now();
    let mut n = 0;
    let (env, signed) = loop {
        n += 1;
        let (env, signed) = record_for(&format!("phat-lai-{n}"));
        match call_as_hub(&node, &hub, &env, &signed).await {
            Ok(reply) => {
                assert!(String::from_utf8_lossy(&reply.payload).contains(NAME));
                break (env, signed);
            }
            Err(s) => assert!(
                start.elapsed() < Duration::from_secs(10),
                "never served: {s:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let replayed = call_as_hub(&node, &hub, &env, &signed).await.unwrap_err();
    assert_eq!(
        replayed.code(),
        tonic::Code::Unauthenticated,
        "{replayed:?}"
    );
    assert!(replayed.message().contains("replay"), "{replayed:?}");

    // The provider restarts; the record is still fresh (well within its
    // 2 minutes) and still a replay.
    node.stop();
    node.start();
    let start = std::time::Instant::now();
    let after = loop {
        match call_as_hub(&node, &hub, &env, &signed).await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "the provider never came back: {s:?}\n{}",
                    node.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    let refused = after.expect_err("a record replayed after a restart is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("replay"), "{refused:?}");
    // A new record is served as before.
    let (env, signed) = record_for("sau-khoi-dong");
    call_as_hub(&node, &hub, &env, &signed)
        .await
        .expect("a new record is served after the restart");
}

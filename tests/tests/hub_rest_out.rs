//! Ministry REST systems and an X-Road security server behind the
//! province's hub, as real processes with real TLS: an application of
//! agency B calls province services through its own node; the hub carries
//! them over HTTPS to a server this test runs, which checks every request
//! (method, path, query, body, X-Request-Id, the API key, the client
//! certificate, the OAuth2 token it issued, and each rule of the X-Road
//! Message Protocol for REST) and refuses what breaks them.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, GrantStatus, ServiceKind};
use lgsp_tests::cluster::{PROVINCE, free_addr};
use lgsp_tests::https_server::HttpsServer;
use lgsp_tests::lgsp;
use lgsp_tests::province::{B, NodeProcess, Province};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

const API_KEY: &str = "k-7c1f-9a2b";
const CLIENT_ID: &str = "lgsp-vinhphuc";
const CLIENT_SECRET: &str = "s3cret:with/odd&chars";
const TOKEN: &str = "tok-8f14e45f";

/// What the test server saw.
#[derive(Debug, Default)]
struct Seen {
    request_ids: Vec<String>,
    tokens_issued: u32,
}

/// The ministry's server: its CA (PEM), what it saw.
struct Ministry {
    ca_pem: String,
    seen: Arc<Mutex<Seen>>,
    server: HttpsServer,
}

fn refuse(status: u16, why: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "loi": why }).to_string(),
        )))
        .unwrap()
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

/// The hub's provider-side sharing-log entry of request `request_id`, as
/// written and parsed, once it is there (at most 5 s).
async fn provider_entry(hub: &NodeProcess, request_id: &str) -> (String, serde_json::Value) {
    let start = Instant::now();
    let quoted = format!("\"{request_id}\"");
    loop {
        let line = std::fs::read_to_string(hub.sharing_log())
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(&quoted) && l.contains("\"provider\""))
            .map(str::to_owned);
        match line {
            Some(l) => {
                let entry = serde_json::from_str(&l).unwrap();
                return (l, entry);
            }
            None if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => panic!("the hub logged no entry for {request_id}"),
        }
    }
}

fn xroad_error(status: u16, kind: &str, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json;charset=utf-8")
        .header("x-road-error", kind)
        .body(Full::new(Bytes::from(
            serde_json::json!({"type": kind, "message": message, "detail": "3c4d0f08-440f"})
                .to_string(),
        )))
        .unwrap()
}

fn header<'a>(req: &'a Request<hyper::body::Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn query(req: &Request<hyper::body::Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn is_xroad_id(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "'()+,-.=?".contains(c))
}

/// The ministry's answer to one request, `client_cert` whether the hub
/// presented a certificate.
async fn answer(
    req: Request<hyper::body::Incoming>,
    client_cert: bool,
    seen: Arc<Mutex<Seen>>,
) -> Response<Full<Bytes>> {
    let request_id = header(&req, "x-request-id").to_owned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let q = query(&req);
    let auth = header(&req, "authorization").to_owned();
    let api_key = header(&req, "x-api-key").to_owned();
    let content_type = header(&req, "content-type").to_owned();
    let xroad_client = header(&req, "x-road-client").to_owned();
    let xroad_id = header(&req, "x-road-id").to_owned();
    let xroad_user = header(&req, "x-road-userid").to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if path != "/token" {
        if request_id.is_empty() {
            return refuse(400, "no X-Request-Id");
        }
        seen.lock().unwrap().request_ids.push(request_id.clone());
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        // API key.
        ["apikey", "citizens", id] if method == "GET" => {
            if percent_decode(&api_key) != API_KEY {
                return refuse(401, "sai khóa API");
            }
            match *id {
                "404" => refuse(404, "Không tìm thấy công dân"),
                "500" => refuse(503, "Hệ thống đang bảo trì"),
                _ => json(serde_json::json!({
                    "so_dinh_danh": percent_decode(id),
                    "ho_ten": "Nguyễn Thị Hương",
                    "nam": q.get("nam"),
                    "loai": q.get("loai"),
                })),
            }
        }
        ["apikey", "citizens"] if method == "POST" => {
            if percent_decode(&api_key) != API_KEY {
                return refuse(401, "sai khóa API");
            }
            if !content_type.starts_with("application/json") {
                return refuse(415, "cần JSON");
            }
            let mut v: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => return refuse(400, "JSON hỏng"),
            };
            v["da_nhan"] = true.into();
            json(v)
        }
        // Client certificate.
        ["mtls", "citizens", id] if method == "GET" => {
            if !client_cert {
                return refuse(403, "cần chứng thư số của máy khách");
            }
            json(serde_json::json!({"so_dinh_danh": id, "noi_cu_tru": "Vĩnh Yên"}))
        }
        // OAuth2: the token endpoint, then a bearer token.
        ["token"] if method == "POST" => {
            let want = format!(
                "Basic {}",
                base64(format!("{CLIENT_ID}:{}", encode(CLIENT_SECRET)).as_bytes())
            );
            if auth != want || body.as_ref() != b"grant_type=client_credentials" {
                return refuse(401, "invalid_client");
            }
            seen.lock().unwrap().tokens_issued += 1;
            json(
                serde_json::json!({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}),
            )
        }
        ["oauth", "citizens", id] if method == "GET" => {
            if auth != format!("Bearer {TOKEN}") {
                return refuse(401, "invalid_token");
            }
            json(serde_json::json!({"so_dinh_danh": id, "benh_vien": "Bệnh viện Đa khoa tỉnh"}))
        }
        // X-Road security server (PR-REST 1.0.3).
        ["r1", rest @ ..] => {
            let client: Vec<&str> = xroad_client.split('/').collect();
            if !(3..=4).contains(&client.len()) || !client.iter().all(|p| is_xroad_id(p)) {
                return xroad_error(400, "Client.BadRequest", "X-Road-Client is malformed");
            }
            if xroad_id.is_empty() {
                return xroad_error(400, "Client.BadRequest", "X-Road-Id is missing");
            }
            let user = xroad_user.as_bytes();
            if user.len() < 3 || !user[..2].iter().all(u8::is_ascii_uppercase) {
                return xroad_error(
                    400,
                    "Client.BadRequest",
                    "X-Road-UserId needs a country prefix",
                );
            }
            // {instance}/{class}/{member}/{subsystem}/{service}/{path...}
            if rest.len() < 6 || !rest[..5].iter().all(|p| is_xroad_id(p)) {
                return xroad_error(400, "Client.BadRequest", "the service id is malformed");
            }
            if rest[..5] != ["VN", "GOV", "000.00.01.G12", "thue", "tra-cuu"] {
                return xroad_error(500, "Server.ServerProxy.UnknownService", "no such service");
            }
            match rest[5..] {
                ["citizens", "bi-cam"] => {
                    let mut refused = xroad_error(
                        500,
                        "Server.ServerProxy.AccessDenied",
                        "Request is not allowed: VN/GOV/000.00.00.H62/lgsp",
                    );
                    // An error answer carries the exchange's ids too.
                    let headers = refused.headers_mut();
                    headers.insert("x-road-id", xroad_id.parse().unwrap());
                    headers.insert("x-road-request-id", "5d1e07c4-bi-cam".parse().unwrap());
                    refused
                }
                ["citizens", id] => Response::builder()
                    .header("content-type", "application/json; charset=utf-8")
                    .header("x-road-id", &xroad_id)
                    .header("x-road-request-id", "f92591a3-6bf0-49b1")
                    .body(Full::new(Bytes::from(
                        serde_json::json!({"ma_so_thue": id, "ten": "Công ty TNHH Hòa Bình"})
                            .to_string(),
                    )))
                    .unwrap(),
                _ => xroad_error(400, "Client.BadRequest", "unknown path"),
            }
        }
        _ => refuse(404, "no such path"),
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

impl Ministry {
    /// The ministry's server (see [`HttpsServer`]): client certificates of
    /// the province's CA are asked for but optional (each path decides).
    fn new(province_ca_pem: &str) -> Self {
        let server = HttpsServer::new("Bộ Tài chính test CA", province_ca_pem);
        Self {
            ca_pem: server.ca_pem.clone(),
            seen: Arc::default(),
            server,
        }
    }

    /// Serves on `addr` until the returned sender is dropped or fired.
    async fn serve(&self, addr: SocketAddr) -> tokio::sync::oneshot::Sender<()> {
        let seen = self.seen.clone();
        self.server
            .serve(addr, move |req, client_cert| {
                answer(req, client_cert, seen.clone())
            })
            .await
    }
}

/// `lgsp ARGS` as the provincial admin; its stdout.
fn admin(p: &mut Province, args: &[&str]) -> String {
    p.admin_cli(args)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn call(
    b: &NodeProcess,
    service: &str,
    op: &str,
    params: &[(&str, &str)],
    payload: &str,
) -> Result<serde_json::Value, tonic::Status> {
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let env = Envelope {
        service_id: format!("{PROVINCE}/{service}"),
        operation: op.into(),
        parameters: params
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    };
    let reply = app.call(env).await?.into_inner();
    Ok(serde_json::from_slice(&reply.payload).expect("the answer is JSON"))
}

/// A province with its hub (REST secrets in `<hub>/rest-secrets`), agency
/// B's node, the ministry's server, four REST systems on it (API key,
/// client certificate, OAuth2, X-Road) and one on an address where nothing
/// listens yet, each carrying a service granted to B.
async fn setup() -> (Province, NodeProcess, NodeProcess, Ministry, SocketAddr) {
    let mut p = Province::start().await;
    p.register_agency(PROVINCE, "Sở Khoa học và Công nghệ tỉnh Phú Thọ")
        .await;
    p.register_agency(B, "UBND huyện Tam Dương").await;
    let (mut hub, outward) = p.prepare_hub(PROVINCE, "hub");
    let secrets = hub.dir.join("rest-secrets");
    hub.start_hub_with(&outward, &["--rest-secrets", secrets.to_str().unwrap()]);
    let mut b = p.prepare_node(B, "node-b", "");
    b.start();
    p.wait_for_node(PROVINCE, "hub", &hub).await;
    p.wait_for_node(B, "node-b", &b).await;

    let ministry = Ministry::new(p.registry.pki.ca.cert_pem());
    let addr = free_addr();
    std::mem::forget(ministry.serve(addr).await);
    let down = free_addr();
    let dir = hub.dir.clone();
    let ca = write(&dir, "ministry-ca.pem", &ministry.ca_pem);
    let key_file = write(&dir, "api-key.txt", &format!("{API_KEY}\n"));
    let secret_file = write(&dir, "client-secret.txt", CLIENT_SECRET);
    let base = format!("https://127.0.0.1:{}", addr.port());
    let secrets = secrets.to_str().unwrap().to_owned();
    // A system that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let systems: [(&str, String, Vec<String>); 6] = [
        (
            "bo-tai-chinh",
            format!("{base}/apikey"),
            vec![
                "--auth".into(),
                "api-key".into(),
                "--api-key-header".into(),
                "X-API-Key".into(),
                "--api-key-file".into(),
                key_file,
                "--secrets-dir".into(),
                secrets.clone(),
            ],
        ),
        (
            "bo-cong-an",
            format!("{base}/mtls"),
            vec!["--auth".into(), "client-cert".into()],
        ),
        (
            "bo-y-te",
            format!("{base}/oauth"),
            vec![
                "--auth".into(),
                "oauth2".into(),
                "--token-url".into(),
                format!("{base}/token"),
                "--client-id".into(),
                CLIENT_ID.into(),
                "--client-secret-file".into(),
                secret_file,
                "--secrets-dir".into(),
                secrets,
            ],
        ),
        (
            "xroad-ss",
            base.clone(),
            vec![
                "--auth".into(),
                "client-cert".into(),
                "--xroad-client".into(),
                "VN/GOV/000.00.00.H62/lgsp".into(),
            ],
        ),
        (
            "bo-cham",
            format!("https://127.0.0.1:{silent_port}"),
            vec![
                "--auth".into(),
                "client-cert".into(),
                "--timeout-ms".into(),
                "300".into(),
            ],
        ),
        (
            "bo-xay-dung",
            format!("https://127.0.0.1:{}/apikey", down.port()),
            vec![
                "--auth".into(),
                "client-cert".into(),
                "--timeout-ms".into(),
                "2000".into(),
            ],
        ),
    ];
    for (name, url, extra) in &systems {
        let mut args = vec![
            "hub",
            "rest",
            "add",
            "--name",
            name,
            "--base-url",
            url,
            "--ca",
            &ca,
        ];
        args.extend(extra.iter().map(String::as_str));
        admin(&mut p, &args);
    }
    for (service, system, ops, xroad) in [
        (
            "thue",
            "bo-tai-chinh",
            vec!["get=GET /citizens/{id}?nam,loai", "create=POST /citizens"],
            None,
        ),
        ("cu-tru", "bo-cong-an", vec!["get=GET /citizens/{id}"], None),
        ("y-te", "bo-y-te", vec!["get=GET /citizens/{id}"], None),
        (
            "ma-so-thue",
            "xroad-ss",
            vec!["get=GET /citizens/{id}"],
            Some("VN/GOV/000.00.01.G12/thue/tra-cuu"),
        ),
        (
            "xay-dung",
            "bo-xay-dung",
            vec!["get=GET /citizens/{id}"],
            None,
        ),
        ("cham", "bo-cham", vec!["get=GET /citizens/{id}"], None),
    ] {
        let id = format!("{PROVINCE}/{service}");
        p.publish(&id, ServiceKind::Http, "hub", service).await;
        p.grant(&id, B, GrantStatus::Active).await;
        let mut args = vec!["hub", "rest", "route", "--service", &id, "--system", system];
        for op in &ops {
            args.extend(["--op", op]);
        }
        if let Some(x) = xroad {
            args.extend(["--xroad-service", x]);
        }
        admin(&mut p, &args);
    }
    (p, hub, b, ministry, down)
}

/// Calls until the hub's catalog copy has the route (it follows the
/// registry's watch), then returns the first answer that is not "not served".
async fn first_call(b: &NodeProcess, service: &str, params: &[(&str, &str)]) -> serde_json::Value {
    let start = Instant::now();
    loop {
        match call(b, service, "get", params, "").await {
            Ok(v) => return v,
            Err(s) if start.elapsed() < Duration::from_secs(10) => {
                let _ = s;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{service}: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ministry_rest_systems_and_xroad_are_called_through_the_hub() {
    let (mut p, hub, b, ministry, down) = setup().await;

    // API key: path, query and Vietnamese text both ways.
    let v = first_call(
        &b,
        "thue",
        &[("id", "0123"), ("nam", "2025"), ("loai", "thu nhập")],
    )
    .await;
    assert_eq!(v["ho_ten"], "Nguyễn Thị Hương");
    assert_eq!(v["so_dinh_danh"], "0123");
    assert_eq!(v["nam"], "2025");
    assert_eq!(v["loai"], "thu nhập");
    let body = r#"{"ho_ten":"Trần Văn Đức","dia_chi":"Phường Hùng Vương, Phú Thọ"}"#;
    let v = call(&b, "thue", "create", &[], body).await.unwrap();
    assert_eq!(v["ho_ten"], "Trần Văn Đức");
    assert_eq!(v["dia_chi"], "Phường Hùng Vương, Phú Thọ");
    assert_eq!(v["da_nhan"], true);

    // Statuses: 404 → NOT_FOUND, 5xx → UNAVAILABLE naming the system.
    let s = call(&b, "thue", "get", &[("id", "404")], "")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().contains("Không tìm thấy công dân"), "{s:?}");
    let s = call(&b, "thue", "get", &[("id", "500")], "")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("bo-tai-chinh"), "{s:?}");
    let s = call(&b, "thue", "get", &[], "").await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // Client certificate: the hub's own.
    let v = first_call(&b, "cu-tru", &[("id", "0456")]).await;
    assert_eq!(v["noi_cu_tru"], "Vĩnh Yên");

    // OAuth2: one token from the server's endpoint, used for both calls.
    let v = first_call(&b, "y-te", &[("id", "0789")]).await;
    assert_eq!(v["benh_vien"], "Bệnh viện Đa khoa tỉnh");
    call(&b, "y-te", "get", &[("id", "0790")], "")
        .await
        .unwrap();
    assert_eq!(ministry.seen.lock().unwrap().tokens_issued, 1);

    // X-Road: a conforming call, and an X-Road error as a clear status.
    let v = first_call(&b, "ma-so-thue", &[("id", "2500123456")]).await;
    assert_eq!(v["ten"], "Công ty TNHH Hòa Bình");
    // The security server's ids reach the application (response metadata
    // and the answer's map) and the hub's sharing-log entry.
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let answer = app
        .call(Envelope {
            service_id: format!("{PROVINCE}/ma-so-thue"),
            operation: "get".into(),
            parameters: [("id".to_owned(), "2500123456".to_owned())].into(),
            request_id: "xr-ids-0001".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let headers = answer.metadata();
    assert_eq!(headers.get("x-road-id").unwrap(), "xr-ids-0001");
    assert_eq!(
        headers.get("x-road-request-id").unwrap(),
        "f92591a3-6bf0-49b1"
    );
    let reply = answer.into_inner();
    assert_eq!(reply.metadata["x-road-id"], "xr-ids-0001");
    assert_eq!(reply.metadata["x-road-request-id"], "f92591a3-6bf0-49b1");
    let (logged, entry) = provider_entry(&hub, "xr-ids-0001").await;
    assert_eq!(
        entry["external_ids"],
        serde_json::json!({"x-road-id": "xr-ids-0001", "x-road-request-id": "f92591a3-6bf0-49b1"}),
        "{logged}"
    );
    // An X-Road error: a clear status, with the security server's ids in
    // its message for the application and in the hub's log entry.
    let s = app
        .call(Envelope {
            service_id: format!("{PROVINCE}/ma-so-thue"),
            operation: "get".into(),
            parameters: [("id".to_owned(), "bi-cam".to_owned())].into(),
            request_id: "xr-ids-0002".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("Server.ServerProxy.AccessDenied") && s.message().contains("xroad-ss"),
        "{s:?}"
    );
    assert!(
        s.message()
            .contains("(X-Road-Id xr-ids-0002, X-Road-Request-Id 5d1e07c4-bi-cam)"),
        "{s:?}"
    );
    // And in the status's metadata, as a success's are, for a program to
    // read without parsing the message.
    assert_eq!(
        s.metadata().get("x-road-id").unwrap(),
        "xr-ids-0002",
        "{s:?}"
    );
    assert_eq!(
        s.metadata().get("x-road-request-id").unwrap(),
        "5d1e07c4-bi-cam",
        "{s:?}"
    );
    let (refused, entry) = provider_entry(&hub, "xr-ids-0002").await;
    assert_eq!(entry["status"], "PERMISSION_DENIED", "{refused}");
    assert_eq!(
        entry["external_ids"],
        serde_json::json!({"x-road-id": "xr-ids-0002", "x-road-request-id": "5d1e07c4-bi-cam"}),
        "{refused}"
    );

    // The catalog holds what is not secret; the key is in the hub's
    // directory only, readable by its owner alone.
    let list = admin(&mut p, &["hub", "rest", "list"]);
    assert!(
        list.contains("bo-tai-chinh") && list.contains(&format!("carries {PROVINCE}/thue")),
        "{list}"
    );
    assert!(!list.contains(API_KEY), "{list}");
    let key = hub.dir.join("rest-secrets/bo-tai-chinh.api-key");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), API_KEY);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    let registry = p.registry_addrs().join(",");
    let tls = p.tls_dir("admin-cli", &p.registry.admin.clone());
    let out = lgsp(&[
        "hub",
        "rest",
        "remove",
        "--name",
        "bo-tai-chinh",
        "--registry",
        &registry,
        "--tls-dir",
        tls.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("REST route"), "{err}");

    // No answer within the system's deadline: DEADLINE_EXCEEDED.
    let start = Instant::now();
    let s = loop {
        let s = call(&b, "cham", "get", &[("id", "1")], "")
            .await
            .unwrap_err();
        if s.code() == Code::DeadlineExceeded || start.elapsed() > Duration::from_secs(10) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(
        s.message().contains("bo-cham") && s.message().contains("300 ms"),
        "{s:?}"
    );

    // Every request the ministry saw carried a request id that the hub's
    // sharing log holds.
    // (The log is written out at its next seal, within a second.)
    let ids = ministry.seen.lock().unwrap().request_ids.clone();
    assert!(ids.len() >= 8, "{ids:?}");
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(hub.sharing_log()).unwrap_or_default();
        let missing: Vec<&String> = ids.iter().filter(|id| !log.contains(id.as_str())).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{missing:?} are not in the hub's sharing log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Down: UNAVAILABLE naming the system; after 3 failures the circuit
    // opens and calls fail at once; when the system comes back, the probe
    // after the cool-down closes it.
    for _ in 0..3 {
        let s = first_failure(&b, "xay-dung").await;
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(s.message().contains("bo-xay-dung"), "{s:?}");
    }
    let started = Instant::now();
    let s = call(&b, "xay-dung", "get", &[("id", "1")], "")
        .await
        .unwrap_err();
    assert!(s.message().contains("circuit is open"), "{s:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    let status = admin(&mut p, &["hub", "status", "--hub-metrics", &hub.metrics]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("rest:bo-xay-dung") && l.contains("open")),
        "{status}"
    );
    std::mem::forget(ministry.serve(down).await);
    let start = Instant::now();
    loop {
        // The server answers /apikey paths with a key only: 401 means reached.
        match call(&b, "xay-dung", "get", &[("id", "1")], "").await {
            Err(s) if s.code() == Code::PermissionDenied => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(10),
                "never recovered: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = admin(&mut p, &["hub", "status", "--hub-metrics", &hub.metrics]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("rest:bo-xay-dung") && l.contains("closed")),
        "{status}"
    );
    let (_, metrics) = lgsp_tests::metrics::scrape(&hub.metrics).await;
    assert!(
        metrics.contains("lgsp_hub_peer_breaker_state{peer=\"rest:bo-tai-chinh\"} 0"),
        "{metrics}"
    );
}

/// The first answer for `service` that is not "not served yet" (the hub's
/// catalog copy catching up): its error.
async fn first_failure(b: &NodeProcess, service: &str) -> tonic::Status {
    let start = Instant::now();
    loop {
        let s = call(b, service, "get", &[("id", "1")], "")
            .await
            .unwrap_err();
        if s.code() == Code::Unavailable || start.elapsed() > Duration::from_secs(10) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The demo's ministry REST system beside the province: a small HTTPS
//! server speaking only HTTP/JSON (a tax register of the Ministry of
//! Finance, with an API key), published behind the province's hub. The
//! province's hub carries `thue` (a service of the hub's agency, routed to
//! the system by a `RestRoute` record) to it, so that the commune's
//! application calls it through its own node, as any province service.

use super::{DISTRICT, PROVINCE};
use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{RestAuth, RestOperation, RestRoute, RestSystem, ServiceKind};
use lgsp_registry::{Catalog, GrantKey, Publication, ServiceId, Validity};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The REST system's name in the catalog.
pub(crate) const SYSTEM: &str = "bo-tai-chinh";
/// The province service the hub carries to it.
pub(crate) const TAX_SERVICE: &str = "thue";
/// A taxpayer in the system's sample register.
pub(crate) const TAX_CODE: &str = "2500123456";
/// The header the system reads its API key from.
const KEY_HEADER: &str = "x-api-key";

/// The ministry's system, running.
pub(crate) struct MinistryRest {
    /// Where it listens (HTTPS).
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl MinistryRest {
    /// The province service carried to it.
    pub(crate) fn service() -> String {
        format!("{PROVINCE}/{TAX_SERVICE}")
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
    }
}

/// A CA of the ministry's own and a server certificate for 127.0.0.1: the
/// hub trusts exactly that CA for this system.
fn tls() -> Result<(String, rustls::ServerConfig)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "CA Bộ Tài chính (demo)");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), &ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )?;
    Ok((ca.pem(), config))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::from(value.to_string())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    answer
}

/// `GET /nguoi-nop-thue/{ma_so_thue}` with the right API key: the taxpayer.
fn answer(req: &Request<hyper::body::Incoming>, api_key: &str) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if key != api_key {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"message": "Sai khóa API"}),
        );
    }
    let segments: Vec<&str> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    match (req.method().as_str(), segments.as_slice()) {
        ("GET", ["nguoi-nop-thue", code]) if *code == TAX_CODE => json(
            StatusCode::OK,
            serde_json::json!({
                "ma_so_thue": TAX_CODE,
                "ten": "Hộ kinh doanh Nguyễn Văn Đông",
                "dia_chi": "Xã Tam Dương, tỉnh Phú Thọ",
                "tinh_trang": "Đang hoạt động",
            }),
        ),
        ("GET", ["nguoi-nop-thue", _]) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "Không tìm thấy mã số thuế"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "Không có đường dẫn này"}),
        ),
    }
}

/// Serves the system on a free port until stopped.
async fn serve(config: rustls::ServerConfig, api_key: String) -> Result<MinistryRest> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let api_key = Arc::new(api_key);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
                _ = &mut stopped => return,
            };
            let (acceptor, api_key) = (acceptor.clone(), api_key.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let answered = answer(&req, &api_key);
                    async move { Ok::<_, std::convert::Infallible>(answered) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(MinistryRest { addr, stop })
}

/// Starts the ministry's system and publishes it behind the province's hub
/// (already running, registered as node `hub` of the province's agency,
/// reading REST secrets from `secrets`): the system record, the `thue`
/// service served by the hub, its route, and a grant to the commune.
pub(crate) async fn start(catalog: &Catalog, secrets: &Path) -> Result<MinistryRest> {
    lgsp_province::wait::node_registered(
        catalog.client(),
        PROVINCE,
        "hub",
        Duration::from_secs(20),
    )
    .await?;
    let (ca_pem, config) = tls()?;
    // The key is the system's secret: only in the hub's secrets directory.
    let api_key = random_key()?;
    std::fs::create_dir_all(secrets)?;
    let key_file = secrets.join(format!("{SYSTEM}.api-key"));
    std::fs::write(&key_file, &api_key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let system = serve(config, api_key).await?;
    let failed = |what: &str, s: tonic::Status| anyhow!("{what}: {}", s.message());
    catalog
        .client()
        .put(
            Value::RestSystem(RestSystem {
                name: SYSTEM.into(),
                base_url: format!("https://{}", system.addr),
                ca_pem,
                auth: RestAuth::ApiKey as i32,
                api_key_header: "X-API-Key".into(),
                timeout_ms: 5_000,
                ..Default::default()
            }),
            0,
        )
        .await
        .map_err(|s| failed("adding the ministry's REST system", s))?;
    let id: ServiceId = MinistryRest::service().parse()?;
    catalog
        .publish(Publication::new(
            id.clone(),
            ServiceKind::Http,
            "hub",
            "Tra cứu người nộp thuế (hệ thống REST của Bộ Tài chính, qua cổng kết nối tỉnh)",
        ))
        .await
        .map_err(|s| failed("publishing thue", s))?;
    catalog
        .client()
        .put(
            Value::RestRoute(RestRoute {
                service_id: id.to_string(),
                system: SYSTEM.into(),
                operations: vec![RestOperation {
                    name: "get".into(),
                    method: "GET".into(),
                    path: "/nguoi-nop-thue/{key}".into(),
                    query: Vec::new(),
                }],
                ..Default::default()
            }),
            0,
        )
        .await
        .map_err(|s| failed("routing thue to the ministry's system", s))?;
    catalog
        .grant(
            &GrantKey {
                service: id,
                consumer: lgsp_certs::AgencyCode::new(DISTRICT)?,
            },
            Validity::Open,
            "Xác minh mã số thuế hộ kinh doanh",
        )
        .await
        .map_err(|s| failed("granting thue", s))?;
    Ok(system)
}

/// A key no one guesses, from the OS's generator, hex.
fn random_key() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(bytes))
}

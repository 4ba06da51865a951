//! A small HTTPS server answering JSON, in this process: what `lgsp demo`
//! and `lgsp bench exchange --hub` run as an outside ministry's REST system
//! behind the provincial hub. It has a CA of its own (the hub trusts exactly
//! that CA for the system) and a certificate for 127.0.0.1.

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Answers one request (its body unread: GET requests only).
pub(crate) type Handler =
    Arc<dyn Fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// A server running on a free port of 127.0.0.1 until stopped (or dropped).
pub(crate) struct JsonServer {
    /// Where it listens (HTTPS).
    pub addr: SocketAddr,
    /// Its CA certificate (PEM), the one to trust for it.
    pub ca_pem: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A CA of the system's own (named `ca_name`) and a server certificate for
/// 127.0.0.1 and localhost signed by it.
fn tls(ca_name: &str) -> Result<(String, rustls::ServerConfig)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
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

/// A JSON answer with `status`.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::from(value.to_string())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    answer
}

/// Starts a server whose CA is named `ca_name`, answering with `handler`.
pub(crate) async fn start(ca_name: &str, handler: Handler) -> Result<JsonServer> {
    let (ca_pem, config) = tls(ca_name)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
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
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let answered = handler(&req);
                    async move { Ok::<_, std::convert::Infallible>(answered) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(JsonServer {
        addr,
        ca_pem,
        _stop: stop,
    })
}

/// A key no one guesses, from the OS's generator, hex.
pub(crate) fn random_key() -> Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(bytes))
}

/// Writes `key` as REST system `system`'s API key into the hub's secrets
/// directory `secrets`, readable by its owner only.
pub(crate) fn write_api_key(secrets: &std::path::Path, system: &str, key: &str) -> Result<()> {
    std::fs::create_dir_all(secrets)?;
    let file = secrets.join(format!("{system}.api-key"));
    std::fs::write(&file, key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

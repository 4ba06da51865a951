//! HTTPS toward external REST systems: TLS that trusts only the system's
//! CA from its catalog record, the hub's own certificate as the client
//! certificate when the system asks for it, an API key or an OAuth2 bearer
//! token (client credentials, RFC 6749 4.4) read from the hub's secrets
//! directory, and HTTP/2 when the system offers it in the TLS handshake
//! (ALPN), else HTTP/1.1 (what X-Road security servers speak).
//!
//! Connections are kept open and reused (one HTTP/2 connection carries
//! every call at once; HTTP/1.1 connections are kept alive), a pool per
//! system: at most the system's max-in-flight connections idle, each closed
//! after [`IDLE`] unused. The pool is built from the system's catalog record
//! and dropped whole when the record changes (its CA, URL, authentication or
//! anything else), when the system leaves the catalog, and when its circuit
//! breaker opens, so the next call opens a new connection and checks the
//! system's certificate again.
//!
//! Secrets never enter the catalog: `<secrets-dir>/<system>.api-key` and
//! `<secrets-dir>/<system>.client-secret`, read again whenever the file
//! changes (its inode, size or modification time, looked at once a second
//! at most), so a rotated secret applies within a second, without restart.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lgsp_certs::Credentials;
use lgsp_proto::{RestAuth, RestSystem};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a connection to a REST system stays open unused before it is
/// closed.
pub const IDLE: Duration = Duration::from_secs(30);

/// How often an HTTP/2 connection to a REST system with calls on it is
/// pinged, and how long its answer may take before the connection is
/// closed (its calls fail as not reached).
pub const H2_PING: Duration = Duration::from_secs(10);

/// Why a request did not get an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Not reached: DNS, TCP, TLS or the connection broke.
    #[error("{0}")]
    Unreachable(String),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The hub's side is not set up for this system (a secret file, a CA).
    #[error("{0}")]
    Setup(String),
    /// The token endpoint refused or answered nonsense.
    #[error("{0}")]
    Token(String),
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, at most the hub's message limit.
    pub body: Bytes,
}

#[derive(Debug)]
struct Token {
    value: String,
    until: Instant,
}

/// Calls REST systems; one per hub.
#[derive(Debug)]
pub struct RestClient {
    creds: Credentials,
    secrets: Option<PathBuf>,
    max_response: usize,
    /// Each system's connection pool, by system name, with the record it
    /// was built from.
    pools: Mutex<HashMap<String, (RestSystem, Pool)>>,
    tokens: Mutex<HashMap<String, Token>>,
    /// Each secret file as last read, with what its metadata said then and
    /// when that was last looked at: it is read again when that changes,
    /// looked at once per [`SECRET_RECHECK`] at most.
    secret_files: Mutex<HashMap<PathBuf, SecretFile>>,
}

/// How often a secret file's metadata is looked at again: a rotated secret
/// applies within this.
pub const SECRET_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct SecretFile {
    stamp: FileStamp,
    text: String,
    checked: tokio::time::Instant,
}

/// What says a file changed: its inode (a file replaced by a rename), size
/// and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// The kept-alive connections to one REST system.
type Pool = Client<Connector, Full<Bytes>>;

impl RestClient {
    /// A client presenting `creds` where a system asks for a client
    /// certificate, reading secrets from `secrets`, refusing answers larger
    /// than `max_response` bytes.
    pub fn new(creds: Credentials, secrets: Option<PathBuf>, max_response: usize) -> Self {
        Self {
            creds,
            secrets,
            max_response,
            pools: Mutex::default(),
            tokens: Mutex::default(),
            secret_files: Mutex::default(),
        }
    }

    /// The connection pool of `system`, as its record is now: the one kept
    /// when the record is the same, else a new one (the old one's idle
    /// connections close as it is dropped).
    fn pool(&self, system: &RestSystem) -> Result<Pool, SendError> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((record, pool)) = pools.get(&system.name)
            && record == system
        {
            return Ok(pool.clone());
        }
        let idle = if system.max_in_flight == 0 {
            crate::limiter::DEFAULT_MAX_IN_FLIGHT
        } else {
            system.max_in_flight
        };
        let pool = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle as usize)
            .pool_idle_timeout(IDLE)
            .pool_timer(TokioTimer::new())
            // An HTTP/2 connection carries every call: one that died
            // silently is found by its pings, not by each call's deadline.
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(H2_PING)
            .http2_keep_alive_timeout(H2_PING)
            .build(Connector {
                config: self.tls(system)?,
            });
        pools.insert(system.name.clone(), (system.clone(), pool.clone()));
        Ok(pool)
    }

    /// Closes the kept connections to REST system `name` (its breaker
    /// opened): the next call connects anew.
    pub fn drop_connections(&self, name: &str) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Closes the kept connections to every REST system not in `names`
    /// (gone from the catalog).
    pub fn retain(&self, names: &[String]) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| names.contains(name));
    }

    /// The TLS client config for `system`: its CA only, and the hub's
    /// certificate when the system authenticates the hub by it.
    fn tls(&self, system: &RestSystem) -> Result<Arc<ClientConfig>, SendError> {
        let mut roots = rustls::RootCertStore::empty();
        for (label, der) in lgsp_certs::inspect::pem_blocks(&system.ca_pem).unwrap_or_default() {
            if label == "CERTIFICATE" {
                roots.add(CertificateDer::from(der)).map_err(|e| {
                    SendError::Setup(format!(
                        "REST system {}: its CA certificate is unusable: {e}",
                        system.name
                    ))
                })?;
            }
        }
        if roots.is_empty() {
            return Err(SendError::Setup(format!(
                "REST system {} has no CA certificate in the catalog",
                system.name
            )));
        }
        let builder = ClientConfig::builder_with_provider(lgsp_certs::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SendError::Setup(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = if system.auth == RestAuth::ClientCert as i32 {
            builder
                .with_client_auth_cert(self.creds.chain.clone(), self.creds.key.clone_key())
                .map_err(|e| SendError::Setup(format!("the hub's client certificate: {e}")))?
        } else {
            builder.with_no_client_auth()
        };
        // HTTP/2 where the system offers it (one connection carries every
        // call at once), HTTP/1.1 otherwise: the system chooses.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the secret `<secrets-dir>/<system>.<kind>`, trimmed.
    fn secret(&self, system: &str, kind: &str) -> Result<String, SendError> {
        let Some(dir) = &self.secrets else {
            return Err(SendError::Setup(format!(
                "REST system {system} needs a secret, and the hub has no secrets directory; start it with `lgsp hub start --rest-secrets DIR` and put the secret in DIR/{system}.{kind}"
            )));
        };
        let path = dir.join(format!("{system}.{kind}"));
        let unreadable = |e: std::io::Error| {
            SendError::Setup(format!(
                "REST system {system}: cannot read its secret {}: {e} (install it with `lgsp hub rest secret`)",
                path.display()
            ))
        };
        let now = tokio::time::Instant::now();
        let mut files = self
            .secret_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = files.get(&path)
            && now.saturating_duration_since(file.checked) < SECRET_RECHECK
        {
            return Ok(file.text.clone());
        }
        let stamp = FileStamp::of(&std::fs::metadata(&path).map_err(unreadable)?);
        if let Some(file) = files.get_mut(&path)
            && file.stamp == stamp
        {
            file.checked = now;
            return Ok(file.text.clone());
        }
        let text = std::fs::read_to_string(&path).map_err(unreadable)?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(SendError::Setup(format!(
                "REST system {system}: its secret {} is empty",
                path.display()
            )));
        }
        files.insert(
            path,
            SecretFile {
                stamp,
                text: text.clone(),
                checked: now,
            },
        );
        Ok(text)
    }

    /// Adds the system's credentials to `request`: its API key, or a bearer
    /// token (fetched once and kept until shortly before it expires).
    pub async fn authenticate(
        &self,
        system: &RestSystem,
        headers: &mut http::HeaderMap,
        timeout: Duration,
    ) -> Result<(), SendError> {
        match RestAuth::try_from(system.auth) {
            Ok(RestAuth::ApiKey) => {
                let key = self.secret(&system.name, "api-key")?;
                let name = http::HeaderName::from_bytes(system.api_key_header.as_bytes())
                    .map_err(|e| SendError::Setup(e.to_string()))?;
                let mut value = http::HeaderValue::from_str(&key).map_err(|_| {
                    SendError::Setup(format!(
                        "REST system {}: its API key is not a valid header value",
                        system.name
                    ))
                })?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            Ok(RestAuth::Oauth2) => {
                let token = self.token(system, timeout).await?;
                let mut value =
                    http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        SendError::Token("the token is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
            }
            _ => {}
        }
        Ok(())
    }

    /// Forgets the system's token (the system refused it).
    pub fn drop_token(&self, system: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(system);
    }

    async fn token(&self, system: &RestSystem, timeout: Duration) -> Result<String, SendError> {
        if let Some(t) = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&system.name)
            && t.until > Instant::now()
        {
            return Ok(t.value.clone());
        }
        let secret = self.secret(&system.name, "client-secret")?;
        let form = "grant_type=client_credentials";
        let basic = base64(
            format!(
                "{}:{}",
                lgsp_registry::rest_system::encode_query(&system.client_id),
                lgsp_registry::rest_system::encode_query(&secret)
            )
            .as_bytes(),
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let mut auth = http::HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|e| SendError::Setup(e.to_string()))?;
        auth.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, auth);
        let reply = self
            .send(
                system,
                &system.token_url,
                http::Method::POST,
                headers,
                Bytes::from(form),
                timeout,
            )
            .await?;
        if reply.status != 200 {
            let text: String = String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect();
            return Err(SendError::Token(format!(
                "the token endpoint {} refused client {} ({}): {text}",
                system.token_url, system.client_id, reply.status
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenReply {
            access_token: String,
            #[serde(default)]
            token_type: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: TokenReply = serde_json::from_slice(&reply.body).map_err(|e| {
            SendError::Token(format!(
                "the token endpoint {} answered something that is not an OAuth2 token: {e}",
                system.token_url
            ))
        })?;
        if !t.token_type.is_empty() && !t.token_type.eq_ignore_ascii_case("bearer") {
            return Err(SendError::Token(format!(
                "the token endpoint {} gave a {:?} token; the hub uses bearer tokens only",
                system.token_url, t.token_type
            )));
        }
        // Renewed 30 s early (or at half its life when shorter), so a call
        // never goes out with a token about to expire.
        let life = Duration::from_secs(t.expires_in.unwrap_or(300));
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(30).min(life / 2));
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                system.name.clone(),
                Token {
                    value: t.access_token.clone(),
                    until,
                },
            );
        Ok(t.access_token)
    }

    /// Sends one request to `url` (an `https://` URL of `system`) and
    /// reads the answer, all within `timeout`, on a kept-alive connection
    /// to the system when one is free, else on a new one (whose
    /// certificate is checked against the system's CA).
    pub async fn send(
        &self,
        system: &RestSystem,
        url: &str,
        method: http::Method,
        headers: http::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        if !url.starts_with("https://") {
            return Err(SendError::Setup(format!("{url:?} is not an https:// URL")));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|e| SendError::Setup(format!("{url:?} is not a URL: {e}")))?;
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let pool = self.pool(system)?;
        let max = self.max_response;
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| SendError::Setup(e.to_string()))?;
        *request.headers_mut() = headers;
        tokio::time::timeout(timeout, async move {
            let response = pool.request(request).await.map_err(|e| {
                // The connector's own words (cannot connect, TLS failed)
                // when it was the connection; hyper's otherwise.
                match connect_error(&e) {
                    Some(why) => SendError::Unreachable(why.to_owned()),
                    None => SendError::Unreachable(format!(
                        "{authority} did not answer: {}",
                        error_chain(&e)
                    )),
                }
            })?;
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| SendError::Unreachable(format!("reading {authority}'s answer: {e}")))?
                .to_bytes();
            Ok(Reply {
                status,
                headers: parts.headers,
                body,
            })
        })
        .await
        .map_err(|_| SendError::Timeout(timeout))?
    }
}

/// Why a connection to a REST system could not be made, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConnectError(String);

/// The connector's error behind `e`, if the connection failed.
fn connect_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e str> {
    let mut source = Some(e);
    while let Some(error) = source {
        if let Some(ConnectError(why)) = error.downcast_ref::<ConnectError>() {
            return Some(why);
        }
        source = error.source();
    }
    None
}

/// `e` and its causes, joined.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

/// Opens TCP and TLS connections to a REST system, trusting its CA only.
#[derive(Clone, Debug)]
struct Connector {
    config: Arc<ClientConfig>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TlsConnection;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConnection, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let origin = format!("https://{authority}");
            let host = lgsp_registry::rest_system::https_host(&origin).map_err(ConnectError)?;
            let port = uri.port_u16().unwrap_or(443);
            let server_name = ServerName::try_from(host.to_owned())
                .map_err(|e| ConnectError(format!("{host:?}: {e}")))?;
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| ConnectError(format!("cannot connect to {authority}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|e| ConnectError(format!("TLS with {authority} failed: {e}")))?;
            Ok(TlsConnection(TokioIo::new(tls)))
        })
    }
}

/// A TLS connection to a REST system, as hyper's pool holds it.
#[derive(Debug)]
struct TlsConnection(TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>);

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Standard base64 with padding (RFC 4648 4), for HTTP Basic credentials.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTPS server with keep-alive on 127.0.0.1 answering `{}` to
    /// everything, counting the connections it accepted and those that
    /// ended.
    struct Server {
        addr: SocketAddr,
        ca_pem: String,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn keep_alive_server() -> Server {
        server_speaking(false).await
    }

    /// [`keep_alive_server`], offering HTTP/2 in the handshake when `h2`
    /// (and then speaking only that), answering with the request's version.
    async fn server_speaking(h2: bool) -> Server {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), &ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(lgsp_certs::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        if h2 {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (acceptor, c) = (acceptor.clone(), c.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let service = hyper::service::service_fn(|req: http::Request<_>| {
                            let version = format!("{{\"version\": \"{:?}\"}}", req.version());
                            async move {
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from(version),
                                )))
                            }
                        });
                        let io = TokioIo::new(tls);
                        let _ = if h2 {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        } else {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        };
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Server {
            addr,
            ca_pem: ca.pem(),
            accepted,
            closed,
        }
    }

    fn hub_credentials(dir: &std::path::Path) -> Credentials {
        let mut ca =
            lgsp_certs::ca::CertificateAuthority::init(&dir.join("ca"), "p.example", "CA", 30)
                .unwrap();
        let id = lgsp_certs::SpiffeId::new(
            "p.example",
            lgsp_certs::AgencyCode::new("000.00.00.H62").unwrap(),
            lgsp_certs::Role::Hub,
            "hub",
        )
        .unwrap();
        let issued = ca
            .issue(&lgsp_certs::ca::LeafSpec::for_days(id, 30).unwrap())
            .unwrap();
        Credentials::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem()).unwrap()
    }

    fn system(server: &Server) -> RestSystem {
        RestSystem {
            name: "bo-tai-chinh".into(),
            base_url: format!("https://{}", server.addr),
            ca_pem: server.ca_pem.clone(),
            max_in_flight: 4,
            ..Default::default()
        }
    }

    async fn get(client: &RestClient, system: &RestSystem) -> u16 {
        get_reply(client, system).await.status
    }

    /// `GET {base}/citizens/001` of `system`, answered.
    async fn get_reply(client: &RestClient, system: &RestSystem) -> Reply {
        let url = format!("{}/citizens/001", system.base_url);
        client
            .send(
                system,
                &url,
                http::Method::GET,
                http::HeaderMap::new(),
                Bytes::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap()
    }

    /// Waits (at most 5 s) until `count` reaches `want`.
    async fn reaches(count: &AtomicUsize, want: usize) {
        let start = Instant::now();
        while count.load(Ordering::SeqCst) < want {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{} of {want} after 5 s",
                count.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_secret_is_read_again_only_when_its_file_changes_and_a_rotated_one_applies_within_a_second()
     {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        let client = RestClient::new(hub_credentials(dir.path()), Some(secrets.clone()), 1 << 20);
        let key = || client.secret("bo-tai-chinh", "api-key");
        let file = secrets.join("bo-tai-chinh.api-key");
        std::fs::write(&file, "khóa-một\n").unwrap();
        assert_eq!(key().unwrap(), "khóa-một");
        // Rewritten in place, longer: the file is looked at again within a second.
        std::fs::write(&file, "khóa-thứ-hai\n").unwrap();
        assert_eq!(key().unwrap(), "khóa-một", "not looked at again yet");
        tokio::time::advance(SECRET_RECHECK).await;
        assert_eq!(key().unwrap(), "khóa-thứ-hai");
        // Replaced by a rename with a file of the same length.
        let next = secrets.join("next");
        std::fs::write(&next, "khóa-thứ-ba!\n").unwrap();
        std::fs::rename(&next, &file).unwrap();
        tokio::time::advance(SECRET_RECHECK).await;
        assert_eq!(key().unwrap(), "khóa-thứ-ba!");
        // Unchanged, it is not read again, and stays.
        tokio::time::advance(SECRET_RECHECK).await;
        assert_eq!(key().unwrap(), "khóa-thứ-ba!");
        // Removed: refused, saying how to install it, never the old one.
        std::fs::remove_file(&file).unwrap();
        tokio::time::advance(SECRET_RECHECK).await;
        let why = key().unwrap_err().to_string();
        assert!(why.contains("lgsp hub rest secret"), "{why}");
    }

    #[tokio::test]
    async fn calls_to_a_rest_system_reuse_a_kept_alive_connection() {
        let dir = tempfile::tempdir().unwrap();
        let server = keep_alive_server().await;
        let client = RestClient::new(hub_credentials(dir.path()), None, 1 << 20);
        let system = system(&server);
        for _ in 0..20 {
            assert_eq!(get(&client, &system).await, 200);
        }
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            1,
            "20 calls, one connection"
        );
        // Calls at once use at most one connection each, then stay pooled.
        let calls: Vec<_> = (0..4).map(|_| get(&client, &system)).collect();
        for status in futures::future::join_all(calls).await {
            assert_eq!(status, 200);
        }
        let after = server.accepted.load(Ordering::SeqCst);
        assert!(
            after <= 4,
            "4 calls at once opened {after} connections in all"
        );
        for _ in 0..20 {
            assert_eq!(get(&client, &system).await, 200);
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), after);
        assert_eq!(server.closed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_system_offering_http2_gets_every_call_at_once_on_one_http2_connection() {
        let dir = tempfile::tempdir().unwrap();
        let client = RestClient::new(hub_credentials(dir.path()), None, 1 << 20);
        let version = |reply: Reply| String::from_utf8(reply.body.to_vec()).unwrap();
        let h2 = server_speaking(true).await;
        // The first call learns that the system speaks HTTP/2; the calls
        // after it share its connection, however many at once.
        let h2_system = system(&h2);
        let first = get_reply(&client, &h2_system).await;
        assert_eq!(version(first), r#"{"version": "HTTP/2.0"}"#);
        let calls: Vec<_> = (0..8).map(|_| get_reply(&client, &h2_system)).collect();
        for reply in futures::future::join_all(calls).await {
            assert_eq!(version(reply), r#"{"version": "HTTP/2.0"}"#);
        }
        assert_eq!(
            h2.accepted.load(Ordering::SeqCst),
            1,
            "8 calls at once after the first, one HTTP/2 connection"
        );
        // A system that offers nothing in the handshake gets HTTP/1.1.
        let h1 = keep_alive_server().await;
        let mut other = system(&h1);
        other.name = "bo-cong-an".into();
        assert_eq!(
            version(get_reply(&client, &other).await),
            r#"{"version": "HTTP/1.1"}"#
        );
    }

    #[tokio::test]
    async fn a_changed_record_or_an_open_breaker_closes_the_kept_connections() {
        let dir = tempfile::tempdir().unwrap();
        let server = keep_alive_server().await;
        let client = RestClient::new(hub_credentials(dir.path()), None, 1 << 20);
        let mut system = system(&server);
        assert_eq!(get(&client, &system).await, 200);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        // The provincial admin changes the system's CA bundle (here: a
        // second CA beside the first): a new connection, checked against
        // the new record, and the old one closed.
        let other = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        system.ca_pem = format!("{}{}", server.ca_pem, other.pem());
        assert_eq!(get(&client, &system).await, 200);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
        reaches(&server.closed, 1).await;
        assert_eq!(get(&client, &system).await, 200);
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            2,
            "the new one is kept"
        );
        // The breaker opened: the kept connection goes.
        client.drop_connections(&system.name);
        reaches(&server.closed, 2).await;
        assert_eq!(get(&client, &system).await, 200);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
        // The system left the catalog.
        client.retain(&[]);
        reaches(&server.closed, 3).await;
    }

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(input.as_bytes()), want);
        }
    }
}

//! rustls configurations for mutual TLS between lgsp peers, swappable at run
//! time: a new CRL or trust bundle takes effect on the next handshake, with
//! no restart.
//!
//! tonic's own TLS settings cannot check a CRL, so servers accept TCP
//! themselves, handshake with `tokio_rustls` against the current
//! [`ServerTls`] config, and hand the streams to tonic through
//! [`ServerTls::incoming`]. tonic then still gives `peer_certs()` per request.

use crate::error::{CertError, Result, io_err};
use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish a handshake before it is dropped, so
/// a slow or silent client cannot hold resources.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ring provider, the one crypto provider lgsp enables.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a peer's TLS material lives: its certificate, its key and the CA
/// certificate it trusts, all PEM. Also the `tls` tables of `node.toml`
/// and `registry.toml`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The peer's own certificate (chain), PEM, leaf first.
    pub cert: PathBuf,
    /// The peer's private key, PEM; should be mode 0600.
    pub key: PathBuf,
    /// The provincial CA certificate(s) the peer trusts, PEM.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The files `lgsp ca issue --out DIR` writes: `cert.pem`, `key.pem`, `ca.pem`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        }
    }

    /// Writes `creds` into `dir` (made if missing) under the names of
    /// [`Self::in_dir`], the key readable by its owner only. Each file is
    /// replaced whole. Fails with [`CertError::Io`] when one cannot be written.
    pub fn write(dir: &Path, creds: &Credentials) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let files = Self::in_dir(dir);
        crate::write_atomic(&files.cert, creds.cert_pem.as_bytes(), 0o644)?;
        crate::write_atomic(&files.key, creds.key_pem.as_bytes(), 0o600)?;
        crate::write_atomic(&files.ca, creds.ca_pem.as_bytes(), 0o644)?;
        Ok(files)
    }
}

/// A certificate chain, its key and the trusted CA certificates, loaded and checked.
///
/// Its `Debug` shows the certificates but never the key.
pub struct Credentials {
    /// The peer's certificate chain, DER, leaf first: what it presents in a handshake.
    pub chain: Vec<CertificateDer<'static>>,
    /// The peer's private key, DER.
    pub key: PrivateKeyDer<'static>,
    /// The CA certificates it trusts, DER: a peer's chain must end at one of them.
    pub roots: Vec<CertificateDer<'static>>,
    /// The chain as read, PEM, for tonic's client identity.
    pub cert_pem: String,
    /// The private key as read, PEM, for tonic's client identity.
    pub key_pem: String,
    /// The trusted CA certificates as read, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key, in either form, stays out of logs and panic messages.
        f.debug_struct("Credentials")
            .field("cert_pem", &self.cert_pem)
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }
}

impl Credentials {
    /// The SPIFFE ID in the first certificate of the chain: who these
    /// credentials say their holder is. Fails when the certificate cannot be
    /// parsed or names no usable identity.
    pub fn spiffe_id(&self) -> Result<crate::SpiffeId> {
        let der = self
            .chain
            .first()
            .ok_or_else(|| CertError::Tls("no certificate".into()))?;
        let info =
            crate::inspect::CertInfo::from_der(der.as_ref(), Path::new("<own certificate>"))?;
        info.spiffe_id.map_err(|why| {
            CertError::Tls(format!(
                "our own certificate has no usable SPIFFE ID: {why}"
            ))
        })
    }

    /// Reads and parses the three PEM files. Fails with [`CertError::Io`] when
    /// one cannot be read and [`CertError::Parse`], naming the file, when it
    /// holds no usable certificate or key.
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
        Self::from_pem_named(
            &read(&files.cert)?,
            &read(&files.key)?,
            &read(&files.ca)?,
            files,
        )
    }

    /// Parses PEM text held in memory; fails as [`Self::load`] does, the
    /// files named `<memory>/…`.
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self> {
        let files = TlsFiles::in_dir(Path::new("<memory>"));
        Self::from_pem_named(cert_pem, key_pem, ca_pem, &files)
    }

    fn from_pem_named(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        files: &TlsFiles,
    ) -> Result<Self> {
        let certs = |pem: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>> {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| CertError::Parse {
                    path: path.to_owned(),
                    what: "PEM certificate file",
                    why: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(CertError::Parse {
                    path: path.to_owned(),
                    what: "PEM certificate file",
                    why: "it holds no CERTIFICATE block".into(),
                });
            }
            Ok(certs)
        };
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Parse {
                path: files.key.clone(),
                what: "PEM private key",
                why: e.to_string(),
            })?;
        Ok(Self {
            chain: certs(cert_pem, &files.cert)?,
            key,
            roots: certs(ca_pem, &files.ca)?,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            ca_pem: ca_pem.to_owned(),
        })
    }
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| CertError::Tls(format!("a trusted CA certificate is unusable: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// What a server trusts right now.
#[derive(Debug, Clone)]
struct Trust {
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// Whether a certificate whose CA has no CRL here passes (several
    /// CAs, only some of which published one: a hub's federation peers).
    partial: bool,
    /// The application protocols offered (ALPN).
    alpn: Vec<Vec<u8>>,
}

/// A server's mTLS configuration that can change while it runs.
///
/// Each change builds a fresh `ServerConfig` (never reusing the old session
/// cache, or a revoked client could resume a session without its
/// certificate being checked again) and swaps it in; the next handshake uses it.
#[derive(Debug)]
pub struct ServerTls {
    creds: Credentials,
    trust: Mutex<Trust>,
    config: ArcSwap<ServerConfig>,
    revoked: ArcSwap<HashSet<String>>,
    /// Ticks after each new CRL is in force, so that streams opened before
    /// it check their peer again without waiting for their next message.
    crl_changed: tokio::sync::watch::Sender<()>,
}

impl ServerTls {
    /// A server config that requires a client certificate from one of the
    /// credentials' CAs, and no CRL yet. Fails with [`CertError::Tls`] when
    /// rustls refuses the certificate, key or roots.
    pub fn new(creds: Credentials) -> Result<Arc<Self>> {
        Self::with_alpn(creds, vec![b"h2".to_vec()])
    }

    /// As [`Self::new`], for an HTTP server (the hub's REST endpoint) that
    /// speaks HTTP/2 to clients that offer `h2` and HTTP/1.1 to the others
    /// (a server that offers only `h2` refuses an HTTP/1.1 client's
    /// handshake).
    pub fn http(creds: Credentials) -> Result<Arc<Self>> {
        Self::with_alpn(creds, vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    fn with_alpn(creds: Credentials, alpn: Vec<Vec<u8>>) -> Result<Arc<Self>> {
        let trust = Trust {
            roots: creds.roots.clone(),
            crls: Vec::new(),
            partial: false,
            alpn,
        };
        let config = build_server_config(&creds, &trust)?;
        Ok(Arc::new(Self {
            creds,
            trust: Mutex::new(trust),
            config: ArcSwap::from_pointee(config),
            revoked: ArcSwap::from_pointee(HashSet::new()),
            crl_changed: tokio::sync::watch::Sender::new(()),
        }))
    }

    /// The config the next handshake will use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Installs a new CRL (DER): later handshakes refuse its serials, and
    /// [`Self::is_revoked`] reports them for connections already open.
    /// Fails with [`CertError::Parse`] for a CRL that does not parse and
    /// [`CertError::Tls`] when rustls refuses it; the old CRL then stays in force.
    pub fn set_crl(&self, der: &[u8]) -> Result<()> {
        let info = crate::inspect::verify_crl(der, &self.creds.roots)?;
        let mut trust = self.trust.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = trust.clone();
        next.crls = vec![CertificateRevocationListDer::from(der.to_vec())];
        next.partial = false;
        let config = build_server_config(&self.creds, &next)?;
        *trust = next;
        self.config.store(Arc::new(config));
        self.revoked
            .store(Arc::new(info.revoked.into_iter().collect()));
        // After the store: whoever wakes must find the new serials.
        self.crl_changed.send_replace(());
        tracing::info!(crl.number = ?info.number, "new certificate revocation list in force");
        Ok(())
    }

    /// Replaces the trusted CA certificates (e.g. adds a ministry's bundle)
    /// for later handshakes. Fails with [`CertError::Tls`] when one is
    /// unusable; the old roots then stay in force.
    pub fn set_roots(&self, roots: Vec<CertificateDer<'static>>) -> Result<()> {
        let mut trust = self.trust.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = trust.clone();
        next.roots = roots;
        let config = build_server_config(&self.creds, &next)?;
        *trust = next;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// Replaces both the trusted CA certificates and the CRLs at once, for a
    /// server that trusts several CAs each with its own CRL (the hub's
    /// outward listener: its federation peers' CAs). Each CRL must already
    /// be verified against the CA that signed it; a certificate whose CA has
    /// none here is not checked for revocation. [`Self::is_revoked`] is not
    /// changed: such a caller checks serials per CA itself. Fails with
    /// [`CertError::Tls`] when rustls refuses a root or a CRL; the old trust
    /// then stays in force.
    pub fn set_trust(&self, roots: Vec<CertificateDer<'static>>, crls: Vec<Vec<u8>>) -> Result<()> {
        let mut trust = self.trust.lock().unwrap_or_else(PoisonError::into_inner);
        let next = Trust {
            roots,
            crls: crls
                .into_iter()
                .map(CertificateRevocationListDer::from)
                .collect(),
            partial: true,
            alpn: trust.alpn.clone(),
        };
        let config = build_server_config(&self.creds, &next)?;
        *trust = next;
        self.config.store(Arc::new(config));
        // Connections opened before hold their streams: wake them to check.
        self.crl_changed.send_replace(());
        Ok(())
    }

    /// Whether the current CRL lists `serial` (normalised hex).
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.load().contains(serial)
    }

    /// A receiver that sees a change each time [`Self::set_crl`] puts a new
    /// CRL in force (changes before this call are already seen).
    pub fn crl_changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.crl_changed.subscribe()
    }

    /// Accepts TCP connections on `listener` and yields the ones whose TLS
    /// handshake succeeds, for tonic's `serve_with_incoming`. Each handshake
    /// runs in its own task, so a slow client never holds up the others.
    /// The accept loop ends when the returned stream is dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, addr) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let accept = acceptor.accept(tcp).into_fallible();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err((error, tcp))) => {
                            tracing::info!(client.addr = %addr, %error, "TLS handshake refused");
                            linger(tcp).await;
                        }
                        Err(_) => {
                            tracing::info!(client.addr = %addr, "TLS handshake timed out; connection dropped");
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// As [`Self::incoming`], for connections a listener of the caller's
    /// already accepted (and bounds): yields those whose TLS handshake
    /// succeeds, each handshake in its own task. Ends when `accepted` does.
    pub fn handshakes<IO>(
        self: Arc<Self>,
        mut accepted: tokio::sync::mpsc::Receiver<IO>,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<IO>>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let io = tokio::select! {
                    io = accepted.recv() => match io {
                        Some(io) => io,
                        None => return,
                    },
                    () = tx.closed() => return,
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let accept = acceptor.accept(io).into_fallible();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err((error, io))) => {
                            tracing::info!(%error, "TLS handshake refused");
                            linger(io).await;
                        }
                        Err(_) => {
                            tracing::info!("TLS handshake timed out; connection dropped");
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Closes a refused connection so that the client reads the TLS alert
/// saying why: under TLS 1.3 the client has already sent its first request,
/// and closing with that unread would reset the connection and lose the
/// alert. Half-close, then read and discard until the client closes too.
async fn linger<IO>(mut tcp: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn build_server_config(creds: &Credentials, trust: &Trust) -> Result<ServerConfig> {
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(&trust.roots)?, provider.clone());
    if !trust.crls.is_empty() {
        verifier = verifier.with_crls(trust.crls.iter().cloned());
        if trust.partial {
            verifier = verifier.allow_unknown_revocation_status();
        }
    }
    let verifier = verifier
        .build()
        .map_err(|e| CertError::Tls(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| CertError::Tls(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = trust.alpn.clone();
    Ok(config)
}

/// A tonic client endpoint that presents `creds` and trusts their CA,
/// checking the server by host name only: for tests and tools that reach
/// a known address. lgsp's own clients check who they reached instead
/// ([`crate::server_identity`]). `server_name` is the name checked in the
/// server's certificate; by
/// default the host of `uri` (a DNS name or an IP address, which the
/// certificate must carry as a SAN, as `lgsp ca issue --dns/--ip` puts it).
/// A `uri` without a scheme gets `https://`. Fails with [`CertError::Tls`]
/// for a malformed `uri` or unusable credentials; nothing connects yet.
pub fn client_endpoint(
    uri: &str,
    creds: &Credentials,
    server_name: Option<&str>,
) -> Result<tonic::transport::Endpoint> {
    let uri = if uri.contains("://") {
        uri.to_owned()
    } else {
        format!("https://{uri}")
    };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&creds.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &creds.cert_pem,
            &creds.key_pem,
        ))
        .domain_name(server_name.map_or_else(|| host_of(&uri), str::to_owned));
    tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| CertError::Tls(format!("bad endpoint {uri:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| CertError::Tls(e.to_string()))
        .map(|e| e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true))
}

/// The host of `scheme://host:port/...`, without brackets for IPv6.
fn host_of(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_owned();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .to_owned()
}

/// How a client's refusal of the server it reached starts, in a handshake
/// error (see `server_identity.rs`; rustls shows it through `Debug`).
pub(crate) const WRONG_SERVER: &str = "wrong server: ";

/// Puts into plain words why a call failed at the TLS layer. Under TLS 1.3 a
/// server's refusal of the client certificate only shows at the first call,
/// as a bare "transport error"; this names the cause.
pub fn explain_status(status: &tonic::Status) -> String {
    let mut chain = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        // Layers often repeat their cause's words: say them once.
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    // Our own check of the server's identity (server_identity.rs) says in
    // full who answered and who was expected: that sentence is the message.
    if let Some(start) = chain.find(WRONG_SERVER) {
        let why = &chain[start + WRONG_SERVER.len()..];
        let why = why.split("))").next().unwrap_or(why);
        return format!("the server reached is not the one expected: {why}");
    }
    let cause = [
        (
            "invalid peer certificate: Revoked",
            "the server's certificate is revoked (it is on the CRL in force)",
        ),
        (
            "CertificateRequired",
            "the server requires a client certificate and none was presented",
        ),
        (
            "CertificateRevoked",
            "the server refused our certificate: it is revoked",
        ),
        (
            "CertificateExpired",
            "the server refused our certificate: it has expired or is not yet valid",
        ),
        (
            "UnknownCA",
            "the server refused our certificate: it was not issued by a CA the server trusts",
        ),
        (
            "DecryptError",
            "the server refused our certificate: it was not issued by a CA the server trusts (its signature does not verify against the trusted CA of the same name)",
        ),
        (
            "BadCertificate",
            "the server refused our certificate as malformed or unusable",
        ),
        (
            "UnknownIssuer",
            "the server's certificate was not issued by a CA we trust",
        ),
        (
            "NotValidForName",
            "the server's certificate does not name the host we connected to",
        ),
        ("Connection refused", "nothing is listening at that address"),
    ]
    .into_iter()
    .find(|(needle, _)| chain.contains(needle));
    match cause {
        Some((_, words)) => format!("{words} ({chain})"),
        None => chain,
    }
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn host_is_taken_from_the_endpoint() {
        assert_eq!(super::host_of("https://127.0.0.1:7101"), "127.0.0.1");
        assert_eq!(
            super::host_of("https://node.stp.vinhphuc.gov.vn:7301/x"),
            "node.stp.vinhphuc.gov.vn"
        );
        assert_eq!(super::host_of("https://[::1]:7101"), "::1");
        assert_eq!(super::host_of("localhost:7101"), "localhost");
    }
}

//! Who a client meant to reach, and the check that it did.
//!
//! A host name proves nothing in a province: a DNS or ARP redirect can send a
//! call for agency Y's node to agency X's, and X's certificate chains to the
//! same CA. So a client checks the server's certificate against an
//! [`Expected`] identity: the chain to the provincial CA and the CRL in force
//! (through [`ClientTrust`], which follows the catalog's CRL), then the SPIFFE
//! ID in the certificate (trust domain, role, agency and name as expected)
//! and, for a node, the certificate's SHA-256 fingerprint that the catalog
//! holds. The name the client dialled is not checked at all: the identity
//! is.
//!
//! [`connect_lazy`] makes a tonic channel that dials TCP, runs this check in
//! the TLS handshake, and speaks HTTP/2 (ALPN `h2`) on the result. A refused
//! server fails the handshake with a message that names who answered and who
//! was expected.

use crate::identity::{AgencyCode, Role, SpiffeId};
use crate::inspect::CertInfo;
use crate::tls::{Credentials, WRONG_SERVER, provider};
use crate::{CertError, Result};
use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The identity a client expects of the server it calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The province's trust domain (the client's own).
    pub trust_domain: String,
    /// The role the server must have: a node, a registry server, the hub.
    pub role: Role,
    /// The agency it must belong to, when the client knows it (a provider
    /// node); `None` accepts any agency of the trust domain (registry
    /// servers belong to the provincial IT department).
    pub agency: Option<AgencyCode>,
    /// Its name within the agency, when the client knows it.
    pub name: Option<String>,
    /// The SHA-256 of its certificate (lower-case hex), as the catalog
    /// holds it for a node: a certificate with the right identity but
    /// another key (an older or a second one) is refused too.
    pub sha256: Option<String>,
}

impl Expected {
    /// Any registry server of `trust_domain`.
    pub fn registry(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            role: Role::Registry,
            agency: None,
            name: None,
            sha256: None,
        }
    }

    /// Node `name` of `agency`, with the certificate fingerprint the
    /// catalog holds for it (if any).
    pub fn node(trust_domain: &str, agency: AgencyCode, name: &str, sha256: Option<&str>) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            role: Role::Node,
            agency: Some(agency),
            name: Some(name.to_owned()),
            sha256: sha256.filter(|s| !s.is_empty()).map(str::to_lowercase),
        }
    }

    /// The provincial hub of `trust_domain`.
    pub fn hub(trust_domain: &str) -> Self {
        Self {
            role: Role::Hub,
            ..Self::registry(trust_domain)
        }
    }

    /// Whether the server's certificate `der`, which names `id`, is the
    /// one expected; if not, says why in words an operator can act on.
    pub fn check(&self, id: &SpiffeId, der: &[u8]) -> std::result::Result<(), String> {
        if id.trust_domain != self.trust_domain {
            return Err(format!(
                "the server is {id}, of trust domain {}, not {}",
                id.trust_domain, self.trust_domain
            ));
        }
        if id.role != self.role {
            return Err(format!(
                "the server is {id}, not a {} as expected",
                self.role
            ));
        }
        if let Some(agency) = &self.agency
            && &id.agency != agency
        {
            return Err(format!(
                "the server is {id}, of agency {}, not of agency {agency}",
                id.agency
            ));
        }
        if let Some(name) = &self.name
            && &id.name != name
        {
            return Err(format!(
                "the server is {id}, not {} {name} of agency {}",
                self.role, id.agency
            ));
        }
        if let Some(pin) = &self.sha256 {
            let found = hex::encode(Sha256::digest(der));
            if &found != pin {
                return Err(format!(
                    "the server presents a certificate of {id} with fingerprint {found}, but the catalog holds {pin} for it (an old or a second certificate)"
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of trust domain {}", self.role, self.trust_domain)?;
        if let Some(agency) = &self.agency {
            write!(f, ", agency {agency}")?;
        }
        if let Some(name) = &self.name {
            write!(f, ", name {name}")?;
        }
        Ok(())
    }
}

/// What a client trusts right now: the CA certificates and the CRL in
/// force. Shared by every connection a process makes, and updated in place
/// when a new CRL comes (connections opened afterwards check against it).
#[derive(Debug)]
pub struct ClientTrust {
    ca: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    verifier: ArcSwap<WebPkiServerVerifier>,
    /// The serials of the server certificates accepted so far, newest
    /// last, at most [`ACCEPTED_KEPT`].
    accepted: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// How many accepted server certificates a [`ClientTrust`] remembers.
const ACCEPTED_KEPT: usize = 64;

impl ClientTrust {
    /// Trust in the CA certificates of `creds`, with no CRL yet.
    pub fn new(creds: &Credentials) -> Result<Arc<Self>> {
        let mut roots = RootCertStore::empty();
        for root in &creds.roots {
            roots.add(root.clone()).map_err(|e| {
                CertError::Tls(format!("a trusted CA certificate is unusable: {e}"))
            })?;
        }
        let roots = Arc::new(roots);
        let verifier = build_verifier(&roots, None)?;
        Ok(Arc::new(Self {
            ca: creds.roots.clone(),
            roots,
            verifier: ArcSwap::new(verifier),
            accepted: Default::default(),
        }))
    }

    /// The serials (lower-case hex) of the server certificates this trust
    /// accepted in handshakes so far, whose holders proved they hold their
    /// keys (the last 64 distinct ones): a
    /// connection opened before a CRL keeps running on one of them, so a
    /// caller holding a long stream checks them against the CRL in force.
    pub fn accepted_serials(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Remembers the serial of `cert`, whose holder just proved it has its
    /// key (the handshake's signature verified; its chain and identity were
    /// checked before).
    fn record_holder(&self, cert: &CertificateDer<'_>) {
        if let Ok(info) = CertInfo::from_der(cert.as_ref(), Path::new("<server certificate>")) {
            self.record_accepted(&info.serial);
        }
    }

    fn record_accepted(&self, serial: &str) {
        let mut accepted = self
            .accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if accepted.back().is_some_and(|s| s == serial) {
            return;
        }
        accepted.retain(|s| s != serial);
        if accepted.len() == ACCEPTED_KEPT {
            accepted.pop_front();
        }
        accepted.push_back(serial.to_owned());
    }

    /// Puts the CRL `der` in force for connections opened from now on: a
    /// server whose certificate it lists is refused. A CRL that no trusted
    /// CA signed is refused and the one in force stays.
    pub fn set_crl(&self, der: &[u8]) -> Result<()> {
        crate::inspect::verify_crl(der, &self.ca)?;
        let crl = CertificateRevocationListDer::from(der.to_vec());
        self.verifier.store(build_verifier(&self.roots, Some(crl))?);
        Ok(())
    }
}

fn build_verifier(
    roots: &Arc<RootCertStore>,
    crl: Option<CertificateRevocationListDer<'static>>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut builder = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider());
    if let Some(crl) = crl {
        builder = builder.with_crls([crl]);
    }
    builder
        .build()
        .map_err(|e| CertError::Tls(format!("server verifier: {e}")))
}

/// Checks a server's certificate: chain, validity and CRL through webpki,
/// then the identity instead of the host name.
#[derive(Debug)]
struct IdentityVerifier {
    trust: Arc<ClientTrust>,
    expected: Expected,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verifier = self.trust.verifier.load();
        // webpki checks the chain, the validity and the CRL before the name,
        // so a name mismatch means everything else passed: the name is not
        // what identifies a server here.
        match verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(other) => return Err(other),
        }
        let refuse = |why: String| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(WrongServer(why)),
            )))
        };
        let info = CertInfo::from_der(end_entity.as_ref(), Path::new("<server certificate>"))
            .map_err(|e| refuse(e.to_string()))?;
        let id = info.spiffe_id.map_err(|why| {
            refuse(format!(
                "the server's certificate has no usable SPIFFE ID: {why}"
            ))
        })?;
        self.expected
            .check(&id, end_entity.as_ref())
            .map_err(|why| refuse(format!("{why}; expected {}", self.expected)))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let valid = self
            .trust
            .verifier
            .load()
            .verify_tls12_signature(message, cert, dss)?;
        self.trust.record_holder(cert);
        Ok(valid)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let valid = self
            .trust
            .verifier
            .load()
            .verify_tls13_signature(message, cert, dss)?;
        self.trust.record_holder(cert);
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.verifier.load().supported_verify_schemes()
    }
}

/// The server that answered is not the one the client meant to reach.
struct WrongServer(String);

impl fmt::Display for WrongServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{WRONG_SERVER}{}", self.0)
    }
}

// rustls puts this error in its message with `Debug`: the same words.
impl fmt::Debug for WrongServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WrongServer {}

/// The rustls client config that presents `creds` and accepts only a
/// server that is `expected`, checked against `trust`.
pub fn client_config(
    creds: &Credentials,
    trust: Arc<ClientTrust>,
    expected: Expected,
) -> Result<ClientConfig> {
    let verifier = Arc::new(IdentityVerifier { trust, expected });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| CertError::Tls(format!("client certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A tonic channel to `address` (host:port) that presents `creds` and
/// reaches only a server that is `expected`; it connects on first use.
/// `tune` adjusts the endpoint (timeouts, keepalives).
pub fn connect_lazy(
    address: &str,
    creds: &Credentials,
    trust: Arc<ClientTrust>,
    expected: Expected,
    tune: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel> {
    let (endpoint, connector) = secure_endpoint(address, creds, trust, expected)?;
    Ok(tune(endpoint).connect_with_connector_lazy(connector))
}

/// As [`connect_lazy`], connecting now: fails if the configuration is
/// unusable, the server cannot be reached, or it is not the one expected.
pub async fn connect(
    address: &str,
    creds: &Credentials,
    trust: Arc<ClientTrust>,
    expected: Expected,
) -> std::result::Result<tonic::transport::Channel, ConnectError> {
    let (endpoint, connector) = secure_endpoint(address, creds, trust, expected)?;
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials or the address cannot be used.
    #[error(transparent)]
    Config(#[from] CertError),
    /// The server could not be reached, or the handshake refused it (or us).
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// The endpoint tonic speaks HTTP/2 to (the scheme is `http`: TLS is done
/// by the connector) and the connector that dials and checks the server.
fn secure_endpoint(
    address: &str,
    creds: &Credentials,
    trust: Arc<ClientTrust>,
    expected: Expected,
) -> Result<(
    tonic::transport::Endpoint,
    impl tower::Service<
        http::Uri,
        Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Error = std::io::Error,
        Future = impl Send,
    > + Send
    + Clone
    + 'static,
)> {
    let address = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
        .trim_end_matches('/')
        .to_owned();
    let host = host_of(&address);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| CertError::Tls(format!("bad server address {address:?}: {e}")))?;
    let config = Arc::new(client_config(creds, trust, expected)?);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| CertError::Tls(format!("bad endpoint {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (config, server_name, address) = (config.clone(), server_name.clone(), address.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok((endpoint, connector))
}

/// The host of `host:port`, without brackets for IPv6.
fn host_of(address: &str) -> String {
    if let Some(v6) = address.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_owned();
    }
    address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .to_owned()
}

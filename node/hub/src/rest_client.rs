//! HTTPS toward external REST systems: TLS that trusts only the system's
//! CA from its catalog record, the hub's own certificate as the client
//! certificate when the system asks for it, an API key or an OAuth2 bearer
//! token (client credentials, RFC 6749 4.4) read from the hub's secrets
//! directory, and HTTP/1.1 (what X-Road security servers speak).
//!
//! Secrets never enter the catalog: `<secrets-dir>/<system>.api-key` and
//! `<secrets-dir>/<system>.client-secret`, read at each use so a rotated
//! secret applies without restart.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use lgsp_certs::Credentials;
use lgsp_proto::{RestAuth, RestSystem};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// TLS configs by system name, with the record they were built from.
    configs: Mutex<HashMap<String, (RestSystem, Arc<ClientConfig>)>>,
    tokens: Mutex<HashMap<String, Token>>,
}

impl RestClient {
    /// A client presenting `creds` where a system asks for a client
    /// certificate, reading secrets from `secrets`, refusing answers larger
    /// than `max_response` bytes.
    pub fn new(creds: Credentials, secrets: Option<PathBuf>, max_response: usize) -> Self {
        Self {
            creds,
            secrets,
            max_response,
            configs: Mutex::default(),
            tokens: Mutex::default(),
        }
    }

    fn tls(&self, system: &RestSystem) -> Result<Arc<ClientConfig>, SendError> {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((record, config)) = configs.get(&system.name)
            && record == system
        {
            return Ok(config.clone());
        }
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
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        configs.insert(system.name.clone(), (system.clone(), config.clone()));
        Ok(config)
    }

    /// Reads the secret `<secrets-dir>/<system>.<kind>`, trimmed.
    fn secret(&self, system: &str, kind: &str) -> Result<String, SendError> {
        let Some(dir) = &self.secrets else {
            return Err(SendError::Setup(format!(
                "REST system {system} needs a secret, and the hub has no secrets directory; start it with `lgsp hub start --rest-secrets DIR` and put the secret in DIR/{system}.{kind}"
            )));
        };
        let path = dir.join(format!("{system}.{kind}"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            SendError::Setup(format!(
                "REST system {system}: cannot read its secret {}: {e} (install it with `lgsp hub rest secret`)",
                path.display()
            ))
        })?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(SendError::Setup(format!(
                "REST system {system}: its secret {} is empty",
                path.display()
            )));
        }
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
    /// reads the answer, all within `timeout`. A new connection per call:
    /// the system's certificate is checked at each.
    pub async fn send(
        &self,
        system: &RestSystem,
        url: &str,
        method: http::Method,
        headers: http::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        let config = self.tls(system)?;
        let max = self.max_response;
        let url = url.to_owned();
        tokio::time::timeout(timeout, async move {
            let rest = url
                .strip_prefix("https://")
                .ok_or_else(|| SendError::Setup(format!("{url:?} is not an https:// URL")))?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let origin = format!("https://{authority}");
            let host = lgsp_registry::rest_system::https_host(&origin).map_err(SendError::Setup)?;
            let port = authority
                .rsplit_once(':')
                .filter(|_| !authority.ends_with(']'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .unwrap_or(443);
            let server_name = ServerName::try_from(host.to_owned())
                .map_err(|e| SendError::Setup(format!("{host:?}: {e}")))?;
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| {
                    SendError::Unreachable(format!("cannot connect to {authority}: {e}"))
                })?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|e| SendError::Unreachable(format!("TLS with {authority} failed: {e}")))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                    .await
                    .map_err(|e| SendError::Unreachable(format!("HTTP with {authority}: {e}")))?;
            let driver = tokio::spawn(connection);
            let mut request = http::Request::builder()
                .method(method)
                .uri(path)
                .body(Full::new(body))
                .map_err(|e| SendError::Setup(e.to_string()))?;
            *request.headers_mut() = headers;
            request.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_str(authority)
                    .map_err(|e| SendError::Setup(e.to_string()))?,
            );
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| SendError::Unreachable(format!("{authority} did not answer: {e}")))?;
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| SendError::Unreachable(format!("reading {authority}'s answer: {e}")))?
                .to_bytes();
            driver.abort();
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

//! Outside REST systems calling province services over HTTP/JSON, on the
//! hub's REST listener (`--rest-listen`): mTLS only, the caller known from
//! its certificate alone (it must chain to the CA of a `RestClient` record
//! the provincial admin keeps with `lgsp hub rest-client`), which names the
//! outside agency it acts for. The agency holds grants like any consumer.
//!
//! `POST /v1/services/{agency}/{service}/{operation}` with a JSON body
//! `{"parameters": {...}, "payload": ...}` becomes the service's request
//! envelope; the answer is `{"request_id": ..., "data": ...}`, or an error
//! `{"code": "PERMISSION_DENIED", "message": ..., "request_id": ...}` with
//! the gRPC code mapped to an HTTP status ([`http_status`]). The hub logs
//! the exchange, signs a record of on whose behalf naming the REST client
//! and the certificate it presented, and calls the provider node as it does
//! for federation peers ([`Hub::serve_outside`]); the provider verifies the
//! record and logs the outside agency under the same request id. A service
//! the hub itself carries to a REST system is called from the hub.
//! `GET /openapi.json` describes what the caller may call ([`openapi`]).

use crate::Hub;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use lgsp_node::trace::Trace;
use lgsp_proto::{Envelope, RestClient};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Status};

pub mod openapi;

/// The most requests an HTTP/2 client has in flight on one connection to
/// the REST endpoint (each also counts against its client's limits).
pub const MAX_STREAMS: u32 = 32;

/// The request and response header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// The prefix under which REST clients' links are named in the hub's link
/// health and metrics (`rest-client:<name>`), apart from federation peers
/// and from the REST systems the hub calls (`rest:<name>`).
pub const LINK_PREFIX: &str = "rest-client:";

/// An HTTP answer of the REST endpoint.
pub type Answer = Response<Full<Bytes>>;

/// The HTTP status for a gRPC code, as `google.rpc.Code` documents it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 "client closed request" is not a registered status.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON answer with `status`, the request id in its header when known.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value, request_id: &str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(v) = header::HeaderValue::from_str(request_id)
        && !request_id.is_empty()
    {
        headers.insert(REQUEST_ID, v);
    }
    response
}

/// The JSON error answer for `status`: its code's name, its message.
pub fn error(status: &Status, request_id: &str) -> Answer {
    let mut body = serde_json::json!({
        "code": lgsp_node::refusal::code_name(status.code()),
        "message": status.message(),
    });
    if !request_id.is_empty() {
        body["request_id"] = request_id.into();
    }
    json(http_status(status.code()), &body, request_id)
}

/// The REST client whose certificate `leaf` (DER) is: the one whose CA
/// issued it. Refuses with `UNAUTHENTICATED` saying why.
pub fn client_of(hub: &Hub, leaf: Option<&[u8]>) -> Result<RestClient, Status> {
    let leaf = leaf.ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate; the hub's REST endpoint takes only mTLS callers",
        )
    })?;
    // Outside systems' certificates need not carry a SPIFFE ID: only the
    // chain to the registered CA (and the validity) is checked. X-Road
    // clients' records name a security server's CA and serve `/xroad/` only.
    let mut matching: Vec<RestClient> = hub
        .ctx
        .cache
        .rest_clients()
        .into_iter()
        .filter(|c| c.xroad_client.is_empty())
        .filter(|c| lgsp_node::obo::issued_by(leaf, &lgsp_node::obo::rest_client_roots(c)))
        .collect();
    match matching.len() {
        0 => Err(Status::unauthenticated(
            "the client certificate is not issued by the CA of a REST client this province registered (see `lgsp hub rest-client list`)",
        )),
        1 => {
            let client = matching.remove(0);
            not_revoked(hub, &client, leaf)?;
            Ok(client)
        }
        _ => {
            let names: Vec<&str> = matching.iter().map(|c| c.name.as_str()).collect();
            Err(Status::unauthenticated(format!(
                "the client certificate's CA is registered for several REST clients ({}); the provincial admin gives each its own CA",
                names.join(", ")
            )))
        }
    }
}

/// Refuses with `UNAUTHENTICATED` a certificate `leaf` of `client` that the
/// CRL in force for it revokes, naming the serial and the CRL number. The
/// handshake takes such a certificate (only its chain is checked there), so
/// that the refusal can say this; every call is checked, on connections
/// opened before the CRL too.
pub(crate) fn not_revoked(hub: &Hub, client: &RestClient, leaf: &[u8]) -> Result<(), Status> {
    hub.ctx
        .rest_client_crls
        .check_rest_client(client, leaf)
        .map_err(Status::from)
}

/// Takes one of `client`'s slots, or refuses with `RESOURCE_EXHAUSTED`
/// naming it and the limit; counted in its link's health either way.
pub(crate) fn admit(hub: &Hub, client: &RestClient) -> Result<crate::limiter::Permit, Status> {
    let name = format!("{LINK_PREFIX}{}", client.name);
    let or = |v: u32, d: u32| if v == 0 { d } else { v };
    let limit = crate::limiter::Limit {
        max_in_flight: or(client.max_in_flight, crate::limiter::DEFAULT_MAX_IN_FLIGHT),
        rate_per_second: or(
            client.rate_per_second,
            crate::limiter::DEFAULT_RATE_PER_SECOND,
        ),
    };
    let permit = hub.inward_limits.acquire(&name, limit);
    hub.health_of(&name).inward(permit.is_ok());
    permit.map_err(Status::from)
}

/// The body of a call: the envelope's parameters and payload.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    #[serde(default)]
    parameters: HashMap<String, String>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

/// `/v1/services/{agency}/{service}/{operation}` as (service id, operation).
fn call_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v1/services/")?;
    let mut parts = rest.split('/');
    let (agency, service, operation) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [agency, service, operation].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some((format!("{agency}/{service}"), operation.to_owned()))
}

/// The request id of a call: the caller's `X-Request-Id` when well formed,
/// else a new one.
pub fn request_id_of<B>(request: &Request<B>) -> String {
    let mut id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = lgsp_node::trace::own_request_id(&mut id);
    id
}

/// Answers one HTTP request of the REST endpoint from the caller whose
/// certificate is `leaf`.
pub async fn handle(
    hub: Arc<Hub>,
    leaf: Option<Vec<u8>>,
    request: Request<hyper::body::Incoming>,
) -> Answer {
    let started = Instant::now();
    let request_id = request_id_of(&request);
    let path = request.uri().path().to_owned();
    if path.starts_with(crate::xroad::PATH_PREFIX) {
        return crate::xroad::handle(hub, leaf, request, started).await;
    }
    let client = match client_of(&hub, leaf.as_deref()) {
        Ok(c) => c,
        Err(s) => return error(&s, &request_id),
    };
    if path == "/openapi.json" {
        if request.method() != Method::GET {
            return error(
                &Status::unimplemented("use GET for /openapi.json"),
                &request_id,
            );
        }
        let doc = openapi::document(&hub, &client);
        return json(StatusCode::OK, &doc, "");
    }
    let Some((service_id, operation)) = call_path(&path) else {
        return error(
            &Status::not_found(format!(
                "no such path {path:?}; calls are POST /v1/services/{{agency}}/{{service}}/{{operation}} (see GET /openapi.json)"
            )),
            &request_id,
        );
    };
    if request.method() != Method::POST {
        let mut answer = error(
            &Status::unimplemented(format!("use POST for {path}")),
            &request_id,
        );
        *answer.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        answer
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return answer;
    }
    let permit = match admit(&hub, &client) {
        Ok(p) => p,
        Err(s) => return error(&s, &request_id),
    };
    let max = hub.ctx.config.limits.max_message_bytes;
    let body = Limited::new(request.into_body(), max).collect().await;
    let consumer = Caller {
        rest_client: client.name.clone(),
        agency: client.agency_code.clone(),
        trust_domain: client.trust_domain.clone(),
        certificate: leaf.unwrap_or_default(),
    };
    let result = match body {
        Err(e) => Err(Status::invalid_argument(format!(
            "the request body cannot be read (at most {max} bytes): {e}"
        ))),
        Ok(body) => match serde_json::from_slice::<CallBody>(&body.to_bytes()) {
            Err(e) => Err(Status::invalid_argument(format!(
                "the body is not the JSON of a call ({{\"parameters\": {{\"name\": \"text\"}}, \"payload\": any JSON}}): {e}"
            ))),
            Ok(body) => Ok(Envelope {
                service_id,
                operation,
                parameters: body.parameters,
                payload: body
                    .payload
                    .map(|p| p.to_string().into_bytes())
                    .unwrap_or_default(),
                request_id: request_id.clone(),
            }),
        },
    };
    let answer = forward(&hub, &client, &consumer, result, started).await;
    drop(permit);
    match answer {
        Ok(payload) => json(
            StatusCode::OK,
            &serde_json::json!({"request_id": request_id, "data": data_of(&payload)}),
            &request_id,
        ),
        Err(s) => error(&s, &request_id),
    }
}

/// Who an HTTP call is made for, as the hub authenticated it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The REST client record's name.
    pub(crate) rest_client: String,
    /// The outside agency it acts for.
    pub(crate) agency: String,
    /// That agency's trust domain.
    pub(crate) trust_domain: String,
    /// The TLS client certificate it presented, DER.
    pub(crate) certificate: Vec<u8>,
}

/// Logs the call in the hub's sharing log, checks that `client` is offered
/// the service and its agency holds a grant, and has the provider answer
/// `envelope` (or the refusal `envelope` already is); the payload.
pub(crate) async fn forward(
    hub: &Hub,
    client: &RestClient,
    caller: &Caller,
    envelope: Result<Envelope, Status>,
    started: Instant,
) -> Result<Vec<u8>, Status> {
    let label = format!("{}@{}", caller.agency, caller.trust_domain);
    let (env, refused) = match envelope {
        Ok(env) => (env, None),
        Err(s) => (Envelope::default(), Some(s)),
    };
    let mut trace = Trace::start(
        &hub.ctx,
        "hub",
        &env.request_id,
        &label,
        &env.service_id,
        &env.operation,
        &env.encode_to_vec(),
        started,
        None,
    );
    let result = match refused {
        Some(s) => Err(s),
        None => serve(hub, client, caller, &env, &mut trace).await,
    };
    let payload = result.as_ref().map_or(&[][..], |p| p.as_slice());
    trace.finish(
        &Sha256::digest(payload),
        lgsp_node::trace::code_of(&result),
        payload.len() as u64,
    );
    if let Err(s) = &result {
        tracing::info!(rest_client = %client.name, request_id = %env.request_id, service = %env.service_id, code = ?s.code(), reason = %s.message(), "REST call refused");
    }
    result
}

async fn serve(
    hub: &Hub,
    client: &RestClient,
    caller: &Caller,
    env: &Envelope,
    trace: &mut Trace,
) -> Result<Vec<u8>, Status> {
    // An unknown service and one not offered to this client read the same:
    // the client learns nothing of what it is not offered.
    if !client.services.contains(&env.service_id) || !hub.ctx.cache.has_service(&env.service_id) {
        return Err(Status::not_found(format!(
            "no service {} is offered to REST client {} (see GET /openapi.json; the provincial admin offers services with `lgsp hub rest-client add --service`)",
            env.service_id, client.name
        )));
    }
    if !hub.granted(&env.service_id, &caller.agency, &caller.trust_domain) {
        return Err(Status::permission_denied(format!(
            "agency {} of {} holds no active grant for {}; the provider grants it (`lgsp access grant --service {} --consumer {}`)",
            caller.agency, caller.trust_domain, env.service_id, env.service_id, caller.agency
        )));
    }
    let signer = hub
        .ctx
        .obo_signer()
        .map_err(|e| Status::internal(format!("the hub cannot sign: {e}")))?;
    let signed = signer
        .sign_for_rest_client(
            env,
            lgsp_registry::calendar::unix_now_ms(),
            &caller.rest_client,
            &caller.certificate,
        )
        .map_err(|e| Status::internal(format!("the hub cannot sign: {e}")))?;
    trace.on_behalf_of(&signed);
    let deadline =
        lgsp_node::deadline::Deadline::after(std::time::Instant::now(), hub.call_timeout);
    hub.serve_outside(&caller.agency, &caller.trust_domain, env, &signed, deadline)
        .await
        .map(|answered| answered.payload)
}

/// The answer's `data`: the payload as JSON when it is JSON, else as text,
/// else as hex.
pub(crate) fn data_of(payload: &[u8]) -> serde_json::Value {
    if payload.is_empty() {
        return serde_json::Value::Null;
    }
    if let Ok(v) = serde_json::from_slice(payload) {
        return v;
    }
    match std::str::from_utf8(payload) {
        Ok(text) => text.into(),
        Err(_) => serde_json::json!({ "hex": hex::encode(payload) }),
    }
}

/// Binds the REST listener on `addr` and serves it until `stopped` turns
/// true: mTLS with the catalog's REST clients' CAs (followed while the hub
/// runs), each connection bounded by `guard`. Fails when `addr` cannot be
/// bound or the hub's certificate is unusable.
pub async fn listen(
    hub: Arc<Hub>,
    addr: std::net::SocketAddr,
    guard: lgsp_node::listener::Guard,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<std::net::SocketAddr, crate::HubError> {
    let tls = lgsp_certs::tls::ServerTls::http(hub.ctx.creds.clone())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::HubError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| crate::HubError::Listen { addr, source })?;
    tokio::spawn(follow_clients(hub.clone(), tls.clone(), stopped.clone()));
    let mut incoming = tls.handshakes(lgsp_node::listener::accept(listener, guard));
    let mut until = stopped;
    tokio::spawn(async move {
        use tokio_stream::StreamExt as _;
        loop {
            let stream = tokio::select! {
                s = incoming.next() => match s {
                    Some(Ok(s)) => s,
                    Some(Err(_)) => continue,
                    None => return,
                },
                _ = until.wait_for(|s| *s) => return,
            };
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            let hub = hub.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let (hub, leaf) = (hub.clone(), leaf.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(hub, leaf, request).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // HTTP/2 when the client chose it in the handshake (ALPN h2),
                // else HTTP/1.1: the connection's first bytes tell which.
                let mut http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                // Requests at once on one HTTP/2 connection, as on as many
                // HTTP/1.1 connections: the listener's bound counts these.
                http.http2().max_concurrent_streams(MAX_STREAMS);
                if let Err(error) = http.serve_connection(io, service).await {
                    tracing::debug!(%error, "REST connection ended");
                }
            });
        }
    });
    tracing::info!(%bound, "REST endpoint listening (mTLS)");
    Ok(bound)
}

/// Keeps the REST listener's trust equal to the catalog's REST clients'
/// CAs, at each catalog change, until `stopped` turns true. With none, it
/// holds the province's own CA (rustls needs one), whose certificates no
/// REST client record matches.
async fn follow_clients(
    hub: Arc<Hub>,
    tls: Arc<lgsp_certs::tls::ServerTls>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = hub.ctx.cache.subscribe();
    let mut applied: Option<Vec<String>> = None;
    loop {
        let mut cas: Vec<String> = hub
            .ctx
            .cache
            .rest_clients()
            .into_iter()
            .map(|c| c.ca_pem)
            .collect();
        cas.sort();
        cas.dedup();
        if applied.as_ref() != Some(&cas) {
            let mut roots: Vec<_> = cas
                .iter()
                .flat_map(|pem| {
                    lgsp_node::obo::rest_client_roots(&RestClient {
                        ca_pem: pem.clone(),
                        ..Default::default()
                    })
                })
                .collect();
            if roots.is_empty() {
                roots = hub.ctx.creds.roots.clone();
            }
            match tls.set_trust(roots, Vec::new()) {
                Ok(()) => tracing::info!(
                    clients = cas.len(),
                    "REST endpoint trusts the catalog's REST clients' CAs"
                ),
                Err(error) => {
                    tracing::warn!(%error, "a REST client's CA is unusable; the REST endpoint keeps its trust");
                }
            }
            applied = Some(cas);
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_the_http_statuses_google_rpc_documents() {
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[test]
    fn a_call_path_names_agency_service_and_operation() {
        assert_eq!(
            call_path("/v1/services/000.00.12.H62/ho-tich/get"),
            Some(("000.00.12.H62/ho-tich".into(), "get".into()))
        );
        assert_eq!(call_path("/v1/services/000.00.12.H62/ho-tich"), None);
        assert_eq!(call_path("/v1/services/a/b/c/d"), None);
        assert_eq!(call_path("/v1/services//b/c"), None);
    }

    #[test]
    fn a_well_formed_request_id_is_kept_and_a_bad_one_replaced() {
        let with = |id: &str| {
            request_id_of(
                &Request::builder()
                    .header(REQUEST_ID, id)
                    .body(())
                    .unwrap_or_default(),
            )
        };
        assert_eq!(with("abc-123"), "abc-123");
        let replaced = with("bad id with spaces");
        assert_ne!(replaced, "bad id with spaces");
        assert!(!replaced.is_empty());
    }

    #[test]
    fn the_error_body_names_the_code_and_says_why() {
        let answer = error(&Status::permission_denied("no grant"), "r-1");
        assert_eq!(answer.status(), StatusCode::FORBIDDEN);
        assert_eq!(answer.headers()[REQUEST_ID], "r-1");
    }

    #[test]
    fn data_is_json_when_the_payload_is_json() {
        assert_eq!(data_of(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(data_of(b"plain"), serde_json::json!("plain"));
        assert_eq!(data_of(&[0xff, 0x00]), serde_json::json!({"hex": "ff00"}));
    }
}

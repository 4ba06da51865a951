//! The hub as an X-Road service provider: an X-Road security server calls
//! the hub's REST listener as the provider information system, as the
//! X-Road Message Protocol for REST (PR-REST 1.0.4, `r1`) describes. The
//! security server maps the X-Road service to a URL of the hub,
//! `https://hub/xroad/{agency}/{service}`, and appends the client's path
//! (`/{operation}`) and query (the envelope's parameters); it sends the
//! client in `X-Road-Client` (`INSTANCE/CLASS/MEMBER[/SUBSYSTEM]`, each part
//! percent-encoded), the message id in `X-Road-Id`, the service in
//! `X-Road-Service`, and optionally `X-Road-UserId`.
//!
//! The client is mapped to an agency by a `RestClient` record whose
//! `xroad_client` is that identifier, and the security server's TLS
//! certificate must chain to that record's CA. Then the call is authorized,
//! logged and forwarded as any REST call ([`crate::rest_in::forward`]). The
//! answer is the service's data as-is, with `X-Road-Id`, `X-Road-Client`,
//! `X-Road-Service` (and `X-Road-Request-Id` when sent) echoed; errors are
//! X-Road's error body `{"type", "message", "detail"}`. The hub sets no
//! `X-Road-Error` and no `X-Road-Request-Hash`: the protocol reserves both
//! to the security servers (4.3).

use crate::Hub;
use crate::rest_in::{Answer, Caller, http_status, json};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use lgsp_proto::{Envelope, RestClient};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Status};

/// Where the security server reaches the hub's services.
pub const PATH_PREFIX: &str = "/xroad/";

/// The X-Road headers the hub reads and echoes.
pub const CLIENT: &str = "x-road-client";
/// The message id.
pub const ID: &str = "x-road-id";
/// The service called, as X-Road names it.
pub const SERVICE: &str = "x-road-service";
/// The user whose action caused the call.
pub const USER_ID: &str = "x-road-userid";
/// The request id the security servers give.
pub const REQUEST_ID: &str = "x-road-request-id";

/// The most bytes of an X-Road identifier the hub reads.
const MAX_ID: usize = 255;

/// An X-Road error answer: `{"type", "message", "detail"}`, the detail
/// being the request id the hub logged it under.
fn error(status: &Status, request_id: &str, echo: &HeaderMap) -> Answer {
    let code = status.code();
    let side = if http_status(code).is_client_error() {
        "Client"
    } else {
        "Server"
    };
    let body = serde_json::json!({
        "type": format!("{side}.{}", camel(lgsp_node::refusal::code_name(code))),
        "message": status.message(),
        "detail": request_id,
    });
    let mut answer = json(http_status(code), &body, request_id);
    echo_headers(&mut answer, echo);
    answer
}

/// `PERMISSION_DENIED` as `PermissionDenied`.
fn camel(code: &str) -> String {
    code.split('_')
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut chars = lower.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn echo_headers(answer: &mut Answer, echo: &HeaderMap) {
    for (name, value) in echo {
        answer.headers_mut().insert(name.clone(), value.clone());
    }
}

/// An X-Road identifier's parts, percent-decoded: `min..=max` of them, each
/// non-empty UTF-8.
pub fn parts(id: &str, min: usize, max: usize) -> Result<Vec<String>, String> {
    if id.len() > MAX_ID {
        return Err(format!("longer than {MAX_ID} bytes"));
    }
    let raw: Vec<&str> = id.split('/').collect();
    if raw.len() < min || raw.len() > max {
        return Err(format!(
            "{} parts separated by '/', where {min} to {max} are expected",
            raw.len()
        ));
    }
    raw.iter()
        .map(|p| {
            let decoded = percent_decode(p)?;
            if decoded.is_empty() {
                Err("an empty part".to_owned())
            } else {
                Ok(decoded)
            }
        })
        .collect()
}

/// `%XX` escapes undone, as UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("a bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// The query's parameters, percent-decoded (`+` is a space).
fn query_parameters(query: Option<&str>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " "))?;
        let v = percent_decode(&v.replace('+', " "))?;
        if out.insert(k.clone(), v).is_some() {
            // HTTP parameter pollution (PR-REST 4.2): refuse, never pick one.
            return Err(format!("query parameter {k:?} is given twice"));
        }
    }
    Ok(out)
}

/// The X-Road client's identifier as records hold it: its decoded parts
/// joined with '/'.
pub fn client_id(header: &str) -> Result<String, String> {
    parts(header, 3, 4).map(|p| p.join("/"))
}

/// Answers a security server's call on `/xroad/...`.
pub async fn handle(
    hub: Arc<Hub>,
    leaf: Option<Vec<u8>>,
    request: Request<hyper::body::Incoming>,
    started: Instant,
) -> Answer {
    let headers = request.headers();
    let mut echo = HeaderMap::new();
    for name in [ID, CLIENT, SERVICE, REQUEST_ID] {
        if let Some(v) = headers.get(name) {
            echo.insert(name, v.clone());
        }
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut request_id = text(ID).unwrap_or_default().to_owned();
    let _ = lgsp_node::trace::own_request_id(&mut request_id);
    let bad = |why: String| Status::invalid_argument(why);
    let checked = (|| {
        let client = text(CLIENT).ok_or_else(|| {
            bad(
                "the X-Road-Client header is missing (X-Road Message Protocol for REST, 4.3)"
                    .into(),
            )
        })?;
        let client = client_id(client)
            .map_err(|e| bad(format!("X-Road-Client {client:?} is malformed: {e}")))?;
        text(ID).filter(|v| !v.is_empty()).ok_or_else(|| {
            bad("the X-Road-Id header is missing; the provider security server sends it".into())
        })?;
        let service = text(SERVICE).ok_or_else(|| {
            bad(
                "the X-Road-Service header is missing; the provider security server sends it"
                    .into(),
            )
        })?;
        parts(service, 4, 5)
            .map_err(|e| bad(format!("X-Road-Service {service:?} is malformed: {e}")))?;
        if let Some(user) = text(USER_ID) {
            tracing::debug!(%user, %request_id, "X-Road user");
        }
        Ok::<_, Status>(client)
    })();
    let xroad_client = match checked {
        Ok(c) => c,
        Err(s) => return error(&s, &request_id, &echo),
    };
    let client = match client_of(&hub, leaf.as_deref(), &xroad_client) {
        Ok(c) => c,
        Err(s) => return error(&s, &request_id, &echo),
    };
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let _permit = match crate::rest_in::admit(&hub, &client) {
        Ok(p) => p,
        Err(s) => return error(&s, &request_id, &echo),
    };
    let max = hub.ctx.config.limits.max_message_bytes;
    let body = Limited::new(request.into_body(), max).collect().await;
    let envelope = (|| {
        let rest = path.strip_prefix(PATH_PREFIX).unwrap_or_default();
        let p: Vec<&str> = rest.split('/').collect();
        let [agency, service, operation] = p.as_slice() else {
            return Err(Status::not_found(format!(
                "no such path {path:?}; the security server maps the service to {PATH_PREFIX}{{agency}}/{{service}} and the client appends /{{operation}}"
            )));
        };
        let parameters = query_parameters(query.as_deref()).map_err(bad)?;
        let body = body
            .map_err(|e| {
                bad(format!(
                    "the request body cannot be read (at most {max} bytes): {e}"
                ))
            })?
            .to_bytes();
        let payload = if body.is_empty() {
            Vec::new()
        } else {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| bad(format!("the request body is not JSON: {e}")))?;
            v.to_string().into_bytes()
        };
        Ok(Envelope {
            service_id: format!(
                "{}/{}",
                percent_decode(agency).map_err(bad)?,
                percent_decode(service).map_err(bad)?
            ),
            operation: percent_decode(operation).map_err(bad)?,
            parameters,
            payload,
            request_id: request_id.clone(),
        })
    })();
    let caller = Caller {
        rest_client: client.name.clone(),
        agency: client.agency_code.clone(),
        trust_domain: client.trust_domain.clone(),
        certificate: leaf.unwrap_or_default(),
    };
    match crate::rest_in::forward(&hub, &client, &caller, envelope, started).await {
        Ok(payload) => {
            let mut answer = json(
                StatusCode::OK,
                &crate::rest_in::data_of(&payload),
                &request_id,
            );
            echo_headers(&mut answer, &echo);
            answer
        }
        Err(s) => error(&s, &request_id, &echo),
    }
}

/// The REST client record for X-Road client `xroad_client`, whose CA
/// issued the security server's certificate `leaf`.
fn client_of(hub: &Hub, leaf: Option<&[u8]>, xroad_client: &str) -> Result<RestClient, Status> {
    let leaf = leaf.ok_or_else(|| {
        Status::unauthenticated("no client certificate; the security server connects with mTLS")
    })?;
    let client = hub
        .ctx
        .cache
        .rest_clients()
        .into_iter()
        .find(|c| c.xroad_client == xroad_client)
        .ok_or_else(|| {
            Status::new(
                Code::PermissionDenied,
                format!(
                    "X-Road client {xroad_client} is not mapped to an agency of this province's catalog (`lgsp hub rest-client add --xroad-client {xroad_client}`)"
                ),
            )
        })?;
    if !lgsp_node::obo::issued_by(leaf, &lgsp_node::obo::rest_client_roots(&client)) {
        return Err(Status::unauthenticated(format!(
            "the security server's certificate is not issued by the CA registered for X-Road client {xroad_client} (REST client {})",
            client.name
        )));
    }
    crate::rest_in::not_revoked(hub, &client, leaf)?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_a_failed_exchange_logs_are_the_x_road_ids() {
        assert_eq!(lgsp_node::trace::EXTERNAL_ID_HEADERS, [ID, REQUEST_ID]);
    }

    #[test]
    fn an_xroad_client_has_three_or_four_percent_encoded_parts() {
        assert_eq!(
            client_id("VN/GOV/000.00.07.G01/hotich").unwrap(),
            "VN/GOV/000.00.07.G01/hotich"
        );
        assert_eq!(client_id("VN/GOV/M%C3%A3").unwrap(), "VN/GOV/Mã");
        assert!(client_id("VN/GOV").is_err());
        assert!(client_id("VN//M/S").is_err());
        assert!(client_id("VN/GOV/M/S/extra").is_err());
        assert!(client_id("VN/GOV/%ZZ").is_err());
    }

    #[test]
    fn a_query_parameter_given_twice_is_refused() {
        assert!(query_parameters(Some("key=1&key=2")).is_err());
        let p = query_parameters(Some("key=C%C3%B4ng+d%C3%A2n&fields=a")).unwrap();
        assert_eq!(p["key"], "Công dân");
    }

    #[test]
    fn error_types_say_which_side_and_why() {
        let answer = error(&Status::permission_denied("no"), "r", &HeaderMap::new());
        assert_eq!(answer.status(), StatusCode::FORBIDDEN);
        assert_eq!(camel("PERMISSION_DENIED"), "PermissionDenied");
        assert!(answer.headers().get("x-road-error").is_none());
    }
}

//! Province nodes calling an external REST system through the hub: a
//! province service published under the hub's node whose catalog route
//! (`lgsp hub rest route`) names a REST system. The hub authorizes the
//! caller's grant as any provider does, maps the envelope to an HTTP
//! request (the operation picks method and path template, parameters fill
//! the path and query, the payload is the JSON body), calls the system
//! under its deadline, limits and circuit breaker, and maps the answer
//! back: the body as the payload, or an HTTP status (or X-Road error) as a
//! gRPC status. The node underneath logs the exchange with its request id,
//! which the system receives as `X-Request-Id`.
//!
//! When the system is an X-Road security server, the hub is an X-Road
//! client information system (X-Road Message Protocol for REST 1.0.3):
//! `{base}/r1/{serviceId}{path}` with `X-Road-Client`, `X-Road-Id` and
//! `X-Road-UserId`; see [`xroad_status`].

use crate::Hub;
use crate::health::Outcome;
use crate::limiter::{Limit, LimitError};
use crate::rest_client::SendError;
use bytes::Bytes;
use lgsp_certs::{Peer, Role};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Envelope, RecordKind, RestRoute, RestSystem};
use lgsp_registry::rest_system::{self, PathTemplate};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;

/// A call's deadline when the system's record says 0.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The name a REST system's link has in the hub's health and metrics:
/// `rest:<name>` (a colon no peer name holds).
pub fn link_name(system: &str) -> String {
    format!("rest:{system}")
}

/// The route carrying `service_id`, if the hub `hub_key` serves it.
pub fn route_of(hub: &Hub, service_id: &str) -> Option<RestRoute> {
    let Value::RestRoute(route) = hub.ctx.cache.get(RecordKind::RestRoute, service_id)? else {
        return None;
    };
    let served_here = hub
        .ctx
        .cache
        .with_service(service_id, |s| {
            s.origin.is_empty() && format!("{}/{}", s.agency_code, s.node) == hub.key()
        })
        .unwrap_or(false);
    served_here.then_some(route)
}

/// REST system `name`, as the catalog holds it.
pub fn system(hub: &Hub, name: &str) -> Option<RestSystem> {
    match hub.ctx.cache.get(RecordKind::RestSystem, name)? {
        Value::RestSystem(s) if s.name == name => Some(s),
        _ => None,
    }
}

/// Every REST system of the catalog.
pub fn systems(hub: &Hub) -> Vec<RestSystem> {
    hub.ctx
        .cache
        .all_of(RecordKind::RestSystem)
        .into_iter()
        .filter_map(|r| match r.value {
            Some(Value::RestSystem(s)) => Some(s),
            _ => None,
        })
        .collect()
}

/// The HTTP request an envelope becomes, before credentials.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The method.
    pub method: http::Method,
    /// The full URL.
    pub url: String,
    /// The body (the payload, for POST, PUT, PATCH).
    pub body: Option<Bytes>,
}

/// Maps `env` to the HTTP request for `route` on `system`: the operation
/// names the method and path template; the parameters fill the path's
/// placeholders and the operation's query names; the payload, JSON, is the
/// body of a POST, PUT or PATCH. Refuses (`INVALID_ARGUMENT`, saying
/// what is accepted) an unknown operation, a missing path parameter, a
/// parameter the operation does not name, a payload that is not JSON, or a
/// payload sent to a method without a body.
pub fn map_request(
    system: &RestSystem,
    route: &RestRoute,
    env: &Envelope,
) -> Result<Mapped, Status> {
    let op = route
        .operations
        .iter()
        .find(|o| o.name == env.operation)
        .ok_or_else(|| {
            let names: Vec<&str> = route.operations.iter().map(|o| o.name.as_str()).collect();
            Status::invalid_argument(format!(
                "service {} has no operation {:?}; it has: {}",
                env.service_id,
                env.operation,
                names.join(", ")
            ))
        })?;
    let template =
        PathTemplate::parse(&op.path).map_err(|e| Status::failed_precondition(e.to_string()))?;
    let path = template
        .render(&env.parameters)
        .map_err(|e| Status::invalid_argument(format!("{} {}: {e}", env.service_id, op.name)))?;
    let known: Vec<&str> = template
        .params()
        .chain(op.query.iter().map(String::as_str))
        .collect();
    let mut unknown: Vec<&str> = env
        .parameters
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(Status::invalid_argument(format!(
            "{} {} does not take parameter(s) {}; it takes: {}",
            env.service_id,
            op.name,
            unknown.join(", "),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    }
    let query: Vec<String> = op
        .query
        .iter()
        .filter_map(|q| {
            env.parameters.get(q).map(|v| {
                format!(
                    "{}={}",
                    rest_system::encode_query(q),
                    rest_system::encode_query(v)
                )
            })
        })
        .collect();
    let base = system.base_url.trim_end_matches('/');
    let mut url = match (&system.xroad, route.xroad_service.as_str()) {
        (Some(_), service) => {
            let service =
                rest_system::xroad_service_path(service).map_err(Status::failed_precondition)?;
            format!("{base}/r1/{service}{path}")
        }
        (None, _) => format!("{base}{path}"),
    };
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    let body = if rest_system::has_body(&op.method) {
        if !env.payload.is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&env.payload).is_err()
        {
            return Err(Status::invalid_argument(format!(
                "{} {} sends the payload as a JSON body; the payload is not JSON (UTF-8)",
                env.service_id, op.name
            )));
        }
        Some(Bytes::copy_from_slice(&env.payload))
    } else if env.payload.is_empty() {
        None
    } else {
        return Err(Status::invalid_argument(format!(
            "{} {} is a {} and carries no body; send its values as parameters",
            env.service_id, op.name, op.method
        )));
    };
    let method = http::Method::from_bytes(op.method.as_bytes())
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    Ok(Mapped { method, url, body })
}

fn snippet(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
    if text.trim().is_empty() {
        "(no body)".into()
    } else {
        text
    }
}

/// The gRPC status for an HTTP error answer `status` of REST system
/// `system` (not an X-Road error): 400 and 422 `INVALID_ARGUMENT`, 401 and
/// 403 `PERMISSION_DENIED`, 404 `NOT_FOUND`, 408 `DEADLINE_EXCEEDED`, 409
/// `ABORTED`, 429 `RESOURCE_EXHAUSTED`, 5xx `UNAVAILABLE`, a redirect
/// `FAILED_PRECONDITION` (never followed), other 4xx `FAILED_PRECONDITION`.
/// Each names the system and quotes the start of its answer.
pub fn http_status(system: &str, status: u16, body: &[u8]) -> Status {
    let said = snippet(body);
    match status {
        400 | 422 => Status::invalid_argument(format!(
            "REST system {system} refused the request as invalid ({status}): {said}"
        )),
        401 | 403 => Status::permission_denied(format!(
            "REST system {system} refused the hub's credentials or this request ({status}): {said}; the provincial admin checks the system's authentication (lgsp hub rest list)"
        )),
        404 => Status::not_found(format!("REST system {system} found nothing (404): {said}")),
        408 => Status::deadline_exceeded(format!(
            "REST system {system} timed out the request (408): {said}"
        )),
        409 => Status::aborted(format!(
            "REST system {system} reports a conflict (409): {said}"
        )),
        429 => Status::resource_exhausted(format!(
            "REST system {system} is limiting calls (429): {said}; retry later"
        )),
        500..=599 => Status::unavailable(format!("REST system {system} failed ({status}): {said}")),
        300..=399 => Status::failed_precondition(format!(
            "REST system {system} answered with a redirect ({status}), which the hub does not follow; the provincial admin corrects its base URL"
        )),
        _ => Status::failed_precondition(format!(
            "REST system {system} refused the request ({status}): {said}"
        )),
    }
}

/// An X-Road error answer (PR-REST 4.6): the `type`, `message` and
/// `detail` of its JSON body.
#[derive(Debug, Default, serde::Deserialize, PartialEq, Eq)]
pub struct XRoadError {
    /// E.g. `Server.ServerProxy.ServiceFailed`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// An id the security server logged it under.
    #[serde(default)]
    pub detail: String,
}

/// The gRPC status for an X-Road error (an answer carrying `X-Road-Error`,
/// whose value is the error type): access refused (`AccessDenied`,
/// `Unauthorized`) `PERMISSION_DENIED`; an unknown service or member
/// `NOT_FOUND`; another `Client.*` error `INVALID_ARGUMENT` (the hub's
/// request broke the protocol); a `Server.*` error (either security
/// server, or the provider behind it) `UNAVAILABLE`, naming the system.
pub fn xroad_status(system: &str, header: &str, body: &[u8]) -> Status {
    let mut e: XRoadError = serde_json::from_slice(body).unwrap_or_default();
    if e.kind.is_empty() {
        header.clone_into(&mut e.kind);
    }
    if e.message.is_empty() {
        e.message = snippet(body);
    }
    let text = format!(
        "X-Road error {} from security server {system}: {}{}",
        e.kind,
        e.message,
        if e.detail.is_empty() {
            String::new()
        } else {
            format!(" (detail {})", e.detail)
        }
    );
    let kind = e.kind.to_ascii_lowercase();
    if kind.contains("accessdenied") || kind.contains("unauthorized") {
        Status::permission_denied(text)
    } else if kind.contains("unknownservice") || kind.contains("unknownmember") {
        Status::not_found(text)
    } else if kind.starts_with("client") {
        Status::invalid_argument(text)
    } else {
        Status::unavailable(text)
    }
}

/// Whether an answer means the system is failing (counted by its breaker).
fn is_failure(reply: &crate::rest_client::Reply) -> bool {
    reply.status >= 500
}

/// Closes the kept connections to REST system `name` once its breaker is
/// open: the probe that follows connects anew.
fn close_if_open(hub: &Hub, breaker: &crate::breaker::Breaker, name: &str) {
    if matches!(breaker.state(), crate::breaker::State::Open { .. }) {
        hub.rest.drop_connections(name);
    }
}

/// Carries `env` from province node `caller` to the REST system of `route`,
/// once its agency's grant is checked.
pub async fn forward(
    hub: &Arc<Hub>,
    caller: &Peer,
    env: &Envelope,
    route: RestRoute,
) -> Result<lgsp_node::context::Forwarded, Status> {
    if caller.id.role != Role::Node {
        return Err(Status::permission_denied(format!(
            "{} is a {}; only agencies' nodes call services through the hub",
            caller.id, caller.id.role
        )));
    }
    let ctx = &hub.ctx;
    lgsp_node::access::authorize(
        &ctx.cache,
        &ctx.config.agency,
        caller,
        &env.service_id,
        lgsp_registry::calendar::unix_now(),
    )?;
    carry(
        hub,
        caller.id.agency.as_str(),
        &caller.id.trust_domain,
        env,
        route,
        None,
    )
    .await
}

/// Carries `env` for agency `agency` of `trust_domain`, whose grant was
/// checked (a province node's by [`forward`], another instance's or an
/// outside REST client's by [`Hub::serve_outside`]), to the REST system of
/// `route`, within the system's timeout and `deadline` (the caller's, when
/// known). The system learns the consumer agency as nodes tell their
/// backends: `x-lgsp-consumer-agency`, `agency@trust-domain` for another
/// instance's.
pub(crate) async fn carry(
    hub: &Hub,
    agency: &str,
    trust_domain: &str,
    env: &Envelope,
    route: RestRoute,
    deadline: Option<lgsp_node::deadline::Deadline>,
) -> Result<lgsp_node::context::Forwarded, Status> {
    let system = system(hub, &route.system).ok_or_else(|| {
        Status::failed_precondition(format!(
            "service {} is carried to REST system {}, which is no longer in the catalog; the provincial admin adds it again (lgsp hub rest add) or removes the route",
            env.service_id, route.system
        ))
    })?;
    let mapped = map_request(&system, &route, env)?;
    let link = link_name(&system.name);
    let health = hub.health_of(&link);
    let limit = Limit {
        max_in_flight: if system.max_in_flight == 0 {
            crate::limiter::DEFAULT_MAX_IN_FLIGHT
        } else {
            system.max_in_flight
        },
        rate_per_second: if system.rate_per_second == 0 {
            crate::limiter::DEFAULT_RATE_PER_SECOND
        } else {
            system.rate_per_second
        },
    };
    let _permit = hub.rest_limits.acquire(&system.name, limit).map_err(|e| {
        health.outward(Outcome::Refused, Duration::ZERO, "");
        let name = &system.name;
        Status::resource_exhausted(match e {
            LimitError::InFlight { max, .. } => format!(
                "REST system {name} already has {max} calls in flight from this province (its limit); retry shortly, or the provincial admin raises it with `lgsp hub rest add --name {name} ... --max-in-flight N`"
            ),
            LimitError::Rate { rate, .. } => format!(
                "calls to REST system {name} are over its limit of {rate} per second; retry shortly, or the provincial admin raises it with `lgsp hub rest add --name {name} ... --rate N`"
            ),
        })
    })?;
    let breaker = hub.rest_breaker(&system.name);
    let attempt = breaker.attempt(Instant::now()).map_err(|wait| {
        health.outward(Outcome::Refused, Duration::ZERO, "");
        Status::unavailable(format!(
            "REST system {} ({}) is failing: its circuit is open after repeated failures; next try in {} s",
            system.name,
            system.base_url,
            wait.as_secs().max(1)
        ))
    })?;
    let timeout = if system.timeout_ms == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(u64::from(system.timeout_ms))
    };
    let timeout = deadline.map_or(timeout, |d| timeout.min(d.left()));
    let consumer_label = if trust_domain == hub.id.trust_domain {
        agency.to_owned()
    } else {
        format!("{agency}@{trust_domain}")
    };
    let mut headers = http::HeaderMap::new();
    let header = |v: &str| {
        http::HeaderValue::from_str(v)
            .map_err(|_| Status::invalid_argument(format!("{v:?} cannot travel in an HTTP header")))
    };
    headers.insert("x-request-id", header(&env.request_id)?);
    headers.insert("x-lgsp-consumer-agency", header(&consumer_label)?);
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    if mapped.body.is_some() {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    if let Some(client) = &system.xroad {
        headers.insert(
            "x-road-client",
            header(&rest_system::xroad_client_header(client))?,
        );
        headers.insert("x-road-id", header(&env.request_id)?);
        // The user: the consumer agency, prefixed with the country code
        // as PR-REST 4.3 asks.
        headers.insert("x-road-userid", header(&format!("VN{agency}"))?);
    }
    let sent = Instant::now();
    let result = async {
        hub.rest
            .authenticate(&system, &mut headers, timeout)
            .await?;
        hub.rest
            .send(
                &system,
                &mapped.url,
                mapped.method.clone(),
                headers,
                mapped.body.clone().unwrap_or_default(),
                timeout.saturating_sub(sent.elapsed()),
            )
            .await
    }
    .await;
    let took = sent.elapsed();
    let reply = match result {
        Ok(reply) => reply,
        Err(SendError::Setup(why)) => {
            // The hub's own setup, not the system: the breaker is not touched.
            attempt.finish(true);
            health.outward(Outcome::Failed, took, &why);
            return Err(Status::failed_precondition(why));
        }
        Err(e) => {
            attempt.finish(false);
            close_if_open(hub, &breaker, &system.name);
            let why = e.to_string();
            health.outward(Outcome::Failed, took, &why);
            return Err(match e {
                // Its whole deadline, not what was left after the token.
                SendError::Timeout(_) => Status::deadline_exceeded(format!(
                    "REST system {} ({}) did not answer within {} ms (its deadline)",
                    system.name,
                    system.base_url,
                    timeout.as_millis()
                )),
                SendError::Token(why) => Status::unavailable(format!(
                    "REST system {}: no OAuth2 token: {why}",
                    system.name
                )),
                _ => Status::unavailable(format!(
                    "REST system {} ({}) is unreachable: {why}",
                    system.name, system.base_url
                )),
            });
        }
    };
    attempt.finish(!is_failure(&reply));
    if is_failure(&reply) {
        close_if_open(hub, &breaker, &system.name);
        health.outward(
            Outcome::Failed,
            took,
            &format!("HTTP {} from {}", reply.status, system.name),
        );
    } else {
        health.outward(Outcome::Answered, took, "");
    }
    let text = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (xroad_id, xroad_request_id) = (text(XROAD_ID), text(XROAD_REQUEST_ID));
    // An X-Road answer's ids are kept in the log (the sharing log has no
    // field for them); a plain REST answer is in the sharing log already,
    // and a line per call at info would flood the operator's log.
    if xroad_id.is_empty() && xroad_request_id.is_empty() {
        tracing::debug!(
            request_id = %env.request_id,
            system = %system.name,
            status = reply.status,
            took_ms = took.as_millis() as u64,
            "REST system answered"
        );
    } else {
        tracing::info!(
            request_id = %env.request_id,
            system = %system.name,
            status = reply.status,
            xroad_id = %xroad_id,
            xroad_request_id = %xroad_request_id,
            took_ms = took.as_millis() as u64,
            "REST system answered"
        );
    }
    if reply.status == 401 {
        hub.rest.drop_token(&system.name);
    }
    // The ids an X-Road security server gave the exchange, error or not.
    let ids: Vec<(&'static str, String)> = if system.xroad.is_some() {
        [(XROAD_ID, xroad_id), (XROAD_REQUEST_ID, xroad_request_id)]
            .into_iter()
            .filter(|(_, value)| !value.is_empty() && value.len() <= MAX_XROAD_ID)
            .collect()
    } else {
        Vec::new()
    };
    if system.xroad.is_some()
        && let Some(kind) = reply.headers.get("x-road-error")
    {
        let status = xroad_status(&system.name, kind.to_str().unwrap_or_default(), &reply.body);
        return Err(with_ids(status, &ids));
    }
    if (200..300).contains(&reply.status) {
        let metadata = ids
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        return Ok(lgsp_node::context::Forwarded {
            payload: reply.body.to_vec(),
            metadata,
            record_carried: false,
        });
    }
    Err(with_ids(
        http_status(&system.name, reply.status, &reply.body),
        &ids,
    ))
}

/// `status` with the ids an X-Road security server gave the exchange: in
/// its message, which crosses every node to the application, and in its
/// metadata (by header name), from which the hub's sharing-log entry takes
/// them.
fn with_ids(status: Status, ids: &[(&'static str, String)]) -> Status {
    if ids.is_empty() {
        return status;
    }
    let mut metadata = tonic::metadata::MetadataMap::new();
    let mut named = Vec::new();
    for (name, value) in ids {
        if let Ok(v) = value.parse() {
            metadata.insert(*name, v);
            let shown = if *name == XROAD_ID {
                "X-Road-Id"
            } else {
                "X-Road-Request-Id"
            };
            named.push(format!("{shown} {value}"));
        }
    }
    if named.is_empty() {
        return status;
    }
    let message = format!("{} ({})", status.message(), named.join(", "));
    Status::with_metadata(status.code(), message, metadata)
}

/// The X-Road security server's message id of an exchange and the request
/// id the security servers gave it (PR-REST 4.3), returned to the calling
/// application (gRPC response metadata and `CallResponse.metadata`) and kept
/// in the hub's sharing-log entry: the protocol's header names.
pub use crate::xroad::{ID as XROAD_ID, REQUEST_ID as XROAD_REQUEST_ID};
/// The longest X-Road id the hub returns and logs, in bytes: a UUID or a
/// request id is far shorter.
const MAX_XROAD_ID: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_proto::{RestOperation, XRoadClient};
    use tonic::Code;

    fn system(xroad: bool) -> RestSystem {
        RestSystem {
            name: "bo-tai-chinh".into(),
            base_url: "https://api.mof.gov.vn/v1/".into(),
            xroad: xroad.then(|| XRoadClient {
                instance: "VN".into(),
                member_class: "GOV".into(),
                member_code: "000.00.00.H62".into(),
                subsystem_code: "lgsp".into(),
            }),
            ..Default::default()
        }
    }

    fn route() -> RestRoute {
        RestRoute {
            service_id: "000.00.00.H62/thue".into(),
            system: "bo-tai-chinh".into(),
            operations: vec![
                RestOperation {
                    name: "get".into(),
                    method: "GET".into(),
                    path: "/citizens/{id}".into(),
                    query: vec!["nam".into(), "loai".into()],
                },
                RestOperation {
                    name: "create".into(),
                    method: "POST".into(),
                    path: "/citizens".into(),
                    query: vec![],
                },
            ],
            xroad_service: String::new(),
        }
    }

    fn env(op: &str, params: &[(&str, &str)], payload: &str) -> Envelope {
        Envelope {
            service_id: "000.00.00.H62/thue".into(),
            operation: op.into(),
            parameters: params
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            payload: payload.as_bytes().to_vec(),
            request_id: "r1".into(),
        }
    }

    #[test]
    fn an_envelope_becomes_method_path_query_and_json_body() {
        let m = map_request(
            &system(false),
            &route(),
            &env(
                "get",
                &[("id", "0123"), ("nam", "2025"), ("loai", "thu nhập")],
                "",
            ),
        )
        .unwrap();
        assert_eq!(m.method, http::Method::GET);
        assert_eq!(
            m.url,
            "https://api.mof.gov.vn/v1/citizens/0123?nam=2025&loai=thu%20nh%E1%BA%ADp"
        );
        assert_eq!(m.body, None);
        let body = r#"{"ho_ten":"Nguyễn Thị Hương"}"#;
        let m = map_request(&system(false), &route(), &env("create", &[], body)).unwrap();
        assert_eq!(m.method, http::Method::POST);
        assert_eq!(m.url, "https://api.mof.gov.vn/v1/citizens");
        // The JSON travels byte for byte: Vietnamese text stays as sent.
        assert_eq!(m.body.as_deref(), Some(body.as_bytes()));
    }

    #[test]
    fn an_xroad_call_goes_to_r1_and_the_service_id() {
        let mut r = route();
        r.xroad_service = "VN/GOV/000.00.01.G12/thue/tra-cuu".into();
        let m = map_request(&system(true), &r, &env("get", &[("id", "7")], "")).unwrap();
        assert_eq!(
            m.url,
            "https://api.mof.gov.vn/v1/r1/VN/GOV/000.00.01.G12/thue/tra-cuu/citizens/7"
        );
    }

    #[test]
    fn a_bad_envelope_is_refused_saying_what_is_accepted() {
        let cases = [
            (env("delete", &[], ""), "it has: get, create"),
            (env("get", &[], ""), "parameter \"id\" is required"),
            (
                env("get", &[("id", "1"), ("x", "2")], ""),
                "does not take parameter(s) x; it takes: id, nam, loai",
            ),
            (env("create", &[], "not json"), "not JSON"),
            (env("get", &[("id", "1")], "{}"), "carries no body"),
        ];
        for (e, want) in cases {
            let s = map_request(&system(false), &route(), &e).unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument, "{want}");
            assert!(s.message().contains(want), "{}: {want}", s.message());
        }
    }

    #[test]
    fn http_statuses_map_to_grpc_codes_naming_the_system() {
        for (status, code) in [
            (400, Code::InvalidArgument),
            (401, Code::PermissionDenied),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (408, Code::DeadlineExceeded),
            (409, Code::Aborted),
            (422, Code::InvalidArgument),
            (429, Code::ResourceExhausted),
            (500, Code::Unavailable),
            (503, Code::Unavailable),
            (302, Code::FailedPrecondition),
            (410, Code::FailedPrecondition),
        ] {
            let s = http_status(
                "bo-tai-chinh",
                status,
                b"{\"loi\":\"Kh\xc3\xb4ng c\xc3\xb3\"}",
            );
            assert_eq!(s.code(), code, "{status}");
            assert!(s.message().contains("bo-tai-chinh"), "{}", s.message());
        }
        assert!(
            http_status("x", 404, "{\"loi\":\"Không có\"}".as_bytes())
                .message()
                .contains("Không có")
        );
    }

    #[test]
    fn an_error_answers_ids_are_in_its_message_and_metadata() {
        let status = Status::permission_denied("X-Road error Server.ServerProxy.AccessDenied");
        let ids = [
            (XROAD_ID, "xr-0002".to_owned()),
            (XROAD_REQUEST_ID, "5d1e07c4".to_owned()),
        ];
        let s = with_ids(status, &ids);
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "X-Road error Server.ServerProxy.AccessDenied (X-Road-Id xr-0002, X-Road-Request-Id 5d1e07c4)"
        );
        assert_eq!(s.metadata().get(XROAD_ID).unwrap(), "xr-0002");
        assert_eq!(s.metadata().get(XROAD_REQUEST_ID).unwrap(), "5d1e07c4");
        // No ids: the status as it was.
        let plain = with_ids(Status::unavailable("down"), &[]);
        assert_eq!((plain.message(), plain.metadata().len()), ("down", 0));
        // An id that cannot be a header value is left out, never sent.
        let odd = with_ids(Status::unavailable("down"), &[(XROAD_ID, "xr\n1".into())]);
        assert_eq!((odd.message(), odd.metadata().len()), ("down", 0));
    }

    #[test]
    fn xroad_errors_map_by_their_type() {
        let body =
            |t: &str| format!(r#"{{"type":"{t}","message":"m","detail":"3c4d0f08"}}"#).into_bytes();
        for (t, code) in [
            ("Server.ServerProxy.AccessDenied", Code::PermissionDenied),
            ("Server.ServerProxy.UnknownService", Code::NotFound),
            ("Client.BadRequest", Code::InvalidArgument),
            ("Server.ServerProxy.ServiceFailed", Code::Unavailable),
            ("Server.ClientProxy.OutdatedGlobalConf", Code::Unavailable),
        ] {
            let s = xroad_status("xroad-ss", t, &body(t));
            assert_eq!(s.code(), code, "{t}");
            assert!(
                s.message().contains(t) && s.message().contains("detail 3c4d0f08"),
                "{}",
                s.message()
            );
        }
        // A body that is not the X-Road JSON still gives the header's type.
        let s = xroad_status("xroad-ss", "Server.ServerProxy.DatabaseError", b"oops");
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("DatabaseError"));
    }
}

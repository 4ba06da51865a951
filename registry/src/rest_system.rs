//! External REST systems the hub calls (a ministry's HTTP/JSON API, or an
//! X-Road security server) and the routes that carry a province service to
//! one of them: catalog records the provincial admin changes (`lgsp hub
//! rest add|route`). The catalog holds only what is not secret (the
//! system's address, CA, kind of authentication, client id); API keys and
//! OAuth2 client secrets stay in the hub's own secrets directory.
//!
//! The shapes both the registry (when it applies a record) and the hub
//! (when it calls) need live here: path templates (`/citizens/{id}`),
//! percent-encoding of path segments (RFC 3986) and X-Road identifiers
//! (X-Road Message Protocol for REST 1.0.3, section 4.8).

use crate::catalog::get;
use crate::error::CatalogError;
use crate::kv::KvRead;
use lgsp_certs::identity::validate_name;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{RecordKind, RestAuth, RestOperation, RestRoute, RestSystem, XRoadClient};
use std::collections::{BTreeSet, HashMap};

fn invalid(why: impl Into<String>) -> CatalogError {
    CatalogError::InvalidArgument(why.into())
}

fn precondition(why: impl Into<String>) -> CatalogError {
    CatalogError::FailedPrecondition(why.into())
}

fn internal(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Internal(e.to_string())
}

/// HTTP methods an operation may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Whether a request with `method` carries the envelope's payload as its body.
pub fn has_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// A parsed path template: literal text and `{name}` placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

/// Why a path template or its rendering is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template itself is malformed.
    #[error("path template {template:?}: {why}")]
    Malformed {
        /// The template.
        template: String,
        /// What is wrong.
        why: String,
    },
    /// A placeholder has no value in the call.
    #[error("parameter {name:?} is required (the path is {template})")]
    Missing {
        /// The placeholder.
        name: String,
        /// The template.
        template: String,
    },
}

fn is_param_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl PathTemplate {
    /// Parses `template`: it starts with `/`, holds no `?` or `#` (query
    /// parameters are named separately), and each `{name}` fills a whole
    /// path segment (letters, digits, `_`, `-`), each name once.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let bad = |why: &str| TemplateError::Malformed {
            template: template.to_owned(),
            why: why.to_owned(),
        };
        if !template.starts_with('/') {
            return Err(bad("it must start with /"));
        }
        if template.len() > 1000 {
            return Err(bad("it is longer than 1000 characters"));
        }
        if template.contains(['?', '#']) || template.chars().any(char::is_control) {
            return Err(bad(
                "it may not hold ?, # or control characters (name query parameters with --query)",
            ));
        }
        let mut parts = Vec::new();
        let mut names = BTreeSet::new();
        for (i, segment) in template.split('/').enumerate() {
            if i > 0 {
                parts.push(Part::Literal("/".into()));
            }
            if let Some(name) = segment.strip_prefix('{') {
                let name = name
                    .strip_suffix('}')
                    .ok_or_else(|| bad("a placeholder must fill a whole segment, as /{id}/"))?;
                if name.is_empty() || !name.chars().all(is_param_char) {
                    return Err(bad(&format!(
                        "placeholder {{{name}}} must be letters, digits, _ or -"
                    )));
                }
                if !names.insert(name.to_owned()) {
                    return Err(bad(&format!("placeholder {{{name}}} appears twice")));
                }
                parts.push(Part::Param(name.to_owned()));
            } else if segment.contains(['{', '}']) {
                return Err(bad("a placeholder must fill a whole segment, as /{id}/"));
            } else if segment == "." || segment == ".." {
                return Err(bad("it may not hold . or .. segments"));
            } else if !segment.is_empty() {
                parts.push(Part::Literal(encode_segment(segment)));
            }
        }
        Ok(Self { parts })
    }

    /// The placeholders' names, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The path with each placeholder replaced by its value from `values`,
    /// percent-encoded as one segment (so `a/b` stays one segment and
    /// `Nguyễn` travels as UTF-8).
    pub fn render(&self, values: &HashMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Param(n) => {
                    let v = values.get(n).filter(|v| !v.is_empty()).ok_or_else(|| {
                        TemplateError::Missing {
                            name: n.clone(),
                            template: self.to_string(),
                        }
                    })?;
                    out.push_str(&encode_segment(v));
                }
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.parts {
            match p {
                Part::Literal(l) => f.write_str(l)?,
                Part::Param(n) => write!(f, "{{{n}}}")?,
            }
        }
        Ok(())
    }
}

/// Percent-encodes `s` (UTF-8) as one path segment: RFC 3986 `pchar`s
/// (unreserved, sub-delims, `:` and `@`) stay, everything else, `/` and
/// `?` included, is encoded.
pub fn encode_segment(s: &str) -> String {
    encode(s, |b| {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
    })
}

/// Percent-encodes `s` (UTF-8) as a query name or value: only unreserved
/// characters stay (so `&`, `=`, `+` and `#` in a value cannot change the
/// query's meaning).
pub fn encode_query(s: &str) -> String {
    encode(s, |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks one X-Road identifier part: 1 to 255 characters of `A-Z a-z
/// 0-9 ' ( ) + , - . = ?` (X-Road Message Protocol for REST 1.0.3, 4.8).
pub fn check_xroad_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("the X-Road {what} is empty"));
    }
    if part.len() > 255 {
        return Err(format!("the X-Road {what} is longer than 255 characters"));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "'()+,-.=?".contains(*c)))
    {
        return Err(format!(
            "the X-Road {what} {part:?} holds {c:?}; X-Road identifiers use only A-Z a-z 0-9 and ' ( ) + , - . = ? (PR-REST 4.8)"
        ));
    }
    Ok(())
}

/// The `X-Road-Client` header's value: `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]`,
/// each part percent-encoded (PR-REST 4.3).
pub fn xroad_client_header(c: &XRoadClient) -> String {
    let mut parts = vec![&c.instance, &c.member_class, &c.member_code];
    if !c.subsystem_code.is_empty() {
        parts.push(&c.subsystem_code);
    }
    parts
        .into_iter()
        .map(|p| encode_segment(p))
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks an X-Road client: instance, member class and member code, and
/// the subsystem code if any.
pub fn check_xroad_client(c: &XRoadClient) -> Result<(), String> {
    check_xroad_part("instance", &c.instance)?;
    check_xroad_part("member class", &c.member_class)?;
    check_xroad_part("member code", &c.member_code)?;
    if !c.subsystem_code.is_empty() {
        check_xroad_part("subsystem code", &c.subsystem_code)?;
    }
    Ok(())
}

/// Parses `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]` into an X-Road client.
pub fn parse_xroad_client(s: &str) -> Result<XRoadClient, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let c = match parts.as_slice() {
        [i, c, m] => XRoadClient {
            instance: (*i).into(),
            member_class: (*c).into(),
            member_code: (*m).into(),
            subsystem_code: String::new(),
        },
        [i, c, m, s] => XRoadClient {
            instance: (*i).into(),
            member_class: (*c).into(),
            member_code: (*m).into(),
            subsystem_code: (*s).into(),
        },
        _ => {
            return Err(format!(
                "X-Road client {s:?} is not INSTANCE/CLASS/MEMBER[/SUBSYSTEM]"
            ));
        }
    };
    check_xroad_client(&c)?;
    Ok(c)
}

/// The X-Road service id as it goes in the path after `/r1/`:
/// `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]/SERVICE`, each part checked and
/// percent-encoded on its own (PR-REST 4.1, 4.2).
pub fn xroad_service_path(service: &str) -> Result<String, String> {
    let parts: Vec<&str> = service.split('/').collect();
    let names: &[&str] = match parts.len() {
        4 => &["instance", "member class", "member code", "service code"],
        5 => &[
            "instance",
            "member class",
            "member code",
            "subsystem code",
            "service code",
        ],
        _ => {
            return Err(format!(
                "X-Road service {service:?} is not INSTANCE/CLASS/MEMBER[/SUBSYSTEM]/SERVICE"
            ));
        }
    };
    for (what, part) in names.iter().zip(&parts) {
        check_xroad_part(what, part)?;
    }
    Ok(parts
        .iter()
        .map(|p| encode_segment(p))
        .collect::<Vec<_>>()
        .join("/"))
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The host part of an `https://` URL, or why it is not one.
pub fn https_host(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} is not an https:// URL (the hub calls only over TLS)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') || rest.contains(['?', '#']) {
        return Err(format!(
            "{url:?} may not hold credentials, a query or a fragment"
        ));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some((_, port)) = authority.rsplit_once(':')
        && !authority.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{url:?} has a bad port"));
    }
    Ok(host)
}

/// Checks a REST system's fields: its name, an `https://` base URL, a PEM
/// CA, and the parts its kind of authentication needs.
pub fn check_system(s: &RestSystem) -> Result<(), CatalogError> {
    validate_name(&s.name).map_err(|e| invalid(e.to_string()))?;
    let name = &s.name;
    https_host(&s.base_url).map_err(|e| invalid(format!("REST system {name}: {e}")))?;
    if !s.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(format!(
            "REST system {name}: its CA is not a PEM certificate"
        )));
    }
    match RestAuth::try_from(s.auth) {
        Ok(RestAuth::ClientCert) => {}
        Ok(RestAuth::ApiKey) => {
            if !is_header_name(&s.api_key_header) {
                return Err(invalid(format!(
                    "REST system {name}: API key header {:?} is not an HTTP header name",
                    s.api_key_header
                )));
            }
        }
        Ok(RestAuth::Oauth2) => {
            https_host(&s.token_url)
                .map_err(|e| invalid(format!("REST system {name}: token URL {e}")))?;
            if s.client_id.is_empty() || s.client_id.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "REST system {name}: OAuth2 needs a client id"
                )));
            }
        }
        _ => {
            return Err(invalid(format!(
                "REST system {name}: say how the hub authenticates (client-cert, api-key or oauth2)"
            )));
        }
    }
    if s.timeout_ms > 300_000 {
        return Err(invalid(format!(
            "REST system {name}: a call's deadline is at most 300000 ms"
        )));
    }
    if let Some(x) = &s.xroad {
        check_xroad_client(x).map_err(|e| invalid(format!("REST system {name}: {e}")))?;
    }
    Ok(())
}

/// Checks one operation: its name, method, path template and query names.
pub fn check_operation(op: &RestOperation) -> Result<PathTemplate, String> {
    validate_name(&op.name).map_err(|e| format!("operation name: {e}"))?;
    if !METHODS.contains(&op.method.as_str()) {
        return Err(format!(
            "operation {}: method {:?} is not one of {}",
            op.name,
            op.method,
            METHODS.join(", ")
        ));
    }
    let template = PathTemplate::parse(&op.path).map_err(|e| e.to_string())?;
    let mut seen: BTreeSet<&str> = template.params().collect();
    for q in &op.query {
        if q.is_empty() || !q.chars().all(is_param_char) {
            return Err(format!(
                "operation {}: query parameter {q:?} must be letters, digits, _ or -",
                op.name
            ));
        }
        if !seen.insert(q) {
            return Err(format!(
                "operation {}: parameter {q:?} is named twice",
                op.name
            ));
        }
    }
    Ok(template)
}

/// Checks a route: a published service of `province` (the agency of the
/// provincial IT department, whose node is the hub), not an imported one, a
/// REST system the catalog holds, operations with unique names, and an
/// X-Road service id exactly when the system is an X-Road security server.
pub fn check_route(db: &impl KvRead, province: &str, r: &RestRoute) -> Result<(), CatalogError> {
    let system = match get(db, RecordKind::RestSystem, &r.system)
        .map_err(internal)?
        .and_then(|x| x.value)
    {
        Some(Value::RestSystem(s)) => s,
        _ => {
            return Err(precondition(format!(
                "there is no REST system {:?}; add it with `lgsp hub rest add`",
                r.system
            )));
        }
    };
    match get(db, RecordKind::Service, &r.service_id)
        .map_err(internal)?
        .and_then(|x| x.value)
    {
        Some(Value::Service(s)) if s.origin.is_empty() && s.agency_code == province => {}
        Some(Value::Service(s)) if s.origin.is_empty() => {
            return Err(precondition(format!(
                "service {} is agency {}'s; a service carried to a REST system is published under the hub's agency ({province}) and served by the hub's node",
                r.service_id, s.agency_code
            )));
        }
        Some(Value::Service(s)) => {
            return Err(precondition(format!(
                "service {} is imported from {}; only a province service is carried to a REST system",
                r.service_id, s.origin
            )));
        }
        _ => {
            return Err(precondition(format!(
                "service {} is not published; publish it first, served by the hub's node (lgsp service publish ... --node <hub>)",
                r.service_id
            )));
        }
    }
    if r.operations.is_empty() {
        return Err(invalid(format!(
            "route of {}: name at least one operation",
            r.service_id
        )));
    }
    if r.operations.len() > 100 {
        return Err(invalid(format!(
            "route of {}: at most 100 operations",
            r.service_id
        )));
    }
    let mut names = BTreeSet::new();
    for op in &r.operations {
        check_operation(op).map_err(|e| invalid(format!("route of {}: {e}", r.service_id)))?;
        if !names.insert(&op.name) {
            return Err(invalid(format!(
                "route of {}: operation {} is named twice",
                r.service_id, op.name
            )));
        }
    }
    match (&system.xroad, r.xroad_service.is_empty()) {
        (Some(_), true) => Err(invalid(format!(
            "REST system {} is an X-Road security server: name the provider's service (--xroad-service INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE)",
            system.name
        ))),
        (None, false) => Err(invalid(format!(
            "REST system {} is not an X-Road security server: an X-Road service id has no meaning for it",
            system.name
        ))),
        (Some(_), false) => xroad_service_path(&r.xroad_service)
            .map(drop)
            .map_err(|e| invalid(format!("route of {}: {e}", r.service_id))),
        (None, true) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_path_template_fills_each_placeholder_as_one_encoded_segment() {
        let t = PathTemplate::parse("/citizens/{id}/records/{year}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["id", "year"]);
        assert_eq!(
            t.render(&values(&[("id", "001/099"), ("year", "2025")]))
                .unwrap(),
            "/citizens/001%2F099/records/2025"
        );
        // Vietnamese text travels as percent-encoded UTF-8 (NFC as given).
        assert_eq!(
            t.render(&values(&[("id", "Nguyễn Văn A"), ("year", "?x")]))
                .unwrap(),
            "/citizens/Nguy%E1%BB%85n%20V%C4%83n%20A/records/%3Fx"
        );
        assert_eq!(t.to_string(), "/citizens/{id}/records/{year}");
    }

    #[test]
    fn a_missing_parameter_is_named() {
        let t = PathTemplate::parse("/citizens/{id}").unwrap();
        let e = t.render(&values(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter \"id\" is required (the path is /citizens/{id})"
        );
    }

    #[test]
    fn malformed_path_templates_are_refused_saying_why() {
        for (t, why) in [
            ("citizens", "must start with /"),
            ("/a?b=1", "may not hold ?"),
            ("/a/x{id}", "whole segment"),
            ("/a/{i d}", "letters, digits"),
            ("/a/{id}/{id}", "appears twice"),
            ("/a/../b", ". or .."),
        ] {
            let e = PathTemplate::parse(t).unwrap_err().to_string();
            assert!(e.contains(why), "{t}: {e}");
        }
    }

    #[test]
    fn query_values_cannot_change_the_query() {
        assert_eq!(encode_query("a&b=c+d"), "a%26b%3Dc%2Bd");
        assert_eq!(encode_query("Hà Nội"), "H%C3%A0%20N%E1%BB%99i");
    }

    #[test]
    fn xroad_client_and_service_ids_follow_the_protocol() {
        let c = parse_xroad_client("VN/GOV/000.00.00.H62/lgsp").unwrap();
        assert_eq!(xroad_client_header(&c), "VN/GOV/000.00.00.H62/lgsp");
        let member = parse_xroad_client("VN/GOV/H62").unwrap();
        assert_eq!(xroad_client_header(&member), "VN/GOV/H62");
        // `?` is allowed in identifiers but encoded in the path.
        assert_eq!(
            xroad_service_path("VN/GOV/G12/thue/tra-cuu?v=1").unwrap(),
            "VN/GOV/G12/thue/tra-cuu%3Fv=1"
        );
        assert!(
            parse_xroad_client("VN/GOV")
                .unwrap_err()
                .contains("INSTANCE/CLASS/MEMBER")
        );
        let e = parse_xroad_client("VN/GOV/Bộ/x").unwrap_err();
        assert!(e.contains("PR-REST 4.8"), "{e}");
        assert!(xroad_service_path("VN/GOV/G12").is_err());
        assert!(xroad_service_path("VN/GOV/G12/a b/svc").is_err());
    }

    #[test]
    fn only_https_urls_with_a_host_are_accepted() {
        assert_eq!(
            https_host("https://api.mof.gov.vn/v1").unwrap(),
            "api.mof.gov.vn"
        );
        assert_eq!(https_host("https://127.0.0.1:8443").unwrap(), "127.0.0.1");
        assert!(https_host("http://api.mof.gov.vn").is_err());
        assert!(https_host("https://user@api.mof.gov.vn").is_err());
        assert!(https_host("https://:443/").is_err());
        assert!(https_host("https://a.vn:x/").is_err());
    }

    #[test]
    fn an_operation_names_each_parameter_once() {
        let op = RestOperation {
            name: "get".into(),
            method: "GET".into(),
            path: "/citizens/{id}".into(),
            query: vec!["id".into()],
        };
        assert!(check_operation(&op).unwrap_err().contains("named twice"));
        let op = RestOperation {
            method: "FETCH".into(),
            query: vec![],
            ..op
        };
        assert!(check_operation(&op).unwrap_err().contains("not one of"));
    }
}

//! The catalog state machine: agencies, nodes, services, grants and the CRL,
//! with a global revision, per-record create/modify revisions and a history
//! of changes for `Watch`.
//!
//! Every command is checked twice: by the server that receives it, before
//! proposing (a quick, precise refusal), and by every server when the
//! committed entry is applied (the authoritative, deterministic decision,
//! since the catalog may have changed in between).
//!
//! Keys (in the same key-value store as the raft state, see `storage.rs`):
//! `c:<kind>:<key>` records, `w:<revision BE>` history events, `s:rev` the
//! revision, `s:compact_rev` the oldest revision in the history,
//! `s:member:<id BE>` members' addresses, `s:apply_clock_ms` the apply
//! clock (see [`apply_clock`]).

use crate::audit_anchor;
use crate::error::{CatalogError, RegistryError, StoreError};
use crate::federation;
use crate::keys::{GrantKey, KeyError, NodeKey, ServiceId};
use crate::kv::{Kv, KvRead, Staged, prefix_end, read_u64};
use crate::procedure;
pub use crate::procedure::{Acting, Asker};
use crate::rest_system;
use crate::storage::StateMachine;
use lgsp_certs::identity::{AgencyCode, Role, validate_name};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::command::Op;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::{
    ApplyResponse, CatalogRecord, CatalogSnapshot, Command, GrantStatus, Member, Meta,
    NodeContender, NodeRecord, RecordKind, RecordRef, Service, ServiceKind, ServiceStatus,
    SharingMethod, WatchEvent,
};
use prost::Message as _;

/// The largest record the catalog accepts, encoded.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

const REVISION: &[u8] = b"s:rev";
const COMPACT_REVISION: &[u8] = b"s:compact_rev";
const MEMBER_PREFIX: &[u8] = b"s:member:";
const APPLY_CLOCK: &[u8] = b"s:apply_clock_ms";
const HISTORY_PREFIX: &[u8] = b"w:";
const RECORD_PREFIX: &[u8] = b"c:";
/// The bytes every record of the catalog takes, as stored (see
/// [`catalog_bytes`]).
const CATALOG_BYTES: &[u8] = b"s:catalog_bytes";

/// The store prefix of every record of `kind`.
pub(crate) fn record_prefix(kind: RecordKind) -> Vec<u8> {
    let mut k = RECORD_PREFIX.to_vec();
    k.push(kind as u8);
    k.push(b':');
    k
}

fn record_db_key(kind: RecordKind, key: &str) -> Vec<u8> {
    let mut k = record_prefix(kind);
    k.extend_from_slice(key.as_bytes());
    k
}

fn history_key(revision: u64) -> Vec<u8> {
    let mut k = HISTORY_PREFIX.to_vec();
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

fn member_key(id: u64) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn damaged(key: &[u8], e: prost::DecodeError) -> StoreError {
    StoreError::Damaged {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

/// The current catalog revision.
pub fn revision(db: &impl KvRead) -> Result<u64, StoreError> {
    Ok(read_u64(db, REVISION)?.unwrap_or(0))
}

/// The time (Unix milliseconds) at which the committed entry taken at
/// `entry_ms` (by its proposer's wall clock) is applied: the later of that
/// and every entry time applied before it, kept in the replicated state
/// (and in snapshots) and staged in `batch`. Time rules (expiry, leases,
/// due dates) are decided with it, so a proposer whose clock steps back
/// never moves the catalog's time back: an expired grant or agreement, or a
/// lapsed node lease, never comes back into force. Every server reads the
/// same log, so every server gets the same time.
pub fn apply_clock(batch: &mut Staged, entry_ms: i64) -> Result<i64, StoreError> {
    let seen = read_u64(batch, APPLY_CLOCK)?.map(|v| v as i64);
    let now = seen.map_or(entry_ms, |seen| seen.max(entry_ms));
    if seen != Some(now) {
        batch.insert(APPLY_CLOCK, (now as u64).to_be_bytes());
    }
    Ok(now)
}

/// The apply clock as applied so far (0 before any entry).
pub fn apply_clock_ms(db: &impl KvRead) -> Result<i64, StoreError> {
    Ok(read_u64(db, APPLY_CLOCK)?.unwrap_or(0) as i64)
}

/// What applying one committed command staged: the record as stored, the
/// watch events, and a refusal that still writes (see [`Checked`]).
#[derive(Debug)]
pub struct Applied {
    /// The record as stored (none after a delete).
    pub record: Option<CatalogRecord>,
    /// The changes, in revision order.
    pub events: Vec<WatchEvent>,
    /// The command's refusal when it still wrote something.
    pub refusal: Option<CatalogError>,
}

/// Applies `command` by `actor` (its SPIFFE ID), which its proposer took
/// at `entry_ms` by its own wall clock, as every server applies a committed
/// entry: time rules go by the apply clock (never back in time, see
/// [`apply_clock`]), then the command is checked and its writes staged in
/// `batch`. `Ok(Err(refusal))` is the command's outcome (nothing of it
/// written; `Internal` is a failed read the caller must not take for a
/// refusal); `Err` a failed store.
pub fn apply_command(
    batch: &mut Staged,
    province: &AgencyCode,
    actor: &str,
    command: &Command,
    entry_ms: i64,
) -> Result<Result<Applied, CatalogError>, StoreError> {
    let now_ms = apply_clock(batch, entry_ms)?;
    let checked = lgsp_certs::identity::SpiffeId::parse(actor)
        .map_err(|e| CatalogError::PermissionDenied(e.to_string()))
        .and_then(|actor| {
            let asker = Asker {
                actor: &actor,
                province,
                now_unix: now_ms.div_euclid(1000),
            };
            check(batch, &asker, command)
        });
    let mut checked = match checked {
        Ok(checked) => checked,
        Err(refused) => return Ok(Err(refused)),
    };
    let refusal = checked.take_refusal();
    let (record, events) = apply(batch, checked)?;
    Ok(Ok(Applied {
        record,
        events,
        refusal,
    }))
}

/// The oldest revision a watch can start from.
pub fn compact_revision(db: &Kv) -> Result<u64, StoreError> {
    Ok(read_u64(db, COMPACT_REVISION)?.unwrap_or(0).max(1))
}

/// Reads one record.
pub fn get(
    db: &impl KvRead,
    kind: RecordKind,
    key: &str,
) -> Result<Option<CatalogRecord>, RegistryError> {
    let db_key = record_db_key(kind, key);
    match db.read(&db_key)? {
        Some(v) => Ok(Some(
            CatalogRecord::decode(v.as_slice()).map_err(|e| damaged(&db_key, e))?,
        )),
        None => Ok(None),
    }
}

/// A filter and page for [`list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// The record kind to list (a `RecordKind`); unspecified is refused as an
    /// invalid argument.
    pub kind: i32,
    /// Only records whose key starts with this (e.g. an agency code and `/`);
    /// empty for every record of the kind.
    pub prefix: String,
    /// Text a record must contain, compared without case or diacritics
    /// ([`crate::text::fold`]: "ho tich" finds "Hộ tịch"): for a service, in
    /// its id, name or description; for other kinds, in any of its text.
    /// Empty matches every record.
    pub keyword: String,
    /// For services only, the `ServiceStatus` a service must have; 0 for any.
    pub service_status: i32,
    /// Records per page: 0 means 100, and more than 1000 is cut to 1000.
    pub page_size: u32,
    /// Where to resume: the token of the previous page (its last key); empty
    /// for the first page.
    pub page_token: String,
}

/// The most records one [`list`] call examines: a filter few records match
/// must not make one call scan the whole catalog (every agency holds up to
/// [`MAX_RECORDS_PER_AGENCY`] records of a kind).
pub const LIST_EXAMINED: usize = 4096;

/// One page of records of a kind, in key order, and the token to continue
/// from (empty when nothing follows). A page holds up to the page size, but
/// at most [`LIST_EXAMINED`] records are examined per call, so a page of a
/// filtered list may be short, even empty, with a token: the caller goes on
/// until the token is empty.
pub fn list(db: &Kv, q: &ListQuery) -> Result<(Vec<CatalogRecord>, String), CatalogError> {
    let kind = RecordKind::try_from(q.kind)
        .ok()
        .filter(|k| *k != RecordKind::Unspecified)
        .ok_or_else(|| CatalogError::InvalidArgument("list needs a record kind".into()))?;
    let page = match q.page_size {
        0 => 100,
        n => n.min(1000) as usize,
    };
    // As people type: "ho tich" finds "Hộ tịch".
    let keyword = crate::text::fold(&q.keyword);
    let prefix = record_db_key(kind, &q.prefix);
    let start = if q.page_token.is_empty() {
        prefix.clone()
    } else {
        let mut k = record_db_key(kind, &q.page_token);
        k.push(0);
        k
    };
    let end = prefix_end(&prefix);
    let kind_prefix = record_prefix(kind).len();
    let mut out = Vec::new();
    // The key of the last record examined: where the next call resumes.
    let mut last = String::new();
    for (examined, item) in db.range(&start, end.as_deref()).enumerate() {
        let (k, v) = item.map_err(|e| CatalogError::Internal(e.to_string()))?;
        if out.len() == page || examined == LIST_EXAMINED {
            return Ok((out, last));
        }
        last = String::from_utf8_lossy(&k[kind_prefix..]).into_owned();
        let record = CatalogRecord::decode(v.as_slice())
            .map_err(|e| CatalogError::Internal(e.to_string()))?;
        if let Some(Value::Service(s)) = &record.value {
            if q.service_status != 0 && s.status != q.service_status {
                continue;
            }
            if !keyword.is_empty()
                && ![&s.id, &s.name, &s.description]
                    .iter()
                    .any(|f| crate::text::fold(f).contains(&keyword))
            {
                continue;
            }
        } else if !keyword.is_empty()
            && !crate::text::fold(&record_text(&record)).contains(&keyword)
        {
            continue;
        }
        out.push(record);
    }
    Ok((out, String::new()))
}

fn record_text(record: &CatalogRecord) -> String {
    match &record.value {
        Some(Value::Agency(a)) => format!("{} {}", a.code, a.name),
        Some(Value::Node(n)) => format!("{} {} {}", n.agency_code, n.name, n.endpoint),
        Some(Value::Request(r)) => format!(
            "{} {} {} {} {}",
            r.id, r.consumer_agency, r.requester_name, r.service_id, r.purpose
        ),
        _ => record.key.clone(),
    }
}

/// The kind and key a record's value determines; a put's key is never taken
/// from the client.
pub fn key_of(value: &Value) -> (RecordKind, String) {
    match value {
        Value::Agency(a) => (RecordKind::Agency, a.code.clone()),
        Value::Node(n) => (RecordKind::Node, NodeKey::format(&n.agency_code, &n.name)),
        Value::Service(s) => (RecordKind::Service, s.id.clone()),
        Value::Grant(g) => (
            RecordKind::Grant,
            GrantKey::format(&g.service_id, &g.consumer_agency),
        ),
        Value::Crl(_) => (RecordKind::Crl, "current".into()),
        Value::Request(r) => (RecordKind::Request, r.id.clone()),
        Value::Calendar(_) => (RecordKind::Calendar, CALENDAR_KEY.into()),
        Value::Peer(p) => (RecordKind::Peer, p.name.clone()),
        Value::Export(e) => (
            RecordKind::Export,
            federation::export_key(&e.service_id, &e.peer),
        ),
        Value::Import(i) => (
            RecordKind::Import,
            federation::import_key(&i.peer, &i.service_id),
        ),
        Value::AuditAnchor(a) => (
            RecordKind::AuditAnchor,
            NodeKey::format(&a.agency_code, &a.node),
        ),
        Value::RestClient(c) => (RecordKind::RestClient, c.name.clone()),
        Value::RestSystem(s) => (RecordKind::RestSystem, s.name.clone()),
        Value::RestRoute(r) => (RecordKind::RestRoute, r.service_id.clone()),
    }
}

/// The key of the province's one calendar record.
pub const CALENDAR_KEY: &str = "province";

/// The agency that owns a record, or `None` for records only the provincial
/// admin may change (the CRL).
fn owner_of(kind: RecordKind, key: &str) -> Option<&str> {
    match kind {
        RecordKind::Agency => Some(key),
        RecordKind::Node
        | RecordKind::Service
        | RecordKind::Grant
        | RecordKind::Request
        | RecordKind::AuditAnchor => key.split('/').next(),
        RecordKind::Crl
        | RecordKind::Calendar
        | RecordKind::Peer
        | RecordKind::Export
        | RecordKind::Import
        | RecordKind::RestClient
        | RecordKind::RestSystem
        | RecordKind::RestRoute
        | RecordKind::Unspecified => None,
    }
}

/// Checks that a key is well formed for its kind, before anything else.
fn validate_key(kind: RecordKind, key: &str) -> Result<(), CatalogError> {
    let invalid = |e: KeyError| CatalogError::InvalidArgument(e.to_string());
    match kind {
        RecordKind::Agency => AgencyCode::new(key)
            .map(drop)
            .map_err(|e| CatalogError::InvalidArgument(e.to_string())),
        RecordKind::Node | RecordKind::AuditAnchor => {
            key.parse::<NodeKey>().map(drop).map_err(invalid)
        }
        RecordKind::Service => service_id(key).map(drop),
        RecordKind::Grant => key.parse::<GrantKey>().map(drop).map_err(invalid),
        // A request's key has a node key's shape: <agency>/<name>.
        RecordKind::Request => key
            .parse::<NodeKey>()
            .map(drop)
            .map_err(|e| CatalogError::InvalidArgument(format!("request id {key:?}: {e}"))),
        RecordKind::Calendar if key != CALENDAR_KEY => Err(CatalogError::InvalidArgument(format!(
            "the calendar's key is {CALENDAR_KEY:?}"
        ))),
        RecordKind::Peer | RecordKind::Export | RecordKind::Import | RecordKind::RestClient => {
            federation::validate_key(kind, key)
        }
        RecordKind::RestSystem => {
            validate_name(key).map_err(|e| CatalogError::InvalidArgument(e.to_string()))
        }
        RecordKind::RestRoute => service_id(key).map(drop),
        RecordKind::Crl | RecordKind::Calendar | RecordKind::Unspecified => Ok(()),
    }
}

/// Whether the asker's role may change records of this kind and key at all,
/// decided from the certificate alone (the procedures decide the rest when
/// the change is applied, see `procedure.rs`):
/// - the provincial admin (an admin certificate of the agency that runs the
///   registry) may change anything;
/// - an agency admin acts for its own agency: its agency record, nodes,
///   services, the grants of its services (suspend, resume, terminate) and
///   access requests (filing its own, deciding those for its services);
/// - a node or hub registers its agency's nodes and publishes its agency's
///   services;
/// - the CRL and the calendar are the provincial admin's alone.
fn authorize(asker: &Asker<'_>, kind: RecordKind, key: &str) -> Result<(), CatalogError> {
    validate_key(kind, key)?;
    let owner = owner_of(kind, key);
    let allowed = match (asker.acting(), kind) {
        (Acting::Province, _) => true,
        (Acting::AgencyAdmin(_), RecordKind::Request) => true,
        (
            Acting::AgencyAdmin(agency),
            RecordKind::Agency | RecordKind::Node | RecordKind::Service | RecordKind::Grant,
        ) => owner == Some(agency),
        // A hub also writes what its imports bring in (decided at apply
        // time: agencies and services of other instances only).
        // It also follows its peers' CRLs (checked at apply time too).
        (Acting::Machine(_), RecordKind::Agency | RecordKind::Service | RecordKind::Peer)
            if asker.actor.role == Role::Hub =>
        {
            true
        }
        (Acting::Machine(agency), RecordKind::Node | RecordKind::Service) => owner == Some(agency),
        // A node anchors its own sharing log, and nobody else's.
        (Acting::Machine(_), RecordKind::AuditAnchor) => audit_anchor::is_that_node(asker, key),
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let needs = match (kind, owner) {
        (RecordKind::Crl | RecordKind::Calendar, _) | (_, None) => {
            "the provincial admin".to_owned()
        }
        (RecordKind::Node | RecordKind::Service, Some(owner)) => {
            format!("a node or admin certificate of agency {owner} (or the provincial admin)")
        }
        (RecordKind::AuditAnchor, Some(_)) => {
            format!("that node's own certificate ({key} anchors only its own sharing log)")
        }
        (RecordKind::Request, Some(owner)) => {
            format!("an admin certificate of agency {owner} (or the provincial admin)")
        }
        (_, Some(owner)) => {
            format!("an admin certificate of agency {owner} (or the provincial admin)")
        }
    };
    let what = format!("changing {kind:?} {key:?}");
    let mut refusal = asker.needs(&what, &needs);
    if let (CatalogError::PermissionDenied(why), Acting::Machine(own)) =
        (&mut refusal, asker.acting())
        && owner.is_some_and(|o| o != own)
    {
        why.push_str(&format!(
            " ({} may change only records of agency {own})",
            asker.actor
        ));
    }
    Err(refusal)
}

/// A service id, parsed; a malformed one is an invalid argument.
fn service_id(id: &str) -> Result<ServiceId, CatalogError> {
    id.parse()
        .map_err(|e: KeyError| CatalogError::InvalidArgument(e.to_string()))
}

fn exists(db: &impl KvRead, kind: RecordKind, key: &str) -> Result<bool, CatalogError> {
    db.read(&record_db_key(kind, key))
        .map(|v| v.is_some())
        .map_err(|e| CatalogError::Internal(e.to_string()))
}

fn require_agency(db: &impl KvRead, code: &str) -> Result<(), CatalogError> {
    if exists(db, RecordKind::Agency, code)? {
        Ok(())
    } else {
        Err(CatalogError::FailedPrecondition(format!(
            "agency {code} is not registered; the provincial admin registers it with `lgsp agency register`"
        )))
    }
}

/// An online service is called through the node that serves it, so it must
/// name a node of its own agency that the catalog holds: without one,
/// publishing succeeds and every call fails. Decided here, at apply time,
/// so no client can skip it. A service imported through the hub is carried
/// by the hub instead, and a withdrawn one answers no calls.
fn check_service_node(db: &impl KvRead, s: &Service) -> Result<(), CatalogError> {
    let online = matches!(
        SharingMethod::try_from(s.sharing_method).unwrap_or_default(),
        SharingMethod::Unspecified | SharingMethod::Online
    );
    let withdrawn = s.status == ServiceStatus::Withdrawn as i32;
    if !s.origin.is_empty() || withdrawn {
        return Ok(());
    }
    if !s.node.is_empty()
        && exists(
            db,
            RecordKind::Node,
            &NodeKey::format(&s.agency_code, &s.node),
        )?
    {
        return Ok(());
    }
    if s.node.is_empty() && !online {
        return Ok(());
    }
    let nodes: Vec<String> = db
        .read_prefix(&record_db_key(
            RecordKind::Node,
            &format!("{}/", s.agency_code),
        ))
        .map_err(|e| CatalogError::Internal(e.to_string()))?
        .into_iter()
        .filter_map(|(_, v)| CatalogRecord::decode(v.as_slice()).ok())
        .filter_map(|r| match r.value {
            Some(Value::Node(n)) => Some(n.name),
            _ => None,
        })
        .collect();
    let fix = if nodes.is_empty() {
        format!(
            "agency {} has no node in the catalog yet: start its node (`lgsp node start`; it registers itself), then publish with --node NAME",
            s.agency_code
        )
    } else {
        format!(
            "publish it with --node and one of agency {}'s nodes in the catalog: {}",
            s.agency_code,
            nodes.join(", ")
        )
    };
    let why = if s.node.is_empty() {
        format!(
            "service {} is shared online but names no node, so every call to it would fail",
            s.id
        )
    } else {
        format!(
            "service {} names node {:?}, which agency {} has not registered in the catalog",
            s.id, s.node, s.agency_code
        )
    };
    Err(CatalogError::FailedPrecondition(format!("{why}; {fix}")))
}

fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), CatalogError> {
    if required && value.trim().is_empty() {
        return Err(CatalogError::InvalidArgument(format!("{field} is empty")));
    }
    if value.chars().count() > max {
        return Err(CatalogError::InvalidArgument(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(CatalogError::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// Checks a put's value and fills in defaults; returns the value to store.
/// Every free text a person typed, in NFC: Vietnamese typed decomposed
/// must match the same text typed composed.
fn normalize(value: &mut Value) {
    use crate::text::to_nfc;
    match value {
        Value::Agency(a) => {
            to_nfc(&mut a.name);
            if let Some(fp) = &mut a.focal_point {
                to_nfc(&mut fp.name);
                to_nfc(&mut fp.role);
            }
        }
        Value::Service(s) => {
            to_nfc(&mut s.description);
            to_nfc(&mut s.update_cycle);
            for i in &mut s.items {
                to_nfc(&mut i.name);
                to_nfc(&mut i.description);
            }
            for w in &mut s.maintenance {
                to_nfc(&mut w.reason);
            }
        }
        Value::Grant(g) => {
            to_nfc(&mut g.reason);
            to_nfc(&mut g.restore);
            g.items.iter_mut().for_each(to_nfc);
        }
        Value::Request(r) => {
            for f in [
                &mut r.requester_name,
                &mut r.application_name,
                &mut r.purpose,
                &mut r.frequency,
                &mut r.other,
                &mut r.decision_reason,
            ] {
                to_nfc(f);
            }
            r.items.iter_mut().for_each(to_nfc);
            r.granted_items.iter_mut().for_each(to_nfc);
        }
        Value::Node(_)
        | Value::Crl(_)
        | Value::Calendar(_)
        | Value::Peer(_)
        | Value::Export(_)
        | Value::Import(_)
        | Value::RestClient(_)
        | Value::AuditAnchor(_)
        | Value::RestSystem(_)
        | Value::RestRoute(_) => {}
    }
}

/// A change the procedures derive from a command: the grant an approved
/// request creates.
type Derived = Option<Value>;

fn check_value(
    db: &impl KvRead,
    asker: &Asker<'_>,
    mut value: Value,
    previous: Option<&CatalogRecord>,
) -> Result<(Value, Derived, bool), CatalogError> {
    let previous = previous.and_then(|r| r.value.as_ref());
    let mut derived = None;
    normalize(&mut value);
    let by_hub = federation::check_federated_write(db, asker, &value)?;
    match &mut value {
        Value::Agency(a) => {
            AgencyCode::new(&a.code).map_err(|e| CatalogError::InvalidArgument(e.to_string()))?;
            text("agency name", &a.name, 200, true)?;
            if let Some(fp) = &a.focal_point {
                text("focal point name", &fp.name, 200, false)?;
                text("focal point phone", &fp.phone, 40, false)?;
                text("focal point email", &fp.email, 200, false)?;
                if !fp.email.is_empty() && !fp.email.contains('@') {
                    return Err(CatalogError::InvalidArgument(format!(
                        "focal point email {:?} has no '@'",
                        fp.email
                    )));
                }
            }
        }
        Value::Node(n) => {
            // The registry's clock, never the node's: the lease is decided
            // alike on every server.
            n.heard_unix = if n.stopping { 0 } else { asker.now_unix };
            n.stopping = false;
            n.contender = None;
            AgencyCode::new(&n.agency_code)
                .map_err(|e| CatalogError::InvalidArgument(e.to_string()))?;
            validate_name(&n.name).map_err(|e| CatalogError::InvalidArgument(e.to_string()))?;
            require_agency(db, &n.agency_code)?;
            let port_ok = n
                .endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(CatalogError::InvalidArgument(format!(
                    "node endpoint {:?} is not host:port",
                    n.endpoint
                )));
            }
            if !n.cert_sha256.is_empty()
                && (n.cert_sha256.len() != 64
                    || !n.cert_sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(CatalogError::InvalidArgument(
                    "certificate fingerprint must be 64 hex digits (SHA-256)".into(),
                ));
            }
            text("node version", &n.version, 80, false)?;
            if n.capabilities.len() > 8 {
                return Err(CatalogError::InvalidArgument(format!(
                    "a node record lists {} capabilities; at most 8",
                    n.capabilities.len()
                )));
            }
            for c in &n.capabilities {
                let word = (1..=40).contains(&c.len())
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !word {
                    return Err(CatalogError::InvalidArgument(format!(
                        "node capability {c:?} is not 1 to 40 of a-z, 0-9 and '-'"
                    )));
                }
            }
        }
        Value::Service(s) => {
            let id = service_id(&s.id)?;
            if s.agency_code.is_empty() {
                s.agency_code = id.agency().to_string();
            }
            if s.name.is_empty() {
                s.name = id.name().to_owned();
            }
            if s.agency_code != id.agency().as_str() || s.name != id.name() {
                return Err(CatalogError::InvalidArgument(format!(
                    "service id {:?} does not match agency {:?} and name {:?}",
                    s.id, s.agency_code, s.name
                )));
            }
            require_agency(db, &s.agency_code)?;
            // Only an imported service carries what its own instance said.
            if s.origin.is_empty() {
                s.verifies_batched_records = false;
            }
            text("service description", &s.description, 4000, false)?;
            text("service version", &s.version, 40, false)?;
            if ServiceKind::try_from(s.kind).unwrap_or_default() == ServiceKind::Unspecified {
                return Err(CatalogError::InvalidArgument(
                    "service kind is missing: dataset, http or grpc".into(),
                ));
            }
            if s.status == 0 {
                s.status = ServiceStatus::Active as i32;
            }
            check_service_node(db, s)?;
            if !s.schema_json.is_empty() {
                serde_json::from_str::<serde_json::Value>(&s.schema_json).map_err(|e| {
                    CatalogError::InvalidArgument(format!("service schema is not JSON: {e}"))
                })?;
            }
            text(
                "service documentation link",
                &s.documentation_url,
                500,
                false,
            )?;
            text("service update cycle", &s.update_cycle, 200, false)?;
            for item in &s.items {
                text("data item description", &item.description, 1000, false)?;
            }
            for w in &s.maintenance {
                text("maintenance reason", &w.reason, 1000, false)?;
            }
            let previous = match previous {
                Some(Value::Service(p)) => Some(p),
                _ => None,
            };
            procedure::check_service(db, asker, s, previous)?;
        }
        Value::Grant(g) => {
            service_id(&g.service_id)?;
            AgencyCode::new(&g.consumer_agency)
                .map_err(|e| CatalogError::InvalidArgument(e.to_string()))?;
            if !exists(db, RecordKind::Service, &g.service_id)? {
                return Err(CatalogError::FailedPrecondition(format!(
                    "service {} is not published",
                    g.service_id
                )));
            }
            require_agency(db, &g.consumer_agency)?;
            if g.status == 0 {
                g.status = GrantStatus::Active as i32;
            }
            text("grant reason", &g.reason, 1000, false)?;
            text("how to restore", &g.restore, 1000, false)?;
            if let Some(a) = &g.agreement {
                text("agreement reference", &a.reference, 200, false)?;
            }
            let previous = match previous {
                Some(Value::Grant(p)) => Some(p),
                _ => None,
            };
            procedure::check_grant(db, asker, g, previous)?;
        }
        Value::Request(r) => {
            for (field, value, max) in [
                ("requester name", &r.requester_name, 200),
                ("application id", &r.application_id, 200),
                ("application name", &r.application_name, 200),
                ("purpose", &r.purpose, 2000),
                ("pull frequency", &r.frequency, 200),
                ("other information", &r.other, 2000),
                ("decision reason", &r.decision_reason, 2000),
            ] {
                text(field, value, max, false)?;
            }
            if r.items.len() > 500 || r.granted_items.len() > 500 {
                return Err(CatalogError::InvalidArgument(
                    "a request names at most 500 data items".into(),
                ));
            }
            let previous = match previous {
                Some(Value::Request(p)) => Some(p),
                _ => None,
            };
            derived = procedure::check_request(db, asker, r, previous)?.map(Value::Grant);
        }
        Value::Calendar(c) => procedure::check_calendar(asker, c)?,
        Value::Peer(p) => federation::check_peer(db, p)?,
        Value::Export(e) => federation::check_export(db, e)?,
        Value::Import(i) => federation::check_import(db, i)?,
        Value::RestClient(c) => federation::check_rest_client(db, c)?,
        Value::RestSystem(s) => rest_system::check_system(s)?,
        Value::RestRoute(r) => rest_system::check_route(db, asker.province.as_str(), r)?,
        Value::AuditAnchor(a) => {
            let previous = match previous {
                Some(Value::AuditAnchor(p)) => Some(p),
                _ => None,
            };
            audit_anchor::check(db, asker, a, previous)?;
        }
        Value::Crl(c) => {
            if c.der.is_empty() {
                return Err(CatalogError::InvalidArgument("the CRL is empty".into()));
            }
            check_crl(db, c)?;
        }
    }
    Ok((value, derived, by_hub))
}

/// A CRL must say what its record says (number and serials, which nodes
/// use per call) and be newer than the one in force: an older CRL, from a
/// second admin workstation or a delayed retry, would bring revoked
/// certificates back.
fn check_crl(db: &impl KvRead, crl: &lgsp_proto::Crl) -> Result<(), CatalogError> {
    let invalid = |why: String| CatalogError::InvalidArgument(why);
    let info = lgsp_certs::inspect::CrlInfo::from_der(&crl.der, std::path::Path::new("<crl>"))
        .map_err(|e| invalid(e.to_string()))?;
    let number = info
        .number
        .ok_or_else(|| invalid("the CRL has no CRL number".into()))?;
    if number != crl.number {
        return Err(invalid(format!(
            "the record says CRL number {}, the CRL itself {number}",
            crl.number
        )));
    }
    let mut listed = info.revoked.clone();
    let mut said = crl.revoked_serials.clone();
    listed.sort();
    said.sort();
    if listed != said {
        return Err(invalid(
            "the record's revoked serials are not the ones the CRL lists".into(),
        ));
    }
    let current =
        get(db, RecordKind::Crl, "current").map_err(|e| CatalogError::Internal(e.to_string()))?;
    if let Some(Value::Crl(current)) = current.and_then(|r| r.value)
        && current.number >= number
    {
        return Err(CatalogError::FailedPrecondition(format!(
            "CRL number {number} is not newer than the one in force ({}); an older CRL would bring revoked certificates back: sign a new one with `lgsp ca publish-crl`",
            current.number
        )));
    }
    Ok(())
}

/// Records of one kind an agency may hold (its nodes, its services, the
/// grants of its services, the access requests it filed), whoever writes
/// them but the provincial admin.
pub const MAX_RECORDS_PER_AGENCY: usize = 1_000;

/// Bytes of records of one kind an agency may hold (encoded values).
pub const MAX_BYTES_PER_AGENCY: usize = 8 << 20;

/// The most the catalog's records may take, in bytes, whoever writes them.
/// A snapshot carries them all, with the idempotency keys (at most about
/// 10 MiB) and the members, and a server accepts no snapshot larger than
/// [`crate::transport::MAX_PEER_MESSAGE`] (256 MiB): this leaves room, so a
/// catalog never outgrows what a snapshot can carry.
pub const MAX_CATALOG_BYTES: u64 = 192 << 20;

/// What every record of the catalog takes as stored: kept with each write
/// (and each restore), counted once by a scan in a store from before the
/// count. Every server reads and counts alike, so all decide alike.
pub fn catalog_bytes(db: &impl KvRead) -> Result<u64, StoreError> {
    if let Some(bytes) = read_u64(db, CATALOG_BYTES)? {
        return Ok(bytes);
    }
    Ok(db
        .read_prefix(RECORD_PREFIX)?
        .iter()
        .map(|(_, v)| v.len() as u64)
        .sum())
}

/// Refuses a change that would take the whole catalog past `bound` bytes
/// (a change that shrinks it always passes): a province of many agencies,
/// each within its quota, or the provincial admin's own records, must not
/// outgrow what a snapshot carries.
fn refuse_past_catalog_bound(
    db: &impl KvRead,
    checked: &Checked,
    bound: u64,
) -> Result<(), CatalogError> {
    let internal = |e: StoreError| CatalogError::Internal(e.to_string());
    let mut grows = 0i64;
    for write in &checked.writes {
        let old = db
            .read(&record_db_key(write.kind, &write.key))
            .map_err(internal)?
            .map_or(0, |v| v.len() as i64);
        // The record as it will be stored, with room for its revisions.
        let new = write.value.as_ref().map_or(0, |v| {
            (v.encoded_len() + write.key.len() + RECORD_OVERHEAD) as i64
        });
        grows += new - old;
    }
    if grows <= 0 {
        return Ok(());
    }
    let held = catalog_bytes(db).map_err(internal)?;
    let after = held.saturating_add(grows as u64);
    if after > bound {
        return Err(CatalogError::FailedPrecondition(format!(
            "the catalog would take {after} bytes, past the {bound} a registry snapshot can carry; remove records no longer needed (withdrawn services, terminated grants, decided requests) first"
        )));
    }
    Ok(())
}

/// A stored record's bytes besides its value and key: its kind, its
/// revisions and the fields' tags and lengths, at most.
const RECORD_OVERHEAD: usize = 40;

/// Refuses a put that would take `actor`'s agency past its quota of
/// records or bytes of that kind: one node certificate must not be able to
/// fill the catalog (every node keeps a copy, and a snapshot carries it
/// all). Counted at apply time, over what the catalog holds then.
fn refuse_over_quota(
    db: &impl KvRead,
    asker: &Asker<'_>,
    kind: RecordKind,
    key: &str,
    value: &Value,
) -> Result<(), CatalogError> {
    if asker.acting() == Acting::Province
        || !matches!(
            kind,
            RecordKind::Node
                | RecordKind::Service
                | RecordKind::Grant
                | RecordKind::Request
                | RecordKind::AuditAnchor
        )
    {
        return Ok(());
    }
    // Counted against the agency that owns the record, whoever writes it.
    let Some(agency) = owner_of(kind, key) else {
        return Ok(());
    };
    let held = db
        .read_prefix(&record_db_key(kind, &format!("{agency}/")))
        .map_err(|e| CatalogError::Internal(e.to_string()))?;
    let replaced = record_db_key(kind, key);
    let (mut count, mut bytes) = (1usize, value.encoded_len());
    for (k, v) in &held {
        if *k != replaced {
            count += 1;
            bytes += v.len();
        }
    }
    if count > MAX_RECORDS_PER_AGENCY || bytes > MAX_BYTES_PER_AGENCY {
        return Err(CatalogError::FailedPrecondition(format!(
            "agency {agency} would hold {count} {kind:?} records of {bytes} bytes, past its quota of {MAX_RECORDS_PER_AGENCY} records and {MAX_BYTES_PER_AGENCY} bytes; remove some, or ask the provincial admin"
        )));
    }
    Ok(())
}

/// Refuses deleting a record others still name: an agency with nodes,
/// services or grants (given or received), a service with grants, a node
/// that serves services. Deletes never cascade: each dependent is removed
/// on purpose first, so nothing disappears that its owner did not remove.
fn refuse_orphans(db: &impl KvRead, kind: RecordKind, key: &str) -> Result<(), CatalogError> {
    let records = |kind: RecordKind, prefix: &str| -> Result<Vec<CatalogRecord>, CatalogError> {
        db.read_prefix(&record_db_key(kind, prefix))
            .map_err(|e| CatalogError::Internal(e.to_string()))?
            .into_iter()
            .map(|(_, v)| {
                CatalogRecord::decode(v.as_slice())
                    .map_err(|e| CatalogError::Internal(format!("a stored record is damaged: {e}")))
            })
            .collect()
    };
    let mut dependents: Vec<String> = Vec::new();
    match kind {
        RecordKind::Agency => {
            let own = format!("{key}/");
            for (what, kind) in [
                ("node", RecordKind::Node),
                ("service", RecordKind::Service),
                ("grant", RecordKind::Grant),
            ] {
                dependents.extend(
                    records(kind, &own)?
                        .into_iter()
                        .map(|r| format!("{what} {}", r.key)),
                );
            }
            let received = format!("|{key}");
            dependents.extend(
                records(RecordKind::Grant, "")?
                    .into_iter()
                    .filter(|r| r.key.ends_with(&received))
                    .map(|r| format!("grant {}", r.key)),
            );
        }
        RecordKind::Service => {
            dependents.extend(
                records(RecordKind::RestRoute, key)?
                    .into_iter()
                    .filter(|r| r.key == key)
                    .map(|r| format!("REST route {} (lgsp hub rest unroute)", r.key)),
            );
            dependents.extend(
                records(RecordKind::Grant, &GrantKey::format(key, ""))?
                    .into_iter()
                    .map(|r| format!("grant {}", r.key)),
            );
            dependents.extend(
                records(RecordKind::Export, &format!("{key}|"))?
                    .into_iter()
                    .map(|r| format!("export {}", r.key)),
            );
        }
        RecordKind::RestSystem => {
            dependents.extend(
                records(RecordKind::RestRoute, "")?
                    .into_iter()
                    .filter_map(|r| match r.value {
                        Some(Value::RestRoute(route)) if route.system == key => Some(format!(
                            "REST route {} (lgsp hub rest unroute --service {})",
                            r.key, r.key
                        )),
                        _ => None,
                    }),
            );
        }
        RecordKind::Peer => {
            dependents.extend(
                records(RecordKind::Import, &format!("{key}|"))?
                    .into_iter()
                    .map(|r| format!("import {}", r.key)),
            );
            let exported_to = format!("|{key}");
            dependents.extend(
                records(RecordKind::Export, "")?
                    .into_iter()
                    .filter(|r| r.key.ends_with(&exported_to))
                    .map(|r| format!("export {}", r.key)),
            );
        }
        RecordKind::Node => {
            if let Ok(node) = key.parse::<NodeKey>() {
                let services = records(RecordKind::Service, &format!("{}/", node.agency()))?;
                dependents.extend(services.into_iter().filter_map(|r| match r.value {
                    Some(Value::Service(s)) if s.node == node.name() => {
                        Some(format!("service {}", s.id))
                    }
                    _ => None,
                }));
            }
        }
        RecordKind::Grant
        | RecordKind::AuditAnchor
        | RecordKind::Crl
        | RecordKind::Request
        | RecordKind::Calendar
        | RecordKind::Export
        | RecordKind::Import
        | RecordKind::RestClient
        | RecordKind::RestRoute
        | RecordKind::Unspecified => {}
    }
    // An outside REST system names its agency and the services offered to it.
    if matches!(kind, RecordKind::Agency | RecordKind::Service) {
        dependents.extend(
            records(RecordKind::RestClient, "")?
                .into_iter()
                .filter(|r| match &r.value {
                    Some(Value::RestClient(c)) => {
                        c.agency_code == key || c.services.iter().any(|s| s == key)
                    }
                    _ => false,
                })
                .map(|r| format!("REST client {}", r.key)),
        );
    }
    if dependents.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = dependents.iter().take(5).map(String::as_str).collect();
    let more = dependents.len().saturating_sub(shown.len());
    Err(CatalogError::FailedPrecondition(format!(
        "{kind:?} {key:?} is still named by {} record(s): {}{}; remove those first (deletes never cascade)",
        dependents.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )))
}

/// One record a checked command writes or removes.
#[derive(Debug)]
struct Write {
    kind: RecordKind,
    key: String,
    /// The value to store, or `None` to delete.
    value: Option<Value>,
    previous: Option<CatalogRecord>,
}

/// A command checked against the catalog: what to write. Most commands
/// write one record; an approved access request also writes its grant.
#[derive(Debug)]
pub struct Checked {
    writes: Vec<Write>,
    /// A refusal that still writes: a node registration refused because
    /// the name is in use notes the contender on the live instance's
    /// record, so that node learns of it through its watch.
    refusal: Option<CatalogError>,
}

impl Checked {
    /// The refusal to answer once the writes are applied, if any.
    pub fn take_refusal(&mut self) -> Option<CatalogError> {
        self.refusal.take()
    }
}

/// How long a node's registration holds its name without being renewed
/// (seconds, on the registry's clock): a node renews it every
/// [`NODE_HEARTBEAT_SECONDS`], so three missed renewals free the name for
/// another instance.
pub const NODE_LEASE_SECONDS: i64 = 30;

/// How often a running node renews its registration, in seconds.
pub const NODE_HEARTBEAT_SECONDS: u64 = 10;

/// Why `new` may not take over the node record `old` at `now`: another
/// instance holds it and was heard from within the lease. Nodes older than
/// the instance id (empty on either side) are not compared.
fn node_in_use(old: &NodeRecord, new: &NodeRecord, now: i64) -> Option<String> {
    if old.instance_id.is_empty()
        || new.instance_id.is_empty()
        || old.instance_id == new.instance_id
        || old.heard_unix == 0
    {
        return None;
    }
    let ago = now.saturating_sub(old.heard_unix);
    if ago >= NODE_LEASE_SECONDS {
        return None;
    }
    Some(format!(
        "node {agency}/{name} is already running: instance {old_id} at {endpoint}, heard from {ago} s ago (this is instance {new_id}). Two processes with one certificate would take each other's catalog entry and calls. Stop one of them: if the other is gone for good (its server or data directory lost), start this one again after {wait} s, when its registration lapses; to run both, give this one its own name and certificate (`lgsp node init --name node-2`)",
        agency = old.agency_code,
        name = old.name,
        old_id = old.instance_id,
        endpoint = old.endpoint,
        new_id = new.instance_id,
        wait = NODE_LEASE_SECONDS - ago,
    ))
}

/// What a command asks, checked without reading the catalog: its shape,
/// its key and whether the asker's role may change that record. Decided the
/// same on every server, so a server may refuse it before proposing it;
/// everything that depends on the catalog's state (compare-and-set,
/// "agency must exist", a CRL newer than the one in force, the procedures)
/// is decided only at apply time, where the answer is linearizable.
pub fn precheck(
    asker: &Asker<'_>,
    command: &Command,
) -> Result<(RecordKind, String, Option<Value>), CatalogError> {
    match &command.op {
        Some(Op::Put(record)) => {
            let value = record
                .value
                .clone()
                .ok_or_else(|| CatalogError::InvalidArgument("put without a value".into()))?;
            let size = record.encoded_len();
            if size > MAX_RECORD_BYTES {
                return Err(CatalogError::InvalidArgument(format!(
                    "the record is {size} bytes; the catalog accepts at most {MAX_RECORD_BYTES}"
                )));
            }
            let (kind, key) = key_of(&value);
            if !record.key.is_empty() && record.key != key {
                return Err(CatalogError::InvalidArgument(format!(
                    "record key {:?} does not match its value (expected {key:?})",
                    record.key
                )));
            }
            authorize(asker, kind, &key)?;
            Ok((kind, key, Some(value)))
        }
        Some(Op::Delete(RecordRef { kind, key })) => {
            let kind = RecordKind::try_from(*kind)
                .ok()
                .filter(|k| *k != RecordKind::Unspecified)
                .ok_or_else(|| {
                    CatalogError::InvalidArgument("delete needs a record kind".into())
                })?;
            authorize(asker, kind, key)?;
            let province_only = match kind {
                RecordKind::Agency => Some("removing an agency from the catalog"),
                RecordKind::Grant => {
                    Some("deleting a grant (terminate it instead: `lgsp access terminate`)")
                }
                RecordKind::Request => Some("deleting an access request"),
                RecordKind::AuditAnchor => Some(
                    "removing a node's sharing-log anchor (the evidence that its log was not cut)",
                ),
                _ => None,
            };
            if let Some(what) = province_only
                && asker.acting() != Acting::Province
            {
                return Err(asker.needs(what, "the provincial admin"));
            }
            if kind == RecordKind::Crl {
                return Err(CatalogError::FailedPrecondition(
                    "the CRL cannot be deleted (that would bring every revoked certificate back); publish a newer one with `lgsp ca publish-crl`".into(),
                ));
            }
            Ok((kind, key.clone(), None))
        }
        None => Err(CatalogError::InvalidArgument("empty command".into())),
    }
}

/// Checks `command` from `asker` against the catalog as it is now.
pub fn check(
    db: &impl KvRead,
    asker: &Asker<'_>,
    command: &Command,
) -> Result<Checked, CatalogError> {
    let checked = check_command(db, asker, command)?;
    refuse_past_catalog_bound(db, &checked, MAX_CATALOG_BYTES)?;
    Ok(checked)
}

fn check_command(
    db: &impl KvRead,
    asker: &Asker<'_>,
    command: &Command,
) -> Result<Checked, CatalogError> {
    let (kind, key, value) = precheck(asker, command)?;
    let previous = get(db, kind, &key).map_err(|e| CatalogError::Internal(e.to_string()))?;
    let (value, derived, by_hub) = match value {
        Some(value) => {
            let (value, derived, by_hub) = check_value(db, asker, value, previous.as_ref())?;
            refuse_over_quota(db, asker, kind, &key, &value)?;
            // What the registry adds (history, kept windows) counts too.
            let size = value.encoded_len();
            if size > MAX_RECORD_BYTES {
                return Err(CatalogError::FailedPrecondition(format!(
                    "{kind:?} {key:?} would grow to {size} bytes with its history, past the {MAX_RECORD_BYTES} the catalog keeps per record; shorten it"
                )));
            }
            (Some(value), derived, by_hub)
        }
        None => (None, None, false),
    };
    // A hub registers the agencies of other instances its imports bring
    // in (checked in `federation::check_hub_write`); only the provincial
    // admin registers the province's own.
    let foreign_by_hub = by_hub && kind == RecordKind::Agency;
    if kind == RecordKind::Agency
        && previous.is_none()
        && asker.acting() != Acting::Province
        && !foreign_by_hub
    {
        return Err(asker.needs(
            "registering a new agency",
            "the provincial admin (an agency admin may update its agency once registered)",
        ));
    }
    let actual = previous
        .as_ref()
        .and_then(|r| r.meta.as_ref())
        .map_or(0, |m| m.mod_revision);
    if command.must_not_exist && previous.is_some() {
        return Err(CatalogError::Conflict {
            why: format!("{kind:?} {key:?} already exists (mod revision {actual})"),
            mod_revision: actual,
        });
    }
    if command.expected_mod_revision != 0 && command.expected_mod_revision != actual {
        return Err(CatalogError::Conflict {
            why: format!(
                "{kind:?} {key:?} is at mod revision {actual}, not the expected {}",
                command.expected_mod_revision
            ),
            mod_revision: actual,
        });
    }
    if value.is_none() && previous.is_none() {
        return Err(CatalogError::NotFound(format!(
            "{kind:?} {key:?} does not exist"
        )));
    }
    if value.is_none() {
        federation::check_hub_delete(db, asker, kind, &key)?;
        refuse_orphans(db, kind, &key)?;
    }
    if let (Some(Value::Node(new)), Some(Value::Node(old))) =
        (&value, previous.as_ref().and_then(|r| r.value.as_ref()))
        && let Some(why) = node_in_use(old, new, asker.now_unix)
    {
        let mut noted = old.clone();
        noted.contender = Some(NodeContender {
            instance_id: new.instance_id.clone(),
            endpoint: new.endpoint.clone(),
            at_unix: asker.now_unix,
        });
        return Ok(Checked {
            writes: vec![Write {
                kind,
                key,
                value: Some(Value::Node(noted)),
                previous,
            }],
            refusal: Some(CatalogError::InUse(why)),
        });
    }
    let mut writes = vec![Write {
        kind,
        key,
        value,
        previous,
    }];
    if let Some(derived) = derived {
        let (kind, key) = key_of(&derived);
        let previous = get(db, kind, &key).map_err(|e| CatalogError::Internal(e.to_string()))?;
        writes.push(Write {
            kind,
            key,
            value: Some(derived),
            previous,
        });
    }
    Ok(Checked {
        writes,
        refusal: None,
    })
}

/// Stages a checked change, each record it writes at the next revision;
/// returns the first stored record (for a put) and the history events, in
/// order. Fails only when the revision cannot be read.
pub fn apply(
    batch: &mut Staged,
    checked: Checked,
) -> Result<(Option<CatalogRecord>, Vec<WatchEvent>), StoreError> {
    let mut rev = revision(batch)?;
    let mut held = catalog_bytes(batch)?;
    let mut first = None;
    let mut events = Vec::with_capacity(checked.writes.len());
    for (
        i,
        Write {
            kind,
            key,
            value,
            previous,
        },
    ) in checked.writes.into_iter().enumerate()
    {
        rev += 1;
        let (record, event_type, event_record) = match value {
            Some(value) => {
                let create = previous
                    .as_ref()
                    .and_then(|r| r.meta.as_ref())
                    .map_or(rev, |m| m.create_revision);
                let record = CatalogRecord {
                    kind: kind as i32,
                    key: key.clone(),
                    meta: Some(Meta {
                        create_revision: create,
                        mod_revision: rev,
                    }),
                    value: Some(value),
                };
                let db_key = record_db_key(kind, &key);
                let stored = record.encode_to_vec();
                let old = batch.read(&db_key)?.map_or(0, |v| v.len() as u64);
                held = (held + stored.len() as u64).saturating_sub(old);
                batch.insert(db_key, stored);
                (Some(record.clone()), EventType::Put, record)
            }
            None => {
                let db_key = record_db_key(kind, &key);
                let old = batch.read(&db_key)?.map_or(0, |v| v.len() as u64);
                held = held.saturating_sub(old);
                batch.remove(db_key);
                let mut last = previous.unwrap_or_default();
                last.meta.get_or_insert_with(Meta::default).mod_revision = rev;
                (None, EventType::Delete, last)
            }
        };
        if i == 0 {
            first = record;
        }
        let event = WatchEvent {
            r#type: event_type as i32,
            revision: rev,
            record: Some(event_record),
        };
        batch.insert(history_key(rev), event.encode_to_vec());
        events.push(event);
    }
    batch.insert(REVISION, rev.to_be_bytes());
    batch.insert(CATALOG_BYTES, held.to_be_bytes());
    Ok((first, events))
}

/// The answer to a write repeated under its idempotency key (see
/// `idempotency.rs`): the revision it was applied at and, for a put, the
/// record's kind, key and revisions, with its value as written while the
/// history still holds that revision. Reading the history is best effort:
/// this is only what the client is told, never what the catalog decides.
pub fn repeated_answer(
    db: &impl KvRead,
    command: &Command,
    mut answer: ApplyResponse,
) -> ApplyResponse {
    let Some(record) = &mut answer.record else {
        return answer;
    };
    if let Some(Op::Put(CatalogRecord {
        value: Some(value), ..
    })) = &command.op
    {
        let (kind, key) = key_of(value);
        record.kind = kind as i32;
        record.key = key;
    }
    let revision = record.meta.map_or(0, |m| m.mod_revision);
    if let Ok(Some(bytes)) = db.read(&history_key(revision))
        && let Ok(event) = WatchEvent::decode(bytes.as_slice())
        && let Some(written) = event.record
        && written.kind == record.kind
        && written.key == record.key
    {
        record.value = written.value;
    }
    answer
}

/// History events from `from` on, in order, up to the current revision.
/// A failed or damaged read is an error in the sequence, never a silent gap:
/// a watcher must not believe it saw every change.
pub fn history(db: &Kv, from: u64) -> impl Iterator<Item = Result<WatchEvent, StoreError>> + '_ {
    let end = prefix_end(HISTORY_PREFIX);
    db.range(&history_key(from), end.as_deref()).map(|item| {
        let (k, v) = item?;
        WatchEvent::decode(v.as_slice()).map_err(|e| damaged(&k, e))
    })
}

/// At most `most` history events from revision `from` on, in order: the
/// store is asked for that range of revisions only, so a watcher far behind
/// holds one chunk at a time, whatever the lag. Fewer come back when the
/// history ends (or has a gap, which the caller must check: it starts with
/// `from` unless `from` was compacted away).
pub fn history_chunk(db: &Kv, from: u64, most: u64) -> Result<Vec<WatchEvent>, StoreError> {
    let end = history_key(from.saturating_add(most.max(1)));
    db.range(&history_key(from), Some(&end))
        .map(|item| {
            let (k, v) = item?;
            WatchEvent::decode(v.as_slice()).map_err(|e| damaged(&k, e))
        })
        .collect()
}

/// Drops history older than the newest `keep` events, at most `most` at a
/// time.
pub fn compact_history(db: &Kv, keep: u64, most: u64) -> Result<(), RegistryError> {
    let rev = revision(db)?;
    let oldest = compact_revision(db)?;
    if rev < keep || rev - keep <= oldest {
        return Ok(());
    }
    // In steps of a sixteenth of the history (one event per write would
    // cost a batch, so a disk write, per write), never more than
    // `most` (deleting more would stall the consensus loop).
    let step = (keep / 16).clamp(1, most.max(1));
    if rev - keep + 1 - oldest < step {
        return Ok(());
    }
    let new_oldest = (rev - keep + 1).min(oldest + most.max(1));
    let mut batch = Staged::new(db);
    for item in db.range(&history_key(oldest), Some(&history_key(new_oldest))) {
        batch.remove(item?.0);
    }
    batch.insert(COMPACT_REVISION, new_oldest.to_be_bytes());
    Ok(batch.commit()?)
}

/// Stages `member`'s addresses (peer and client) in `batch`, replacing what
/// was known of that server.
pub fn put_member(batch: &mut Staged, member: &Member) {
    batch.insert(member_key(member.id), member.encode_to_vec());
}

/// Stages in `batch` the removal of what is known of server `id`'s
/// addresses.
pub fn remove_member(batch: &mut Staged, id: u64) {
    batch.remove(member_key(id));
}

/// Every member whose address this server knows.
pub fn members(db: &Kv) -> Result<Vec<Member>, StoreError> {
    db.scan_prefix(MEMBER_PREFIX)
        .map(|item| {
            let (k, v) = item?;
            Member::decode(v.as_slice()).map_err(|e| damaged(&k, e))
        })
        .collect()
}

/// The whole state machine, encoded, for a raft snapshot.
pub fn snapshot_data(db: &Kv) -> Result<Vec<u8>, RegistryError> {
    let mut records = Vec::new();
    for item in db.scan_prefix(RECORD_PREFIX) {
        let (k, v) = item?;
        records.push(CatalogRecord::decode(v.as_slice()).map_err(|e| damaged(&k, e))?);
    }
    let (applied_keys, idempotency_floor_ms) = crate::idempotency::snapshot(db)?;
    Ok(CatalogSnapshot {
        revision: revision(db)?,
        records,
        members: members(db)?,
        applied_keys,
        idempotency_floor_ms,
        apply_clock_ms: apply_clock_ms(db)?,
    }
    .encode_to_vec())
}

/// Replaces the state machine with a snapshot's, in `batch`. The history
/// restarts after the snapshot's revision: older watchers must reload.
pub fn restore(db: &Kv, batch: &mut Staged, data: &[u8]) -> Result<(), RegistryError> {
    let snapshot = CatalogSnapshot::decode(data)
        .map_err(|e| RegistryError::Storage(format!("snapshot from the leader is damaged: {e}")))?;
    for prefix in [RECORD_PREFIX, HISTORY_PREFIX, MEMBER_PREFIX] {
        for item in db.scan_prefix(prefix) {
            batch.remove(item?.0);
        }
    }
    let mut held = 0u64;
    for record in &snapshot.records {
        let kind = RecordKind::try_from(record.kind).unwrap_or_default();
        let stored = record.encode_to_vec();
        held += stored.len() as u64;
        batch.insert(record_db_key(kind, &record.key), stored);
    }
    batch.insert(CATALOG_BYTES, held.to_be_bytes());
    for member in &snapshot.members {
        batch.insert(member_key(member.id), member.encode_to_vec());
    }
    crate::idempotency::restore(
        db,
        batch,
        &snapshot.applied_keys,
        snapshot.idempotency_floor_ms,
    )?;
    batch.insert(REVISION, snapshot.revision.to_be_bytes());
    batch.insert(COMPACT_REVISION, (snapshot.revision + 1).to_be_bytes());
    batch.insert(APPLY_CLOCK, (snapshot.apply_clock_ms as u64).to_be_bytes());
    Ok(())
}

/// The catalog as the state machine the raft log replicates.
#[derive(Clone, Copy, Debug, Default)]
pub struct Catalog;

impl StateMachine for Catalog {
    fn snapshot_data(&self, db: &Kv) -> Result<Vec<u8>, RegistryError> {
        snapshot_data(db)
    }

    fn restore(&self, db: &Kv, batch: &mut Staged, data: &[u8]) -> Result<(), RegistryError> {
        restore(db, batch, data)
    }
}

#[cfg(test)]
mod tests;

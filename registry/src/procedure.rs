//! The regulation's procedures, enforced when a change is applied: who may
//! act (roles), what a published service must carry (D47 Art. 23-26, 41; no
//! state secret, Art. 1.2), access requests and their decisions (D47
//! Art. 35, 38), suspension and termination (D47 Art. 43-44), and the
//! history every service, grant and request keeps.
//!
//! Every rule here depends only on the catalog, the command, the asker's
//! certificate and the time the receiving server stamped on the proposal,
//! so every server decides alike.

use crate::calendar::WorkCalendar;
use crate::catalog::get;
use crate::error::CatalogError;
use crate::kv::KvRead;
use lgsp_certs::identity::{AgencyCode, Role, SpiffeId};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{
    AccessRequest, Calendar, Change, Grant, GrantStatus, ItemClass, RecordKind, RequestStatus,
    SecurityClass, Service, ServiceStatus, SuspensionKind, TerminationKind,
};
use std::collections::BTreeSet;

/// Working days a provider has to decide an access request (D47 Art. 35).
pub const DECISION_WORKING_DAYS: u32 = 5;

/// Working days of notice a scheduled maintenance needs (D47 Art. 43).
pub const MAINTENANCE_NOTICE_WORKING_DAYS: u32 = 7;

/// History entries a record keeps (the newest).
pub const MAX_HISTORY: usize = 50;

/// Who asks for a change, and when, as every server sees it when applying.
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    /// The SPIFFE ID of the certificate that asked.
    pub actor: &'a SpiffeId,
    /// The agency that runs the registry (the provincial IT department):
    /// its admin certificates are the provincial admin.
    pub province: &'a AgencyCode,
    /// When the receiving server took the command, Unix seconds.
    pub now_unix: i64,
}

/// The role an asker acts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acting<'a> {
    /// The provincial admin: an admin certificate of the provincial IT department.
    Province,
    /// An agency admin: an admin certificate of this agency, acting for it only.
    AgencyAdmin(&'a str),
    /// A node or hub certificate of this agency.
    Machine(&'a str),
    /// Any other certificate (registry servers): no catalog changes.
    Nobody,
}

impl Asker<'_> {
    /// The role this asker acts in.
    pub fn acting(&self) -> Acting<'_> {
        let agency = self.actor.agency.as_str();
        match self.actor.role {
            Role::Admin if agency == self.province.as_str() => Acting::Province,
            Role::Admin => Acting::AgencyAdmin(agency),
            Role::Node | Role::Hub => Acting::Machine(agency),
            _ => Acting::Nobody,
        }
    }

    fn is_province(&self) -> bool {
        self.acting() == Acting::Province
    }

    /// Whether this asker is the provincial admin or an admin of `agency`.
    fn admin_of(&self, agency: &str) -> bool {
        match self.acting() {
            Acting::Province => true,
            Acting::AgencyAdmin(own) => own == agency,
            _ => false,
        }
    }

    /// A refusal naming the role `what` needs.
    pub fn needs(&self, what: &str, role: &str) -> CatalogError {
        let is = match self.acting() {
            Acting::Province => "the provincial admin".to_owned(),
            Acting::AgencyAdmin(a) => format!("an admin of agency {a}"),
            Acting::Machine(a) => format!("a {} of agency {a}", self.actor.role),
            Acting::Nobody => format!("a {} certificate", self.actor.role),
        };
        CatalogError::PermissionDenied(format!("{what} needs {role}; {} is {is}", self.actor))
    }

    fn change(&self, action: impl Into<String>, reason: &str) -> Change {
        Change {
            at_unix: self.now_unix,
            actor: self.actor.to_string(),
            action: action.into(),
            reason: reason.to_owned(),
        }
    }
}

fn invalid(why: impl Into<String>) -> CatalogError {
    CatalogError::InvalidArgument(why.into())
}

fn precondition(why: impl Into<String>) -> CatalogError {
    CatalogError::FailedPrecondition(why.into())
}

fn push_history(history: &mut Vec<Change>, change: Change) {
    history.push(change);
    if history.len() > MAX_HISTORY {
        let extra = history.len() - MAX_HISTORY;
        history.drain(..extra);
    }
}

fn internal(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Internal(e.to_string())
}

/// The province's calendar as the catalog holds it.
pub fn calendar(db: &impl KvRead) -> Result<WorkCalendar, CatalogError> {
    let record = get(db, RecordKind::Calendar, "province").map_err(internal)?;
    let calendar = match record.and_then(|r| r.value) {
        Some(Value::Calendar(c)) => Some(c),
        _ => None,
    };
    WorkCalendar::from_record(calendar.as_ref()).map_err(internal)
}

/// Checks a calendar before it is stored (provincial admin only).
pub fn check_calendar(asker: &Asker<'_>, c: &Calendar) -> Result<(), CatalogError> {
    if !asker.is_province() {
        return Err(asker.needs("changing the province's calendar", "the provincial admin"));
    }
    WorkCalendar::from_record(Some(c)).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

fn service_of(db: &impl KvRead, id: &str) -> Result<Service, CatalogError> {
    match get(db, RecordKind::Service, id)
        .map_err(internal)?
        .and_then(|r| r.value)
    {
        Some(Value::Service(s)) => Ok(s),
        _ => Err(precondition(format!("service {id} is not published"))),
    }
}

/// The names of `service`'s items that are special-request among `items`
/// (every item when `items` is empty).
fn special_items(service: &Service, items: &[String]) -> Vec<String> {
    service
        .items
        .iter()
        .filter(|i| i.class == ItemClass::Special as i32)
        .filter(|i| items.is_empty() || items.contains(&i.name))
        .map(|i| i.name.clone())
        .collect()
}

/// Refuses items the service does not declare (when it declares any).
fn known_items(service: &Service, items: &[String]) -> Result<(), CatalogError> {
    if service.items.is_empty() {
        return Ok(());
    }
    let unknown: Vec<&str> = items
        .iter()
        .filter(|n| !service.items.iter().any(|i| &i.name == *n))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(invalid(format!(
            "service {} has no data item(s) {}; it offers: {}",
            service.id,
            unknown.join(", "),
            service
                .items
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// A grant that covers special-request items needs an agreement in force
/// (D47 Art. 38).
fn require_agreement(
    service: &Service,
    items: &[String],
    agreement: Option<&lgsp_proto::Agreement>,
    now: i64,
) -> Result<(), CatalogError> {
    let special = special_items(service, items);
    if special.is_empty() {
        return Ok(());
    }
    match agreement {
        Some(a) if !a.reference.trim().is_empty() && (a.until_unix == 0 || a.until_unix > now) => {
            Ok(())
        }
        Some(a) if !a.reference.trim().is_empty() => Err(precondition(format!(
            "agreement {} has expired; special-request items ({}) need an agreement in force (D47 Art. 38)",
            a.reference,
            special.join(", ")
        ))),
        _ => Err(precondition(format!(
            "items {} of {} are special-request data: a grant covering them needs an agreement record (D47 Art. 38): give its reference (--agreement) and validity (--agreement-until)",
            special.join(", "),
            service.id
        ))),
    }
}

/// Checks a service as published or changed: what D47 Art. 23-26 ask, no
/// state secret (Art. 1.2), maintenance windows with their notice (D47
/// Art. 43); bumps the version on a change and records it.
pub fn check_service(
    db: &impl KvRead,
    asker: &Asker<'_>,
    s: &mut Service,
    previous: Option<&Service>,
) -> Result<(), CatalogError> {
    if s.security == SecurityClass::StateSecret as i32 {
        return Err(invalid(format!(
            "service {} is classified a state secret; state-secret data never enters the platform (Art. 1.2)",
            s.id
        )));
    }
    let mut names = BTreeSet::new();
    for item in &mut s.items {
        if item.name.trim().is_empty() || item.name.chars().count() > 100 {
            return Err(invalid("a data item needs a name of 1 to 100 characters"));
        }
        if !names.insert(item.name.clone()) {
            return Err(invalid(format!(
                "data item {:?} is listed twice",
                item.name
            )));
        }
        if item.security == SecurityClass::StateSecret as i32 {
            return Err(invalid(format!(
                "data item {:?} of {} is classified a state secret; state-secret data never enters the platform (Art. 1.2)",
                item.name, s.id
            )));
        }
        if item.class == ItemClass::Unspecified as i32 {
            item.class = ItemClass::Shared as i32;
        }
    }
    if s.items.len() > 500 {
        return Err(invalid("a service may declare at most 500 data items"));
    }
    let url = &s.documentation_url;
    if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid(format!(
            "documentation link {:?} is not an http(s) URL",
            s.documentation_url
        )));
    }
    if let Some(v) = &s.validity
        && (v.period_seconds < 0 || (v.until_unix != 0 && v.until_unix < v.from_unix))
    {
        return Err(invalid(
            "data validity: the period is negative or the window ends before it starts",
        ));
    }
    let cal = calendar(db)?;
    let now = asker.now_unix;
    // Publishing again without windows keeps those announced.
    if s.maintenance.is_empty()
        && let Some(p) = previous
    {
        s.maintenance = p.maintenance.clone();
    }
    // Maintenance windows: the ones already announced are kept as they
    // were; new ones need notice, or force majeure with a reason.
    let before = previous.map(|p| p.maintenance.as_slice()).unwrap_or(&[]);
    let mut announced = Vec::new();
    for w in &mut s.maintenance {
        if before.contains(w) {
            continue;
        }
        if w.reason.trim().is_empty() {
            return Err(invalid(
                "a maintenance window needs a reason (what and why; consumers are told)",
            ));
        }
        if w.force_majeure {
            w.start_unix = now;
        } else {
            let notice = cal.working_days_between(now, w.start_unix);
            if w.start_unix <= now || notice < MAINTENANCE_NOTICE_WORKING_DAYS {
                return Err(precondition(format!(
                    "maintenance starting {} is announced {notice} working day(s) ahead; D47 Art. 43 needs {MAINTENANCE_NOTICE_WORKING_DAYS} (start on or after {}), or mark it force majeure with a reason",
                    cal.show(w.start_unix),
                    cal.show(cal.add_working_days(now, MAINTENANCE_NOTICE_WORKING_DAYS)),
                )));
            }
        }
        if w.end_unix <= w.start_unix {
            return Err(invalid(
                "a maintenance window needs an expected restore time after its start",
            ));
        }
        w.announced_unix = now;
        announced.push(format!(
            "maintenance {}{} to {}",
            if w.force_majeure {
                "(force majeure) "
            } else {
                ""
            },
            cal.show(w.start_unix),
            cal.show(w.end_unix)
        ));
        announced.push(w.reason.clone());
    }
    if s.maintenance.len() > 100 {
        return Err(invalid("a service keeps at most 100 maintenance windows"));
    }
    let mut history = previous.map(|p| p.history.clone()).unwrap_or_default();
    match previous {
        None => push_history(
            &mut history,
            asker.change(format!("published v{}", s.version), ""),
        ),
        Some(p) => {
            let (mut a, mut b) = (p.clone(), s.clone());
            for x in [&mut a, &mut b] {
                x.history.clear();
                x.maintenance.clear();
                x.version.clear();
                x.status = 0;
            }
            if a != b {
                // A change bumps the version, unless the publisher gave a new one.
                if s.version == p.version {
                    s.version = bump(&p.version);
                    if s.version.chars().count() > 40 {
                        return Err(invalid(format!(
                            "service version {:?} cannot be bumped past 40 characters; publish with --service-version",
                            p.version
                        )));
                    }
                }
                push_history(
                    &mut history,
                    asker.change(format!("changed to v{}", s.version), ""),
                );
            } else if s.version != p.version && !s.version.is_empty() {
                push_history(
                    &mut history,
                    asker.change(format!("version {}", s.version), ""),
                );
            }
            if s.status != p.status {
                let status = ServiceStatus::try_from(s.status).unwrap_or_default();
                push_history(
                    &mut history,
                    asker.change(
                        format!(
                            "status {}",
                            status
                                .as_str_name()
                                .trim_start_matches("SERVICE_STATUS_")
                                .to_lowercase()
                        ),
                        "",
                    ),
                );
            }
        }
    }
    for pair in announced.chunks(2) {
        push_history(&mut history, asker.change(pair[0].clone(), &pair[1]));
    }
    s.history = history;
    Ok(())
}

/// The next version after `v`: its last number plus one (`3` → `4`,
/// `2.1` → `2.2`), or `v.1` when it ends in no number.
pub(crate) fn bump(v: &str) -> String {
    let digits = v.len() - v.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    match v[v.len() - digits..].parse::<u64>() {
        Ok(n) if digits > 0 => format!("{}{}", &v[..v.len() - digits], n + 1),
        _ if v.is_empty() => "1".to_owned(),
        _ => format!("{v}.1"),
    }
}

fn status_name(g: &Grant) -> &'static str {
    match GrantStatus::try_from(g.status).unwrap_or_default() {
        GrantStatus::Active => "active",
        GrantStatus::Suspended => "suspended",
        GrantStatus::Terminated => "terminated",
        GrantStatus::Unspecified => "unspecified",
    }
}

/// Checks a change to a grant: created directly by the provincial admin
/// (the procedure creates grants by approving requests), suspended for a
/// breach or a security risk with a reason and how to restore, resumed, or
/// terminated for a D47 Art. 44 reason, by the provider agency's admin or
/// the provincial admin. What was granted (items, dates, the request, the
/// agreement) is kept when only the state changes.
pub fn check_grant(
    db: &impl KvRead,
    asker: &Asker<'_>,
    g: &mut Grant,
    previous: Option<&Grant>,
) -> Result<(), CatalogError> {
    let service = service_of(db, &g.service_id)?;
    let provider = service.agency_code.clone();
    let status = GrantStatus::try_from(g.status).unwrap_or_default();
    let live = previous.filter(|p| p.status != GrantStatus::Terminated as i32);
    let Some(prev) = live else {
        // A new grant (or one after a termination).
        if !asker.is_province() {
            return Err(asker.needs(
                "granting access directly",
                &format!(
                    "the provincial admin (agency {provider} approves access requests instead: `lgsp requests approve`)"
                ),
            ));
        }
        if status != GrantStatus::Active {
            return Err(precondition(format!(
                "there is no grant of {} to {} to {}",
                g.service_id,
                g.consumer_agency,
                if status == GrantStatus::Suspended {
                    "suspend"
                } else {
                    "terminate"
                }
            )));
        }
        return check_new_grant(db, asker, &service, g, previous, "granted directly");
    };
    if !asker.admin_of(&provider) {
        return Err(asker.needs(
            &format!(
                "changing the grant of {} to {}",
                g.service_id, g.consumer_agency
            ),
            &format!("an admin of the provider agency {provider} or the provincial admin"),
        ));
    }
    let mut next = prev.clone();
    let action = match (
        GrantStatus::try_from(prev.status).unwrap_or_default(),
        status,
    ) {
        (_, GrantStatus::Suspended) => {
            let kind = SuspensionKind::try_from(g.suspension).unwrap_or_default();
            if kind == SuspensionKind::Unspecified {
                return Err(invalid(
                    "a suspension of one consumer names its kind (D47 Art. 43): a breach or a security risk",
                ));
            }
            if g.reason.trim().is_empty() || g.restore.trim().is_empty() {
                return Err(invalid(
                    "a suspension tells the consumer what and why (--reason) and how to restore access (--restore) (D47 Art. 43)",
                ));
            }
            next.suspension = g.suspension;
            next.restore = g.restore.clone();
            "suspended"
        }
        (GrantStatus::Suspended, GrantStatus::Active) => {
            next.suspension = 0;
            next.restore.clear();
            "resumed"
        }
        (GrantStatus::Active, GrantStatus::Active) => {
            // A change of what is granted: only the provincial admin, as a new grant.
            if !asker.is_province() {
                return Err(asker.needs(
                    "changing what a grant covers",
                    "the provincial admin (or a new access request)",
                ));
            }
            return check_new_grant(db, asker, &service, g, Some(prev), "grant changed");
        }
        (_, GrantStatus::Terminated) => {
            if TerminationKind::try_from(g.termination).unwrap_or_default()
                == TerminationKind::Unspecified
            {
                return Err(invalid(
                    "a termination names one of the D47 Art. 44 reasons: purpose-mismatch, cannot-restore, ordered, no-longer-needed, agreement-expired",
                ));
            }
            next.termination = g.termination;
            next.suspension = 0;
            "terminated"
        }
        (_, to) => {
            return Err(precondition(format!(
                "the grant is {}; it cannot become {}",
                status_name(prev),
                to.as_str_name()
            )));
        }
    };
    next.status = g.status;
    next.reason = g.reason.clone();
    push_history(&mut next.history, asker.change(action, &g.reason));
    *g = next;
    Ok(())
}

/// Checks a grant coming into force (granted directly, or from an approved
/// request): its consumer is a registered agency, named with its trust
/// domain when it is of another instance; its end is ahead; its items are
/// the service's; special-request items are under an agreement in force.
fn check_new_grant(
    db: &impl KvRead,
    asker: &Asker<'_>,
    service: &Service,
    g: &mut Grant,
    previous: Option<&Grant>,
    action: &str,
) -> Result<(), CatalogError> {
    let now = asker.now_unix;
    let consumer = get(db, RecordKind::Agency, &g.consumer_agency)
        .map_err(internal)?
        .and_then(|r| match r.value {
            Some(Value::Agency(a)) => Some(a),
            _ => None,
        })
        .ok_or_else(|| {
            precondition(format!(
                "agency {} is not registered; the provincial admin registers it with `lgsp agency register`",
                g.consumer_agency
            ))
        })?;
    g.consumer_trust_domain = consumer.trust_domain;
    if g.expires_unix != 0 && g.expires_unix <= now {
        return Err(invalid(
            "the grant's end date has already passed; give a later --until",
        ));
    }
    known_items(service, &g.items)?;
    require_agreement(service, &g.items, g.agreement.as_ref(), now)?;
    g.suspension = 0;
    g.termination = 0;
    g.restore.clear();
    let mut history = previous.map(|p| p.history.clone()).unwrap_or_default();
    push_history(&mut history, asker.change(action, &g.reason));
    g.history = history;
    Ok(())
}

/// Checks a filed or decided access request (D47 Art. 35). Returns the
/// grant an approval creates.
pub fn check_request(
    db: &impl KvRead,
    asker: &Asker<'_>,
    r: &mut AccessRequest,
    previous: Option<&AccessRequest>,
) -> Result<Option<Grant>, CatalogError> {
    let now = asker.now_unix;
    let Some(prev) = previous else {
        return file(db, asker, r).map(|()| None);
    };
    if prev.status != RequestStatus::Filed as i32 {
        return Err(precondition(format!(
            "request {} was already {}; file a new request",
            prev.id,
            request_status(prev.status)
        )));
    }
    // The provider is the service id's agency: a request whose service was
    // removed since can still be withdrawn or refused.
    let provider = prev
        .service_id
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let status = RequestStatus::try_from(r.status).unwrap_or_default();
    let mut next = prev.clone();
    let mut grant = None;
    match status {
        RequestStatus::Withdrawn => {
            if !asker.admin_of(&prev.consumer_agency) {
                return Err(asker.needs(
                    "withdrawing a request",
                    &format!("an admin of agency {}", prev.consumer_agency),
                ));
            }
        }
        RequestStatus::Refused | RequestStatus::Approved => {
            if !asker.admin_of(&provider) {
                return Err(asker.needs(
                    &format!("deciding request {}", prev.id),
                    &format!("an admin of the provider agency {provider} or the provincial admin"),
                ));
            }
            if status == RequestStatus::Refused && r.decision_reason.trim().is_empty() {
                return Err(invalid(
                    "a refusal states its reason (Art. 13.1a): give --reason",
                ));
            }
            next.decision_reason = r.decision_reason.clone();
            next.decided_unix = now;
            if status == RequestStatus::Approved {
                let service = service_of(db, &prev.service_id)?;
                let items = if r.granted_items.is_empty() {
                    prev.items.clone()
                } else {
                    let beyond: Vec<&str> = r
                        .granted_items
                        .iter()
                        .filter(|i| !prev.items.is_empty() && !prev.items.contains(i))
                        .map(String::as_str)
                        .collect();
                    if !beyond.is_empty() {
                        return Err(invalid(format!(
                            "item(s) {} were not requested; approve a subset of: {}",
                            beyond.join(", "),
                            prev.items.join(", ")
                        )));
                    }
                    r.granted_items.clone()
                };
                let mut g = Grant {
                    consumer_agency: prev.consumer_agency.clone(),
                    service_id: prev.service_id.clone(),
                    status: GrantStatus::Active as i32,
                    expires_unix: r.granted_until_unix,
                    reason: if r.decision_reason.is_empty() {
                        format!("request {}", prev.id)
                    } else {
                        r.decision_reason.clone()
                    },
                    items: items.clone(),
                    request_id: prev.id.clone(),
                    agreement: r.agreement.clone(),
                    ..Default::default()
                };
                let old = get(
                    db,
                    RecordKind::Grant,
                    &crate::keys::GrantKey::format(&g.service_id, &g.consumer_agency),
                )
                .map_err(internal)?
                .and_then(|r| match r.value {
                    Some(Value::Grant(g)) => Some(g),
                    _ => None,
                });
                // Approving does not replace a grant in force (nor lift a
                // suspension): that is the provincial admin's, or a
                // termination first.
                if old
                    .as_ref()
                    .is_some_and(|g| g.status != GrantStatus::Terminated as i32)
                    && !asker.is_province()
                {
                    return Err(precondition(format!(
                        "agency {} already holds a grant of {} ({}); terminate it first, or ask the provincial admin to change it",
                        prev.consumer_agency,
                        prev.service_id,
                        status_name(old.as_ref().expect("checked"))
                    )));
                }
                check_new_grant(
                    db,
                    asker,
                    &service,
                    &mut g,
                    old.as_ref(),
                    &format!("approved request {}", prev.id),
                )?;
                next.granted_items = items;
                next.granted_until_unix = r.granted_until_unix;
                next.agreement = r.agreement.clone();
                grant = Some(g);
            }
        }
        _ => {
            return Err(invalid(
                "a filed request can only be approved, refused or withdrawn",
            ));
        }
    }
    next.status = r.status;
    push_history(
        &mut next.history,
        asker.change(request_status(r.status), &r.decision_reason),
    );
    *r = next;
    Ok(grant)
}

/// A request's status as a word.
pub fn request_status(status: i32) -> &'static str {
    match RequestStatus::try_from(status).unwrap_or_default() {
        RequestStatus::Filed => "filed",
        RequestStatus::Approved => "approved",
        RequestStatus::Refused => "refused",
        RequestStatus::Withdrawn => "withdrawn",
        RequestStatus::Unspecified => "unspecified",
    }
}

fn file(db: &impl KvRead, asker: &Asker<'_>, r: &mut AccessRequest) -> Result<(), CatalogError> {
    let (consumer, _) =
        r.id.split_once('/')
            .ok_or_else(|| invalid(format!("request id {:?} is not <agency>/<name>", r.id)))?;
    if r.consumer_agency.is_empty() {
        r.consumer_agency = consumer.to_owned();
    }
    if r.consumer_agency != consumer {
        return Err(invalid(format!(
            "request {} is filed under agency {consumer}, not {}",
            r.id, r.consumer_agency
        )));
    }
    if !asker.admin_of(consumer) {
        return Err(asker.needs(
            "filing an access request",
            &format!("an admin of the consumer agency {consumer} or the provincial admin"),
        ));
    }
    if !matches!(
        RequestStatus::try_from(r.status).unwrap_or_default(),
        RequestStatus::Filed | RequestStatus::Unspecified
    ) {
        return Err(invalid("a new request is filed, not decided"));
    }
    let service = service_of(db, &r.service_id)?;
    if service.agency_code == consumer {
        return Err(invalid(format!(
            "{} is agency {consumer}'s own service; it needs no access request",
            r.service_id
        )));
    }
    if service.status != ServiceStatus::Active as i32 {
        return Err(precondition(format!(
            "service {} is not active",
            r.service_id
        )));
    }
    let agency = get(db, RecordKind::Agency, consumer)
        .map_err(internal)?
        .and_then(|r| match r.value {
            Some(Value::Agency(a)) => Some(a),
            _ => None,
        })
        .ok_or_else(|| precondition(format!("agency {consumer} is not registered")))?;
    if r.requester_name.trim().is_empty() {
        r.requester_name = agency.name;
    }
    for (field, value) in [
        ("application id (--app-id)", &r.application_id),
        ("application name (--app-name)", &r.application_name),
        ("purpose (--purpose)", &r.purpose),
        ("pull frequency (--frequency)", &r.frequency),
    ] {
        if value.trim().is_empty() {
            return Err(invalid(format!(
                "an access request states its {field} (D47 Art. 35)"
            )));
        }
    }
    if r.items.is_empty() && !service.items.is_empty() {
        return Err(invalid(format!(
            "an access request names the data items it needs (D47 Art. 35); {} offers: {}",
            r.service_id,
            service
                .items
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    known_items(&service, &r.items)?;
    let cal = calendar(db)?;
    r.status = RequestStatus::Filed as i32;
    r.filed_unix = asker.now_unix;
    r.due_unix = cal.add_working_days(asker.now_unix, DECISION_WORKING_DAYS);
    r.decision_reason.clear();
    r.granted_items.clear();
    r.granted_until_unix = 0;
    r.agreement = None;
    r.decided_unix = 0;
    r.history.clear();
    push_history(&mut r.history, asker.change("filed", &r.purpose));
    Ok(())
}

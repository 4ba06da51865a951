//! Federation records in the catalog: the other lgsp instances this
//! province federates with (peers), the province services it exports to
//! them, and their services it imports. The provincial admin changes them;
//! the province's hub writes what an import brings in (the other instance's
//! agencies and services, marked foreign), and nothing else of the catalog.

use crate::catalog::get;
use crate::error::CatalogError;
use crate::kv::KvRead;
use crate::procedure::{Acting, Asker};
use lgsp_certs::identity::{Role, validate_name};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{
    Agency, CatalogRecord, Export, FederationPeer, Import, RecordKind, RestClient, Service,
};
use prost::Message as _;

fn invalid(why: impl Into<String>) -> CatalogError {
    CatalogError::InvalidArgument(why.into())
}

fn precondition(why: impl Into<String>) -> CatalogError {
    CatalogError::FailedPrecondition(why.into())
}

fn internal(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Internal(e.to_string())
}

/// The key of an export: `<service-id>|<peer>`.
pub fn export_key(service_id: &str, peer: &str) -> String {
    format!("{service_id}|{peer}")
}

/// The key of an import: `<peer>|<service-id>`.
pub fn import_key(peer: &str, service_id: &str) -> String {
    format!("{peer}|{service_id}")
}

/// Checks a federation key's shape.
pub fn validate_key(kind: RecordKind, key: &str) -> Result<(), CatalogError> {
    let bad = || invalid(format!("{kind:?} key {key:?} is malformed"));
    match kind {
        RecordKind::Peer | RecordKind::RestClient => {
            validate_name(key).map_err(|e| invalid(e.to_string()))
        }
        RecordKind::Export => {
            let (service, peer) = key.split_once('|').ok_or_else(bad)?;
            validate_name(peer).map_err(|e| invalid(e.to_string()))?;
            service
                .parse::<crate::ServiceId>()
                .map(drop)
                .map_err(|_| bad())
        }
        RecordKind::Import => {
            let (peer, service) = key.split_once('|').ok_or_else(bad)?;
            validate_name(peer).map_err(|e| invalid(e.to_string()))?;
            service
                .parse::<crate::ServiceId>()
                .map(drop)
                .map_err(|_| bad())
        }
        _ => Ok(()),
    }
}

fn agency(db: &impl KvRead, code: &str) -> Result<Option<Agency>, CatalogError> {
    Ok(get(db, RecordKind::Agency, code)
        .map_err(internal)?
        .and_then(|r| match r.value {
            Some(Value::Agency(a)) => Some(a),
            _ => None,
        }))
}

/// Whether `code` is an agency of another instance.
pub fn is_foreign(db: &impl KvRead, code: &str) -> Result<bool, CatalogError> {
    Ok(agency(db, code)?.is_some_and(|a| !a.trust_domain.is_empty()))
}

/// The hub's own node key, `<agency>/<name>`, from its certificate.
fn hub_of(asker: &Asker<'_>) -> String {
    format!("{}/{}", asker.actor.agency, asker.actor.name)
}

fn peer_of_domain(db: &impl KvRead, domain: &str) -> Result<Option<FederationPeer>, CatalogError> {
    for (_, v) in db
        .read_prefix(&crate::catalog::record_prefix(RecordKind::Peer))
        .map_err(internal)?
    {
        if let Ok(CatalogRecord {
            value: Some(Value::Peer(p)),
            ..
        }) = CatalogRecord::decode(v.as_slice())
            && p.trust_domain == domain
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Checks the federation fields of an agency or a service, whoever writes
/// them; returns whether this is a hub writing what an import brings in.
///
/// - Only the province's own hub writes agencies and services of other
///   instances: an agency whose trust domain is a federation peer's (never
///   moved from one instance to another, never one of this province's), and
///   a service of such an agency that the catalog imports from that peer,
///   carried by that hub.
/// - Nobody else marks a service as imported (`origin`, `via_hub`), and only
///   the provincial admin sets or changes an agency's trust domain.
pub fn check_federated_write(
    db: &impl KvRead,
    asker: &Asker<'_>,
    value: &Value,
) -> Result<bool, CatalogError> {
    let is_hub = asker.actor.role == Role::Hub;
    let provincial_hub = is_hub && asker.actor.agency == *asker.province;
    match value {
        Value::Agency(a) => {
            let before = agency(db, &a.code)?;
            let before_domain = before.as_ref().map_or("", |b| b.trust_domain.as_str());
            if is_hub && a.code != asker.actor.agency.as_str() {
                if !provincial_hub {
                    return Err(asker.needs(
                        &format!("changing agency {}", a.code),
                        "the province's hub (agencies of other instances come only through it)",
                    ));
                }
                if peer_of_domain(db, &a.trust_domain)?.is_none()
                    || (before.is_some() && before_domain != a.trust_domain)
                {
                    return Err(asker.needs(
                        &format!("registering agency {} under {:?}", a.code, a.trust_domain),
                        "the provincial admin (a hub writes only agencies of a federation peer, and never moves one to another instance)",
                    ));
                }
                return Ok(true);
            }
            if a.trust_domain != before_domain && asker.acting() != Acting::Province {
                return Err(asker.needs(
                    &format!("setting agency {}'s trust domain", a.code),
                    "the provincial admin",
                ));
            }
            Ok(false)
        }
        Value::Service(s) => {
            let own = s.id.split('/').next() == Some(asker.actor.agency.as_str());
            if !is_hub || own {
                if !s.origin.is_empty() || !s.via_hub.is_empty() {
                    return Err(asker.needs(
                        &format!("marking service {} as imported", s.id),
                        "the province's hub (imports are `lgsp hub import` records it carries out)",
                    ));
                }
                return Ok(false);
            }
            let agency_code = s.id.split('/').next().unwrap_or_default();
            let imported = provincial_hub
                && s.via_hub == hub_of(asker)
                && get(db, RecordKind::Import, &import_key(&s.origin, &s.id))
                    .map_err(internal)?
                    .is_some()
                && match (
                    get(db, RecordKind::Peer, &s.origin)
                        .map_err(internal)?
                        .and_then(|r| r.value),
                    agency(db, agency_code)?,
                ) {
                    (Some(Value::Peer(p)), Some(a)) => a.trust_domain == p.trust_domain,
                    _ => false,
                };
            if !imported {
                return Err(asker.needs(
                    &format!("changing service {}", s.id),
                    "its agency (the province's hub writes only services imported from a peer whose agency is of that peer, carried by itself)",
                ));
            }
            Ok(true)
        }
        Value::Peer(p) if is_hub => {
            check_crl_follow(db, asker, provincial_hub, p)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A hub writing a peer record: only the province's hub, only to put the
/// peer's newer CRL in force (it fetched it from the peer's hub; the CRL is
/// then checked like the admin's, signed by the peer's CA and newer), and
/// nothing else of the record.
fn check_crl_follow(
    db: &impl KvRead,
    asker: &Asker<'_>,
    provincial_hub: bool,
    p: &FederationPeer,
) -> Result<(), CatalogError> {
    let what = format!("changing peer {}", p.name);
    let refuse = || {
        asker.needs(
            &what,
            "the provincial admin (the province's hub only follows a peer's CRL, and changes nothing else)",
        )
    };
    if !provincial_hub {
        return Err(refuse());
    }
    let Some(Value::Peer(before)) = get(db, RecordKind::Peer, &p.name)
        .map_err(internal)?
        .and_then(|r| r.value)
    else {
        return Err(refuse());
    };
    let only_crl = FederationPeer {
        crl_der: before.crl_der.clone(),
        ..p.clone()
    } == before;
    if !only_crl || p.crl_der.is_empty() {
        return Err(refuse());
    }
    Ok(())
}

/// Whether a hub may delete record `kind`/`key`: only what imports brought in.
pub fn check_hub_delete(
    db: &impl KvRead,
    asker: &Asker<'_>,
    kind: RecordKind,
    key: &str,
) -> Result<(), CatalogError> {
    if asker.actor.role != Role::Hub {
        return Ok(());
    }
    // (Agencies are removed by the provincial admin only; see `precheck`.)
    let foreign = match kind {
        RecordKind::Service => match get(db, kind, key).map_err(internal)?.and_then(|r| r.value) {
            Some(Value::Service(s)) => !s.origin.is_empty() && s.via_hub == hub_of(asker),
            _ => false,
        },
        RecordKind::Node => return Ok(()),
        _ => false,
    };
    if foreign {
        Ok(())
    } else {
        Err(asker.needs(
            &format!("removing {kind:?} {key:?}"),
            "its agency or the provincial admin (a hub removes only what its imports brought in)",
        ))
    }
}

/// Checks a federation peer: its name, trust domain, CA and endpoint, and
/// its CRL if it has one: signed by its CA, and newer than the CRL the
/// record held before (an older one would bring revoked certificates back).
pub fn check_peer(db: &impl KvRead, p: &FederationPeer) -> Result<(), CatalogError> {
    check_peer_fields(p)?;
    let before = match get(db, RecordKind::Peer, &p.name)
        .map_err(internal)?
        .and_then(|r| r.value)
    {
        Some(Value::Peer(before)) => Some((before.ca_pem, before.crl_der)),
        _ => None,
    };
    check_record_crl(
        &format!("peer {}", p.name),
        &p.ca_pem,
        &p.crl_der,
        before
            .as_ref()
            .map(|(ca, crl)| (ca.as_str(), crl.as_slice())),
        "publish the peer's latest CRL",
    )
}

/// Checks the CRL `crl_der` (empty: none) that record `what` holds for its
/// CA `ca_pem`: signed by that CA, with a CRL number, and newer than the one
/// the record held `before` (its CA and CRL) while the CA is the same.
fn check_record_crl(
    what: &str,
    ca_pem: &str,
    crl_der: &[u8],
    before: Option<(&str, &[u8])>,
    latest: &str,
) -> Result<(), CatalogError> {
    if crl_der.is_empty() {
        return Ok(());
    }
    let roots: Vec<rustls_pki_types::CertificateDer<'static>> =
        lgsp_certs::inspect::pem_blocks(ca_pem)
            .unwrap_or_default()
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| der.into())
            .collect();
    let info = lgsp_certs::inspect::verify_crl(crl_der, &roots)
        .map_err(|e| invalid(format!("{what}: its CRL is not one of its CA's: {e}")))?;
    let number = info
        .number
        .ok_or_else(|| invalid(format!("{what}: its CRL has no CRL number")))?;
    if let Some((before_ca, before_crl)) = before
        && !before_crl.is_empty()
        && before_ca == ca_pem
        && before_crl != crl_der
        && let Ok(old) =
            lgsp_certs::inspect::CrlInfo::from_der(before_crl, std::path::Path::new("<crl>"))
        && old.number.is_some_and(|n| n >= number)
    {
        return Err(precondition(format!(
            "{what}: CRL number {number} is not newer than the one in force ({}); {latest}",
            old.number.unwrap_or_default()
        )));
    }
    Ok(())
}

fn check_peer_fields(p: &FederationPeer) -> Result<(), CatalogError> {
    validate_name(&p.name).map_err(|e| invalid(e.to_string()))?;
    if p.trust_domain.is_empty() || p.trust_domain.contains('/') {
        return Err(invalid(format!(
            "peer {}: trust domain {:?} is not a domain name",
            p.name, p.trust_domain
        )));
    }
    if !p.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(format!(
            "peer {}: its CA is not a PEM certificate",
            p.name
        )));
    }
    let ok = p
        .hub_endpoint
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        return Err(invalid(format!(
            "peer {}: hub endpoint {:?} is not host:port",
            p.name, p.hub_endpoint
        )));
    }
    Ok(())
}

/// Checks an outside REST system: its name and CA, and that it acts for a
/// registered agency of its (foreign) trust domain and is offered only
/// published services of this province.
pub fn check_rest_client(db: &impl KvRead, c: &RestClient) -> Result<(), CatalogError> {
    validate_name(&c.name).map_err(|e| invalid(e.to_string()))?;
    if !c.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(format!(
            "REST client {}: its CA is not a PEM certificate",
            c.name
        )));
    }
    let before = match get(db, RecordKind::RestClient, &c.name)
        .map_err(internal)?
        .and_then(|r| r.value)
    {
        Some(Value::RestClient(before)) => Some(before),
        _ => None,
    };
    if let Some(before) = &before
        && c.crl_der.is_empty()
        && !before.crl_der.is_empty()
        && before.ca_pem == c.ca_pem
    {
        // Dropping it would lift every revocation it holds, unseen.
        return Err(precondition(format!(
            "REST client {}: the write drops the CRL in force while its CA is the same; a CRL is never removed silently: publish a newer one (`lgsp hub rest-client crl`), or remove the client (`lgsp hub rest-client remove`)",
            c.name
        )));
    }
    check_record_crl(
        &format!("REST client {}", c.name),
        &c.ca_pem,
        &c.crl_der,
        before
            .as_ref()
            .map(|b| (b.ca_pem.as_str(), b.crl_der.as_slice())),
        "publish the CA's latest CRL",
    )?;
    match agency(db, &c.agency_code)? {
        Some(a) if !a.trust_domain.is_empty() && a.trust_domain == c.trust_domain => {}
        Some(a) => {
            return Err(precondition(format!(
                "REST client {}: agency {} is registered with trust domain {:?}, not {:?}; register the outside agency with `lgsp agency register --trust-domain {}`",
                c.name, c.agency_code, a.trust_domain, c.trust_domain, c.trust_domain
            )));
        }
        None => {
            return Err(precondition(format!(
                "REST client {}: there is no agency {}; register it first with `lgsp agency register --code {} --trust-domain {}`",
                c.name, c.agency_code, c.agency_code, c.trust_domain
            )));
        }
    }
    for id in &c.services {
        let service = get(db, RecordKind::Service, id)
            .map_err(internal)?
            .and_then(|r| match r.value {
                Some(Value::Service(s)) => Some(s),
                _ => None,
            });
        match service {
            Some(s) if s.origin.is_empty() => {}
            Some(_) => {
                return Err(precondition(format!(
                    "REST client {}: service {id} is imported from another instance; only this province's services are offered",
                    c.name
                )));
            }
            None => {
                return Err(precondition(format!(
                    "REST client {}: there is no service {id} in the catalog (see `lgsp service list`)",
                    c.name
                )));
            }
        }
    }
    Ok(())
}

fn require_peer(db: &impl KvRead, name: &str) -> Result<(), CatalogError> {
    if get(db, RecordKind::Peer, name).map_err(internal)?.is_some() {
        Ok(())
    } else {
        Err(precondition(format!(
            "there is no federation peer {name:?}; add it with `lgsp hub peer add`"
        )))
    }
}

/// Checks an export: a published service of this province, to a known peer.
pub fn check_export(db: &impl KvRead, e: &Export) -> Result<(), CatalogError> {
    require_peer(db, &e.peer)?;
    let service: Option<Service> = get(db, RecordKind::Service, &e.service_id)
        .map_err(internal)?
        .and_then(|r| match r.value {
            Some(Value::Service(s)) => Some(s),
            _ => None,
        });
    match service {
        None => Err(precondition(format!(
            "service {} is not published",
            e.service_id
        ))),
        Some(s) if !s.origin.is_empty() => Err(precondition(format!(
            "service {} is imported from {}; only this province's services are exported",
            e.service_id, s.origin
        ))),
        Some(_) => Ok(()),
    }
}

/// Checks an import: a service id of a known peer.
pub fn check_import(db: &impl KvRead, i: &Import) -> Result<(), CatalogError> {
    require_peer(db, &i.peer)?;
    i.service_id
        .parse::<crate::ServiceId>()
        .map(drop)
        .map_err(|e| invalid(e.to_string()))
}

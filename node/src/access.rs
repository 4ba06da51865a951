//! Enforcement on every provider-side call: who the consumer is (from its
//! certificate only), whether the service is this node's and active, and
//! whether an active grant lets the consumer's agency call it. Every refusal
//! says what is missing and who can fix it. (Per-consumer limits are a tower
//! layer in `limits.rs`.)

use crate::catalog_cache::CatalogCache;
use lgsp_certs::{Peer, Role};
use lgsp_proto::{GrantStatus, ServiceStatus};
use tonic::Status;

/// Decides whether `peer` may call `service_id` on the node of `own_agency`.
/// Returns the service's name (the part after the agency code).
pub fn authorize<'a>(
    cache: &CatalogCache,
    own_agency: &str,
    peer: &Peer,
    service_id: &'a str,
) -> Result<&'a str, Status> {
    if !matches!(peer.id.role, Role::Node | Role::Hub) {
        return Err(Status::permission_denied(format!(
            "{} has role {}; only agency nodes and the hub call data-sharing services",
            peer.id, peer.id.role
        )));
    }
    let (agency, name) = lgsp_registry::catalog::parse_service_id(service_id)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if agency.as_str() != own_agency {
        return Err(Status::not_found(format!(
            "this node serves agency {own_agency}; service {service_id} belongs to agency {agency} (call that agency's node)"
        )));
    }
    let service = cache.service(service_id).ok_or_else(|| {
        Status::not_found(format!(
            "service {service_id} is not in the provincial catalog (not published, or withdrawn and removed)"
        ))
    })?;
    match ServiceStatus::try_from(service.status).unwrap_or_default() {
        ServiceStatus::Active => {}
        ServiceStatus::Suspended => {
            return Err(Status::failed_precondition(format!(
                "service {service_id} is suspended by agency {own_agency}; ask its focal point when it will be restored"
            )));
        }
        _ => {
            return Err(Status::failed_precondition(format!(
                "service {service_id} has been withdrawn by agency {own_agency}"
            )));
        }
    }
    let consumer = peer.id.agency.as_str();
    let grant = cache.grant(service_id, consumer).ok_or_else(|| {
        Status::permission_denied(format!(
            "agency {consumer} has no grant for service {service_id}; agency {own_agency} (or the provincial admin) grants it with `lgsp access grant --service {service_id} --consumer {consumer}`"
        ))
    })?;
    if !CatalogCache::grant_is_active(&grant) {
        let reason = if grant.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", grant.reason)
        };
        return Err(
            match GrantStatus::try_from(grant.status).unwrap_or_default() {
                GrantStatus::Suspended => Status::failed_precondition(format!(
                    "the grant of service {service_id} to agency {consumer} is suspended{reason}; agency {own_agency} can restore it"
                )),
                GrantStatus::Active => Status::permission_denied(format!(
                    "the grant of service {service_id} to agency {consumer} expired{reason}; ask agency {own_agency} to renew it"
                )),
                _ => Status::permission_denied(format!(
                    "the grant of service {service_id} to agency {consumer} was terminated{reason}"
                )),
            },
        );
    }
    Ok(name)
}

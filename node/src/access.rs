//! Enforcement on every provider-side call: who the consumer is (from its
//! certificate only), whether the service is this node's and active, and
//! whether an active grant lets the consumer's agency call it. Every refusal
//! says what is missing and who can fix it. (Per-consumer limits are a tower
//! layer in `limits.rs`.)

use crate::catalog_cache::CatalogCache;
use crate::refusal::Refusal;
use lgsp_certs::{Peer, Role};
use lgsp_proto::{GrantStatus, ServiceStatus};

/// Decides whether `peer` may call `service_id` on the node of `own_agency`.
/// Returns the service's name (the part after the agency code).
pub fn authorize<'a>(
    cache: &CatalogCache,
    own_agency: &str,
    peer: &Peer,
    service_id: &'a str,
) -> Result<&'a str, Refusal> {
    if !matches!(peer.id.role, Role::Node | Role::Hub) {
        return Err(Refusal::WrongRole {
            caller: peer.id.to_string(),
            role: peer.id.role.to_string(),
        });
    }
    let (agency, name) = lgsp_registry::catalog::parse_service_id(service_id)
        .map_err(|e| Refusal::BadServiceId(e.to_string()))?;
    if agency.as_str() != own_agency {
        return Err(Refusal::OtherAgency {
            own: own_agency.to_owned(),
            service: service_id.to_owned(),
            agency: agency.to_string(),
        });
    }
    let service = cache
        .service(service_id)
        .ok_or_else(|| Refusal::NotInCatalog {
            service: service_id.to_owned(),
        })?;
    let provider = || own_agency.to_owned();
    match ServiceStatus::try_from(service.status).unwrap_or_default() {
        ServiceStatus::Active => {}
        ServiceStatus::Suspended => {
            return Err(Refusal::ServiceSuspended {
                service: service_id.to_owned(),
                provider: provider(),
            });
        }
        _ => {
            return Err(Refusal::ServiceWithdrawn {
                service: service_id.to_owned(),
                provider: provider(),
            });
        }
    }
    let consumer = peer.id.agency.as_str();
    let grant = cache
        .grant(service_id, consumer)
        .ok_or_else(|| Refusal::NoGrant {
            service: service_id.to_owned(),
            consumer: consumer.to_owned(),
            provider: provider(),
        })?;
    if !CatalogCache::grant_is_active(&grant) {
        let (service, consumer, reason) = (
            service_id.to_owned(),
            consumer.to_owned(),
            grant.reason.clone(),
        );
        return Err(
            match GrantStatus::try_from(grant.status).unwrap_or_default() {
                GrantStatus::Suspended => Refusal::GrantSuspended {
                    service,
                    consumer,
                    provider: provider(),
                    reason,
                },
                GrantStatus::Active => Refusal::GrantExpired {
                    service,
                    consumer,
                    provider: provider(),
                    reason,
                },
                _ => Refusal::GrantTerminated {
                    service,
                    consumer,
                    reason,
                },
            },
        );
    }
    Ok(name)
}

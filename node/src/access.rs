//! Enforcement on every provider-side call: who the consumer is (from its
//! certificate only), whether the service is this node's and active, and
//! whether an active grant lets the consumer's agency call it. Every refusal
//! says what is missing and who can fix it. (Per-consumer limits are a tower
//! layer in `limits.rs`.)

use crate::catalog_cache::CatalogCache;
use crate::refusal::Refusal;
use lgsp_certs::{Peer, Role};
use lgsp_proto::{GrantStatus, ServiceStatus};
use lgsp_registry::{KeyError, ServiceId};

/// Decides whether `peer` may call `service_id` on the node of `own_agency`.
/// Returns the service's id, parsed.
pub fn authorize(
    cache: &CatalogCache,
    own_agency: &str,
    peer: &Peer,
    service_id: &str,
) -> Result<ServiceId, Refusal> {
    if !matches!(peer.id.role, Role::Node | Role::Hub) {
        return Err(Refusal::WrongRole {
            caller: peer.id.to_string(),
            role: peer.id.role.to_string(),
        });
    }
    let id: ServiceId = service_id
        .parse()
        .map_err(|e: KeyError| Refusal::BadServiceId(e.to_string()))?;
    if id.agency().as_str() != own_agency {
        return Err(Refusal::OtherAgency {
            own: own_agency.to_owned(),
            service: service_id.to_owned(),
            agency: id.agency().to_string(),
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
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_certs::{AgencyCode, SpiffeId};
    use lgsp_proto::catalog_record::Value;
    use lgsp_proto::{CatalogRecord, Grant, Meta, RecordKind, Service};
    use std::sync::Arc;
    use tonic::Status;

    const PROVIDER: &str = "000.00.12.H62";
    const CONSUMER: &str = "000.00.31.H62";
    const SERVICE: &str = "000.00.12.H62/ho-tich";

    fn peer(agency: &str, role: Role) -> Peer {
        Peer {
            id: SpiffeId::new(
                "vinhphuc.gov.vn",
                AgencyCode::new(agency).unwrap(),
                role,
                "node-1",
            )
            .unwrap(),
            serial: "01".into(),
            not_after: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        }
    }

    fn record(kind: RecordKind, key: &str, value: Value) -> CatalogRecord {
        CatalogRecord {
            kind: kind as i32,
            key: key.into(),
            value: Some(value),
            meta: Some(Meta {
                create_revision: 1,
                mod_revision: 1,
            }),
        }
    }

    fn service(status: ServiceStatus) -> CatalogRecord {
        let s = Service {
            id: SERVICE.into(),
            status: status as i32,
            ..Default::default()
        };
        record(RecordKind::Service, SERVICE, Value::Service(s))
    }

    fn grant(status: GrantStatus, expires_unix: i64, reason: &str) -> CatalogRecord {
        let g = Grant {
            service_id: SERVICE.into(),
            consumer_agency: CONSUMER.into(),
            status: status as i32,
            expires_unix,
            reason: reason.into(),
        };
        let key = format!("{SERVICE}|{CONSUMER}");
        record(RecordKind::Grant, &key, Value::Grant(g))
    }

    /// A node's catalog cache holding `records`, in a temporary database.
    fn cache(records: Vec<CatalogRecord>) -> Arc<CatalogCache> {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cache = CatalogCache::open(&db).unwrap();
        cache.replace(records, 1).unwrap();
        cache
    }

    fn decide(
        records: Vec<CatalogRecord>,
        caller: &Peer,
        service: &str,
    ) -> Result<String, Refusal> {
        authorize(&cache(records), PROVIDER, caller, service).map(|id| id.to_string())
    }

    #[test]
    fn an_active_grant_lets_the_consumer_call_and_names_the_service() {
        let records = vec![
            service(ServiceStatus::Active),
            grant(GrantStatus::Active, 0, ""),
        ];
        let caller = peer(CONSUMER, Role::Node);
        assert_eq!(decide(records, &caller, SERVICE), Ok(SERVICE.into()));
    }

    #[test]
    fn the_hub_may_call_but_admins_and_registries_may_not() {
        let records = || {
            vec![
                service(ServiceStatus::Active),
                grant(GrantStatus::Active, 0, ""),
            ]
        };
        assert!(decide(records(), &peer(CONSUMER, Role::Hub), SERVICE).is_ok());
        for role in [Role::Admin, Role::Registry] {
            let refused = decide(records(), &peer(CONSUMER, role), SERVICE).unwrap_err();
            assert!(
                matches!(refused, Refusal::WrongRole { .. }),
                "{role}: {refused}"
            );
        }
    }

    #[test]
    fn without_a_grant_the_consumer_is_refused_with_the_command_that_fixes_it() {
        let refused = decide(
            vec![service(ServiceStatus::Active)],
            &peer(CONSUMER, Role::Node),
            SERVICE,
        )
        .unwrap_err();
        assert_eq!(
            refused,
            Refusal::NoGrant {
                service: SERVICE.into(),
                consumer: CONSUMER.into(),
                provider: PROVIDER.into(),
            }
        );
        assert_eq!(Status::from(refused).code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn another_agencys_grant_does_not_count() {
        let refused = decide(
            vec![
                service(ServiceStatus::Active),
                grant(GrantStatus::Active, 0, ""),
            ],
            &peer("000.00.32.H62", Role::Node),
            SERVICE,
        )
        .unwrap_err();
        assert!(matches!(refused, Refusal::NoGrant { .. }), "{refused}");
    }

    #[test]
    fn suspended_expired_and_terminated_grants_are_refused_each_with_its_reason() {
        let caller = peer(CONSUMER, Role::Node);
        let with = |g| vec![service(ServiceStatus::Active), g];
        let suspended = decide(
            with(grant(GrantStatus::Suspended, 0, "kiểm tra")),
            &caller,
            SERVICE,
        );
        assert!(
            matches!(&suspended, Err(Refusal::GrantSuspended { reason, .. }) if reason == "kiểm tra"),
            "{suspended:?}"
        );
        let expired = decide(with(grant(GrantStatus::Active, 1, "")), &caller, SERVICE);
        assert!(
            matches!(expired, Err(Refusal::GrantExpired { .. })),
            "{expired:?}"
        );
        let terminated = decide(
            with(grant(GrantStatus::Terminated, 0, "")),
            &caller,
            SERVICE,
        );
        assert!(
            matches!(terminated, Err(Refusal::GrantTerminated { .. })),
            "{terminated:?}"
        );
        // A validity that has not ended yet still counts.
        let later = i64::MAX / 2;
        assert!(
            decide(
                with(grant(GrantStatus::Active, later, "")),
                &caller,
                SERVICE
            )
            .is_ok()
        );
    }

    #[test]
    fn a_suspended_or_withdrawn_service_is_refused_whatever_the_grant() {
        let caller = peer(CONSUMER, Role::Node);
        for (status, expected) in [
            (ServiceStatus::Suspended, "suspended"),
            (ServiceStatus::Withdrawn, "withdrawn"),
        ] {
            let refused = decide(
                vec![service(status), grant(GrantStatus::Active, 0, "")],
                &caller,
                SERVICE,
            )
            .unwrap_err();
            assert_eq!(
                Status::from(refused.clone()).code(),
                tonic::Code::FailedPrecondition
            );
            assert!(refused.to_string().contains(expected), "{refused}");
        }
    }

    #[test]
    fn services_of_other_agencies_unknown_services_and_bad_ids_are_refused_before_grants() {
        let caller = peer(CONSUMER, Role::Node);
        let other = decide(vec![], &caller, "000.00.99.H62/ho-tich").unwrap_err();
        assert!(matches!(other, Refusal::OtherAgency { .. }), "{other}");
        let unknown = decide(vec![], &caller, SERVICE).unwrap_err();
        assert!(matches!(unknown, Refusal::NotInCatalog { .. }), "{unknown}");
        let bad = decide(vec![], &caller, "ho-tich").unwrap_err();
        assert!(matches!(bad, Refusal::BadServiceId(_)), "{bad}");
    }
}

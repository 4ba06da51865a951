//! Enforcement on every provider-side call: who the consumer is (from its
//! certificate only), whether the service is this node's and active, and
//! whether an active grant lets the consumer's agency call it. Every refusal
//! says what is missing and who can fix it. (Per-consumer limits are a tower
//! layer in `limits.rs`.)

use crate::catalog_cache::CatalogCache;
use crate::refusal::Refusal;
use lgsp_certs::{Peer, Role};
use lgsp_proto::{GrantStatus, ServiceStatus, SuspensionKind, TerminationKind};
use lgsp_registry::calendar::WorkCalendar;
use lgsp_registry::{KeyError, ServiceId};

/// What a call is allowed: the service, and the data items the consumer's
/// grant covers (empty: every item).
#[derive(Clone, Debug)]
pub struct Allowed {
    /// The service's id, parsed.
    pub id: ServiceId,
    /// The items granted; empty when the grant covers every item.
    pub items: Vec<String>,
}

impl Allowed {
    /// Refuses `asked` items outside the grant, naming them.
    pub fn check_items<'a>(
        &self,
        consumer: &str,
        asked: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Refusal> {
        if self.items.is_empty() {
            return Ok(());
        }
        let mut beyond: Vec<String> = asked
            .into_iter()
            .filter(|a| !self.items.iter().any(|i| i == a))
            .map(str::to_owned)
            .collect();
        if beyond.is_empty() {
            return Ok(());
        }
        beyond.sort();
        beyond.dedup();
        Err(Refusal::ItemsNotGranted {
            service: self.id.to_string(),
            consumer: consumer.to_owned(),
            items: beyond,
            granted: self.items.clone(),
        })
    }
}

fn termination_word(kind: i32) -> &'static str {
    match TerminationKind::try_from(kind).unwrap_or_default() {
        TerminationKind::PurposeMismatch => "the purpose no longer matches",
        TerminationKind::CannotRestore => "the connection cannot be restored",
        TerminationKind::Ordered => "ordered by a competent authority",
        TerminationKind::NoLongerNeeded => "no longer needed",
        TerminationKind::AgreementExpired => "the agreement expired",
        TerminationKind::Unspecified => "",
    }
}

/// Decides whether `peer` may call `service_id` on the node of `own_agency`
/// at `now` (Unix seconds). Returns the service's id, parsed, and the items
/// granted.
pub fn authorize(
    cache: &CatalogCache,
    own_agency: &str,
    peer: &Peer,
    service_id: &str,
    now: i64,
) -> Result<Allowed, Refusal> {
    decide(cache, own_agency, &peer.id, "", service_id, now)
}

/// [`authorize`] for a node of another instance (`consumer`, from a hub's
/// verified on-behalf-of record): its grant must name its trust domain.
pub fn authorize_foreign(
    cache: &CatalogCache,
    own_agency: &str,
    consumer: &lgsp_certs::SpiffeId,
    service_id: &str,
    now: i64,
) -> Result<Allowed, Refusal> {
    decide(
        cache,
        own_agency,
        consumer,
        &consumer.trust_domain,
        service_id,
        now,
    )
}

/// [`authorize`] for agency `agency` of trust domain `trust_domain` known
/// without a node's certificate: an outside system's, from the REST client
/// record whose CA issued its certificate (the hub's REST endpoint), or the
/// consumer of a record of on whose behalf already verified.
pub fn authorize_agency(
    cache: &CatalogCache,
    own_agency: &str,
    agency: &str,
    trust_domain: &str,
    service_id: &str,
    now: i64,
) -> Result<Allowed, Refusal> {
    decide_for(cache, own_agency, agency, trust_domain, service_id, now)
}

/// `caller` of `caller_domain` ("" for this province) calling `service_id`.
fn decide(
    cache: &CatalogCache,
    own_agency: &str,
    caller: &lgsp_certs::SpiffeId,
    caller_domain: &str,
    service_id: &str,
    now: i64,
) -> Result<Allowed, Refusal> {
    if !matches!(caller.role, Role::Node | Role::Hub) {
        return Err(Refusal::WrongRole {
            caller: caller.to_string(),
            role: caller.role.to_string(),
        });
    }
    decide_for(
        cache,
        own_agency,
        caller.agency.as_str(),
        caller_domain,
        service_id,
        now,
    )
}

/// Agency `consumer` of `caller_domain` ("" for this province) calling
/// `service_id`, its role already checked.
fn decide_for(
    cache: &CatalogCache,
    own_agency: &str,
    consumer: &str,
    caller_domain: &str,
    service_id: &str,
    now: i64,
) -> Result<Allowed, Refusal> {
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
    let provider = || own_agency.to_owned();
    // The service's state, read in place: its status and any maintenance
    // window in force now.
    let (status, maintenance) = cache
        .with_service(service_id, |s| {
            let window = s
                .maintenance
                .iter()
                .find(|w| w.start_unix <= now && now < w.end_unix)
                .map(|w| (w.reason.clone(), w.end_unix));
            (s.status, window)
        })
        .ok_or_else(|| Refusal::NotInCatalog {
            service: service_id.to_owned(),
        })?;
    match ServiceStatus::try_from(status).unwrap_or_default() {
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
    if let Some((reason, until)) = maintenance {
        let calendar = WorkCalendar::from_record(cache.calendar().as_ref()).unwrap_or_default();
        return Err(Refusal::ServiceMaintenance {
            service: service_id.to_owned(),
            provider: provider(),
            reason,
            until: calendar.show(until),
        });
    }
    let decided = cache
        .with_grant(service_id, consumer, |g| {
            // A grant to an agency of this province is not one to an agency
            // of another instance that has the same code, nor the reverse.
            if g.consumer_trust_domain != caller_domain {
                return Err(Refusal::NoGrant {
                    service: service_id.to_owned(),
                    consumer: consumer.to_owned(),
                    provider: own_agency.to_owned(),
                });
            }
            if CatalogCache::grant_is_active_at(g, now) {
                return Ok(g.items.clone());
            }
            let (service, consumer) = (service_id.to_owned(), consumer.to_owned());
            Err(match GrantStatus::try_from(g.status).unwrap_or_default() {
                GrantStatus::Suspended => {
                    let kind = match SuspensionKind::try_from(g.suspension).unwrap_or_default() {
                        SuspensionKind::Breach => "breach: ",
                        SuspensionKind::SecurityRisk => "security risk: ",
                        SuspensionKind::Unspecified => "",
                    };
                    let restore = if g.restore.is_empty() {
                        String::new()
                    } else {
                        format!("; to restore: {}", g.restore)
                    };
                    Refusal::GrantSuspended {
                        service,
                        consumer,
                        provider: provider(),
                        reason: format!("{kind}{}{restore}", g.reason),
                    }
                }
                GrantStatus::Active => Refusal::GrantExpired {
                    service,
                    consumer,
                    provider: provider(),
                    reason: g.reason.clone(),
                },
                _ => {
                    let kind = termination_word(g.termination);
                    Refusal::GrantTerminated {
                        service,
                        consumer,
                        reason: match (kind.is_empty(), g.reason.is_empty()) {
                            (true, _) => g.reason.clone(),
                            (false, true) => kind.to_owned(),
                            (false, false) => format!("{kind}: {}", g.reason),
                        },
                    }
                }
            })
        })
        .ok_or_else(|| Refusal::NoGrant {
            service: service_id.to_owned(),
            consumer: consumer.to_owned(),
            provider: provider(),
        })?;
    let items = decided?;
    Ok(Allowed { id, items })
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
            ..Default::default()
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
        authorize(&cache(records), PROVIDER, caller, service, now()).map(|a| a.id.to_string())
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn with_window(start: i64, end: i64) -> CatalogRecord {
        let mut r = service(ServiceStatus::Active);
        if let Some(Value::Service(s)) = &mut r.value {
            s.maintenance.push(lgsp_proto::Maintenance {
                start_unix: start,
                end_unix: end,
                reason: "Nâng cấp cơ sở dữ liệu".into(),
                ..Default::default()
            });
        }
        r
    }

    #[test]
    fn a_maintenance_window_starts_and_ends_by_itself_and_says_when_service_returns() {
        // 2026-12-18 02:00 UTC = 09:00 in Vietnam, for four hours.
        let (start, end) = (1_797_559_200, 1_797_559_200 + 4 * 3600);
        let cache = cache(vec![
            with_window(start, end),
            grant(GrantStatus::Active, 0, ""),
        ]);
        let caller = peer(CONSUMER, Role::Node);
        let at = |t| authorize(&cache, PROVIDER, &caller, SERVICE, t).map(|a| a.id.to_string());
        assert_eq!(at(start - 1), Ok(SERVICE.into()), "before the window");
        let refused = at(start).unwrap_err();
        let msg = refused.to_string();
        assert!(
            msg.contains("maintenance (Nâng cấp cơ sở dữ liệu) until 2026-12-18 13:00 +07:00"),
            "{msg}"
        );
        assert_eq!(Status::from(refused).code(), tonic::Code::Unavailable);
        assert_eq!(at(end), Ok(SERVICE.into()), "restored at the expected time");
    }

    #[test]
    fn a_grant_of_some_items_refuses_others_by_name() {
        let mut g = grant(GrantStatus::Active, 0, "");
        if let Some(Value::Grant(grant)) = &mut g.value {
            grant.items = vec!["x".into(), "y".into()];
        }
        let cache = cache(vec![service(ServiceStatus::Active), g]);
        let allowed = authorize(
            &cache,
            PROVIDER,
            &peer(CONSUMER, Role::Node),
            SERVICE,
            now(),
        )
        .unwrap();
        assert_eq!(allowed.items, ["x", "y"]);
        assert!(allowed.check_items(CONSUMER, ["x", "y"]).is_ok());
        let msg = allowed
            .check_items(CONSUMER, ["x", "z", "ngày_sinh"])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("not granted item(s) ngày_sinh, z") && msg.contains("granted: x, y"),
            "{msg}"
        );
    }

    #[test]
    fn a_suspended_consumer_is_told_the_kind_the_reason_and_how_to_restore() {
        let mut g = grant(GrantStatus::Suspended, 0, "Truy vấn vượt mục đích");
        if let Some(Value::Grant(grant)) = &mut g.value {
            grant.suspension = SuspensionKind::Breach as i32;
            grant.restore = "Gửi báo cáo giải trình".into();
        }
        let msg = decide(
            vec![service(ServiceStatus::Active), g],
            &peer(CONSUMER, Role::Node),
            SERVICE,
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("breach: Truy vấn vượt mục đích; to restore: Gửi báo cáo giải trình"),
            "{msg}"
        );
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

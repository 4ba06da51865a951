//! Enforcement on every provider-side call: who the consumer is (from its
//! certificate only), whether the service is this node's and active, and
//! whether an active grant lets the consumer's agency call it. Every refusal
//! says what is missing and who can fix it.

use crate::catalog_cache::CatalogCache;
use lgsp_certs::{Peer, Role};
use lgsp_proto::{GrantStatus, Service, ServiceStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tonic::Status;

/// Decides whether `peer` may call `service_id` on the node of `own_agency`.
/// Returns the service's catalog record.
pub fn authorize(
    cache: &CatalogCache,
    own_agency: &str,
    peer: &Peer,
    service_id: &str,
) -> Result<Service, Status> {
    if !matches!(peer.id.role, Role::Node | Role::Hub) {
        return Err(Status::permission_denied(format!(
            "{} has role {}; only agency nodes and the hub call data-sharing services",
            peer.id, peer.id.role
        )));
    }
    let (agency, _) = lgsp_registry::catalog::parse_service_id(service_id)
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
    Ok(service)
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    in_flight: usize,
}

/// Per-consumer-agency limits: calls in flight and calls per second.
#[derive(Debug)]
pub struct Limits {
    max_in_flight: usize,
    rate: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Holds one in-flight slot of a consumer until dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    consumer: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self
            .limits
            .buckets
            .lock()
            .expect("limits lock")
            .get_mut(&self.consumer)
        {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

impl Limits {
    pub fn new(max_in_flight: usize, rate_per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight: max_in_flight.max(1),
            rate: f64::from(rate_per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `consumer`, or says which limit it hit.
    pub fn acquire(self: &Arc<Self>, consumer: &str) -> Result<Permit, Status> {
        let mut buckets = self.buckets.lock().expect("limits lock");
        let now = Instant::now();
        let b = buckets.entry(consumer.to_owned()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
            in_flight: 0,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate);
        b.at = now;
        if b.in_flight >= self.max_in_flight {
            return Err(Status::resource_exhausted(format!(
                "agency {consumer} already has {} calls in flight, the most this node allows; retry when some finish",
                self.max_in_flight
            )));
        }
        if b.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "agency {consumer} exceeds {} calls per second on this node; slow down and retry",
                self.rate
            )));
        }
        b.tokens -= 1.0;
        b.in_flight += 1;
        Ok(Permit {
            limits: self.clone(),
            consumer: consumer.to_owned(),
        })
    }
}

//! The catalog's verbs, typed: register an agency, publish a service,
//! grant, suspend or terminate access, publish a CRL. The command line, the
//! demo, the benchmarks and the tests all change the catalog through these,
//! so a record is built the same way whoever writes it. Each verb returns
//! the catalog revision at which the change was applied.

use crate::client::RegistryClient;
use crate::keys::{GrantKey, ServiceId};
use lgsp_certs::AgencyCode;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::{
    AccessRequest, Agency, Agreement, Calendar, Crl, DataItem, DataValidity, Export,
    FederationPeer, FocalPoint, Grant, GrantStatus, Import, NodeRecord, RequestStatus,
    SecurityClass, Service, ServiceKind, ServiceStatus, SharingMethod, SuspensionKind,
    TerminationKind,
};
use tonic::Status;

/// A service as its provider publishes it.
#[derive(Clone, Debug)]
pub struct Publication {
    /// The service's id.
    pub id: ServiceId,
    /// How it is served.
    pub kind: ServiceKind,
    /// The provider agency's node that serves it.
    pub node: String,
    /// What it offers, for consumers.
    pub description: String,
    /// The version of what it offers.
    pub version: String,
    /// JSON Schema of the exchanged records (D47 Art. 25), or empty.
    pub schema_json: String,
    /// How it shares (D47 Art. 23).
    pub sharing_method: SharingMethod,
    /// Its data items, each with its class (D47 Art. 11.4).
    pub items: Vec<DataItem>,
    /// Where its documentation is.
    pub documentation_url: String,
    /// How long its data stays valid (D47 Art. 41).
    pub validity: Option<DataValidity>,
    /// How often its data is updated.
    pub update_cycle: String,
    /// Its security classification (state secret is refused, Art. 1.2).
    pub security: SecurityClass,
}

impl Publication {
    /// A first version of service `id` of `kind`, served by `node`.
    pub fn new(id: ServiceId, kind: ServiceKind, node: &str, description: &str) -> Self {
        Self {
            id,
            kind,
            node: node.to_owned(),
            description: description.to_owned(),
            version: "1".to_owned(),
            schema_json: String::new(),
            sharing_method: SharingMethod::Online,
            items: Vec::new(),
            documentation_url: String::new(),
            validity: None,
            update_cycle: String::new(),
            security: SecurityClass::Unspecified,
        }
    }
}

/// A grant's validity: until terminated, or until the end of a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// In force until suspended or terminated.
    Open,
    /// In force until this time (seconds since 1970, UTC).
    Until(i64),
}

/// A provider's decision on an access request, or the consumer's withdrawal.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Grant it: `items` (empty: every item requested) until `until`.
    Approve {
        /// The items granted, a subset of those requested; empty for all.
        items: Vec<String>,
        /// How long the grant lasts.
        until: Validity,
        /// The agreement covering special-request items (D47 Art. 38).
        agreement: Option<Agreement>,
        /// A note for the consumer (optional).
        reason: String,
    },
    /// Refuse it, saying why (required).
    Refuse {
        /// Why, told to the consumer.
        reason: String,
    },
    /// The consumer withdraws it.
    Withdraw,
}

/// The catalog, changed through its verbs.
#[derive(Clone, Debug)]
pub struct Catalog {
    client: RegistryClient,
}

impl Catalog {
    /// The catalog reached through `client`, whose certificate decides what
    /// it may change.
    pub fn new(client: RegistryClient) -> Self {
        Self { client }
    }

    /// The client underneath, for reads and raw records.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    async fn put(&self, value: Value) -> Result<u64, Status> {
        Ok(self.client.put(value, 0).await?.revision)
    }

    /// Registers agency `code` under its display `name`, with the person
    /// other agencies contact about its data (provincial admin).
    pub async fn register_agency(
        &self,
        code: &AgencyCode,
        name: &str,
        focal_point: Option<FocalPoint>,
    ) -> Result<u64, Status> {
        self.put(Value::Agency(Agency {
            code: code.to_string(),
            name: name.to_owned(),
            focal_point,
            trust_domain: String::new(),
        }))
        .await
    }

    /// Registers an agency of another lgsp instance (the national platform,
    /// another province) under that instance's `trust_domain`, so that
    /// grants to it name it (provincial admin).
    pub async fn register_foreign_agency(
        &self,
        code: &AgencyCode,
        name: &str,
        focal_point: Option<FocalPoint>,
        trust_domain: &str,
    ) -> Result<u64, Status> {
        self.put(Value::Agency(Agency {
            code: code.to_string(),
            name: name.to_owned(),
            focal_point,
            trust_domain: trust_domain.to_owned(),
        }))
        .await
    }

    /// Adds (or updates) a federation peer: another instance's trust
    /// domain, CA and hub address (provincial admin).
    pub async fn add_peer(&self, peer: FederationPeer) -> Result<u64, Status> {
        self.put(Value::Peer(peer)).await
    }

    /// Offers `service` to federation peer `peer` (provincial admin).
    pub async fn export(&self, service: &ServiceId, peer: &str) -> Result<u64, Status> {
        self.put(Value::Export(Export {
            service_id: service.to_string(),
            peer: peer.to_owned(),
        }))
        .await
    }

    /// Stops offering `service` to `peer`.
    pub async fn unexport(&self, service: &ServiceId, peer: &str) -> Result<u64, Status> {
        let key = crate::federation::export_key(&service.to_string(), peer);
        Ok(self
            .client
            .delete(lgsp_proto::RecordKind::Export, &key, 0)
            .await?
            .revision)
    }

    /// Takes `peer`'s service `service` into the catalog (provincial admin):
    /// the province's hub brings it in once the peer exports it.
    pub async fn import(&self, peer: &str, service: &ServiceId) -> Result<u64, Status> {
        self.put(Value::Import(Import {
            peer: peer.to_owned(),
            service_id: service.to_string(),
        }))
        .await
    }

    /// Stops importing `peer`'s `service`.
    pub async fn unimport(&self, peer: &str, service: &ServiceId) -> Result<u64, Status> {
        let key = crate::federation::import_key(peer, &service.to_string());
        Ok(self
            .client
            .delete(lgsp_proto::RecordKind::Import, &key, 0)
            .await?
            .revision)
    }

    /// Registers (or updates) a node of an agency: where it is reached and
    /// its certificate's fingerprint.
    pub async fn register_node(&self, node: NodeRecord) -> Result<u64, Status> {
        self.put(Value::Node(node)).await
    }

    /// Publishes a service, active.
    pub async fn publish(&self, service: Publication) -> Result<u64, Status> {
        self.put(Value::Service(Service {
            id: service.id.to_string(),
            kind: service.kind as i32,
            node: service.node,
            description: service.description,
            status: ServiceStatus::Active as i32,
            version: service.version,
            schema_json: service.schema_json,
            sharing_method: service.sharing_method as i32,
            items: service.items,
            documentation_url: service.documentation_url,
            validity: service.validity,
            update_cycle: service.update_cycle,
            security: service.security as i32,
            ..Default::default()
        }))
        .await
    }

    /// Lets `grant.consumer` call `grant.service` for as long as
    /// `validity` says; `reason` records the request or agreement it
    /// answers.
    pub async fn grant(
        &self,
        grant: &GrantKey,
        validity: Validity,
        reason: &str,
    ) -> Result<u64, Status> {
        self.grant_items(grant, validity, reason, Vec::new(), None)
            .await
    }

    /// Lets `grant.consumer` call only `items` of `grant.service` (empty:
    /// every item), under `agreement` when special-request items are
    /// covered (D47 Art. 38). The provincial admin's direct tool.
    pub async fn grant_items(
        &self,
        grant: &GrantKey,
        validity: Validity,
        reason: &str,
        items: Vec<String>,
        agreement: Option<Agreement>,
    ) -> Result<u64, Status> {
        let expires_unix = match validity {
            Validity::Open => 0,
            Validity::Until(t) => t,
        };
        self.put(Value::Grant(Grant {
            consumer_agency: grant.consumer.to_string(),
            service_id: grant.service.to_string(),
            status: GrantStatus::Active as i32,
            expires_unix,
            reason: reason.to_owned(),
            items,
            agreement,
            ..Default::default()
        }))
        .await
    }

    /// Suspends one consumer (D47 Art. 43) for a breach or a security risk:
    /// it is refused, and told `reason` and how to `restore` access, until
    /// resumed.
    pub async fn suspend(
        &self,
        grant: &GrantKey,
        kind: SuspensionKind,
        reason: &str,
        restore: &str,
    ) -> Result<u64, Status> {
        self.put(Value::Grant(Grant {
            status: GrantStatus::Suspended as i32,
            suspension: kind as i32,
            restore: restore.to_owned(),
            ..self.grant_ref(grant, reason)
        }))
        .await
    }

    /// Resumes a suspended grant.
    ///
    /// Only a suspended grant is resumed, and only as it was read: sent to
    /// an active grant, the same record would be the provincial admin
    /// granting anew, with every item and no end date.
    pub async fn resume(&self, grant: &GrantKey, reason: &str) -> Result<u64, Status> {
        let key = grant.to_string();
        let current = self
            .client
            .get(lgsp_proto::RecordKind::Grant, &key, false)
            .await?
            .record
            .unwrap_or_default();
        let revision = current.meta.as_ref().map_or(0, |m| m.mod_revision);
        match current.value {
            Some(Value::Grant(g)) if g.status == GrantStatus::Suspended as i32 => {}
            _ => {
                return Err(Status::failed_precondition(format!(
                    "the grant of {} to {} is not suspended: there is nothing to resume",
                    grant.service, grant.consumer
                )));
            }
        }
        Ok(self
            .client
            .put(
                Value::Grant(Grant {
                    status: GrantStatus::Active as i32,
                    ..self.grant_ref(grant, reason)
                }),
                revision,
            )
            .await?
            .revision)
    }

    /// Terminates a grant for one of the D47 Art. 44 reasons.
    pub async fn terminate(
        &self,
        grant: &GrantKey,
        kind: TerminationKind,
        reason: &str,
    ) -> Result<u64, Status> {
        self.put(Value::Grant(Grant {
            status: GrantStatus::Terminated as i32,
            termination: kind as i32,
            ..self.grant_ref(grant, reason)
        }))
        .await
    }

    fn grant_ref(&self, grant: &GrantKey, reason: &str) -> Grant {
        Grant {
            consumer_agency: grant.consumer.to_string(),
            service_id: grant.service.to_string(),
            reason: reason.to_owned(),
            ..Default::default()
        }
    }

    /// Files an access request (D47 Art. 35); the registry stamps when it
    /// was filed and when the decision is due.
    pub async fn file_request(&self, request: AccessRequest) -> Result<u64, Status> {
        self.put(Value::Request(AccessRequest {
            status: RequestStatus::Filed as i32,
            ..request
        }))
        .await
    }

    /// Decides a filed request: approves it (the grant is created from it,
    /// limited to `decision.granted_items` when given) or refuses it with a
    /// reason.
    pub async fn decide(&self, id: &str, decision: Decision) -> Result<u64, Status> {
        let (status, reason, items, until, agreement) = match decision {
            Decision::Approve {
                items,
                until,
                agreement,
                reason,
            } => (
                RequestStatus::Approved,
                reason,
                items,
                match until {
                    Validity::Open => 0,
                    Validity::Until(t) => t,
                },
                agreement,
            ),
            Decision::Refuse { reason } => (RequestStatus::Refused, reason, Vec::new(), 0, None),
            Decision::Withdraw => (RequestStatus::Withdrawn, String::new(), Vec::new(), 0, None),
        };
        self.put(Value::Request(AccessRequest {
            id: id.to_owned(),
            status: status as i32,
            decision_reason: reason,
            granted_items: items,
            granted_until_unix: until,
            agreement,
            ..Default::default()
        }))
        .await
    }

    /// Sets the province's calendar: its time zone and holidays
    /// (provincial admin).
    pub async fn set_calendar(&self, calendar: Calendar) -> Result<u64, Status> {
        self.put(Value::Calendar(calendar)).await
    }

    /// Publishes a CRL signed by the provincial CA (provincial admin).
    pub async fn publish_crl(
        &self,
        der: Vec<u8>,
        number: u64,
        revoked_serials: Vec<String>,
    ) -> Result<u64, Status> {
        self.put(Value::Crl(Crl {
            der,
            number,
            revoked_serials,
        }))
        .await
    }
}

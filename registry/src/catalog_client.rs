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
    Agency, Crl, FocalPoint, Grant, GrantStatus, NodeRecord, Service, ServiceKind, ServiceStatus,
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
        }))
        .await
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
        let expires = match validity {
            Validity::Open => 0,
            Validity::Until(t) => t,
        };
        self.set_grant(grant, GrantStatus::Active, expires, reason)
            .await
    }

    /// Suspends a grant (D47 Art. 43): the consumer is refused, and told
    /// `reason`, until it is granted again.
    pub async fn suspend(&self, grant: &GrantKey, reason: &str) -> Result<u64, Status> {
        self.set_grant(grant, GrantStatus::Suspended, 0, reason)
            .await
    }

    /// Terminates a grant (D47 Art. 44).
    pub async fn terminate(&self, grant: &GrantKey, reason: &str) -> Result<u64, Status> {
        self.set_grant(grant, GrantStatus::Terminated, 0, reason)
            .await
    }

    async fn set_grant(
        &self,
        grant: &GrantKey,
        status: GrantStatus,
        expires_unix: i64,
        reason: &str,
    ) -> Result<u64, Status> {
        self.put(Value::Grant(Grant {
            consumer_agency: grant.consumer.to_string(),
            service_id: grant.service.to_string(),
            status: status as i32,
            expires_unix,
            reason: reason.to_owned(),
        }))
        .await
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

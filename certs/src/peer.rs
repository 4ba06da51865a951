//! Who is calling: the identity of a gRPC peer, read from its verified
//! certificate and checked against the current CRL on every call, never
//! taken from headers a client can set.

use crate::identity::{Role, SpiffeId};
use crate::inspect::peer_identity;
use crate::tls::ServerTls;
use std::sync::Arc;
use tonic::{Request, Status};

/// The authenticated caller, put in each request's extensions by [`Authenticator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: SpiffeId,
    pub serial: String,
}

impl Peer {
    /// The peer of a request that passed [`Authenticator`].
    pub fn of<T>(request: &Request<T>) -> Result<&Peer, Status> {
        request.extensions().get::<Peer>().ok_or_else(|| {
            Status::unauthenticated("no authenticated peer on this request (server misconfigured: the authenticator is not installed)")
        })
    }

    /// The same identity in the wire protocol.
    pub fn to_proto(&self) -> lgsp_proto::Identity {
        lgsp_proto::Identity {
            trust_domain: self.id.trust_domain.clone(),
            agency_code: self.id.agency.to_string(),
            role: self.id.role.to_proto() as i32,
            name: self.id.name.clone(),
            spiffe_id: self.id.to_string(),
            serial: self.serial.clone(),
        }
    }
}

/// A tonic interceptor that authenticates every call: a verified client
/// certificate with one SPIFFE ID in this server's trust domain, not revoked
/// by the CRL in force now, and (optionally) one of the allowed roles.
#[derive(Clone, Debug)]
pub struct Authenticator {
    tls: Arc<ServerTls>,
    trust_domain: String,
    roles: Option<Vec<Role>>,
}

impl Authenticator {
    pub fn new(tls: Arc<ServerTls>, trust_domain: &str) -> Self {
        Self {
            tls,
            trust_domain: trust_domain.to_owned(),
            roles: None,
        }
    }

    /// Accepts only peers holding one of `roles`.
    pub fn only(mut self, roles: &[Role]) -> Self {
        self.roles = Some(roles.to_vec());
        self
    }

    /// Authenticates a request's peer; the reason for a refusal is in the status.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated("no client certificate: this service requires mutual TLS with a certificate from the provincial CA")
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("the client presented an empty certificate chain")
        })?;
        let (id, serial) = peer_identity(leaf).map_err(|why| {
            Status::unauthenticated(format!(
                "the client certificate names no lgsp identity: {why}"
            ))
        })?;
        if id.trust_domain != self.trust_domain {
            return Err(Status::unauthenticated(format!(
                "the client certificate belongs to trust domain {:?}, not {:?}",
                id.trust_domain, self.trust_domain
            )));
        }
        if self.tls.is_revoked(&serial) {
            return Err(Status::unauthenticated(format!(
                "the client certificate (serial {serial}) is revoked; ask the provincial IT department (Sở TT&TT) for a new one"
            )));
        }
        if let Some(roles) = self.roles.as_ref().filter(|r| !r.contains(&id.role)) {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "{id} has role {}, but this service accepts only {}",
                id.role,
                allowed.join(", ")
            )));
        }
        Ok(Peer { id, serial })
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = self.authenticate(&request)?;
        request.extensions_mut().insert(peer);
        Ok(request)
    }
}

/// The `IdentityService` every lgsp server answers: tells a caller who it is
/// according to its certificate.
#[derive(Clone, Copy, Debug, Default)]
pub struct WhoAmI;

#[tonic::async_trait]
impl lgsp_proto::identity_service_server::IdentityService for WhoAmI {
    async fn who_am_i(
        &self,
        request: Request<lgsp_proto::WhoAmIRequest>,
    ) -> Result<tonic::Response<lgsp_proto::WhoAmIResponse>, Status> {
        let peer = Peer::of(&request)?;
        Ok(tonic::Response::new(lgsp_proto::WhoAmIResponse {
            identity: Some(peer.to_proto()),
        }))
    }
}

//! Who is calling: the identity of a gRPC peer, read from its verified
//! certificate and checked against the current CRL on every call, never
//! taken from headers a client can set.

use crate::identity::{Role, SpiffeId};
use crate::inspect::peer_identity;
use crate::tls::ServerTls;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use tonic::{Request, Status};

/// The authenticated caller, put in each request's extensions by [`Authenticator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Who the caller is: agency, role and name, from its certificate's SPIFFE ID.
    pub id: SpiffeId,
    /// Its certificate's serial, lower-case hex: the one a CRL would list.
    pub serial: String,
}

impl Peer {
    /// The peer of a request that passed [`Authenticator`]. Fails with
    /// `Unauthenticated` when the request carries none, which means the
    /// server was built without the authenticator.
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
    connections: Arc<ConnectionIdentities>,
}

type PeerChain = Vec<CertificateDer<'static>>;

/// A connection's chain (weakly held, to tell a live connection from a
/// closed one whose address was reused) and the identity read from it.
type Known = (Weak<PeerChain>, SpiffeId, String);

/// The identity read from each live connection's certificate chain. Every
/// call on a connection carries the same chain (one `Arc` per connection),
/// so the certificate is parsed once per connection, not once per call;
/// trust domain, revocation and role are still checked on every call.
#[derive(Debug, Default)]
struct ConnectionIdentities {
    known: Mutex<HashMap<usize, Known>>,
}

/// Connections remembered before closed ones are forgotten.
const REMEMBERED_CONNECTIONS: usize = 1024;

impl ConnectionIdentities {
    fn identity(&self, chain: &Arc<PeerChain>) -> Result<(SpiffeId, String), Status> {
        let key = Arc::as_ptr(chain) as usize;
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        // The address alone could be a closed connection's, reused: the
        // weak reference must still point at this very chain.
        if let Some((weak, id, serial)) = known.get(&key)
            && weak.upgrade().is_some_and(|live| Arc::ptr_eq(&live, chain))
        {
            return Ok((id.clone(), serial.clone()));
        }
        drop(known);
        let leaf = chain.first().ok_or_else(|| {
            Status::unauthenticated("the client presented an empty certificate chain")
        })?;
        let (id, serial) = peer_identity(leaf).map_err(|why| {
            Status::unauthenticated(format!(
                "the client certificate names no lgsp identity: {why}"
            ))
        })?;
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= REMEMBERED_CONNECTIONS {
            known.retain(|_, (weak, _, _)| weak.strong_count() > 0);
        }
        if known.len() < REMEMBERED_CONNECTIONS {
            known.insert(key, (Arc::downgrade(chain), id.clone(), serial.clone()));
        }
        Ok((id, serial))
    }
}

impl Authenticator {
    /// An authenticator for a server running on `tls` that accepts peers of
    /// `trust_domain` in any role (narrow with [`Self::only`]).
    pub fn new(tls: Arc<ServerTls>, trust_domain: &str) -> Self {
        Self {
            tls,
            trust_domain: trust_domain.to_owned(),
            roles: None,
            connections: Arc::default(),
        }
    }

    /// Accepts only peers holding one of `roles`.
    pub fn only(mut self, roles: &[Role]) -> Self {
        self.roles = Some(roles.to_vec());
        self
    }

    /// Authenticates a request's peer; the reason for a refusal is in the
    /// status: `Unauthenticated` for a missing, foreign, malformed or revoked
    /// certificate, `PermissionDenied` for a role this service does not accept.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated("no client certificate: this service requires mutual TLS with a certificate from the provincial CA")
        })?;
        let (id, serial) = self.connections.identity(&certs)?;
        if id.trust_domain != self.trust_domain {
            return Err(Status::unauthenticated(format!(
                "the client certificate belongs to trust domain {:?}, not {:?}",
                id.trust_domain, self.trust_domain
            )));
        }
        self.check_not_revoked(&serial)?;
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

    /// Checks again that `peer`, authenticated when its stream opened, is
    /// not revoked by the CRL in force now: for streams that carry many
    /// calls, each call is checked as if it came alone. Fails with
    /// `Unauthenticated` once its serial is revoked.
    pub fn recheck(&self, peer: &Peer) -> Result<(), Status> {
        self.check_not_revoked(&peer.serial)
    }

    fn check_not_revoked(&self, serial: &str) -> Result<(), Status> {
        if self.tls.is_revoked(serial) {
            return Err(Status::unauthenticated(format!(
                "the client certificate (serial {serial}) is revoked; ask the provincial IT department (Sở TT&TT) for a new one"
            )));
        }
        Ok(())
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

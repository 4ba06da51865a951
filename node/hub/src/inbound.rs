//! Peers' hubs calling this province's services, on the hub's outward
//! listener: the caller must be the hub of a federation peer (its
//! certificate issued by that peer's CA), with a record of on whose behalf
//! signed by a node of that peer; the service must be exported to the peer
//! and granted to the foreign agency. The hub then calls the provider node
//! with its own certificate plus the record (the provider verifies it
//! again and logs it), and logs the exchange itself.

use crate::Hub;
use lgsp_certs::Role;
use lgsp_node::refusal::Refusal;
use lgsp_node::trace::{Trace, code_of};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::data_exchange_server::DataExchange;
use lgsp_proto::federation_server::Federation;
use lgsp_proto::{
    CallResponse, Envelope, ExportedService, ExportsRequest, ExportsResponse, FederationPeer,
    QueryRequest, RecordKind,
};
use lgsp_registry::federation::export_key;
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The identity read from the certificate of the peer's hub that opened a
/// link, kept in the link's request extensions (which only this side sets)
/// so that the calls on it do not parse the certificate again.
#[derive(Clone, Debug)]
pub(crate) struct LinkCaller(pub(crate) lgsp_certs::Peer);

/// The hub's inbound side: what its outward listener serves.
#[derive(Debug, Clone)]
pub struct Inbound {
    hub: Arc<Hub>,
}

impl Inbound {
    /// The inbound side of `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// The federation peer whose hub made `request`: its certificate names
    /// a hub of a peer's trust domain and is issued by that peer's CA.
    pub(crate) fn peer_of<T>(&self, request: &Request<T>) -> Result<FederationPeer, Status> {
        self.caller_of(request).map(|(peer, _)| peer)
    }

    /// The hub this side serves.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// [`Inbound::peer_of`], and the peer's hub that called (its SPIFFE ID
    /// and certificate serial).
    pub(crate) fn caller_of<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(FederationPeer, lgsp_certs::Peer), Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        // On a link, the certificate was read when it opened; the checks
        // that can change (the peer, its CA, its CRL) are made per call.
        let parsed;
        let caller = match request.extensions().get::<LinkCaller>() {
            Some(LinkCaller(caller)) => caller,
            None => {
                parsed = lgsp_certs::peer::peer_identity(leaf.as_ref())
                    .map_err(Status::unauthenticated)?;
                &parsed
            }
        };
        let peer = self
            .hub
            .ctx
            .cache
            .peer_of_domain(&caller.id.trust_domain)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "{} is not of a federation peer of this province (see `lgsp hub peer list`)",
                    caller.id
                ))
            })?;
        if caller.id.role != Role::Hub {
            return Err(Status::permission_denied(format!(
                "{} is a {}; only a peer's hub calls through this listener",
                caller.id, caller.id.role
            )));
        }
        let verifier = &self.hub.ctx.obo_verifier;
        if !verifier.issued(
            leaf.as_ref(),
            &verifier.roots_of(&peer),
            lgsp_registry::calendar::unix_now_ms(),
        ) {
            return Err(Status::unauthenticated(format!(
                "{} is not issued by the CA of federation peer {}",
                caller.id, peer.name
            )));
        }
        // Per call as well as per handshake: a connection opened before the
        // CRL was published keeps working otherwise.
        if let Some(number) = self.hub.trust.revoked(&peer.name, &caller.serial) {
            return Err(Status::unauthenticated(format!(
                "the certificate of {} (serial {}) is revoked by federation peer {}'s CRL number {number}; the peer issues its hub a new certificate",
                caller.id, caller.serial, peer.name
            )));
        }
        Ok((peer, caller.clone()))
    }

    /// The identity in the certificate of the hub that opened a link
    /// (`request`), read once for all the calls on it.
    pub(crate) fn link_caller_of<T>(&self, request: &Request<T>) -> Result<LinkCaller, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        lgsp_certs::peer::peer_identity(leaf.as_ref())
            .map(LinkCaller)
            .map_err(Status::unauthenticated)
    }

    /// Takes one of `peer`'s inward slots, or refuses with
    /// `RESOURCE_EXHAUSTED` naming the peer and the limit.
    pub(crate) fn admit(&self, peer: &FederationPeer) -> Result<crate::limiter::Permit, Status> {
        let health = self.hub.health_of(&peer.name);
        let permit = self
            .hub
            .inward_limits
            .acquire(&peer.name, crate::limiter::Limit::of(peer));
        health.inward(permit.is_ok());
        permit.map_err(|e| {
            tracing::debug!(peer = %peer.name, %e, "inward call refused by a limit");
            e.into()
        })
    }

    /// Whether a query stream that `opened_by`'s hub (certificate serial
    /// `hub_serial`, as [`Inbound::caller_of`] read it) opened on behalf of `verified` for `service_id` may go
    /// on: checked before each page, so that the peer removed, its hub's
    /// or the signer's certificate revoked by the peer's CRL, the export
    /// removed or the grant ended while the stream runs ends it with the
    /// refusal a new call would get.
    pub(crate) fn still_serves(
        &self,
        opened_by: &FederationPeer,
        hub_serial: &str,
        verified: &lgsp_node::obo::Verified,
        service_id: &str,
    ) -> Result<(), Status> {
        let peer = self
            .hub
            .ctx
            .cache
            .peer_of_domain(&opened_by.trust_domain)
            .filter(|p| p.name == opened_by.name)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "federation peer {} was removed while its query stream of {service_id} ran",
                    opened_by.name
                ))
            })?;
        if let Some(number) = self.hub.trust.revoked(&peer.name, hub_serial) {
            return Err(Status::unauthenticated(format!(
                "the certificate of {}'s hub (serial {hub_serial}) was revoked by its CRL number {number} while the query stream of {service_id} ran",
                peer.name
            )));
        }
        self.not_revoked(&peer, verified)
            .map_err(Status::unauthenticated)?;
        self.exported_and_granted(&peer, service_id, &verified.id)
    }

    /// Refuses a record signed by a certificate `peer`'s CRL revokes.
    fn not_revoked(
        &self,
        peer: &FederationPeer,
        verified: &lgsp_node::obo::Verified,
    ) -> Result<(), String> {
        let serial = &verified.serial;
        match self.hub.trust.revoked(&peer.name, serial) {
            Some(number) => Err(format!(
                "the on-behalf-of record is signed by {} (serial {serial}), revoked by federation peer {}'s CRL number {number}",
                verified.id, peer.name
            )),
            None => Ok(()),
        }
    }

    async fn serve(
        &self,
        peer: &FederationPeer,
        signed: &lgsp_proto::SignedOnBehalfOf,
        env: &Envelope,
        consumer: &lgsp_certs::SpiffeId,
        deadline: lgsp_node::deadline::Deadline,
    ) -> Result<lgsp_node::context::Forwarded, Status> {
        self.exported_and_granted(peer, &env.service_id, consumer)?;
        self.hub
            .serve_outside(
                consumer.agency.as_str(),
                &consumer.trust_domain,
                env,
                signed,
                deadline,
            )
            .await
    }

    /// Refuses, saying why, unless `service_id` is exported to `peer` and
    /// `consumer` (an agency of the peer) holds an active grant for it.
    pub(crate) fn exported_and_granted(
        &self,
        peer: &FederationPeer,
        service_id: &str,
        consumer: &lgsp_certs::SpiffeId,
    ) -> Result<(), Status> {
        let hub = &self.hub;
        let cache = &hub.ctx.cache;
        if !cache.has(RecordKind::Export, &export_key(service_id, &peer.name)) {
            return Err(Status::permission_denied(format!(
                "service {} is not exported to {} ({})",
                service_id, peer.name, peer.trust_domain
            )));
        }
        if !hub.granted(service_id, consumer.agency.as_str(), &peer.trust_domain) {
            return Err(Status::permission_denied(format!(
                "agency {} of {} holds no active grant for {}; the provider grants it (the grant names the agency, registered with --trust-domain {})",
                consumer.agency, peer.trust_domain, service_id, peer.trust_domain
            )));
        }
        Ok(())
    }

    /// Verifies the record of on whose behalf `peer`'s hub `caller_hub`
    /// sent with `request` (a call's or a query's): signed by a node of the peer
    /// (its CA, not revoked by its CRL), for this request, addressed to this
    /// instance through that hub, fresh and not seen before. The reason,
    /// for the log and the caller, when refused.
    pub(crate) fn verify_record(
        &self,
        peer: &FederationPeer,
        caller_hub: &lgsp_certs::SpiffeId,
        signed: Option<lgsp_proto::SignedOnBehalfOf>,
        request: lgsp_node::obo::Signed<'_>,
    ) -> Result<(lgsp_node::obo::Verified, lgsp_proto::SignedOnBehalfOf), Refusal> {
        let verifier = &self.hub.ctx.obo_verifier;
        let now = lgsp_registry::calendar::unix_now_ms();
        let signed = signed.ok_or_else(|| {
            Refusal::OnBehalfOf(format!(
                "a call from federation peer {} carries its consumer node's signed on-behalf-of record; none was sent",
                peer.name
            ))
        })?;
        let verified = verifier
            .verify(&signed, request, &verifier.roots_of(peer), now)
            .and_then(|v| {
                v.addressed_to(&self.hub.id.trust_domain, Some(&caller_hub.to_string()))?;
                self.hub
                    .ctx
                    .replays
                    .check(&signed, request.request_id(), now)?;
                Ok(v)
            })
            .map_err(Refusal::from)?;
        self.not_revoked(peer, &verified)
            .map_err(Refusal::OnBehalfOf)?;
        if verified.id.trust_domain != peer.trust_domain {
            return Err(Refusal::OnBehalfOf(format!(
                "the on-behalf-of record names {}, not a node of {}",
                verified.id, peer.trust_domain
            )));
        }
        Ok((verified, signed))
    }
}

#[tonic::async_trait]
impl DataExchange for Inbound {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        // Whatever this hub refuses, the peer's hub was reached.
        self.serve_call(request)
            .await
            .map_err(lgsp_node::refusal::answered)
    }

    type QueryStream = lgsp_node::provider::PageStream;

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        crate::query::inbound(self, request)
            .await
            .map_err(lgsp_node::refusal::answered)
    }
}

impl Inbound {
    /// [`DataExchange::call`], its refusals not yet marked as answered.
    async fn serve_call(
        &self,
        request: Request<Envelope>,
    ) -> Result<Response<CallResponse>, Status> {
        let started = Instant::now();
        let (peer, caller_hub) = self.caller_of(&request)?;
        let caller_hub = caller_hub.id;
        // Before anything costly (signature checks, the log, the provider).
        let _permit = self.admit(&peer)?;
        let deadline = lgsp_node::deadline::Deadline::of(request.metadata(), started);
        let signed = match lgsp_node::obo::from_metadata(request.metadata()) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Err(Refusal::OnBehalfOf(e.to_string()).into()),
            None => None,
        };
        let mut env = request.into_inner();
        // A request id the peer chose is bounded before it reaches the log,
        // as the provider does (`Provider::provide`).
        let bad_id = lgsp_node::trace::own_request_id(&mut env.request_id);
        let verified = self.verify_record(&peer, &caller_hub, signed, (&env).into());
        let label = match &verified {
            Ok((v, _)) => v.consumer(),
            Err(_) => format!("?@{}", peer.trust_domain),
        };
        let mut trace = Trace::start(
            &self.hub.ctx,
            "hub",
            &env.request_id,
            &label,
            &env.service_id,
            &env.operation,
            &env.encode_to_vec(),
            started,
            deadline,
        );
        if let Some(refusal) = bad_id {
            return Err(trace.refuse(refusal));
        }
        let (verified, signed) = match verified {
            Ok(pair) => pair,
            Err(why) => return Err(trace.refuse(why)),
        };
        trace.on_behalf_of(&signed);
        let bound = lgsp_node::deadline::Deadline::within(deadline, started, self.hub.call_timeout);
        let result = self.serve(&peer, &signed, &env, &verified.id, bound).await;
        let result = result.map(|answered| lgsp_node::context::Forwarded {
            metadata: lgsp_node::trace::external_ids_only(answered.metadata),
            ..answered
        });
        match &result {
            Ok(answered) => trace.external_ids(&answered.metadata),
            Err(status) => trace.external_ids_of(status),
        }
        let payload = result.as_ref().map_or(&[][..], |a| a.payload.as_slice());
        trace.finish(
            &Sha256::digest(payload),
            code_of(&result),
            payload.len() as u64,
        );
        let request_id = env.request_id;
        // The ids an X-Road security server gave the exchange on this side
        // go back to the peer, as they go to a province caller.
        result.map(|answered| {
            Response::new(CallResponse {
                payload: answered.payload,
                request_id,
                metadata: answered.metadata,
            })
        })
    }
}

#[tonic::async_trait]
impl Federation for Inbound {
    async fn exports(
        &self,
        request: Request<ExportsRequest>,
    ) -> Result<Response<ExportsResponse>, Status> {
        let peer = self.peer_of(&request)?;
        let _permit = self.admit(&peer)?;
        let cache = &self.hub.ctx.cache;
        let mut services = Vec::new();
        for record in cache.all_of(RecordKind::Export) {
            let Some(Value::Export(e)) = record.value else {
                continue;
            };
            if e.peer != peer.name {
                continue;
            }
            let Some(mut service) = cache.service(&e.service_id) else {
                continue;
            };
            // What the peer needs to call it, not this province's history.
            service.history.clear();
            let agency_name = cache.agency_name(&service.agency_code).unwrap_or_default();
            // This hub verifies records signed in batches; so does the
            // service's node when its record says so (the hub's own, for a
            // service it carries to a REST system).
            let verifies_batched_records = cache
                .node(&service.agency_code, &service.node)
                .is_some_and(|n| lgsp_node::obo::verifies_batches(&n.capabilities));
            services.push(ExportedService {
                service: Some(service),
                agency_name,
                verifies_batched_records,
            });
        }
        Ok(Response::new(ExportsResponse {
            trust_domain: self.hub.id.trust_domain.clone(),
            services,
            crl_der: cache.crl().unwrap_or_default(),
        }))
    }
}

//! Province nodes calling other instances' services through the hub: the
//! hub takes the call on its inward (provider) listener, checks the signed
//! record of on whose behalf against the caller, and carries the call to
//! the peer's hub with that record, under a deadline and the peer's
//! circuit breaker. The node underneath logs the exchange. Calls to
//! province services carried to a REST system go to [`crate::rest_out`].

use crate::Hub;
use crate::breaker::Breaker;
use crate::health::{LinkHealth, Outcome};
use crate::limiter::{Limit, Permit};
use lgsp_certs::{Peer, Role};
use lgsp_node::context::{Forwarded, Forwarder};
use lgsp_node::obo::Signed;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Envelope, FederationPeer, SignedOnBehalfOf};
use prost::Message as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;
use tonic::transport::Channel;

/// The hub's outbound side, installed as its node's forwarder.
#[derive(Debug)]
pub struct Outbound {
    hub: Arc<Hub>,
}

impl Outbound {
    /// The outbound side of `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl Forwarder for Outbound {
    fn carries(&self, service_id: &str) -> bool {
        let key = self.hub.key();
        self.hub
            .ctx
            .cache
            .with_service(service_id, |s| !s.origin.is_empty() && s.via_hub == key)
            .unwrap_or(false)
            || crate::rest_out::route_of(&self.hub, service_id).is_some()
    }

    async fn forward(
        &self,
        caller: &Peer,
        envelope: &Envelope,
        obo: Option<&SignedOnBehalfOf>,
    ) -> Result<Forwarded, Status> {
        let hub = &self.hub;
        if let Some(route) = crate::rest_out::route_of(hub, &envelope.service_id) {
            return crate::rest_out::forward(hub, caller, envelope, route).await;
        }
        let Outward {
            signed,
            peer,
            health,
            _permit,
            channel,
            breaker,
            ..
        } = outward(hub, caller, envelope.into(), obo)?;
        let attempt = breaker
            .attempt(Instant::now())
            .map_err(|wait| circuit_open(&peer, &health, wait))?;
        let max = hub.ctx.config.limits.max_message_bytes;
        let sent = Instant::now();
        let result = send(hub, &peer.name, channel, envelope, signed, max).await;
        let unreachable = matches!(&result, Err(s) if lgsp_node::refusal::is_unreachable(s));
        attempt.finish(!unreachable);
        match &result {
            Err(s) if unreachable => health.outward(
                Outcome::Failed,
                sent.elapsed(),
                &lgsp_certs::tls::explain_status(s),
            ),
            _ => health.outward(Outcome::Answered, sent.elapsed(), ""),
        }
        match result {
            // The ids an X-Road security server gave the exchange on the
            // far side reach the caller (and this side's log); nothing else
            // the peer put there does.
            Ok(r) => Ok(Forwarded {
                payload: r.payload,
                metadata: lgsp_node::trace::external_ids_only(r.metadata),
                record_carried: true,
            }),
            Err(s) if unreachable => Err(Status::unavailable(format!(
                "federation peer {} ({}) did not answer: {}",
                peer.name,
                peer.hub_endpoint,
                lgsp_certs::tls::explain_status(&s)
            ))),
            // The peer's refusal, its code and words, and its external ids:
            // nothing else the peer put in its metadata reaches the caller.
            Err(s) => Err(crate::query::peer_refusal(&s)),
        }
    }

    async fn forward_query(
        &self,
        caller: &Peer,
        query: lgsp_proto::QueryRequest,
        obo: Option<&SignedOnBehalfOf>,
        deadline: Option<lgsp_node::deadline::Deadline>,
    ) -> Result<lgsp_node::provider::PageStream, Status> {
        crate::query::forward(&self.hub, caller, query, obo, deadline).await
    }
}

/// A call or query of a province node toward another instance, checked and
/// admitted: the record it carries, the peer whose service it reaches, that
/// link's health, one of the peer's outward slots (held while it runs), and
/// the connection to the peer's hub with its breaker.
pub(crate) struct Outward<'s> {
    pub(crate) signed: &'s SignedOnBehalfOf,
    pub(crate) peer: FederationPeer,
    pub(crate) health: Arc<LinkHealth>,
    pub(crate) _permit: Permit,
    pub(crate) channel: Channel,
    pub(crate) breaker: Arc<Breaker>,
    /// What the peer's hub is checked against, with the certificates it
    /// presented on the channel.
    pub(crate) trust: Arc<lgsp_certs::ClientTrust>,
}

/// Checks `request` of province node `caller` and admits it toward the peer
/// its service comes from. The record `obo` must be present and the
/// caller's own (known from its certificate in the handshake: the same
/// CA, identity and serial), for this request, fresh, not replayed, and
/// addressed to that peer through this hub. Its signature is verified where
/// the caller is not seen, by the peer's hub and the provider node (one
/// ECDSA verification less per call).
pub(crate) fn outward<'s>(
    hub: &Hub,
    caller: &Peer,
    request: Signed<'_>,
    obo: Option<&'s SignedOnBehalfOf>,
) -> Result<Outward<'s>, Status> {
    let (calls, a_call) = match request {
        Signed::Call(_) => ("call", "a call to"),
        Signed::Query(_) => ("query", "a query of"),
    };
    if caller.id.role != Role::Node {
        return Err(Status::permission_denied(format!(
            "{} is a {}; only agencies' nodes {calls} other instances through the hub",
            caller.id, caller.id.role
        )));
    }
    let service_id = request.service_id();
    let signed = obo.ok_or_else(|| {
        Status::unauthenticated(format!(
            "{a_call} {service_id} (another instance's service) carries the calling node's signed on-behalf-of record; {} sent none (upgrade the node)",
            caller.id
        ))
    })?;
    let now = lgsp_registry::calendar::unix_now_ms();
    let verified = hub
        .ctx
        .obo_verifier
        .check_from_signer(signed, request, &hub.ctx.creds.roots, caller, now)
        .map_err(Status::from)?;
    hub.ctx
        .replays
        .check(signed, request.request_id(), now)
        .map_err(Status::from)?;
    let origin = hub
        .ctx
        .cache
        .with_service(service_id, |s| s.origin.clone())
        .unwrap_or_default();
    let peer = hub.peer(&origin).ok_or_else(|| {
        Status::failed_precondition(format!(
            "service {service_id} comes from federation peer {origin:?}, which is no longer in the catalog"
        ))
    })?;
    verified
        .addressed_to(&peer.trust_domain, Some(&hub.id.to_string()))
        .map_err(Status::from)?;
    let health = hub.health_of(&peer.name);
    let permit = hub
        .outward_limits
        .acquire(&peer.name, Limit::of(&peer))
        .map_err(|e| {
            health.outward(Outcome::Refused, Duration::ZERO, "");
            Status::from(e)
        })?;
    let crate::Link {
        channel,
        breaker,
        trust,
    } = hub.link(&peer)?;
    Ok(Outward {
        signed,
        peer,
        health,
        _permit: permit,
        channel,
        breaker,
        trust,
    })
}

/// The refusal of a call to `peer` while its circuit is open, counted in
/// the link's health; the next probe is in `wait`.
pub(crate) fn circuit_open(peer: &FederationPeer, health: &LinkHealth, wait: Duration) -> Status {
    health.outward(Outcome::Refused, Duration::ZERO, "");
    Status::unavailable(format!(
        "federation peer {} ({}) is failing: its circuit is open after repeated failures; next try in {} s",
        peer.name,
        peer.hub_endpoint,
        wait.as_secs().max(1)
    ))
}

/// Sends `envelope` with `signed` to the peer's hub on `channel`: on the
/// link to it when the envelope is small, as a unary call when it is large
/// or the peer's hub has no link service; within the hub's call timeout.
async fn send(
    hub: &crate::Hub,
    peer: &str,
    channel: tonic::transport::Channel,
    envelope: &Envelope,
    signed: &SignedOnBehalfOf,
    max: usize,
) -> Result<lgsp_proto::CallResponse, Status> {
    let envelope = envelope.clone();
    let envelope = if envelope.encoded_len() <= lgsp_node::link::MAX_LINK_ENVELOPE {
        let deadline = lgsp_node::deadline::Deadline::after(Instant::now(), hub.call_timeout);
        let sent = hub
            .peer_links
            .call(
                peer,
                || Ok(channel.clone()),
                max,
                envelope,
                Some(signed.clone()),
                Some(deadline),
            )
            .await;
        match sent {
            lgsp_node::link::Sent::Done(result) => return result,
            lgsp_node::link::Sent::Unsupported(envelope) => envelope,
        }
    } else {
        envelope
    };
    let mut request = tonic::Request::new(envelope);
    request.set_timeout(hub.call_timeout);
    lgsp_node::obo::to_metadata(request.metadata_mut(), signed);
    DataExchangeClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
        .call(request)
        .await
        .map(tonic::Response::into_inner)
}

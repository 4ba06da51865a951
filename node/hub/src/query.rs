//! Query streams across the hub: the server-streaming `Query` of a dataset
//! service, in both directions, with the checks, limits, breaker and log
//! entry of a unary call.
//!
//! - [`forward`] (outbound): a province node opens a query of another
//!   instance's service on the hub's inward listener with its signed record
//!   of on whose behalf (a query record: the digest of the `QueryRequest`);
//!   the hub checks it against the caller, takes one of the peer's outward
//!   slots for the stream's life, passes the peer's breaker and opens the
//!   query on the peer's hub. Before each page it relays, the peer must
//!   still be federated, the service still imported from it through this
//!   hub, and no certificate the peer's hub presented on the connection
//!   revoked by the peer's CRL in force; the hub's node checks the caller's certificate per page and
//!   logs the exchange (`Provider::query`).
//! - [`inbound`]: a peer's hub opens a query of a service exported to it;
//!   the hub checks the peer, the record, the export and the foreign
//!   agency's grant, holds one of the peer's inward slots, and opens the
//!   query on the provider node with its own certificate plus the record,
//!   which the provider verifies again and authorizes against the foreign
//!   agency's grant.
//!
//! Pages pass one at a time ([`lgsp_node::relay`]): the reader's pace
//! reaches the provider, the caller's deadline (or, without one, the longest
//! a relayed stream lasts) ends the stream, so does a minute without a page,
//! and a reader that goes away cancels every hop upstream.

use crate::Hub;
use crate::health::Outcome;
use crate::inbound::Inbound;
use crate::outbound::Outward;
use lgsp_certs::{Peer, Role};
use lgsp_node::deadline::Deadline;
use lgsp_node::provider::PageStream;
use lgsp_node::refusal::Refusal;
use lgsp_node::trace::Trace;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{QueryRequest, SignedOnBehalfOf};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::time::Instant;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Opens `query` from province node `caller` on the hub of the instance its
/// service comes from, with `obo`, the caller's signed query record; the
/// pages as the peer's hub sends them. Opening is bounded by the hub's call
/// timeout, the stream by `deadline` (the caller's) and the longest a
/// relayed stream lasts (`[limits] max_query_stream_s`), which the peer's
/// hub is told as the stream's deadline.
pub(crate) async fn forward(
    hub: &std::sync::Arc<Hub>,
    caller: &Peer,
    query: QueryRequest,
    obo: Option<&SignedOnBehalfOf>,
    deadline: Option<Deadline>,
) -> Result<PageStream, Status> {
    if let Some(route) = crate::rest_out::route_of(hub, &query.service_id) {
        return Err(no_rest_stream(&query.service_id, &route.system));
    }
    let Outward {
        signed,
        peer,
        health,
        _permit: permit,
        channel,
        breaker,
        trust,
    } = crate::outbound::outward(hub, caller, (&query).into(), obo)?;
    let attempt = breaker
        .attempt(Instant::now())
        .map_err(|wait| crate::outbound::circuit_open(&peer, &health, wait))?;
    let sent = Instant::now();
    let service_id = query.service_id.clone();
    let opened = open_query(hub, channel, query, signed, deadline, "the query stream").await;
    let unreachable = matches!(&opened, Err(s) if lgsp_node::refusal::is_unreachable(s));
    attempt.finish(!unreachable);
    let upstream = match opened {
        Ok(upstream) => {
            health.outward(Outcome::Answered, sent.elapsed(), "");
            upstream
        }
        Err(s) if unreachable => {
            let why = lgsp_certs::tls::explain_status(&s);
            health.outward(Outcome::Failed, sent.elapsed(), &why);
            return Err(Status::unavailable(format!(
                "federation peer {} ({}) did not answer: {why}",
                peer.name, peer.hub_endpoint
            )));
        }
        Err(s) => {
            health.outward(Outcome::Answered, sent.elapsed(), "");
            return Err(peer_refusal(&s));
        }
    };
    let (name, endpoint, hub) = (peer.name, peer.hub_endpoint, hub.clone());
    Ok(Box::pin(upstream.map(move |page| {
        let _slot = &permit;
        // A stream broken mid-way names the peer, as a call that failed does.
        let page = page.map_err(|s| {
            if lgsp_node::refusal::is_unreachable(&s) {
                Status::unavailable(format!(
                    "the query stream from federation peer {name} ({endpoint}) broke: {}",
                    lgsp_certs::tls::explain_status(&s)
                ))
            } else {
                peer_refusal(&s)
            }
        })?;
        // Before each page: the peer removed, the service unimported or
        // the peer's hub certificate revoked since the stream opened stop it.
        still_imported(&hub, &name, &service_id)?;
        still_trusted(&hub, &name, &trust, &service_id)?;
        Ok(page)
    })))
}

/// Refuses to go on with a query stream of `service_id` from federation
/// peer `peer` once the peer is no longer in the catalog or the service no
/// longer imported from it through this hub.
fn still_imported(hub: &Hub, peer: &str, service_id: &str) -> Result<(), Status> {
    if hub.peer(peer).is_none() {
        return Err(Status::permission_denied(format!(
            "federation peer {peer} was removed while the query stream of {service_id} ran"
        )));
    }
    let key = hub.key();
    let imported = hub
        .ctx
        .cache
        .with_service(service_id, |s| s.origin == peer && s.via_hub == key)
        .unwrap_or(false);
    if !imported {
        return Err(Status::permission_denied(format!(
            "service {service_id} is no longer imported from federation peer {peer} through this hub: unimported while its query stream ran"
        )));
    }
    Ok(())
}

/// A refusal a peer's hub answered, as this hub passes it on: its code and
/// words, marked as answered; of the metadata the peer put there, the
/// external ids only (checked as an answer's are).
pub(crate) fn peer_refusal(status: &Status) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    lgsp_node::trace::put_external_ids(
        &lgsp_node::trace::status_external_ids(status),
        &mut metadata,
    );
    lgsp_node::refusal::answered(Status::with_metadata(
        status.code(),
        status.message(),
        metadata,
    ))
}

/// Refuses to go on with a query stream of `service_id` from federation
/// peer `peer` once the peer's CRL in force revokes a certificate its hub
/// presented to `trust` (the connection the stream runs on opened before
/// the CRL came; a new one is refused in its handshake).
fn still_trusted(
    hub: &Hub,
    peer: &str,
    trust: &lgsp_certs::ClientTrust,
    service_id: &str,
) -> Result<(), Status> {
    for serial in trust.accepted_serials() {
        if let Some(number) = hub.trust.revoked(peer, &serial) {
            return Err(Status::unauthenticated(format!(
                "the hub of federation peer {peer} presented a certificate (serial {serial}) that its CRL number {number} revoked while the query stream of {service_id} ran"
            )));
        }
    }
    Ok(())
}

/// The refusal of a query stream of `service_id`, which the hub carries to
/// REST system `system`.
fn no_rest_stream(service_id: &str, system: &str) -> Status {
    Status::unimplemented(format!(
        "service {service_id} is carried to REST system {system}, which answers unary calls only; call it with `get`"
    ))
}

/// Serves a query a peer's hub opens on the outward listener: the peer,
/// its signed query record, the export and the foreign agency's grant are
/// checked (as for a call), then the provider node's pages are relayed and
/// the exchange logged once, at its end.
pub(crate) async fn inbound(
    inbound: &Inbound,
    request: Request<QueryRequest>,
) -> Result<Response<PageStream>, Status> {
    let started = Instant::now();
    let hub = inbound.hub();
    let (peer, caller_hub) = inbound.caller_of(&request)?;
    // Held for the stream's life, before anything costly.
    let permit = inbound.admit(&peer)?;
    let deadline = Deadline::of(request.metadata(), started);
    let signed = match lgsp_node::obo::from_metadata(request.metadata()) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return Err(Refusal::OnBehalfOf(e.to_string()).into()),
        None => None,
    };
    let mut query = request.into_inner();
    let bad_id = lgsp_node::trace::own_request_id(&mut query.request_id);
    let verified = inbound.verify_record(&peer, &caller_hub.id, signed, (&query).into());
    let label = match &verified {
        Ok((v, _)) => v.consumer(),
        Err(_) => format!("?@{}", peer.trust_domain),
    };
    let mut trace = Trace::start(
        &hub.ctx,
        "hub",
        &query.request_id,
        &label,
        &query.service_id,
        "query",
        &query.encode_to_vec(),
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
    let span = tracing::info_span!("query", side = "hub", peer = %peer.name, request_id = %query.request_id, consumer = %label, service = %query.service_id);
    let service_id = query.service_id.clone();
    let opened = async {
        inbound.exported_and_granted(&peer, &query.service_id, &verified.id)?;
        if let Some(route) = crate::rest_out::route_of(hub, &query.service_id) {
            return Err(no_rest_stream(&query.service_id, &route.system));
        }
        open_on_provider(hub, query, &signed, deadline).await
    }
    .instrument(span.clone())
    .await;
    let upstream = match opened {
        Ok(upstream) => upstream,
        Err(status) => {
            trace.finish(&Sha256::digest([]), status.code(), 0);
            return Err(status);
        }
    };
    // Before each page: what was checked when the stream opened still
    // holds (a revocation, an export removed, a grant ended stop it).
    let checker = inbound.clone();
    let service = service_id.clone();
    let upstream = upstream.map(move |page| {
        let page = page?;
        checker.still_serves(&peer, &caller_hub.serial, &verified, &service)?;
        Ok(page)
    });
    Ok(Response::new(lgsp_node::relay::relay(
        upstream,
        &service_id,
        deadline,
        hub.ctx.config.limits.relay(),
        move |digest, code, bytes| trace.finish(digest, code, bytes),
        permit,
        span,
    )))
}

/// Opens `query` on the province node that serves its service, with the
/// hub's certificate plus `signed`; opening is bounded by the hub's call
/// timeout, the stream by `deadline`.
async fn open_on_provider(
    hub: &Hub,
    query: QueryRequest,
    signed: &SignedOnBehalfOf,
    deadline: Option<Deadline>,
) -> Result<tonic::Streaming<lgsp_proto::QueryPage>, Status> {
    let cache = &hub.ctx.cache;
    let node = cache
        .with_service(&query.service_id, |s| {
            (s.agency_code.clone(), s.node.clone())
        })
        .and_then(|(agency, node)| cache.node(&agency, &node))
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "service {} has no registered node to serve it",
                query.service_id
            ))
        })?;
    let channel = hub.ctx.channel_to(&node, Role::Node)?;
    open_query(
        hub,
        channel,
        query,
        signed,
        deadline,
        "the provider node's query stream",
    )
    .await
}

/// Opens `query` on `channel` with `signed`, the record of on whose behalf.
/// The far side is told the stream's deadline: `deadline` (the caller's),
/// or the longest a relayed stream lasts when that comes first, so it
/// bounds the stream as this hub does. Opening is bounded by the hub's call
/// timeout; `stream` names the stream in the refusal when it does not open
/// in time.
async fn open_query(
    hub: &Hub,
    channel: tonic::transport::Channel,
    query: QueryRequest,
    signed: &SignedOnBehalfOf,
    deadline: Option<Deadline>,
    stream: &str,
) -> Result<tonic::Streaming<lgsp_proto::QueryPage>, Status> {
    let started = Instant::now();
    let mut request = Request::new(query);
    let longest = hub.ctx.config.limits.relay().max_duration;
    request.set_timeout(Deadline::within(deadline, started, longest).left());
    lgsp_node::obo::to_metadata(request.metadata_mut(), signed);
    let max = hub.ctx.config.limits.max_message_bytes;
    let open = Deadline::within(deadline, started, hub.call_timeout);
    tokio::time::timeout_at(
        open.at.into(),
        DataExchangeClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .query(request),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(format!(
            "{stream} did not open within {} ms",
            open.total.as_millis()
        )))
    })
    .map(Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_peers_refusal_passes_on_its_code_words_and_external_ids_only() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-road-request-id", "5d1e07c4".parse().unwrap());
        metadata.insert("x-lgsp-anything", "the peer's own".parse().unwrap());
        let status = Status::with_metadata(Code::NotFound, "không có bản ghi", metadata);
        let passed = peer_refusal(&status);
        assert_eq!(passed.code(), Code::NotFound);
        assert_eq!(passed.message(), "không có bản ghi");
        assert_eq!(
            passed.metadata().get("x-road-request-id").unwrap(),
            "5d1e07c4"
        );
        assert!(passed.metadata().get("x-lgsp-anything").is_none());
        assert!(
            passed
                .metadata()
                .get(lgsp_node::refusal::ANSWERED)
                .is_some(),
            "marked as answered by the far side"
        );
    }
}

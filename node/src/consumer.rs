//! The agency-facing side of a node: this agency's applications call other
//! agencies' services through it. The node finds the provider node (or the
//! province's hub, for another instance's service) in its copy of the
//! catalog and calls it with the agency's certificate: small calls on the
//! node link to it, large ones and query streams as ordinary gRPC calls.
//! Every exchange is logged on this side too.

use crate::context::NodeContext;
use crate::deadline::Deadline;
use crate::trace::{Trace, code_of, own_request_id};
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::data_exchange_server::DataExchange;
use lgsp_proto::{CallResponse, Envelope, NodeRecord, QueryRequest};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The agency-facing side: this agency's applications call other agencies'
/// services through it.
#[derive(Debug, Clone)]
pub struct Consumer {
    ctx: Arc<NodeContext>,
}

impl Consumer {
    /// The consumer side over the node's shared context.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// The catalog's record of the provider node serving `service_id`, or
    /// of the province's hub for a service of another instance (then
    /// `Route::audience`).
    fn route(&self, service_id: &str) -> Result<Route, Status> {
        let ctx = &self.ctx;
        service_id
            .parse::<lgsp_registry::ServiceId>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (agency, node, via_hub, origin, far_side_batches) = ctx
            .cache
            .with_service(service_id, |s| {
                (
                    s.agency_code.clone(),
                    s.node.clone(),
                    s.via_hub.clone(),
                    s.origin.clone(),
                    s.verifies_batched_records,
                )
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "service {service_id} is not in the provincial catalog (see `lgsp service list`)"
                ))
            })?;
        if let Some((hub_agency, hub_name)) = via_hub.split_once('/') {
            let hub = ctx.cache.node(hub_agency, hub_name).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "service {service_id} of another instance is carried by hub {via_hub}, which is not registered in the catalog"
                ))
            })?;
            // The record is addressed to the instance the service comes
            // from, carried out by this province's hub.
            let peer = ctx.cache.peer(&origin).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "service {service_id} comes from federation peer {origin:?}, which is not in the catalog"
                ))
            })?;
            let hub_id = hub_agency
                .parse()
                .and_then(|agency| {
                    lgsp_certs::SpiffeId::new(
                        &ctx.trust_domain,
                        agency,
                        lgsp_certs::Role::Hub,
                        hub_name,
                    )
                })
                .map_err(|e| {
                    Status::failed_precondition(format!(
                        "service {service_id} is carried by hub {via_hub}, which is not a hub's name: {e}"
                    ))
                })?;
            let batches = crate::obo::route_batches(far_side_batches, &hub);
            return Ok(Route {
                node: hub,
                hub_serves: true,
                audience: Some(crate::obo::Audience::new(&peer.trust_domain, &hub_id)),
                batches,
            });
        }
        let record = ctx.cache.node(&agency, &node).ok_or_else(|| {
            Status::failed_precondition(format!(
                "service {service_id} names node {node:?} of agency {agency}, which is not registered in the catalog"
            ))
        })?;
        // A service the hub carries to an external REST system is served
        // by the hub's node, which presents a hub certificate.
        let hub_serves = ctx.cache.has(lgsp_proto::RecordKind::RestRoute, service_id);
        Ok(Route {
            node: record,
            hub_serves,
            audience: None,
            batches: false,
        })
    }

    /// Sends `env` to the provider node serving it, or to the province's
    /// hub for another instance's service (with a record of on whose
    /// behalf, signed with this node's key): on the link to it, or as a
    /// unary call when the envelope is large or the server has no link
    /// service. `deadline` is the application's; `size` the envelope's
    /// encoded size; `trace` keeps the record signed, for the log.
    async fn send(
        &self,
        deadline: Option<Deadline>,
        env: Envelope,
        size: usize,
        trace: &mut Trace,
    ) -> Result<CallResponse, Status> {
        if deadline.is_some_and(|d| d.left().is_zero()) {
            return Err(Status::deadline_exceeded(
                "the application's deadline passed before the call left this node",
            ));
        }
        let route = self.route(&env.service_id)?;
        let (role, obo) = if let Some(audience) = &route.audience {
            let signer = self
                .ctx
                .obo_signer()
                .map_err(|e| Status::internal(e.to_string()))?;
            let now = lgsp_registry::calendar::unix_now_ms();
            let batch = self
                .ctx
                .config
                .consumer
                .batch_obo_signatures
                .unwrap_or(route.batches);
            let signed = if batch {
                signer.sign_batched(&env, now, audience).await
            } else {
                signer.sign(&env, now, audience)
            }
            .map_err(|e| Status::internal(e.to_string()))?;
            self.ctx.metrics.record_signed(signed.batch_size > 0);
            trace.on_behalf_of(&signed);
            (lgsp_certs::Role::Hub, Some(signed))
        } else if route.hub_serves {
            // A service the hub carries to an external REST system.
            (lgsp_certs::Role::Hub, None)
        } else {
            (lgsp_certs::Role::Node, None)
        };
        self.ctx
            .call_node(&route.node, role, env, obo, deadline, size)
            .await
            .map_err(|s| explain(s, &self.ctx.serial))
    }

    /// A client of the provider node (or hub) of `route`, on the pooled
    /// connection.
    fn client(&self, route: &Route) -> Result<DataExchangeClient<Channel>, Status> {
        let max = self.ctx.config.limits.max_message_bytes;
        let role = if route.hub_serves {
            lgsp_certs::Role::Hub
        } else {
            lgsp_certs::Role::Node
        };
        Ok(
            DataExchangeClient::new(self.ctx.channel_to(&route.node, role)?)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    }
}

/// Where a call goes: a provider node, or the hub for another instance's
/// service.
#[derive(Debug)]
struct Route {
    node: NodeRecord,
    /// The provider is the province's hub (another instance's service, or
    /// one carried to a REST system): a hub certificate.
    hub_serves: bool,
    /// For another instance's service: whom the record is addressed to.
    audience: Option<crate::obo::Audience>,
    /// Every hop of the route verifies records signed in batches.
    batches: bool,
}

/// The outgoing call, with the time the caller has left as its deadline.
fn forward<T>(deadline: Option<Deadline>, message: T) -> Request<T> {
    let mut out = Request::new(message);
    if let Some(deadline) = deadline {
        out.set_timeout(deadline.left());
    }
    out
}

/// A failed call to a provider node in words for the application; `serial`
/// is this node's own certificate's.
fn explain(status: Status, serial: &str) -> Status {
    // The provider answered (a service in maintenance is UNAVAILABLE): its
    // words stand as they are; the call did not fail on the way.
    if status.metadata().get(crate::refusal::ANSWERED).is_some() {
        return status;
    }
    if status.code() == tonic::Code::Unknown || status.code() == tonic::Code::Unavailable {
        let text = lgsp_certs::tls::explain_status(&status);
        // The provider refused this node's own certificate in the
        // handshake (a new connection after the CRL changed): the same
        // answer as when it refuses it on a call of an open connection.
        if text.contains("CertificateRevoked") {
            return Status::unauthenticated(format!(
                "the provider's node refused this node's certificate (serial {serial}): it is revoked; ask the provincial IT department (Sở KH&CN) for a new one ({text})"
            ));
        }
        return Status::new(
            status.code(),
            format!("calling the provider's node failed: {text}"),
        );
    }
    status
}

#[tonic::async_trait]
impl DataExchange for Consumer {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        let started = Instant::now();
        let (metadata, _, mut env) = request.into_parts();
        let deadline = Deadline::of(&metadata, started);
        let bad_id = own_request_id(&mut env.request_id);
        let raw = env.encode_to_vec();
        let mut trace = Trace::start(
            &self.ctx,
            "consumer",
            &env.request_id,
            &self.ctx.config.agency,
            &env.service_id,
            &env.operation,
            &raw,
            started,
            deadline,
        );
        if let Some(refusal) = bad_id {
            return Err(trace.refuse(refusal));
        }
        let span = tracing::info_span!("consume", request_id = %env.request_id, service = %env.service_id, op = %env.operation);
        let result = self
            .send(deadline, env, raw.len(), &mut trace)
            .instrument(span)
            .await;
        let response = result.as_ref().map_or(&[][..], |r| r.payload.as_slice());
        trace.finish(
            &Sha256::digest(response),
            code_of(&result),
            response.len() as u64,
        );
        result.map(|answer| {
            let mut headers = tonic::metadata::MetadataMap::new();
            // The ids an X-Road security server gave the exchange
            // (returned by the hub that called it), as response metadata
            // too; anything else stays in `CallResponse.metadata` only.
            crate::trace::put_external_ids(&answer.metadata, &mut headers);
            Response::from_parts(headers, answer, Default::default())
        })
    }

    type QueryStream = crate::provider::PageStream;

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let started = Instant::now();
        let (metadata, _, mut req) = request.into_parts();
        let deadline = Deadline::of(&metadata, started);
        let bad_id = own_request_id(&mut req.request_id);
        let mut trace = Trace::start(
            &self.ctx,
            "consumer",
            &req.request_id,
            &self.ctx.config.agency,
            &req.service_id,
            "query",
            &req.encode_to_vec(),
            started,
            deadline,
        );
        if let Some(refusal) = bad_id {
            return Err(trace.refuse(refusal));
        }
        let span = tracing::info_span!("query", side = "consumer", request_id = %req.request_id, service = %req.service_id);
        let service_id = req.service_id.clone();
        let opened = async {
            let route = self.route(&req.service_id)?;
            let mut request = forward(deadline, req);
            // Another instance's service: through the province's hub, with
            // this node's signed record of on whose behalf, for this query.
            if let Some(audience) = &route.audience {
                let signed = self
                    .ctx
                    .obo_signer()
                    .and_then(|signer| {
                        signer.sign(
                            request.get_ref(),
                            lgsp_registry::calendar::unix_now_ms(),
                            audience,
                        )
                    })
                    .map_err(|e| Status::internal(e.to_string()))?;
                self.ctx.metrics.record_signed(false);
                crate::obo::to_metadata(request.metadata_mut(), &signed);
                trace.on_behalf_of(&signed);
            }
            let mut client = self.client(&route)?;
            client
                .query(request)
                .await
                .map_err(|s| explain(s, &self.ctx.serial))
        }
        .instrument(span.clone())
        .await;
        let upstream = match opened {
            Ok(r) => r.into_inner(),
            Err(status) => {
                trace.finish(&Sha256::digest([]), status.code(), 0);
                return Err(status);
            }
        };
        // Pages pass through one at a time: backpressure reaches the provider.
        Ok(Response::new(crate::relay::relay(
            upstream,
            &service_id,
            deadline,
            self.ctx.config.limits.relay(),
            move |digest, code, bytes| trace.finish(digest, code, bytes),
            (),
            span,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::explain;
    use tonic::{Code, Status};

    #[test]
    fn a_providers_own_answer_keeps_its_words_and_a_failed_call_says_it_failed() {
        let maintenance = "service X of agency Y is suspended for maintenance until 10:00";
        let answered = explain(
            crate::refusal::answered(Status::unavailable(maintenance)),
            "01",
        );
        assert_eq!(answered.code(), Code::Unavailable);
        assert_eq!(answered.message(), maintenance);
        let failed = explain(Status::unavailable("tcp connect error"), "01");
        assert_eq!(failed.code(), Code::Unavailable);
        assert_eq!(
            failed.message(),
            "calling the provider's node failed: tcp connect error"
        );
    }
}

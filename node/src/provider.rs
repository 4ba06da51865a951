//! The province-facing side of a node: serves this agency's services to
//! other agencies' nodes.
//!
//! Every call, whether it came as a unary `Call` or on a node link, goes
//! through one pipeline, [`Provider::serve`]: the caller's certificate is
//! checked again against the CRL in force, the consumer agency's limits
//! apply, the grant is checked, the caller's deadline bounds the work, the
//! backend answers, and the exchange is logged. A `Query` stream takes the
//! same steps before its first page, and checks the certificate again
//! before each page and whenever a new CRL comes into force: a consumer
//! revoked (or expired) mid-stream gets no further page. Its grant is
//! checked again before each page too: a grant ended or narrowed mid-stream
//! ends it. A hub opening a
//! query for a consumer of another instance sends the consumer's signed
//! record, verified and authorized here as for a call; on a hub's own node,
//! a query of an imported service is handed to its forwarder.

use crate::access;
use crate::config::Backend;
use crate::context::NodeContext;
use crate::deadline::Deadline;
use crate::limits::Permit;
use crate::refusal::{Refusal, code_name};
use crate::trace::{Trace, code_of, own_request_id};
use futures::Stream;
use lgsp_certs::{Authenticator, Peer};
use lgsp_dataset::Query;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::data_exchange_server::DataExchange;
use lgsp_proto::{CallResponse, Envelope, QueryPage, QueryRequest, Record, SignedOnBehalfOf};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The pages of a query stream, as a provider (or hub) answers them.
pub type PageStream = Pin<Box<dyn Stream<Item = Result<QueryPage, Status>> + Send>>;

/// The province-facing side: serves this agency's services.
#[derive(Debug, Clone)]
pub struct Provider {
    ctx: Arc<NodeContext>,
    auth: Authenticator,
}

/// A call as it arrived, whichever path it came by.
#[derive(Debug)]
pub(crate) struct Incoming<F> {
    /// The request.
    pub envelope: Envelope,
    /// When it arrived.
    pub started: Instant,
    /// The caller's deadline: past it, the call ends and the log records
    /// DEADLINE_EXCEEDED.
    pub deadline: Option<Deadline>,
    /// Ends the call with its status when the caller gives up first.
    pub cancelled: F,
    /// The largest response (encoded) the caller takes; a larger one is
    /// refused with RESOURCE_EXHAUSTED and logged as not delivered.
    pub response_limit: usize,
    /// The record of on whose behalf a hub calls (calls across instances).
    pub obo: Option<SignedOnBehalfOf>,
}

impl Provider {
    /// The provider side of the node `ctx` describes; `auth` is the
    /// provider listener's authenticator, which knows the CRL in force.
    pub fn new(ctx: Arc<NodeContext>, auth: Authenticator) -> Self {
        Self { ctx, auth }
    }

    pub(crate) fn ctx(&self) -> &NodeContext {
        &self.ctx
    }

    /// The first steps of every call: the certificate is checked again
    /// (a revocation or expiry since the connection opened counts from the
    /// next call),
    /// then the consumer agency's limits. The permit must be held until
    /// the reply is handed over.
    pub(crate) fn admit(&self, peer: &Peer) -> Result<Permit, Refusal> {
        self.auth
            .recheck(peer)
            .map_err(|status| Refusal::Certificate(status.message().to_owned()))?;
        self.ctx.limits.acquire(peer.id.agency.as_str())
    }

    /// Serves one call from `peer` from start to end: admission, then
    /// [`Self::provide`]. Returns the outcome and the consumer's permit (if
    /// admitted), which the caller holds until the reply is handed over.
    pub(crate) async fn serve(
        &self,
        peer: &Peer,
        call: Incoming<impl Future<Output = Status>>,
    ) -> (Result<CallResponse, Status>, Option<Permit>) {
        match self.admit(peer) {
            Ok(permit) => (self.provide(peer, call).await, Some(permit)),
            Err(refusal) => (Err(refusal.into()), None),
        }
    }

    /// Serves an admitted call and logs it: authorization, the deadline,
    /// the backend, the response limit, the sharing log.
    async fn provide(
        &self,
        peer: &Peer,
        call: Incoming<impl Future<Output = Status>>,
    ) -> Result<CallResponse, Status> {
        let Incoming {
            envelope: mut env,
            started,
            deadline,
            cancelled,
            response_limit,
            obo,
        } = call;
        // Called by a hub for a consumer of another instance: the consumer
        // is the one its signed record names, verified here.
        let on_behalf = match (&obo, peer.id.role) {
            (Some(signed), lgsp_certs::Role::Hub) => Some(self.verify_obo(signed, (&env).into())),
            _ => None,
        };
        let consumer_label = match &on_behalf {
            Some(Ok(v)) => v.consumer(),
            _ => peer.id.agency.to_string(),
        };
        // A request id the caller chose is bounded before it reaches the
        // log; a bad one is refused, and logged under an id of our own.
        let bad_id = own_request_id(&mut env.request_id);
        let mut trace = Trace::start(
            &self.ctx,
            "provider",
            &env.request_id,
            &consumer_label,
            &env.service_id,
            &env.operation,
            &env.encode_to_vec(),
            started,
            deadline,
        );
        if let Some(refusal) = bad_id {
            return Err(trace.refuse(refusal));
        }
        let on_behalf = match on_behalf {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => return Err(trace.refuse(Refusal::from(e))),
            None => None,
        };
        // Verified here: the entry keeps it.
        if let (Some(_), Some(signed)) = (&on_behalf, &obo) {
            trace.on_behalf_of(signed);
        }
        let span = tracing::info_span!("provide", request_id = %env.request_id, consumer = %peer.id.agency, service = %env.service_id, op = %env.operation);
        // tonic's own timeout (from `grpc-timeout`) usually ends a unary
        // call first; on a node link this is what ends it.
        let serving = async {
            let serving = self
                .answer(peer, &env, on_behalf.as_ref(), obo.as_ref())
                .instrument(span.clone());
            match deadline {
                Some(limit) => tokio::time::timeout_at(limit.at.into(), serving)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Refusal::DeadlineExceeded {
                            service: env.service_id.clone(),
                            total: limit.total,
                        }
                        .into())
                    }),
                None => serving.await,
            }
        };
        let result = tokio::select! {
            result = serving => result,
            status = cancelled => Err(status),
        };
        let request_id = std::mem::take(&mut env.request_id);
        if let Err(status) = &result {
            trace.external_ids_of(status);
        }
        // A response the caller cannot take is not delivered: the log says so.
        let result = result.and_then(|answered| {
            trace.external_ids(&answered.metadata);
            if answered.record_carried
                && let Some(signed) = &obo
            {
                trace.on_behalf_of(signed);
            }
            let response = CallResponse {
                payload: answered.payload,
                request_id,
                metadata: answered.metadata,
            };
            let size = response.encoded_len();
            if size > response_limit {
                return Err(Refusal::ResponseTooLarge {
                    size,
                    limit: response_limit,
                }
                .into());
            }
            Ok(response)
        });
        let response = result.as_ref().map_or(&[][..], |r| r.payload.as_slice());
        trace.finish(
            &Sha256::digest(response),
            code_of(&result),
            response.len() as u64,
        );
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!("served"),
            Err(s) => tracing::info!(code = code_name(s.code()), reason = %s.message(), "refused"),
        });
        result
    }

    /// Verifies a hub's record of on whose behalf it calls: signed by a
    /// node of a federation peer (its CA from the catalog) whose
    /// certificate the peer's CRL in the catalog does not revoke, for this
    /// request, fresh and not seen before. The hub checks the CRL too, but
    /// may not have loaded it yet.
    fn verify_obo(
        &self,
        signed: &SignedOnBehalfOf,
        env: crate::obo::Signed<'_>,
    ) -> Result<crate::obo::Verified, crate::obo::OboError> {
        let verifier = &self.ctx.obo_verifier;
        let now = lgsp_registry::calendar::unix_now_ms();
        let rest_client = crate::obo::claimed_rest_client(signed);
        let verified = if rest_client.is_empty() {
            let domain = verifier.claimed_domain(signed).unwrap_or_default();
            let peer = self.ctx.cache.peer_of_domain(&domain);
            let roots = match &peer {
                Some(peer) => verifier.roots_of(peer),
                None => Default::default(),
            };
            let verified = verifier.verify(signed, env, &roots, now)?;
            verified.addressed_to(&self.ctx.trust_domain, None)?;
            if let Some(peer) = &peer
                && let Some(number) = self.ctx.peer_crls.revoked(peer, &verified.serial)
            {
                return Err(crate::obo::OboError::Revoked {
                    id: verified.id.to_string(),
                    serial: verified.serial,
                    peer: peer.name.clone(),
                    number,
                });
            }
            verified
        } else {
            // An outside REST system, through this province's hub.
            let client = self.ctx.cache.rest_client(&rest_client).ok_or_else(|| {
                crate::obo::OboError::Untrusted(format!(
                    "REST client {rest_client} (not in the catalog: see `lgsp hub rest-client list`)"
                ))
            })?;
            let own_domain = self
                .ctx
                .creds
                .spiffe_id()
                .map(|id| id.trust_domain)
                .unwrap_or_default();
            let verified = verifier.verify_rest_client(
                signed,
                env,
                &self.ctx.creds.roots,
                &own_domain,
                &client,
                now,
            )?;
            verified.addressed_to(&self.ctx.trust_domain, None)?;
            // The hub checks the client's CRL too, but may not have loaded it yet.
            self.ctx
                .rest_client_crls
                .check_rest_client(&client, &verified.record.caller_certificate)?;
            verified
        };
        self.ctx.replays.check(signed, env.request_id(), now)?;
        Ok(verified)
    }

    /// Authorizes the call and has the service's backend answer it.
    async fn answer(
        &self,
        peer: &Peer,
        env: &Envelope,
        on_behalf: Option<&crate::obo::Verified>,
        obo: Option<&SignedOnBehalfOf>,
    ) -> Result<crate::context::Forwarded, Status> {
        if let Some(forwarder) = self.ctx.forwarder.get()
            && forwarder.carries(&env.service_id)
        {
            return forwarder.forward(peer, env, obo).await;
        }
        self.serve_here(peer, env, on_behalf)
            .await
            .map(crate::context::Forwarded::from)
    }

    /// Authorizes a call to a service this node serves itself and has its
    /// backend answer it.
    async fn serve_here(
        &self,
        peer: &Peer,
        env: &Envelope,
        on_behalf: Option<&crate::obo::Verified>,
    ) -> Result<Vec<u8>, Status> {
        let ctx = &self.ctx;
        let allowed = match on_behalf {
            Some(v) => access::authorize_foreign(
                &ctx.cache,
                &ctx.config.agency,
                &v.id,
                &env.service_id,
                lgsp_registry::calendar::unix_now(),
            )?,
            None => access::authorize(
                &ctx.cache,
                &ctx.config.agency,
                peer,
                &env.service_id,
                lgsp_registry::calendar::unix_now(),
            )?,
        };
        let consumer_label = on_behalf.map(crate::obo::Verified::consumer);
        let consumer = consumer_label.as_deref().unwrap_or(peer.id.agency.as_str());
        let name = allowed.id.name();
        let service = ctx
            .config
            .service(name)
            .ok_or_else(|| Refusal::NotServedHere {
                service: env.service_id.clone(),
            })?;
        match &service.backend {
            Backend::Dataset => {
                if env.operation != "get" {
                    return Err(Refusal::UnsupportedOperation {
                        service: env.service_id.clone(),
                        operation: env.operation.clone(),
                    }
                    .into());
                }
                let key = env.parameters.get("key").ok_or(Refusal::MissingKey)?;
                // The items asked for (`fields`, comma-separated) must be
                // granted; the answer carries only granted items.
                let asked: Vec<&str> = env
                    .parameters
                    .get("fields")
                    .map(|f| {
                        f.split(',')
                            .map(str::trim)
                            .filter(|f| !f.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                allowed.check_items(consumer, asked.iter().copied())?;
                let dataset = ctx
                    .datasets
                    .get(name)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                // Only the items asked for, or the ones granted.
                let keep: Vec<String> = if asked.is_empty() {
                    allowed.items.clone()
                } else {
                    asked.iter().map(|f| (*f).to_owned()).collect()
                };
                let record = if keep.is_empty() {
                    dataset.get_json(key)
                } else {
                    dataset.get_fields(key, &keep)
                };
                let record = record
                    .map_err(|e| Status::internal(e.to_string()))?
                    .ok_or_else(|| Refusal::RecordNotFound {
                        service: env.service_id.clone(),
                        key: key.clone(),
                    })?;
                Ok(record.into_bytes())
            }
            Backend::Grpc { url, timeout } => {
                let channel = ctx.backend_channel(url)?;
                let mut forwarded = Request::new(env.clone());
                forwarded.set_timeout(*timeout);
                // The backend learns the consumer from the node, which took
                // it from the certificate (or the verified on-behalf-of
                // record: `agency@trust-domain`).
                if let Ok(v) = consumer.parse() {
                    forwarded.metadata_mut().insert("x-lgsp-consumer-agency", v);
                }
                let max = ctx.config.limits.max_message_bytes;
                DataExchangeClient::new(channel)
                    .max_decoding_message_size(max)
                    .call(forwarded)
                    .await
                    .map(|r| r.into_inner().payload)
                    .map_err(|s| {
                        if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown
                        {
                            Status::unavailable(format!(
                                "the agency's gRPC backend for {} is unreachable: {}",
                                service.name,
                                s.message()
                            ))
                        } else {
                            s
                        }
                    })
            }
            Backend::Http {
                url,
                method,
                timeout,
            } => {
                ctx.http
                    .call(
                        &service.name,
                        url,
                        *method,
                        *timeout,
                        &env.operation,
                        &env.parameters,
                        &env.payload,
                        &env.request_id,
                        consumer,
                    )
                    .await
            }
        }
    }

    /// Authorizes a query stream, limits it to the items granted and finds
    /// its dataset. A query a hub opens for a consumer of another instance
    /// (`on_behalf`) is authorized against that consumer's grant and items.
    fn open_query(
        &self,
        peer: &Peer,
        req: &mut QueryRequest,
        on_behalf: Option<&crate::obo::Verified>,
    ) -> Result<Arc<lgsp_dataset::Dataset>, Status> {
        let ctx = &self.ctx;
        let service_id = req.service_id.as_str();
        let allowed = granted(ctx, peer, req, on_behalf)?;
        if req.fields.is_empty() {
            req.fields.clone_from(&allowed.items);
        }
        let name = allowed.id.name();
        match ctx.config.service(name).map(|s| &s.backend) {
            Some(Backend::Dataset) => {}
            Some(_) => {
                return Err(Refusal::NotADataset {
                    service: service_id.to_owned(),
                }
                .into());
            }
            None => {
                return Err(Refusal::NotServedHere {
                    service: service_id.to_owned(),
                }
                .into());
            }
        }
        ctx.datasets
            .get(name)
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

/// The grant that lets `peer` (or the consumer of another instance its
/// verified record names, `on_behalf`) query `req`'s service now, with
/// every field `req` asks for or filters on: checked when a stream opens
/// and again before each page, so a grant ended or narrowed meanwhile ends
/// it.
fn granted(
    ctx: &NodeContext,
    peer: &Peer,
    req: &QueryRequest,
    on_behalf: Option<&crate::obo::Verified>,
) -> Result<access::Allowed, Status> {
    let service_id = req.service_id.as_str();
    let now = lgsp_registry::calendar::unix_now();
    let allowed = match on_behalf {
        Some(v) => {
            access::authorize_foreign(&ctx.cache, &ctx.config.agency, &v.id, service_id, now)?
        }
        None => access::authorize(&ctx.cache, &ctx.config.agency, peer, service_id, now)?,
    };
    let consumer_label = on_behalf.map(crate::obo::Verified::consumer);
    // Every field asked for or filtered on must be granted; asking for
    // none gets the granted ones (the opening fills them in).
    allowed.check_items(
        consumer_label.as_deref().unwrap_or(peer.id.agency.as_str()),
        req.fields
            .iter()
            .chain(req.filters.iter().map(|f| &f.field))
            .map(String::as_str),
    )?;
    Ok(allowed)
}

impl Provider {
    /// [`DataExchange::call`], its refusals not yet marked as answered.
    async fn answer_call(
        &self,
        request: Request<Envelope>,
    ) -> Result<Response<CallResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::of(&request)?.clone();
        let deadline = Deadline::of(request.metadata(), started);
        let obo = match crate::obo::from_metadata(request.metadata()) {
            Some(Ok(signed)) => Some(signed),
            Some(Err(e)) => return Err(Refusal::OnBehalfOf(e.to_string()).into()),
            None => None,
        };
        let call = Incoming {
            envelope: request.into_inner(),
            started,
            deadline,
            // tonic drops this call when its caller goes away: `Trace` logs that.
            cancelled: std::future::pending(),
            response_limit: self.ctx.config.limits.max_message_bytes,
            obo,
        };
        // The permit is held until the response is built; HTTP/2 takes it next.
        let (result, _permit) = self.serve(&peer, call).await;
        result.map(Response::new)
    }

    /// [`DataExchange::query`], its refusals not yet marked as answered.
    async fn answer_query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<PageStream>, Status> {
        let started = Instant::now();
        let peer = Peer::of(&request)?.clone();
        let permit = self.admit(&peer)?;
        let deadline = Deadline::of(request.metadata(), started);
        let obo = match crate::obo::from_metadata(request.metadata()) {
            Some(Ok(signed)) => Some(signed),
            Some(Err(e)) => return Err(Refusal::OnBehalfOf(e.to_string()).into()),
            None => None,
        };
        let mut req = request.into_inner();
        // Opened by a hub for a consumer of another instance: the consumer
        // is the one its signed record names, verified here (as for a call).
        let on_behalf = match (&obo, peer.id.role) {
            (Some(signed), lgsp_certs::Role::Hub) => Some(self.verify_obo(signed, (&req).into())),
            _ => None,
        };
        let consumer_label = match &on_behalf {
            Some(Ok(v)) => v.consumer(),
            _ => peer.id.agency.to_string(),
        };
        let bad_id = own_request_id(&mut req.request_id);
        let mut trace = Trace::start(
            &self.ctx,
            "provider",
            &req.request_id,
            &consumer_label,
            &req.service_id,
            "query",
            &req.encode_to_vec(),
            started,
            deadline,
        );
        if let Some(refusal) = bad_id {
            return Err(trace.refuse(refusal));
        }
        let on_behalf = match on_behalf {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => return Err(trace.refuse(Refusal::from(e))),
            None => None,
        };
        // Verified here: the entry keeps it.
        if let (Some(_), Some(signed)) = (&on_behalf, &obo) {
            trace.on_behalf_of(signed);
        }
        // Another instance's service, imported through this node (a hub):
        // carried across, page by page, logged here once.
        if let Some(forwarder) = self.ctx.forwarder.get()
            && forwarder.carries(&req.service_id)
        {
            let span = tracing::info_span!("query", side = "hub", request_id = %req.request_id, consumer = %peer.id.agency, service = %req.service_id);
            let service_id = req.service_id.clone();
            let upstream = match forwarder
                .forward_query(&peer, req, obo.as_ref(), deadline)
                .instrument(span.clone())
                .await
            {
                Ok(upstream) => {
                    // Opened toward another instance: the caller's record
                    // was checked and carried on.
                    if let Some(signed) = &obo {
                        trace.on_behalf_of(signed);
                    }
                    upstream
                }
                Err(status) => {
                    trace.finish(&Sha256::digest([]), status.code(), 0);
                    return Err(status);
                }
            };
            let pages = crate::relay::relay(
                upstream,
                &service_id,
                deadline,
                self.ctx.config.limits.relay(),
                move |digest, code, bytes| trace.finish(digest, code, bytes),
                permit,
                span,
            );
            return Ok(Response::new(Box::pin(
                self.auth.while_admitted(peer, pages),
            )));
        }
        let dataset = match self.open_query(&peer, &mut req, on_behalf.as_ref()) {
            Ok(dataset) => dataset,
            Err(status) => {
                trace.finish(&Sha256::digest([]), status.code(), 0);
                return Err(status);
            }
        };
        // Pages are sent as messages of at most the node's message size,
        // which the consumer node shares.
        let page_limit = self.ctx.config.limits.max_message_bytes;
        // One page in flight at a time: the consumer's reading paces the reading here.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<QueryPage, Status>>(1);
        let span = tracing::info_span!("query", request_id = %req.request_id, consumer = %peer.id.agency, service = %req.service_id);
        let auth = self.auth.clone();
        let ctx = self.ctx.clone();
        let reader = peer.clone();
        tokio::spawn(
            async move {
                // The stream counts as in flight until its last page.
                let _permit = permit;
                let mut query = query_of(&req);
                let mut digest = Sha256::new();
                let mut bytes_out = 0u64;
                let outcome = loop {
                    if let Err(refused) = auth.recheck(&reader) {
                        break Err(refused);
                    }
                    if let Err(refused) = granted(&ctx, &reader, &req, on_behalf.as_ref()) {
                        break Err(refused);
                    }
                    // A page reads up to MAX_SCAN_PER_PAGE records from disk: off
                    // the runtime's threads, which serve every other call.
                    let read = {
                        let dataset = dataset.clone();
                        tokio::task::spawn_blocking(move || {
                            let page = dataset.query(&query);
                            (page, query)
                        })
                        .await
                    };
                    let page = match read {
                        Ok((Ok(page), asked)) => {
                            query = asked;
                            page
                        }
                        Ok((Err(e), _)) => break Err(Status::invalid_argument(e.to_string())),
                        Err(e) => {
                            break Err(Status::internal(format!(
                                "reading the dataset failed: {e}"
                            )));
                        }
                    };
                    let done = page.resume_token.is_empty();
                    let out = QueryPage {
                        records: page
                            .records
                            .into_iter()
                            .map(|(key, json)| Record { key, json })
                            .collect(),
                        resume_token: page.resume_token.clone(),
                    };
                    let encoded = out.encode_to_vec();
                    // A page the consumer cannot take is not sent (and not
                    // logged as delivered): it would fail on its side.
                    if encoded.len() > page_limit {
                        break Err(Refusal::PageTooLarge {
                            size: encoded.len(),
                            limit: page_limit,
                        }
                        .into());
                    }
                    // A consumer that stops reading holds this send; a CRL
                    // that revokes it meanwhile ends the stream now.
                    let sent = tokio::select! {
                        biased;
                        refused = auth.refusal(&reader) => break Err(refused),
                        sent = tx.send(Ok(out)) => sent,
                    };
                    if sent.is_err() {
                        // The stream was dropped: by the consumer, or by
                        // `while_admitted` refusing it.
                        break Err(auth
                            .recheck(&reader)
                            .err()
                            .unwrap_or_else(|| Status::cancelled("the consumer stopped reading")));
                    }
                    digest.update(&encoded);
                    bytes_out += encoded.len() as u64;
                    if done {
                        break Ok(());
                    }
                    query.resume_token = page.resume_token;
                };
                // A refused certificate is told by `while_admitted`, which
                // sees the same refusal: a send here could wait for ever on
                // a consumer that stopped reading.
                if let Err(s) = &outcome
                    && s.code() != tonic::Code::Cancelled
                    && s.code() != tonic::Code::Unauthenticated
                {
                    let _ = tx.send(Err(s.clone())).await;
                }
                let digest = digest.finalize();
                trace.finish(&digest, code_of(&outcome), bytes_out);
            }
            .instrument(span),
        );
        let pages = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(
            self.auth.while_admitted(peer, pages),
        )))
    }
}

/// What this node answers is marked as answered ([`crate::refusal::ANSWERED`]):
/// the consumer's node words it as the provider's answer, not as a node it
/// could not reach (a service in maintenance answers `UNAVAILABLE`).
#[tonic::async_trait]
impl DataExchange for Provider {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        self.answer_call(request)
            .await
            .map_err(crate::refusal::answered)
    }

    type QueryStream = PageStream;

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        self.answer_query(request)
            .await
            .map_err(crate::refusal::answered)
    }
}

/// The dataset query a peer's request asks for.
pub(crate) fn query_of(req: &QueryRequest) -> Query {
    Query {
        filters: req
            .filters
            .iter()
            .map(|f| (f.field.clone(), f.equals.clone()))
            .collect(),
        fields: req.fields.clone(),
        page_size: req.page_size,
        resume_token: req.resume_token.clone(),
    }
}

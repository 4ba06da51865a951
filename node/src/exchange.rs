//! The data-exchange API on both sides of a node: the provider side serves
//! this agency's services to other agencies' nodes (mTLS, enforced), the
//! consumer side lets this agency's applications call other agencies'
//! services through this node. Both sides log every exchange.

use crate::access;
use crate::backend::HttpBackend;
use crate::catalog_cache::CatalogCache;
use crate::config::NodeConfig;
use crate::dataset::{DatasetCache, Query};
use crate::limits::Limits;
use crate::link::{Deadline, Links, MAX_LINK_ENVELOPE, Sent};
use crate::sharing_log::{Exchange, SharingLog};
use futures::{Stream, StreamExt};
use lgsp_certs::{Credentials, Peer};
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::data_exchange_server::DataExchange;
use lgsp_proto::{CallResponse, Envelope, QueryPage, QueryRequest, Record};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Everything both sides share.
#[derive(Debug)]
pub struct NodeContext {
    pub config: NodeConfig,
    pub cache: Arc<CatalogCache>,
    pub datasets: DatasetCache,
    pub log: Arc<SharingLog>,
    pub http: HttpBackend,
    pub limits: Arc<Limits>,
    pub creds: Credentials,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Pooled HTTP/2 connections to other nodes (mTLS), by endpoint.
    node_channels: Mutex<HashMap<String, Channel>>,
    /// Pooled plain HTTP/2 connections to the agency's gRPC backends, by URL.
    backend_channels: Mutex<HashMap<String, Channel>>,
    /// Links to other nodes, carrying unary calls (see [`crate::link`]).
    links: Links,
}

impl NodeContext {
    pub fn new(
        config: NodeConfig,
        cache: Arc<CatalogCache>,
        datasets: DatasetCache,
        log: Arc<SharingLog>,
        creds: Credentials,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let limits = Limits::new(
            config.limits.max_concurrent_per_consumer,
            config.limits.rate_per_consumer,
        );
        let http = HttpBackend::new(config.limits.max_message_bytes);
        Arc::new(Self {
            config,
            cache,
            datasets,
            log,
            http,
            limits,
            creds,
            metrics,
            node_channels: Mutex::default(),
            backend_channels: Mutex::default(),
            links: Links::default(),
        })
    }

    /// A pooled HTTP/2 connection to another node's provider listener.
    fn channel(&self, endpoint: &str) -> Result<Channel, Status> {
        pooled(&self.node_channels, endpoint, || {
            lgsp_certs::tls::client_endpoint(endpoint, &self.creds, None)
                .map_err(|e| Status::internal(e.to_string()))
                // A provider that vanished without closing the connection
                // (host down, cable cut) is found out within half a minute,
                // and its link closed, instead of at TCP's timeout.
                .map(|e| {
                    e.http2_keep_alive_interval(Duration::from_secs(20))
                        .keep_alive_timeout(Duration::from_secs(10))
                        .keep_alive_while_idle(true)
                })
        })
    }

    /// A pooled plain HTTP/2 connection to one of the agency's own gRPC systems.
    fn backend_channel(&self, url: &str) -> Result<Channel, Status> {
        pooled(&self.backend_channels, url, || {
            tonic::transport::Endpoint::from_shared(url.to_owned())
                .map_err(|e| Status::internal(format!("backend URL {url:?}: {e}")))
        })
    }
}

/// The channel for `key` in `pool`, connected lazily from `endpoint` the
/// first time.
fn pooled(
    pool: &Mutex<HashMap<String, Channel>>,
    key: &str,
    endpoint: impl FnOnce() -> Result<tonic::transport::Endpoint, Status>,
) -> Result<Channel, Status> {
    let mut pool = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(channel) = pool.get(key) {
        return Ok(channel.clone());
    }
    let channel = endpoint()?.connect_lazy();
    pool.insert(key.to_owned(), channel.clone());
    Ok(channel)
}

/// One exchange as the sharing log and the metrics see it: who, what and
/// when, taken as the call starts; `finish` adds the outcome and writes it.
/// A trace dropped unfinished (the caller cancelled, or its deadline passed
/// and the call was abandoned) is written then, with that outcome: every
/// exchange that started is in the log.
struct Trace {
    ctx: Arc<NodeContext>,
    side: &'static str,
    request_id: String,
    consumer: String,
    service_id: String,
    operation: String,
    request_sha256: String,
    bytes_in: u64,
    started: Instant,
    deadline: Option<Deadline>,
    written: bool,
}

impl Trace {
    #[allow(clippy::too_many_arguments)]
    fn start(
        ctx: &Arc<NodeContext>,
        side: &'static str,
        request_id: &str,
        consumer: &str,
        service_id: &str,
        operation: &str,
        request: &[u8],
        started: Instant,
        deadline: Option<Deadline>,
    ) -> Self {
        Self {
            ctx: ctx.clone(),
            side,
            request_id: request_id.to_owned(),
            consumer: consumer.to_owned(),
            service_id: service_id.to_owned(),
            operation: operation.to_owned(),
            request_sha256: hex::encode(Sha256::digest(request)),
            bytes_in: request.len() as u64,
            started,
            deadline,
            written: false,
        }
    }

    /// Records the outcome: `response_sha256` is the digest of the payload
    /// (of every page, for a query), `bytes_out` its size, `code` how the
    /// exchange ended.
    fn finish(mut self, response_sha256: &[u8], code: tonic::Code, bytes_out: u64) {
        self.write(response_sha256, code, bytes_out);
    }

    fn write(&mut self, response_sha256: &[u8], code: tonic::Code, bytes_out: u64) {
        self.written = true;
        let latency = self.started.elapsed();
        let ctx = &self.ctx;
        ctx.metrics.observe(
            self.side,
            &self.service_id,
            &self.consumer,
            code,
            latency,
            self.bytes_in,
            bytes_out,
        );
        let service = std::mem::take(&mut self.service_id);
        let entry = Exchange {
            provider: service.split('/').next().unwrap_or_default().to_owned(),
            request_id: std::mem::take(&mut self.request_id),
            side: self.side.to_owned(),
            consumer: std::mem::take(&mut self.consumer),
            service,
            operation: std::mem::take(&mut self.operation),
            request_sha256: std::mem::take(&mut self.request_sha256),
            response_sha256: hex::encode(response_sha256),
            status: code_name(code).to_owned(),
            latency_us: latency.as_micros() as u64,
            bytes_in: self.bytes_in,
            bytes_out,
        };
        if let Err(error) = ctx.log.append(entry) {
            tracing::error!(%error, "cannot write the sharing log");
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let expired = self.deadline.is_some_and(|d| d.is_near_or_past());
        let code = if std::thread::panicking() {
            // Serving it failed; the caller is answered INTERNAL.
            tonic::Code::Internal
        } else if expired {
            tonic::Code::DeadlineExceeded
        } else {
            tonic::Code::Cancelled
        };
        self.write(&Sha256::digest([]), code, 0);
    }
}

/// The status code an exchange ended with.
fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    result.as_ref().err().map_or(tonic::Code::Ok, Status::code)
}

/// The gRPC name of a status code (`PERMISSION_DENIED`), as logs show it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A request id for an exchange that came without one: 8 random bytes drawn
/// once per process, then a counter (32 hex digits). Unique without a
/// system call per exchange; not a secret.
pub fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        bytes
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(prefix);
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    hex::encode(bytes)
}

type PageStream = Pin<Box<dyn Stream<Item = Result<QueryPage, Status>> + Send>>;

/// The province-facing side: serves this agency's services.
#[derive(Debug, Clone)]
pub struct Provider {
    ctx: Arc<NodeContext>,
}

impl Provider {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    pub(crate) fn ctx(&self) -> &NodeContext {
        &self.ctx
    }

    async fn serve(&self, peer: &Peer, env: &Envelope) -> Result<Vec<u8>, Status> {
        let ctx = &self.ctx;
        let name = access::authorize(&ctx.cache, &ctx.config.agency, peer, &env.service_id)?;
        let service = ctx.config.service(name).ok_or_else(|| {
            Status::unimplemented(format!(
                "service {} is in the catalog but this node is not configured to serve it (add it to node.toml)",
                env.service_id
            ))
        })?;
        match service.kind.as_str() {
            "dataset" => {
                if env.operation != "get" {
                    return Err(Status::invalid_argument(format!(
                        "dataset {} supports the operation \"get\" (parameter \"key\") and the Query stream, not {:?}",
                        env.service_id, env.operation
                    )));
                }
                let key = env.parameters.get("key").ok_or_else(|| {
                    Status::invalid_argument("operation \"get\" needs the parameter \"key\"")
                })?;
                let dataset = ctx
                    .datasets
                    .get(name)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let record = dataset
                    .get_json(key)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "no record with key {key:?} in {}",
                            env.service_id
                        ))
                    })?;
                Ok(record.into_bytes())
            }
            "grpc" => {
                let channel = ctx.backend_channel(&service.url)?;
                let mut forwarded = Request::new(Envelope {
                    service_id: env.service_id.clone(),
                    operation: env.operation.clone(),
                    parameters: env.parameters.clone(),
                    payload: env.payload.clone(),
                    request_id: env.request_id.clone(),
                });
                forwarded.set_timeout(std::time::Duration::from_millis(service.timeout_ms));
                // The backend learns the consumer from the node, which took it from the certificate.
                if let Ok(v) = peer.id.agency.as_str().parse() {
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
            _ => {
                ctx.http
                    .call(
                        service,
                        &env.operation,
                        &env.parameters,
                        &env.payload,
                        &env.request_id,
                        peer.id.agency.as_str(),
                    )
                    .await
            }
        }
    }

    /// Serves one call from `peer` (authenticated, within its limits) and
    /// logs it: the unary `Call` and each call on a node link end here.
    /// `deadline` is the caller's: past it, the call ends and the log
    /// records DEADLINE_EXCEEDED. If `cancelled` ends first (the caller gave
    /// up), the call ends with its status. A response larger than
    /// `response_limit` (encoded) is refused with RESOURCE_EXHAUSTED.
    pub(crate) async fn provide(
        &self,
        peer: &Peer,
        mut env: Envelope,
        started: Instant,
        deadline: Option<Deadline>,
        cancelled: impl std::future::Future<Output = Status>,
        response_limit: usize,
    ) -> Result<CallResponse, Status> {
        if env.request_id.is_empty() {
            env.request_id = new_request_id();
        }
        let trace = Trace::start(
            &self.ctx,
            "provider",
            &env.request_id,
            peer.id.agency.as_str(),
            &env.service_id,
            &env.operation,
            &env.encode_to_vec(),
            started,
            deadline,
        );
        let span = tracing::info_span!("provide", request_id = %env.request_id, consumer = %peer.id.agency, service = %env.service_id, op = %env.operation);
        // tonic's own timeout (from `grpc-timeout`) usually ends a unary
        // call first; on a node link this is what ends it.
        let serving = async {
            let serving = self.serve(peer, &env).instrument(span.clone());
            match deadline {
                Some(limit) => tokio::time::timeout_at(limit.at.into(), serving)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "{} did not answer within the caller's deadline ({} ms)",
                            env.service_id,
                            limit.total.as_millis()
                        )))
                    }),
                None => serving.await,
            }
        };
        let result = tokio::select! {
            result = serving => result,
            status = cancelled => Err(status),
        };
        let request_id = std::mem::take(&mut env.request_id);
        // A response the caller cannot take is not delivered: the log says so.
        let result = result.and_then(|payload| {
            let response = CallResponse {
                payload,
                request_id,
                metadata: HashMap::new(),
            };
            let size = response.encoded_len();
            if size > response_limit {
                return Err(Status::resource_exhausted(format!(
                    "the response is {size} bytes; the consumer accepts at most {response_limit}"
                )));
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
}

#[tonic::async_trait]
impl DataExchange for Provider {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        let started = Instant::now();
        let peer = Peer::of(&request)?.clone();
        let deadline = Deadline::of(request.metadata(), started);
        // tonic drops this call when its caller goes away: `Trace` logs that.
        let never = std::future::pending();
        let max = self.ctx.config.limits.max_message_bytes;
        self.provide(&peer, request.into_inner(), started, deadline, never, max)
            .await
            .map(Response::new)
    }

    type QueryStream = PageStream;

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let started = Instant::now();
        let peer = Peer::of(&request)?.clone();
        let deadline = Deadline::of(request.metadata(), started);
        let mut req = request.into_inner();
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        let ctx = self.ctx.clone();
        let trace = Trace::start(
            &ctx,
            "provider",
            &req.request_id,
            peer.id.agency.as_str(),
            &req.service_id,
            "query",
            &req.encode_to_vec(),
            started,
            deadline,
        );
        let prepared = (|| {
            let name = access::authorize(&ctx.cache, &ctx.config.agency, &peer, &req.service_id)?;
            match ctx.config.service(name) {
                Some(s) if s.kind == "dataset" => {}
                Some(_) => {
                    return Err(Status::invalid_argument(format!(
                        "{} is not a dataset: use Call",
                        req.service_id
                    )));
                }
                None => {
                    return Err(Status::unimplemented(format!(
                        "this node is not configured to serve {}",
                        req.service_id
                    )));
                }
            }
            let dataset = ctx
                .datasets
                .get(name)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(dataset)
        })();
        let dataset = match prepared {
            Ok(p) => p,
            Err(status) => {
                trace.finish(&Sha256::digest([]), status.code(), 0);
                return Err(status);
            }
        };
        // One page in flight at a time: the consumer's reading paces the reading here.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<QueryPage, Status>>(1);
        tokio::spawn(async move {
            let mut query = Query {
                filters: req
                    .filters
                    .iter()
                    .map(|f| (f.field.clone(), f.equals.clone()))
                    .collect(),
                fields: req.fields.clone(),
                page_size: req.page_size,
                resume_token: req.resume_token.clone(),
            };
            let mut digest = Sha256::new();
            let mut bytes_out = 0u64;
            let outcome = loop {
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
                        break Err(Status::internal(format!("reading the dataset failed: {e}")));
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
                digest.update(&encoded);
                bytes_out += encoded.len() as u64;
                if tx.send(Ok(out)).await.is_err() {
                    break Err(Status::cancelled("the consumer stopped reading"));
                }
                if done {
                    break Ok(());
                }
                query.resume_token = page.resume_token;
            };
            if let Err(s) = &outcome
                && s.code() != tonic::Code::Cancelled
            {
                let _ = tx.send(Err(s.clone())).await;
            }
            let digest = digest.finalize();
            trace.finish(&digest, code_of(&outcome), bytes_out);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The agency-facing side: this agency's applications call other agencies'
/// services through it.
#[derive(Debug, Clone)]
pub struct Consumer {
    ctx: Arc<NodeContext>,
}

impl Consumer {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// The endpoint of the provider node serving `service_id`.
    fn route(&self, service_id: &str) -> Result<String, Status> {
        let ctx = &self.ctx;
        lgsp_registry::catalog::parse_service_id(service_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let service = ctx.cache.service(service_id).ok_or_else(|| {
            Status::not_found(format!(
                "service {service_id} is not in the provincial catalog (see `lgsp service list`)"
            ))
        })?;
        let node = ctx.cache.node(&service.agency_code, &service.node).ok_or_else(|| {
            Status::failed_precondition(format!(
                "service {service_id} names node {:?} of agency {}, which is not registered in the catalog",
                service.node, service.agency_code
            ))
        })?;
        Ok(node.endpoint)
    }

    /// A client of the provider node at `endpoint`, on the pooled connection.
    fn client(&self, endpoint: &str) -> Result<DataExchangeClient<Channel>, Status> {
        let max = self.ctx.config.limits.max_message_bytes;
        Ok(DataExchangeClient::new(self.ctx.channel(endpoint)?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    /// Sends `env` to the provider node serving it: on the link to that
    /// node, or as a unary call when the envelope is large or the node has
    /// no link service.
    /// `deadline` is the application's; `size` the envelope's encoded size.
    async fn send(
        &self,
        deadline: Option<Deadline>,
        env: Envelope,
        size: usize,
    ) -> Result<CallResponse, Status> {
        if deadline.is_some_and(|d| d.left().is_zero()) {
            return Err(Status::deadline_exceeded(
                "the application's deadline passed before the call left this node",
            ));
        }
        let endpoint = self.route(&env.service_id)?;
        let env = if size <= MAX_LINK_ENVELOPE {
            let ctx = &self.ctx;
            let sent = ctx
                .links
                .call(
                    &endpoint,
                    || ctx.channel(&endpoint),
                    ctx.config.limits.max_message_bytes,
                    env,
                    deadline,
                )
                .await;
            match sent {
                Sent::Done(result) => return result.map_err(explain),
                Sent::Unsupported(env) => env,
            }
        } else {
            env
        };
        self.client(&endpoint)?
            .call(forward(deadline, env))
            .await
            .map(Response::into_inner)
            .map_err(explain)
    }
}

/// The outgoing call, with the time the caller has left as its deadline.
fn forward<T>(deadline: Option<Deadline>, message: T) -> Request<T> {
    let mut out = Request::new(message);
    if let Some(deadline) = deadline {
        out.set_timeout(deadline.left());
    }
    out
}

fn explain(status: Status) -> Status {
    if status.code() == tonic::Code::Unknown || status.code() == tonic::Code::Unavailable {
        let text = lgsp_certs::tls::explain_status(&status);
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
        if env.request_id.is_empty() {
            env.request_id = new_request_id();
        }
        let raw = env.encode_to_vec();
        let trace = Trace::start(
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
        let span = tracing::info_span!("consume", request_id = %env.request_id, service = %env.service_id, op = %env.operation);
        let result = self.send(deadline, env, raw.len()).instrument(span).await;
        let response = result.as_ref().map_or(&[][..], |r| r.payload.as_slice());
        trace.finish(
            &Sha256::digest(response),
            code_of(&result),
            response.len() as u64,
        );
        result.map(Response::new)
    }

    type QueryStream = PageStream;

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let started = Instant::now();
        let (metadata, _, mut req) = request.into_parts();
        let deadline = Deadline::of(&metadata, started);
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        let trace = Trace::start(
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
        let opened = async {
            let mut client = self.client(&self.route(&req.service_id)?)?;
            client.query(forward(deadline, req)).await.map_err(explain)
        }
        .await;
        let mut upstream = match opened {
            Ok(r) => r.into_inner(),
            Err(status) => {
                trace.finish(&Sha256::digest([]), status.code(), 0);
                return Err(status);
            }
        };
        // Pages pass through one at a time: backpressure reaches the provider.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<QueryPage, Status>>(1);
        tokio::spawn(async move {
            let mut digest = Sha256::new();
            let mut bytes_out = 0u64;
            let outcome = loop {
                match upstream.next().await {
                    Some(Ok(page)) => {
                        let encoded = page.encode_to_vec();
                        digest.update(&encoded);
                        bytes_out += encoded.len() as u64;
                        if tx.send(Ok(page)).await.is_err() {
                            break Err(Status::cancelled("the application stopped reading"));
                        }
                    }
                    Some(Err(s)) => {
                        let _ = tx.send(Err(s.clone())).await;
                        break Err(s);
                    }
                    None => break Ok(()),
                }
            };
            let digest = digest.finalize();
            trace.finish(&digest, code_of(&outcome), bytes_out);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

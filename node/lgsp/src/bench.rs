//! `lgsp bench`: measured throughput and latency, each next to a baseline
//! measured in the same run on the same machine.

use crate::etcd;
use crate::server_cpu::{self, Servers};
use anyhow::{Context, Result, anyhow};
use lgsp_certs::ca::CertificateAuthority;
use lgsp_certs::{AgencyCode, Credentials, Role, ServerTls, TlsFiles};
use lgsp_node::config::{
    Backend, DEFAULT_BACKEND_TIMEOUT, HttpMethod, LimitsConfig, NodeConfig, ServiceConfig,
};
use lgsp_node::server::NodeServer;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::data_exchange_server::{DataExchange, DataExchangeServer};
use lgsp_proto::identity_service_client::IdentityServiceClient;
use lgsp_proto::{
    Agency, CallResponse, Envelope, QueryPage, QueryRequest, RecordKind, ServiceKind,
};
use lgsp_province::backend::{self, HttpCall};
use lgsp_province::pki::{self, Holder};
use lgsp_province::registry::{self, RegistryCluster};
use lgsp_province::wait;
use lgsp_registry::{Catalog, GrantKey, Publication, RegistryClient, ServiceId, Validity};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Latencies of one run, and how long it took.
#[derive(Debug)]
pub(crate) struct Run {
    pub label: String,
    pub clients: usize,
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    pub(crate) fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Adds the calls of `later`, another slice of the same run.
    fn absorb(&mut self, later: Run) {
        self.ok += later.ok;
        self.errors += later.errors;
        self.elapsed += later.elapsed;
        self.latencies.extend(later.latencies);
        self.latencies.sort_unstable();
    }

    /// The `p`-th percentile latency (0..=100), in milliseconds.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Runs `op` from `clients` concurrent tasks for `duration`; task `i` gets
/// its index and a per-task counter.
pub(crate) async fn measure<F, Fut>(label: &str, clients: usize, duration: Duration, op: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op(i, n).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                    n += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Run {
        label: label.to_owned(),
        clients,
        ok: latencies.len(),
        errors,
        elapsed,
        latencies,
    }
}

fn print_header() {
    println!(
        "{:>7}  {:<36} {:>10} {:>9} {:>9} {:>8}  {:>9}",
        "clients", "operation", "ops/s", "p50 ms", "p99 ms", "errors", "vs base"
    );
}

fn print_run(run: &Run, baseline: f64) {
    println!(
        "{:>7}  {:<36} {:>10.0} {:>9.2} {:>9.2} {:>8}  {:>8.2}x",
        run.clients,
        run.label,
        run.per_second(),
        run.percentile_ms(50.0),
        run.percentile_ms(99.0),
        run.errors,
        run.per_second() / baseline
    );
}

/// The provincial IT department's agency code, for the bench's own
/// identities (admin, registry servers).
const PROVINCE: &str = "000.00.00.H62";

fn leaf(ca: &mut CertificateAuthority, role: Role, name: &str) -> Result<Credentials> {
    agency_leaf(ca, PROVINCE, role, name)
}

fn agency_leaf(
    ca: &mut CertificateAuthority,
    agency: &str,
    role: Role,
    name: &str,
) -> Result<Credentials> {
    let holder = Holder {
        agency,
        role,
        name,
        display: None,
    };
    Ok(pki::issue(ca, holder, 1)?.creds)
}

/// The configurations of `servers` registry servers on free loopback ports
/// under `dir`, with certificates from `ca`, by server id.
fn plan_registry(
    ca: &mut CertificateAuthority,
    dir: &Path,
    servers: u64,
) -> Result<std::collections::BTreeMap<u64, lgsp_registry::RegistryConfig>> {
    let members = registry::members(servers)?;
    Ok(registry::plan(ca, PROVINCE, None, dir, &members, |_| {})?)
}

/// Starts `servers` registry servers on free loopback ports under `dir`,
/// with certificates from `ca`, on the runtime of the bench's `registry`
/// server, and waits for their leader.
async fn start_registry_on(
    on: &mut Servers,
    ca: &mut CertificateAuthority,
    dir: &Path,
    servers: u64,
) -> Result<RegistryCluster> {
    let configs = plan_registry(ca, dir, servers)?;
    on.run(
        REGISTRY,
        RegistryCluster::start(configs, Duration::from_secs(15)),
    )
    .await?
    .map_err(Into::into)
}

/// The names of the bench's servers (each on a runtime of its own, see
/// [`server_cpu`]), at most 11 bytes.
const REGISTRY: &str = server_cpu::REGISTRY;
const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";
const NODE_C: &str = "node-c";
const HUB_P: &str = "hub-p";
const HUB_Q: &str = "hub-q";
const REST: &str = "rest-system";

/// The key each bench client owns, as an agency code.
fn bench_code(i: usize) -> String {
    format!("000.{:02}.{:02}.H62", i / 100, i % 100)
}

/// 256 bytes of UTF-8, the value every bench write carries (plus a counter).
fn bench_value() -> String {
    "đ".repeat(128)
}

/// Conditional writes on lgsp: each client owns a key and writes it at the
/// revision it last saw.
async fn lgsp_writes(
    clients: &Arc<Vec<RegistryClient>>,
    revisions: &Arc<Vec<AtomicU64>>,
    c: usize,
    duration: Duration,
) -> Run {
    let (cl, revs, v) = (clients.clone(), revisions.clone(), bench_value());
    measure("conditional write (CAS)", c, duration, move |i, n| {
        let client = cl[i % cl.len()].clone();
        let revs = revs.clone();
        let value = Value::Agency(Agency {
            code: bench_code(i),
            name: format!("{v}{n}"),
            focal_point: None,
            ..Default::default()
        });
        async move {
            let expected = revs[i].load(Ordering::Relaxed);
            match client.put(value, expected).await {
                Ok(r) => {
                    let rev = r.record.and_then(|r| r.meta).map_or(0, |m| m.mod_revision);
                    revs[i].store(rev, Ordering::Relaxed);
                    Ok(())
                }
                Err(status) => {
                    // A refused compare-and-set says the revision it found
                    // (`lgsp-mod-revision`): the next write uses it, as the
                    // etcd side does, instead of failing for the rest of
                    // the round.
                    if let Some(rev) = status
                        .metadata()
                        .get(lgsp_registry::error::MOD_REVISION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                    {
                        revs[i].store(rev, Ordering::Relaxed);
                    }
                    Err(status.into())
                }
            }
        }
    })
    .await
}

/// Linearizable reads on lgsp, each client of its own key.
async fn lgsp_reads(clients: &Arc<Vec<RegistryClient>>, c: usize, duration: Duration) -> Run {
    let cl = clients.clone();
    measure("linearizable read", c, duration, move |i, _| {
        let client = cl[i % cl.len()].clone();
        async move {
            client
                .get(RecordKind::Agency, &bench_code(i), false)
                .await?;
            Ok(())
        }
    })
    .await
}

/// The same calls on etcd: the clients, their keys and values, and the mod
/// revision each client last saw of its key.
#[derive(Debug, Clone)]
struct EtcdLoad {
    clients: Arc<Vec<etcd::pb::kv_client::KvClient<Channel>>>,
    revisions: Arc<Vec<AtomicI64>>,
}

impl EtcdLoad {
    fn key(i: usize) -> String {
        format!("/bench/put/{}", bench_code(i))
    }

    async fn puts(&self, c: usize, duration: Duration) -> Run {
        let (cl, v) = (self.clients.clone(), bench_value());
        measure("etcd: put", c, duration, move |i, n| {
            let mut client = cl[i % cl.len()].clone();
            let value = format!("{v}{n}");
            async move {
                etcd::put(&mut client, &Self::key(i), value.as_bytes()).await?;
                Ok(())
            }
        })
        .await
    }

    async fn compare_and_sets(&self, c: usize, duration: Duration) -> Run {
        let (cl, revs, v) = (self.clients.clone(), self.revisions.clone(), bench_value());
        measure("etcd: conditional write (txn)", c, duration, move |i, n| {
            let mut client = cl[i % cl.len()].clone();
            let revs = revs.clone();
            let value = format!("{v}{n}");
            async move {
                let expected = revs[i].load(Ordering::Relaxed);
                let key = format!("/bench/cas/{}", bench_code(i));
                match etcd::compare_and_set(&mut client, &key, expected, value.as_bytes()).await? {
                    Ok(rev) => {
                        revs[i].store(rev, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(current) => {
                        revs[i].store(current, Ordering::Relaxed);
                        anyhow::bail!("{key} was not at mod revision {expected}")
                    }
                }
            }
        })
        .await
    }

    async fn reads(&self, c: usize, duration: Duration) -> Run {
        let cl = self.clients.clone();
        measure("etcd: linearizable read", c, duration, move |i, _| {
            let mut client = cl[i % cl.len()].clone();
            async move { etcd::get(&mut client, &Self::key(i)).await }
        })
        .await
    }
}

/// The CPU time the servers under test have run: lgsp's registry servers
/// (their runtime, consensus and storage threads; not the bench's clients)
/// and etcd's members.
struct ServerTime {
    /// This process's time, threads that ended included.
    process: Option<Duration>,
    /// Each live thread's, by server.
    threads: Option<server_cpu::Sample>,
    etcd: Option<Duration>,
}

impl ServerTime {
    fn now(etcd: Option<&etcd::EtcdCluster>) -> Self {
        Self {
            process: server_cpu::process_ran(std::process::id()),
            threads: server_cpu::Sample::now(),
            etcd: etcd.and_then(etcd::EtcdCluster::ran),
        }
    }

    /// Microseconds of lgsp's servers per operation of `run`, taken
    /// between `earlier` and this sample: this process's time less that of
    /// every thread not the registry's (the clients'), so that a registry
    /// thread that ended in between (a log rewrite's) still counts.
    fn lgsp_per_op(&self, earlier: &Self, run: &Run) -> Option<f64> {
        let process = self.process?.checked_sub(earlier.process?)?;
        let others: Duration = self
            .threads
            .as_ref()?
            .since(earlier.threads.as_ref()?)
            .into_iter()
            .filter(|(server, _)| server != REGISTRY)
            .map(|(_, spent)| spent)
            .sum();
        per_op(process.saturating_sub(others), run)
    }

    /// Microseconds of etcd's members per operation of `run`.
    fn etcd_per_op(&self, earlier: &Self, run: &Run) -> Option<f64> {
        per_op(self.etcd?.checked_sub(earlier.etcd?)?, run)
    }
}

/// lgsp's side of a round of `lgsp bench registry`.
struct LgspLoad<'a> {
    clients: &'a Arc<Vec<RegistryClient>>,
    revisions: &'a Arc<Vec<AtomicU64>>,
    /// Clients running at once.
    concurrency: usize,
    duration: Duration,
    /// The baseline's calls per second, for the report.
    baseline: f64,
}

impl LgspLoad<'_> {
    /// Conditional writes, then linearizable reads, each printed and with
    /// the registry servers' CPU per operation; and the CPU sample taken
    /// last (with etcd's members' time when `etcd` is given), from which
    /// the next run of the round counts.
    async fn round(
        &self,
        etcd: Option<&etcd::EtcdCluster>,
    ) -> ((Run, Option<f64>), (Run, Option<f64>), ServerTime) {
        let (c, duration) = (self.concurrency, self.duration);
        let t0 = ServerTime::now(etcd);
        let writes = lgsp_writes(self.clients, self.revisions, c, duration).await;
        let t1 = ServerTime::now(etcd);
        print_run(&writes, self.baseline);
        let reads = lgsp_reads(self.clients, c, duration).await;
        let t2 = ServerTime::now(etcd);
        print_run(&reads, self.baseline);
        let cas = t1.lgsp_per_op(&t0, &writes);
        let read = t2.lgsp_per_op(&t1, &reads);
        ((writes, cas), (reads, read), t2)
    }
}

/// `spent` per operation of `run` (failed ones included: they cost too),
/// in microseconds.
fn per_op(spent: Duration, run: &Run) -> Option<f64> {
    let ops = run.ok + run.errors;
    (ops > 0).then(|| spent.as_secs_f64() * 1e6 / ops as f64)
}

/// A CPU time per operation for a line of the report.
fn micros(per_op: Option<f64>) -> String {
    per_op.map_or_else(|| "?".to_owned(), |us| format!("{us:.0} µs"))
}

/// `lgsp bench registry`: a cluster of `servers` on loopback in this
/// process; conditional writes and linearizable reads of 256-byte values at
/// each concurrency, next to a bare mTLS gRPC round trip to the same server.
/// With `against_etcd`, a three-member etcd started from the system's
/// `etcd` runs the same load, interleaved with lgsp's in three rounds;
/// fails at once when etcd is not installed.
pub(crate) async fn registry(
    servers: u64,
    concurrency: &[usize],
    duration: Duration,
    against_etcd: bool,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let etcd_cluster = if against_etcd {
        Some(etcd::EtcdCluster::start(&tmp.path().join("etcd")).await?)
    } else {
        None
    };
    let mut ca =
        CertificateAuthority::init(&tmp.path().join("ca"), "bench.lgsp.local", "bench CA", 1)?;
    let admin = leaf(&mut ca, Role::Admin, "bench")?;
    // On a runtime of its own, so that its CPU time is told apart from the
    // clients'.
    let mut on = Servers::default();
    let cluster = start_registry_on(&mut on, &mut ca, tmp.path(), servers).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await?;
    let leader_addr = cluster.configs[&leader].listen.to_string();

    println!(
        "lgsp bench registry: {servers} servers on 127.0.0.1, mutual TLS, fdatasync before every acknowledgement,"
    );
    println!(
        "256-byte values, {} s per run, clients talk to the leader (server {leader}); one HTTP/2 connection per 8 clients.",
        duration.as_secs()
    );
    println!("baseline: a bare mTLS gRPC round trip (WhoAmI) to the same server, same clients.");
    let etcd_leader = match &etcd_cluster {
        Some(e) => {
            let url = e.leader(Duration::from_secs(15)).await?;
            println!(
                "against {}: 3 members on 127.0.0.1, plaintext, its own fdatasync; clients talk to its leader ({url}),",
                e.version
            );
            println!(
                "same clients, keys and values; lgsp and etcd runs interleaved, three rounds; vs base is against lgsp's baseline."
            );
            Some(url)
        }
        None => None,
    };
    println!();
    print_header();
    let etcd_revisions: Arc<Vec<AtomicI64>> = Arc::new(
        (0..concurrency.iter().copied().max().unwrap_or(0))
            .map(|_| AtomicI64::new(0))
            .collect(),
    );
    let revisions: Arc<Vec<AtomicU64>> = Arc::new(
        (0..concurrency.iter().copied().max().unwrap_or(0))
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    for &c in concurrency {
        let connections = c.div_ceil(8).max(1);
        let clients: Vec<RegistryClient> = (0..connections)
            .map(|_| RegistryClient::new(std::slice::from_ref(&leader_addr), &admin))
            .collect::<Result<_, _>>()?;
        let endpoint = lgsp_certs::tls::client_endpoint(&leader_addr, &admin, None)?;
        let channels = Arc::new(connect(&endpoint, connections).await?);
        let base = measure("baseline: mTLS round trip", c, duration, move |i, _| {
            let mut client = IdentityServiceClient::new(channels[i % channels.len()].clone());
            async move {
                client.who_am_i(lgsp_proto::WhoAmIRequest {}).await?;
                Ok(())
            }
        })
        .await;
        let baseline = base.per_second();
        print_run(&base, baseline);
        let clients = Arc::new(clients);

        let lgsp = LgspLoad {
            clients: &clients,
            revisions: &revisions,
            concurrency: c,
            duration,
            baseline,
        };
        let Some(url) = &etcd_leader else {
            let (writes, reads, _) = lgsp.round(None).await;
            println!(
                "  CPU of the registry's {servers} servers together per operation (not the clients'): CAS {}, read {}",
                micros(writes.1),
                micros(reads.1),
            );
            continue;
        };
        let load = EtcdLoad {
            clients: Arc::new(etcd::connect(url, connections).await?),
            revisions: etcd_revisions.clone(),
        };
        let mut rounds = Vec::new();
        let mut cpu = Vec::new();
        let etcd = etcd_cluster.as_ref();
        for _ in 0..3 {
            let ((writes, cas), (reads, read), t2) = lgsp.round(etcd).await;
            let etcd_puts = load.puts(c, duration).await;
            let t3 = ServerTime::now(etcd);
            print_run(&etcd_puts, baseline);
            let etcd_writes = load.compare_and_sets(c, duration).await;
            let t4 = ServerTime::now(etcd);
            print_run(&etcd_writes, baseline);
            let etcd_reads = load.reads(c, duration).await;
            let t5 = ServerTime::now(etcd);
            print_run(&etcd_reads, baseline);
            cpu.push([
                cas,
                read,
                t3.etcd_per_op(&t2, &etcd_puts),
                t4.etcd_per_op(&t3, &etcd_writes),
                t5.etcd_per_op(&t4, &etcd_reads),
            ]);
            rounds.push([writes, reads, etcd_puts, etcd_writes, etcd_reads]);
        }
        println!();
        println!("lgsp / etcd at {c} clients, round by round:");
        for (r, [writes, reads, puts, txns, etcd_reads]) in rounds.iter().enumerate() {
            println!(
                "  round {}: CAS writes/s {:.2}x etcd's txn, {:.2}x its put; p99 {:.1} ms vs {:.1} (txn), {:.1} (put); linearizable reads/s {:.2}x",
                r + 1,
                writes.per_second() / txns.per_second(),
                writes.per_second() / puts.per_second(),
                writes.percentile_ms(99.0),
                txns.percentile_ms(99.0),
                puts.percentile_ms(99.0),
                reads.per_second() / etcd_reads.per_second(),
            );
        }
        println!();
        println!(
            "CPU per operation of the servers alone (lgsp's {servers} registry servers together, etcd's 3 members"
        );
        println!(
            "together; not the clients'), round by round: what each cluster costs the machine per operation,"
        );
        println!("whatever the share of this machine's cores it got:");
        for (r, [cas, read, put, txn, etcd_read]) in cpu.iter().enumerate() {
            let ratio = |a: &Option<f64>, b: &Option<f64>| match (a, b) {
                (Some(a), Some(b)) if *b > 0.0 => format!("{:.2}x", a / b),
                _ => "?".to_owned(),
            };
            println!(
                "  round {}: CAS {} against etcd's put {} ({}) and txn {}; read {} against {} ({})",
                r + 1,
                micros(*cas),
                micros(*put),
                ratio(cas, put),
                micros(*txn),
                micros(*read),
                micros(*etcd_read),
                ratio(read, etcd_read),
            );
        }
        println!();
    }
    if let Some(e) = etcd_cluster {
        e.stop().await;
    }
    on.run(REGISTRY, cluster.shutdown()).await??;
    on.shutdown();
    Ok(())
}

/// `n` HTTP/2 connections made with `endpoint`, one per channel.
async fn connect(endpoint: &Endpoint, n: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", endpoint.uri()))?;
        channels.push(channel);
    }
    Ok(channels)
}

const AGENCY_A: &str = "000.00.12.H62";
const AGENCY_B: &str = "000.00.13.H62";

/// Builds the envelope of call number `n` of client task `i`.
type MakeEnvelope = Arc<dyn Fn(usize, u64) -> Envelope + Send + Sync>;

/// The raw baseline's server: hands each call's payload back, nothing else
/// (no authorization, no sharing log, no metrics).
#[derive(Clone, Copy, Debug)]
struct Echo;

#[tonic::async_trait]
impl DataExchange for Echo {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        let env = request.into_inner();
        Ok(Response::new(CallResponse {
            payload: env.payload,
            request_id: env.request_id,
            metadata: HashMap::new(),
        }))
    }

    type QueryStream = futures::stream::Empty<Result<QueryPage, Status>>;

    async fn query(
        &self,
        _request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        Err(Status::unimplemented("the bench echo answers Call only"))
    }
}

/// Serves [`Echo`] behind mutual TLS on 127.0.0.1 until `stop` changes;
/// returns its address and its task.
async fn start_grpc_echo(
    creds: Credentials,
    max_message: usize,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let tls = ServerTls::new(creds)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tls.incoming(listener);
    let task = spawn_exchange_server(Echo, max_message, incoming, stop, "echo server");
    Ok((addr, task))
}

/// Serves `service` on `incoming` until `stop` changes.
fn spawn_exchange_server<T, I, IO, IE>(
    service: T,
    max_message: usize,
    incoming: I,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()>
where
    T: DataExchange,
    I: futures::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = DataExchangeServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.changed().await;
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "the bench {what} failed");
        }
    })
}

/// The reference for the two-hop path: a bare tonic server that hands each
/// call on to the raw echo over mTLS and its answer back, nothing else. What
/// a second gRPC hop costs on this machine before any node work.
#[derive(Clone, Debug)]
struct Forward {
    upstream: DataExchangeClient<Channel>,
}

#[tonic::async_trait]
impl DataExchange for Forward {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        self.upstream.clone().call(request.into_inner()).await
    }

    type QueryStream = futures::stream::Empty<Result<QueryPage, Status>>;

    async fn query(
        &self,
        _request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        Err(Status::unimplemented(
            "the bench forwarder answers Call only",
        ))
    }
}

/// Serves [`Forward`] in plain HTTP/2 on 127.0.0.1 (as a node's consumer
/// listener is), calling `upstream`, until `stop` changes.
async fn start_forwarder(
    upstream: Endpoint,
    max_message: usize,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Set up as the node's consumer listener is (server.rs).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let upstream = DataExchangeClient::new(upstream.connect_lazy())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let task = spawn_exchange_server(
        Forward { upstream },
        max_message,
        incoming,
        stop,
        "forwarder",
    );
    Ok((addr, task))
}

/// An HTTP/1.1 backend on 127.0.0.1 that answers every request with its
/// body, until `stop` changes; returns its address and its task.
async fn start_http_echo(stop: watch::Receiver<bool>) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(backend::serve(
        listener,
        |call: HttpCall| async move { call.body },
        stop,
    )?)
}

/// How many records the bench dataset holds: enough to spread the keys,
/// at most about 64 MiB.
fn dataset_rows(payload: usize) -> usize {
    ((64 << 20) / payload.max(1)).clamp(1, 1000)
}

/// The key of record `i` of the bench dataset (all keys the same length).
fn dataset_key(i: usize) -> String {
    format!("k{i:08}")
}

/// Writes `rows` JSON Lines records of about `payload` bytes each and
/// imports them as dataset `service` of the node whose data is `data_dir`,
/// as `lgsp dataset import` does.
fn import_dataset(data_dir: &Path, service: &str, rows: usize, payload: usize) -> Result<()> {
    use std::io::Write as _;
    let padding = format!(r#"{{"key":"{}","value":""}}"#, dataset_key(0)).len();
    let value = "x".repeat(payload.saturating_sub(padding));
    std::fs::create_dir_all(data_dir)?;
    let file = data_dir.join(format!("{service}.jsonl"));
    // Written as a stream: the stream bench makes files of a gigabyte.
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
    for i in 0..rows {
        writeln!(out, r#"{{"key":"{}","value":"{value}"}}"#, dataset_key(i))?;
    }
    out.flush()?;
    drop(out);
    // The bench's nodes take messages as large as its records need.
    lgsp_dataset::DatasetStore::new(&data_dir.join("datasets"))
        .with_max_record_bytes(usize::MAX)
        .import(service, &file, "key", None, &|_, _| {})
        .with_context(|| format!("importing the bench dataset {service}"))?;
    std::fs::remove_file(&file)?;
    Ok(())
}

/// The configuration of a bench node in `dir`, with listeners on free
/// ports and limits far above what the bench can reach.
fn node_config(
    dir: &Path,
    agency: &str,
    name: &str,
    registry: &[String],
    tls: TlsFiles,
    services: Vec<ServiceConfig>,
    max_message: usize,
) -> NodeConfig {
    let limits = LimitsConfig {
        max_concurrent_per_consumer: 1 << 20,
        rate_per_consumer: 100_000_000,
        max_message_bytes: max_message,
        ..LimitsConfig::default()
    };
    let mut config =
        crate::loopback::node_config(dir, agency, name, registry, tls, services, limits);
    // Every hub and node of the bench verifies batches.
    config.consumer.batch_obo_signatures = Some(true);
    config
}

/// Publishes service `name` of agency A, served by `node`, and grants it to
/// agency B.
async fn publish_and_grant(
    catalog: &Catalog,
    name: &str,
    kind: ServiceKind,
    node: &str,
) -> Result<()> {
    let id = ServiceId::new(AgencyCode::new(AGENCY_A)?, name)?;
    catalog
        .publish(Publication::new(id.clone(), kind, node, "lgsp bench"))
        .await
        .with_context(|| format!("publishing {id}"))?;
    let grant = GrantKey {
        service: id.clone(),
        consumer: AgencyCode::new(AGENCY_B)?,
    };
    catalog
        .grant(&grant, Validity::Open, "lgsp bench")
        .await
        .with_context(|| format!("granting {id} to {AGENCY_B}"))?;
    Ok(())
}

/// Calls until one call succeeds, at most 15 s: the nodes learn the
/// catalog from the registry's watch. Fails with the last refusal.
async fn wait_until_callable(endpoint: &Endpoint, envelope: Envelope, path: &str) -> Result<()> {
    wait::until_served(
        endpoint.connect().await?,
        &envelope,
        Duration::from_secs(15),
    )
    .await
    .with_context(|| format!("calling through {path}"))
}

/// Runs `Call` from `clients` tasks spread over `channels`.
async fn measure_calls(
    label: &str,
    clients: usize,
    duration: Duration,
    channels: Arc<Vec<Channel>>,
    max_message: usize,
    envelope: MakeEnvelope,
) -> Run {
    measure(label, clients, duration, move |i, n| {
        let mut client = DataExchangeClient::new(channels[i % channels.len()].clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let envelope = envelope(i, n);
        async move {
            client.call(envelope).await?;
            Ok(())
        }
    })
    .await
}

/// A size in bytes as people write it: `100 B`, `10 KiB`, `1.5 MiB`.
fn human_size(bytes: usize) -> String {
    let (value, unit) = match bytes {
        b if b >= 1 << 20 => (b as f64 / f64::from(1 << 20), "MiB"),
        b if b >= 1 << 10 => (b as f64 / f64::from(1 << 10), "KiB"),
        b => return format!("{b} B"),
    };
    format!("{value:.1}").trim_end_matches(".0").to_owned() + " " + unit
}

/// What the goal of issue 4 says of one path at 64 in flight.
fn verdict(run: &Run, baseline: f64) -> String {
    let ratio = run.per_second() / baseline;
    let p99 = run.percentile_ms(99.0);
    let met = ratio >= 0.5 && p99 < 10.0 && run.errors == 0;
    format!(
        "{ratio:.2} of raw calls/s, p99 {p99:.2} ms, {} errors: {}",
        run.errors,
        if met { "met" } else { "NOT met" }
    )
}

/// A small province in this process for `lgsp bench exchange`: a
/// one-server registry; agency A's node serving `A/echo` (an HTTP backend)
/// and `A/records` (a dataset), both granted to agency B; agency B's node;
/// the HTTP backend; and the raw echo server of the baseline.
struct Province {
    registry: RegistryCluster,
    /// The provincial admin's registry client.
    catalog: RegistryClient,
    node_a: NodeServer,
    node_b: NodeServer,
    /// The raw mTLS echo server.
    echo: SocketAddr,
    /// The bare forwarder to the echo server (plain HTTP/2 in, mTLS out).
    forward: SocketAddr,
    /// Stops the echo server and the HTTP backend.
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Records in `A/records`.
    rows: usize,
    max_message: usize,
    /// Agency B's application: a node certificate of B, for calling A's
    /// provider listener itself as B's node would (and the raw echo).
    app: Credentials,
    /// The province's CA, for the hub of `--hub`.
    ca: CertificateAuthority,
    /// The runtimes the servers run on, the federation's too.
    servers: Servers,
    /// The CA, the registry's and the nodes' files; removed on drop.
    _dir: tempfile::TempDir,
}

impl Province {
    /// Starts everything, with `A/records` holding records of about
    /// `payload` bytes; returns once both services answer through both
    /// nodes (at most 15 s after the nodes start).
    async fn start(payload: usize) -> Result<Self> {
        Self::start_with_rows(payload, dataset_rows(payload)).await
    }

    /// As [`Self::start`], with `rows` records in `A/records`.
    async fn start_with_rows(payload: usize, rows: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut ca =
            CertificateAuthority::init(&dir.path().join("ca"), "bench.lgsp.local", "bench CA", 1)?;
        let admin = leaf(&mut ca, Role::Admin, "bench")?;
        let mut servers = Servers::default();
        let registry =
            start_registry_on(&mut servers, &mut ca, &dir.path().join("registry"), 1).await?;
        let registry_addrs = registry.client_addrs();
        let catalog = Catalog::new(RegistryClient::new(&registry_addrs, &admin)?);
        for (code, name) in [
            (AGENCY_A, "bench provider agency"),
            (AGENCY_B, "bench consumer agency"),
        ] {
            catalog
                .register_agency(&AgencyCode::new(code)?, name, None)
                .await
                .with_context(|| format!("registering agency {code}"))?;
        }

        let (stop, stop_rx) = watch::channel(false);
        let max_message = (4 << 20).max(2 * payload + (64 << 10));
        let (backend, backend_task) = start_http_echo(stop_rx.clone()).await?;
        let echo_creds = agency_leaf(&mut ca, AGENCY_A, Role::Node, "bench-echo")?;
        let (echo, echo_task) = start_grpc_echo(echo_creds, max_message, stop_rx).await?;

        let dir_a = dir.path().join("node-a");
        let data_a = dir_a.join("data");
        tokio::task::spawn_blocking(move || import_dataset(&data_a, "records", rows, payload))
            .await??;
        let services = vec![
            ServiceConfig {
                name: "echo".to_owned(),
                description: "HTTP/1.1 echo backend".to_owned(),
                backend: Backend::Http {
                    url: format!("http://{backend}/{{op}}"),
                    method: HttpMethod::Post,
                    timeout: DEFAULT_BACKEND_TIMEOUT,
                },
            },
            ServiceConfig {
                name: "records".to_owned(),
                description: "bench dataset".to_owned(),
                backend: Backend::Dataset,
            },
        ];
        let creds_a = agency_leaf(&mut ca, AGENCY_A, Role::Node, "node-a")?;
        let config_a = node_config(
            &dir_a,
            AGENCY_A,
            "node-a",
            &registry_addrs,
            TlsFiles::write(&dir_a.join("tls"), &creds_a)?,
            services,
            max_message,
        );
        let node_a = servers
            .run(NODE_A, NodeServer::start(config_a))
            .await?
            .context("starting node A")?;
        let dir_b = dir.path().join("node-b");
        let creds_b = agency_leaf(&mut ca, AGENCY_B, Role::Node, "node-b")?;
        let config_b = node_config(
            &dir_b,
            AGENCY_B,
            "node-b",
            &registry_addrs,
            TlsFiles::write(&dir_b.join("tls"), &creds_b)?,
            Vec::new(),
            max_message,
        );
        let node_b = servers
            .run(NODE_B, NodeServer::start(config_b))
            .await?
            .context("starting node B")?;
        wait::node_registered(
            catalog.client(),
            AGENCY_A,
            "node-a",
            Duration::from_secs(15),
        )
        .await?;
        publish_and_grant(&catalog, "echo", ServiceKind::Http, "node-a").await?;
        publish_and_grant(&catalog, "records", ServiceKind::Dataset, "node-a").await?;

        let app = agency_leaf(&mut ca, AGENCY_B, Role::Node, "bench-app")?;
        let to_echo = lgsp_certs::tls::client_endpoint(&echo.to_string(), &app, None)?;
        let (forward, forward_task) =
            start_forwarder(to_echo, max_message, stop.subscribe()).await?;
        let province = Self {
            registry,
            catalog: catalog.client().clone(),
            node_a,
            node_b,
            echo,
            forward,
            stop,
            tasks: vec![backend_task, echo_task, forward_task],
            rows,
            max_message,
            app,
            ca,
            servers,
            _dir: dir,
        };
        let (direct, via_b) = (province.direct()?, province.via_b()?);
        for (endpoint, path) in [(&direct, "node A"), (&via_b, "node B")] {
            wait_until_callable(endpoint, province.echo_call(0)(0, 0), path).await?;
            wait_until_callable(endpoint, province.get_call()(0, 0), path).await?;
        }
        Ok(province)
    }

    /// The raw echo server, reached with the application's certificate.
    fn raw(&self) -> Result<Endpoint> {
        Ok(lgsp_certs::tls::client_endpoint(
            &self.echo.to_string(),
            &self.app,
            None,
        )?)
    }

    /// The bare forwarder (plain HTTP/2, as a consumer listener).
    fn forwarder(&self) -> Result<Endpoint> {
        Ok(Endpoint::from_shared(format!("http://{}", self.forward))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true))
    }

    /// Node A's provider listener, reached with the application's
    /// certificate (mTLS).
    fn direct(&self) -> Result<Endpoint> {
        Ok(lgsp_certs::tls::client_endpoint(
            &self.node_a.provider_addr.to_string(),
            &self.app,
            None,
        )?)
    }

    /// Node B's consumer listener (plain HTTP/2, as applications use it).
    fn via_b(&self) -> Result<Endpoint> {
        Ok(
            Endpoint::from_shared(format!("http://{}", self.node_b.consumer_addr))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true),
        )
    }

    /// Calls of `A/echo` with `payload` bytes each.
    fn echo_call(&self, payload: usize) -> MakeEnvelope {
        let body = vec![b'x'; payload];
        Arc::new(move |_, _| Envelope {
            service_id: format!("{AGENCY_A}/echo"),
            operation: "echo".to_owned(),
            payload: body.clone(),
            ..Default::default()
        })
    }

    /// `get` calls of `A/records`; each client walks the keys from its
    /// own starting point.
    fn get_call(&self) -> MakeEnvelope {
        let rows = self.rows;
        Arc::new(move |i, n| Envelope {
            service_id: format!("{AGENCY_A}/records"),
            operation: "get".to_owned(),
            parameters: HashMap::from([(
                "key".to_owned(),
                dataset_key((i * 37 + n as usize) % rows),
            )]),
            ..Default::default()
        })
    }

    /// Stops everything; returns the number of exchanges each node's
    /// sharing log holds (A's, B's).
    async fn shutdown(self) -> Result<(usize, usize)> {
        let mut servers = self.servers;
        let logs = [
            self.node_a.ctx.log.path().to_owned(),
            self.node_b.ctx.log.path().to_owned(),
        ];
        servers.run(NODE_B, self.node_b.shutdown()).await?;
        servers.run(NODE_A, self.node_a.shutdown()).await?;
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        // The registry's graceful shutdown waits for its clients' connections.
        drop(self.catalog);
        servers.run(REGISTRY, self.registry.shutdown()).await??;
        servers.shutdown();
        Ok((log_entries(&logs[0])?, log_entries(&logs[1])?))
    }
}

/// A second lgsp instance (the national platform: its own CA, registry,
/// hub and a consumer node C) federated with the bench province through a
/// provincial hub, for `lgsp bench exchange --hub`: C's application calls
/// `A/records` through node C, hub Q, hub P and node A.
struct Federation {
    hub_p: lgsp_hub::HubServer,
    /// The REST system hub P carries `PROVINCE/rest-records` to.
    _rest: crate::json_server::JsonServer,
    hub_q: lgsp_hub::HubServer,
    node_c: NodeServer,
    registry_q: RegistryCluster,
    _dir: tempfile::TempDir,
}

/// One path through hubs, as `lgsp bench exchange --hub` measures it.
struct HubPath {
    label: &'static str,
    endpoint: Endpoint,
    envelope: MakeEnvelope,
    /// Hub hops on the path: the goal is each costing < 30% of node B → A.
    hops: i32,
    /// The servers on the path, whose CPU per call the bench reports.
    servers: &'static [&'static str],
}

/// The national instance's trust domain in the bench.
const NATIONAL_DOMAIN: &str = "ndxp.bench.local";
/// The national consumer agency.
const AGENCY_C: &str = "000.00.07.G01";

impl Federation {
    async fn start(p: &mut Province, payload: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut ca_q = CertificateAuthority::init(
            &dir.path().join("ca"),
            NATIONAL_DOMAIN,
            "bench national CA",
            1,
        )?;
        let registry_q =
            start_registry_on(&mut p.servers, &mut ca_q, &dir.path().join("registry"), 1).await?;
        let addrs_q = registry_q.client_addrs();
        let admin_q = Catalog::new(RegistryClient::new(
            &addrs_q,
            &agency_leaf(&mut ca_q, PROVINCE, Role::Admin, "bench")?,
        )?);
        let admin_p = Catalog::new(p.catalog.clone());
        for (catalog, code) in [
            (&admin_p, PROVINCE),
            (&admin_q, PROVINCE),
            (&admin_q, AGENCY_C),
        ] {
            catalog
                .register_agency(&AgencyCode::new(code)?, "bench agency", None)
                .await
                .with_context(|| format!("registering agency {code}"))?;
        }
        // Each hub must know the other's outward address before it starts.
        let (out_p, out_q) = (
            lgsp_province::net::free_addr()?,
            lgsp_province::net::free_addr()?,
        );
        let trust_p = p.ca.trust_domain().to_owned();
        for (catalog, name, domain, ca_pem, endpoint) in [
            (
                &admin_p,
                "ndxp",
                NATIONAL_DOMAIN,
                ca_q.cert_pem().to_owned(),
                out_q,
            ),
            (
                &admin_q,
                "province",
                trust_p.as_str(),
                p.ca.cert_pem().to_owned(),
                out_p,
            ),
        ] {
            catalog
                .add_peer(lgsp_proto::FederationPeer {
                    name: name.into(),
                    trust_domain: domain.into(),
                    ca_pem,
                    hub_endpoint: endpoint.to_string(),
                    ..Default::default()
                })
                .await
                .context("adding a federation peer")?;
        }
        let records: ServiceId = format!("{AGENCY_A}/records").parse()?;
        admin_p
            .export(&records, "ndxp")
            .await
            .context("exporting A/records")?;
        admin_q
            .import("province", &records)
            .await
            .context("importing A/records")?;
        admin_p
            .register_foreign_agency(
                &AgencyCode::new(AGENCY_C)?,
                "bench national consumer",
                None,
                NATIONAL_DOMAIN,
            )
            .await
            .context("registering the national consumer")?;
        admin_p
            .grant(
                &GrantKey {
                    service: records.clone(),
                    consumer: AgencyCode::new(AGENCY_C)?,
                },
                Validity::Open,
                "lgsp bench",
            )
            .await
            .context("granting A/records to the national consumer")?;

        let addrs_p = p.registry.client_addrs();
        let hub_dir = dir.path().join("hub-p");
        let hub_creds = agency_leaf(&mut p.ca, PROVINCE, Role::Hub, "hub")?;
        let config = node_config(
            &hub_dir,
            PROVINCE,
            "hub",
            &addrs_p,
            TlsFiles::write(&hub_dir.join("tls"), &hub_creds)?,
            Vec::new(),
            p.max_message,
        );
        let secrets = dir.path().join("hub-p-secrets");
        let options = lgsp_hub::HubOptions {
            rest_secrets: Some(secrets.clone()),
            ..lgsp_hub::HubOptions::new(out_p)
        };
        let hub_p = p
            .servers
            .run(HUB_P, lgsp_hub::HubServer::start_with(config, options))
            .await?
            .context("starting hub P")?;
        let rest = rest_system(&mut p.servers, &admin_p, &secrets, payload).await?;
        let hub_dir = dir.path().join("hub-q");
        let hub_creds = agency_leaf(&mut ca_q, PROVINCE, Role::Hub, "hub")?;
        let config = node_config(
            &hub_dir,
            PROVINCE,
            "hub",
            &addrs_q,
            TlsFiles::write(&hub_dir.join("tls"), &hub_creds)?,
            Vec::new(),
            p.max_message,
        );
        let hub_q = p
            .servers
            .run(HUB_Q, lgsp_hub::HubServer::start(config, out_q))
            .await?
            .context("starting hub Q")?;
        let c_dir = dir.path().join("node-c");
        let creds_c = agency_leaf(&mut ca_q, AGENCY_C, Role::Node, "node-c")?;
        let config = node_config(
            &c_dir,
            AGENCY_C,
            "node-c",
            &addrs_q,
            TlsFiles::write(&c_dir.join("tls"), &creds_c)?,
            Vec::new(),
            p.max_message,
        );
        let node_c = p
            .servers
            .run(NODE_C, NodeServer::start(config))
            .await?
            .context("starting node C")?;
        let federation = Self {
            hub_p,
            _rest: rest,
            hub_q,
            node_c,
            registry_q,
            _dir: dir,
        };
        wait::until_served(
            federation.via_c()?.connect().await?,
            &p.get_call()(0, 0),
            Duration::from_secs(20),
        )
        .await
        .context("calling A/records from the national node C through both hubs")?;
        wait::until_served(
            p.via_b()?.connect().await?,
            &rest_call(p.rows)(0, 0),
            Duration::from_secs(20),
        )
        .await
        .context("calling the REST system from node B through hub P")?;
        Ok(federation)
    }

    /// The paths through the hubs the bench measures, each next to node B
    /// → A: a label, where the application calls, what it sends, and how
    /// many hub hops the path has.
    fn paths(&self, p: &Province) -> Result<Vec<HubPath>> {
        Ok(vec![
            HubPath {
                label: "app → C → hub Q → hub P → A, get",
                endpoint: self.via_c()?,
                envelope: p.get_call(),
                hops: 2,
                servers: &[NODE_C, HUB_Q, HUB_P, NODE_A],
            },
            HubPath {
                label: "app → B → hub P → REST system, get",
                endpoint: p.via_b()?,
                envelope: rest_call(p.rows),
                hops: 1,
                servers: &[NODE_B, HUB_P, REST],
            },
        ])
    }

    /// Node C's consumer listener, where the national application calls.
    fn via_c(&self) -> Result<Endpoint> {
        Ok(
            Endpoint::from_shared(format!("http://{}", self.node_c.consumer_addr))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true),
        )
    }

    async fn shutdown(self, servers: &mut Servers) -> Result<()> {
        servers.run(NODE_C, self.node_c.shutdown()).await?;
        servers.run(HUB_Q, self.hub_q.shutdown()).await?;
        servers.run(HUB_P, self.hub_p.shutdown()).await?;
        servers.run(REGISTRY, self.registry_q.shutdown()).await??;
        Ok(())
    }
}

/// The REST system of the bench's `--hub` path, its name in the catalog.
const REST_SYSTEM: &str = "bench-rest";
/// The province service hub P carries to it.
const REST_SERVICE: &str = "rest-records";

/// Calls of `PROVINCE/rest-records`, which hub P carries to the REST system.
fn rest_call(rows: usize) -> MakeEnvelope {
    Arc::new(move |i, n| Envelope {
        service_id: format!("{PROVINCE}/{REST_SERVICE}"),
        operation: "get".to_owned(),
        parameters: HashMap::from([("key".to_owned(), dataset_key((i * 37 + n as usize) % rows))]),
        ..Default::default()
    })
}

/// Starts an HTTPS JSON system answering `GET /records/{key}` with a
/// record of about `payload` bytes (API key in `secrets`), and makes it
/// `PROVINCE/rest-records` behind hub P (running): the system record, the
/// service of the hub, its route and a grant to agency B.
async fn rest_system(
    servers: &mut Servers,
    admin: &Catalog,
    secrets: &Path,
    payload: usize,
) -> Result<crate::json_server::JsonServer> {
    use crate::json_server::{self, json};
    use lgsp_proto::{RestAuth, RestOperation, RestRoute, RestSystem};
    wait::node_registered(admin.client(), PROVINCE, "hub", Duration::from_secs(20)).await?;
    let api_key = json_server::random_key()?;
    json_server::write_api_key(secrets, REST_SYSTEM, &api_key)?;
    let filler = "x".repeat(payload.min(64 << 10));
    let handler: json_server::Handler = Arc::new(move |req| {
        let key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if key != api_key {
            return json(
                hyper::StatusCode::UNAUTHORIZED,
                &serde_json::json!({"message": "wrong API key"}),
            );
        }
        let id = req.uri().path().rsplit('/').next().unwrap_or_default();
        json(
            hyper::StatusCode::OK,
            &serde_json::json!({"key": id, "value": filler}),
        )
    });
    let server = servers
        .run(REST, json_server::start("bench REST system CA", handler))
        .await??;
    let failed = |what: &'static str| move |s: tonic::Status| anyhow!("{what}: {}", s.message());
    admin
        .client()
        .put(
            lgsp_proto::catalog_record::Value::RestSystem(RestSystem {
                name: REST_SYSTEM.into(),
                base_url: format!("https://{}", server.addr),
                ca_pem: server.ca_pem.clone(),
                auth: RestAuth::ApiKey as i32,
                api_key_header: "X-API-Key".into(),
                timeout_ms: 10_000,
                max_in_flight: 100_000,
                rate_per_second: 1_000_000,
                ..Default::default()
            }),
            0,
        )
        .await
        .map_err(failed("adding the REST system"))?;
    let id: ServiceId = format!("{PROVINCE}/{REST_SERVICE}").parse()?;
    admin
        .publish(Publication::new(
            id.clone(),
            ServiceKind::Http,
            "hub",
            "bench REST system behind hub P",
        ))
        .await
        .map_err(failed("publishing the REST service"))?;
    admin
        .client()
        .put(
            lgsp_proto::catalog_record::Value::RestRoute(RestRoute {
                service_id: id.to_string(),
                system: REST_SYSTEM.into(),
                operations: vec![RestOperation {
                    name: "get".into(),
                    method: "GET".into(),
                    path: "/records/{key}".into(),
                    query: Vec::new(),
                }],
                ..Default::default()
            }),
            0,
        )
        .await
        .map_err(failed("routing the REST service"))?;
    admin
        .grant(
            &GrantKey {
                service: id,
                consumer: AgencyCode::new(AGENCY_B)?,
            },
            Validity::Open,
            "lgsp bench",
        )
        .await
        .map_err(failed("granting the REST service to B"))?;
    Ok(server)
}

/// `lgsp bench exchange`: a registry and two agency nodes on loopback in
/// this process ([`Province`]); agency B's application calls agency A's
/// services directly and through B's node, `payload` bytes a call, at each
/// concurrency, next to a raw tonic mTLS echo of the same envelopes. Fails
/// when the setup fails (a node does not start, a service never becomes
/// callable).
pub(crate) async fn exchange(
    payload: usize,
    concurrency: &[usize],
    duration: Duration,
    hub: bool,
) -> Result<()> {
    let mut province = Province::start(payload).await?;
    let federation = if hub {
        Some(Federation::start(&mut province, payload).await?)
    } else {
        None
    };
    let hub_paths = match &federation {
        Some(f) => f.paths(&province)?,
        None => Vec::new(),
    };
    let (raw, direct, via_b) = (province.raw()?, province.direct()?, province.via_b()?);
    let forwarder = province.forwarder()?;
    let (echo, get) = (province.echo_call(payload), province.get_call());
    let max_message = province.max_message;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "lgsp bench exchange: {} payloads, {} s per run; everything in this one process on 127.0.0.1 ({cores} cores shared by all).",
        human_size(payload),
        duration.as_secs()
    );
    println!(
        "Agency A's node serves A/echo (fronting an HTTP/1.1 echo backend in this process) and A/records (a dataset of {}",
        province.rows
    );
    println!(
        "records of about {}, operation \"get\"); the dataset path has no backend hop. Both nodes keep authorization,",
        human_size(payload)
    );
    println!(
        "the hash-chained sharing log, per-consumer limits (raised far above the load) and metrics on, as in production."
    );
    println!(
        "  baseline:          a raw tonic mTLS echo of the same Envelope (no node, no authorization, no log)."
    );
    println!(
        "  app → node A:      B's application calls A's provider listener with a B node certificate (mTLS)."
    );
    println!(
        "  app → node B → A:  B's application calls B's consumer listener (plain HTTP/2); B carries the call to A"
    );
    println!(
        "                     on its node link (mTLS; one HTTP/2 stream carries all of B's calls to A as messages)."
    );
    println!(
        "  reference:         a bare tonic server in plain HTTP/2 that forwards each echo to the raw echo over mTLS:"
    );
    println!(
        "                     what a second hop costs as a unary gRPC call (its own HTTP/2 stream per call)."
    );
    if hub {
        println!(
            "  app → C → hubs → A: with --hub, a second lgsp instance (its own CA and registry) whose agency C's application"
        );
        println!(
            "                     calls A/records through node C, C's hub and the province's hub (mTLS on each hop, a signed"
        );
        println!(
            "                     on-behalf-of record verified by the province's hub and node A, every hop logged)."
        );
        println!(
            "  app → B → hub P → REST system: B's application calls a province service that the province's hub carries to"
        );
        println!(
            "                     an HTTPS JSON system in this process (API key, kept-alive HTTPS connections, the hub's log)."
        );
    }
    println!("One HTTP/2 connection per 8 clients from the application on every path.");
    let rounds = duration.as_secs().clamp(1, 10);
    let slice = duration / rounds as u32;
    println!(
        "Each run is {rounds} slices of {:.1} s taken in turn with the other paths', so that the machine's speed",
        slice.as_secs_f64()
    );
    println!("changing during the bench changes every path alike.");
    println!();
    print_header();
    let mut at_64 = Vec::new();
    // The hub path next to node B → A, at every concurrency run.
    let mut hub_lines = Vec::new();
    // CPU per call on each server of the paths through hubs and node B → A.
    let mut cpu_lines = Vec::new();
    for &c in concurrency {
        let connections = c.div_ceil(8).max(1);
        let mut paths = vec![
            ("baseline: raw tonic mTLS echo", &raw, &echo),
            ("reference: bare forwarder → echo", &forwarder, &echo),
            ("app → node A, HTTP backend", &direct, &echo),
            ("app → node A, dataset get", &direct, &get),
            ("app → node B → A, HTTP backend", &via_b, &echo),
            (DIRECT_GET, &via_b, &get),
        ];
        for h in &hub_paths {
            paths.push((h.label, &h.endpoint, &h.envelope));
        }
        let mut channels = Vec::new();
        for (_, endpoint, _) in &paths {
            channels.push(Arc::new(connect(endpoint, connections).await?));
        }
        let mut runs: Vec<Option<Run>> = paths.iter().map(|_| None).collect();
        let mut cpu: Vec<BTreeMap<String, Duration>> =
            paths.iter().map(|_| BTreeMap::new()).collect();
        for _ in 0..rounds {
            for (k, (label, _, envelope)) in paths.iter().enumerate() {
                let before = server_cpu::Sample::now();
                let run = measure_calls(
                    label,
                    c,
                    slice,
                    channels[k].clone(),
                    max_message,
                    (*envelope).clone(),
                )
                .await;
                if let (Some(before), Some(after)) = (before, server_cpu::Sample::now()) {
                    server_cpu::add(&mut cpu[k], after.since(&before));
                }
                match &mut runs[k] {
                    Some(earlier) => earlier.absorb(run),
                    None => runs[k] = Some(run),
                }
            }
        }
        let runs: Vec<Run> = runs.into_iter().flatten().collect();
        let baseline = runs[0].per_second();
        for run in &runs {
            print_run(run, baseline);
            if c == 64 && run.label.contains("node B") {
                at_64.push(format!("  {}: {}", run.label, verdict(run, baseline)));
            }
        }
        let run_of = |label: &str| runs.iter().find(|r| r.label == label);
        let cost_of = |label: &str, on: &[&'static str]| {
            let k = paths.iter().position(|(l, _, _)| *l == label)?;
            let calls = runs.iter().find(|r| r.label == label)?.ok;
            PathCost::new(label, on, &cpu[k], calls)
        };
        if let Some(direct_get) = cost_of(DIRECT_GET, &[NODE_B, NODE_A]) {
            cpu_lines.push(format!("  at {c} in flight:"));
            cpu_lines.push(direct_get.line());
            for h in &hub_paths {
                if let Some(hubs) = cost_of(h.label, h.servers) {
                    cpu_lines.push(hubs.line());
                    cpu_lines.push(format!(
                        "      with a core per server: {:.2} of node B → A's calls/s (goal ≥ {:.2} for {} hub hop{})",
                        hubs.per_core() / direct_get.per_core(),
                        0.7f64.powi(h.hops),
                        h.hops,
                        if h.hops == 1 { "" } else { "s" },
                    ));
                }
            }
        }
        for h in &hub_paths {
            if let (Some(hubs), Some(direct_get)) = (run_of(h.label), run_of(DIRECT_GET)) {
                let ratio = hubs.per_second() / direct_get.per_second();
                let through = if h.hops == 2 {
                    "through both hubs"
                } else {
                    "through the hub"
                };
                hub_lines.push(format!(
                    "  at {c} in flight, {through} ({}): {ratio:.2} of node B → A's calls/s (p99 {:.2} ms); goal (issue 14): one hub hop costs < 30% (with {} ≥ {:.2}), p99 < 10 ms",
                    h.label,
                    hubs.percentile_ms(99.0),
                    if h.hops == 1 { "1 hub hop".to_owned() } else { format!("{} hub hops", h.hops) },
                    0.7f64.powi(h.hops)
                ));
            }
        }
    }
    for line in hub_lines {
        println!("{line}");
    }
    if hub {
        println!();
        if cpu_lines.is_empty() {
            println!(
                "CPU per server: not measured (needs Linux's per-thread scheduler statistics)."
            );
        } else {
            println!(
                "CPU per call on each server of a path (run time of the threads of each server's runtime; the application's"
            );
            println!(
                "clients and the registries are not on the paths), and the calls/s one core of the busiest server carries:"
            );
            println!(
                "what each path carries when every server has a core of its own, as in a deployment, not a share of this machine's."
            );
            for line in cpu_lines {
                println!("{line}");
            }
        }
    }
    println!();
    println!(
        "goal (issue 4): app → node B → node A at ≥ 50% of raw calls/s with p99 under 10 ms at 64 in flight."
    );
    if at_64.is_empty() {
        println!("  not measured in this run: add 64 to --concurrency.");
    }
    for line in at_64 {
        println!("{line}");
    }
    if let Some(federation) = federation {
        federation.shutdown(&mut province.servers).await?;
    }
    let (entries_a, entries_b) = province.shutdown().await?;
    println!("sharing log entries written: node A {entries_a}, node B {entries_b}.");
    Ok(())
}

/// The path every hub path is compared with.
const DIRECT_GET: &str = "app → node B → A, dataset get";

/// What one path's calls cost each server on it, in CPU time.
struct PathCost {
    label: String,
    /// CPU per call, server by server along the path.
    per_call: Vec<(&'static str, Duration)>,
}

impl PathCost {
    /// The cost of `calls` calls of `label` that took `cpu` on the servers,
    /// for the servers `on` the path; `None` when nothing was measured.
    fn new(
        label: &str,
        on: &[&'static str],
        cpu: &BTreeMap<String, Duration>,
        calls: usize,
    ) -> Option<Self> {
        if calls == 0 || cpu.is_empty() {
            return None;
        }
        let per_call = on
            .iter()
            .map(|s| {
                let spent = cpu.get(*s).copied().unwrap_or_default();
                (*s, spent / calls as u32)
            })
            .collect();
        Some(Self {
            label: label.to_owned(),
            per_call,
        })
    }

    /// The server that spends most per call, and how much.
    fn busiest(&self) -> (&'static str, Duration) {
        self.per_call
            .iter()
            .copied()
            .max_by_key(|(_, d)| *d)
            .unwrap_or(("none", Duration::ZERO))
    }

    /// Calls/s the path carries with a core per server: what one core of
    /// its busiest server carries.
    fn per_core(&self) -> f64 {
        1.0 / self.busiest().1.as_secs_f64().max(1e-9)
    }

    fn line(&self) -> String {
        let costs: Vec<String> = self
            .per_call
            .iter()
            .map(|(s, d)| format!("{s} {:.0} µs", d.as_secs_f64() * 1e6))
            .collect();
        let (busiest, _) = self.busiest();
        format!(
            "    {}: {}; busiest {busiest}: {:.0} calls/s a core",
            self.label,
            costs.join(", "),
            self.per_core()
        )
    }
}

/// The exchanges (not seals) in the sharing log file at `path`.
fn log_entries(path: &Path) -> Result<usize> {
    let planned = lgsp_sharing_log::plan_export(path, &lgsp_sharing_log::TimeRange::default())
        .with_context(|| format!("cannot read the sharing log {}", path.display()))?;
    Ok(planned.entries as usize)
}

/// The resident memory of this process, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `lgsp bench stream`: a dataset of `total` bytes in records of `record`
/// bytes, queried whole by an application of agency B through both nodes,
/// page by page; reports the throughput and this process's memory before,
/// at its peak during, and after the stream. Flat memory means the peak
/// stays far below the dataset's size.
pub(crate) async fn stream(total: usize, record: usize) -> Result<()> {
    let rows = (total / record.max(1)).max(1);
    println!(
        "lgsp bench stream: {} in {rows} records of {}, imported into node A, then queried whole by B's application",
        human_size(total),
        human_size(record)
    );
    println!(
        "through node B and node A (mTLS, authorization and sharing log on), 1000 records a page; one process."
    );
    let started = Instant::now();
    let province = Province::start_with_rows(record, rows).await?;
    println!(
        "set up (import included) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let before = rss_bytes();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let (done_tx, mut done_rx) = watch::channel(false);
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = done_rx.changed() => return,
                }
            }
        })
    };
    let channel = province.via_b()?.connect().await?;
    let mut client = DataExchangeClient::new(channel).max_decoding_message_size(64 << 20);
    let t = Instant::now();
    let mut pages = client
        .query(QueryRequest {
            service_id: format!("{AGENCY_A}/records"),
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut records, mut bytes) = (0usize, 0usize);
    while let Some(page) = pages.message().await? {
        records += page.records.len();
        bytes += page.records.iter().map(|r| r.json.len()).sum::<usize>();
    }
    let elapsed = t.elapsed();
    let _ = done_tx.send(true);
    let _ = sampler.await;
    let after = rss_bytes();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(
        records == rows,
        "the query returned {records} records of {rows}"
    );
    println!(
        "streamed {records} records, {} in {:.1} s: {:.0} MB/s",
        human_size(bytes),
        elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "memory of this process (both nodes, the registry and the application): {} before, {} at the peak, {} after",
        human_size(before as usize),
        human_size(peak as usize),
        human_size(after as usize)
    );
    println!(
        "peak growth during the stream: {} for {} streamed ({:.1}% of the data)",
        human_size(peak.saturating_sub(before) as usize),
        human_size(bytes),
        100.0 * peak.saturating_sub(before) as f64 / bytes.max(1) as f64
    );
    province.shutdown().await?;
    Ok(())
}

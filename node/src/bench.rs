//! `lgsp bench`: measured throughput and latency, each next to a baseline
//! measured in the same run on the same machine.

use anyhow::{Context, Result};
use lgsp_certs::ca::{CertificateAuthority, LeafSpec};
use lgsp_certs::{AgencyCode, Credentials, Role, SpiffeId};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::identity_service_client::IdentityServiceClient;
use lgsp_proto::{Agency, RecordKind};
use lgsp_registry::config::{PeerConfig, TlsConfig};
use lgsp_registry::{RegistryClient, RegistryConfig, RegistryServer};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latencies of one run, and how long it took.
#[derive(Debug)]
pub struct Run {
    pub label: String,
    pub clients: usize,
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-th percentile latency (0..=100), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Runs `op` from `clients` concurrent tasks for `duration`; task `i` gets
/// its index and a per-task counter.
pub async fn measure<F, Fut>(label: &str, clients: usize, duration: Duration, op: F) -> Run
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

fn leaf(ca: &mut CertificateAuthority, role: Role, name: &str) -> Result<Credentials> {
    let id = SpiffeId::new(
        ca.trust_domain(),
        AgencyCode::new("000.00.00.H62")?,
        role,
        name,
    )?;
    let issued = ca.issue(&LeafSpec::for_days(id, 1)?)?;
    Ok(Credentials::from_pem(
        &issued.cert_pem,
        &issued.key_pem,
        ca.cert_pem(),
    )?)
}

fn write_tls(dir: &Path, creds: &Credentials) -> Result<TlsConfig> {
    std::fs::create_dir_all(dir)?;
    let files = lgsp_certs::TlsFiles::in_dir(dir);
    std::fs::write(&files.cert, &creds.cert_pem)?;
    std::fs::write(&files.key, &creds.key_pem)?;
    std::fs::write(&files.ca, &creds.ca_pem)?;
    Ok(TlsConfig {
        cert: files.cert,
        key: files.key,
        ca: files.ca,
    })
}

/// `lgsp bench registry`: a cluster of `servers` on loopback in this
/// process; conditional writes and linearizable reads of 256-byte values at
/// each concurrency, next to a bare mTLS gRPC round trip to the same server.
pub async fn registry(servers: u64, concurrency: &[usize], duration: Duration) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut ca =
        CertificateAuthority::init(&tmp.path().join("ca"), "bench.lgsp.local", "bench CA", 1)?;
    let admin = leaf(&mut ca, Role::Admin, "bench")?;
    let free = || -> Result<std::net::SocketAddr> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
    };
    let mut peers = Vec::new();
    for id in 1..=servers {
        peers.push((id, free()?, free()?));
    }
    let peer_configs: Vec<PeerConfig> = peers
        .iter()
        .map(|(id, client, peer)| PeerConfig {
            id: *id,
            peer: peer.to_string(),
            client: client.to_string(),
        })
        .collect();
    let mut running = Vec::new();
    for (id, client, peer) in &peers {
        let dir = tmp.path().join(format!("registry-{id}"));
        let creds = leaf(&mut ca, Role::Registry, &format!("registry-{id}"))?;
        let config = RegistryConfig {
            id: *id,
            listen: *client,
            peer_listen: *peer,
            data_dir: dir.join("data"),
            peers: peer_configs.clone(),
            tls: Some(write_tls(&dir.join("tls"), &creds)?),
            ..Default::default()
        };
        running.push(RegistryServer::start(config).await?);
    }
    let all: Vec<String> = peers.iter().map(|(_, c, _)| c.to_string()).collect();
    let probe = RegistryClient::new(&all, &admin)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        if let Ok(s) = probe.status().await
            && s.leader_id != 0
        {
            break s.leader_id;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster elected no leader in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader_addr = peers
        .iter()
        .find(|(id, _, _)| *id == leader)
        .map(|(_, c, _)| c.to_string())
        .context("leader address")?;

    println!(
        "lgsp bench registry: {servers} servers on 127.0.0.1, mutual TLS, sled flushed before every acknowledgement,"
    );
    println!(
        "256-byte values, {} s per run, clients talk to the leader (server {leader}); one HTTP/2 connection per 8 clients.",
        duration.as_secs()
    );
    println!("baseline: a bare mTLS gRPC round trip (WhoAmI) to the same server, same clients.");
    println!();
    print_header();
    let value = "đ".repeat(128); // 256 bytes of UTF-8
    for &c in concurrency {
        let connections = c.div_ceil(8).max(1);
        let clients: Vec<RegistryClient> = (0..connections)
            .map(|_| RegistryClient::new(std::slice::from_ref(&leader_addr), &admin))
            .collect::<Result<_, _>>()?;
        let endpoint = lgsp_certs::tls::client_endpoint(&leader_addr, &admin, None)?;
        let mut channels = Vec::new();
        for _ in 0..connections {
            channels.push(endpoint.connect().await?);
        }
        let channels = Arc::new(channels);
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

        // Each client owns a key and writes it at the revision it last saw.
        let revisions: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
            (0..c)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        );
        let shared = Arc::new(clients);
        let (cl, revs, v) = (shared.clone(), revisions.clone(), value.clone());
        let writes = measure("conditional write (CAS)", c, duration, move |i, n| {
            let client = cl[i % cl.len()].clone();
            let revs = revs.clone();
            let value = Value::Agency(Agency {
                code: format!("000.{:02}.{:02}.H62", i / 100, i % 100),
                name: format!("{v}{n}"),
                focal_point: None,
            });
            async move {
                let expected = revs[i].load(std::sync::atomic::Ordering::Relaxed);
                let r = client.put(value, expected).await?;
                let rev = r.record.and_then(|r| r.meta).map_or(0, |m| m.mod_revision);
                revs[i].store(rev, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .await;
        print_run(&writes, baseline);

        let cl = shared.clone();
        let reads = measure("linearizable read", c, duration, move |i, _| {
            let client = cl[i % cl.len()].clone();
            async move {
                client
                    .get(
                        RecordKind::Agency,
                        &format!("000.{:02}.{:02}.H62", i / 100, i % 100),
                        false,
                    )
                    .await?;
                Ok(())
            }
        })
        .await;
        print_run(&reads, baseline);
    }
    for s in running {
        s.shutdown().await?;
    }
    Ok(())
}

//! A three-member etcd on loopback, started from the system's `etcd` binary
//! (Debian: `apt-get install etcd-server`), and a client for it, so that
//! `lgsp bench registry --against-etcd` measures both in one run.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// The etcd v3 API subset of `proto/etcd/kv.proto`.
pub(crate) mod pb {
    // Generated code is not ours to lint (see lgsp-proto's lib.rs).
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    #![allow(missing_debug_implementations, rust_2018_idioms, dead_code)]
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

/// Three `etcd` processes, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct EtcdCluster {
    members: Vec<tokio::process::Child>,
    /// Each member's client URL, `http://127.0.0.1:<port>`.
    clients: Vec<String>,
    /// What `etcd --version` said, first line.
    pub(crate) version: String,
}

/// `etcd --version`'s first line; an error saying how to install etcd when
/// there is no `etcd` on the PATH.
fn installed() -> Result<String> {
    match std::process::Command::new("etcd").arg("--version").output() {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("etcd")
            .trim()
            .to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--against-etcd needs etcd, and there is no `etcd` on the PATH: install it \
             (Debian: `apt-get install etcd-server`) or leave the flag out"
        ),
        Err(e) => Err(e).context("running `etcd --version`"),
    }
}

impl EtcdCluster {
    /// Starts three members on free loopback ports, with their data and logs
    /// under `dir`, plaintext, and waits until they have a leader.
    pub(crate) async fn start(dir: &Path) -> Result<Self> {
        let version = installed()?;
        let free = || -> Result<String> {
            Ok(format!(
                "http://{}",
                lgsp_province::net::free_addr().context("a free port on 127.0.0.1")?
            ))
        };
        let ports: Vec<(String, String)> = (0..3)
            .map(|_| Ok((free()?, free()?)))
            .collect::<Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = dir.join(format!("m{i}"));
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
            let child = tokio::process::Command::new("etcd")
                .arg(format!("--name=m{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster={initial}"))
                .args([
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=lgsp-bench",
                    "--logger=zap",
                    "--log-level=error",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting etcd")?;
            members.push(child);
        }
        let cluster = Self {
            members,
            clients: ports.into_iter().map(|(c, _)| c).collect(),
            version,
        };
        cluster.leader(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    /// The leader's client URL, waiting up to `within` for one.
    pub(crate) async fn leader(&self, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            for url in &self.clients {
                let Ok(channel) = Endpoint::from_shared(url.clone())?.connect().await else {
                    continue;
                };
                if let Ok(status) = MaintenanceClient::new(channel)
                    .status(pb::StatusRequest {})
                    .await
                {
                    let status = status.into_inner();
                    let me = status.header.map_or(0, |h| h.member_id);
                    if status.leader != 0 && status.leader == me {
                        return Ok(url.clone());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the etcd members elected no leader in {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The CPU time the members have run so far (Linux; `None` elsewhere
    /// or when a member cannot be read).
    pub(crate) fn ran(&self) -> Option<Duration> {
        self.members
            .iter()
            .map(|m| crate::server_cpu::process_ran(m.id()?))
            .sum()
    }

    /// Stops every member.
    pub(crate) async fn stop(mut self) {
        for m in &mut self.members {
            let _ = m.kill().await;
        }
    }
}

/// `n` HTTP/2 connections to `url`, one per channel.
pub(crate) async fn connect(url: &str, n: usize) -> Result<Vec<KvClient<Channel>>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {url}"))?;
        clients.push(KvClient::new(channel));
    }
    Ok(clients)
}

/// A put of `value` under `key`; the key's new mod revision.
pub(crate) async fn put(client: &mut KvClient<Channel>, key: &str, value: &[u8]) -> Result<i64> {
    let r = client
        .put(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

/// A compare-and-set as etcd clients write it: a transaction putting `value`
/// under `key` only if the key's mod revision is `expected` (0: absent),
/// reading the key otherwise. `Ok(new mod revision)` when it was put,
/// `Err(current mod revision)` when the comparison failed.
pub(crate) async fn compare_and_set(
    client: &mut KvClient<Channel>,
    key: &str,
    expected: i64,
    value: &[u8],
) -> Result<Result<i64, i64>> {
    let r = client
        .txn(pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Mod as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(pb::compare::TargetUnion::ModRevision(expected)),
                range_end: Vec::new(),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
        })
        .await?
        .into_inner();
    if r.succeeded {
        return Ok(Ok(r.header.map_or(0, |h| h.revision)));
    }
    let current = r
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(pb::response_op::Response::ResponseRange(range)) => {
                Some(range.kvs.first().map_or(0, |kv| kv.mod_revision))
            }
            _ => None,
        })
        .unwrap_or(0);
    Ok(Err(current))
}

/// A linearizable read of `key` (etcd's default, `serializable: false`).
pub(crate) async fn get(client: &mut KvClient<Channel>, key: &str) -> Result<()> {
    client
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

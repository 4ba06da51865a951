//! Clients spreading puts, compare-and-sets and linearizable reads over
//! every server of a three-server registry: the history they record is
//! checked by an independent linearizability checker
//! (`lgsp_tests::linearizability`), which knows nothing of Raft.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Agency, CatalogRecord, Command, RecordKind, command::Op};
use lgsp_tests::cluster::Cluster;
use lgsp_tests::linearizability::{self, Call, Condition, Operation, WriteOutcome};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;

const KEYS: [&str; 3] = ["000.90.01.H62", "000.90.02.H62", "000.90.03.H62"];

/// A small xorshift generator: each client's choices differ, reproducibly.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What a failed write tells of its fate: `None` when it certainly did not
/// take effect (the registry said `not-applied`).
fn failed_write(status: &Status) -> Option<WriteOutcome> {
    let meta = |key| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match meta(lgsp_registry::error::OUTCOME).as_deref() {
        Some("refused") => {
            assert_eq!(status.code(), tonic::Code::Aborted, "refused: {status}");
            let revision = meta(lgsp_registry::error::MOD_REVISION).and_then(|r| r.parse().ok());
            Some(WriteOutcome::Refused(revision))
        }
        Some("not-applied") => None,
        // `unknown`, or a connection that broke after the call was sent.
        _ => Some(WriteOutcome::Unknown),
    }
}

/// One client's calls for `duration`, all on server `server`'s endpoint.
async fn client_run(
    cluster: Arc<Cluster>,
    client: usize,
    server: u64,
    start: Instant,
    duration: Duration,
) -> Vec<Operation> {
    let registry = cluster.client_of(&[server], &cluster.admin);
    let mut choices =
        Choices(0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1).wrapping_mul(0x2545_f491));
    // The mod revision this client last saw of each key (0: absent).
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let mut history = Vec::new();
    let mut n = 0;
    while start.elapsed() < duration {
        n += 1;
        let key = KEYS[choices.below(KEYS.len() as u64) as usize];
        let invoked = start.elapsed();
        if choices.below(10) < 4 {
            let result = registry.get(RecordKind::Agency, key, false).await;
            let returned = start.elapsed();
            let response = match result {
                Ok(response) => response,
                Err(e) if e.code() == tonic::Code::NotFound => Default::default(),
                // A read that failed tells nothing.
                Err(_) => continue,
            };
            let record = response.record.and_then(|r| {
                let meta = r.meta?;
                match r.value? {
                    Value::Agency(a) => Some((a.name, meta.mod_revision)),
                    _ => None,
                }
            });
            seen.insert(key, record.as_ref().map_or(0, |(_, r)| *r));
            history.push(Operation {
                client,
                key: key.into(),
                call: Call::Read(record),
                invoked,
                returned: Some(returned),
            });
            continue;
        }
        let condition = match (choices.below(10) < 3, seen.get(key)) {
            (true, _) => Condition::None,
            (false, None | Some(0)) => Condition::MustNotExist,
            (false, Some(r)) => Condition::ModRevision(*r),
        };
        let value = format!("khách {client} lần {n}");
        let command = Command {
            op: Some(Op::Put(CatalogRecord {
                value: Some(Value::Agency(Agency {
                    code: key.into(),
                    name: value.clone(),
                    focal_point: None,
                    ..Default::default()
                })),
                ..Default::default()
            })),
            expected_mod_revision: match condition {
                Condition::ModRevision(r) => r,
                _ => 0,
            },
            must_not_exist: condition == Condition::MustNotExist,
        };
        let result = registry.apply(command).await;
        let returned = start.elapsed();
        let outcome = match result {
            Ok(r) => {
                let revision = r.record.and_then(|r| r.meta).map(|m| m.mod_revision);
                WriteOutcome::Applied(revision.expect("an applied put returns its record"))
            }
            Err(status) => match failed_write(&status) {
                Some(outcome) => outcome,
                None => continue,
            },
        };
        match &outcome {
            WriteOutcome::Applied(r) => {
                seen.insert(key, *r);
            }
            WriteOutcome::Refused(Some(r)) => {
                seen.insert(key, *r);
            }
            _ => {}
        }
        history.push(Operation {
            client,
            key: key.into(),
            call: Call::Write {
                value,
                condition,
                outcome: outcome.clone(),
            },
            invoked,
            returned: (outcome != WriteOutcome::Unknown).then_some(returned),
        });
    }
    history
}

/// Six clients, two per server, for `duration` from now; the history they
/// recorded, checked.
async fn spread_calls(cluster: &Arc<Cluster>, duration: Duration) -> tokio::task::JoinHandle<()> {
    let start = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            tokio::spawn(client_run(
                cluster.clone(),
                c,
                c as u64 % 3 + 1,
                start,
                duration,
            ))
        })
        .collect();
    tokio::spawn(async move {
        let mut history = Vec::new();
        for c in clients {
            history.extend(c.await.unwrap());
        }
        judge(&history);
    })
}

fn judge(history: &[Operation]) {
    let count = |f: &dyn Fn(&Operation) -> bool| history.iter().filter(|op| f(op)).count();
    let applied = count(&|op| {
        matches!(
            op.call,
            Call::Write {
                outcome: WriteOutcome::Applied(_),
                condition: Condition::ModRevision(_),
                ..
            }
        )
    });
    let refused = count(&|op| {
        matches!(
            op.call,
            Call::Write {
                outcome: WriteOutcome::Refused(_),
                ..
            }
        )
    });
    let unknown = count(&|op| op.returned.is_none());
    let reads = count(&|op| matches!(op.call, Call::Read(Some(_))));
    eprintln!(
        "{} calls: {applied} compare-and-sets applied, {refused} writes refused, {unknown} of unknown outcome, {reads} reads of a record",
        history.len()
    );
    assert!(
        applied >= 10 && refused >= 10 && reads >= 10,
        "too few calls of each kind to judge"
    );
    if let Err(violation) = linearizability::check(history) {
        panic!("{violation}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spreading_compare_and_sets_over_every_server_see_a_linearizable_history() {
    let cluster = Arc::new(Cluster::start(3).await);
    cluster.wait_for_leader().await;
    spread_calls(&cluster, Duration::from_secs(4))
        .await
        .await
        .unwrap();
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_stays_linearizable_while_the_leader_is_cut_off_and_comes_back() {
    let cluster = Arc::new(Cluster::start(3).await);
    let leader = cluster.wait_for_leader().await;
    let judged = spread_calls(&cluster, Duration::from_secs(6)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The leader loses the others, with calls in flight on every server.
    let others: Vec<u64> = cluster
        .servers
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    cluster.servers[&leader].faults().isolate(&others);
    for o in &others {
        cluster.servers[o].faults().isolate(&[leader]);
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let status = cluster
        .client_of(&others[..1], &cluster.admin)
        .status()
        .await
        .expect("status of the majority");
    assert!(
        status.leader_id != 0 && status.leader_id != leader,
        "the majority elected no new leader: {status:?}"
    );
    for s in cluster.servers.values() {
        s.faults().heal();
    }
    judged.await.unwrap();
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.shutdown().await;
    }
}

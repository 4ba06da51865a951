//! Registry servers as real processes killed with SIGKILL: no acknowledged
//! write is lost, and a server that lost its data is told how to come back.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Agency, RecordKind};
use lgsp_tests::cluster::create_resolving;
use lgsp_tests::process::ProcessCluster;
use std::time::{Duration, Instant};

/// The code of test agency `i`.
fn code(i: usize) -> String {
    format!("000.{:02}.{:02}.H62", i / 100, i % 100)
}

fn agency(i: usize) -> Value {
    Value::Agency(Agency {
        code: code(i),
        name: format!("Ủy ban nhân dân xã số {i}"),
        focal_point: None,
        ..Default::default()
    })
}

/// Waits until server `id` alone (stale reads) has every record in `codes`.
async fn has_all(cluster: &ProcessCluster, id: u64, codes: &[String]) {
    let client = cluster.client_of(id);
    let deadline = Instant::now() + Duration::from_secs(20);
    for code in codes {
        loop {
            match client.get(RecordKind::Agency, code, true).await {
                Ok(r) if r.record.is_some() => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "server {id} lacks {code}: {other:?}\n{}",
                        cluster.server(id).log()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_and_restarts_with_every_acknowledged_write() {
    let mut cluster = ProcessCluster::start(3);
    let client = cluster.client();
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        create_resolving(&client, agency(i)).await;
        acknowledged.push(code(i));
    }

    // SIGKILL the leader: nothing of its shutdown code runs.
    let leader = cluster.leader().await;
    cluster.server_mut(leader).kill9();
    for i in 30..60 {
        create_resolving(&client, agency(i)).await;
        acknowledged.push(code(i));
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader, "a new leader took over");

    cluster.server_mut(leader).restart();
    has_all(&cluster, leader, &acknowledged).await;

    // And a follower killed with SIGKILL while writes go on.
    let follower = cluster
        .servers
        .iter()
        .map(|s| s.id)
        .find(|id| *id != new_leader && *id != leader)
        .expect("a follower");
    cluster.server_mut(follower).kill9();
    for i in 60..80 {
        create_resolving(&client, agency(i)).await;
        acknowledged.push(code(i));
    }
    cluster.server_mut(follower).restart();
    has_all(&cluster, follower, &acknowledged).await;

    // SIGTERM is a clean shutdown with exit code 0.
    let status = cluster
        .server_mut(follower)
        .terminate()
        .expect("exit status");
    assert!(status.success(), "SIGTERM exit: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_whose_log_was_damaged_or_data_wiped_is_told_to_rejoin_under_a_new_id() {
    let mut cluster = ProcessCluster::start(3);
    let client = cluster.client();
    for i in 0..10 {
        create_resolving(&client, agency(i)).await;
    }
    let leader = cluster.leader().await;
    let victim = cluster
        .servers
        .iter()
        .map(|s| s.id)
        .find(|id| *id != leader)
        .unwrap();
    let server = cluster.server_mut(victim);
    server.kill9();

    // One bit of its Raft log flipped where the disk had synced it.
    let raft_log = server.dir.join("data").join("raft.log");
    let mut bytes = std::fs::read(&raft_log).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&raft_log, &bytes).unwrap();
    server.restart();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server with a damaged log should stop by itself");
    // Refused, not cut short: cutting would drop entries it acknowledged
    // while it kept its term and vote.
    assert_eq!(status.code(), Some(2));
    let log = server.log();
    assert!(log.contains("raft.log: the record at byte"), "{log}");
    assert!(log.contains("Replace it by a new member"), "{log}");
    assert_eq!(
        std::fs::read(&raft_log).unwrap(),
        bytes,
        "the file is left as found"
    );

    std::fs::remove_dir_all(server.dir.join("data")).unwrap();
    server.restart();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the wiped server should stop by itself");
    // Refused before it founds a cluster again: its peers know its id
    // from the data directory it lost (registry_membership.rs has more).
    assert_eq!(status.code(), Some(2));
    let log = server.log();
    assert!(log.contains("wiped or replaced"), "{log}");
    assert!(log.contains("rejoin under a new id"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_majority_killed_writes_are_refused_and_nothing_acknowledged_is_lost() {
    let mut cluster = ProcessCluster::start(3);
    let client = cluster.client();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        create_resolving(&client, agency(i)).await;
        acknowledged.push(code(i));
    }

    // SIGKILL the leader and one follower: the survivor has no quorum.
    let leader = cluster.leader().await;
    let ids: Vec<u64> = cluster.servers.iter().map(|s| s.id).collect();
    let survivor = *ids.iter().find(|id| **id != leader).unwrap();
    let killed: Vec<u64> = ids.iter().copied().filter(|id| *id != survivor).collect();
    for id in &killed {
        cluster.server_mut(*id).kill9();
    }

    // A write is refused within the client's retry time, never acknowledged.
    let asked = Instant::now();
    let refused = client
        .put(agency(90), 0)
        .await
        .expect_err("a write without a quorum was acknowledged");
    let waited = asked.elapsed();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{refused:?}"
    );
    assert!(waited < Duration::from_secs(30), "refused after {waited:?}");
    eprintln!("refused after {waited:?}: {}", refused.message());
    // The survivor still answers stale reads from what it has, and says
    // why it cannot answer a linearizable one.
    let alone = cluster.client_of(survivor);
    let stale = alone
        .get(lgsp_proto::RecordKind::Agency, &acknowledged[0], true)
        .await
        .expect("stale read from the survivor");
    assert!(stale.record.is_some());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match alone
            .get(lgsp_proto::RecordKind::Agency, &acknowledged[0], false)
            .await
        {
            Err(s) if s.message().contains("quorum") => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the survivor never said it lacks a quorum: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // Back to a majority: writes go through, and every server has every
    // write acknowledged before the outage.
    for id in &killed {
        cluster.server_mut(*id).restart();
    }
    for i in 20..30 {
        create_resolving(&client, agency(i)).await;
        acknowledged.push(code(i));
    }
    for id in ids {
        has_all(&cluster, id, &acknowledged).await;
    }
    // The refused write was not applied after all: it never reached a log
    // that a majority could commit.
    let absent = client
        .get(lgsp_proto::RecordKind::Agency, &code(90), false)
        .await
        .expect_err("the refused write is not there");
    assert_eq!(absent.code(), tonic::Code::NotFound, "{absent:?}");
}

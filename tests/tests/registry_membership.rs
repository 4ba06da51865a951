//! Registry membership as an operator meets it: a server whose disk was
//! wiped, a restart with the wrong peers, moving leadership by hand, and
//! what `lgsp registry status` tells about each server.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Agency, RecordKind};
use lgsp_registry::{RegistryError, RegistryServer};
use lgsp_tests::cluster::{Cluster, create_resolving, write_creds};
use lgsp_tests::lgsp;
use lgsp_tests::process::ProcessCluster;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn agency(i: usize) -> Value {
    Value::Agency(Agency {
        code: format!("000.{:02}.{:02}.H62", i / 100, i % 100),
        name: format!("Ủy ban nhân dân xã số {i}"),
        focal_point: None,
        ..Default::default()
    })
}

fn run(registry: &str, tls: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--registry", registry, "--tls-dir", tls.to_str().unwrap()]);
    lgsp(&all)
}

fn ok(registry: &str, tls: &Path, args: &[&str]) -> String {
    let out = run(registry, tls, args);
    assert!(
        out.status.success(),
        "lgsp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (up to 20 s) until the cluster has recorded every member's data
/// directory incarnation: only then does it recognise a wiped server.
async fn incarnations_recorded(cluster: &ProcessCluster) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = cluster.client().status().await
            && s.members.len() == cluster.servers.len()
            && s.members.iter().all(|m| m.incarnation != 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "incarnations not recorded in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader every answering server agrees on, other than `not`, waiting
/// up to 20 s.
async fn new_leader(cluster: &ProcessCluster, not: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = cluster.client().status().await
            && s.leader_id != 0
            && s.leader_id != not
        {
            return s.leader_id;
        }
        assert!(Instant::now() < deadline, "no new leader in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_server_refuses_to_found_again_and_exits_with_the_configuration_code() {
    let mut cluster = ProcessCluster::start(3);
    let client = cluster.client();
    for i in 0..5 {
        create_resolving(&client, agency(i)).await;
    }
    incarnations_recorded(&cluster).await;
    let leader = cluster.leader().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let server = cluster.server_mut(victim);
    server.kill9();
    std::fs::remove_dir_all(server.dir.join("data")).unwrap();
    // A leader change: the new leader's heartbeats would never show the
    // wiped server that it lost entries.
    cluster.server_mut(leader).kill9();
    cluster.server_mut(leader).restart();
    new_leader(&cluster, 0).await;
    create_resolving(&client, agency(10)).await;

    // systemd starts it again, with the same configuration.
    let server = cluster.server_mut(victim);
    let before = server.log().len();
    server.restart();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the wiped server should refuse to start");
    assert_eq!(status.code(), Some(2), "{}", server.log());
    let log = server.log()[before..].to_owned();
    assert!(log.contains(&format!("knows server {victim}")), "{log}");
    assert!(log.contains("wiped or replaced"), "{log}");
    assert!(log.contains("Restore"), "{log}");
    assert!(
        log.contains(&format!("remove-member --id {victim}")),
        "{log}"
    );
    assert!(!log.contains("bootstrapped a new cluster"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_server_that_founded_while_its_peers_were_down_stops_when_they_return() {
    let mut cluster = ProcessCluster::start(3);
    let client = cluster.client();
    for i in 0..5 {
        create_resolving(&client, agency(i)).await;
    }
    incarnations_recorded(&cluster).await;
    // Every server is killed at once right after the record is applied:
    // it must already be on disk (flushed when applied, not left to a
    // background writer).
    for id in 1..=3 {
        cluster.server_mut(id).kill9();
    }
    let victim = 3;
    let server = cluster.server_mut(victim);
    std::fs::remove_dir_all(server.dir.join("data")).unwrap();
    let before = server.log().len();
    // No peer answers: it founds a cluster again, alone.
    server.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in 1..=2 {
        cluster.server_mut(id).restart();
    }
    let server = cluster.server_mut(victim);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "the wiped server should stop once its peers answer:\n{}",
                &server.log()[before..]
            )
        });
    assert_eq!(status.code(), Some(2), "{}", server.log());
    let log = server.log()[before..].to_owned();
    assert!(log.contains("bootstrapped a new cluster"), "{log}");
    assert!(log.contains(&format!("knows server {victim}")), "{log}");
    assert!(log.contains("stops now"), "{log}");
    // The others go on without it.
    new_leader(&cluster, victim).await;
    create_resolving(&cluster.client(), agency(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_whose_peers_disagree_with_the_stored_membership_is_refused() {
    let mut cluster = Cluster::start(3).await;
    cluster.register_agency("000.00.12.H62", "Sở Tư pháp").await;
    cluster.stop(3).await;
    let mut config = cluster.configs[&3].clone();
    config.peers.retain(|p| p.id == 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match RegistryServer::start(config.clone()).await {
            Err(RegistryError::Config(why)) => break why,
            // sled's lock on the directory is released when the last handle drops.
            Err(RegistryError::Storage(why)) if Instant::now() < deadline => {
                tracing::debug!(%why, "not yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(server) => {
                let status = server.raft().status().await;
                panic!("server 3 ran with --peers naming itself alone: {status:?}");
            }
        }
    };
    assert!(
        refused.contains("a start never changes membership"),
        "{refused}"
    );
    assert!(refused.contains("{1, 2, 3}"), "{refused}");

    // With its own peers it runs again, and has what it had.
    cluster.restart(3).await;
    let mine = cluster.client_of(&[3], &cluster.admin);
    let record = mine
        .get(RecordKind::Agency, "000.00.12.H62", false)
        .await
        .expect("the agency from before");
    assert!(record.record.is_some());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_and_status_shows_versions_lag_and_leaders() {
    let cluster = ProcessCluster::start(3);
    let leader = cluster.leader().await;
    create_resolving(&cluster.client(), agency(1)).await;
    let registry = cluster
        .servers
        .iter()
        .map(|s| s.client.clone())
        .collect::<Vec<_>>()
        .join(",");
    let admin = cluster.pki.dir.path().join("admin-tls");
    write_creds(&admin, &cluster.admin);

    let to = (1..=3).find(|id| *id != leader).unwrap();
    let moved = ok(
        &registry,
        &admin,
        &["registry", "transfer-leader", "--to", &to.to_string()],
    );
    assert!(moved.contains(&format!("Server {to} leads now")), "{moved}");
    assert_eq!(cluster.client().status().await.unwrap().leader_id, to);

    let refused = run(
        &registry,
        &admin,
        &["registry", "transfer-leader", "--to", "9"],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("server 9 is not a member"), "{err}");

    let status = ok(&registry, &admin, &["registry", "status"]);
    assert_eq!(status.matches("is leader").count(), 1, "{status}");
    assert_eq!(
        status.matches(&format!("leader {to}\n")).count(),
        3,
        "{status}"
    );
    let version = format!("(lgsp {})", env!("CARGO_PKG_VERSION"));
    assert_eq!(status.matches(&version).count(), 3, "{status}");
    assert_eq!(status.matches("applied index").count(), 3, "{status}");
    assert!(status.contains("(lag "), "{status}");
    // The leader tells how far each other server's log matches its own.
    assert_eq!(status.matches("replication to").count(), 2, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_through_a_follower_lets_writes_go_on() {
    let cluster = ProcessCluster::start(3);
    let leader = cluster.leader().await;
    create_resolving(&cluster.client(), agency(1)).await;
    let admin = cluster.pki.dir.path().join("admin-tls");
    write_creds(&admin, &cluster.admin);
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    let removed = ok(
        &cluster.server(follower).client,
        &admin,
        &["registry", "remove-member", "--id", &leader.to_string()],
    );
    assert!(!removed.contains(&format!("member {leader}:")), "{removed}");

    let remaining: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let endpoints: Vec<String> = remaining
        .iter()
        .map(|id| cluster.server(*id).client.clone())
        .collect();
    let client = lgsp_registry::RegistryClient::new(&endpoints, &cluster.admin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.put(agency(2), 0).await {
            Ok(_) => break,
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "no write went through after the leader was removed: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let status = client.status().await.unwrap();
    assert!(remaining.contains(&status.leader_id), "{status:?}");
}

//! A follower far behind catches up by a snapshot that takes longer to send
//! than the peer deadline gives a batch of Raft messages. The deadline is
//! made small here (a configurable setting) rather than the catalog huge: a
//! snapshot sent under it as one batch fails every time, and the follower
//! never catches up. The catalog is written under the default deadline; the
//! servers are then restarted with the small one.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Agency, NodeRecord, Service, ServiceKind};
use lgsp_tests::cluster::Cluster;
use std::time::{Duration, Instant};

/// The peer deadline the servers run with once the catalog is written:
/// ample for a heartbeat on loopback, far too short for the whole catalog
/// below at once.
const PEER_TIMEOUT_MS: u64 = 3;
/// Services of about 56 KB each: a catalog of about 11 MB.
const SERVICES: usize = 200;
const AGENCY: &str = "000.00.12.H62";

fn service(i: usize) -> Value {
    // The largest part a service may carry: its schema (any JSON, within
    // the 64 KiB a record may take).
    let schema = format!("\"{}\"", "lược đồ ".repeat(4_000));
    Value::Service(Service {
        id: format!("{AGENCY}/dich-vu-{i}"),
        kind: ServiceKind::Dataset as i32,
        description: "Dịch vụ dữ liệu".into(),
        node: "node-1".into(),
        schema_json: schema,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_by_a_snapshot_longer_to_send_than_the_peer_deadline() {
    let mut cluster = Cluster::start_with(3, |c| c.snapshot_entries = 20).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    cluster.stop(lagging).await;

    let live: Vec<u64> = cluster.servers.keys().copied().collect();
    let client = cluster.client_of(&live, &cluster.admin);
    client
        .put(
            Value::Agency(Agency {
                code: AGENCY.into(),
                name: "Sở Tư pháp".into(),
                ..Default::default()
            }),
            0,
        )
        .await
        .expect("register the agency");
    // An online service names its agency's node.
    client
        .put(
            Value::Node(NodeRecord {
                agency_code: AGENCY.into(),
                name: "node-1".into(),
                endpoint: "node-1.example:7443".into(),
                ..Default::default()
            }),
            0,
        )
        .await
        .expect("register the node");
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for i in (w..SERVICES).step_by(4) {
                last = client
                    .put(service(i), 0)
                    .await
                    .expect("publish with one server down")
                    .revision;
            }
            last
        }));
    }
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.unwrap());
    }

    for id in [1, 2, 3] {
        cluster.configs.get_mut(&id).unwrap().peer_timeout_ms = PEER_TIMEOUT_MS;
    }
    for id in live {
        cluster.stop(id).await;
        cluster.restart(id).await;
    }
    cluster.wait_for_leader().await;
    let started = Instant::now();
    cluster.restart(lagging).await;
    let deadline = started + Duration::from_secs(30);
    loop {
        let status = cluster.servers[&lagging].raft().status().await.unwrap();
        if status.revision >= last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server {lagging} is at revision {} of {last} after 30 s: the snapshot of the \
             catalog never reached it",
            status.revision
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "server {lagging} caught up by snapshot in {} ms (peer deadline {PEER_TIMEOUT_MS} ms)",
        started.elapsed().as_millis()
    );
    let status = cluster.servers[&lagging].raft().status().await.unwrap();
    assert!(
        status.compact_revision > 1,
        "the catalog came from a snapshot, not a replay of the log"
    );
    cluster.shutdown().await;
}

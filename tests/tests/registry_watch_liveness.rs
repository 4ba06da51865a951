//! A watch on a registry server that can no longer tell that its catalog is
//! current (cut off from its leader, or removed from the cluster) ends with
//! UNAVAILABLE, so that its watcher moves to another server instead of
//! believing a stale catalog is fresh; a watch on a healthy server stays
//! open. In-process servers over real mTLS on loopback, Raft traffic cut by
//! the `faults` feature.

use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::{Agency, WatchEvent, WatchRequest};
use lgsp_tests::cluster::{Cluster, create_resolving};
use std::time::Duration;
use tonic::{Code, Status, Streaming};

/// Opens a watch on server `id` alone, from `from`.
async fn watch_on(cluster: &Cluster, id: u64, from: u64) -> Result<Streaming<WatchEvent>, Status> {
    cluster
        .client_of(&[id], &cluster.admin)
        .server(0)
        .watch(WatchRequest {
            from_revision: from,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A watch on server `id` from `from`, read up to its `Synced` event;
/// retried for a few seconds while the server, just started, has not yet
/// heard of its leader.
async fn synced_watch(cluster: &Cluster, id: u64, from: u64) -> Streaming<WatchEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut events = loop {
        match watch_on(cluster, id, from).await {
            Ok(events) => break events,
            Err(status)
                if status.code() == Code::Unavailable && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("no watch on server {id}: {status:?}"),
        }
    };
    until_synced(&mut events).await;
    events
}

/// Reads `events` up to its `Synced` event.
async fn until_synced(events: &mut Streaming<WatchEvent>) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("an event within 5 s")
            .expect("no error")
            .expect("the watch is open");
        if event.r#type == EventType::Synced as i32 {
            return;
        }
    }
}

/// How a watch ends within `limit`: the status it ends with.
async fn ended(events: &mut Streaming<WatchEvent>, limit: Duration) -> Status {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.message()).await {
            Err(_) => panic!("the watch was still open after {limit:?}"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the watch ended without saying why"),
            Ok(Err(status)) => return status,
        }
    }
}

fn agency(code: &str, name: &str) -> lgsp_proto::catalog_record::Value {
    lgsp_proto::catalog_record::Value::Agency(Agency {
        code: code.into(),
        name: name.into(),
        focal_point: None,
        ..Default::default()
    })
}

fn followers(cluster: &Cluster, leader: u64) -> Vec<u64> {
    cluster
        .servers
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_server_cut_off_from_its_leader_ends_unavailable_and_others_stay_open() {
    let cluster = Cluster::start(3).await;
    let start = cluster
        .register_agency("000.00.01.H62", "Văn phòng UBND tỉnh")
        .await;
    let leader = cluster.wait_for_leader().await;
    let [cut_off, healthy] = followers(&cluster, leader)[..] else {
        panic!("two followers")
    };
    let mut stale = synced_watch(&cluster, cut_off, start).await;
    let mut fresh = synced_watch(&cluster, healthy, start).await;

    let others: Vec<u64> = vec![leader, healthy];
    cluster.servers[&cut_off].faults().isolate(&others);
    for o in &others {
        cluster.servers[o].faults().isolate(&[cut_off]);
    }
    // Ticks of 50 ms, elections after 10: the cut-off server stands for
    // election within a second, and is leaderless half a second later.
    let status = ended(&mut stale, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no leader"), "{status:?}");
    // A new watch there is refused at once, saying the same.
    let refused = watch_on(&cluster, cut_off, start)
        .await
        .expect_err("a watch on the cut-off server is refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // The watch on a healthy server is unaffected: it sees the next change.
    let through_leader = cluster.client_of(&[leader], &cluster.admin);
    let revision = create_resolving(&through_leader, agency("000.00.02.H62", "Sở Tư pháp")).await;
    let event = tokio::time::timeout(Duration::from_secs(5), fresh.message())
        .await
        .expect("an event within 5 s")
        .expect("no error")
        .expect("the healthy watch is open");
    assert_eq!(event.revision, revision);

    // Healed, the server has a leader again and serves watches.
    for s in cluster.servers.values() {
        s.faults().heal();
    }
    synced_watch(&cluster, cut_off, start).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_server_removed_from_the_cluster_ends_unavailable() {
    let cluster = Cluster::start(3).await;
    let start = cluster
        .register_agency("000.00.01.H62", "Văn phòng UBND tỉnh")
        .await;
    let leader = cluster.wait_for_leader().await;
    let removed = followers(&cluster, leader)[0];
    let mut stale = synced_watch(&cluster, removed, start).await;

    cluster
        .client_of(&[leader], &cluster.admin)
        .remove_member(removed)
        .await
        .expect("remove the follower");
    let status = ended(&mut stale, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("not a member") || status.message().contains("no leader"),
        "{status:?}"
    );
}

/// Waits up to `limit` for `condition`, failing with `what`.
async fn until(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaching_only_a_server_cut_off_from_its_leader_knows_its_catalog_is_stale() {
    use lgsp_node::catalog_cache::{CatalogCache, open_db};
    let cluster = Cluster::start(3).await;
    let start = cluster
        .register_agency("000.00.01.H62", "Văn phòng UBND tỉnh")
        .await;
    let leader = cluster.wait_for_leader().await;
    let cut_off = followers(&cluster, leader)[0];
    // A node whose only registry server is `cut_off`.
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    let cache = CatalogCache::open(&db).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let follow = tokio::spawn(
        cache
            .clone()
            .follow(cluster.client_of(&[cut_off], &cluster.admin), stopped),
    );
    until(
        Duration::from_secs(10),
        "the node's copy is current",
        || cache.is_live() && cache.revision() >= start,
    )
    .await;

    let others: Vec<u64> = vec![leader, followers(&cluster, leader)[1]];
    cluster.servers[&cut_off].faults().isolate(&others);
    for o in &others {
        cluster.servers[o].faults().isolate(&[cut_off]);
    }
    until(
        Duration::from_secs(10),
        "the node knows its copy is stale",
        || !cache.is_live(),
    )
    .await;
    // ...and goes on knowing it while cut off, though the server still
    // answers a status call from its own state.
    cluster
        .client_of(&[cut_off], &cluster.admin)
        .status()
        .await
        .expect("the cut-off server answers a status call");
    let through_leader = cluster.client_of(&[leader], &cluster.admin);
    let missed = create_resolving(&through_leader, agency("000.00.02.H62", "Sở Tư pháp")).await;
    for _ in 0..30 {
        assert!(
            !cache.is_live() && cache.age().is_some_and(|age| age > Duration::ZERO),
            "the copy misses revision {missed} (at {}), yet the node calls it current",
            cache.revision()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Healed, the node catches up and is current again.
    for s in cluster.servers.values() {
        s.faults().heal();
    }
    until(Duration::from_secs(15), "the node is current again", || {
        cache.is_live() && cache.revision() >= missed
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), follow)
        .await
        .expect("the follow loop stops")
        .unwrap();
}

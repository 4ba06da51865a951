//! A registry leader that is stopped in order (SIGTERM, `systemctl stop`)
//! hands leadership over first: the others take writes at once, instead of
//! waiting an election timeout to notice it gone.

use lgsp_tests::cluster::Cluster;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_in_order_hands_over_and_writes_go_on_at_once() {
    let mut cluster = Cluster::start(3).await;
    cluster.register_agency("000.00.12.H62", "Sở Tư pháp").await;
    let leader = cluster.wait_for_leader().await;
    let others: Vec<u64> = cluster
        .servers
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    let client = cluster.client_of(&others, &cluster.admin.clone());

    cluster.stop(leader).await;
    // The followers would need an election timeout (10 ticks of 50 ms, and
    // up to twice that) to notice a leader that just vanished.
    let stopped = Instant::now();
    Catalog::new(client)
        .register_agency(
            &lgsp_certs::AgencyCode::new("000.00.13.H62").unwrap(),
            "UBND huyện Tam Dương",
            None,
        )
        .await
        .expect("a write right after the leader stopped");
    let stalled = stopped.elapsed();
    eprintln!("writes stalled {stalled:?} after the leader stopped");
    assert!(
        stalled < Duration::from_millis(400),
        "the first write after the leader stopped took {stalled:?}"
    );
    cluster.shutdown().await;
}

use lgsp_registry::Catalog;

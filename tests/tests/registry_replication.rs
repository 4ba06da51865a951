//! A three-server registry on loopback: writes through any server, reads
//! that see every acknowledged write, and watchers that miss nothing.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::watch_event::Type as EventType;
use lgsp_proto::{Agency, RecordKind};
use lgsp_tests::cluster::{Cluster, agency_name, create_resolving};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_succeed_and_linearizable_reads_see_them() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    let other = *cluster
        .servers
        .keys()
        .find(|id| **id != leader && **id != follower)
        .unwrap();

    let via_follower = cluster.client_of(&[follower], &cluster.admin);
    let written = via_follower
        .put(
            Value::Agency(Agency {
                code: "000.00.12.H62".into(),
                name: "Sở Tư pháp tỉnh Vĩnh Phúc".into(),
                focal_point: None,
                ..Default::default()
            }),
            0,
        )
        .await
        .expect("write through a follower");
    assert!(written.revision >= 1);

    // Read at the third server, at once: linearizable, so it must see the write.
    let reader = cluster.client_of(&[other], &cluster.admin);
    assert_eq!(
        agency_name(&reader, "000.00.12.H62", false)
            .await
            .as_deref(),
        Some("Sở Tư pháp tỉnh Vĩnh Phúc")
    );
    let got = reader
        .get(RecordKind::Agency, "000.00.12.H62", false)
        .await
        .unwrap();
    let meta = got.record.unwrap().meta.unwrap();
    assert_eq!(meta.create_revision, written.revision);
    assert_eq!(meta.mod_revision, written.revision);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_change_once_in_order_across_a_leader_change() {
    let mut cluster = Cluster::start(3).await;
    let start = cluster
        .register_agency("000.00.01.H62", "Văn phòng UBND tỉnh")
        .await;
    let leader = cluster.wait_for_leader().await;
    // Clients of the two followers: the leader will go away under them.
    let followers: Vec<u64> = cluster
        .servers
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    let client = cluster.client_of(&followers, &cluster.admin);
    let mut watch = cluster
        .client_of(&[followers[1], followers[0]], &cluster.admin)
        .watch(start);

    let mut expected = Vec::new();
    for i in 0..20u32 {
        if i == 10 {
            cluster.stop(leader).await;
        }
        let code = format!("000.00.{:02}.H62", 20 + i);
        let revision = create_resolving(
            &client,
            Value::Agency(Agency {
                code: code.clone(),
                name: format!("Phòng số {i}"),
                focal_point: None,
                ..Default::default()
            }),
        )
        .await;
        expected.push((revision, code));
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < expected.len() + 1 {
        let event = tokio::time::timeout_at(deadline, watch.recv())
            .await
            .expect("watch stalled")
            .expect("watch ended");
        if event.r#type == EventType::Put as i32 {
            seen.push((event.revision, event.record.unwrap().key));
        }
    }
    assert_eq!(seen[0], (start, "000.00.01.H62".to_owned()));
    assert_eq!(
        &seen[1..],
        expected.as_slice(),
        "every change exactly once, in order"
    );
    cluster.shutdown().await;
}

//! One node name, one running process: a second process with the same
//! certificate (the node's files copied to another server) is refused by
//! the registry while the first is alive, exits with the configuration
//! exit code, and the first is told; once the first stops in order, the
//! name is free at once.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{NodeRecord, RecordKind};
use lgsp_tests::province::{A, Province};
use std::time::{Duration, Instant};

async fn catalog_node(province: &Province) -> NodeRecord {
    let record = province
        .admin
        .get(RecordKind::Node, &format!("{A}/node-a"), false)
        .await
        .expect("node record")
        .record
        .and_then(|r| r.value);
    match record {
        Some(Value::Node(n)) => n,
        other => panic!("not a node record: {other:?}"),
    }
}

fn instance_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("instance-id"))
        .expect("instance id")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_nodes_certificate_is_refused_while_the_first_runs() {
    let mut province = Province::start().await;
    province.register_agency(A, "Sở Tư pháp").await;
    let mut first = province.prepare_node(A, "node-a", "");
    first.start();
    province.wait_for_node(A, "node-a", &first).await;
    let first_instance = instance_of(&first.data_dir());

    let mut second = first.copy_as("node-a-copy");
    second.start();
    let status = second
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the second process kept running:\n{}", second.log()));
    // 2: a configuration error, which the systemd unit does not restart
    // (RestartPreventExitStatus=2 in deploy/systemd/lgsp-node.service).
    assert_eq!(status.code(), Some(2), "{}", second.log());
    let said = second.log();
    assert!(
        said.contains("is already running")
            && said.contains(&first_instance)
            && said.contains("--name node-2"),
        "the refusal should name the running instance and the fix:\n{said}"
    );

    // The first keeps its entry and serves on, and says it was contended.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first
        .log()
        .contains("another process with this node's certificate tried to register it")
    {
        assert!(
            Instant::now() < deadline,
            "the first node never warned:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.log().contains("WARN"), "{}", first.log());
    assert!(first.is_running());
    let kept = catalog_node(&province).await;
    assert_eq!(kept.instance_id, first_instance);

    // Stopped in order, the first gives its name up: the second starts now,
    // without waiting for the lease to lapse.
    first.stop();
    assert_eq!(catalog_node(&province).await.heard_unix, 0);
    second.start();
    let second_instance = instance_of(&second.data_dir());
    let deadline = Instant::now() + Duration::from_secs(10);
    while catalog_node(&province).await.instance_id != second_instance {
        assert!(
            Instant::now() < deadline && second.is_running(),
            "the second process never took the name:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

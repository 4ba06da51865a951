//! A standard gRPC client in another language works with a node: Python's
//! `grpcio`, with stubs generated from lgsp's proto files, calls B's consumer
//! listener and gets A's record (tests/python/call_node.py).

use lgsp_tests::province::{A, two_agencies};
use lgsp_tests::python::{generate_stubs, python, require_grpcio, workspace_root};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_calls_a_dataset_through_its_node() {
    require_grpcio();
    let stubs = tempfile::tempdir().expect("tempdir");
    generate_stubs(stubs.path()).await;
    let (_province, _a, b) = two_agencies().await;

    let script = workspace_root().join("tests/python/call_node.py");
    let out = python(
        vec![
            script.to_str().unwrap().to_owned(),
            "--stubs".into(),
            stubs.path().to_str().unwrap().to_owned(),
            "--target".into(),
            b.consumer.clone(),
            "--service".into(),
            format!("{A}/ho-tich"),
            "--op".into(),
            "get".into(),
            "--param".into(),
            "key=001099012345".into(),
            "--request-id".into(),
            "req-python-1".into(),
        ],
        Duration::from_secs(30),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "call_node.py failed:\n{stderr}\n{stdout}"
    );
    assert!(
        stdout.contains("Nguyễn Thị Hương"),
        "the record comes back: {stdout}"
    );
    let record: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(record["so_dinh_danh"], "001099012345");
    assert!(stderr.contains("request id req-python-1"), "{stderr}");
}

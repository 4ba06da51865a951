//! A standard gRPC client in another language works with a node: Python's
//! `grpcio`, with stubs generated from lgsp's proto files, calls B's consumer
//! listener and gets A's record (tests/python/call_node.py).

use lgsp_tests::province::{A, two_agencies};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// Runs `python3` with `args`, giving up after `limit`.
async fn python(args: Vec<String>, limit: Duration) -> Output {
    let child = tokio::process::Command::new("python3")
        .args(&args)
        .env("PYTHONIOENCODING", "utf-8")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(limit, child)
        .await
        .unwrap_or_else(|_| panic!("python3 {args:?} still running after {limit:?}"))
        .expect("run python3")
}

fn require_grpcio() {
    let found = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match found {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Python's gRPC packages are missing ({}); run `pip install grpcio grpcio-tools` \
             (.ci/run installs them)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}); install Python 3, then `pip install grpcio grpcio-tools`"
        ),
    }
}

/// Generates the Python stubs of every lgsp/v1 proto file into `out`.
async fn generate_stubs(out: &Path) {
    let root = workspace_root();
    let mut protos: Vec<String> = std::fs::read_dir(root.join("proto/lgsp/v1"))
        .expect("proto/lgsp/v1")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    protos.sort();
    assert!(!protos.is_empty(), "no proto files in proto/lgsp/v1");
    let mut args = vec![
        "-m".to_owned(),
        "grpc_tools.protoc".to_owned(),
        format!("-I{}", root.join("proto").display()),
        format!("--python_out={}", out.display()),
        format!("--grpc_python_out={}", out.display()),
    ];
    args.extend(protos);
    let protoc = python(args, Duration::from_secs(60)).await;
    assert!(
        protoc.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&protoc.stderr)
    );
    assert!(out.join("lgsp/v1/exchange_pb2_grpc.py").exists());
}

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

//! A client in another language tells a write's outcomes apart: Python's
//! `grpcio`, with stubs generated from lgsp's proto files, writes to a
//! registry over mTLS (tests/python/apply_registry.py) and reads the status
//! code and `lgsp-outcome` as the proto documents them.

use lgsp_tests::cluster::{Cluster, free_addr, write_creds};
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
            "Python's gRPC packages are missing ({}); run `pip install grpcio grpcio-tools`",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run python3 ({e}); install Python 3 with grpcio"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_tells_applied_refused_and_never_sent_writes_apart() {
    require_grpcio();
    let stubs = tempfile::tempdir().expect("tempdir");
    let root = workspace_root();
    let mut args = vec![
        "-m".to_owned(),
        "grpc_tools.protoc".to_owned(),
        format!("-I{}", root.join("proto").display()),
        format!("--python_out={}", stubs.path().display()),
        format!("--grpc_python_out={}", stubs.path().display()),
    ];
    for proto in ["catalog", "registry"] {
        args.push(
            root.join(format!("proto/lgsp/v1/{proto}.proto"))
                .display()
                .to_string(),
        );
    }
    let protoc = python(args, Duration::from_secs(60)).await;
    assert!(
        protoc.status.success(),
        "{}",
        String::from_utf8_lossy(&protoc.stderr)
    );

    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = cluster.servers[&leader].client_addr().to_string();
    let tls = cluster.pki.dir.path().join("python-admin");
    write_creds(&tls, &cluster.admin);
    let out = python(
        vec![
            root.join("tests/python/apply_registry.py")
                .display()
                .to_string(),
            "--stubs".into(),
            stubs.path().display().to_string(),
            "--target".into(),
            target.replace("127.0.0.1", "localhost"),
            "--tls-dir".into(),
            tls.display().to_string(),
            "--code".into(),
            "000.00.12.H62".into(),
            "--closed".into(),
            format!("localhost:{}", free_addr().port()),
        ],
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "apply_registry.py failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let [first, again, cas, closed] = steps.as_slice() else {
        panic!("four writes, not: {stdout}");
    };
    assert_eq!(first["conclusion"], "applied");
    // The same write under the same key: answered, not applied again.
    assert_eq!(again["conclusion"], "applied");
    assert_eq!(again["revision"], first["revision"]);
    assert_eq!(cas["code"], "ABORTED");
    assert_eq!(cas["outcome"], "refused");
    assert_eq!(cas["mod_revision"], first["revision"].to_string());
    assert_eq!(cas["conclusion"], "certainly not applied");
    assert_eq!(closed["code"], "UNAVAILABLE");
    assert!(closed["outcome"].is_null(), "{closed}");
    assert_eq!(closed["conclusion"], "never sent");
    cluster.shutdown().await;
}

//! A client in another language tells a write's outcomes apart: Python's
//! `grpcio`, with stubs generated from lgsp's proto files, writes to a
//! registry over mTLS (tests/python/apply_registry.py) and reads the status
//! code and `lgsp-outcome` as the proto documents them.

use lgsp_tests::cluster::{Cluster, free_addr, write_creds};
use lgsp_tests::python::{generate_stubs, python, require_grpcio, workspace_root};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_tells_applied_refused_and_never_sent_writes_apart() {
    require_grpcio();
    let stubs = tempfile::tempdir().expect("tempdir");
    generate_stubs(stubs.path()).await;
    let root = workspace_root();

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

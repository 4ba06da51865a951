//! A node whose certificate files cannot work stops at once with the usage
//! exit code (2), which its systemd unit does not restart, and says what to
//! fix: a missing certificate, another node's certificate, a certificate
//! the CA in `ca.pem` did not sign.

use lgsp_certs::{CertificateAuthority, Role, TlsFiles};
use lgsp_tests::TRUST_DOMAIN;
use lgsp_tests::province::{A, NodeProcess, Province};
use std::time::Duration;

/// Runs `lgsp node start` on `node`'s configuration for at most 15 s;
/// returns its exit code (None if it was still running) and its stderr.
async fn start(node: &NodeProcess) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(lgsp_tests::lgsp_bin())
        .args([
            "node",
            "start",
            "--config",
            node.config_path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(15), child).await {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => (None, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_that_cannot_work_stop_the_node_with_the_usage_code() {
    let mut province = Province::start().await;
    province
        .register_agency(A, "Sở Tư pháp tỉnh Vĩnh Phúc")
        .await;
    let node = province.prepare_node(A, "node-a", "");
    let tls = TlsFiles::in_dir(&node.dir.join("tls"));

    // Another node's certificate and key: the identity is not node.toml's.
    let good_cert = std::fs::read(&tls.cert).unwrap();
    let good_key = std::fs::read(&tls.key).unwrap();
    let (other, _) = province.issue(A, Role::Node, "node-z");
    TlsFiles::write(&node.dir.join("tls"), &other).unwrap();
    let (code, stderr) = start(&node).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("node.toml says"), "{stderr}");

    // A certificate another CA signed (same trust domain, same name).
    let dir = tempfile::tempdir().unwrap();
    let impostor =
        CertificateAuthority::init(&dir.path().join("ca"), TRUST_DOMAIN, "CA tỉnh thử", 30)
            .unwrap();
    std::fs::write(&tls.cert, &good_cert).unwrap();
    std::fs::write(&tls.key, &good_key).unwrap();
    std::fs::write(&tls.ca, impostor.cert_pem()).unwrap();
    let (code, stderr) = start(&node).await;
    assert_eq!(
        code,
        Some(2),
        "the node kept running or failed otherwise: {stderr}"
    );
    assert!(stderr.contains("was not signed by the CA in"), "{stderr}");

    // No certificate at all.
    std::fs::remove_file(&tls.cert).unwrap();
    let (code, stderr) = start(&node).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TLS files are not ready"), "{stderr}");
}

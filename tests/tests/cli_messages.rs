//! What `lgsp` says when things go wrong around it: a reader that stops
//! reading, a registry that is not there, a revocation that still needs
//! publishing.

use lgsp_tests::{lgsp, lgsp_bin};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = lgsp(args);
    assert!(
        out.status.success(),
        "lgsp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut csv = String::from("ma,ten\n");
    for i in 0..20_000 {
        csv.push_str(&format!(
            "{i:08},Nguyễn Văn Một Hai Ba Bốn Năm Sáu Bảy {i}\n"
        ));
    }
    let file = dir.path().join("lon.csv");
    std::fs::write(&file, csv).unwrap();
    ok(&[
        "dataset",
        "import",
        "--data-dir",
        p(&data),
        "--service",
        "lon",
        "--file",
        p(&file),
        "--key",
        "ma",
    ]);
    // `lgsp dataset query ... | head -1`: read one line, then close the pipe.
    for command in [
        vec![
            "dataset",
            "query",
            "--data-dir",
            p(&data),
            "--service",
            "lon",
            "--limit",
            "20000",
        ],
        vec!["dataset", "list", "--data-dir", p(&data)],
    ] {
        let mut child = Command::new(lgsp_bin())
            .args(&command)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{command:?}: exit {:?}: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{command:?}: {stderr}");
    }
}

#[test]
fn an_unreachable_registry_is_named_and_the_cause_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let admin = dir.path().join("admin");
    ok(&["ca", "init", "--dir", p(&ca), "--trust-domain", "x.gov.vn"]);
    ok(&[
        "ca",
        "issue",
        "--ca",
        p(&ca),
        "--role",
        "admin",
        "--agency",
        "000.00.12.H62",
        "--name",
        "adm",
        "--out",
        p(&admin),
    ]);
    let out = lgsp(&[
        "service",
        "list",
        "--registry",
        "127.0.0.1:1",
        "--tls-dir",
        p(&admin),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:1"),
        "the address tried is named: {stderr}"
    );
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "the cause is said once: {stderr}"
    );

    // A revocation says how to make peers refuse the certificate.
    let serial = ok(&["ca", "show", p(&admin.join("cert.pem"))]);
    let serial = serial
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial:"))
        .map(|s| s.trim().to_owned())
        .expect("ca show prints the serial");
    let said = ok(&["ca", "revoke", "--ca", p(&ca), "--serial", &serial]);
    assert!(said.contains("lgsp ca publish-crl"), "{said}");
}

//! lgsp has no province of its own: `lgsp node init` takes the province's
//! trust domain from the provincial CA's certificate (or as typed), never
//! from a built-in name.

use lgsp_tests::{lgsp, stderr_lines};
use std::path::Path;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn init(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "node",
        "init",
        "--agency",
        "000.00.12.H25",
        "--name",
        "node-1",
        "--dir",
        p(dir),
    ];
    args.extend(extra);
    lgsp(&args)
}

#[test]
fn node_init_takes_the_trust_domain_from_the_ca_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let made = lgsp(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        "tinh-mau.gov.vn",
        "--name",
        "CA tỉnh mẫu",
    ]);
    assert!(made.status.success(), "{made:?}");
    let ca_crt = ca.join("ca.crt");

    let dir = tmp.path().join("node");
    let out = init(&dir, &["--ca", p(&ca_crt)]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("spiffe://tinh-mau.gov.vn/agency/000.00.12.H25/node/node-1"),
        "{stdout}"
    );
    // The CA certificate goes where the node will look for it.
    assert_eq!(
        std::fs::read(dir.join("tls/ca.pem")).unwrap(),
        std::fs::read(&ca_crt).unwrap()
    );
    let csr = lgsp(&["ca", "show", p(&dir.join("tls/csr.pem"))]);
    assert!(
        String::from_utf8_lossy(&csr.stdout).contains("spiffe://tinh-mau.gov.vn/"),
        "{csr:?}"
    );

    // A typed trust domain that is not the CA's is refused, as usage.
    let other = init(
        &tmp.path().join("node-2"),
        &["--ca", p(&ca_crt), "--trust-domain", "khac.gov.vn"],
    );
    assert_eq!(other.status.code(), Some(2), "{other:?}");
    let errors = stderr_lines(&other);
    assert!(
        errors[0].contains("khac.gov.vn") && errors[0].contains("tinh-mau.gov.vn"),
        "{errors:?}"
    );

    // A node's certificate is not a CA certificate.
    let not_ca = init(
        &tmp.path().join("node-3"),
        &["--ca", p(&dir.join("tls/csr.pem"))],
    );
    assert_eq!(not_ca.status.code(), Some(2), "{not_ca:?}");
}

#[test]
fn node_init_without_a_province_is_refused_saying_what_to_give() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let out = init(&dir, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let errors = stderr_lines(&out);
    assert!(
        errors.len() == 1 && errors[0].contains("--ca") && errors[0].contains("--trust-domain"),
        "{errors:?}"
    );
    assert!(!dir.join("tls/key.pem").exists(), "nothing is written");

    let typed = init(&dir, &["--trust-domain", "tinh-mau.gov.vn"]);
    assert!(typed.status.success(), "{typed:?}");
    assert!(
        String::from_utf8_lossy(&typed.stdout).contains("spiffe://tinh-mau.gov.vn/"),
        "{typed:?}"
    );
}

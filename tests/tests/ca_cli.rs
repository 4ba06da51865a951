//! `lgsp ca` as an operator runs it: real processes, files on disk, and the
//! certificates they make used in a real mTLS handshake.

use lgsp_certs::tls::client_endpoint;
use lgsp_certs::{Credentials, Role, TlsFiles};
use lgsp_tests::{Pki, TRUST_DOMAIN, WhoAmIServer, lgsp, stderr_lines, who_am_i};
use std::path::Path;

fn ok(args: &[&str]) -> String {
    let out = lgsp(args);
    assert!(
        out.status.success(),
        "lgsp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every file under `dir`, with its content.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            all.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            ));
        }
    }
    all.sort();
    all
}

#[tokio::test]
async fn csr_flow_completes_a_handshake_and_the_ca_never_sees_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let node = tmp.path().join("node");
    ok(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        TRUST_DOMAIN,
        "--name",
        "CA tỉnh Vĩnh Phúc",
    ]);
    ok(&[
        "ca",
        "csr",
        "--role",
        "node",
        "--agency",
        "000.00.12.H62",
        "--name",
        "node-1",
        "--display-name",
        "Sở Tư pháp tỉnh Vĩnh Phúc",
        "--trust-domain",
        TRUST_DOMAIN,
        "--out",
        p(&node),
    ]);
    let signed = node.join("cert.pem");
    ok(&[
        "ca",
        "sign",
        "--ca",
        p(&ca),
        "--csr",
        p(&node.join("csr.pem")),
        "--out",
        p(&signed),
    ]);
    std::fs::copy(ca.join("ca.crt"), node.join("ca.pem")).unwrap();

    let key = std::fs::read(node.join("key.pem")).unwrap();
    for (name, content) in snapshot(&ca) {
        assert!(
            !content.windows(key.len()).any(|w| w == key.as_slice()),
            "the CA directory holds the node key in {name}"
        );
        assert!(
            !name.contains("node") && name != "key.pem",
            "unexpected file {name} in the CA directory"
        );
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(node.join("key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The display name keeps its diacritics through CSR, signing and show.
    let shown = ok(&["ca", "show", p(&signed)]);
    assert!(shown.contains("O=Sở Tư pháp tỉnh Vĩnh Phúc"), "{shown}");
    assert!(shown.contains("spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1"));

    // A server with a certificate from the same CA accepts the signed one.
    let mut server_ca = lgsp_certs::CertificateAuthority::open(&ca).unwrap();
    let spec = Pki::new(TRUST_DOMAIN).spec("000.00.00.H62", Role::Registry, "reg-1");
    let issued = server_ca.issue(&spec).unwrap();
    let srv = WhoAmIServer::start(
        Credentials::from_pem(&issued.cert_pem, &issued.key_pem, server_ca.cert_pem()).unwrap(),
        TRUST_DOMAIN,
    )
    .await;
    let creds = Credentials::load(&TlsFiles::in_dir(&node)).unwrap();
    let id = who_am_i(client_endpoint(&srv.addr.to_string(), &creds, None).unwrap())
        .await
        .unwrap();
    assert_eq!(id.name, "node-1");
    srv.stop().await;
}

#[test]
fn issued_certificates_pass_openssl_verify_and_show_the_spiffe_uri() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: openssl is not installed (apt-get install openssl)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("hub");
    ok(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    let printed = ok(&[
        "ca",
        "issue",
        "--ca",
        p(&ca),
        "--role",
        "hub",
        "--agency",
        "000.00.00.H62",
        "--name",
        "hub",
        "--dns",
        "hub.vinhphuc.gov.vn",
        "--ip",
        "10.0.0.5",
        "--out",
        p(&out),
    ]);
    assert!(printed.contains("spiffe://vinhphuc.gov.vn/agency/000.00.00.H62/hub/hub"));
    let verify = std::process::Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            p(&ca.join("ca.crt")),
            p(&out.join("cert.pem")),
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", p(&out.join("cert.pem"))])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("URI:spiffe://vinhphuc.gov.vn/agency/000.00.00.H62/hub/hub"),
        "{text}"
    );
    assert!(text.contains("DNS:hub.vinhphuc.gov.vn"), "{text}");
    assert!(text.contains("IP Address:10.0.0.5"), "{text}");

    // Revocation: the CRL openssl reads lists the serial lgsp printed.
    let serial = printed
        .split("serial ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    ok(&[
        "ca",
        "revoke",
        "--ca",
        p(&ca),
        "--serial",
        serial,
        "--reason",
        "superseded",
    ]);
    ok(&[
        "ca",
        "crl",
        "--ca",
        p(&ca),
        "--out",
        p(&tmp.path().join("crl.pem")),
    ]);
    let crl = std::process::Command::new("openssl")
        .args([
            "crl",
            "-noout",
            "-text",
            "-CAfile",
            p(&ca.join("ca.crt")),
            "-in",
        ])
        .arg(tmp.path().join("crl.pem"))
        .output()
        .unwrap();
    let crl_text = String::from_utf8_lossy(&crl.stdout).to_uppercase();
    assert!(crl.status.success());
    assert!(crl_text.contains(&serial.to_uppercase()), "{crl_text}");
}

/// Runs `lgsp` expecting a refusal: non-zero exit, exactly one `error:` line
/// that contains `needle`, and nothing written under `watched`.
fn refused(args: &[&str], needle: &str, watched: &Path) {
    let before = snapshot(watched);
    let out = lgsp(args);
    assert!(!out.status.success(), "lgsp {args:?} succeeded");
    let errors: Vec<String> = stderr_lines(&out)
        .into_iter()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got {errors:?}");
    assert!(
        errors[0].contains(needle),
        "{:?} lacks {needle:?}",
        errors[0]
    );
    assert_eq!(
        snapshot(watched),
        before,
        "lgsp {args:?} changed {}",
        watched.display()
    );
}

#[test]
fn bad_input_gives_one_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    let out = tmp.path().join("out");
    let out_s = p(&out);

    refused(
        &[
            "ca",
            "issue",
            "--ca",
            p(&ca),
            "--role",
            "node",
            "--agency",
            "000.00.12.h62",
            "--name",
            "n",
            "--out",
            out_s,
        ],
        "--agency",
        &ca,
    );
    refused(
        &[
            "ca",
            "issue",
            "--ca",
            p(&ca),
            "--role",
            "mayor",
            "--agency",
            "000.00.12.H62",
            "--name",
            "n",
            "--out",
            out_s,
        ],
        "unknown role \"mayor\"",
        &ca,
    );
    let garbage = tmp.path().join("garbage.csr");
    std::fs::write(&garbage, "this is not a CSR\n").unwrap();
    refused(
        &[
            "ca",
            "sign",
            "--ca",
            p(&ca),
            "--csr",
            p(&garbage),
            "--out",
            out_s,
        ],
        "not a valid certificate signing request",
        &ca,
    );
    refused(
        &[
            "ca",
            "issue",
            "--ca",
            p(&tmp.path().join("no-such-ca")),
            "--role",
            "node",
            "--agency",
            "000.00.12.H62",
            "--name",
            "n",
            "--out",
            out_s,
        ],
        "no CA in",
        tmp.path(),
    );
    refused(
        &[
            "ca",
            "init",
            "--dir",
            p(&ca),
            "--trust-domain",
            TRUST_DOMAIN,
        ],
        "refusing to overwrite",
        &ca,
    );
    refused(
        &["ca", "revoke", "--ca", p(&ca), "--serial", "abcdef"],
        "was not issued by this CA",
        &ca,
    );
    assert!(!out.exists(), "{} was created", out.display());
    // Usage errors exit with 2, naming the flag.
    let usage = lgsp(&[
        "ca",
        "csr",
        "--role",
        "node",
        "--agency",
        "!",
        "--name",
        "n",
        "--trust-domain",
        TRUST_DOMAIN,
        "--out",
        out_s,
    ]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn csr_asking_for_a_malformed_or_foreign_identity_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    let out = tmp.path().join("cert.pem");
    for (uri, needle) in [
        (
            "spiffe://vinhphuc.gov.vn/agency/000 00/node/n",
            "malformed SPIFFE ID",
        ),
        (
            "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/mayor/n",
            "malformed SPIFFE ID",
        ),
        (
            "spiffe://hanoi.gov.vn/agency/000.00.12.H62/node/n",
            "is not this CA's",
        ),
    ] {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let file = tmp.path().join("evil.csr");
        std::fs::write(&file, csr).unwrap();
        refused(
            &[
                "ca",
                "sign",
                "--ca",
                p(&ca),
                "--csr",
                p(&file),
                "--out",
                p(&out),
            ],
            needle,
            &ca,
        );
        assert!(!out.exists());
    }
}

#[test]
fn ca_sign_shows_the_request_and_refuses_a_second_live_identity_or_a_new_privileged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        TRUST_DOMAIN,
        "--name",
        "CA tỉnh Vĩnh Phúc",
    ]);
    let csr = |role: &str, agency: &str, name: &str, dir: &str| {
        let out = tmp.path().join(dir);
        ok(&[
            "ca",
            "csr",
            "--role",
            role,
            "--agency",
            agency,
            "--name",
            name,
            "--trust-domain",
            TRUST_DOMAIN,
            "--out",
            p(&out),
        ]);
        out.join("csr.pem")
    };
    let sign = |csr: &Path, out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = vec!["ca", "sign", "--ca", p(&ca), "--csr", p(csr)];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: &[String]| lgsp(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // The first certificate of a node: shown, then signed.
    let first = csr("node", "000.00.12.H62", "node-1", "first");
    let shown = ok(&sign(&first, "first.pem", &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(shown.contains("About to sign:"), "{shown}");
    assert!(
        shown.contains("spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1"),
        "{shown}"
    );

    // A second live certificate for the same node: refused, unless it renews.
    let second = csr("node", "000.00.12.H62", "node-1", "second");
    // Refused with one error line, and the CA directory left as it was.
    let second_args = sign(&second, "second.pem", &[]);
    refused(
        &second_args.iter().map(String::as_str).collect::<Vec<_>>(),
        "already has a live certificate",
        &ca,
    );
    assert!(!tmp.path().join("second.pem").exists());
    assert!(
        run(&sign(&second, "second.pem", &["--renew"]))
            .status
            .success()
    );

    // A new registry identity: refused, unless said to be intended.
    let registry = csr("registry", "000.00.00.H62", "registry-9", "registry");
    let registry_args = sign(&registry, "registry.pem", &[]);
    refused(
        &registry_args.iter().map(String::as_str).collect::<Vec<_>>(),
        "--privileged",
        &ca,
    );
    assert!(
        run(&sign(&registry, "registry.pem", &["--privileged"]))
            .status
            .success()
    );
}

#[test]
fn the_ca_signs_only_names_its_policy_vouches_for_and_adds_none_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    let mut n = 0;
    let mut csr = |agency: &str, hosts: &[&str]| {
        n += 1;
        let out = tmp.path().join(format!("csr-{n}"));
        let name = format!("node-{n}");
        let mut args = vec![
            "ca",
            "csr",
            "--role",
            "node",
            "--agency",
            agency,
            "--name",
            &name,
            "--trust-domain",
            TRUST_DOMAIN,
            "--out",
            p(&out),
        ];
        args.extend(hosts);
        ok(&args);
        out.join("csr.pem")
    };
    let sign = |csr: &Path, extra: &[&str]| {
        let out = csr.with_file_name("cert.pem");
        let mut args = vec!["ca", "sign", "--ca", p(&ca), "--csr", p(csr)];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    const STP: &str = "000.00.12.H62";
    const CA_POLICE: &str = "000.00.13.H62";

    // Nothing asked, nothing added: no localhost, no 127.0.0.1.
    let plain = csr(STP, &[]);
    let shown = ok(&["ca", "show", p(&plain)]);
    assert!(
        !shown.contains("localhost") && !shown.contains("127.0.0.1"),
        "{shown}"
    );
    ok(&args(&sign(&plain, &[])));
    let cert = ok(&["ca", "show", p(&plain.with_file_name("cert.pem"))]);
    assert!(
        !cert.contains("localhost") && !cert.contains("127.0.0.1"),
        "{cert}"
    );

    // A name nobody vouched for: refused, naming it and how to allow it.
    let evil = csr(STP, &["--dns", "api.bocongan.gov.vn"]);
    refused(&args(&sign(&evil, &["--yes"])), "api.bocongan.gov.vn", &ca);
    refused(&args(&sign(&evil, &[])), "lgsp ca policy allow", &ca);

    // Allowed suffixes per agency: subdomains of the suffix only, and only
    // for that agency.
    ok(&[
        "ca",
        "policy",
        "allow",
        "--ca",
        p(&ca),
        "--agency",
        STP,
        "--dns-suffix",
        ".stp.vinhphuc.gov.vn",
    ]);
    let good = csr(STP, &["--dns", "node1.stp.vinhphuc.gov.vn"]);
    ok(&args(&sign(&good, &[])));
    for (agency, name) in [
        (STP, "xstp.vinhphuc.gov.vn"),
        (STP, "stp.vinhphuc.gov.vn.evil.example"),
        (CA_POLICE, "node1.stp.vinhphuc.gov.vn"),
    ] {
        let bad = csr(agency, &["--dns", name]);
        refused(&args(&sign(&bad, &[])), name, &ca);
    }

    // IP addresses: only listed ones, or with an explicit --allow-ip.
    let ip = csr(
        STP,
        &["--dns", "node1.stp.vinhphuc.gov.vn", "--ip", "10.0.0.7"],
    );
    refused(&args(&sign(&ip, &[])), "10.0.0.7", &ca);
    ok(&args(&sign(&ip, &["--allow-ip"])));
    ok(&[
        "ca",
        "policy",
        "allow",
        "--ca",
        p(&ca),
        "--agency",
        STP,
        "--ip",
        "10.0.0.8",
    ]);
    let listed = csr(STP, &["--ip", "10.0.0.8"]);
    ok(&args(&sign(&listed, &[])));
    let policy = ok(&["ca", "policy", "show", "--ca", p(&ca)]);
    assert!(
        policy.contains(".stp.vinhphuc.gov.vn") && policy.contains("10.0.0.8"),
        "{policy}"
    );
}

#[test]
fn ca_show_gives_times_on_the_provinces_clocks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&[
        "ca",
        "init",
        "--dir",
        p(&ca),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    let shown = ok(&["ca", "show", p(&ca.join("ca.crt"))]);
    assert!(
        shown.contains("Valid from:")
            && shown
                .lines()
                .any(|l| l.starts_with("Valid until:") && l.contains("+07:00")),
        "{shown}"
    );
    let utc = ok(&["ca", "show", p(&ca.join("ca.crt")), "--time-zone", "UTC"]);
    assert!(
        utc.lines()
            .any(|l| l.starts_with("Valid from:") && l.contains(" UTC")),
        "{utc}"
    );
    let out = lgsp(&["ca", "show", p(&ca.join("ca.crt")), "--time-zone", "Hanoi"]);
    assert_eq!(out.status.code(), Some(2));
}

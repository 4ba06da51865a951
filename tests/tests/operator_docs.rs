//! The README's "Running an agency node" section, command by command, as an
//! agency's IT team and the provincial IT department would type them: from
//! `lgsp node init` to a served dataset and a successful cross-agency call,
//! the sharing log verified and exported, and a certificate revoked.

use lgsp_tests::cluster::{PROVINCE, free_addr};
use lgsp_tests::{TRUST_DOMAIN, lgsp, lgsp_bin};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(lgsp_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lgsp {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lgsp node init`, the CSR signed with `lgsp ca sign`, ports set; returns the node dir.
fn init_node(
    root: &Path,
    ca: &Path,
    agency: &str,
    registry: &str,
    provider: &str,
    apps: &str,
    services: &str,
) -> std::path::PathBuf {
    let dir = root.join(format!("node-{agency}"));
    ok(
        &[
            "node",
            "init",
            "--agency",
            agency,
            "--name",
            "node-1",
            "--dir",
            p(&dir),
            "--registry",
            registry,
            "--trust-domain",
            TRUST_DOMAIN,
            "--display-name",
            "Sở Tư pháp tỉnh Vĩnh Phúc",
        ],
        &[],
    );
    ok(&["ca", "show", p(&dir.join("tls/csr.pem"))], &[]);
    ok(
        &[
            "ca",
            "sign",
            "--ca",
            p(ca),
            "--csr",
            p(&dir.join("tls/csr.pem")),
            "--out",
            p(&dir.join("tls/cert.pem")),
        ],
        &[],
    );
    std::fs::copy(ca.join("ca.crt"), dir.join("tls/ca.pem")).unwrap();
    let toml = std::fs::read_to_string(dir.join("node.toml"))
        .unwrap()
        .replace(
            "listen = \"0.0.0.0:7301\"",
            &format!("listen = \"{provider}\""),
        )
        .replace(
            "listen = \"127.0.0.1:7401\"",
            &format!("listen = \"{apps}\""),
        );
    std::fs::write(dir.join("node.toml"), format!("{toml}\n{services}")).unwrap();
    dir
}

fn start(dir: &Path) -> Node {
    let log = std::fs::File::create(dir.join("node.log")).unwrap();
    Node(
        Command::new(lgsp_bin())
            .args(["node", "start", "--config", p(&dir.join("node.toml"))])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_follows_the_readme_from_node_init_to_a_cross_agency_call() {
    // The province, made with the CLI alone: a CA, a registry server, an admin.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let ca = root.join("ca");
    ok(
        &[
            "ca",
            "init",
            "--dir",
            p(&ca),
            "--trust-domain",
            TRUST_DOMAIN,
            "--name",
            "CA tỉnh Vĩnh Phúc",
        ],
        &[],
    );
    let registry_dir = root.join("registry");
    ok(
        &[
            "ca",
            "issue",
            "--ca",
            p(&ca),
            "--role",
            "registry",
            "--agency",
            PROVINCE,
            "--name",
            "registry-1",
            "--out",
            p(&registry_dir.join("tls")),
        ],
        &[],
    );
    ok(
        &[
            "ca",
            "issue",
            "--ca",
            p(&ca),
            "--role",
            "admin",
            "--agency",
            PROVINCE,
            "--name",
            "admin",
            "--out",
            p(&root.join("admin-tls")),
        ],
        &[],
    );
    let (client, peer) = (free_addr().to_string(), free_addr().to_string());
    let registry_log = std::fs::File::create(root.join("registry.log")).unwrap();
    let _registry = Node(
        Command::new(lgsp_bin())
            .args([
                "registry",
                "start",
                "--id",
                "1",
                "--listen",
                &client,
                "--peer-listen",
                &peer,
                "--peers",
                &format!("1={peer}/{client}"),
                "--data-dir",
                p(&registry_dir.join("data")),
                "--tls-dir",
                p(&registry_dir.join("tls")),
            ])
            .env("RUST_LOG", "warn")
            .stdout(registry_log.try_clone().unwrap())
            .stderr(registry_log)
            .spawn()
            .unwrap(),
    );
    let admin_tls = root.join("admin-tls");
    let admin = [
        ("LGSP_REGISTRY", client.as_str()),
        ("LGSP_TLS_DIR", p(&admin_tls)),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lgsp(&[
        "registry",
        "status",
        "--registry",
        &client,
        "--tls-dir",
        p(&root.join("admin-tls")),
    ])
    .status
    .success()
    {
        assert!(Instant::now() < deadline, "registry did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok(
        &[
            "agency",
            "register",
            "--code",
            "000.00.12.H62",
            "--name",
            "Sở Tư pháp tỉnh Vĩnh Phúc",
        ],
        &admin,
    );
    ok(
        &[
            "agency",
            "register",
            "--code",
            "000.00.13.H62",
            "--name",
            "UBND huyện Tam Dương",
        ],
        &admin,
    );

    // Agency A (Sở Tư pháp): node init, CSR signed, dataset imported with a schema, node started.
    let a = init_node(
        &root,
        &ca,
        "000.00.12.H62",
        &client,
        &free_addr().to_string(),
        &free_addr().to_string(),
        "[[services]]\nname = \"ho-tich\"\nkind = \"dataset\"\n",
    );
    std::fs::write(
        root.join("ho-tich.csv"),
        "so_dinh_danh,ho_ten,noi_sinh\n001099012345,Nguyễn Thị Hương,Vĩnh Yên\n001088054321,Trần Văn Đức,Phúc Yên\n",
    )
    .unwrap();
    std::fs::write(
        root.join("ho-tich.schema.json"),
        r#"{"type":"object","properties":{"so_dinh_danh":{"type":"string","maxLength":12},"ho_ten":{"type":"string"},"noi_sinh":{"type":"string"}},"required":["so_dinh_danh","ho_ten"]}"#,
    )
    .unwrap();
    ok(
        &[
            "dataset",
            "import",
            "--data-dir",
            p(&a.join("data")),
            "--service",
            "ho-tich",
            "--file",
            p(&root.join("ho-tich.csv")),
            "--key",
            "so_dinh_danh",
            "--schema",
            p(&root.join("ho-tich.schema.json")),
        ],
        &[],
    );
    let _node_a = start(&a);
    let a_tls_dir = a.join("tls");
    let a_tls = [
        ("LGSP_REGISTRY", client.as_str()),
        ("LGSP_TLS_DIR", p(&a_tls_dir)),
    ];
    // The node registers itself; then the agency publishes and grants.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = lgsp(&[
            "service",
            "publish",
            "--id",
            "000.00.12.H62/ho-tich",
            "--kind",
            "dataset",
            "--node",
            "node-1",
            "--description",
            "Hộ tịch",
            "--registry",
            &client,
            "--tls-dir",
            p(&a.join("tls")),
        ]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok(
        &[
            "access",
            "grant",
            "--service",
            "000.00.12.H62/ho-tich",
            "--consumer",
            "000.00.13.H62",
            "--until",
            "2099-12-31",
            "--reason",
            "Công văn số 123/UBND",
        ],
        // Granting directly is the provincial admin's tool; agencies use
        // `lgsp requests` (tests/tests/access_procedure.rs).
        &admin,
    );
    let grants = ok(
        &["access", "list", "--service", "000.00.12.H62/ho-tich"],
        &a_tls,
    );
    assert!(
        grants.contains("000.00.13.H62") && grants.contains("active"),
        "{grants}"
    );

    // Agency B (Tam Dương): its node, and its application's call.
    let b_apps = free_addr().to_string();
    let b = init_node(
        &root,
        &ca,
        "000.00.13.H62",
        &client,
        &free_addr().to_string(),
        &b_apps,
        "",
    );
    let _node_b = start(&b);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let out = lgsp(&[
            "call",
            "000.00.12.H62/ho-tich",
            "--op",
            "get",
            "--param",
            "key=001099012345",
            "--node",
            &b_apps,
        ]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "call failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(b.join("node.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(answer.contains("Nguyễn Thị Hương"), "{answer}");
    let listed = ok(
        &[
            "call",
            "000.00.12.H62/ho-tich",
            "--query",
            "--param",
            "noi_sinh=Phúc Yên",
            "--fields",
            "ho_ten",
            "--node",
            &b_apps,
        ],
        &[],
    );
    assert!(
        listed.contains("Trần Văn Đức") && !listed.contains("Nguyễn Thị Hương"),
        "{listed}"
    );

    // The sharing log: verified and exported (after the next seal).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = a.join("data/sharing-log/sharing-log.jsonl");
    let verified = ok(
        &[
            "audit",
            "verify",
            "--log",
            p(&log),
            "--cert",
            p(&a.join("tls/cert.pem")),
        ],
        &[],
    );
    assert!(verified.contains("sharing log OK"), "{verified}");
    let exported = root.join("export.jsonl");
    ok(
        &[
            "audit",
            "export",
            "--log",
            p(&log),
            "--key",
            p(&a.join("tls/key.pem")),
            "--cert",
            p(&a.join("tls/cert.pem")),
            "--from",
            "2000-01-01",
            "--out",
            p(&exported),
        ],
        &[],
    );
    assert!(
        std::fs::read_to_string(&exported)
            .unwrap()
            .contains("000.00.13.H62")
    );

    // The provincial IT department revokes B's node certificate and publishes
    // the CRL: B's calls are refused from then on, without any restart.
    let serial = ok(&["ca", "show", p(&b.join("tls/cert.pem"))], &[])
        .lines()
        .find_map(|l| l.strip_prefix("Serial:").map(|s| s.trim().to_owned()))
        .unwrap();
    ok(
        &[
            "ca",
            "revoke",
            "--ca",
            p(&ca),
            "--serial",
            &serial,
            "--reason",
            "key-compromise",
        ],
        &[],
    );
    ok(&["ca", "publish-crl", "--ca", p(&ca)], &admin);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lgsp(&[
            "call",
            "000.00.12.H62/ho-tich",
            "--op",
            "get",
            "--param",
            "key=001099012345",
            "--node",
            &b_apps,
        ]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("revoked") || err.contains("connection closed"),
                "{err}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still served 5 s after the CRL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

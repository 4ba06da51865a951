//! The registry as an operator drives it from the README: `lgsp registry`,
//! `lgsp agency` and `lgsp service` against real server processes.

use lgsp_certs::Role;
use lgsp_tests::cluster::{PROVINCE, free_addr, write_creds};
use lgsp_tests::process::ProcessCluster;
use lgsp_tests::{lgsp, stderr_lines};
use std::path::Path;
use std::process::Output;

fn run(registry: &str, tls: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--registry", registry, "--tls-dir", tls.to_str().unwrap()]);
    lgsp(&all)
}

fn ok(registry: &str, tls: &Path, args: &[&str]) -> String {
    let out = run(registry, tls, args);
    assert!(
        out.status.success(),
        "lgsp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_commands_work_as_the_readme_shows() {
    let mut cluster = ProcessCluster::start(3);
    cluster.leader().await;
    let registry = cluster
        .servers
        .iter()
        .map(|s| s.client.clone())
        .collect::<Vec<_>>()
        .join(",");
    let admin = cluster.pki.dir.path().join("admin-tls");
    write_creds(&admin, &cluster.admin);
    let (node_creds, _) = cluster.pki.issue("000.00.12.H62", Role::Node, "node-1");
    let node = cluster.pki.dir.path().join("node-tls");
    write_creds(&node, &node_creds);

    let status = ok(&registry, &admin, &["registry", "status"]);
    assert_eq!(status.matches("is leader").count(), 1, "{status}");
    assert_eq!(status.matches("is follower").count(), 2, "{status}");

    ok(
        &registry,
        &admin,
        &[
            "agency",
            "register",
            "--code",
            "000.00.12.H62",
            "--name",
            "Sở Tư pháp tỉnh Vĩnh Phúc",
            "--focal-name",
            "Nguyễn Văn An",
            "--focal-email",
            "an@stp.vinhphuc.gov.vn",
        ],
    );
    let agencies = ok(&registry, &node, &["agency", "list"]);
    assert!(agencies.contains("Sở Tư pháp tỉnh Vĩnh Phúc"), "{agencies}");
    assert!(agencies.contains("Nguyễn Văn An"), "{agencies}");

    // A write run again under the key an unknown outcome printed is not
    // made twice: it answers with the first run's revision. Without the
    // key, a run is a new write (this one a new revision of the record).
    let register = [
        "agency",
        "register",
        "--code",
        "000.00.14.H62",
        "--name",
        "Sở Y tế tỉnh Vĩnh Phúc",
        "--idempotency-key",
        "ffeeddccbbaa99887766554433221100",
    ];
    let first = ok(&registry, &admin, &register);
    assert!(first.contains("at revision"), "{first}");
    assert_eq!(ok(&registry, &admin, &register), first);
    let again = ok(&registry, &admin, &register[..register.len() - 2]);
    assert_ne!(again, first, "a run without the key is a write of its own");

    // An online service names the node that serves it; the CLI says so
    // before asking the registry.
    let publish = [
        "service",
        "publish",
        "--id",
        "000.00.12.H62/ho-tich",
        "--kind",
        "dataset",
        "--description",
        "Hộ tịch: khai sinh, kết hôn",
    ];
    let no_node = run(&registry, &node, &publish);
    assert_eq!(no_node.status.code(), Some(2), "{no_node:?}");
    let errors = stderr_lines(&no_node);
    assert!(
        errors.len() == 1 && errors[0].contains("--node is missing"),
        "{errors:?}"
    );
    // The registry decides whether the node exists, at apply time: before
    // node-1 has registered itself, the refusal says to start it.
    let with_node: Vec<&str> = publish
        .iter()
        .copied()
        .chain(["--node", "node-1"])
        .collect();
    let unregistered = run(&registry, &node, &with_node);
    assert_eq!(unregistered.status.code(), Some(1), "{unregistered:?}");
    let errors = stderr_lines(&unregistered);
    assert!(
        errors.len() == 1
            && errors[0].contains("has not registered")
            && errors[0].contains("lgsp node start"),
        "{errors:?}"
    );
    // What `lgsp node start` does first: register the node.
    let endpoints: Vec<String> = cluster.servers.iter().map(|s| s.client.clone()).collect();
    let node_client = lgsp_registry::RegistryClient::new(&endpoints, &node_creds).expect("client");
    lgsp_registry::Catalog::new(node_client)
        .register_node(lgsp_proto::NodeRecord {
            agency_code: "000.00.12.H62".into(),
            name: "node-1".into(),
            endpoint: "node.stp.example.gov.vn:7301".into(),
            ..Default::default()
        })
        .await
        .expect("register node-1");
    ok(&registry, &node, &with_node);
    let found = ok(
        &registry,
        &node,
        &["service", "list", "--keyword", "KHAI SINH"],
    );
    assert!(found.contains("000.00.12.H62/ho-tich"), "{found}");
    let shown = ok(
        &registry,
        &node,
        &["service", "show", "000.00.12.H62/ho-tich"],
    );
    assert!(
        shown.contains("Hộ tịch: khai sinh, kết hôn") && shown.contains("active"),
        "{shown}"
    );

    // A node may not publish for another agency; the refusal says why, in one line.
    let refused = run(
        &registry,
        &node,
        &[
            "service",
            "publish",
            "--id",
            "000.00.13.H62/x",
            "--kind",
            "http",
            "--node",
            "node-1",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let errors = stderr_lines(&refused);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("may change only records of agency 000.00.12.H62"),
        "{errors:?}"
    );

    ok(
        &registry,
        &node,
        &["service", "withdraw", "000.00.12.H62/ho-tich"],
    );
    let withdrawn = ok(
        &registry,
        &node,
        &["service", "list", "--status", "withdrawn"],
    );
    assert!(withdrawn.contains("000.00.12.H62/ho-tich"), "{withdrawn}");
    let active = ok(&registry, &node, &["service", "list", "--status", "active"]);
    assert!(!active.contains("000.00.12.H62/ho-tich"), "{active}");

    // A fourth server joins through the CLI and catches up; then one leaves.
    let (client4, peer4) = (free_addr().to_string(), free_addr().to_string());
    let added = ok(
        &registry,
        &admin,
        &[
            "registry",
            "add-member",
            "--id",
            "4",
            "--peer-addr",
            &peer4,
            "--client-addr",
            &client4,
        ],
    );
    assert!(added.contains("member 4: learner"), "{added}");
    let dir4 = cluster.pki.dir.path().join("registry-4");
    let (creds4, _) = cluster.pki.issue(PROVINCE, Role::Registry, "registry-4");
    write_creds(&dir4.join("tls"), &creds4);
    let peers: String = cluster
        .servers
        .iter()
        .map(|s| format!("{}={}", s.id, s.peer))
        .collect::<Vec<_>>()
        .join(",");
    let mut joined = cluster.spawn_extra(
        4,
        &client4,
        vec![
            "registry".into(),
            "start".into(),
            "--id".into(),
            "4".into(),
            "--listen".into(),
            client4.clone(),
            "--peer-listen".into(),
            peer4.clone(),
            "--peers".into(),
            format!("{peers},4={peer4}"),
            "--data-dir".into(),
            dir4.join("data").display().to_string(),
            "--tls-dir".into(),
            dir4.join("tls").display().to_string(),
            "--join".into(),
        ],
        dir4,
    );
    let mut caught_up = false;
    for _ in 0..100 {
        let out = run(
            &client4,
            &node,
            &["service", "list", "--status", "withdrawn"],
        );
        if String::from_utf8_lossy(&out.stdout).contains("000.00.12.H62/ho-tich") {
            caught_up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(caught_up, "server 4 did not catch up:\n{}", joined.log());
    // The leader promotes the learner once it has caught up: wait for it.
    let promoted = std::time::Instant::now();
    while !ok(&registry, &admin, &["registry", "status"]).contains("member 4: voter") {
        assert!(
            promoted.elapsed() < std::time::Duration::from_secs(15),
            "server 4 was never promoted to voter:\n{}",
            joined.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let leader = cluster.leader().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap().to_string();
    // Under a key given by hand (as a retry after an unknown outcome
    // passes the key the first attempt printed), the same removal run
    // again answers with its first result instead of "not a member".
    let key = "00112233445566778899aabbccddeeff";
    let remove = [
        "registry",
        "remove-member",
        "--id",
        &victim,
        "--idempotency-key",
        key,
    ];
    let removed = ok(&registry, &admin, &remove);
    assert!(!removed.contains(&format!("member {victim}:")), "{removed}");
    assert!(removed.contains("member 4: voter"), "{removed}");
    assert_eq!(ok(&registry, &admin, &remove), removed);
    let bad_key = run(
        &registry,
        &admin,
        &[
            "registry",
            "remove-member",
            "--id",
            &victim,
            "--idempotency-key",
            "abc",
        ],
    );
    assert_eq!(bad_key.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad_key.stderr).contains("32 hex digits"),
        "{}",
        String::from_utf8_lossy(&bad_key.stderr)
    );
    joined.kill9();
}

#[test]
fn bad_registry_configuration_is_reported_at_once_with_a_usage_exit_code() {
    let out = lgsp(&[
        "registry",
        "start",
        "--id",
        "0",
        "--data-dir",
        "/nonexistent/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("id must be a positive number"), "{err}");
    assert!(err.contains("TLS files are missing"), "{err}");
    assert!(!Path::new("/nonexistent/x").exists());
}

//! Online backup as an operator runs it: `lgsp registry snapshot save`
//! against a three-server cluster of `lgsp registry start` processes while
//! writes go on, `lgsp registry snapshot restore` into three new data
//! directories, and a new cluster started from them that holds every write
//! acknowledged before the save. A backup changed after it was taken (its
//! SHA-256 recomputed) or carrying no signature is refused, and so is one
//! whose signer's certificate the province CA has revoked since.

use lgsp_proto::RecordKind;
use lgsp_proto::catalog_record::Value;
use lgsp_registry::{Catalog, RegistryClient};
use lgsp_tests::cluster::{free_addr, write_creds};
use lgsp_tests::lgsp;
use lgsp_tests::process::{ProcessCluster, ServerProcess, registry_start_args};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `file` (a signed backup) with `change` made to the catalog it holds, the
/// signature kept and the SHA-256 recomputed: what anyone who can write
/// the file can make. With `unsigned`, as an old (v1) file without a
/// signature instead.
fn forged(
    file: &[u8],
    unsigned: bool,
    change: impl FnOnce(&mut lgsp_proto::RegistryBackup),
) -> Vec<u8> {
    use prost::Message as _;
    use sha2::Digest as _;
    let path = std::path::Path::new("backup");
    let opened = lgsp_registry::backup::decode(path, file).expect("a backup");
    let mut backup = opened.backup;
    change(&mut backup);
    let mut out;
    if unsigned {
        out = lgsp_registry::backup::MAGIC_UNSIGNED.to_vec();
        out.extend_from_slice(&backup.encode_to_vec());
    } else {
        let mut signed = opened.signed.expect("signed");
        signed.backup = backup.encode_to_vec();
        out = lgsp_registry::backup::MAGIC.to_vec();
        out.extend_from_slice(&signed.encode_to_vec());
    }
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The province CA's current CRL, signed with `lgsp ca crl` into a file
/// beside the CA, as an operator makes one before a restore.
fn current_crl(cluster: &ProcessCluster) -> std::path::PathBuf {
    let out = cluster.pki.dir.path().join("crl.pem");
    let signed = lgsp(&[
        "ca",
        "crl",
        "--ca",
        cluster.pki.ca_dir().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    out
}

fn code(i: usize) -> String {
    format!("000.{:02}.{:02}.H62", 50 + i / 100, i % 100)
}

/// Registers agencies one after another until `stop`, recording each one
/// acknowledged (its code and the revision it was applied at).
async fn write_until(
    client: RegistryClient,
    acknowledged: Arc<Mutex<Vec<(String, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let catalog = Catalog::new(client);
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 5000 {
        let c = code(i);
        let name = format!("Sở số {i} tỉnh Vĩnh Phúc");
        if let Ok(revision) = catalog
            .register_agency(&c.parse().unwrap(), &name, None)
            .await
        {
            acknowledged.lock().unwrap().push((c, revision));
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_saved_while_writes_go_on_founds_a_cluster_holding_every_write_acknowledged_before()
 {
    let cluster = ProcessCluster::start(3);
    cluster.leader().await;
    let admin = cluster.pki.dir.path().join("admin-tls");
    write_creds(&admin, &cluster.admin);
    let registry: Vec<String> = cluster.servers.iter().map(|s| s.client.clone()).collect();
    let registry = registry.join(",");

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        cluster.client(),
        acknowledged.clone(),
        stop.clone(),
    ));
    // Some writes in, then the save while they continue.
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < 30 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no writes went through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = cluster.pki.dir.path().join("backups").join("catalog.snap");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let crl = current_crl(&cluster);
    let crl = crl.to_str().unwrap();
    let before: Vec<(String, u64)> = acknowledged.lock().unwrap().clone();
    let save = {
        let (file, admin, registry) = (file.clone(), admin.clone(), registry.clone());
        tokio::task::spawn_blocking(move || {
            lgsp(&[
                "registry",
                "snapshot",
                "save",
                file.to_str().unwrap(),
                "--registry",
                &registry,
                "--tls-dir",
                admin.to_str().unwrap(),
            ])
        })
        .await
        .unwrap()
    };
    let during = acknowledged.lock().unwrap().len() - before.len();
    // The writes go on after the save too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let out = String::from_utf8_lossy(&save.stdout);
    assert!(
        save.status.success(),
        "snapshot save failed: {}",
        String::from_utf8_lossy(&save.stderr)
    );
    assert!(out.contains("Saved catalog revision"), "{out}");
    assert!(out.contains("SHA-256"), "{out}");
    assert!(out.contains("signed by spiffe://"), "{out}");
    let total = acknowledged.lock().unwrap().len();
    assert!(
        total > before.len(),
        "the writes went on around the save ({during} while it ran, {total} in all)"
    );

    // A damaged copy is refused, naming the checksum.
    let damaged = file.with_extension("damaged");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&damaged, &bytes).unwrap();
    let refused = lgsp(&[
        "registry",
        "snapshot",
        "restore",
        damaged.to_str().unwrap(),
        "--data-dir",
        cluster.pki.dir.path().join("never").to_str().unwrap(),
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:1",
        "--tls-dir",
        admin.to_str().unwrap(),
        "--crl",
        crl,
    ]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("is damaged") && why.contains("SHA-256"),
        "{why}"
    );
    assert!(
        !cluster
            .pki
            .dir
            .path()
            .join("never")
            .join("catalog.log")
            .exists()
    );

    // A copy changed after it was taken (a grant to an agency of the
    // forger's choice, say), its SHA-256 made to match: refused, nothing
    // written. So is one without a signature, unless accepted explicitly.
    let good = std::fs::read(&file).unwrap();
    let restore_into = |path: &std::path::Path, dir: &str, more: &[&str]| {
        let data = cluster.pki.dir.path().join(dir);
        let mut args = vec![
            "registry",
            "snapshot",
            "restore",
            path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--id",
            "1",
            "--peers",
            "1=127.0.0.1:1",
            "--tls-dir",
            admin.to_str().unwrap(),
            "--crl",
            crl,
        ];
        args.extend_from_slice(more);
        (lgsp(&args), data.join("catalog.log").exists())
    };
    let tampered = file.with_extension("tampered");
    std::fs::write(
        &tampered,
        forged(&good, false, |b| {
            b.catalog.as_mut().unwrap().records.pop();
        }),
    )
    .unwrap();
    let (out, written) = restore_into(&tampered, "from-tampered", &[]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !written, "{why}");
    assert!(
        why.contains("not a backup signed by a registry server of this province")
            && why.contains("does not match the contents"),
        "{why}"
    );
    let unsigned = file.with_extension("v1");
    std::fs::write(&unsigned, forged(&good, true, |_| {})).unwrap();
    let (out, written) = restore_into(&unsigned, "from-unsigned", &[]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !written, "{why}");
    assert!(why.contains("--accept-unsigned"), "{why}");
    let (out, written) = restore_into(&unsigned, "from-unsigned", &["--accept-unsigned"]);
    assert!(
        out.status.success() && written,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("an unsigned backup"));

    // A new cluster on new ports, from the same file.
    let addrs: Vec<(u64, String, String)> = (1..=3)
        .map(|id| (id, free_addr().to_string(), free_addr().to_string()))
        .collect();
    let peers = addrs
        .iter()
        .map(|(id, client, peer)| format!("{id}={peer}/{client}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut restored: Vec<ServerProcess> = Vec::new();
    for (id, client, peer) in &addrs {
        let dir = cluster.pki.dir.path().join(format!("restored-{id}"));
        let data = dir.join("data");
        let out = lgsp(&[
            "registry",
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--peers",
            &peers,
            "--tls-dir",
            cluster.server(*id).dir.join("tls").to_str().unwrap(),
            "--crl",
            crl,
        ]);
        assert!(
            out.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("signed by spiffe://"), "{said}");
        assert!(said.contains(", not on CRL number "), "{said}");
        let tls = cluster.server(*id).dir.join("tls");
        let args = registry_start_args(*id, client, peer, &peers, &data, &tls);
        restored.push(cluster.spawn_extra(*id, client, args, dir));
    }
    let endpoints: Vec<String> = addrs.iter().map(|(_, c, _)| c.clone()).collect();
    let client = RegistryClient::new(&endpoints, &cluster.admin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = client.status().await
            && s.leader_id != 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored cluster elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_before = before.iter().map(|(_, r)| *r).max().unwrap();
    for (code, revision) in &before {
        let got = client
            .get(RecordKind::Agency, code, false)
            .await
            .unwrap_or_else(|e| panic!("agency {code} (revision {revision}) was lost: {e}"));
        assert!(
            got.revision >= last_before,
            "{} < {last_before}",
            got.revision
        );
        match got.record.and_then(|r| r.value) {
            Some(Value::Agency(a)) => assert!(a.name.starts_with("Sở số"), "{}", a.name),
            other => panic!("agency {code} came back as {other:?}"),
        }
    }
    // The new cluster takes writes of its own.
    Catalog::new(client)
        .register_agency(&"000.99.99.H62".parse().unwrap(), "Sau khôi phục", None)
        .await
        .expect("a write to the restored cluster");
    drop(restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agencys_admin_can_neither_save_the_catalog_nor_change_the_cluster() {
    let mut cluster = ProcessCluster::start(3);
    cluster.leader().await;
    let (other, _) = cluster
        .pki
        .issue("000.60.01.H62", lgsp_certs::Role::Admin, "quan-tri");
    let tls = cluster.pki.dir.path().join("other-admin-tls");
    write_creds(&tls, &other);
    let registry: Vec<String> = cluster.servers.iter().map(|s| s.client.clone()).collect();
    let registry = registry.join(",");
    let file = cluster.pki.dir.path().join("stolen.snap");
    for args in [
        vec!["registry", "snapshot", "save", file.to_str().unwrap()],
        vec!["registry", "transfer-leader"],
    ] {
        let mut args = args.clone();
        args.extend(["--registry", &registry, "--tls-dir", tls.to_str().unwrap()]);
        let out = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            move || lgsp(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("provincial IT department")
                && stderr.contains("administers its own records only"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !file.exists(),
        "no backup may be written for another agency's admin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_signed_by_a_registry_server_revoked_since_is_refused_on_restore() {
    let cluster = ProcessCluster::start(1);
    cluster.leader().await;
    let admin = cluster.pki.dir.path().join("admin-tls");
    write_creds(&admin, &cluster.admin);
    let server_tls = cluster.server(1).dir.join("tls");
    let file = cluster.pki.dir.path().join("catalog.snap");
    let save = {
        let (file, admin, registry) = (
            file.clone(),
            admin.clone(),
            cluster.server(1).client.clone(),
        );
        tokio::task::spawn_blocking(move || {
            lgsp(&[
                "registry",
                "snapshot",
                "save",
                file.to_str().unwrap(),
                "--registry",
                &registry,
                "--tls-dir",
                admin.to_str().unwrap(),
            ])
        })
        .await
        .unwrap()
    };
    assert!(
        save.status.success(),
        "{}",
        String::from_utf8_lossy(&save.stderr)
    );
    let ca_dir = cluster.pki.ca_dir();
    let ca_dir = ca_dir.to_str().unwrap();
    let restore = |dir: &str, more: &[&str]| {
        let data = cluster.pki.dir.path().join(dir);
        let mut args = vec![
            "registry",
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--id",
            "1",
            "--peers",
            "1=127.0.0.1:1",
            "--tls-dir",
            server_tls.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        (lgsp(&args), data.join("catalog.log").exists())
    };

    // Without a CRL nothing is restored, and the refusal says why and
    // which flags to give.
    let (out, written) = restore("no-crl", &[]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{why}");
    assert!(!written);
    assert!(
        why.contains("--crl FILE")
            && why.contains("--ca-dir DIR")
            && why.contains("--no-crl-check"),
        "{why}"
    );

    // The server is decommissioned and its certificate revoked; its key
    // may be anywhere now.
    let cert = std::fs::read_to_string(server_tls.join("cert.pem")).unwrap();
    let der = lgsp_certs::inspect::pem_certificates(&cert).remove(0);
    let serial = lgsp_certs::inspect::CertInfo::from_der(&der, std::path::Path::new("cert.pem"))
        .unwrap()
        .serial;
    let revoked = lgsp(&[
        "ca",
        "revoke",
        "--ca",
        ca_dir,
        "--serial",
        &serial,
        "--reason",
        "key-compromise",
    ]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let crl = current_crl(&cluster);
    let number = lgsp_certs::inspect::pem_blocks(&std::fs::read_to_string(&crl).unwrap())
        .unwrap()
        .into_iter()
        .find_map(|(_, der)| {
            lgsp_certs::inspect::CrlInfo::from_der(&der, std::path::Path::new("crl.pem")).ok()
        })
        .and_then(|c| c.number)
        .unwrap();
    let (out, written) = restore("from-revoked", &["--crl", crl.to_str().unwrap()]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !written, "{why}");
    assert!(
        why.contains(&format!(
            "(serial {serial}) is revoked on CRL number {number}"
        )) && why.contains("Do not restore it"),
        "{why}"
    );
    // From the CA directory: a CRL signed now, with the next number.
    let (out, written) = restore("from-revoked-ca", &["--ca-dir", ca_dir]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !written, "{why}");
    assert!(
        why.contains(&format!(
            "(serial {serial}) is revoked on CRL number {}",
            number + 1
        )),
        "{why}"
    );

    // A CRL of another CA (same trust domain, same name) checks nothing.
    let elsewhere = lgsp_tests::Pki::new(lgsp_tests::TRUST_DOMAIN);
    let (out, written) = restore(
        "foreign-crl",
        &["--ca-dir", elsewhere.ca_dir().to_str().unwrap()],
    );
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !written, "{why}");
    assert!(why.contains("not signed by the CA that issued"), "{why}");

    // Skipped only when asked, and the output says so.
    let (out, written) = restore("unchecked", &["--no-crl-check"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && written,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("not checked against a CRL"), "{said}");
}

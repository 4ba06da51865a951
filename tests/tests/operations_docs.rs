//! `docs/operations.md`, procedure by procedure, with real processes: every
//! command of its `sh` blocks is taken from the file itself and run with
//! bash, the documented paths and addresses replaced by the test's (see
//! [`Shell`]). Starting and stopping a service, which the page leaves to
//! `systemctl`, is done here with SIGTERM and the same start command.

use lgsp_certs::{Credentials, TlsFiles};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::{Agency, Envelope, GrantStatus, RecordKind};
use lgsp_registry::RegistryClient;
use lgsp_tests::cluster::create_resolving;
use lgsp_tests::lgsp_bin;
use lgsp_tests::process::ProcessCluster;
use lgsp_tests::province::{A, B, NodeProcess, two_agencies, two_agencies_with_servers};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The page and a shell that runs its commands.

/// The commands of `docs/operations.md`'s `sh` blocks, and its other blocks.
/// These procedures each run a whole province of processes; one at a time
/// keeps them inside their time limits on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Doc {
    /// Each command as written (continuation lines included).
    commands: Vec<String>,
    blocks: Vec<(String, String)>,
}

fn normalize(command: &str) -> String {
    command
        .replace("\\\n", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Doc {
    fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        let text = std::fs::read_to_string(&path).expect("docs/operations.md");
        let mut blocks = Vec::new();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if let Some(fence) = trimmed.strip_prefix("```") {
                match current.take() {
                    Some(block) => blocks.push(block),
                    None => current = Some((fence.trim().to_owned(), String::new())),
                }
            } else if let Some((_, body)) = current.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        let mut commands = Vec::new();
        for (lang, body) in &blocks {
            if lang != "sh" {
                continue;
            }
            let mut pending = String::new();
            for line in body.lines() {
                let line = line.trim();
                if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
                    continue;
                }
                pending.push_str(line);
                if line.ends_with('\\') {
                    pending.push('\n');
                } else {
                    commands.push(std::mem::take(&mut pending));
                }
            }
        }
        Self { commands, blocks }
    }

    /// The one command that starts with `prefix`, or is `prefix` exactly
    /// (commands written several times identically count as one).
    fn command(&self, prefix: &str) -> String {
        let mut found: Vec<&String> = self
            .commands
            .iter()
            .filter(|c| normalize(c).starts_with(prefix))
            .collect();
        if found.iter().any(|c| normalize(c) == prefix) {
            found.retain(|c| normalize(c) == prefix);
        }
        assert!(
            !found.is_empty(),
            "docs/operations.md has no command starting with {prefix:?}"
        );
        assert!(
            found.iter().all(|c| normalize(c) == normalize(found[0])),
            "several different commands in docs/operations.md start with {prefix:?}: {found:?}"
        );
        found[0].clone()
    }

    fn block(&self, lang: &str) -> String {
        let found: Vec<&(String, String)> = self.blocks.iter().filter(|b| b.0 == lang).collect();
        assert_eq!(found.len(), 1, "one {lang} block expected");
        found[0].1.clone()
    }
}

/// Runs the page's commands with bash, `lgsp` being the tests' binary, after
/// replacing the documented paths and addresses by the test's (the longest
/// first, so `/etc/lgsp-admin` is not taken for `/etc/lgsp`). `export` lines
/// set the environment of the commands after them.
struct Shell {
    doc: Doc,
    subs: Vec<(String, String)>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

impl Shell {
    fn new(cwd: &Path) -> Self {
        std::fs::create_dir_all(cwd).unwrap();
        let today = Command::new("date").arg("+%F").output().unwrap();
        let mut shell = Self {
            doc: Doc::load(),
            subs: Vec::new(),
            env: Vec::new(),
            cwd: cwd.to_owned(),
        };
        shell.sub("2026-11-30", String::from_utf8_lossy(&today.stdout).trim());
        // The docs' province is an example; the test CA has its own.
        shell.sub(
            "--trust-domain phutho.gov.vn",
            format!("--trust-domain {}", lgsp_tests::TRUST_DOMAIN),
        );
        shell
    }

    fn sub(&mut self, from: &str, to: impl AsRef<str>) -> &mut Self {
        self.subs.retain(|(f, _)| f != from);
        self.subs.push((from.to_owned(), to.as_ref().to_owned()));
        self
    }

    fn sub_path(&mut self, from: &str, to: &Path) -> &mut Self {
        self.sub(from, to.to_str().unwrap())
    }

    fn text(&self, prefix: &str, extra: &[(&str, &str)]) -> String {
        let mut subs: Vec<(String, String)> = self.subs.clone();
        for (f, t) in extra {
            subs.retain(|(k, _)| k != f);
            subs.push((f.to_string(), t.to_string()));
        }
        subs.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
        let mut text = self.doc.command(prefix);
        for (from, to) in &subs {
            text = text.replace(from.as_str(), to);
        }
        text
    }

    fn bash(&self, text: &str) -> Command {
        let bin_dir = lgsp_bin().parent().unwrap().to_owned();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("bash");
        command
            .args(["-c", text])
            .current_dir(&self.cwd)
            .env("PATH", path)
            .env("RUST_LOG", "warn")
            .env_remove("LGSP_REGISTRY")
            .env_remove("LGSP_TLS_DIR")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs the command starting with `prefix`; returns what it did.
    fn try_run(&mut self, prefix: &str, extra: &[(&str, &str)]) -> Output {
        let text = self.text(prefix, extra);
        if let Some(assignments) = normalize(&text).strip_prefix("export ") {
            for a in assignments.split_whitespace() {
                let (k, v) = a.split_once('=').expect("NAME=value");
                self.env.retain(|(name, _)| name != k);
                self.env.push((k.to_owned(), v.to_owned()));
            }
        }
        self.bash(&text).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs the command starting with `prefix`, which must succeed; returns its output.
    fn run(&mut self, prefix: &str, extra: &[(&str, &str)]) -> String {
        let out = self.try_run(prefix, extra);
        assert!(
            out.status.success(),
            "{}\nfailed: {}{}",
            self.text(prefix, extra),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the (long-running) command starting with `prefix`, logging into `log`.
    fn spawn(&self, prefix: &str, extra: &[(&str, &str)], log: &Path) -> Running {
        let text = self.text(prefix, extra);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = self
            .bash(&format!("exec {text}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Running {
            child: Some(child),
            log: log.to_owned(),
        }
    }
}

/// A process started from the page; killed if the test ends first.
struct Running {
    child: Option<Child>,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

/// The value of `field:` in `lgsp ca show` output.
fn field(show: &str, name: &str) -> String {
    show.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {name} in\n{show}"))
}

/// B's application calls A's dataset through B's node.
async fn call_a(b: &NodeProcess) -> Result<String, tonic::Status> {
    let mut client = DataExchangeClient::new(b.app_channel().await);
    client
        .call(Envelope {
            service_id: format!("{A}/ho-tich"),
            operation: "get".into(),
            parameters: HashMap::from([("key".into(), "001099012345".into())]),
            ..Default::default()
        })
        .await
        .map(|r| String::from_utf8_lossy(&r.into_inner().payload).into_owned())
}

async fn eventually<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines of a sharing log that are entries (not seals).
fn entries(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("{\"seal\""))
        .count()
}

/// The SHA-256 fingerprint of the certificate a TLS server presents, lower-case hex.
fn served_sha256(addr: &str) -> String {
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
            ),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once('=')
        .map(|(_, fp)| fp.trim().replace(':', "").to_lowercase())
        .unwrap_or_default()
}

/// `lgsp registry status` as (server id, leader id, applied index) per answering server.
fn parse_status(status: &str) -> Vec<(u64, u64, u64)> {
    let mut servers = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in status.lines() {
        if let Some((_, rest)) = line.split_once(": server ") {
            let id = rest.split_whitespace().next().unwrap().parse().unwrap();
            let leader = rest
                .rsplit_once("leader ")
                .and_then(|(_, l)| l.trim().parse().ok())
                .unwrap_or(0);
            current = Some((id, leader));
        } else if let Some((_, rest)) = line.split_once("applied index ") {
            // "applied index 11 (lag 0), commit index 11, ..."
            let applied = rest
                .split([',', ' '])
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let (id, leader) = current.take().unwrap();
            servers.push((id, leader, applied));
        }
    }
    servers
}

/// Runs the page's `lgsp registry status` until all `n` servers answer with the
/// same leader and the same applied index.
async fn wait_caught_up(sh: &mut Shell, n: usize) -> Vec<(u64, u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = sh.try_run("lgsp registry status --registry", &[]);
        let last = String::from_utf8_lossy(&out.stdout).into_owned();
        let servers = parse_status(&last);
        if servers.len() == n
            && servers[0].1 != 0
            && servers
                .iter()
                .all(|s| s.1 == servers[0].1 && s.2 == servers[0].2)
        {
            return servers;
        }
        assert!(
            Instant::now() < deadline,
            "the registry did not settle in 20 s:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn agency(code: &str) -> Value {
    Value::Agency(Agency {
        code: code.into(),
        name: format!("Cơ quan {code}"),
        focal_point: None,
        ..Default::default()
    })
}

/// Whether `client` (one server, local read) has agency `code`.
async fn has_agency(client: &RegistryClient, code: &str) -> bool {
    client.get(RecordKind::Agency, code, true).await.is_ok()
}

/// A refusal of a revoked certificate: named as such, or (TLS 1.3 shows a
/// refused client certificate only at the first read) a closed connection.
fn assert_revoked(refused: &tonic::Status) {
    let message = refused.message();
    assert!(
        message.contains("revoked") || message.contains("connection closed"),
        "{refused:?}"
    );
}

/// The exit status of a stopped server: it must be clean.
fn assert_clean_exit(status: Option<std::process::ExitStatus>, what: &str) {
    let status = status.unwrap_or_else(|| panic!("{what} was not running"));
    assert!(status.success(), "{what} exited with {status}");
}

// ---------------------------------------------------------------------------
// 1. Certificates.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_renewed_while_the_province_runs_serves_calls_and_the_old_one_is_revoked()
{
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let (province, mut a, b) = two_agencies().await;
    let root = province.registry.pki.dir.path().to_owned();
    let admin_tls = province.tls_dir("admin/tls", &province.registry.admin);
    let mut sh = Shell::new(&root.join("node-desk"));
    sh.sub_path("/etc/lgsp-admin/tls", &admin_tls)
        .sub_path("/etc/lgsp", &a.dir)
        .sub_path("/var/lib/lgsp/node", &a.data_dir())
        .sub_path("/var/lib/lgsp-ca", &province.registry.pki.ca_dir())
        .sub("--name node-1", "--name node-a")
        // The test's node is reached at 127.0.0.1, so that is the address its certificate must carry.
        .sub("--ip 10.0.0.21", "--ip 127.0.0.1")
        // The test CA vouches for the test's hosts only (`Pki::new`).
        .sub("--dns node.stp.phutho.gov.vn", "--dns localhost")
        .sub(
            "10.0.0.11:7101,10.0.0.12:7101,10.0.0.13:7101",
            province.registry_addrs().join(","),
        );

    // The certificate ends within 30 days (the test CA signs for 30).
    let old = sh.run("lgsp ca show /etc/lgsp/tls/cert.pem", &[]);
    assert!(old.contains("Valid until:"), "{old}");
    let (old_serial, old_sha) = (field(&old, "Serial:"), field(&old, "SHA-256:"));
    let expiring = sh.try_run("openssl x509 -in /etc/lgsp/tls/cert.pem", &[]);
    assert_eq!(expiring.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&expiring.stdout).contains("Certificate will expire"));

    // A new key and CSR next to the running ones; the CA signs it.
    sh.run("lgsp ca csr --role node", &[]);
    let ca_desk = root.join("ca-desk");
    std::fs::create_dir_all(&ca_desk).unwrap();
    std::fs::copy(a.dir.join("tls-new/csr.pem"), ca_desk.join("csr.pem")).unwrap();
    sh.cwd = ca_desk.clone();
    let csr = sh.run("lgsp ca show csr.pem", &[]);
    assert!(csr.contains("/agency/000.00.12.H62/node/node-a"), "{csr}");
    sh.run("lgsp ca sign", &[]);
    sh.cwd = root.join("node-desk");
    std::fs::copy(ca_desk.join("cert.pem"), sh.cwd.join("cert.pem")).unwrap();
    sh.run("install -m 0644 cert.pem", &[]);
    sh.run("cp /etc/lgsp/tls/ca.pem", &[]);
    sh.run("openssl verify", &[]);
    let new = sh.run("lgsp ca show /etc/lgsp/tls-new/cert.pem", &[]);
    let new_sha = field(&new, "SHA-256:");
    assert_ne!(new_sha, old_sha);

    // Swap and restart: B's calls to A work again, A serving the new certificate.
    assert_eq!(served_sha256(&a.provider), old_sha);
    a.stop();
    sh.run("mv /etc/lgsp/tls /etc/lgsp/tls-old", &[]);
    let node = sh.spawn("lgsp node start", &[], &a.dir.join("node.log"));
    eventually(
        "A serving its new certificate",
        Duration::from_secs(15),
        async || (served_sha256(&a.provider) == new_sha).then_some(()),
    )
    .await;
    let answer = eventually("B's call to A", Duration::from_secs(15), async || {
        call_a(&b).await.ok()
    })
    .await;
    assert!(
        answer.contains("Nguyễn Thị Hương"),
        "{answer}\n{}",
        node.log()
    );
    let fresh = sh.try_run("openssl x509 -in /etc/lgsp/tls/cert.pem", &[]);
    assert!(
        fresh.status.success(),
        "the new certificate is good for a year"
    );

    // The catalog lists the new fingerprint.
    sh.run("export LGSP_REGISTRY=10.0.0.11:7101,10.0.0.12:7101,10.0.0.13:7101 LGSP_TLS_DIR=/etc/lgsp/tls", &[]);
    eventually(
        "the new fingerprint in the catalog",
        Duration::from_secs(10),
        async || {
            let list = sh.run("lgsp node list", &[]);
            list.contains(&format!("{A}/node-a"))
                .then_some(())
                .filter(|_| list.contains(&new_sha) && !list.contains(&old_sha))
        },
    )
    .await;

    // The sharing log verifies with both certificates (seals from before and after the swap).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sh.run("cat /etc/lgsp/tls-old/cert.pem", &[]);
    sh.run("rm /etc/lgsp/tls-old/key.pem", &[]);
    assert!(!a.dir.join("tls-old/key.pem").exists());
    let verified = sh.run("lgsp audit verify --log /var/lib/lgsp/node/sharing-log/sharing-log.jsonl --cert /etc/lgsp/tls/cert.pem --cert", &[]);
    assert!(verified.contains("sharing log OK"), "{verified}");
    let new_only = Command::new(lgsp_bin())
        .args(["audit", "verify", "--log"])
        .arg(a.sharing_log())
        .arg("--cert")
        .arg(a.dir.join("tls/cert.pem"))
        .output()
        .unwrap();
    assert!(
        !new_only.status.success(),
        "the seals made before the swap need the old certificate"
    );

    // The old certificate is revoked and the CRL published: the registry
    // refuses it, and B's calls to A go on.
    let shown = sh.run("lgsp ca show /etc/lgsp/tls-old/cert.pem", &[]);
    assert_eq!(field(&shown, "Serial:"), old_serial);
    let old_client = RegistryClient::new(&province.registry_addrs(), &a.creds).unwrap();
    old_client
        .status()
        .await
        .expect("the old certificate works until revoked");
    sh.cwd = ca_desk;
    sh.run("lgsp ca revoke", &[("OLD_SERIAL", &old_serial)]);
    sh.run("lgsp ca publish-crl", &[]);
    let refused = eventually(
        "the old certificate refused",
        Duration::from_secs(5),
        async || old_client.status().await.err(),
    )
    .await;
    assert_revoked(&refused);
    let answer = call_a(&b).await.expect("B calls A after the revocation");
    assert!(answer.contains("Nguyễn Thị Hương"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_certificates_renewed_one_server_at_a_time_keep_the_cluster_writing() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut cluster = ProcessCluster::start(3);
    let leader = cluster.leader().await;
    let root = cluster.pki.dir.path().to_owned();
    let admin_tls = root.join("admin/tls");
    lgsp_tests::cluster::write_creds(&admin_tls, &cluster.admin);
    let addrs: Vec<String> = cluster.servers.iter().map(|s| s.client.clone()).collect();
    let mut sh = Shell::new(&root.join("desk"));
    sh.sub_path("/etc/lgsp-admin/tls", &admin_tls)
        .sub_path("/var/lib/lgsp-ca", &cluster.pki.ca_dir())
        // The test's servers are reached at 127.0.0.1, so that is the address their certificates must carry.
        .sub("--ip 10.0.0.11", "--ip 127.0.0.1")
        .sub(
            "10.0.0.11:7101,10.0.0.12:7101,10.0.0.13:7101",
            addrs.join(","),
        );
    let client = cluster.client();
    let mut written = Vec::new();
    let mut old_serials = Vec::new();

    // Followers first, the leader last.
    let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    order.push(leader);
    for id in order {
        let dir = cluster.server(id).dir.clone();
        sh.sub_path("/etc/lgsp", &dir)
            .sub("--name registry-1", format!("--name registry-{id}"));
        old_serials.push(field(
            &sh.run("lgsp ca show /etc/lgsp/tls/cert.pem", &[]),
            "Serial:",
        ));
        sh.run("lgsp ca csr --role registry", &[]);
        let ca_desk = root.join(format!("ca-desk-{id}"));
        std::fs::create_dir_all(&ca_desk).unwrap();
        std::fs::copy(dir.join("tls-new/csr.pem"), ca_desk.join("csr.pem")).unwrap();
        let desk = std::mem::replace(&mut sh.cwd, ca_desk.clone());
        sh.run("lgsp ca show csr.pem", &[]);
        sh.run("lgsp ca sign", &[]);
        sh.cwd = desk;
        std::fs::copy(ca_desk.join("cert.pem"), sh.cwd.join("cert.pem")).unwrap();
        sh.run("install -m 0644 cert.pem", &[]);
        sh.run("cp /etc/lgsp/tls/ca.pem", &[]);
        sh.run("openssl verify", &[]);
        sh.run("mv /etc/lgsp/tls /etc/lgsp/tls-old", &[]);
        let code = format!("000.00.{id}1.H62");
        written.push(code.clone());
        create_resolving(&client, agency(&code)).await;
        assert_clean_exit(cluster.server_mut(id).terminate(), "registry server");
        let code = format!("000.00.{id}2.H62");
        written.push(code.clone());
        create_resolving(&client, agency(&code)).await;
        cluster.server_mut(id).restart();
        wait_caught_up(&mut sh, 3).await;
        let served = served_sha256(&cluster.server(id).client);
        let new = sh.run("lgsp ca show /etc/lgsp/tls/cert.pem", &[]);
        assert_eq!(
            served,
            field(&new, "SHA-256:"),
            "server {id} serves its new certificate"
        );
    }

    // The three old certificates revoked, the CRL published once: the
    // cluster goes on writing (no server uses an old one), and an old one is refused.
    let dir = cluster.server(1).dir.join("tls-old");
    let old = Credentials::load(&TlsFiles::in_dir(&dir)).unwrap();
    let old_client = RegistryClient::new(&addrs, &old).unwrap();
    old_client
        .status()
        .await
        .expect("an old certificate works until revoked");
    sh.cwd = root.join("ca-desk-1");
    for serial in &old_serials {
        sh.run("lgsp ca revoke", &[("OLD_SERIAL", serial)]);
    }
    sh.run("lgsp ca publish-crl", &[]);
    let refused = eventually(
        "an old registry certificate refused",
        Duration::from_secs(5),
        async || old_client.status().await.err(),
    )
    .await;
    assert_revoked(&refused);
    for n in 0..3 {
        let code = format!("000.00.9{n}.H62");
        written.push(code.clone());
        create_resolving(&client, agency(&code)).await;
    }
    wait_caught_up(&mut sh, 3).await;
    for s in &cluster.servers {
        let one = cluster.client_of(s.id);
        for code in &written {
            assert!(has_agency(&one, code).await, "server {} lacks {code}", s.id);
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Backup and restore.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restored_from_its_backup_serves_calls_and_its_sharing_log_verifies() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let (province, mut a, b) = two_agencies().await;
    let root = province.registry.pki.dir.path().to_owned();
    let mut sh = Shell::new(&root.join("node-desk"));
    sh.sub_path("/etc/lgsp", &a.dir)
        .sub_path("/var/lib/lgsp/node", &a.data_dir())
        .sub_path("/var/backups/lgsp", &root.join("backups"))
        .sub("127.0.0.1:9301", &a.metrics);
    for _ in 0..3 {
        call_a(&b).await.expect("call before the backup");
    }

    // Stop, archive, start.
    a.stop();
    sh.run("install -d -m 0700 /var/backups/lgsp", &[]);
    sh.run("tar -C /var/lib/lgsp/node -czf", &[]);
    sh.run("tar -C /etc/lgsp -czf", &[]);
    let at_backup = entries(&a.sharing_log());
    a.start();
    eventually(
        "B's call to A after the backup",
        Duration::from_secs(15),
        async || call_a(&b).await.ok(),
    )
    .await;
    for _ in 0..4 {
        call_a(&b).await.expect("call after the backup");
    }
    a.stop();
    let at_loss = entries(&a.sharing_log());
    assert!(at_loss > at_backup);

    // The data directory is lost (moved aside); the backup comes back.
    sh.run("mv /var/lib/lgsp/node /var/lib/lgsp/node.broken", &[]);
    assert!(!a.data_dir().exists());
    sh.run("install -d -m 0750 /var/lib/lgsp/node", &[]);
    sh.run("tar -C /var/lib/lgsp/node -xzf", &[]);
    let verified = sh.run("lgsp audit verify --log /var/lib/lgsp/node/sharing-log/sharing-log.jsonl --cert /etc/lgsp/tls/cert.pem", &[]);
    assert!(verified.contains("sharing log OK"), "{verified}");
    assert_eq!(entries(&a.sharing_log()), at_backup);

    // Started again: it serves its dataset, and its log grows and still verifies.
    a.start();
    let answer = eventually(
        "B's call to the restored A",
        Duration::from_secs(15),
        async || call_a(&b).await.ok(),
    )
    .await;
    assert!(answer.contains("Nguyễn Thị Hương"), "{answer}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let verified = sh.run("lgsp audit verify --log /var/lib/lgsp/node/sharing-log/sharing-log.jsonl --cert /etc/lgsp/tls/cert.pem", &[]);
    assert!(verified.contains("sharing log OK"), "{verified}");
    assert!(entries(&a.sharing_log()) > at_backup);

    // Section 4's look at the metrics: every series the page names is there
    // (the two node-link series appear only once another node has linked).
    if Command::new("curl").arg("--version").output().is_err() {
        println!("SKIPPED the curl step: curl is not installed");
        return;
    }
    let metrics = sh.run("curl -s http://127.0.0.1:9301/metrics", &[]);
    for series in [
        "lgsp_calls_total{",
        "lgsp_call_duration_seconds_bucket{",
        "lgsp_exchange_bytes_total{",
        "lgsp_catalog_cache_age_seconds ",
        "lgsp_catalog_revision ",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_registry_server_replaced_under_a_new_id_catches_up_while_writes_go_on() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut cluster = ProcessCluster::start(3);
    cluster.leader().await;
    let root = cluster.pki.dir.path().to_owned();
    let admin_tls = root.join("admin/tls");
    lgsp_tests::cluster::write_creds(&admin_tls, &cluster.admin);
    let (s1, s2, s3) = (cluster.server(1), cluster.server(2), cluster.server(3));
    let mut sh = Shell::new(&root.join("desk"));
    sh.sub_path("/etc/lgsp-admin/tls", &admin_tls)
        .sub_path("/etc/lgsp", &s3.dir)
        .sub_path("/var/lib/lgsp/registry", &s3.dir.join("data"))
        .sub(
            "10.0.0.11:7101,10.0.0.12:7101,10.0.0.13:7101",
            format!("{},{},{}", s1.client, s2.client, s3.client),
        )
        .sub("10.0.0.11:7201", &s1.peer)
        .sub("10.0.0.12:7201", &s2.peer)
        .sub("10.0.0.11:7101", &s1.client)
        .sub("10.0.0.12:7101", &s2.client)
        .sub("10.0.0.13:7201", &s3.peer)
        .sub("10.0.0.13:7101", &s3.client);
    let client = cluster.client();
    let mut written = Vec::new();
    for n in 0..5 {
        let code = format!("000.00.1{n}.H62");
        create_resolving(&client, agency(&code)).await;
        written.push(code);
    }

    // Server 3's disk is lost: the process dies; the others go on writing.
    cluster.server_mut(3).kill9();
    for n in 0..5 {
        let code = format!("000.00.2{n}.H62");
        create_resolving(&client, agency(&code)).await;
        written.push(code);
    }
    sh.run(
        "export LGSP_REGISTRY=10.0.0.11:7101,10.0.0.12:7101 LGSP_TLS_DIR",
        &[],
    );
    let status = sh.run("lgsp registry status", &[]);
    assert!(status.contains("member 3"), "{status}");
    let removed = sh.run("lgsp registry remove-member --id 3", &[]);
    assert!(!removed.contains("member 3:"), "{removed}");
    create_resolving(&client, agency("000.00.30.H62")).await;
    written.push("000.00.30.H62".into());
    // A new member joins as a learner; the leader promotes it once caught up.
    let added = sh.run("lgsp registry add-member --id 4", &[]);
    assert!(added.contains("member 4: learner"), "{added}");

    // On the machine: old state aside, the new member starts empty with --join.
    sh.run(
        "mv /var/lib/lgsp/registry /var/lib/lgsp/registry.broken",
        &[],
    );
    let server4 = sh.spawn(
        "lgsp registry start --id 4",
        &[],
        &cluster.server(3).dir.join("server-4.log"),
    );
    for n in 0..5 {
        let code = format!("000.00.4{n}.H62");
        create_resolving(&client, agency(&code)).await;
        written.push(code);
    }
    let servers = wait_caught_up(&mut sh, 3).await;
    let ids: Vec<u64> = servers.iter().map(|s| s.0).collect();
    assert_eq!(ids, vec![1, 2, 4], "{}", server4.log());
    let fourth = RegistryClient::new(
        std::slice::from_ref(&cluster.server(3).client),
        &cluster.admin,
    )
    .unwrap();
    for code in &written {
        assert!(has_agency(&fourth, code).await, "server 4 lacks {code}");
    }
    // And it takes part: a write now is on it too.
    create_resolving(&client, agency("000.00.50.H62")).await;
    eventually(
        "the last write on server 4",
        Duration::from_secs(5),
        async || has_agency(&fourth, "000.00.50.H62").await.then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_registry_restored_from_one_backup_set_is_followed_by_nodes_that_reload() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let (province, a, mut b) = two_agencies_with_servers(3).await;
    let root = province.registry.pki.dir.path().to_owned();
    let admin_tls = province.tls_dir("admin/tls", &province.registry.admin);
    let mut sh = Shell::new(&root.join("desk"));
    sh.sub_path("/etc/lgsp-admin/tls", &admin_tls)
        .sub_path("/var/lib/lgsp-ca", &province.registry.pki.ca_dir())
        .sub(
            "10.0.0.11:7101,10.0.0.12:7101,10.0.0.13:7101",
            province.registry_addrs().join(","),
        );
    let mut registry = province.registry;
    let per_server = |sh: &mut Shell, dir: &Path| {
        sh.sub_path("/var/lib/lgsp/registry", &dir.join("data"))
            .sub_path("/var/backups/lgsp", &dir.join("backups"));
    };

    // The backup: all three stopped (B's calls to A go on meanwhile), archived, started.
    for s in registry.servers.iter_mut() {
        assert_clean_exit(s.terminate(), "registry server");
    }
    call_a(&b)
        .await
        .expect("B calls A while the registry is stopped");
    for s in &registry.servers {
        per_server(&mut sh, &s.dir);
        sh.run("install -d -m 0700 /var/backups/lgsp", &[]);
        sh.run("tar -C /var/lib/lgsp/registry -czf", &[]);
    }
    for s in registry.servers.iter_mut() {
        s.restart();
    }
    registry.leader().await;
    let client = registry.client();

    // Changes after the backup, which the nodes see.
    let mut last = 0;
    for n in 0..10 {
        last = create_resolving(&client, agency(&format!("000.00.6{n}.H62"))).await;
    }
    eventually(
        "B's copy of the catalog at the last change",
        Duration::from_secs(10),
        async || (metric(&b.metrics, "lgsp_catalog_revision").await? >= last as f64).then_some(()),
    )
    .await;

    // The cluster is lost; each server gets its archive back; all start.
    for s in registry.servers.iter_mut() {
        s.kill9();
    }
    for s in &registry.servers {
        per_server(&mut sh, &s.dir);
        sh.run(
            "mv /var/lib/lgsp/registry /var/lib/lgsp/registry.broken",
            &[],
        );
        sh.run("install -d -m 0750 /var/lib/lgsp/registry", &[]);
        sh.run("tar -C /var/lib/lgsp/registry -xzf", &[]);
    }
    for s in registry.servers.iter_mut() {
        s.restart();
    }
    registry.leader().await;
    let client = registry.client();
    assert!(
        !has_agency(&client, "000.00.60.H62").await,
        "a change after the backup survived"
    );
    assert!(has_agency(&client, A).await && has_agency(&client, B).await);

    // After a restore: the CRL again. Nodes notice by themselves that the
    // registry went back and reload their copy (A, which enforces the
    // suspension below, is left alone); B's copy is deleted by hand, as the
    // page allows.
    sh.cwd = root.clone();
    sh.run("lgsp ca publish-crl", &[]);
    b.stop();
    sh.sub_path("/var/lib/lgsp/node", &b.data_dir());
    sh.run("rm -r /var/lib/lgsp/node/node.sled", &[]);
    b.start();
    eventually(
        "A reloads its copy of the catalog by itself",
        Duration::from_secs(15),
        async || {
            a.log()
                .contains("older than this node's copy")
                .then_some(())
        },
    )
    .await;
    eventually(
        "B's call to A after the restore",
        Duration::from_secs(15),
        async || call_a(&b).await.ok(),
    )
    .await;

    // A change now (at a revision B's old copy had already passed) is enforced.
    let before = metric(&b.metrics, "lgsp_catalog_revision")
        .await
        .unwrap_or(0.0);
    let suspended = client
        .put(
            Value::Grant(lgsp_proto::Grant {
                consumer_agency: B.into(),
                service_id: format!("{A}/ho-tich"),
                status: GrantStatus::Suspended as i32,
                expires_unix: 0,
                reason: "khôi phục".into(),
                suspension: lgsp_proto::SuspensionKind::SecurityRisk as i32,
                restore: "liên hệ Sở TT&TT".into(),
                ..Default::default()
            }),
            0,
        )
        .await
        .expect("suspend")
        .revision;
    assert!(
        suspended <= last,
        "the test means a revision the nodes' old copies had passed ({suspended} > {last}, B at {before})"
    );
    let refused = eventually(
        "B refused after the suspension",
        Duration::from_secs(5),
        async || call_a(&b).await.err(),
    )
    .await;
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("suspended"), "{refused:?}");
}

/// One sample of a node's metrics endpoint.
async fn metric(addr: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------
// 3. Upgrading.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_of_the_registry_one_server_at_a_time_loses_no_write() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mut cluster = ProcessCluster::start(3);
    let leader = cluster.leader().await;
    let root = cluster.pki.dir.path().to_owned();
    let admin_tls = root.join("admin/tls");
    lgsp_tests::cluster::write_creds(&admin_tls, &cluster.admin);
    let addrs: Vec<String> = cluster.servers.iter().map(|s| s.client.clone()).collect();
    // The new build, where the operator unpacked it.
    let desk = root.join("desk");
    std::fs::create_dir_all(&desk).unwrap();
    std::fs::copy(lgsp_bin(), desk.join("lgsp")).unwrap();
    let mut sh = Shell::new(&desk);
    sh.sub_path("/etc/lgsp-admin/tls", &admin_tls).sub(
        "10.0.0.11:7101,10.0.0.12:7101,10.0.0.13:7101",
        addrs.join(","),
    );
    let client = cluster.client();
    let mut written = Vec::new();
    let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    order.push(leader);
    for (step, id) in order.into_iter().enumerate() {
        // What each server runs now.
        let bin = cluster.server(id).dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(lgsp_bin(), bin.join("lgsp")).unwrap();
        sh.sub_path("/usr/local/bin", &bin);
        for n in 0..3 {
            let code = format!("000.00.{step}{n}.H62");
            create_resolving(&client, agency(&code)).await;
            written.push(code);
        }
        sh.run("cp -p /usr/local/bin/lgsp", &[]);
        sh.run("install -m 0755 lgsp /usr/local/bin/lgsp", &[]);
        let version = sh.run("/usr/local/bin/lgsp --version", &[]);
        assert!(version.starts_with("lgsp "), "{version}");
        assert!(bin.join("lgsp.previous").exists());
        assert_clean_exit(cluster.server_mut(id).terminate(), "registry server");
        for n in 3..6 {
            let code = format!("000.00.{step}{n}.H62");
            create_resolving(&client, agency(&code)).await;
            written.push(code);
        }
        let server = cluster.server_mut(id);
        server.set_program(bin.join("lgsp"));
        server.restart();
        wait_caught_up(&mut sh, 3).await;
    }
    for s in &cluster.servers {
        let one = cluster.client_of(s.id);
        for code in &written {
            assert!(has_agency(&one, code).await, "server {} lacks {code}", s.id);
        }
    }
    assert_eq!(written.len(), 18);
}

// ---------------------------------------------------------------------------
// 4. Metrics.

#[test]
fn metrics_rules_in_the_docs_load_and_fire_as_described() {
    if Command::new("promtool").arg("--version").output().is_err() {
        println!("SKIPPED: needs promtool (Debian's prometheus package)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rules_dir = tmp.path().join("etc/prometheus/rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    let doc = Doc::load();
    std::fs::write(rules_dir.join("lgsp.yml"), doc.block("yaml")).unwrap();
    let mut sh = Shell::new(tmp.path());
    sh.sub_path("/etc/prometheus", &tmp.path().join("etc/prometheus"));
    let checked = sh.run("promtool check rules", &[]);
    assert!(checked.contains("SUCCESS"), "{checked}");

    // Synthetic series: a node whose catalog copy goes stale, calls that fail
    // 10% of the time and take 0.1-0.2 s, then a stopped scrape target.
    std::fs::write(
        tmp.path().join("lgsp_test.yml"),
        r#"rule_files: [etc/prometheus/rules/lgsp.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'lgsp_catalog_cache_age_seconds{instance="n1"}'
        values: '0 0 60 120 180 240 300'
      - series: 'lgsp_calls_total{instance="n1",side="provider",service="s",consumer="c",code="OK"}'
        values: '0+540x20'
      - series: 'lgsp_calls_total{instance="n1",side="provider",service="s",consumer="c",code="PERMISSION_DENIED"}'
        values: '0+60x20'
      - series: 'lgsp_call_duration_seconds_bucket{instance="n1",side="provider",service="s",le="0.1024"}'
        values: '0x20'
      - series: 'lgsp_call_duration_seconds_bucket{instance="n1",side="provider",service="s",le="0.2048"}'
        values: '0+600x20'
      - series: 'lgsp_call_duration_seconds_bucket{instance="n1",side="provider",service="s",le="+Inf"}'
        values: '0+600x20'
      - series: 'up{job="lgsp-node",instance="n1"}'
        values: '1 1 0 0 0 0'
      - series: 'lgsp_certificate_expiry_timestamp_seconds{instance="n1"}'
        values: '1728000x180'
      - series: 'lgsp_certificate_expiry_timestamp_seconds{instance="n2"}'
        values: '5184000x180'
    alert_rule_test:
      - eval_time: 3m
        alertname: LgspCatalogCopyStale
      - eval_time: 5m
        alertname: LgspCatalogCopyStale
        exp_alerts:
          - exp_labels: {instance: n1, severity: critical}
            exp_annotations:
              summary: "n1: catalog copy not confirmed for 4m 0s"
      - eval_time: 20m
        alertname: LgspCallsFailing
        exp_alerts:
          - exp_labels: {instance: n1, service: s, severity: warning}
            exp_annotations:
              summary: "n1: 10% of calls to s fail"
      - eval_time: 20m
        alertname: LgspSlowCalls
      - eval_time: 30m
        alertname: LgspCertificateExpiresSoon
      - eval_time: 2h
        alertname: LgspCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {instance: n1, severity: warning}
            exp_annotations:
              summary: "n1: node certificate expires in 19d 22h 0m 0s"
      - eval_time: 5m
        alertname: LgspNodeDown
        exp_alerts:
          - exp_labels: {instance: n1, job: lgsp-node, severity: critical}
    promql_expr_test:
      - expr: lgsp:calls:rate5m{code="PERMISSION_DENIED"}
        eval_time: 10m
        exp_samples:
          - labels: 'lgsp:calls:rate5m{instance="n1",side="provider",service="s",code="PERMISSION_DENIED"}'
            value: 1
      - expr: round(lgsp:call_duration_seconds:p99_5m, 0.0001)
        eval_time: 10m
        exp_samples:
          - labels: '{instance="n1",side="provider",service="s"}'
            value: 0.2038
"#,
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "lgsp_test.yml"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_saved_online_founds_a_new_cluster_as_the_page_says() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let registry = ProcessCluster::start(3);
    registry.leader().await;
    let root = registry.pki.dir.path().to_owned();
    let admin_tls = root.join("admin-tls");
    lgsp_tests::cluster::write_creds(&admin_tls, &registry.admin);
    let client = registry.client();
    for n in 0..5 {
        create_resolving(&client, agency(&format!("000.00.7{n}.H62"))).await;
    }
    let mut sh = Shell::new(&root.join("desk"));
    let addrs: Vec<String> = registry.servers.iter().map(|s| s.client.clone()).collect();
    sh.env.push(("LGSP_REGISTRY".into(), addrs.join(",")));
    sh.env
        .push(("LGSP_TLS_DIR".into(), admin_tls.to_str().unwrap().into()));
    let backups = root.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    sh.sub_path("/var/backups/lgsp", &backups);
    let saved = sh.run("lgsp registry snapshot save", &[]);
    assert!(saved.contains("Saved catalog revision"), "{saved}");

    // A new cluster of three, each restored from the file.
    let new: Vec<(u64, String, String)> = (1..=3)
        .map(|id| {
            let (client, peer) = (
                lgsp_tests::cluster::free_addr().to_string(),
                lgsp_tests::cluster::free_addr().to_string(),
            );
            (id, client, peer)
        })
        .collect();
    let peers = new
        .iter()
        .map(|(id, client, peer)| format!("{id}={peer}/{client}"))
        .collect::<Vec<_>>()
        .join(",");
    sh.sub(
        "1=10.0.0.11:7201/10.0.0.11:7101,2=10.0.0.12:7201/10.0.0.12:7101,3=10.0.0.13:7201/10.0.0.13:7101",
        &peers,
    );
    // The CRL the restore checks the backup's signer against, signed at the CA.
    sh.sub_path("/var/lib/lgsp-ca", &registry.pki.ca_dir());
    sh.sub_path("/root/crl.pem", &root.join("crl.pem"));
    sh.run("lgsp ca crl --ca /var/lib/lgsp-ca --out /root/crl.pem", &[]);
    let mut started = Vec::new();
    for (id, client, peer) in &new {
        let dir = root.join(format!("new-{id}"));
        sh.sub_path("/var/lib/lgsp/registry", &dir.join("data"));
        let id_flag = format!("--id {id}");
        let restored = sh.run("lgsp registry snapshot restore", &[("--id 1", &id_flag)]);
        assert!(restored.contains("Restored catalog revision"), "{restored}");
        let tls = registry.server(*id).dir.join("tls");
        let args: Vec<String> = vec![
            "registry".into(),
            "start".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            client.clone(),
            "--peer-listen".into(),
            peer.clone(),
            "--peers".into(),
            peers.clone(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--tls-dir".into(),
            tls.display().to_string(),
        ];
        started.push(registry.spawn_extra(*id, client, args, dir));
    }
    let endpoints: Vec<String> = new.iter().map(|(_, c, _)| c.clone()).collect();
    let restored = RegistryClient::new(&endpoints, &registry.admin).unwrap();
    eventually(
        "the restored cluster holds the writes made before the save",
        Duration::from_secs(15),
        async || has_agency(&restored, "000.00.74.H62").await.then_some(()),
    )
    .await;
    for n in 0..5 {
        assert!(has_agency(&restored, &format!("000.00.7{n}.H62")).await);
    }
    drop(started);
}

// ---------------------------------------------------------------------------
// The page and this file agree.

#[test]
fn every_command_in_the_operations_page_is_run_by_these_tests() {
    let doc = Doc::load();
    let source = include_str!("operations_docs.rs");
    let literals: Vec<&str> = source.split('"').filter(|s| s.len() >= 8).collect();
    let missed: Vec<String> = doc
        .commands
        .iter()
        .map(|c| normalize(c))
        .filter(|c| !literals.iter().any(|l| c.starts_with(l)))
        .collect();
    assert!(
        missed.is_empty(),
        "commands in docs/operations.md that no test runs: {missed:#?}"
    );
    assert!(doc.commands.len() > 30, "{:#?}", doc.commands);
}

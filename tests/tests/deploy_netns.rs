//! The `deploy/` folder works as shipped: the commented config templates
//! start a real three-server registry and an agency node, the systemd units
//! agree with them and pass `systemd-analyze verify`, and
//! `deploy/netns-federation.sh` runs a federation in which every server has
//! its own address in its own network namespace (when root).

use lgsp_certs::Role;
use lgsp_proto::RecordKind;
use lgsp_proto::catalog_record::Value;
use lgsp_registry::RegistryClient;
use lgsp_tests::cluster::{PROVINCE, free_addr, write_creds};
use lgsp_tests::province::{A, B};
use lgsp_tests::{Pki, TRUST_DOMAIN, lgsp_bin};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
}

fn read_deploy(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`, which must occur exactly `times`
/// times: a template that drifts from what the test rewrites fails loudly.
fn replace_exact(text: &str, from: &str, to: &str, times: usize) -> String {
    let found = text.matches(from).count();
    assert_eq!(
        found, times,
        "expected {from:?} {times} time(s) in the template, found it {found} time(s)"
    );
    text.replace(from, to)
}

/// `text` with top-level `key` (before the first table) set to `value`.
fn set_top_level(text: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut in_table = false;
    let mut found = false;
    for line in text.lines() {
        in_table |= line.starts_with('[');
        if !in_table && !found && line.starts_with(&format!("{key} = ")) {
            out.push_str(&format!("{key} = {value}"));
            found = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(found, "the template sets no top-level {key}");
    out
}

/// Uncomments `# KEY = ...` lines (and `# [TABLE]` lines) for `keys`: the
/// documented optional settings must be real ones.
fn uncomment(text: &str, keys: &[&str]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let setting = keys.iter().any(|k| {
            line.strip_prefix("# ")
                .is_some_and(|rest| rest == *k || rest.starts_with(&format!("{k} = ")))
        });
        out.push_str(if setting { &line[2..] } else { line });
        out.push('\n');
    }
    for k in keys {
        assert!(
            out.lines()
                .any(|l| l == *k || l.starts_with(&format!("{k} = "))),
            "the template documents no {k:?}"
        );
    }
    out
}

/// Runs `command` to completion or kills it after `within`; stdout and stderr
/// are collected either way.
fn run_bounded(command: &mut Command, within: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{command:?} took longer than {within:?}\nstdout:\n{}\nstderr:\n{}\n({status})",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}\n({})",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    )
}

/// An `lgsp` server process logging into a file; killed if the test fails.
struct Daemon {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(name: &str, args: &[&str], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(lgsp_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start lgsp");
        Self {
            name: name.to_owned(),
            log,
            child: Some(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as systemd's `KillSignal=SIGTERM` sends it; the exit status.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal {}", self.name);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not stop within 15 s of SIGTERM:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The systemd units run the binary with the templates' paths, keep state
/// where the templates put it, and `systemd-analyze verify` finds nothing to
/// say about them (when systemd is installed).
#[test]
fn systemd_units_agree_with_the_templates_and_verify() {
    let units = [
        (
            "lgsp-registry.service",
            "registry.toml",
            "ExecStart=/usr/local/bin/lgsp registry start --config /etc/lgsp/registry.toml",
            "StateDirectory=lgsp/registry",
            "data_dir = \"/var/lib/lgsp/registry\"",
        ),
        (
            "lgsp-node.service",
            "node.toml",
            "ExecStart=/usr/local/bin/lgsp node start --config /etc/lgsp/node.toml",
            "StateDirectory=lgsp/node",
            "data_dir = \"/var/lib/lgsp/node\"",
        ),
    ];
    for (unit, template, exec, state, data_dir) in units {
        let text = read_deploy(&format!("systemd/{unit}"));
        let lines: Vec<&str> = text.lines().collect();
        for line in [
            exec,
            state,
            "ConfigurationDirectory=lgsp",
            "User=lgsp",
            "DynamicUser=no",
            "KillSignal=SIGTERM",
            "Restart=on-failure",
            "RestartPreventExitStatus=2",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
            "SystemCallFilter=@system-service",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        ] {
            assert!(lines.contains(&line), "{unit} has no line {line:?}");
        }
        assert!(
            read_deploy(template).lines().any(|l| l == data_dir),
            "{template} does not keep its data in {unit}'s state directory ({data_dir})"
        );
    }

    let Some(analyze) = find_on_path("systemd-analyze") else {
        println!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    // verify checks that ExecStart's program exists: point it at the built binary.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (unit, ..) in units {
        let text = read_deploy(&format!("systemd/{unit}"))
            .replace("/usr/local/bin/lgsp", &lgsp_bin().display().to_string());
        let path = dir.path().join(unit);
        std::fs::write(&path, text).expect("write unit");
        files.push(path);
    }
    let out = run_bounded(
        Command::new(analyze)
            .args(["verify", "--man=no"])
            .args(&files)
            .env("SYSTEMD_LOG_LEVEL", "notice"),
        Duration::from_secs(60),
    );
    let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("lgsp-"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}\n{}",
        text(&out)
    );
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `deploy/registry.toml`, as three servers' configurations (only `id`, the
/// listeners, the paths and the peer addresses rewritten), and
/// `deploy/node.toml` (paths and addresses rewritten) start a real cluster
/// and a node that registers itself; all stop with exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn config_templates_start_a_registry_cluster_and_a_node() {
    let mut pki = Pki::new(TRUST_DOMAIN);
    let (admin, _) = pki.issue(PROVINCE, Role::Admin, "so-tttt");
    let root = pki.dir.path().to_path_buf();
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();

    let template = uncomment(
        &read_deploy("registry.toml"),
        &[
            "tick_ms",
            "election_ticks",
            "heartbeat_ticks",
            "snapshot_entries",
            "watch_history",
            "propose_timeout_ms",
            "peer_timeout_ms",
            "max_watches_per_client",
            "max_watches",
        ],
    );
    let mut servers = Vec::new();
    for id in 1..=3u64 {
        let dir = root.join(format!("registry-{id}"));
        let (creds, _) = pki.issue(PROVINCE, Role::Registry, &format!("registry-{id}"));
        write_creds(&dir.join("tls"), &creds);
        let mut config = template.clone();
        // Every server's addresses, as the template spells them for 10.0.0.1x.
        for (i, (client, peer)) in addrs.iter().enumerate() {
            let host = format!("10.0.0.1{}", i + 1);
            let (c, p) = (format!("\"{host}:7101\""), format!("\"{host}:7201\""));
            // Server 1's addresses are also the file's own listeners.
            let times = if i == 0 { 2 } else { 1 };
            config = replace_exact(&config, &c, &format!("\"{client}\""), times);
            config = replace_exact(&config, &p, &format!("\"{peer}\""), times);
        }
        let (client, peer) = addrs[id as usize - 1];
        config = set_top_level(&config, "id", &id.to_string());
        config = set_top_level(&config, "listen", &format!("\"{client}\""));
        config = set_top_level(&config, "peer_listen", &format!("\"{peer}\""));
        config = replace_exact(
            &config,
            "\"/var/lib/lgsp/registry\"",
            &format!("\"{}\"", dir.join("data").display()),
            1,
        );
        config = replace_exact(
            &config,
            "\"/etc/lgsp/tls/",
            &format!("\"{}/", dir.join("tls").display()),
            3,
        );
        let path = dir.join("registry.toml");
        std::fs::write(&path, &config).expect("write registry.toml");
        servers.push(Daemon::start(
            &format!("registry server {id}"),
            &["registry", "start", "--config", path.to_str().unwrap()],
            dir.join("server.log"),
        ));
    }
    let clients: Vec<String> = addrs.iter().map(|(c, _)| c.to_string()).collect();
    let registry = RegistryClient::new(&clients, &admin).expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = registry.status().await
            && s.leader_id != 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registry from deploy/registry.toml elected no leader in 20 s:\n{}",
            servers
                .iter()
                .map(Daemon::log)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registry
        .put(
            Value::Agency(lgsp_proto::Agency {
                code: A.into(),
                name: "Sở Tư pháp tỉnh Vĩnh Phúc".into(),
                focal_point: None,
                ..Default::default()
            }),
            0,
        )
        .await
        .expect("register agency");

    // The node template is agency A's node-1.
    let node_dir = root.join("node");
    let (creds, _) = pki.issue(A, Role::Node, "node-1");
    write_creds(&node_dir.join("tls"), &creds);
    let (provider, consumer, metrics) = (free_addr(), free_addr(), free_addr());
    let mut config = uncomment(
        &read_deploy("node.toml"),
        &[
            "[limits]",
            "max_concurrent_per_consumer",
            "rate_per_consumer",
            "max_message_bytes",
        ],
    );
    let registry_list = clients
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    for (from, to) in [
        (
            "[\"10.0.0.11:7101\", \"10.0.0.12:7101\", \"10.0.0.13:7101\"]",
            format!("[{registry_list}]"),
        ),
        (
            "\"/var/lib/lgsp/node\"",
            format!("\"{}\"", node_dir.join("data").display()),
        ),
        ("\"0.0.0.0:7301\"", format!("\"{provider}\"")),
        ("\"node.stp.phutho.gov.vn:7301\"", format!("\"{provider}\"")),
        ("\"127.0.0.1:7401\"", format!("\"{consumer}\"")),
        ("\"127.0.0.1:9301\"", format!("\"{metrics}\"")),
    ] {
        config = replace_exact(&config, from, &to, 1);
    }
    config = replace_exact(
        &config,
        "\"/etc/lgsp/tls/",
        &format!("\"{}/", node_dir.join("tls").display()),
        3,
    );
    let node_toml = node_dir.join("node.toml");
    std::fs::write(&node_toml, &config).expect("write node.toml");
    let mut node = Daemon::start(
        "node",
        &["node", "start", "--config", node_toml.to_str().unwrap()],
        node_dir.join("node.log"),
    );

    // The node registers itself with the advertised endpoint.
    let deadline = Instant::now() + Duration::from_secs(20);
    let endpoint = loop {
        if let Ok(r) = registry
            .get(RecordKind::Node, &format!("{A}/node-1"), false)
            .await
            && let Some(Value::Node(n)) = r.record.and_then(|r| r.value)
        {
            break n.endpoint;
        }
        assert!(
            Instant::now() < deadline,
            "the node from deploy/node.toml never registered:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(endpoint, provider.to_string());

    // systemd stops them with SIGTERM and restarts them only on failure.
    let status = node.terminate();
    assert!(
        status.success(),
        "node on SIGTERM: {status}\n{}",
        node.log()
    );
    for s in &mut servers {
        let status = s.terminate();
        assert!(
            status.success(),
            "{} on SIGTERM: {status}\n{}",
            s.name,
            s.log()
        );
    }
}

/// Why network namespaces cannot be used here, if they cannot.
fn netns_unavailable(prefix: &str) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    if find_on_path("ip").is_none() {
        return Some("the ip command (iproute2) is not installed".into());
    }
    let probe = format!("{prefix}-probe");
    let add = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .ok()?;
    if !add.status.success() {
        return Some(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&add.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

/// Namespaces whose names start with `prefix-`.
fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

/// Processes whose command line mentions `dir`.
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| format!("{}: {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// A federation made by `deploy/netns-federation.sh`; taken down on drop,
/// whatever happened.
struct Federation {
    prefix: String,
    dir: tempfile::TempDir,
}

impl Federation {
    fn script(&self, command: &str, within: Duration) -> Output {
        run_bounded(
            Command::new(deploy_dir().join("netns-federation.sh"))
                .arg(command)
                .arg("--dir")
                .arg(self.dir.path())
                .args(["--prefix", &self.prefix, "--lgsp"])
                .arg(lgsp_bin()),
            within,
        )
    }

    /// `lgsp ARGS` inside host `host`'s namespace.
    fn lgsp_in(&self, host: &str, args: &[&str]) -> Output {
        run_bounded(
            Command::new("ip")
                .args(["netns", "exec", &format!("{}-{host}", self.prefix)])
                .arg(lgsp_bin())
                .args(args)
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1"),
            Duration::from_secs(30),
        )
    }

    fn tls(&self, host: &str) -> String {
        self.dir.path().join(host).join("tls").display().to_string()
    }

    /// Every host's log, for a failure message.
    fn logs(&self) -> String {
        let mut all = String::new();
        for host in ["r1", "r2", "r3", "a", "b"] {
            let log = self.dir.path().join(host).join(format!("{host}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            all.push_str(&format!("--- {}\n", log.display()));
            for l in tail.into_iter().rev() {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.script("down", Duration::from_secs(60))
        }));
    }
}

/// Three registry servers and two agency nodes, each in its own network
/// namespace with its own address in 10.77.0.0/24: a write through one
/// server is read through another, agency B's application calls agency A's
/// dataset across hosts, a grant revoked through a third server is enforced
/// on A's host, and `down` leaves no namespace and no process behind.
#[test]
fn federation_in_network_namespaces_replicates_and_exchanges_across_hosts() {
    let prefix = format!("lgspt{}", std::process::id());
    if let Some(why) = netns_unavailable(&prefix) {
        println!("SKIPPED: needs root and iproute2 (ip netns): {why}");
        return;
    }
    let fed = Federation {
        prefix: prefix.clone(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let started = Instant::now();
    let up = fed.script("up", Duration::from_secs(180));
    assert!(
        up.status.success(),
        "netns-federation.sh up failed:\n{}\n{}",
        text(&up),
        fed.logs()
    );
    println!("federation up in {:?}", started.elapsed());
    let all = "10.77.0.11:7101,10.77.0.12:7101,10.77.0.13:7101";
    let admin = fed.tls("adm");

    // Each server answers on its own address and names the same members.
    let status = fed.lgsp_in(
        "adm",
        &["registry", "status", "--registry", all, "--tls-dir", &admin],
    );
    let report = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{}", text(&status));
    for id in 1..=3 {
        assert!(
            report.contains(&format!("10.77.0.1{id}:7101: server {id} (lgsp ")),
            "server {id} did not answer on its own address:\n{report}"
        );
        assert!(
            report.contains(&format!(
                "member {id}: voter peer 10.77.0.1{id}:7201 client 10.77.0.1{id}:7101"
            )),
            "{report}"
        );
    }

    // A write through server 1 is read (linearizably) through server 3.
    let write = fed.lgsp_in(
        "adm",
        &[
            "agency",
            "register",
            "--registry",
            "10.77.0.11:7101",
            "--tls-dir",
            &admin,
            "--code",
            "000.00.14.H62",
            "--name",
            "Sở Y tế tỉnh Vĩnh Phúc",
        ],
    );
    assert!(write.status.success(), "{}\n{}", text(&write), fed.logs());
    let read = fed.lgsp_in(
        "adm",
        &[
            "agency",
            "list",
            "--registry",
            "10.77.0.13:7101",
            "--tls-dir",
            &admin,
        ],
    );
    assert!(
        read.status.success()
            && text(&read).contains("000.00.14.H62        Sở Y tế tỉnh Vĩnh Phúc"),
        "server 3 did not return what server 1 wrote:\n{}",
        text(&read)
    );

    // Agency B's application, in B's namespace, calls A's dataset: B's node
    // calls A's node at 10.77.0.21 over mTLS.
    let call = |key: &str| {
        fed.lgsp_in(
            "b",
            &[
                "call",
                &format!("{A}/ho-tich"),
                "--param",
                &format!("key={key}"),
                "--node",
                "127.0.0.1:7401",
                "--timeout",
                "10",
            ],
        )
    };
    let answer = call("001088054321");
    assert!(
        answer.status.success() && text(&answer).contains("Trần Văn Đức"),
        "B's call to A's dataset:\n{}\n{}",
        text(&answer),
        fed.logs()
    );
    // A's node, on its own host, logged the exchange with B as the consumer.
    let stderr = String::from_utf8_lossy(&answer.stderr).into_owned();
    let request_id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("request id "))
        .unwrap_or_else(|| panic!("lgsp call printed no request id:\n{stderr}"))
        .trim()
        .to_owned();
    let sharing_log = fed.dir.path().join("a/data/sharing-log/sharing-log.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&sharing_log).unwrap_or_default();
        let logged = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| {
                e["request_id"] == request_id.as_str()
                    && e["side"] == "provider"
                    && e["consumer"] == B
                    && e["status"] == "OK"
            });
        if logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's sharing log has no provider entry for B's call {request_id}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The provincial IT desk terminates the grant through server 2 (an
    // agency's node certificate may not); A's node refuses B within seconds.
    let revoke = fed.lgsp_in(
        "adm",
        &[
            "access",
            "revoke",
            "--kind",
            "agreement-expired",
            "--registry",
            "10.77.0.12:7101",
            "--tls-dir",
            &fed.tls("adm"),
            "--service",
            &format!("{A}/ho-tich"),
            "--consumer",
            B,
            "--reason",
            "Hết thời hạn thỏa thuận",
        ],
    );
    assert!(revoke.status.success(), "{}", text(&revoke));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = call("001099012345");
        if !refused.status.success() {
            assert!(
                text(&refused).contains("PermissionDenied"),
                "B was refused for another reason:\n{}",
                text(&refused)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B could still call A's dataset 10 s after the grant was revoked\n{}",
            fed.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // down removes every namespace and process; a second down is a no-op.
    let down = fed.script("down", Duration::from_secs(60));
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert_eq!(processes_using(fed.dir.path()), Vec::<String>::new());
    let again = fed.script("down", Duration::from_secs(60));
    assert!(
        again.status.success() && text(&again).contains("0 namespace(s) removed"),
        "{}",
        text(&again)
    );
}

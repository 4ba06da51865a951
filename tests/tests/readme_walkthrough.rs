//! The README's "From nothing to a call between two hosts", run as written
//! across three hosts: each host is a network namespace with the README's
//! own address (the registry host 10.0.0.11, agency A's server 10.0.0.21,
//! agency B's server 10.0.0.22), joined by a bridge in a namespace of its
//! own, so the machine's network is never touched. Every command is taken
//! from the README's `sh` blocks; only the absolute paths move under a
//! directory per host (`/etc/lgsp` on A is `DIR/a/etc/lgsp`), `scp` becomes
//! `cp` between those directories, and a command ending in `&` is started
//! in the background with its output in the host's log. Needs root and
//! iproute2; skipped, saying why, otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The section the test runs.
const SECTION: &str = "## From nothing to a call between two hosts";

/// The README's hosts: name in this test, address.
const HOSTS: [(&str, &str); 3] = [("reg", "10.0.0.11"), ("a", "10.0.0.21"), ("b", "10.0.0.22")];

/// Which host each `sh` block of the section runs on, in order.
const BLOCK_HOSTS: [&str; 10] = ["reg", "a", "reg", "a", "a", "b", "reg", "b", "reg", "b"];

/// The `sh` blocks of the README's walkthrough section.
fn blocks() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("the README has no section {SECTION:?}"));
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (line.trim_start().strip_prefix("```"), current.as_mut()) {
            (Some(_), Some(_)) => blocks.push(current.take().expect("open block")),
            (Some(lang), None) => {
                assert_eq!(lang.trim(), "sh", "only sh blocks in the walkthrough");
                current = Some(String::new());
            }
            (None, Some(body)) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// A block's commands, continuation lines joined; comments dropped.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head.trim_end());
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// Why network namespaces cannot be used here, if they cannot.
fn netns_unavailable(prefix: &str) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    let probe = format!("{prefix}-probe");
    let add = match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) => out,
        Err(e) => return Some(format!("the ip command (iproute2) cannot run: {e}")),
    };
    if !add.status.success() {
        return Some(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&add.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three hosts in namespaces and their directories; everything is stopped
/// and removed on drop.
struct Hosts {
    prefix: String,
    dir: tempfile::TempDir,
    /// Whether the namespaces were made (and so are removed on drop).
    made: bool,
}

impl Hosts {
    fn up(prefix: &str) -> Self {
        let hosts = Self {
            prefix: prefix.to_owned(),
            dir: tempfile::tempdir().expect("tempdir"),
            made: true,
        };
        let lan = hosts.ns("lan");
        ip(&["netns", "add", &lan]);
        ip(&["-n", &lan, "link", "set", "lo", "up"]);
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for (host, addr) in HOSTS {
            let ns = hosts.ns(host);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let veth = format!("v-{host}");
            ip(&[
                "-n", &lan, "link", "add", "name", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&[
                "-n", &lan, "link", "set", "dev", &veth, "master", "br0", "up",
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            // Every host has a home directory for root, as a server does.
            std::fs::create_dir_all(hosts.root(host).join("root")).expect("host dir");
        }
        hosts
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn root(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    fn log(&self, host: &str) -> PathBuf {
        self.root(host).join("daemons.log")
    }

    /// `command` as host `host` runs it: its absolute paths under the
    /// host's directory, `scp` to another host a `cp` into that host's.
    fn rewrite(&self, host: &str, command: &str) -> String {
        let mut out = String::new();
        let mut words = command.split(' ').peekable();
        let mut first = true;
        while let Some(word) = words.next() {
            if !first {
                out.push(' ');
            }
            first = false;
            let mut word = word.to_owned();
            if word == "scp" {
                word = "cp".into();
            }
            for (other, addr) in HOSTS {
                if let Some(path) = word.strip_prefix(&format!("{addr}:/")) {
                    word = format!("{}/{path}", self.root(other).display());
                }
            }
            // A path alone, or as a value (`LGSP_TLS_DIR=/etc/...`).
            for top in ["/etc/", "/var/", "/root/"] {
                let at = if word.starts_with(top) {
                    Some(0)
                } else {
                    word.find(&format!("={top}")).map(|i| i + 1)
                };
                if let Some(at) = at {
                    word.insert_str(at, &self.root(host).display().to_string());
                }
            }
            if word == "&" && words.peek().is_none() {
                word = format!(">> {} 2>&1 &", self.log(host).display());
            }
            out.push_str(&word);
        }
        if command.ends_with(" &") {
            out.push_str(&format!(
                " echo $! >> {}",
                self.root(host).join("pids").display()
            ));
        }
        out
    }

    /// Runs `command` (already rewritten) in `host`'s namespace with bash,
    /// after `exports`, in the host's directory.
    fn run(&self, host: &str, exports: &[String], command: &str) -> Output {
        let lgsp_dir = lgsp_tests::lgsp_bin()
            .parent()
            .expect("bin dir")
            .display()
            .to_string();
        let mut script = format!("set -e\nexport PATH={lgsp_dir}:$PATH\n");
        for e in exports {
            script.push_str(e);
            script.push('\n');
        }
        script.push_str(command);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "bash", "-c", &script])
            .current_dir(self.root(host))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }

    /// The tail of every host's daemon log, for a failure message.
    fn logs(&self) -> String {
        let mut all = String::new();
        for (host, _) in HOSTS {
            let text = std::fs::read_to_string(self.log(host)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            all.push_str(&format!("--- {host}\n"));
            for l in tail.into_iter().rev() {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if !self.made {
            return;
        }
        for (host, _) in HOSTS {
            let ns = self.ns(host);
            let pids = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for (host, _) in HOSTS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns("lan")])
            .status();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}({})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status
    )
}

#[test]
fn readme_walkthrough_runs_as_written_across_three_hosts() {
    let blocks = blocks();
    assert_eq!(
        blocks.len(),
        BLOCK_HOSTS.len(),
        "the walkthrough's sh blocks changed: update BLOCK_HOSTS:\n{blocks:#?}"
    );
    let prefix = format!("lgsprw{}", std::process::id());
    if let Some(why) = netns_unavailable(&prefix) {
        println!("SKIPPED: needs root and iproute2 (ip netns): {why}");
        return;
    }
    let hosts = Hosts::up(&prefix);
    // Agency A's data, where its operator runs the import.
    std::fs::write(
        hosts.root("a").join("ho-tich.csv"),
        lgsp_tests::province::HO_TICH_CSV,
    )
    .expect("csv");
    let started = Instant::now();
    let mut exports: std::collections::HashMap<&str, Vec<String>> = Default::default();
    let mut last = String::new();
    for (block, host) in blocks.iter().zip(BLOCK_HOSTS) {
        for command in commands(block) {
            let rewritten = hosts.rewrite(host, &command);
            if command.starts_with("export ") {
                exports.entry(host).or_default().push(rewritten);
                continue;
            }
            let env = exports.get(host).cloned().unwrap_or_default();
            // A server just started takes a moment to answer: an operator
            // runs the next command again; so does the test, for up to 20 s.
            let deadline = Instant::now() + Duration::from_secs(20);
            let out = loop {
                let out = hosts.run(host, &env, &rewritten);
                if out.status.success() || Instant::now() > deadline {
                    break out;
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            assert!(
                out.status.success(),
                "on {host}: {command}\n(ran as: {rewritten})\n{}\n{}",
                text(&out),
                hosts.logs()
            );
            last = String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    // The last command is B's application's call, answered by A's node
    // across the bridge with A's record.
    assert!(
        last.contains("Trần Văn Đức") || last.contains("Nguyễn Thị Hương"),
        "{last}"
    );
    assert!(
        last.contains("\"so_dinh_danh\": \"001099012345\""),
        "{last}"
    );
    // A's node logged the exchange with B as the consumer.
    let log = hosts
        .root("a")
        .join("etc/lgsp/data/sharing-log/sharing-log.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = std::fs::read_to_string(&log).unwrap_or_default();
        if entries.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|e| {
                e["side"] == "provider" && e["consumer"] == "000.00.13.H62" && e["status"] == "OK"
            })
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's sharing log has no entry for B's call:\n{entries}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "README walkthrough across three hosts in {:?}",
        started.elapsed()
    );
}

#[test]
fn walkthrough_commands_move_under_their_hosts_directories() {
    let hosts = Hosts {
        prefix: "unused".into(),
        dir: tempfile::tempdir().unwrap(),
        made: false,
    };
    let root = hosts.dir.path().display().to_string();
    assert_eq!(
        hosts.rewrite("a", "scp /etc/lgsp/tls/csr.pem 10.0.0.11:/root/node-a.csr"),
        format!("cp {root}/a/etc/lgsp/tls/csr.pem {root}/reg/root/node-a.csr")
    );
    assert_eq!(
        hosts.rewrite(
            "reg",
            "lgsp registry start --data-dir /var/lib/lgsp/registry &"
        ),
        format!(
            "lgsp registry start --data-dir {root}/reg/var/lib/lgsp/registry >> {root}/reg/daemons.log 2>&1 & echo $! >> {root}/reg/pids"
        )
    );
    assert_eq!(
        hosts.rewrite("reg", "export LGSP_TLS_DIR=/etc/lgsp-admin/tls"),
        format!("export LGSP_TLS_DIR={root}/reg/etc/lgsp-admin/tls")
    );
    assert_eq!(
        commands("a \\\n  b\n# c\nd\n"),
        vec!["a b".to_owned(), "d".to_owned()]
    );
}

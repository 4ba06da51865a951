//! `lgsp demo`: the whole province on loopback. `--scenario` walks through it
//! step by step, shows the command behind each step and exits 0 only if
//! every step did what it should; without it, the demo prints commands that
//! work as printed from another terminal. `--base-port` moves every port.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How many consecutive ports the demo takes.
const PORTS: u16 = 13;

/// A base port whose block of [`PORTS`] is free now, below Linux's range of
/// ephemeral ports (32768-60999 by default): a block taken from that range
/// can lose a port, between this check and the demo's bind, to the source
/// port of a connection the other tests make meanwhile. Each test of this
/// process starts from another block.
fn free_block() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 700) as u16;
    for _ in 0..200 {
        let slot = (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % 700;
        let first = 20_000 + slot * 16;
        let held: Vec<_> = (first..first + PORTS)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(PORTS) {
            return first;
        }
    }
    panic!("no block of {PORTS} free ports on 127.0.0.1 between 20000 and 31215 in 200 tries");
}

/// Kills the demo if the test fails before stopping it.
struct Demo(Child);
impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_scenario_on_a_base_port_passes_every_step_and_shows_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_block();
    let mut child = Command::new(lgsp_tests::lgsp_bin())
        .args([
            "demo",
            "--scenario",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path().join("demo"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lgsp demo --scenario ran past 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("PASS step").count(), 9, "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains("Every step did what it should."),
        "{stdout}"
    );
    assert!(
        stdout.contains("Nguyễn"),
        "Vietnamese text survives the whole path: {stdout}"
    );
    assert!(
        stdout.contains(&format!("ports {base}-{}", base + PORTS - 1)),
        "{stdout}"
    );
    // Every step shows at least one command, on the chosen ports.
    let mut steps = stdout.split("PASS step ").skip(1);
    for n in 1..=9 {
        let step = steps.next().unwrap_or_default();
        assert!(
            step.contains("\n         $ "),
            "step {n} shows no command:\n{step}"
        );
    }
    let tam_duong_apps = format!("--node 127.0.0.1:{}", base + 9);
    assert!(stdout.contains(&tam_duong_apps), "{stdout}");
    assert!(
        stdout.contains(&format!("--registry 127.0.0.1:{base},")),
        "{stdout}"
    );
    assert!(stdout.contains("$ grpcurl "), "{stdout}");
    assert!(stdout.contains(" access terminate "), "{stdout}");
    assert!(stdout.contains(" requests approve "), "{stdout}");
}

#[test]
fn demo_refuses_a_base_port_whose_block_is_taken_naming_the_port() {
    let base = free_block();
    // Another program holds the department's node's agency port.
    let _held = TcpListener::bind(("127.0.0.1", base + 6)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(lgsp_tests::lgsp_bin())
        .args(["demo", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path().join("demo"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {} on 127.0.0.1", base + 6))
            && stderr.contains("the department's node, agencies")
            && stderr.contains("choose another --base-port"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !dir.path().join("demo").exists(),
        "nothing is written when the ports are taken"
    );
}

/// The printed commands, run as printed (by bash) while the demo runs: the
/// calls (one across instances, to the national platform's register), the
/// query, the HTTP service, a direct grant, a termination, the
/// access request procedure, the catalog, the registry and the sharing log.
#[test]
fn demo_prints_commands_that_work_as_printed_from_another_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_block();
    let mut demo = Demo(
        Command::new(lgsp_tests::lgsp_bin())
            .args(["demo", "--base-port", &base.to_string(), "--dir"])
            .arg(dir.path().join("demo"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    // Read the guide on a thread, so that a demo that never finishes
    // printing cannot hold the test past its deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let last = line.starts_with("Press Ctrl-C");
            if tx.send(line).is_err() || last {
                break;
            }
        }
    });
    let mut guide = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the demo printed no guide in 60 s:\n{guide:#?}"));
        let last = line.starts_with("Press Ctrl-C");
        guide.push(line);
        if last {
            break;
        }
    }
    let lgsp = lgsp_tests::lgsp_bin().display().to_string();
    let commands: Vec<String> = guide
        .iter()
        .map(|l| l.trim_start())
        .filter(|l| l.starts_with(&lgsp))
        .map(str::to_owned)
        .collect();
    let text = guide.join("\n");
    for what in [
        " call ",
        " --query ",
        "/giay-phep --op tra-cuu --json ",
        " access grant ",
        " access terminate ",
        " requests file ",
        " requests approve ",
        " audit verify ",
        "/dan-cu --op get ",
        "/thue --op get ",
    ] {
        assert!(
            commands.iter().any(|c| c.contains(what)),
            "the guide prints no command with {what:?}:\n{text}"
        );
    }
    assert!(text.contains(&format!("127.0.0.1:{}", base + 12)), "{text}");
    let run = |command: &str| {
        Command::new("bash")
            .args(["-c", command])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let business_call = commands[0].clone();
    assert!(business_call.contains(" call "), "{business_call}");
    for command in &commands {
        let out = run(command);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command.contains(" --query ") {
            assert!(
                stdout.lines().count() >= 2 && stdout.contains("ten_doanh_nghiep"),
                "{command}\n{stdout}"
            );
        }
        if command.contains("giay-phep --op tra-cuu") {
            assert!(stdout.contains("Còn hiệu lực"), "{command}\n{stdout}");
        }
        // Across instances: the national register, through both hubs.
        if command.contains("/dan-cu --op get") {
            assert!(stdout.contains("Nguyễn Thị Thu Hà"), "{command}\n{stdout}");
        }
        // The ministry's REST system, through the province's hub.
        if command.contains("/thue --op get") {
            assert!(
                stdout.contains("Hộ kinh doanh Nguyễn Văn Đông"),
                "{command}\n{stdout}"
            );
        }
    }
    // After the approval, Tam Dương's call works again.
    let out = run(&business_call);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ten_doanh_nghiep"),
        "{business_call}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new("kill").arg(demo.0.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while demo.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! `lgsp bench`: each benchmark command runs on a fresh machine and reports
//! every path it promises, with no failed call. These tests check that the
//! commands work and what they print, never how fast anything was: the
//! figures are for the README, read off a release build.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `lgsp bench ARGS` (killed after `limit`); returns its stdout after
/// asserting it exited 0.
fn bench(args: &[&str], limit: Duration) -> String {
    let mut child = Command::new(lgsp_tests::lgsp_bin())
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "lgsp bench {args:?} ran past {limit:?}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lgsp bench {args:?}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The result row of `label` at `clients`: its calls per second and errors.
fn row(stdout: &str, clients: usize, label: &str) -> (f64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&clients.to_string()) && l.contains(label))
        .unwrap_or_else(|| panic!("no row {clients} {label:?} in:\n{stdout}"));
    let numbers: Vec<&str> = line[line.find(label).unwrap() + label.len()..]
        .split_whitespace()
        .collect();
    let per_second: f64 = numbers[0].parse().unwrap();
    let errors: u64 = numbers[3].parse().unwrap();
    (per_second, errors)
}

#[test]
fn bench_exchange_reports_every_path_next_to_the_raw_baseline_without_errors() {
    let out = bench(
        &["exchange", "--concurrency", "4", "--duration", "1", "--hub"],
        Duration::from_secs(120),
    );
    for label in [
        "baseline: raw tonic mTLS echo",
        "reference: bare forwarder → echo",
        "app → node A, HTTP backend",
        "app → node A, dataset get",
        "app → node B → A, HTTP backend",
        "app → node B → A, dataset get",
        "app → C → hub Q → hub P → A, get",
        "app → B → hub P → REST system, get",
    ] {
        let (per_second, errors) = row(&out, 4, label);
        assert!(per_second > 0.0, "{label}: no call completed\n{out}");
        assert_eq!(errors, 0, "{label}: failed calls\n{out}");
    }
    // The path through both hubs is compared with node B → A in the same run.
    assert!(out.contains("through both hubs ("), "{out}");
    // And the path through the hub to a REST system.
    assert!(
        out.contains("through the hub (app → B → hub P → REST system"),
        "{out}"
    );
    // Each server on a hub path says what a call costs it in CPU, and the
    // path is compared with node B → A as if every server had a core.
    for line in [
        "app → C → hub Q → hub P → A, get: node-c ",
        "app → B → hub P → REST system, get: node-b ",
    ] {
        let costs = out
            .lines()
            .find(|l| l.trim_start().starts_with(line))
            .unwrap_or_else(|| panic!("no CPU per call for {line:?} in:\n{out}"));
        assert!(
            costs.contains(" µs") && costs.contains("calls/s a core"),
            "{costs}"
        );
    }
    assert!(out.contains("with a core per server: "), "{out}");
    // Both nodes logged the exchanges they took part in.
    let logged = out
        .lines()
        .find(|l| l.starts_with("sharing log entries written"))
        .unwrap_or_else(|| panic!("no sharing log count in:\n{out}"));
    let counts: Vec<u64> = logged
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|n| *n > 0),
        "{logged}"
    );
}

#[test]
fn bench_registry_measures_writes_and_linearizable_reads_on_three_servers() {
    let out = bench(
        &["registry", "--clients", "2", "--duration", "1"],
        Duration::from_secs(120),
    );
    assert!(out.contains("3 servers"), "{out}");
    for label in [
        "baseline: mTLS round trip",
        "conditional write (CAS)",
        "linearizable read",
    ] {
        let (per_second, errors) = row(&out, 2, label);
        assert!(per_second > 0.0, "{label}: nothing completed\n{out}");
        assert_eq!(errors, 0, "{label}: failed operations\n{out}");
    }
    // The servers' CPU time per operation, apart from the clients'.
    let cpu = out
        .lines()
        .find(|l| l.contains("CPU of the registry's 3 servers together per operation"))
        .unwrap_or_else(|| panic!("no CPU line in:\n{out}"));
    assert!(
        micros_after(cpu, "CAS ") > 0.0 && micros_after(cpu, "read ") > 0.0,
        "{cpu}"
    );
}

/// The number of microseconds `line` gives after `label` ("CAS 156 µs").
fn micros_after(line: &str, label: &str) -> f64 {
    let (_, rest) = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"));
    let (n, _) = rest
        .split_once(" µs")
        .unwrap_or_else(|| panic!("no time after {label:?} in {line:?}"));
    n.parse()
        .unwrap_or_else(|_| panic!("{n:?} is not a number in {line:?}"))
}

#[test]
fn bench_registry_against_etcd_says_when_etcd_is_not_installed() {
    let out = Command::new(lgsp_tests::lgsp_bin())
        .args(["bench", "registry", "--clients", "2", "--duration", "1"])
        .arg("--against-etcd")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no `etcd` on the PATH"), "{stderr}");
    assert!(stderr.contains("apt-get install etcd-server"), "{stderr}");
}

#[test]
fn bench_registry_against_etcd_runs_both_in_turn_and_reports_the_ratios() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("etcd is not installed (apt-get install etcd-server): nothing to compare with");
        return;
    }
    let out = bench(
        &[
            "registry",
            "--clients",
            "2",
            "--duration",
            "1",
            "--against-etcd",
        ],
        Duration::from_secs(180),
    );
    for label in [
        "conditional write (CAS)",
        "linearizable read",
        "etcd: put",
        "etcd: conditional write (txn)",
        "etcd: linearizable read",
    ] {
        let (per_second, errors) = row(&out, 2, label);
        assert!(per_second > 0.0, "{label}: nothing completed\n{out}");
        assert_eq!(errors, 0, "{label}: failed operations\n{out}");
    }
    for round in ["round 1:", "round 2:", "round 3:"] {
        assert!(out.contains(round), "{out}");
    }
    // Each round's CPU per operation of lgsp's servers and etcd's members.
    let cpu: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("CPU per operation of the servers alone"))
        .filter(|l| l.trim_start().starts_with("round "))
        .collect();
    assert_eq!(cpu.len(), 3, "{out}");
    for line in cpu {
        for label in ["CAS ", "etcd's put ", "txn ", "read "] {
            assert!(micros_after(line, label) > 0.0, "{line}");
        }
        let (_, etcd_read) = line.rsplit_once("against ").unwrap();
        assert!(micros_after(etcd_read, "") > 0.0, "{line}");
    }
}

#[test]
fn bench_stream_queries_a_whole_dataset_through_both_nodes() {
    let out = bench(
        &["stream", "--size", "4MiB", "--record", "1KiB"],
        Duration::from_secs(120),
    );
    assert!(out.contains("streamed 4096 records, 4 MiB"), "{out}");
    assert!(out.contains("peak growth during the stream"), "{out}");
}

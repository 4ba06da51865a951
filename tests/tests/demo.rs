//! `lgsp demo --scenario`: the whole province on loopback, walked through
//! step by step, exits 0 only if every step did what it should.

use std::time::Duration;

#[test]
fn demo_scenario_runs_a_province_and_every_step_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(lgsp_tests::lgsp_bin())
        .args(["demo", "--scenario", "--dir"])
        .arg(dir.path().join("demo"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
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
}

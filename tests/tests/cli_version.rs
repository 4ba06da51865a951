//! `lgsp --version` names the commit, and `lgsp completion` writes scripts
//! each shell accepts.

use lgsp_tests::lgsp;

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = lgsp(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let commit = head.unwrap_or_else(|| "unknown".to_owned());
    assert!(
        version.starts_with("lgsp ") && version.contains(&format!("(commit {commit})")),
        "{version}"
    );
}

#[test]
fn completion_scripts_cover_the_commands_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef lgsp"),
        ("fish", "complete -c lgsp"),
    ] {
        let out = lgsp(&["completion", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(script.contains(marker), "{shell}: {marker}");
        assert!(
            script.contains("publish-crl") && script.contains("replace-schema"),
            "{shell}"
        );
    }
    // bash itself accepts the script, when it is there.
    if let Ok(status) = std::process::Command::new("bash")
        .args([
            "-n",
            "-c",
            &String::from_utf8_lossy(&lgsp(&["completion", "bash"]).stdout),
        ])
        .status()
    {
        assert!(status.success(), "bash -n refuses the script");
    }
    let out = lgsp(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

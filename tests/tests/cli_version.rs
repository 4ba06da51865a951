//! `lgsp --version` names the commit, and `lgsp completion` writes scripts
//! each shell accepts.

use lgsp_tests::lgsp;

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = lgsp(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    let commit = version
        .trim()
        .strip_prefix("lgsp ")
        .and_then(|v| v.split_once(" (commit "))
        .and_then(|(_, c)| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `lgsp X.Y.Z (commit C)`: {version}"));
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !in_git {
        assert_eq!(commit, "unknown", "{version}");
        return;
    }
    // The binary may be older than HEAD (built before the last commit),
    // but it names a commit of this repository.
    assert!(
        commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "{version}"
    );
    let known = std::process::Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status()
        .unwrap();
    assert!(known.success(), "{commit} is not a commit here: {version}");
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

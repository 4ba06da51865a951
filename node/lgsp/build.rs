//! Two things the binary needs at build time:
//! - the etcd v3 client the registry bench measures lgsp against
//!   (`proto/etcd/kv.proto`, a subset of etcd's API), generated with protox
//!   like the lgsp protocol itself: no system `protoc`;
//! - the git commit it was built from, for `lgsp --version`:
//!   `git rev-parse --short HEAD` when git and the repository are there,
//!   "unknown" otherwise (a source tarball, a build without git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;

    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LGSP_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself, and the branch it points at.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}

//! Running Python's `grpcio` against lgsp: the tests that show a client in
//! another language works (tests/python/).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// Runs `python3` with `args`, giving up after `limit`.
pub async fn python(args: Vec<String>, limit: Duration) -> Output {
    let child = tokio::process::Command::new("python3")
        .args(&args)
        .env("PYTHONIOENCODING", "utf-8")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(limit, child)
        .await
        .unwrap_or_else(|_| panic!("python3 {args:?} still running after {limit:?}"))
        .expect("run python3")
}

/// Panics, saying what to install, when Python's gRPC packages are missing.
pub fn require_grpcio() {
    let found = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match found {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Python's gRPC packages are missing ({}); run `pip install grpcio grpcio-tools` \
             (.ci/run installs them)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}); install Python 3, then `pip install grpcio grpcio-tools`"
        ),
    }
}

/// Generates the Python stubs of every lgsp/v1 proto file into `out`.
pub async fn generate_stubs(out: &Path) {
    let root = workspace_root();
    let mut protos: Vec<String> = std::fs::read_dir(root.join("proto/lgsp/v1"))
        .expect("proto/lgsp/v1")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    protos.sort();
    assert!(!protos.is_empty(), "no proto files in proto/lgsp/v1");
    let mut args = vec![
        "-m".to_owned(),
        "grpc_tools.protoc".to_owned(),
        format!("-I{}", root.join("proto").display()),
        format!("--python_out={}", out.display()),
        format!("--grpc_python_out={}", out.display()),
    ];
    args.extend(protos);
    let protoc = python(args, Duration::from_secs(60)).await;
    assert!(
        protoc.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&protoc.stderr)
    );
    assert!(out.join("lgsp/v1/exchange_pb2_grpc.py").exists());
}

/// Panics, saying what to install, when Python's `openapi-spec-validator`
/// is missing.
pub fn require_openapi_validator() {
    let found = Command::new("python3")
        .args(["-c", "import openapi_spec_validator, jsonschema"])
        .output();
    match found {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Python's openapi-spec-validator is missing ({}); run `pip install openapi-spec-validator` \
             (.ci/run installs it)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}); install Python 3, then `pip install openapi-spec-validator`"
        ),
    }
}

//! Generates the lgsp.v1 messages and services with protox (a protobuf
//! compiler in Rust), so a fresh machine needs no system `protoc`.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "lgsp/v1/identity.proto",
    "lgsp/v1/catalog.proto",
    "lgsp/v1/exchange.proto",
    "lgsp/v1/registry.proto",
    "lgsp/v1/hub.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Kept for gRPC reflection.
    std::fs::write(out.join("lgsp_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

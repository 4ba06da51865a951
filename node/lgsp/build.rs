//! Generates the etcd v3 client the registry bench measures lgsp against
//! (`proto/etcd/kv.proto`, a subset of etcd's API), with protox like the
//! lgsp protocol itself: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}

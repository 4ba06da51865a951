//! The `lgsp` binary: parses the command line and hands over to the
//! libraries. The demo and the benchmarks live here, not in the node's
//! library, so that a production node carries neither.

mod bench;
mod cli;
mod demo;
mod etcd;
mod json_server;
mod loopback;
mod server_cpu;
mod signal;

// sled copies a tree node on every update and tonic allocates per call:
// mimalloc does both in a fraction of glibc's time (see README, benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}

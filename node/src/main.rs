//! The `lgsp` binary: parses the command line and hands over to the library.

// sled copies a tree node on every update and tonic allocates per call:
// mimalloc does both in a fraction of glibc's time (see README, benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lgsp_node::cli::main()
}

//! The `lgsp` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    lgsp_node::cli::main()
}

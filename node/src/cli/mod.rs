//! The `lgsp` command line: one binary for the CA, the registry, agency
//! nodes, the hub and their operators.
//!
//! Usage errors (a bad flag or value) exit with code 2 and a message naming
//! the flag; failures of the work itself exit with code 1 and one line
//! saying what went wrong.

mod ca;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// lgsp: the provincial data-exchange platform (Nền tảng chia sẻ, tích hợp dùng chung, LGSP).
///
/// Every agency runs a node that serves its data over gRPC with mutual TLS; a
/// Raft-replicated registry keeps the shared service catalog; the provincial
/// hub bridges to the national platform. Set RUST_LOG (e.g. RUST_LOG=debug)
/// to see more of what happens.
#[derive(Debug, Parser)]
#[command(name = "lgsp", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The provincial certificate authority: make the CA, issue and sign
    /// certificates, revoke them, publish CRLs, show what a certificate says.
    #[command(subcommand)]
    Ca(ca::CaCommand),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line: `what failed: why: root cause`.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

//! `lgsp bench`: benchmarks as commands, each with its baseline.

use anyhow::Result;
use clap::Subcommand;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Start a registry cluster on loopback in this process and measure
    /// conditional writes and linearizable reads at each client count.
    Registry {
        /// How many registry servers.
        #[arg(long, default_value_t = 3)]
        servers: u64,
        /// Concurrent clients, comma-separated: one run per value.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    let rt = super::runtime()?;
    match cmd {
        BenchCommand::Registry {
            servers,
            clients,
            duration,
        } => rt.block_on(crate::bench::registry(
            servers,
            &clients,
            Duration::from_secs(duration),
        )),
    }
}

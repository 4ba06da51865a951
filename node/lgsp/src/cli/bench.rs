//! `lgsp bench`: benchmarks as commands, each with its baseline.

use anyhow::Result;
use clap::Subcommand;
use clap::builder::RangedU64ValueParser;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(super) enum BenchCommand {
    /// Start a registry cluster on loopback in this process and measure
    /// conditional writes and linearizable reads at each client count, and
    /// the CPU time the servers (not the clients) spend per operation.
    ///
    /// Example: lgsp bench registry --servers 3 --clients 1,16 --duration 5
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
        /// Also start a three-member etcd on loopback (the system's `etcd`,
        /// Debian package etcd-server) and run the same load on it,
        /// interleaved with lgsp's runs; fails when etcd is not installed.
        #[arg(long)]
        against_etcd: bool,
    },
    /// Start a registry and two agency nodes on loopback in this process and
    /// measure an application calling agency A's services directly and
    /// through its own agency's node, next to a raw tonic mTLS echo.
    ///
    /// Example: lgsp bench exchange --payload 10KiB --concurrency 1,16,64
    Exchange {
        /// Bytes per call: a number with B, KiB or MiB (100B, 10KiB, 1MiB).
        #[arg(long, default_value = "100B", value_parser = parse_size)]
        payload: usize,
        /// Calls in flight, comma-separated: one run per value.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1,16,64",
            value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000)
        )]
        concurrency: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        duration: u64,
        /// Also run a second lgsp instance and measure the path through both
        /// hubs (node C → hub → hub → node A), next to node B → node A.
        #[arg(long)]
        hub: bool,
    },
    /// Import a large dataset into node A and stream it whole to agency B's
    /// application through both nodes; report the throughput and whether
    /// memory stays flat.
    ///
    /// Example: lgsp bench stream --size 256MiB --record 1KiB
    Stream {
        /// Size of the dataset: 256MiB, 1GiB...
        #[arg(long, default_value = "1GiB", value_parser = parse_total)]
        size: usize,
        /// Size of one record.
        #[arg(long, default_value = "1KiB", value_parser = parse_size)]
        record: usize,
    },
}

/// The largest dataset the stream bench makes.
const MAX_STREAM: usize = 8 << 30;

/// Parses a dataset size: `256MiB`, `1GiB`, up to 8GiB.
fn parse_total(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let unit: usize = match unit {
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: write the dataset size as 256MiB or 1GiB"
            ));
        }
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|b| *b > 0 && *b <= MAX_STREAM)
        .ok_or_else(|| format!("{text:?} is not a size from 1MiB to 8GiB"))
}

/// The largest payload the exchange bench accepts.
const MAX_PAYLOAD: usize = 16 << 20;

/// Parses `100B`, `10KiB`, `1MiB` (or a plain number of bytes).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_bytes: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        other => {
            return Err(format!(
                "unknown unit {other:?}: write the size as 100B, 10KiB or 1MiB"
            ));
        }
    };
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: write it as 100B, 10KiB or 1MiB"))?;
    let bytes = number
        .checked_mul(unit_bytes)
        .filter(|b| *b <= MAX_PAYLOAD)
        .ok_or_else(|| format!("{text} is more than the 16MiB this bench allows"))?;
    Ok(bytes)
}

pub(super) fn run(cmd: BenchCommand) -> Result<()> {
    let rt = super::runtime()?;
    match cmd {
        BenchCommand::Registry {
            servers,
            clients,
            duration,
            against_etcd,
        } => rt.block_on(crate::bench::registry(
            servers,
            &clients,
            Duration::from_secs(duration),
            against_etcd,
        )),
        BenchCommand::Exchange {
            payload,
            concurrency,
            duration,
            hub,
        } => rt.block_on(crate::bench::exchange(
            payload,
            &concurrency,
            Duration::from_secs(duration),
            hub,
        )),
        BenchCommand::Stream { size, record } => rt.block_on(crate::bench::stream(size, record)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn payload_sizes_are_read_in_binary_units() {
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("10KiB"), Ok(10 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
    }

    #[test]
    fn unknown_units_and_huge_sizes_are_refused() {
        assert!(parse_size("10kb").unwrap_err().contains("unknown unit"));
        assert!(parse_size("KiB").unwrap_err().contains("not a size"));
        assert!(parse_size("1GiB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("17MiB").unwrap_err().contains("16MiB"));
    }
}

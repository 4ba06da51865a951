//! `lgsp audit`: checking and shipping a node's sharing log (nhật ký chia sẻ dữ liệu,
//! D47 Art. 45). Both work on the file alone, while the node runs or after it stopped.

use super::UsageError;
use anyhow::{Context, Result};
use clap::Subcommand;
use lgsp_sharing_log::{self as sharing_log, AuditError, TimeRange};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check that a sharing log is intact: every entry's hash, the numbering and
    /// the chain of entries, and every seal's signature. Prints a summary; fails
    /// naming the first line (and entry) that was changed, removed or moved.
    /// Entries after the last seal are reported but are not a failure: the node
    /// seals every second.
    Verify {
        /// The sharing log, sharing-log.jsonl in the node's data directory.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// The node's certificate (PEM), whose key signed the seals. Repeat the
        /// flag, or put several certificates in the file, when the node's key
        /// was renewed: a seal made by any of them is accepted.
        #[arg(long, value_name = "FILE", required = true)]
        cert: Vec<PathBuf>,
    },
    /// Write the log's entries (not its seals) within a time range as JSON
    /// Lines, byte for byte as logged, so the receiver can re-check their hashes.
    /// Does not verify the log; run `lgsp audit verify` for that.
    Export {
        /// The sharing log, sharing-log.jsonl in the node's data directory.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// The first time to include: RFC 3339 (2025-03-01T08:00:00+07:00) or a
        /// date (2025-03-01, from 00:00 UTC). Default: the beginning of the log.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// The last time to include: RFC 3339, or a date (up to the end of that
        /// day, UTC). Default: the end of the log.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Where to write the entries (overwritten if it exists). Default: standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub(super) fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify { log, cert } => verify(&log, &cert),
        AuditCommand::Export { log, from, to, out } => {
            export(&log, from.as_deref(), to.as_deref(), out.as_deref())
        }
    }
}

fn verify(log: &Path, certs: &[PathBuf]) -> Result<()> {
    let mut pem = String::new();
    for path in certs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the certificate {}", path.display()))?;
        pem.push_str(&text);
        pem.push('\n');
    }
    match sharing_log::verify(log, &pem) {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(error @ AuditError::Tampered { .. }) => Err(anyhow::Error::new(error).context(
            format!("sharing log {} has been tampered with", log.display()),
        )),
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("cannot verify the sharing log {}", log.display()))),
    }
}

fn export(log: &Path, from: Option<&str>, to: Option<&str>, out: Option<&Path>) -> Result<()> {
    // Bounds first: a typo must not truncate the output file.
    let range = TimeRange::parse(from, to).map_err(|e| UsageError(e.to_string()))?;
    let result = match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let count = sharing_log::export(log, &range, &mut writer);
            writer
                .flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
            count
        }
        None => {
            let mut writer = std::io::BufWriter::new(std::io::stdout().lock());
            let count = sharing_log::export(log, &range, &mut writer);
            writer.flush().context("cannot write to standard output")?;
            count
        }
    };
    match result {
        Ok(count) => {
            let what = if count == 1 { "entry" } else { "entries" };
            match out {
                Some(path) => eprintln!("exported {count} {what} to {}", path.display()),
                None => eprintln!("exported {count} {what}"),
            }
            Ok(())
        }
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("cannot export the sharing log {}", log.display()))),
    }
}

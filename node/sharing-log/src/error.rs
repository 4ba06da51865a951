//! What the sharing log can fail at or find wrong, in one error type shared by the
//! writer, verification and export.

use std::io;
use std::path::{Path, PathBuf};

/// Everything the sharing log can fail at or find wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log was changed after it was written: `line` counts from 1, `seq` is the entry
    /// the line holds when it is an entry that could be read.
    #[error("line {line}{}: {why}", entry_note(.seq))]
    Tampered {
        line: usize,
        seq: Option<u64>,
        why: String,
    },
    #[error(
        "{path}: the last line is not a valid entry or seal ({why}); run `lgsp audit verify --log {path}` to see what happened"
    )]
    BadTail { path: PathBuf, why: String },
    #[error("cannot sign the sharing log: {0}")]
    Key(String),
    #[error("cannot check the seals with this certificate: {0}")]
    Cert(String),
    #[error(
        "malformed time {0:?}: expected RFC 3339 (2025-03-01T08:00:00+07:00) or a date (2025-03-01, a whole day in UTC)"
    )]
    BadTime(String),
    #[error("the time range is empty: {from} is after {to}")]
    EmptyRange { from: String, to: String },
    #[error("the sharing log stopped after a write failed ({0}); restart the node to reopen it")]
    Stopped(String),
}

fn entry_note(seq: &Option<u64>) -> String {
    seq.map(|s| format!(" (entry {s})")).unwrap_or_default()
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

//! What the sharing log can fail at or find wrong, in one error type shared by the
//! writer, verification and export.

use std::io;
use std::path::{Path, PathBuf};

/// Everything the sharing log can fail at or find wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log (or export output) could not be opened, read, written or synced.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory; `<output>` for an export's destination.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The log was changed after it was written: `line` counts from 1, `seq` is the entry
    /// the line holds when it is an entry that could be read.
    #[error("line {line}{}: {why}", entry_note(.seq))]
    Tampered {
        /// The line, counted from 1.
        line: usize,
        /// The entry's sequence number, when the line is an entry that could be read.
        seq: Option<u64>,
        /// What is wrong with it: a hash, number, link or signature that does
        /// not check, or a line that does not parse.
        why: String,
    },
    /// A log (or export) holds entries and not one seal: anyone could have written it.
    #[error(
        "no seal: nothing proves this log was written by {signer} ({entries} {} without a seal)",
        if *.entries == 1 { "entry" } else { "entries" }
    )]
    NoSeal {
        /// The node the given certificates name.
        signer: String,
        /// How many entries the log holds.
        entries: u64,
    },
    /// Entries `first..=last` come after the last seal, in a closed log, or in a live
    /// one when they are older than a running node leaves entries unsealed.
    #[error("{}", unsealed_message(*.first, *.last, *.stale))]
    Unsealed {
        /// The first entry no seal covers.
        first: u64,
        /// The last entry of the log.
        last: u64,
        /// For a live log, why they are not the few seconds a running node leaves
        /// unsealed. `None` for a closed log.
        stale: Option<Stale>,
    },
    /// Opening a log whose last complete line is neither an entry nor a seal:
    /// damage, not a crash, so the log is not continued.
    #[error(
        "{path}: the last line is not a valid entry or seal ({why}); run `lgsp audit verify --log {path}` to see what happened"
    )]
    BadTail {
        /// The log file.
        path: PathBuf,
        /// Why the last line could not be read.
        why: String,
    },
    /// The node's key cannot sign seals: not a PKCS#8 ECDSA P-256 key, not
    /// the certificate's, or the certificate names no SPIFFE ID. Holds why.
    #[error("cannot sign the sharing log: {0}")]
    Key(String),
    /// The certificates given to check seals cannot be used: the PEM holds
    /// none, or one's key is not an ECDSA P-256 key. Holds why.
    #[error("cannot check the seals with this certificate: {0}")]
    Cert(String),
    /// An export bound that is neither RFC 3339 nor a date; holds it as given.
    #[error(
        "malformed time {0:?}: expected RFC 3339 (2025-03-01T08:00:00+07:00) or a date (2025-03-01, a whole day in UTC)"
    )]
    BadTime(String),
    /// An export range whose start is after its end.
    #[error("the time range is empty: {from} is after {to}")]
    EmptyRange {
        /// The start as given.
        from: String,
        /// The end as given.
        to: String,
    },
    /// An anchor that cannot be used: not an anchor file, or its seal does
    /// not verify against the given certificates. Holds why.
    #[error("the anchor cannot be trusted: {0}")]
    BadAnchor(String),
    /// The log ends before the entry an anchor kept outside the node names:
    /// it was cut at its end, seals and all.
    #[error(
        "the log ends at entry {last}, but {anchor} anchored entry {anchored}: {}",
        missing(*.last, *.anchored)
    )]
    BehindAnchor {
        /// The log's last entry (0 for an empty log).
        last: u64,
        /// The entry the anchor names.
        anchored: u64,
        /// The anchor, described: which node, where it was kept, when sealed.
        anchor: String,
    },
    /// An export whose signed header names a last entry it does not reach:
    /// it was cut short.
    #[error(
        "the export's signed header says its range runs to entry {last}, but the export ends at entry {reached}: {}",
        missing(*.reached, *.last).replace("the log was cut at its end", "the export was cut short")
    )]
    ShortExport {
        /// The last entry of the range, as the header says.
        last: u64,
        /// The last entry the export holds.
        reached: u64,
    },
    /// An append or seal after an earlier write failed: the file's end is
    /// unknown, so the log refuses to chain onto it until the node restarts.
    /// Holds the first failure.
    #[error("the sharing log stopped after a write failed ({0}); restart the node to reopen it")]
    Stopped(String),
}

/// Why the unsealed entries of a live log are not ones the node has yet to seal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The oldest was written this many seconds before the verification.
    Old(u64),
    /// The newest is dated this many seconds after the verification.
    Future(u64),
    /// One's time cannot be read.
    NoTime,
}

fn unsealed_message(first: u64, last: u64, stale: Option<Stale>) -> String {
    let entries = if first == last {
        format!("entry {first} is")
    } else {
        format!("entries {first}..{last} are")
    };
    let age = match stale {
        None => String::new(),
        Some(Stale::Old(s)) => format!(
            " and the oldest was written {s} s ago, longer than a running node leaves entries unsealed"
        ),
        Some(Stale::Future(s)) => format!(" and the newest is dated {s} s in the future"),
        Some(Stale::NoTime) => " and one has a time that cannot be read".to_owned(),
    };
    format!("{entries} not sealed{age}: the log may have been cut or appended to")
}

fn missing(last: u64, anchored: u64) -> String {
    if last + 1 == anchored {
        format!("entry {anchored} and its seal are missing: the log was cut at its end")
    } else {
        format!(
            "entries {}..{anchored} and their seals are missing: the log was cut at its end",
            last + 1
        )
    }
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

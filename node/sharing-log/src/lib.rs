//! The sharing log (nhật ký chia sẻ dữ liệu, D47 Art. 45): one line for every data
//! exchange this node takes part in, on the provider side and on the consumer side,
//! so that an auditor can tell afterwards who asked for what, when, and what came of it.
//!
//! The log is an append-only JSON Lines file, `<dir>/sharing-log.jsonl`, rather than a
//! database: auditors can read and ship it while the node runs, and a changed byte is
//! found by its line. It holds two kinds of line.
//!
//! - An **entry**, `{"seq":1,"time":"…","request_id":"…",…,"prev":"…","hash":"…"}`, with
//!   the fields in the order of [`Entry`]. `hash` is the SHA-256 (lower-case hex) of the
//!   entry's *canonical form*: the compact JSON object of every field but `hash`, in that
//!   order, as serde_json writes it (no whitespace, non-ASCII text as raw UTF-8, only `"`,
//!   `\` and control characters escaped). That is exactly the line with its final
//!   `,"hash":"…"` member removed, so the hash covers every byte of the line. `prev` is the
//!   previous entry's hash (64 zeros for entry 1): the entries form a chain.
//! - A **seal**, `{"seal":{"seq":N,"head":"…","time":"…","signature":"…","signer":"…"}}`,
//!   written at least once a second when entries were added: the node's ECDSA P-256
//!   signature (SHA-256, fixed-width `r‖s`, hex) over `"lgsp-sharing-log-seal\n" + N + "\n" +
//!   head`, where `head` is the hash of entry N. Anyone who edits the file can recompute the
//!   chain; nobody without the node's key can make a seal, so an edit to a sealed entry is
//!   found even when every hash after it was recomputed.
//!
//! What the file alone cannot show is its end cut off, seals included: ship the log off the
//! node (`lgsp audit export`) to guard against that.
//!
//! One module per job: `format` (the lines and their hashes), `writer` (appending,
//! sealing, recovery after a crash), `verify`, `export`, `timestamp` (the times in
//! lines and export bounds), `lines` (reading a log forwards) and `certificate` (the
//! keys seals are checked against).

mod certificate;
mod error;
mod export;
mod format;
mod lines;
mod timestamp;
mod verify;
mod writer;

#[cfg(test)]
mod test_support;

pub use error::AuditError;
pub use export::{TimeRange, export};
pub use format::{Entry, Exchange, GENESIS, Seal};
pub use verify::{VerifyReport, verify};
pub use writer::{LOG_FILE, SEAL_INTERVAL, SharingLog, Signer};

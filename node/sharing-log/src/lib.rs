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
//!   previous entry's hash (64 zeros for entry 1): the entries form a chain. An entry of
//!   an exchange with an external system may hold `external_ids` (after `bytes_out`), the
//!   ids that system gave it (an X-Road security server's `x-road-id` and
//!   `x-road-request-id`); entries without them have no such member. An entry of an
//!   exchange made on behalf of a consumer of another instance (or of an outside REST
//!   system) holds `on_behalf_of` (after them): base64 of the signed record this node
//!   signed or accepted (`SignedOnBehalfOf`, hub.proto), which `lgsp audit verify` checks.
//! - A **seal**, `{"seal":{"v":2,"seq":N,"head":"…","time":"…","signer":"…","cert":"…",
//!   "signature":"…"}}`, written at least once a second when entries were added, and when
//!   the log is closed: the node's ECDSA P-256 signature (SHA-256, fixed-width `r‖s`,
//!   hex) over `"lgsp-sharing-log-seal/v2\n"` followed by the seal's JSON object without
//!   `signature` ([`Seal::message`]). `head` is the hash of entry N, `signer` the node's
//!   SPIFFE ID and `cert` the SHA-256 of its certificate, so the signature covers every
//!   field the seal shows. Anyone who edits the file can recompute the chain; nobody
//!   without the node's key can make a seal, so an edit to a sealed entry is found even
//!   when every hash after it was recomputed.
//!
//!   Seals without `v` are version 1, written before lgsp versioned them: their signature
//!   covers only `"lgsp-sharing-log-seal\n" + N + "\n" + head`. They still verify, and
//!   `verify` reports them, as their time and signer could have been edited.
//!
//! A closed log must end with a seal, and `verify` fails entries that no seal covers:
//! those are where the log was cut (seals included) or appended to. A running node's
//! log may end in at most a few seconds of unsealed entries ([`LogState::Live`]). What
//! the file alone cannot show is its end cut off right after a seal: the rest is whole.
//! An **anchor** ([`Anchor`], [`verify_anchored`]) shows it: the node publishes its
//! newest seal outside itself (to the registry), and the log must reach that entry
//! with that chain head.
//!
//! An **export** ([`export`], [`verify_export`]) is the entries of a time range with the
//! seals that cover them and the chain head before them, under a header the node's key
//! signs (the range, its first and last entries): it verifies on its own, and an export
//! cut short fails.
//!
//! One module per job: `format` (the lines and their hashes), `writer` (appending,
//! sealing, recovery after a crash), `verify`, `export`, `anchor`, `timestamp` (the
//! times in lines and export bounds), `lines` (reading a log forwards) and
//! `certificate` (the keys seals are checked against).

mod anchor;
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

pub use anchor::Anchor;
pub use error::{AuditError, Stale};
pub use export::{ExportSummary, TimeRange, export, export_summary, plan_export};
pub use format::{EXPORT_VERSION, Entry, Exchange, ExportHeader, GENESIS, SEAL_VERSION, Seal};
pub use verify::{
    LIVE_WINDOW, LogState, VerifyReport, verify, verify_anchored, verify_export, verify_with,
};
pub use writer::{LOG_FILE, SEAL_INTERVAL, SharingLog, Signer};

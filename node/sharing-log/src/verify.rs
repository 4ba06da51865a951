//! Checking a whole log, or an export of part of one: every entry's hash, the numbering,
//! the chain of `prev` links, every seal's signature over its fields, and that seals
//! cover every entry (all of them in a closed log; a live log may have a few seconds of
//! entries not sealed yet).

use crate::anchor::Anchor;
use crate::certificate::{certificates, public_key_point};
use crate::error::{AuditError, Stale};
use crate::format::{
    EXPORT_PREFIX, EXPORT_VERSION, ExportHeader, GENESIS, SEAL_PREFIX, SEAL_VERSION, Seal,
    decode_entry, decode_export_header, decode_seal,
};
use crate::lines::{Line, open_lines};
use crate::timestamp::parse_time;
use lgsp_certs::inspect::CertInfo;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far from the time of verification the unsealed entries of a live log may be.
/// The node seals every second ([`SEAL_INTERVAL`](crate::SEAL_INTERVAL)); the rest is
/// room for a busy disk and a verifier that read the file a moment late.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);

/// Whether the log may still be being written, which decides what its entries after
/// the last seal mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogState {
    /// The node stopped, or this is a copy: it sealed before closing, so every entry
    /// must be sealed. Entries after the last seal mean the log was cut (with the
    /// seals that followed) or appended to.
    #[default]
    Closed,
    /// The node is running: entries written within [`LIVE_WINDOW`] of `now` may be
    /// unsealed yet. Their content is vouched for by nothing until the next seal.
    Live {
        /// The time of verification.
        now: SystemTime,
    },
}

impl LogState {
    /// A log being written, verified now.
    pub fn live() -> Self {
        LogState::Live {
            now: SystemTime::now(),
        }
    }
}

/// What [`verify`] found in a log that is intact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The export's header when the file is an export; `None` for a whole log.
    pub export: Option<ExportHeader>,
    /// Entries checked: hash, number and `prev` link.
    pub entries: u64,
    /// Seals whose signature verified.
    pub seals: u64,
    /// Of those, seals in version 1 (written before lgsp 's seals were versioned), whose
    /// signature covers their entry number and head but not their time and signer.
    pub v1_seals: u64,
    /// The newest entry a seal covers.
    pub last_sealed: Option<u64>,
    /// Entries after the last seal, accepted because the log is live and they are
    /// recent: an edit to them is found only by the hash chain.
    pub unsealed: u64,
    /// The file ends in a line without its newline: one being written, or left by a crash.
    /// It is not checked.
    pub partial_last_line: bool,
    /// The anchor checked against, described ([`Anchor`]'s display), when one was given.
    pub anchor: Option<String>,
    /// The anchored entry, when the file holds it and its hash is the anchored head.
    /// `None` with an anchor only for an export that does not hold that entry.
    pub anchored: Option<u64>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.export {
            None => write!(
                f,
                "sharing log OK: {} {}",
                group(self.entries),
                plural(self.entries, "entry", "entries"),
            )?,
            Some(header) if self.entries == 0 => write!(
                f,
                "sharing log export OK: no entries after entry {}",
                header.first - 1
            )?,
            Some(header) => write!(
                f,
                "sharing log export OK: entries {} to {} ({} {}), chained from the head before entry {}",
                group(header.first),
                group(header.first + self.entries - 1),
                group(self.entries),
                plural(self.entries, "entry", "entries"),
                group(header.first),
            )?,
        }
        write!(
            f,
            ", {} {}",
            group(self.seals),
            plural(self.seals, "seal", "seals")
        )?;
        if let Some(last) = self.last_sealed {
            write!(f, ", last sealed entry {}", group(last))?;
        }
        match (self.unsealed, self.last_sealed) {
            (0, _) => {}
            (1, Some(_)) => write!(
                f,
                "; 1 entry after the last seal is not yet sealed (the log is live)"
            )?,
            (n, Some(_)) => write!(
                f,
                "; {} entries after the last seal are not yet sealed (the log is live)",
                group(n)
            )?,
            (1, None) => write!(f, "; the 1 entry is not yet sealed (the log is live)")?,
            (n, None) => write!(
                f,
                "; none of the {} entries is sealed yet (the log is live)",
                group(n)
            )?,
        }
        if self.v1_seals > 0 {
            write!(
                f,
                "; {} {} in the old format (version 1), whose signature does not cover the seal's time and signer",
                group(self.v1_seals),
                plural(self.v1_seals, "seal is", "seals are"),
            )?;
        }
        match (&self.anchor, self.anchored) {
            (Some(anchor), Some(_)) => write!(f, "; reaches {anchor}")?,
            (Some(anchor), None) => {
                write!(f, "; {anchor} lies outside the export and was not checked")?
            }
            (None, _) => {}
        }
        if self.partial_last_line {
            write!(
                f,
                "; the last line is incomplete (being written, or torn by a crash) and was not checked"
            )?;
        }
        Ok(())
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let head = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = digits[..head].to_owned();
    for chunk in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).expect("ASCII digits"));
    }
    out
}

/// A certificate seals may be checked against.
struct SealKey {
    point: Vec<u8>,
    sha256: String,
    /// The SPIFFE ID, when the certificate carries one.
    spiffe_id: Option<String>,
}

impl SealKey {
    fn verifies(&self, seal: &Seal, signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.point)
            .verify(&seal.message(), signature)
            .is_ok()
    }
}

fn seal_keys(cert_pem: &str) -> Result<Vec<SealKey>, AuditError> {
    let keys = certificates(cert_pem)?
        .iter()
        .map(|der| {
            let info = CertInfo::from_der(der, Path::new("<certificate>"))
                .map_err(|e| AuditError::Cert(e.to_string()))?;
            Ok(SealKey {
                point: public_key_point(der)?,
                sha256: info.sha256,
                spiffe_id: info.spiffe_id.ok().map(|id| id.to_string()),
            })
        })
        .collect::<Result<Vec<_>, AuditError>>()?;
    if keys.is_empty() {
        return Err(AuditError::Cert("the PEM holds no CERTIFICATE".into()));
    }
    Ok(keys)
}

/// Why a version 2 signature (of a seal or an export header) does not verify
/// with `keys`: the certificate it names is not among them, the signature is
/// not hex or not that key's over `message`, or the signer it names is not that
/// certificate's. `what` names the signed thing in the message.
fn check_v2_signature(
    keys: &[SealKey],
    what: &str,
    message: &[u8],
    cert: Option<&str>,
    signer: Option<&str>,
    signature: Option<&str>,
) -> Result<(), String> {
    let named = cert.unwrap_or_default();
    let Some(key) = keys.iter().find(|key| key.sha256 == named) else {
        return Err(format!(
            "{what} has a bad signature: it names certificate sha256 {named}, which is none of the given certificates"
        ));
    };
    let Ok(signature) = hex::decode(signature.unwrap_or_default()) else {
        return Err(format!("{what} has a bad signature (not hex)"));
    };
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.point)
        .verify(message, &signature)
        .is_err()
    {
        return Err(format!(
            "{what} has a bad signature (its fields were changed after signing, or it was not made by the key of certificate {named})"
        ));
    }
    let signer = signer.unwrap_or_default();
    if let Some(id) = &key.spiffe_id
        && id != signer
    {
        return Err(format!(
            "{what} names signer {signer} but its certificate is {id}'s"
        ));
    }
    Ok(())
}

/// Checks a whole log as [`verify_with`] does, as a closed log: every entry must be
/// sealed.
pub fn verify(path: &Path, cert_pem: &str) -> Result<VerifyReport, AuditError> {
    verify_with(path, cert_pem, LogState::Closed)
}

/// Checks a log, or an export of one (a file whose first line is an export header), with
/// the public key of a certificate in `cert_pem` (give several when the node's key was
/// renewed; any may have signed):
///
/// - every entry's hash against its bytes, the numbering and the `prev` links, from
///   [`GENESIS`] for a log and from the header's head for an export;
/// - every seal: its entry is the one before it, its head is that entry's hash, and its
///   signature verifies over all its fields (over its number and head only for a
///   version 1 seal) with the key of the certificate it names;
/// - that the last entry is sealed. Only a [`LogState::Live`] log may end in unsealed
///   entries, when they were written within [`LIVE_WINDOW`] of its `now`; an export is
///   always closed.
///
/// Returns what was found when all holds. Fails with [`AuditError::Tampered`] naming
/// the first line that is wrong, [`AuditError::NoSeal`] for entries without any seal,
/// [`AuditError::Unsealed`] for entries after the last seal, [`AuditError::Cert`] when
/// `cert_pem` holds no usable certificate, and [`AuditError::Io`] when the file cannot
/// be read.
pub fn verify_with(
    path: &Path,
    cert_pem: &str,
    state: LogState,
) -> Result<VerifyReport, AuditError> {
    Checker::new(cert_pem, state, false)?.run(path)
}

/// Checks a log as [`verify_with`] does, and against `anchor`, a seal of the
/// log kept outside the node: the anchor's own signature must verify with a
/// certificate in `cert_pem`, and the log must reach the anchored entry with
/// the anchored chain head. What the file alone cannot show, a log cut at its
/// end together with its last seals, fails here.
///
/// Fails as [`verify_with`] does, and with [`AuditError::BadAnchor`] when the
/// anchor's seal does not verify, [`AuditError::BehindAnchor`] when the log
/// ends before the anchored entry, and [`AuditError::Tampered`] naming the
/// anchored entry when its hash is another. For an export, the anchored entry
/// is checked when the export holds it.
pub fn verify_anchored(
    path: &Path,
    cert_pem: &str,
    state: LogState,
    anchor: &Anchor,
) -> Result<VerifyReport, AuditError> {
    let mut checker = Checker::new(cert_pem, state, false)?;
    if anchor.seal.v != Some(SEAL_VERSION) {
        return Err(AuditError::BadAnchor(format!(
            "its seal is not in format version {SEAL_VERSION}, the only one anchors carry"
        )));
    }
    check_v2_signature(
        &checker.keys,
        &format!("the seal of entry {}", anchor.seal.seq),
        &anchor.seal.message(),
        anchor.seal.cert.as_deref(),
        Some(&anchor.seal.signer),
        Some(&anchor.seal.signature),
    )
    .map_err(AuditError::BadAnchor)?;
    checker.report.anchor = Some(anchor.to_string());
    checker.anchor = Some(anchor.clone());
    checker.run(path)
}

/// Checks an export written by [`export`](fn@crate::export) on its own, as
/// [`verify_with`] does, and fails with [`AuditError::Tampered`] when the file does not
/// start with an export header.
pub fn verify_export(path: &Path, cert_pem: &str) -> Result<VerifyReport, AuditError> {
    Checker::new(cert_pem, LogState::Closed, true)?.run(path)
}

/// The state of a check partway through the file.
struct Checker {
    keys: Vec<SealKey>,
    state: LogState,
    export_required: bool,
    report: VerifyReport,
    last_seq: u64,
    head: String,
    /// The first entry checked minus one: where the chain starts.
    start_seq: u64,
    /// A version 2 seal was seen: a version 1 seal after it is a downgrade.
    seen_v2: bool,
    /// The oldest and newest times of the entries after the last seal.
    unsealed_times: Option<(Option<i64>, Option<i64>)>,
    /// The seal kept outside the node that the log must reach.
    anchor: Option<Anchor>,
    /// For an export, the range's last entry and its hash, as the signed header says.
    export_last: Option<(u64, String)>,
}

impl Checker {
    fn new(cert_pem: &str, state: LogState, export_required: bool) -> Result<Self, AuditError> {
        Ok(Self {
            keys: seal_keys(cert_pem)?,
            state,
            export_required,
            report: VerifyReport::default(),
            last_seq: 0,
            head: GENESIS.to_owned(),
            start_seq: 0,
            seen_v2: false,
            unsealed_times: None,
            anchor: None,
            export_last: None,
        })
    }

    fn run(mut self, path: &Path) -> Result<VerifyReport, AuditError> {
        let mut lines = open_lines(path)?;
        loop {
            let (number, line) = match lines.next_line()? {
                Line::Complete(number, line) => (number, line),
                Line::Partial => {
                    self.report.partial_last_line = true;
                    break;
                }
                Line::End => break,
            };
            if number == 1 && line.starts_with(EXPORT_PREFIX) {
                self.start_export(line)?;
            } else if number == 1 && self.export_required {
                return Err(tampered(
                    1,
                    None,
                    "not an export: the first line of an export is its header, {\"export\":…}"
                        .into(),
                ));
            } else if line.starts_with(SEAL_PREFIX) {
                self.seal(line, number)?;
            } else {
                self.entry(line, number)?;
            }
        }
        self.finish()
    }

    fn start_export(&mut self, line: &[u8]) -> Result<(), AuditError> {
        let header = decode_export_header(line, 1)?;
        if header.first == 0 {
            return Err(tampered(1, None, "export header names entry 0".into()));
        }
        if header.first == 1 && header.prev != GENESIS {
            return Err(tampered(
                1,
                None,
                format!("export header starts at entry 1, whose prev must be {GENESIS}"),
            ));
        }
        if header.v != EXPORT_VERSION {
            return Err(tampered(
                1,
                None,
                format!(
                    "export in format version {}, whose header is not signed: a copy cut short could not be told from a whole one; export the range again with this lgsp (`lgsp audit export --key --cert`)",
                    header.v
                ),
            ));
        }
        let (Some(last), Some(last_head)) = (header.last, header.last_head.clone()) else {
            return Err(tampered(
                1,
                None,
                "export header names no last entry and head".into(),
            ));
        };
        if last < header.first {
            return Err(tampered(
                1,
                None,
                format!(
                    "export header's last entry {last} comes before its first, {}",
                    header.first
                ),
            ));
        }
        check_v2_signature(
            &self.keys,
            "export header",
            &header.message(),
            header.cert.as_deref(),
            header.signer.as_deref(),
            header.signature.as_deref(),
        )
        .map_err(|why| tampered(1, None, why))?;
        self.export_last = Some((last, last_head));
        // An export is a copy: nothing more will be written to it.
        self.state = LogState::Closed;
        self.last_seq = header.first - 1;
        self.start_seq = self.last_seq;
        self.head = header.prev.clone();
        self.report.export = Some(header);
        Ok(())
    }

    fn seal(&mut self, line: &[u8], number: usize) -> Result<(), AuditError> {
        let seal = decode_seal(line, number)?;
        let bad = |why: String| Err(tampered(number, None, why));
        if self.report.entries == 0 {
            return bad(format!("seal of entry {} comes before any entry", seal.seq));
        }
        if seal.seq != self.last_seq {
            return bad(format!(
                "seal names entry {} but follows entry {}",
                seal.seq, self.last_seq
            ));
        }
        if seal.head != self.head {
            return bad(format!(
                "seal's head does not match the hash of entry {} (entries before it were changed and their hashes recomputed)",
                self.last_seq
            ));
        }
        let Ok(signature) = hex::decode(&seal.signature) else {
            return bad(format!(
                "seal of entry {} has a bad signature (not hex)",
                seal.seq
            ));
        };
        match seal.v {
            None if self.seen_v2 => {
                return bad(format!(
                    "seal of entry {} is in the old format (version 1) after seals in version {SEAL_VERSION}: lgsp no longer writes it",
                    seal.seq
                ));
            }
            None => {
                if !self.keys.iter().any(|key| key.verifies(&seal, &signature)) {
                    return bad(format!(
                        "seal of entry {} has a bad signature (not made by the key of the given certificate)",
                        seal.seq
                    ));
                }
                self.report.v1_seals += 1;
            }
            Some(SEAL_VERSION) => {
                check_v2_signature(
                    &self.keys,
                    &format!("seal of entry {}", seal.seq),
                    &seal.message(),
                    seal.cert.as_deref(),
                    Some(&seal.signer),
                    Some(&seal.signature),
                )
                .or_else(bad)?;
                self.seen_v2 = true;
            }
            Some(v) => {
                return bad(format!(
                    "seal of entry {} is in format version {v}, which this lgsp does not know",
                    seal.seq
                ));
            }
        }
        self.report.seals += 1;
        self.report.last_sealed = Some(seal.seq);
        self.unsealed_times = None;
        Ok(())
    }

    fn entry(&mut self, line: &[u8], number: usize) -> Result<(), AuditError> {
        let entry = decode_entry(line, number)?;
        let bad = |why: String| Err(tampered(number, Some(entry.seq), why));
        let expected = self.last_seq + 1;
        if entry.seq > expected {
            return bad(format!(
                "entry {expected} missing: line {number} holds entry {}",
                entry.seq
            ));
        }
        if entry.seq < expected {
            return bad(format!(
                "entry {} out of place: entry {expected} was expected here (entries reordered or repeated)",
                entry.seq
            ));
        }
        if entry.prev != self.head {
            return bad(match self.last_seq {
                0 => format!("entry 1 must have prev {GENESIS}"),
                n if n == self.start_seq => format!(
                    "prev does not match the head before entry {expected} named in the export header"
                ),
                n => format!(
                    "prev does not match the hash of entry {n} (entries reordered or removed)"
                ),
            });
        }
        if let LogState::Live { .. } = self.state {
            let time = parse_time(&entry.time);
            let (oldest, newest) = self.unsealed_times.get_or_insert((time, time));
            *oldest = (*oldest).min(time);
            *newest = (*newest).max(time);
        }
        if let Some(anchor) = &self.anchor
            && anchor.seal.seq == entry.seq
        {
            if anchor.seal.head != entry.hash {
                return bad(format!(
                    "entry {}'s hash is not the chain head of {anchor}: the log was rewritten from this entry or before",
                    entry.seq
                ));
            }
            self.report.anchored = Some(entry.seq);
        }
        if let Some((last, head)) = &self.export_last
            && *last == entry.seq
            && *head != entry.hash
        {
            return bad(format!(
                "entry {}'s hash is not the one the export's signed header names for the range's last entry",
                entry.seq
            ));
        }
        self.last_seq = entry.seq;
        self.head = entry.hash;
        self.report.entries += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<VerifyReport, AuditError> {
        if let Some((last, _)) = self.export_last
            && self.last_seq < last
        {
            return Err(AuditError::ShortExport {
                last,
                reached: self.last_seq,
            });
        }
        if let Some(anchor) = &self.anchor
            && self.report.export.is_none()
            && self.last_seq < anchor.seal.seq
        {
            return Err(AuditError::BehindAnchor {
                last: self.last_seq,
                anchored: anchor.seal.seq,
                anchor: anchor.to_string(),
            });
        }
        let first_unsealed = self.report.last_sealed.unwrap_or(self.start_seq) + 1;
        if self.last_seq < first_unsealed {
            return Ok(self.report);
        }
        let stale = match (self.state, self.unsealed_times) {
            (LogState::Closed, _) | (_, None) => None,
            (LogState::Live { now }, Some((oldest, newest))) => {
                let now_ms = now
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                let window = i64::try_from(LIVE_WINDOW.as_millis()).unwrap_or(i64::MAX);
                let seconds = |ms: i64| u64::try_from(ms / 1000).unwrap_or(0);
                // `None` orders before any time: a time that cannot be read is the oldest.
                match (oldest, newest) {
                    (None, _) | (_, None) => Some(Stale::NoTime),
                    (Some(oldest), _) if now_ms - oldest > window => {
                        Some(Stale::Old(seconds(now_ms - oldest)))
                    }
                    (_, Some(newest)) if newest - now_ms > window => {
                        Some(Stale::Future(seconds(newest - now_ms)))
                    }
                    _ => {
                        self.report.unsealed = self.last_seq - first_unsealed + 1;
                        return Ok(self.report);
                    }
                }
            }
        };
        if self.report.last_sealed.is_none() {
            return Err(AuditError::NoSeal {
                signer: self.signers(),
                entries: self.report.entries,
            });
        }
        Err(AuditError::Unsealed {
            first: first_unsealed,
            last: self.last_seq,
            stale,
        })
    }

    /// The nodes the given certificates name, for saying whose log it is not proven to be.
    fn signers(&self) -> String {
        let mut ids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.spiffe_id.as_deref().unwrap_or("the certificate's node"))
            .collect();
        ids.dedup();
        ids.join(" or ")
    }
}

fn tampered(line: usize, seq: Option<u64>, why: String) -> AuditError {
    AuditError::Tampered { line, seq, why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Entry, SealLine, encode_entry};
    use crate::test_support::{Fixture, exchange, sealed_log, tampered};

    /// Rewrites entries `from..=10` of [`sealed_log`] with entry `from`'s status changed
    /// and every hash after it recomputed, as someone without the key would.
    fn rewrite_with_recomputed_chain(lines: &mut [String], from: u64) {
        let line_of = |seq: u64| if seq <= 4 { seq - 1 } else { seq } as usize;
        let mut prev = serde_json::from_str::<Entry>(&lines[line_of(from - 1)])
            .unwrap()
            .hash;
        for n in from..=10 {
            let old: Entry = serde_json::from_str(&lines[line_of(n)]).unwrap();
            let mut ex = exchange(n);
            if n == from {
                ex.status = "PERMISSION_DENIED".into();
            }
            let (line, hash) = encode_entry(n, &old.time, &ex, &prev);
            lines[line_of(n)] = String::from_utf8(line).unwrap().trim_end().to_owned();
            prev = hash;
        }
    }

    fn unsealed(result: Result<VerifyReport, AuditError>) -> (u64, u64, Option<Stale>, String) {
        match result {
            Err(e @ AuditError::Unsealed { first, last, stale }) => {
                (first, last, stale, e.to_string())
            }
            other => panic!("expected an unsealed tail, got {other:?}"),
        }
    }

    fn edit_seal(f: &Fixture, line: usize, edit: impl FnOnce(&mut crate::Seal)) {
        let mut lines = f.lines();
        let mut seal: SealLine = serde_json::from_str(&lines[line]).unwrap();
        edit(&mut seal.seal);
        lines[line] = serde_json::to_string(&seal).unwrap();
        f.write_lines(&lines);
    }

    #[test]
    fn rewritten_middle_entry_with_recomputed_chain_and_later_seals_dropped_is_unsealed() {
        let f = Fixture::new("rechain-dropped");
        sealed_log(&f);
        let mut lines = f.lines();
        rewrite_with_recomputed_chain(&mut lines, 6);
        lines.remove(11); // the seal of entry 10, which would no longer match
        f.write_lines(&lines);
        let (first, last, stale, message) = unsealed(f.verify());
        assert_eq!((first, last, stale), (5, 10, None));
        assert_eq!(
            message,
            "entries 5..10 are not sealed: the log may have been cut or appended to"
        );
        // A live log leaves only its newest seconds unsealed.
        let later = SystemTime::now() + Duration::from_secs(60);
        let (_, _, stale, message) = unsealed(verify_with(
            &f.path(),
            &f.cert,
            LogState::Live { now: later },
        ));
        assert!(matches!(stale, Some(Stale::Old(59..=61))), "{stale:?}");
        assert!(message.contains("the oldest was written"), "{message}");
    }

    #[test]
    fn fabricated_log_without_a_seal_is_refused_naming_the_node() {
        let f = Fixture::new("fabricated");
        f.write_log_at(
            &[
                "2025-03-01T00:00:00.000Z",
                "2025-03-01T00:00:01.000Z",
                "2025-03-01T00:00:02.000Z",
            ],
            &[],
        );
        let error = f.verify().unwrap_err();
        assert!(
            matches!(&error, AuditError::NoSeal { entries: 3, .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "no seal: nothing proves this log was written by \
             spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1 (3 entries without a seal)"
        );
        let live = verify_with(&f.path(), &f.cert, LogState::live()).unwrap_err();
        assert!(matches!(live, AuditError::NoSeal { .. }), "{live:?}");
    }

    #[test]
    fn empty_log_verifies_with_nothing_to_prove() {
        let f = Fixture::new("empty");
        std::fs::create_dir_all(f.dir()).unwrap();
        std::fs::write(f.path(), b"").unwrap();
        assert_eq!(f.verify().unwrap().entries, 0);
    }

    #[test]
    fn seal_with_its_time_edited_is_refused() {
        let f = Fixture::new("seal-time");
        sealed_log(&f);
        edit_seal(&f, 4, |seal| {
            seal.time.replace_range(0..4, "2020");
        });
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (5, None));
        assert!(
            why.starts_with("seal of entry 4 has a bad signature (its fields were changed"),
            "{why}"
        );
    }

    #[test]
    fn seal_with_its_signer_edited_is_refused() {
        let f = Fixture::new("seal-signer");
        sealed_log(&f);
        edit_seal(&f, 11, |seal| {
            seal.signer = "spiffe://vinhphuc.gov.vn/agency/000.00.15.H62/node/node-1".into();
        });
        let (line, _, why) = tampered(f.verify());
        assert_eq!(line, 12);
        assert!(
            why.starts_with("seal of entry 10 has a bad signature (its fields were changed"),
            "{why}"
        );
    }

    #[test]
    fn seal_naming_another_certificate_is_refused() {
        let f = Fixture::new("seal-cert");
        sealed_log(&f);
        edit_seal(&f, 4, |seal| seal.cert = Some("00".repeat(32)));
        let (_, _, why) = tampered(f.verify());
        assert!(
            why.contains(&format!(
                "names certificate sha256 {}, which is none of the given certificates",
                "00".repeat(32)
            )),
            "{why}"
        );
    }

    #[test]
    fn unsealed_tail_fails_unless_the_log_is_live_and_recent() {
        let f = Fixture::new("tail");
        sealed_log(&f);
        let log = f.open();
        log.append(exchange(11)).unwrap();
        log.append(exchange(12)).unwrap();
        drop(log);
        let mut lines = f.lines();
        lines.pop(); // the seal made on closing: as if read before the sealer ran
        f.write_lines(&lines);

        let (first, last, stale, message) = unsealed(f.verify());
        assert_eq!((first, last, stale), (11, 12, None));
        assert_eq!(
            message,
            "entries 11..12 are not sealed: the log may have been cut or appended to"
        );

        let report = verify_with(&f.path(), &f.cert, LogState::live()).unwrap();
        assert_eq!((report.last_sealed, report.unsealed), (Some(10), 2));
        assert_eq!(
            report.to_string(),
            "sharing log OK: 12 entries, 2 seals, last sealed entry 10; \
             2 entries after the last seal are not yet sealed (the log is live)"
        );

        let later = SystemTime::now() + LIVE_WINDOW + Duration::from_secs(2);
        let (_, _, stale, _) = unsealed(verify_with(
            &f.path(),
            &f.cert,
            LogState::Live { now: later },
        ));
        assert!(matches!(stale, Some(Stale::Old(7..=8))), "{stale:?}");
        let earlier = SystemTime::now() - LIVE_WINDOW - Duration::from_secs(2);
        let (_, _, stale, _) = unsealed(verify_with(
            &f.path(),
            &f.cert,
            LogState::Live { now: earlier },
        ));
        assert!(matches!(stale, Some(Stale::Future(6..=7))), "{stale:?}");
    }

    #[test]
    fn log_cut_after_a_seal_verifies_which_only_an_anchor_can_catch() {
        // The end cut off together with its seal leaves a log that is whole as far
        // as the file can tell: `verify_anchored` catches it (see `anchor.rs`).
        let f = Fixture::new("cut");
        sealed_log(&f);
        let mut lines = f.lines();
        lines.truncate(5); // entries 1-4 and their seal
        f.write_lines(&lines);
        assert_eq!(f.verify().unwrap().last_sealed, Some(4));
    }

    #[test]
    fn old_format_seals_still_verify_and_are_reported_as_not_covering_time_and_signer() {
        let f = Fixture::new("v1");
        f.write_log_at(&["2025-03-01T00:00:00.000Z"; 3], &[]);
        let mut lines = f.lines();
        let head = |line: &String| serde_json::from_str::<Entry>(line).unwrap().hash;
        let (seal_2, seal_3) = (
            f.seal_line(2, &head(&lines[1]), None),
            f.seal_line(3, &head(&lines[2]), None),
        );
        assert!(
            !seal_2.contains("\"v\"") && !seal_2.contains("\"cert\""),
            "{seal_2}"
        );
        lines.insert(2, seal_2);
        lines.push(seal_3);
        f.write_lines(&lines);
        let report = f.verify().unwrap();
        assert_eq!((report.seals, report.v1_seals), (2, 2));
        assert!(
            report.to_string().ends_with(
                "; 2 seals are in the old format (version 1), whose signature does not cover \
                 the seal's time and signer"
            ),
            "{report}"
        );
        // Its time can be edited unnoticed: that is what version 2 fixes.
        edit_seal(&f, 4, |seal| seal.time = "2030-01-01T00:00:00.000Z".into());
        assert_eq!(f.verify().unwrap().v1_seals, 2);
    }

    #[test]
    fn old_format_seal_after_a_new_one_is_refused() {
        let f = Fixture::new("downgrade");
        f.write_log_at(&["2025-03-01T00:00:00.000Z"; 2], &[1]);
        let mut lines = f.lines();
        let head = serde_json::from_str::<Entry>(&lines[2]).unwrap().hash;
        lines.push(f.seal_line(2, &head, None));
        f.write_lines(&lines);
        let (line, _, why) = tampered(f.verify());
        assert_eq!(line, 4);
        assert!(
            why.starts_with(
                "seal of entry 2 is in the old format (version 1) after seals in version 2"
            ),
            "{why}"
        );
    }

    #[test]
    fn seal_of_an_unknown_version_is_refused() {
        let f = Fixture::new("v3");
        sealed_log(&f);
        edit_seal(&f, 4, |seal| seal.v = Some(3));
        let (_, _, why) = tampered(f.verify());
        assert_eq!(
            why,
            "seal of entry 4 is in format version 3, which this lgsp does not know"
        );
    }

    #[test]
    fn clean_log_with_seals_verifies() {
        let f = Fixture::new("clean");
        sealed_log(&f);
        let log = f.open();
        log.append(exchange(11)).unwrap();
        log.seal().unwrap();
        log.append(exchange(12)).unwrap();
        log.append(exchange(13)).unwrap();
        drop(log); // closing seals entries 12 and 13
        let report = f.verify().unwrap();
        assert_eq!(
            report,
            VerifyReport {
                export: None,
                entries: 13,
                seals: 4,
                v1_seals: 0,
                last_sealed: Some(13),
                unsealed: 0,
                partial_last_line: false,
                anchor: None,
                anchored: None,
            }
        );
        assert_eq!(
            report.to_string(),
            "sharing log OK: 13 entries, 4 seals, last sealed entry 13"
        );
    }

    #[test]
    fn changed_digit_in_an_entry_is_found_naming_that_entry() {
        let f = Fixture::new("digit");
        sealed_log(&f);
        let mut lines = f.lines();
        // line 7 holds entry 6, latency 1240
        assert!(lines[6].contains("\"latency_us\":1240,"));
        lines[6] = lines[6].replace("\"latency_us\":1240,", "\"latency_us\":1249,");
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (7, Some(6)));
        assert_eq!(why, "hash does not match its content");
        let message = f.verify().unwrap_err().to_string();
        assert_eq!(message, "line 7 (entry 6): hash does not match its content");
    }

    #[test]
    fn edit_with_recomputed_chain_is_caught_by_the_seal() {
        let f = Fixture::new("rechain");
        sealed_log(&f);
        // Rewrite entries 6.. with a changed entry 6 and a correct chain: only the
        // seal at line 12 can tell.
        let mut lines = f.lines();
        let mut prev: String = serde_json::from_str::<Entry>(&lines[5]).unwrap().hash;
        for (i, n) in (6..=10).enumerate() {
            let old: Entry = serde_json::from_str(&lines[6 + i]).unwrap();
            let mut ex = exchange(n);
            if n == 6 {
                ex.status = "PERMISSION_DENIED".into();
            }
            let (line, hash) = encode_entry(n, &old.time, &ex, &prev);
            lines[6 + i] = String::from_utf8(line).unwrap().trim_end().to_owned();
            prev = hash;
        }
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (12, None));
        assert!(
            why.starts_with("seal's head does not match the hash of entry 10"),
            "{why}"
        );
    }

    #[test]
    fn removed_line_is_found() {
        let f = Fixture::new("removed");
        sealed_log(&f);
        let mut lines = f.lines();
        lines.remove(2); // entry 3
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (3, Some(4)));
        assert_eq!(why, "entry 3 missing: line 3 holds entry 4");
    }

    #[test]
    fn swapped_lines_are_found() {
        let f = Fixture::new("swapped");
        sealed_log(&f);
        let mut lines = f.lines();
        lines.swap(6, 7); // entries 6 and 7
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (7, Some(7)));
        assert_eq!(why, "entry 6 missing: line 7 holds entry 7");
    }

    #[test]
    fn renumbered_entries_are_found_by_their_prev_link() {
        let f = Fixture::new("renumbered");
        sealed_log(&f);
        // Remove entry 3 and renumber the rest with recomputed hashes but prev left alone.
        let mut lines = f.lines();
        lines.truncate(4); // entries 1-4, no seal
        lines.remove(2);
        let old: Entry = serde_json::from_str(&lines[2]).unwrap();
        let (line, _) = encode_entry(3, &old.time, &exchange(4), &old.prev);
        lines[2] = String::from_utf8(line).unwrap().trim_end().to_owned();
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (3, Some(3)));
        assert_eq!(
            why,
            "prev does not match the hash of entry 2 (entries reordered or removed)"
        );
    }

    #[test]
    fn forged_seal_signature_is_found() {
        let f = Fixture::new("forged");
        sealed_log(&f);
        let mut lines = f.lines();
        let mut seal: SealLine = serde_json::from_str(&lines[11]).unwrap();
        let mut signature = hex::decode(&seal.seal.signature).unwrap();
        signature[10] ^= 1;
        seal.seal.signature = hex::encode(signature);
        lines[11] = serde_json::to_string(&seal).unwrap();
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (12, None));
        assert!(
            why.starts_with("seal of entry 10 has a bad signature"),
            "{why}"
        );
    }

    #[test]
    fn seal_by_another_key_is_refused() {
        let f = Fixture::new("other-key");
        sealed_log(&f);
        let other = Fixture::new("other-key-2");
        let (line, _, why) = tampered(verify(&f.path(), &other.cert));
        assert_eq!(line, 5);
        assert!(why.contains("bad signature"), "{why}");
        // With both certificates, as after a key renewal, the log verifies.
        let both = format!("{}{}", other.cert, f.cert);
        assert_eq!(verify(&f.path(), &both).unwrap().seals, 2);
    }

    #[test]
    fn broken_json_is_named_by_line() {
        let f = Fixture::new("json");
        sealed_log(&f);
        let mut lines = f.lines();
        lines[4].truncate(20);
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (5, None));
        assert!(why.starts_with("not valid JSON"), "{why}");
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(56), "56");
        assert_eq!(group(0), "0");
        assert_eq!(group(123_456), "123,456");
    }

    #[test]
    fn rewritten_middle_entry_is_named_by_its_line() {
        let f = Fixture::new("rewritten");
        let log = f.open();
        for n in 1..=3 {
            log.append(exchange(n)).unwrap();
        }
        drop(log);
        let mut lines = f.lines();
        lines[1] = lines[1].replace(
            "\"consumer\":\"000.00.12.H62\"",
            "\"consumer\":\"Sở Nội vụ\"",
        );
        f.write_lines(&lines);
        let message = f.verify().unwrap_err().to_string();
        assert_eq!(message, "line 2 (entry 2): hash does not match its content");
    }

    #[test]
    fn entry_rewritten_with_its_own_hash_breaks_the_chain_at_the_next_line() {
        let f = Fixture::new("chain");
        sealed_log(&f);
        let mut lines = f.lines();
        // Entry 3 (line 3) changed and given a correct hash of its own: its line reads
        // as valid, entry 4's `prev` still names the old hash.
        let old: Entry = serde_json::from_str(&lines[2]).unwrap();
        let mut ex = exchange(3);
        ex.status = "NOT_FOUND".into();
        let (line, _) = encode_entry(3, &old.time, &ex, &old.prev);
        lines[2] = String::from_utf8(line).unwrap().trim_end().to_owned();
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (4, Some(4)));
        assert_eq!(
            why,
            "prev does not match the hash of entry 3 (entries reordered or removed)"
        );
    }

    #[test]
    fn first_entry_must_start_from_genesis() {
        let f = Fixture::new("genesis");
        std::fs::create_dir_all(f.dir()).unwrap();
        let (line, _) = encode_entry(1, "2025-03-01T00:00:00.000Z", &exchange(1), &"1".repeat(64));
        std::fs::write(f.path(), line).unwrap();
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (1, Some(1)));
        assert_eq!(why, format!("entry 1 must have prev {GENESIS}"));
    }

    #[test]
    fn seal_signature_that_is_not_hex_is_refused() {
        let f = Fixture::new("not-hex");
        sealed_log(&f);
        let mut lines = f.lines();
        let mut seal: SealLine = serde_json::from_str(&lines[4]).unwrap();
        seal.seal.signature = "not a signature".into();
        lines[4] = serde_json::to_string(&seal).unwrap();
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (5, None));
        assert_eq!(why, "seal of entry 4 has a bad signature (not hex)");
    }

    #[test]
    fn seal_before_any_entry_is_refused() {
        let f = Fixture::new("seal-first");
        sealed_log(&f);
        let mut lines = f.lines();
        lines.drain(..4); // entries 1-4: the seal of entry 4 comes first
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (1, None));
        assert_eq!(why, "seal of entry 4 comes before any entry");
    }

    #[test]
    fn verify_without_a_certificate_is_refused() {
        let f = Fixture::new("no-cert");
        sealed_log(&f);
        match verify(&f.path(), &f.key) {
            Err(AuditError::Cert(why)) => assert_eq!(why, "the PEM holds no CERTIFICATE"),
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }
}

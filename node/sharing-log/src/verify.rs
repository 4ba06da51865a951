//! Checking a whole log: every entry's hash, the numbering, the chain of `prev` links
//! and every seal's signature.

use crate::certificate::{certificates, public_key_point};
use crate::error::AuditError;
use crate::format::{GENESIS, SEAL_PREFIX, decode_entry, decode_seal, seal_message};
use crate::lines::{Line, open_lines};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use std::fmt;
use std::path::Path;

/// What [`verify`] found in a log that is intact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries checked: hash, number and `prev` link.
    pub entries: u64,
    /// Seals whose signature verified.
    pub seals: u64,
    /// The newest entry a seal covers.
    pub last_sealed: Option<u64>,
    /// Entries after the last seal: not yet sealed (the node seals every second), so an
    /// edit to them is found only by the hash chain.
    pub unsealed: u64,
    /// The file ends in a line without its newline: one being written, or left by a crash.
    /// It is not checked.
    pub partial_last_line: bool,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sharing log OK: {} {}, {} {}",
            group(self.entries),
            plural(self.entries, "entry", "entries"),
            group(self.seals),
            plural(self.seals, "seal", "seals"),
        )?;
        if let Some(last) = self.last_sealed {
            write!(f, ", last sealed entry {}", group(last))?;
        }
        match (self.unsealed, self.last_sealed) {
            (0, _) => {}
            (1, Some(_)) => write!(f, "; 1 entry after the last seal is not yet sealed")?,
            (n, Some(_)) => write!(
                f,
                "; {} entries after the last seal are not yet sealed",
                group(n)
            )?,
            (1, None) => write!(f, "; the 1 entry is not yet sealed")?,
            (n, None) => write!(f, "; none of the {} entries is sealed yet", group(n))?,
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

/// Checks a whole log: every entry's hash against its bytes, the numbering and the
/// `prev` links, and every seal's signature with the public key of a certificate in
/// `cert_pem` (give several when the node's key was renewed; any may have signed).
///
/// Returns what was found when the log is intact, and fails with
/// [`AuditError::Tampered`] naming the first line that is not. Fails with
/// [`AuditError::Cert`] when `cert_pem` holds no usable certificate, and
/// [`AuditError::Io`] when the log cannot be read.
pub fn verify(path: &Path, cert_pem: &str) -> Result<VerifyReport, AuditError> {
    let keys = certificates(cert_pem)?
        .iter()
        .map(|der| public_key_point(der))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(AuditError::Cert("the PEM holds no CERTIFICATE".into()));
    }
    let mut lines = open_lines(path)?;
    let mut report = VerifyReport::default();
    let mut last_seq = 0u64;
    let mut head = GENESIS.to_owned();
    loop {
        let (number, line) = match lines.next_line()? {
            Line::Complete(number, line) => (number, line),
            Line::Partial => {
                report.partial_last_line = true;
                break;
            }
            Line::End => break,
        };
        let tampered = |seq: Option<u64>, why: String| AuditError::Tampered {
            line: number,
            seq,
            why,
        };
        if line.starts_with(SEAL_PREFIX) {
            let seal = decode_seal(line, number)?;
            if last_seq == 0 {
                return Err(tampered(
                    None,
                    format!("seal of entry {} comes before any entry", seal.seq),
                ));
            }
            if seal.seq != last_seq {
                return Err(tampered(
                    None,
                    format!("seal names entry {} but follows entry {last_seq}", seal.seq),
                ));
            }
            if seal.head != head {
                return Err(tampered(
                    None,
                    format!(
                        "seal's head does not match the hash of entry {last_seq} (entries before it were changed and their hashes recomputed)"
                    ),
                ));
            }
            let message = seal_message(seal.seq, &seal.head);
            let signed = hex::decode(&seal.signature).is_ok_and(|signature| {
                keys.iter().any(|point| {
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                        .verify(message.as_bytes(), &signature)
                        .is_ok()
                })
            });
            if !signed {
                return Err(tampered(
                    None,
                    format!(
                        "seal of entry {} has a bad signature (not made by the key of the given certificate)",
                        seal.seq
                    ),
                ));
            }
            report.seals += 1;
            report.last_sealed = Some(seal.seq);
            continue;
        }
        let entry = decode_entry(line, number)?;
        let expected = last_seq + 1;
        if entry.seq > expected {
            return Err(tampered(
                Some(entry.seq),
                format!(
                    "entry {expected} missing: line {number} holds entry {}",
                    entry.seq
                ),
            ));
        }
        if entry.seq < expected {
            return Err(tampered(
                Some(entry.seq),
                format!(
                    "entry {} out of place: entry {expected} was expected here (entries reordered or repeated)",
                    entry.seq
                ),
            ));
        }
        if entry.prev != head {
            let why = match last_seq {
                0 => format!("entry 1 must have prev {GENESIS}"),
                n => format!(
                    "prev does not match the hash of entry {n} (entries reordered or removed)"
                ),
            };
            return Err(tampered(Some(entry.seq), why));
        }
        last_seq = entry.seq;
        head = entry.hash;
        report.entries += 1;
    }
    report.unsealed = last_seq - report.last_sealed.unwrap_or(0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Entry, SealLine, encode_entry};
    use crate::test_support::{Fixture, exchange, sealed_log, tampered};

    #[test]
    fn clean_log_with_seals_verifies() {
        let f = Fixture::new("clean");
        sealed_log(&f);
        let log = f.open();
        log.append(exchange(11)).unwrap();
        log.seal().unwrap();
        log.append(exchange(12)).unwrap();
        log.append(exchange(13)).unwrap();
        drop(log); // the BufWriter writes out the unsealed entries
        let report = f.verify().unwrap();
        assert_eq!(
            report,
            VerifyReport {
                entries: 13,
                seals: 3,
                last_sealed: Some(11),
                unsealed: 2,
                partial_last_line: false,
            }
        );
        assert_eq!(
            report.to_string(),
            "sharing log OK: 13 entries, 3 seals, last sealed entry 11; \
             2 entries after the last seal are not yet sealed"
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
        assert!(
            why.starts_with("seal of entry 4 has a bad signature"),
            "{why}"
        );
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

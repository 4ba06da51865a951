//! Copying the entries of a time range out of the log for an auditor, with what proves
//! them: an export can be verified on its own against the node's certificate.
//!
//! An export is JSON Lines, in this order:
//!
//! 1. a header, `{"export":{"v":2,"from":…,"to":…,"first":N,"prev":"…","last":M,
//!    "last_head":"…","signer":"…","cert":"…","signature":"…"}}` ([`ExportHeader`]):
//!    the range asked for, the first exported entry's number and the chain head
//!    before it (the hash of entry N-1), the range's last exported entry and its
//!    hash, signed by the node's key, so that an export cut short fails on its own;
//! 2. the log's lines from entry N on, entries and seals, byte for byte as logged, up to
//!    and including the first seal after the range's last entry. That seal may cover
//!    entries written after the range's end (a second's worth at most, as the node
//!    seals every second): they are exported too, since the seal's head is reached
//!    only through them.
//!
//! [`verify_export`](crate::verify_export) checks the chain from the header's head
//! through the entries to the seals. Entries of the range that no seal covers yet (the
//! newest second of a running node's log) are left out and counted.

use crate::error::{AuditError, io_err};
use crate::format::{EXPORT_VERSION, ExportHeader, ExportLine, SEAL_PREFIX, not_json};
use crate::lines::{Line, open_lines};
use crate::timestamp::{format_utc, parse_bound, parse_time};
use crate::writer::Signer;
use serde::Deserialize;
use std::io::Write;
use std::path::Path;

/// The time range of an export: both ends optional and inclusive, in milliseconds
/// since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// The earliest entry time to include, in milliseconds since the Unix
    /// epoch; `None` for the start of the log.
    pub from_ms: Option<i64>,
    /// The latest entry time to include, in milliseconds since the Unix
    /// epoch; `None` for the end of the log.
    pub to_ms: Option<i64>,
}

impl TimeRange {
    /// Reads the bounds a person gives: RFC 3339 (`2025-03-01T08:00:00+07:00`) or a date
    /// (`2025-03-01`: from the start of that day, or to its end, UTC). Fails with
    /// [`AuditError::BadTime`] naming a malformed bound, or [`AuditError::EmptyRange`].
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, AuditError> {
        let range = TimeRange {
            from_ms: from.map(|s| parse_bound(s, false)).transpose()?,
            to_ms: to.map(|s| parse_bound(s, true)).transpose()?,
        };
        if matches!((range.from_ms, range.to_ms), (Some(lo), Some(hi)) if lo > hi) {
            return Err(AuditError::EmptyRange {
                from: from.unwrap_or_default().to_owned(),
                to: to.unwrap_or_default().to_owned(),
            });
        }
        Ok(range)
    }

    fn contains(&self, ms: i64) -> bool {
        self.from_ms.is_none_or(|lo| lo <= ms) && self.to_ms.is_none_or(|hi| ms <= hi)
    }
}

/// What [`export_summary`] wrote, or [`plan_export`] would write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Entries written: those of the range, and those after it up to the seal that
    /// covers the range's last entry.
    pub entries: u64,
    /// Of those, the entries after the range's end.
    pub after_range: u64,
    /// Seals written.
    pub seals: u64,
    /// Entries of the range left out because no seal covers them yet.
    pub unsealed: u64,
}

/// As [`export_summary`], returning how many entries were written.
pub fn export(
    path: &Path,
    range: &TimeRange,
    signer: &Signer,
    out: &mut impl Write,
) -> Result<u64, AuditError> {
    export_summary(path, range, signer, out).map(|summary| summary.entries)
}

/// Where an export starts and ends in the log, found by a first pass.
struct Plan {
    summary: ExportSummary,
    /// The header, not signed yet; `None` when nothing sealed lies in the range.
    header: Option<ExportHeader>,
    /// The lines to copy, counted from 1: the first exported entry's and the
    /// seal that ends the export.
    lines: (usize, usize),
}

/// What an export of `range` would hold, without writing it: for counting the
/// entries of a log (a whole log is the default range). Fails as
/// [`export_summary`] does.
pub fn plan_export(path: &Path, range: &TimeRange) -> Result<ExportSummary, AuditError> {
    plan(path, range).map(|plan| plan.summary)
}

/// Writes the entries whose time lies within `range` to `out`, with the seals that cover
/// them and the chain head before them, in the format the module describes, under a
/// header `signer` (the node's key) signs, so that the export verifies on its own and
/// an export cut short fails. Writes nothing when no sealed entry lies in the range.
///
/// Entries are in time order in the log (the writer takes their time under its lock),
/// so the range is a run of consecutive entries; should the clock have stepped back,
/// the export runs from the first entry in the range to the seal after the first entry
/// past its end.
///
/// The log is read twice: once to find the range's ends (which the header names),
/// then to copy its lines; a log only grows, so the lines are the same.
/// Export does not verify the log; run [`verify`](fn@crate::verify) for that. It fails with
/// [`AuditError::Tampered`] for a line whose time cannot be read, or when the log
/// changed between the two reads, and [`AuditError::Key`] when signing fails. A final
/// line without its newline (being written) is left out.
pub fn export_summary(
    path: &Path,
    range: &TimeRange,
    signer: &Signer,
    out: &mut impl Write,
) -> Result<ExportSummary, AuditError> {
    let plan = plan(path, range)?;
    let Some(mut header) = plan.header else {
        return Ok(plan.summary);
    };
    signer.sign_export(&mut header)?;
    let mut bytes = serde_json::to_vec(&ExportLine { export: header })
        .expect("a header of strings and integers always serializes");
    bytes.push(b'\n');
    write_out(out, &bytes)?;
    let (first, end) = plan.lines;
    let mut lines = open_lines(path)?;
    while let Line::Complete(number, line) = lines.next_line()? {
        if number < first {
            continue;
        }
        if number == end && !line.starts_with(SEAL_PREFIX) {
            return Err(AuditError::Tampered {
                line: number,
                seq: None,
                why: "the log changed while it was exported (this line was a seal a moment ago); export again".into(),
            });
        }
        write_out(out, line)?;
        write_out(out, b"\n")?;
        if number == end {
            return Ok(plan.summary);
        }
    }
    Err(AuditError::Tampered {
        line: end,
        seq: None,
        why: "the log became shorter while it was exported; export again, and verify the log"
            .into(),
    })
}

fn plan(path: &Path, range: &TimeRange) -> Result<Plan, AuditError> {
    #[derive(Deserialize)]
    struct Timed<'a> {
        seq: u64,
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        prev: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        hash: std::borrow::Cow<'a, str>,
    }
    let mut lines = open_lines(path)?;
    let mut plan = Plan {
        summary: ExportSummary::default(),
        header: None,
        lines: (0, 0),
    };
    // The header of an export starting at the first entry in the range.
    let mut header: Option<ExportHeader> = None;
    // Since the last seal: entries in and after the range, and the newest in range.
    let mut pending_in_range = 0;
    let mut pending_after = 0;
    let mut pending_last: Option<(u64, String)> = None;
    // The newest entry in the range that a seal covers.
    let mut sealed_last: Option<(u64, String)> = None;
    let mut past_end = false;
    while let Line::Complete(number, line) = lines.next_line()? {
        if line.starts_with(SEAL_PREFIX) {
            let Some(header) = &header else {
                continue;
            };
            let summary = &mut plan.summary;
            summary.entries += pending_in_range + pending_after;
            summary.after_range += pending_after;
            summary.seals += 1;
            (pending_in_range, pending_after) = (0, 0);
            if let Some(last) = pending_last.take() {
                sealed_last = Some(last);
            }
            let mut sealed = header.clone();
            (sealed.last, sealed.last_head) = sealed_last.clone().unzip();
            plan.header = Some(sealed);
            plan.lines.1 = number;
            if past_end {
                return Ok(plan);
            }
            continue;
        }
        let timed: Timed<'_> = serde_json::from_slice(line).map_err(|e| not_json(number, &e))?;
        let time = parse_time(&timed.time).ok_or_else(|| AuditError::Tampered {
            line: number,
            seq: Some(timed.seq),
            why: format!("malformed time {:?}", timed.time),
        })?;
        let in_range = range.contains(time);
        if header.is_none() {
            if !in_range {
                continue;
            }
            header = Some(ExportHeader {
                v: EXPORT_VERSION,
                from: range.from_ms.map(utc),
                to: range.to_ms.map(utc),
                first: timed.seq,
                prev: timed.prev.into_owned(),
                last: None,
                last_head: None,
                signer: None,
                cert: None,
                signature: None,
            });
            plan.lines.0 = number;
        }
        if in_range {
            pending_in_range += 1;
            pending_last = Some((timed.seq, timed.hash.into_owned()));
        } else {
            let after_end = range.to_ms.is_some_and(|to| time > to);
            if after_end && pending_in_range + pending_after == 0 {
                // The last seal written covers the range's last entry.
                return Ok(plan);
            }
            pending_after += 1;
            past_end |= after_end;
        }
    }
    plan.summary.unsealed = pending_in_range;
    Ok(plan)
}

fn write_out(out: &mut impl Write, bytes: &[u8]) -> Result<(), AuditError> {
    out.write_all(bytes).map_err(io_err(Path::new("<output>")))
}

fn utc(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_or_else(|_| ms.to_string(), format_utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Entry, GENESIS, encode_entry};
    use crate::test_support::{Fixture, exchange, tampered};
    use crate::{LogState, verify_export, verify_with};

    /// Entries 1-8, a minute apart from 2025-03-01T00:00Z, sealed after 2, 5 and 8.
    fn minutes_log(f: &Fixture) {
        let times: Vec<String> = (0..8)
            .map(|m| format!("2025-03-01T00:{m:02}:00.000Z"))
            .collect();
        f.write_log_at(
            &times.iter().map(String::as_str).collect::<Vec<_>>(),
            &[2, 5, 8],
        );
    }

    /// Exports `from..=to` of `f`'s log to `export.jsonl` beside it.
    fn export_to_file(f: &Fixture, from: &str, to: &str) -> (ExportSummary, std::path::PathBuf) {
        let out = f.tmp.0.join("export.jsonl");
        let mut bytes = Vec::new();
        let range = TimeRange::parse(Some(from), Some(to)).unwrap();
        let summary = export_summary(&f.path(), &range, &f.signer(), &mut bytes).unwrap();
        std::fs::write(&out, bytes).unwrap();
        (summary, out)
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn exported_range_verifies_on_its_own() {
        let f = Fixture::new("export-verifies");
        minutes_log(&f);
        // Entries 4 (00:03) and 5 (00:04), and the seal of 5.
        let (summary, out) = export_to_file(&f, "2025-03-01T00:03:00Z", "2025-03-01T00:04:00Z");
        assert_eq!(
            summary,
            ExportSummary {
                entries: 2,
                after_range: 0,
                seals: 1,
                unsealed: 0
            }
        );
        let lines = lines_of(&out);
        let log = f.lines();
        assert_eq!(lines[1..], log[4..7], "the log's own lines, byte for byte");
        let entry_3: Entry = serde_json::from_str(&log[3]).unwrap();
        let entry_5: Entry = serde_json::from_str(&log[5]).unwrap();
        assert!(
            lines[0].starts_with(&format!(
                "{{\"export\":{{\"v\":2,\"from\":\"2025-03-01T00:03:00.000Z\",\
                 \"to\":\"2025-03-01T00:04:00.000Z\",\"first\":4,\"prev\":\"{}\",\
                 \"last\":5,\"last_head\":\"{}\",\
                 \"signer\":\"spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1\",\
                 \"cert\":\"{}\",\"signature\":\"",
                entry_3.hash,
                entry_5.hash,
                f.cert_sha256()
            )),
            "{}",
            lines[0]
        );
        let report = verify_export(&out, &f.cert).unwrap();
        assert_eq!((report.entries, report.last_sealed), (2, Some(5)));
        assert_eq!(
            report.to_string(),
            "sharing log export OK: entries 4 to 5 (2 entries), chained from the head before \
             entry 4, 1 seal, last sealed entry 5"
        );
        // `verify` knows an export by its header, so `lgsp audit verify` takes either.
        assert_eq!(
            verify_with(&out, &f.cert, LogState::live()).unwrap(),
            report
        );
    }

    #[test]
    fn export_runs_to_the_seal_after_the_range() {
        let f = Fixture::new("export-to-seal");
        minutes_log(&f);
        // Entries 3 and 4 are in the range; the seal after 4 is the one of 5.
        let (summary, out) = export_to_file(&f, "2025-03-01T00:02:00Z", "2025-03-01T00:03:30Z");
        assert_eq!(
            (summary.entries, summary.after_range, summary.seals),
            (3, 1, 1)
        );
        let report = verify_export(&out, &f.cert).unwrap();
        assert_eq!((report.entries, report.last_sealed), (3, Some(5)));
        // From the start: the head before entry 1 is the genesis.
        let (_, out) = export_to_file(&f, "2025-03-01", "2025-03-01T00:06:00Z");
        let report = verify_export(&out, &f.cert).unwrap();
        assert_eq!((report.entries, report.seals), (8, 3));
        assert!(lines_of(&out)[0].contains(&format!("\"first\":1,\"prev\":\"{GENESIS}\"")));
    }

    #[test]
    fn exported_range_with_an_edited_entry_fails() {
        let f = Fixture::new("export-edited");
        minutes_log(&f);
        let (_, out) = export_to_file(&f, "2025-03-01T00:02:00Z", "2025-03-01T00:04:00Z");
        let lines = lines_of(&out);
        assert!(lines[1].contains("\"seq\":3,"), "{}", lines[1]);

        // Entry 3 edited and the chain after it recomputed: the signed header's
        // head of entry 5, the range's last, tells (and the seal of 5 would).
        let mut edited = lines.clone();
        let mut prev = serde_json::from_str::<Entry>(&lines[1]).unwrap().prev;
        for (i, seq) in [(1, 3), (2, 4), (3, 5)] {
            let old: Entry = serde_json::from_str(&lines[i]).unwrap();
            let mut ex = exchange(seq);
            if seq == 3 {
                ex.status = "NOT_FOUND".into();
            }
            let (line, hash) = encode_entry(seq, &old.time, &ex, &prev);
            edited[i] = String::from_utf8(line).unwrap().trim_end().to_owned();
            prev = hash;
        }
        std::fs::write(&out, edited.join("\n") + "\n").unwrap();
        let (line, seq, why) = tampered(verify_export(&out, &f.cert));
        assert_eq!((line, seq), (4, Some(5)));
        assert_eq!(
            why,
            "entry 5's hash is not the one the export's signed header names for the range's last entry"
        );

        // The header's head changed to fit an entry 3 chained anew: the seal of 5 tells.
        let (line, _) = encode_entry(3, "2025-03-01T00:02:00.000Z", &exchange(3), &"1".repeat(64));
        let mut forged = lines.clone();
        forged[0] = forged[0].replace(
            &serde_json::from_str::<Entry>(&lines[1]).unwrap().prev,
            &"1".repeat(64),
        );
        forged[1] = String::from_utf8(line).unwrap().trim_end().to_owned();
        std::fs::write(&out, forged.join("\n") + "\n").unwrap();
        let (line, _, why) = tampered(verify_export(&out, &f.cert));
        assert_eq!(line, 1, "the header is signed");
        assert!(
            why.starts_with("export header has a bad signature (its fields were changed"),
            "{why}"
        );

        // The seal cut off: nothing proves the entries.
        std::fs::write(&out, lines[..4].join("\n") + "\n").unwrap();
        match verify_export(&out, &f.cert) {
            Err(AuditError::NoSeal { entries: 3, .. }) => {}
            other => panic!("expected no seal, got {other:?}"),
        }
        // Entries 2-5 with the seals of 2 and 5; the last seal cut off.
        let (_, out) = export_to_file(&f, "2025-03-01T00:01:00Z", "2025-03-01T00:04:00Z");
        let lines = lines_of(&out);
        assert!(lines[2].starts_with("{\"seal\""), "{}", lines[2]);
        std::fs::write(&out, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
        match verify_export(&out, &f.cert) {
            Err(AuditError::Unsealed {
                first: 3,
                last: 5,
                stale: None,
            }) => {}
            other => panic!("expected entries 3..5 unsealed, got {other:?}"),
        }
    }

    #[test]
    fn export_cut_short_after_one_of_its_seals_fails_on_its_own() {
        let f = Fixture::new("export-cut");
        minutes_log(&f);
        // Entries 1-8 with the seals of 2, 5 and 8.
        let (_, out) = export_to_file(&f, "2025-03-01", "2025-03-01T00:07:00Z");
        let lines = lines_of(&out);
        assert_eq!(verify_export(&out, &f.cert).unwrap().last_sealed, Some(8));
        // Cut after the seal of 5: what is left is whole, but not the range.
        assert!(
            lines[7].starts_with("{\"seal\":{\"v\":2,\"seq\":5,"),
            "{}",
            lines[7]
        );
        std::fs::write(&out, lines[..8].join("\n") + "\n").unwrap();
        let error = verify_export(&out, &f.cert).unwrap_err();
        assert!(
            matches!(
                error,
                AuditError::ShortExport {
                    last: 8,
                    reached: 5
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the export's signed header says its range runs to entry 8, but the export ends \
             at entry 5: entries 6..8 and their seals are missing: the export was cut short"
        );
        // Nor can the header be made to say the range ends sooner.
        let edited = lines[0].replace("\"last\":8,", "\"last\":5,");
        assert_ne!(edited, lines[0]);
        let mut forged = vec![edited];
        forged.extend_from_slice(&lines[1..8]);
        std::fs::write(&out, forged.join("\n") + "\n").unwrap();
        let (line, _, why) = tampered(verify_export(&out, &f.cert));
        assert_eq!(line, 1);
        assert!(
            why.starts_with("export header has a bad signature"),
            "{why}"
        );
        // Nor its dates.
        let edited = lines[0].replace("2025-03-01T00:07:00.000Z", "2025-03-01T00:04:00.000Z");
        assert_ne!(edited, lines[0]);
        let mut forged = vec![edited];
        forged.extend_from_slice(&lines[1..]);
        std::fs::write(&out, forged.join("\n") + "\n").unwrap();
        let (line, _, why) = tampered(verify_export(&out, &f.cert));
        assert_eq!(line, 1);
        assert!(
            why.starts_with("export header has a bad signature"),
            "{why}"
        );
    }

    #[test]
    fn unsigned_version_1_export_is_refused_asking_for_a_new_one() {
        let f = Fixture::new("export-v1");
        minutes_log(&f);
        let (_, out) = export_to_file(&f, "2025-03-01", "2025-03-01T00:07:00Z");
        let mut lines = lines_of(&out);
        let header: ExportLine = serde_json::from_str(&lines[0]).unwrap();
        let v1 = ExportHeader {
            v: 1,
            last: None,
            last_head: None,
            signer: None,
            cert: None,
            signature: None,
            ..header.export
        };
        lines[0] = serde_json::to_string(&ExportLine { export: v1 }).unwrap();
        std::fs::write(&out, lines.join("\n") + "\n").unwrap();
        let (line, _, why) = tampered(verify_export(&out, &f.cert));
        assert_eq!(line, 1);
        assert!(
            why.starts_with("export in format version 1, whose header is not signed")
                && why.contains("lgsp audit export --key --cert"),
            "{why}"
        );
    }

    #[test]
    fn plan_counts_what_an_export_would_hold_without_a_key() {
        let f = Fixture::new("export-plan");
        minutes_log(&f);
        let planned = plan_export(&f.path(), &TimeRange::default()).unwrap();
        assert_eq!((planned.entries, planned.seals), (8, 3));
        let (written, _) = export_to_file(&f, "2000-01-01", "2100-01-01");
        assert_eq!(written, planned);
    }

    #[test]
    fn a_log_is_not_an_export() {
        let f = Fixture::new("not-export");
        minutes_log(&f);
        let (line, _, why) = tampered(verify_export(&f.path(), &f.cert));
        assert_eq!(line, 1);
        assert!(why.starts_with("not an export"), "{why}");
    }

    #[test]
    fn entries_of_the_range_no_seal_covers_yet_are_left_out_and_counted() {
        let f = Fixture::new("export-unsealed");
        minutes_log(&f);
        let mut lines = f.lines();
        lines.pop(); // the seal of 8
        f.write_lines(&lines);
        let (summary, out) = export_to_file(&f, "2025-03-01T00:04:00Z", "2025-03-01T00:09:00Z");
        assert_eq!(
            summary,
            ExportSummary {
                entries: 1,
                after_range: 0,
                seals: 1,
                unsealed: 3
            }
        );
        assert_eq!(verify_export(&out, &f.cert).unwrap().last_sealed, Some(5));
        // Nothing sealed in the range: nothing written.
        let (summary, out) = export_to_file(&f, "2025-03-01T00:06:00Z", "2025-03-01T00:09:00Z");
        assert_eq!((summary.entries, summary.unsealed), (0, 2));
        assert_eq!(std::fs::read(&out).unwrap(), b"");
    }

    #[test]
    fn vietnamese_text_round_trips_byte_exact() {
        let f = Fixture::new("vietnamese");
        let log = f.open();
        let mut ex = exchange(1);
        ex.service = "Tra cứu hộ tịch: Đăng ký khai sinh (Sở Tư pháp tỉnh Vĩnh Phúc)".into();
        ex.operation = "truy vấn \"theo mã\"\tđịnh danh".into();
        log.append(ex.clone()).unwrap();
        log.seal().unwrap();
        drop(log);
        let raw = std::fs::read_to_string(f.path()).unwrap();
        assert!(
            raw.contains(&ex.service),
            "UTF-8 written raw, not \\u-escaped"
        );
        let entry: Entry = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
        assert_eq!(entry.service, ex.service);
        assert_eq!(entry.operation, ex.operation);
        f.verify().unwrap();

        let mut out = Vec::new();
        assert_eq!(
            export(&f.path(), &TimeRange::default(), &f.signer(), &mut out).unwrap(),
            1
        );
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().nth(1), raw.lines().next());
    }

    #[test]
    fn export_selects_entries_by_time() {
        let f = Fixture::new("export");
        f.write_log_at(
            &[
                "2025-02-28T23:59:59.999Z",
                "2025-03-01T00:00:00.000Z",
                "2025-03-01T17:30:00.000Z",
            ],
            &[1, 2, 3],
        );
        let lines = f.lines();
        let run = |from: Option<&str>, to: Option<&str>| {
            let mut out = Vec::new();
            let range = TimeRange::parse(from, to).unwrap();
            export(&f.path(), &range, &f.signer(), &mut out).unwrap();
            String::from_utf8(out)
                .unwrap()
                .lines()
                .skip(1) // the header
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(Some("2025-03-01"), Some("2025-03-01")), lines[2..6]);
        assert_eq!(run(None, Some("2025-03-01T07:00:00+07:00")), lines[0..4]);
        assert_eq!(run(Some("2025-03-02T00:00:00+07:00"), None), lines[4..6]);
        assert!(matches!(
            TimeRange::parse(Some("1/3/2025"), None),
            Err(AuditError::BadTime(_))
        ));
        assert!(matches!(
            TimeRange::parse(Some("2025-03-02"), Some("2025-03-01")),
            Err(AuditError::EmptyRange { .. })
        ));
    }

    #[test]
    fn export_carries_the_seals_and_leaves_out_a_line_being_written() {
        let f = Fixture::new("export-seals");
        crate::test_support::sealed_log(&f);
        let whole: String = f.lines().iter().map(|l| format!("{l}\n")).collect();
        let mut file = std::fs::read(f.path()).unwrap();
        file.extend_from_slice(b"{\"seq\":11,\"ti");
        std::fs::write(f.path(), file).unwrap();
        let mut out = Vec::new();
        let summary =
            export_summary(&f.path(), &TimeRange::default(), &f.signer(), &mut out).unwrap();
        assert_eq!((summary.entries, summary.seals), (10, 2));
        let out = String::from_utf8(out).unwrap();
        let (header, rest) = out.split_once('\n').unwrap();
        assert!(header.starts_with("{\"export\":{\"v\":2,\"from\":null,\"to\":null,\"first\":1,"));
        assert_eq!(rest, whole);
    }

    #[test]
    fn export_names_the_line_whose_time_cannot_be_read() {
        let f = Fixture::new("export-bad-time");
        let (l1, h1) = encode_entry(1, "2025-03-01T00:00:00.000Z", &exchange(1), GENESIS);
        let (l2, _) = encode_entry(2, "hôm qua", &exchange(2), &h1);
        std::fs::create_dir_all(f.dir()).unwrap();
        std::fs::write(f.path(), [l1, l2].concat()).unwrap();
        let error = export(
            &f.path(),
            &TimeRange::default(),
            &f.signer(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 2 (entry 2): malformed time \"hôm qua\""
        );
    }

    #[test]
    fn range_bounds_are_inclusive_to_the_millisecond() {
        let range = TimeRange::parse(
            Some("2025-03-01T08:00:00+07:00"),
            Some("2025-03-01T01:00:00.999Z"),
        )
        .unwrap();
        let start = parse_time("2025-03-01T01:00:00Z").unwrap();
        assert!(!range.contains(start - 1));
        assert!(range.contains(start));
        assert!(range.contains(start + 999));
        assert!(!range.contains(start + 1000));
        assert!(TimeRange::default().contains(i64::MIN));
    }
}

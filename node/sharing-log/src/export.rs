//! Copying the entries of a time range out of the log, byte for byte, for an auditor.

use crate::error::{AuditError, io_err};
use crate::format::{SEAL_PREFIX, not_json};
use crate::lines::{Line, open_lines};
use crate::timestamp::{parse_bound, parse_time};
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

/// Writes the entries (not the seals) whose time lies within `range` to `out` as the
/// log's own lines, byte for byte, so the receiver can re-check their hashes. Returns how
/// many entries were written.
///
/// Export does not verify the log; run [`verify`](fn@crate::verify) for that. It fails with
/// [`AuditError::Tampered`] for a line whose time cannot be read. A final line without
/// its newline (being written) is left out.
pub fn export(path: &Path, range: &TimeRange, out: &mut impl Write) -> Result<u64, AuditError> {
    #[derive(Deserialize)]
    struct Timed<'a> {
        seq: u64,
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
    }
    let mut lines = open_lines(path)?;
    let mut written = 0;
    while let Line::Complete(number, line) = lines.next_line()? {
        if line.starts_with(SEAL_PREFIX) {
            continue;
        }
        let timed: Timed<'_> = serde_json::from_slice(line).map_err(|e| not_json(number, &e))?;
        let time = parse_time(&timed.time).ok_or_else(|| AuditError::Tampered {
            line: number,
            seq: Some(timed.seq),
            why: format!("malformed time {:?}", timed.time),
        })?;
        if !range.contains(time) {
            continue;
        }
        out.write_all(line)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(io_err(Path::new("<output>")))?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Entry, GENESIS, encode_entry};
    use crate::test_support::{Fixture, exchange};

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
            export(&f.path(), &TimeRange::default(), &mut out).unwrap(),
            1
        );
        assert_eq!(
            out,
            format!("{}\n", raw.lines().next().unwrap()).into_bytes()
        );
    }

    #[test]
    fn export_selects_entries_by_time() {
        let f = Fixture::new("export");
        let exchange_at =
            |seq: u64, time: &str, prev: &str| encode_entry(seq, time, &exchange(seq), prev);
        let (l1, h1) = exchange_at(1, "2025-02-28T23:59:59.999Z", GENESIS);
        let (l2, h2) = exchange_at(2, "2025-03-01T00:00:00.000Z", &h1);
        let (l3, _) = exchange_at(3, "2025-03-01T17:30:00.000Z", &h2);
        std::fs::create_dir_all(f.dir()).unwrap();
        std::fs::write(f.path(), [l1.clone(), l2.clone(), l3.clone()].concat()).unwrap();
        let run = |from: Option<&str>, to: Option<&str>| {
            let mut out = Vec::new();
            let range = TimeRange::parse(from, to).unwrap();
            export(&f.path(), &range, &mut out).unwrap();
            out
        };
        assert_eq!(
            run(Some("2025-03-01"), Some("2025-03-01")),
            [l2.clone(), l3.clone()].concat()
        );
        assert_eq!(
            run(None, Some("2025-03-01T07:00:00+07:00")),
            [l1.clone(), l2.clone()].concat()
        );
        assert_eq!(run(Some("2025-03-02T00:00:00+07:00"), None), l3);
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
    fn export_leaves_out_seals_and_a_line_being_written() {
        let f = Fixture::new("export-seals");
        crate::test_support::sealed_log(&f);
        let entries: String = f
            .lines()
            .iter()
            .filter(|l| !l.starts_with("{\"seal\""))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut file = std::fs::read(f.path()).unwrap();
        file.extend_from_slice(b"{\"seq\":11,\"ti");
        std::fs::write(f.path(), file).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            export(&f.path(), &TimeRange::default(), &mut out).unwrap(),
            10
        );
        assert_eq!(String::from_utf8(out).unwrap(), entries);
    }

    #[test]
    fn export_names_the_line_whose_time_cannot_be_read() {
        let f = Fixture::new("export-bad-time");
        let (l1, h1) = encode_entry(1, "2025-03-01T00:00:00.000Z", &exchange(1), GENESIS);
        let (l2, _) = encode_entry(2, "hôm qua", &exchange(2), &h1);
        std::fs::create_dir_all(f.dir()).unwrap();
        std::fs::write(f.path(), [l1, l2].concat()).unwrap();
        let error = export(&f.path(), &TimeRange::default(), &mut Vec::new()).unwrap_err();
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

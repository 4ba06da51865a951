//! Anchors: a node's newest seal, kept outside the node (the node publishes it to
//! the registry every minute and when it stops), so that a log cut at its end
//! together with its last seals is found. The file alone cannot show that cut:
//! what is left is whole. Checked against an anchor, the log must reach the
//! anchored entry, and that entry's hash must be the anchored chain head.
//!
//! An anchor file, as `lgsp audit anchor show --out` writes it, is one JSON line:
//! `{"anchor":{"node":"<agency>/<name>","source":"…","seal":{…}}}` where `seal`
//! is the seal exactly as in the log; its signature is checked against the
//! node's certificate like any seal, so an edited anchor file fails.

use crate::error::{AuditError, io_err};
use crate::format::Seal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The largest anchor file read: an anchor is a few hundred bytes.
const MAX_ANCHOR_FILE: u64 = 64 * 1024;

/// A seal of a node's log kept outside the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// The node whose log it anchors, `<agency-code>/<node-name>`.
    pub node: String,
    /// Where the anchor was kept, for messages: e.g. `registry revision 42`.
    pub source: String,
    /// The newest seal the node published, as it is in the log.
    pub seal: Seal,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorLine {
    anchor: Anchor,
}

impl Anchor {
    /// The anchor file's contents: one JSON line with its newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(&AnchorLine {
            anchor: self.clone(),
        })
        .expect("an anchor of strings and integers always serializes");
        line.push('\n');
        line
    }

    /// Reads an anchor file written by [`Anchor::to_line`]. Fails with
    /// [`AuditError::Io`] when it cannot be read and [`AuditError::BadAnchor`]
    /// when it is not an anchor.
    pub fn read(path: &Path) -> Result<Anchor, AuditError> {
        let len = std::fs::metadata(path).map_err(io_err(path))?.len();
        if len > MAX_ANCHOR_FILE {
            return Err(AuditError::BadAnchor(format!(
                "{} is {len} bytes, not an anchor (a few hundred bytes, as `lgsp audit anchor show --out` writes it)",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str::<AnchorLine>(text.trim_end())
            .map(|line| line.anchor)
            .map_err(|e| {
                AuditError::BadAnchor(format!(
                    "{} is not an anchor file ({e}); write one with `lgsp audit anchor show --node AGENCY/NODE --out FILE`",
                    path.display()
                ))
            })
    }
}

impl Anchor {
    /// The anchor described as [`Display`](fmt::Display) does, with the
    /// seal's time given as `sealed` (e.g. on the province's clocks rather
    /// than the seal's UTC).
    pub fn describe(&self, sealed: &str) -> String {
        format!(
            "the anchor of node {} ({}: entry {}, sealed {sealed})",
            self.node, self.source, self.seal.seq
        )
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&self.seal.time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, exchange, sealed_log, tampered};
    use crate::{AuditError, LogState, verify_anchored};

    /// The anchor a node would publish after the last seal of `f`'s log.
    fn anchor_of(f: &Fixture) -> Anchor {
        let log = f.open();
        let seal = log.last_seal().expect("the log ends with a seal");
        Anchor {
            node: "000.00.12.H62/node-1".into(),
            source: "registry revision 42".into(),
            seal,
        }
    }

    fn check(f: &Fixture, anchor: &Anchor) -> Result<crate::VerifyReport, AuditError> {
        verify_anchored(&f.path(), &f.cert, LogState::Closed, anchor)
    }

    #[test]
    fn last_seal_is_the_newest_written_and_is_read_back_on_reopen() {
        let f = Fixture::new("last-seal");
        let log = f.open();
        assert_eq!(log.last_seal(), None);
        log.append(exchange(1)).unwrap();
        assert_eq!(log.last_seal(), None, "nothing sealed yet");
        log.seal().unwrap();
        let first = log.last_seal().unwrap();
        assert_eq!(first.seq, 1);
        drop(log);
        let log = f.open();
        assert_eq!(
            log.last_seal(),
            Some(first.clone()),
            "read back from the file"
        );
        log.append(exchange(2)).unwrap();
        log.seal().unwrap();
        drop(log);
        let seal = f.open().last_seal().unwrap();
        assert_eq!(seal.seq, 2);
        let last_line = f.lines().pop().unwrap();
        assert_eq!(
            crate::format::decode_seal(last_line.as_bytes(), 0).unwrap(),
            seal
        );
    }

    #[test]
    fn whole_log_reaches_its_anchor_and_says_so() {
        let f = Fixture::new("anchor-ok");
        sealed_log(&f);
        let anchor = anchor_of(&f);
        let report = check(&f, &anchor).unwrap();
        assert_eq!(report.anchored, Some(10));
        assert!(
            report.to_string().contains(
                "; reaches the anchor of node 000.00.12.H62/node-1 (registry revision 42: entry 10, sealed "
            ),
            "{report}"
        );
        // A log that grew after the anchor was published reaches it too.
        let log = f.open();
        log.append(exchange(11)).unwrap();
        drop(log);
        assert_eq!(check(&f, &anchor).unwrap().anchored, Some(10));
    }

    #[test]
    fn log_cut_with_its_last_seal_fails_against_the_anchor_naming_what_is_missing() {
        let f = Fixture::new("anchor-cut");
        sealed_log(&f);
        let anchor = anchor_of(&f);
        let mut lines = f.lines();
        lines.truncate(5); // entries 1-4 and their seal: whole as far as the file can tell
        f.write_lines(&lines);
        assert_eq!(f.verify().unwrap().last_sealed, Some(4));
        let error = check(&f, &anchor).unwrap_err();
        assert!(
            matches!(
                &error,
                AuditError::BehindAnchor {
                    last: 4,
                    anchored: 10,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(
                "the log ends at entry 4, but the anchor of node 000.00.12.H62/node-1 \
                 (registry revision 42: entry 10, sealed "
            ) && message
                .ends_with("entries 5..10 and their seals are missing: the log was cut at its end"),
            "{message}"
        );
    }

    #[test]
    fn log_rewritten_up_to_the_anchored_entry_fails_against_the_anchor() {
        // Entries 5.. rewritten and sealed anew, as someone with the node's key
        // could: the anchored head no longer matches.
        let f = Fixture::new("anchor-rewritten");
        sealed_log(&f);
        let anchor = anchor_of(&f);
        let mut lines = f.lines();
        lines.truncate(5);
        f.write_lines(&lines);
        let log = f.open();
        for n in 5..=10 {
            let mut ex = exchange(n);
            ex.status = "NOT_FOUND".into();
            log.append(ex).unwrap();
        }
        drop(log);
        assert_eq!(f.verify().unwrap().last_sealed, Some(10), "sealed anew");
        let (line, seq, why) = tampered(check(&f, &anchor));
        assert_eq!((line, seq), (11, Some(10)));
        assert!(
            why.starts_with("entry 10's hash is not the chain head of the anchor of node"),
            "{why}"
        );
    }

    #[test]
    fn anchor_with_an_edited_seal_is_refused_before_the_log_is_read() {
        let f = Fixture::new("anchor-forged");
        sealed_log(&f);
        let mut anchor = anchor_of(&f);
        anchor.seal.seq = 4; // to make a cut log pass
        match check(&f, &anchor) {
            Err(AuditError::BadAnchor(why)) => assert!(
                why.contains("its fields were changed after signing"),
                "{why}"
            ),
            other => panic!("expected the anchor to be refused, got {other:?}"),
        }
        // An anchor signed by another node's key names a certificate not given.
        let other = Fixture::new("anchor-other");
        sealed_log(&other);
        match check(&f, &anchor_of(&other)) {
            Err(AuditError::BadAnchor(why)) => {
                assert!(why.contains("none of the given certificates"), "{why}")
            }
            other => panic!("expected the anchor to be refused, got {other:?}"),
        }
    }

    #[test]
    fn anchor_file_round_trips_and_a_stranger_file_is_refused() {
        let f = Fixture::new("anchor-file");
        sealed_log(&f);
        let anchor = anchor_of(&f);
        let path = f.tmp.0.join("anchor.json");
        std::fs::write(&path, anchor.to_line()).unwrap();
        assert_eq!(Anchor::read(&path).unwrap(), anchor);
        std::fs::write(&path, "{\"seal\":{}}\n").unwrap();
        match Anchor::read(&path) {
            Err(AuditError::BadAnchor(why)) => {
                assert!(why.contains("lgsp audit anchor show"), "{why}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

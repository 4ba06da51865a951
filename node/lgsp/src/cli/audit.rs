//! `lgsp audit`: checking and shipping a node's sharing log (nhật ký chia sẻ dữ liệu,
//! D47 Art. 45). Both work on the file alone, while the node runs or after it stopped;
//! an export carries the seals that prove it, so it verifies on its own too. `lgsp
//! audit anchor` reads the seal each node anchors in the registry, which `verify
//! --anchor` holds the log to: a log cut at its end, seals and all, fails there.

use super::UsageError;
use anyhow::{Context, Result};
use clap::Subcommand;
use lgsp_proto::RecordKind;
use lgsp_proto::catalog_record::Value;
use lgsp_registry::calendar::WorkCalendar;
use lgsp_sharing_log::{
    self as sharing_log, Anchor, AuditError, LIVE_WINDOW, LogState, Signer, TimeRange,
};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check that a sharing log, or an export of one, is intact: every entry's
    /// hash, the numbering and the chain of entries, every seal's signature over
    /// all its fields, and that a seal covers the last entry. Prints a summary;
    /// fails naming the first line (and entry) that was changed, removed or
    /// moved, a log with no seal, or the entries after the last seal. A log
    /// cut off together with its last seals cannot be told from the file alone:
    /// give --anchor, the seal the node published to the registry (`lgsp audit
    /// anchor show --out`), and the log must reach it. An entry of an exchange
    /// with another instance keeps the signed on-behalf-of record of who asked:
    /// each is checked too (its signature with the certificate it carries, its
    /// request id, its consumer), and their signers are listed.
    ///
    /// Example: lgsp audit verify --log /var/lib/lgsp/sharing-log.jsonl --cert
    /// /etc/lgsp/tls/cert.pem --anchor anchor.json
    Verify {
        /// The sharing log, sharing-log.jsonl in the node's data directory, or
        /// a file written by `lgsp audit export`.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// The node is running: accept entries after the last seal when they
        /// were written in the last 5 seconds (the node seals every second).
        /// Without it every entry must be sealed, as in a stopped node's log.
        #[arg(long)]
        live: bool,
        /// The node's certificate (PEM), whose key signed the seals. Repeat the
        /// flag, or put several certificates in the file, when the node's key
        /// was renewed: a seal made by any of them is accepted.
        #[arg(long, value_name = "FILE", required = true)]
        cert: Vec<PathBuf>,
        /// An anchor file written by `lgsp audit anchor show --out`: the
        /// node's newest seal as the registry holds it. The log must reach
        /// that entry with that chain head, or it was cut or rewritten; the
        /// anchor's own signature is checked with --cert.
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
        #[command(flatten)]
        zone: super::time::ZoneArg,
    },
    /// Write the log's entries within a time range as JSON Lines, with what
    /// proves them, so that `lgsp audit verify --log EXPORT --cert CERT` checks
    /// the export on its own: a header line naming the chain head before the
    /// first entry, then the log's lines (entries and seals) byte for byte up to
    /// the seal after the range's last entry. The header (the range, its
    /// first and last entries) is signed with the node's key, so an export
    /// cut short fails too. Entries of the range not sealed yet are left out
    /// and counted. Does not verify the log; run `lgsp audit verify` for that.
    ///
    /// Example: lgsp audit export --log /var/lib/lgsp/sharing-log.jsonl --key
    /// /etc/lgsp/tls/key.pem --cert /etc/lgsp/tls/cert.pem --from 2026-11-01 --to
    /// 2026-11-30 --out thang-11.jsonl
    Export {
        /// The sharing log, sharing-log.jsonl in the node's data directory.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// The node's private key (PEM), which signs the export's header.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The node's certificate (PEM), named in the export's header; the
        /// one `lgsp audit verify --cert` checks the export with.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The first time to include, on the province's clocks: a date
        /// (2026-11-01, from 00:00), "2026-11-01 08:00", or RFC 3339 with its
        /// own offset (2026-11-01T08:00:00+07:00). Default: the beginning of
        /// the log.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// The last time to include, on the province's clocks: a date (up to
        /// the end of that day), "2026-11-30 17:00", or RFC 3339. Default: the
        /// end of the log.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        #[command(flatten)]
        zone: super::time::ZoneArg,
        /// Where to write the entries (overwritten if it exists). Default: standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The seal each node anchors in the registry (mốc nhật ký): show it,
    /// save it for `lgsp audit verify --anchor`, or remove it.
    #[command(subcommand)]
    Anchor(AnchorCommand),
}

#[derive(Debug, Subcommand)]
pub(super) enum AnchorCommand {
    /// Show the newest seal node AGENCY/NAME published to the registry (every
    /// minute, and when it stops), and with --out save it as an anchor file
    /// for `lgsp audit verify --anchor`. Read with a linearizable read: the
    /// registry's latest. Any certificate of the province may read it.
    ///
    /// Example: lgsp audit anchor show --node 000.00.12.H62/node-1 --out anchor.json
    Show {
        #[command(flatten)]
        registry: super::RegistryArgs,
        /// The node, <agency-code>/<node-name>, e.g. 000.00.12.H62/node-1.
        #[arg(long, value_name = "AGENCY/NAME")]
        node: String,
        /// Write the anchor to this file (overwritten if it exists).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Remove node AGENCY/NAME's anchor (provincial admin only), so that it
    /// may anchor a new log: needed only when a node's sharing log was
    /// replaced on purpose (a new data directory), since the registry refuses
    /// an anchor that goes back. Save the old one first (`show --out`): it is
    /// the evidence of the old log.
    ///
    /// Example: lgsp audit anchor remove --node 000.00.12.H62/node-1
    Remove {
        #[command(flatten)]
        registry: super::RegistryArgs,
        /// The node, <agency-code>/<node-name>.
        #[arg(long, value_name = "AGENCY/NAME")]
        node: String,
    },
}

pub(super) fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            log,
            live,
            cert,
            anchor,
            zone,
        } => verify(&log, live, &cert, anchor.as_deref(), &zone.calendar()?),
        AuditCommand::Export {
            log,
            key,
            cert,
            from,
            to,
            zone,
            out,
        } => {
            let range = time_range(&zone.calendar()?, from.as_deref(), to.as_deref())?;
            let signer = export_signer(&key, &cert)?;
            export(&log, &range, &signer, out.as_deref())
        }
        AuditCommand::Anchor(AnchorCommand::Show {
            registry,
            node,
            out,
        }) => {
            let key = node_key(&node)?;
            super::runtime()?.block_on(show_anchor(&registry, &key, out.as_deref()))
        }
        AuditCommand::Anchor(AnchorCommand::Remove { registry, node }) => {
            let key = node_key(&node)?;
            super::runtime()?.block_on(async {
                let response = registry
                    .client()?
                    .delete(RecordKind::AuditAnchor, &key, 0)
                    .await
                    .with_context(|| format!("cannot remove the anchor of node {key}"))?;
                println!(
                    "removed the sharing-log anchor of node {key} (revision {}); it anchors its log anew at its next interval",
                    response.revision
                );
                Ok(())
            })
        }
    }
}

/// What [`check_records`] found.
#[derive(Debug, Default)]
struct RecordsReport {
    checked: u64,
    /// The signers, with how many records each signed.
    signers: std::collections::BTreeMap<String, u64>,
}

impl std::fmt::Display for RecordsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signers: Vec<String> = self
            .signers
            .iter()
            .map(|(signer, n)| format!("{signer} ({n})"))
            .collect();
        write!(
            f,
            "on-behalf-of records OK: {} verified, each for its entry's request and consumer, signed by {}; that these certificates chained to their instance's CA and were not revoked was checked by this node when it served",
            self.checked,
            signers.join(", ")
        )
    }
}

/// Checks the on-behalf-of record every entry of `log` before entry `end`
/// (those whose chain was verified) keeps: its signature with the key of
/// the certificate it carries, its request id against the entry's, and the
/// signer: for a node's record, the entry's consumer; for an outside REST
/// system's, a hub (see [`lgsp_node::obo::Auditor::audit`]).
fn check_records(log: &Path, end: u64) -> Result<RecordsReport> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(log)
        .with_context(|| format!("cannot read the sharing log {}", log.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut report = RecordsReport::default();
    let mut auditor = lgsp_node::obo::Auditor::default();
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            // The end, or a line being written (not checked, as the report said).
            return Ok(report);
        }
        number += 1;
        if !line.starts_with(b"{\"seq\":")
            || memchr::memmem::find(&line, b"\"on_behalf_of\":").is_none()
        {
            continue;
        }
        let entry: sharing_log::Entry = serde_json::from_slice(&line)
            .with_context(|| format!("line {number} of {}", log.display()))?;
        if entry.seq >= end {
            return Ok(report);
        }
        let Some(logged) = &entry.on_behalf_of else {
            continue;
        };
        let refuse = |why: String| {
            anyhow::anyhow!(
                "sharing log {}: entry {} (line {number}, request {}) keeps an on-behalf-of record that does not prove who asked: {why}",
                log.display(),
                entry.seq,
                entry.request_id
            )
        };
        let audited = auditor
            .audit(logged, &entry.request_id)
            .map_err(|e| refuse(e.to_string()))?;
        let agency = audited.signer.agency.to_string();
        let foreign = format!("{agency}@{}", audited.signer.trust_domain);
        if audited.rest_client.is_empty() {
            if entry.consumer != agency && entry.consumer != foreign {
                return Err(refuse(format!(
                    "it is signed by {}, but the entry names consumer {}",
                    audited.signer, entry.consumer
                )));
            }
        } else if audited.signer.role != lgsp_certs::Role::Hub {
            return Err(refuse(format!(
                "it is made for outside REST system {} but signed by {}, not a hub",
                audited.rest_client, audited.signer
            )));
        }
        report.checked += 1;
        *report
            .signers
            .entry(audited.signer.to_string())
            .or_default() += 1;
    }
}

/// A node key as typed, checked: `<agency-code>/<node-name>`.
fn node_key(node: &str) -> Result<String> {
    let key: lgsp_registry::NodeKey = node.parse().map_err(|e| {
        UsageError(format!(
            "--node {node:?} is not <agency-code>/<node-name> (e.g. 000.00.12.H62/node-1): {e}"
        ))
    })?;
    Ok(lgsp_registry::NodeKey::format(
        key.agency().as_str(),
        key.name(),
    ))
}

async fn show_anchor(registry: &super::RegistryArgs, key: &str, out: Option<&Path>) -> Result<()> {
    let response = registry
        .client()?
        .get(RecordKind::AuditAnchor, key, false)
        .await;
    let record = match response {
        Ok(r) => r.record.unwrap_or_default(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            return Err(anyhow::anyhow!(
                "node {key} has anchored no sharing log in the registry yet: a node publishes its newest seal every [audit] anchor_interval_s (60 s by default) and when it stops; check that the node runs and reaches the registry"
            ));
        }
        Err(status) => {
            return Err(
                anyhow::Error::new(status).context(format!("cannot read the anchor of node {key}"))
            );
        }
    };
    let meta = record.meta.unwrap_or_default();
    let Some(Value::AuditAnchor(a)) = record.value else {
        anyhow::bail!("the registry's record {key} is not an anchor");
    };
    let anchor = Anchor {
        node: key.to_owned(),
        source: format!("registry revision {}", meta.mod_revision),
        seal: lgsp_node::audit_anchor::seal_of(&a),
    };
    println!(
        "sharing-log anchor of node {key} (registry revision {}):",
        meta.mod_revision
    );
    println!("  entry {}, chain head {}", a.seq, a.head);
    println!("  sealed {} by {}", a.seal_time, a.signer);
    println!("  certificate sha256 {}", a.cert_sha256);
    if let Some(path) = out {
        std::fs::write(path, anchor.to_line())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "written to {}: check the log with `lgsp audit verify --log FILE --cert CERT --anchor {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn export_signer(key: &Path, cert: &Path) -> Result<Signer> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the node's {what} {}", path.display()))
    };
    Signer::from_pem(&read(key, "key")?, &read(cert, "certificate")?).with_context(|| {
        format!(
            "cannot sign the export with {} and {}: give the node's own key and certificate",
            key.display(),
            cert.display()
        )
    })
}

/// How the verify report names the anchor: its seal's time on the
/// province's clocks, as every other time the CLI shows (the log keeps UTC).
fn anchor_in_zone(anchor: &Anchor, cal: &WorkCalendar) -> String {
    let sealed = match anchor.seal.time.parse::<jiff::Timestamp>() {
        Ok(at) => cal.show(at.as_second()),
        Err(_) => anchor.seal.time.clone(),
    };
    anchor.describe(&sealed)
}

fn verify(
    log: &Path,
    live: bool,
    certs: &[PathBuf],
    anchor: Option<&Path>,
    cal: &WorkCalendar,
) -> Result<()> {
    let mut pem = String::new();
    for path in certs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the certificate {}", path.display()))?;
        pem.push_str(&text);
        pem.push('\n');
    }
    let state = if live {
        LogState::live()
    } else {
        LogState::Closed
    };
    let anchor = anchor.map(Anchor::read).transpose()?;
    let result = match &anchor {
        Some(anchor) => sharing_log::verify_anchored(log, &pem, state, anchor),
        None => sharing_log::verify_with(log, &pem, state),
    };
    match result {
        Ok(mut report) => {
            if let (Some(described), Some(anchor)) = (&mut report.anchor, &anchor) {
                *described = anchor_in_zone(anchor, cal);
            }
            // The records of the entries the chain check covered, and no
            // other (a live log grows meanwhile); the log is OK only if
            // they are.
            let first = report.export.as_ref().map_or(1, |header| header.first);
            let records = check_records(log, first + report.entries)?;
            println!("{report}");
            if records.checked > 0 {
                println!("{records}");
            }
            Ok(())
        }
        Err(error @ AuditError::Tampered { .. }) => Err(anyhow::Error::new(error).context(
            format!("sharing log {} has been tampered with", log.display()),
        )),
        Err(AuditError::BehindAnchor {
            last,
            anchored,
            anchor: _,
        }) if anchor.is_some() => {
            // Named as the report names it: the seal's time on the
            // province's clocks.
            let error = AuditError::BehindAnchor {
                last,
                anchored,
                anchor: anchor_in_zone(anchor.as_ref().expect("checked"), cal),
            };
            Err(anyhow::Error::new(error).context(format!("sharing log {} was cut", log.display())))
        }
        Err(error @ (AuditError::BehindAnchor { .. } | AuditError::ShortExport { .. })) => {
            Err(anyhow::Error::new(error).context(format!("sharing log {} was cut", log.display())))
        }
        Err(error @ AuditError::BadAnchor(_)) => Err(anyhow::Error::new(error)),
        Err(error @ (AuditError::NoSeal { .. } | AuditError::Unsealed { .. })) => {
            let hint = if live {
                String::new()
            } else {
                format!(
                    " (if the node is running, --live accepts entries of the last {} s)",
                    LIVE_WINDOW.as_secs()
                )
            };
            Err(anyhow::Error::new(error).context(format!(
                "sharing log {} is not proven whole{hint}",
                log.display()
            )))
        }
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("cannot verify the sharing log {}", log.display()))),
    }
}

/// The export's bounds, read on the province's clocks. Checked before the
/// output file is opened: a typo must not truncate it.
fn time_range(cal: &WorkCalendar, from: Option<&str>, to: Option<&str>) -> Result<TimeRange> {
    let bound = |flag: &str, s: Option<&str>, end: bool| -> Result<Option<i64>> {
        s.map(|s| {
            super::time::parse_bound_ms(cal, s, end).ok_or_else(|| {
                UsageError(format!(
                    "--{flag} {s:?} is not a time: give YYYY-MM-DD, \"YYYY-MM-DD HH:MM\" \
                     ({}) or RFC 3339 (2026-11-01T08:00:00+07:00)",
                    cal.time_zone()
                ))
                .into()
            })
        })
        .transpose()
    };
    let range = TimeRange {
        from_ms: bound("from", from, false)?,
        to_ms: bound("to", to, true)?,
    };
    if let (Some(lo), Some(hi)) = (range.from_ms, range.to_ms)
        && lo > hi
    {
        return Err(UsageError(format!(
            "--from {} is after --to {}: nothing to export",
            from.unwrap_or_default(),
            to.unwrap_or_default()
        ))
        .into());
    }
    Ok(range)
}

fn export(log: &Path, range: &TimeRange, signer: &Signer, out: Option<&Path>) -> Result<()> {
    let result = match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let count = sharing_log::export_summary(log, range, signer, &mut writer);
            writer
                .flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
            count
        }
        None => {
            let mut writer = std::io::BufWriter::new(std::io::stdout().lock());
            let count = sharing_log::export_summary(log, range, signer, &mut writer);
            writer.flush().context("cannot write to standard output")?;
            count
        }
    };
    match result {
        Ok(summary) => {
            let plural =
                |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
            let mut said = format!(
                "exported {} and {}",
                plural(summary.entries, "entry", "entries"),
                plural(summary.seals, "seal", "seals")
            );
            if let Some(path) = out {
                said += &format!(" to {}", path.display());
            }
            if summary.after_range > 0 {
                said += &format!(
                    " ({} after the range, up to the seal that covers it)",
                    plural(summary.after_range, "entry", "entries")
                );
            }
            if summary.unsealed > 0 {
                said += &format!(
                    "; {} of the range not sealed yet left out: export again in a second",
                    plural(summary.unsealed, "entry", "entries")
                );
            }
            eprintln!("{said}");
            Ok(())
        }
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("cannot export the sharing log {}", log.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's credentials and its issued PEMs, from a new CA.
    fn node_creds(dir: &Path, agency: &str) -> (lgsp_certs::Credentials, lgsp_certs::ca::Issued) {
        let mut ca = lgsp_certs::ca::CertificateAuthority::init(
            &dir.join("ca"),
            "vinhphuc.gov.vn",
            "CA",
            30,
        )
        .unwrap();
        let id = lgsp_certs::SpiffeId::new(
            ca.trust_domain(),
            lgsp_certs::AgencyCode::new(agency).unwrap(),
            lgsp_certs::Role::Node,
            "node-1",
        )
        .unwrap();
        let issued = ca
            .issue(&lgsp_certs::ca::LeafSpec::for_days(id, 30).unwrap())
            .unwrap();
        let creds =
            lgsp_certs::Credentials::from_pem(&issued.cert_pem, &issued.key_pem, ca.cert_pem())
                .unwrap();
        (creds, issued)
    }

    fn exchange(request_id: &str, consumer: &str, record: Option<String>) -> sharing_log::Exchange {
        sharing_log::Exchange {
            request_id: request_id.into(),
            side: "consumer".into(),
            consumer: consumer.into(),
            provider: "000.00.12.H62".into(),
            service: "000.00.12.H62/ho-tich".into(),
            operation: "get".into(),
            request_sha256: "ab".repeat(32),
            response_sha256: "cd".repeat(32),
            status: "OK".into(),
            latency_us: 1,
            bytes_in: 1,
            bytes_out: 1,
            external_ids: Default::default(),
            on_behalf_of: record,
        }
    }

    #[test]
    fn a_kept_record_that_does_not_prove_its_entry_fails_the_audit_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, issued) = node_creds(dir.path(), "000.00.13.H62");
        let envelope = lgsp_proto::Envelope {
            service_id: "000.00.12.H62/ho-tich".into(),
            operation: "get".into(),
            request_id: "r-1".into(),
            ..Default::default()
        };
        let audience = lgsp_node::obo::Audience {
            trust_domain: "ndxp.gov.vn".into(),
            via_hub: "spiffe://vinhphuc.gov.vn/agency/000.00.00.H62/hub/hub".into(),
        };
        let now = lgsp_registry::calendar::unix_now_ms();
        let record = lgsp_node::obo::for_log(
            &lgsp_node::obo::sign(&creds, &envelope, now, &audience).unwrap(),
        );
        let log = sharing_log::SharingLog::open(
            &dir.path().join("log"),
            Signer::from_pem(&issued.key_pem, &issued.cert_pem).unwrap(),
        )
        .unwrap();
        log.append(exchange("r-1", "000.00.13.H62", Some(record.clone())))
            .unwrap();
        log.append(exchange("r-0", "000.00.13.H62", None)).unwrap();
        // Entry 3 keeps entry 1's record: for another request.
        log.append(exchange("r-2", "000.00.13.H62", Some(record.clone())))
            .unwrap();
        // Entry 4 names a consumer the record's signer is not.
        log.append(exchange("r-1", "000.00.14.H62", Some(record)))
            .unwrap();
        log.seal().unwrap();
        let path = log.path().to_owned();
        let checked = check_records(&path, 3).unwrap();
        assert_eq!(checked.checked, 1, "entries 1 and 2 only");
        assert!(
            checked
                .to_string()
                .contains("spiffe://vinhphuc.gov.vn/agency/000.00.13.H62/node/node-1 (1)"),
            "{checked}"
        );
        let refused = format!("{:#}", check_records(&path, 4).unwrap_err());
        assert!(
            refused.contains("entry 3") && refused.contains("request r-2"),
            "{refused}"
        );
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.remove(2);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let refused = format!("{:#}", check_records(&path, 5).unwrap_err());
        assert!(
            refused.contains("entry 4") && refused.contains("names consumer 000.00.14.H62"),
            "{refused}"
        );
    }

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn the_verify_report_names_the_anchors_seal_time_on_the_provinces_clocks() {
        let anchor = Anchor {
            node: "000.00.12.H62/node-1".into(),
            source: "registry revision 42".into(),
            seal: sharing_log::Seal {
                v: Some(2),
                seq: 10,
                head: "ab".repeat(32),
                time: "2026-11-30T17:30:00.123Z".into(),
                signer: String::new(),
                cert: None,
                signature: String::new(),
            },
        };
        let text = anchor_in_zone(&anchor, &WorkCalendar::default());
        assert_eq!(
            text,
            "the anchor of node 000.00.12.H62/node-1 (registry revision 42: entry 10, \
             sealed 2026-12-01 00:30 +07:00)"
        );
        assert!(!text.contains('Z'), "{text}");
        // The library's own display keeps the log's UTC.
        assert!(anchor.to_string().contains("2026-11-30T17:30:00.123Z"));
    }

    #[test]
    fn an_export_month_is_the_provinces_month_not_utcs() {
        let cal = WorkCalendar::default();
        let range = time_range(&cal, Some("2026-11-01"), Some("2026-11-30")).unwrap();
        // Vietnam is UTC+7: November starts at 17:00 UTC on 31 October.
        assert_eq!(range.from_ms, Some(ms("2026-10-31T17:00:00Z")));
        assert_eq!(range.to_ms, Some(ms("2026-11-30T17:00:00Z") - 1));
        let range = time_range(&cal, Some("2026-11-01 08:00"), None).unwrap();
        assert_eq!(range.from_ms, Some(ms("2026-11-01T01:00:00Z")));
        // An offset given is kept.
        let range = time_range(&cal, None, Some("2026-11-01T08:00:00+00:00")).unwrap();
        assert_eq!(range.to_ms, Some(ms("2026-11-01T08:00:00Z")));
        // Another zone, when configured.
        let utc = WorkCalendar::from_record(Some(&lgsp_proto::Calendar {
            time_zone: "UTC".into(),
            ..Default::default()
        }))
        .unwrap();
        let range = time_range(&utc, Some("2026-11-01"), None).unwrap();
        assert_eq!(range.from_ms, Some(ms("2026-11-01T00:00:00Z")));
        let err = time_range(&cal, Some("1/11/2026"), None).unwrap_err();
        assert!(err.to_string().contains("Asia/Ho_Chi_Minh"), "{err}");
        assert!(time_range(&cal, Some("2026-12-01"), Some("2026-11-01")).is_err());
    }
}

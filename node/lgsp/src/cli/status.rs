//! `lgsp status`: one screen for a node's host, read from its `node.toml`:
//! this build, whether the node answers (its metrics), the registry servers
//! and who leads, how fresh the node's catalog copy is, when the node's
//! certificate expires, the datasets it serves with their rows and
//! generation, and the node links other agencies hold open. Exits 1 when
//! something needs the operator, after saying what.

use super::output::{Listing, OutputArgs};
use anyhow::Result;
use clap::Args;
use lgsp_certs::Credentials;
use lgsp_certs::inspect::CertInfo;
use lgsp_node::config::NodeConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A certificate this close to its end is reported as a problem.
const RENEW_WITHIN_DAYS: i64 = 21;
/// A catalog copy older than this is reported as a problem (the metrics
/// alert fires at the same age: docs/operations.md).
const STALE_CATALOG_SECONDS: f64 = 120.0;

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// The node's configuration, as `lgsp node start` takes it.
    #[arg(long, value_name = "FILE", default_value = "/etc/lgsp/node.toml")]
    config: PathBuf,
    #[command(flatten)]
    zone: super::time::ZoneArg,
    #[command(flatten)]
    output: OutputArgs,
}

/// The node's metrics, by series (name and labels as written) to value.
type Samples = BTreeMap<String, f64>;

/// Where to reach a metrics listener that may be bound to every address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// One scrape of `GET /metrics` at `addr`, within 3 s.
async fn scrape(addr: SocketAddr) -> Result<Samples, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| format!("{addr} did not answer within 3 s"))??;
    Ok(parse_samples(&text))
}

/// The samples of a Prometheus or OpenMetrics text exposition.
fn parse_samples(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value = match value.trim() {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            Some((series.to_owned(), value))
        })
        .collect()
}

/// The value of a series without labels.
fn sample(samples: &Samples, name: &str) -> Option<f64> {
    samples.get(name).copied()
}

/// Every series of `name` (with labels), with its labels as text.
fn series<'a>(samples: &'a Samples, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> {
    samples.iter().filter_map(move |(k, v)| {
        let labels = k.strip_prefix(name)?.strip_prefix('{')?.strip_suffix('}')?;
        Some((labels, *v))
    })
}

/// The value of `label` in a label set as exposed (`a="x",b="y"`).
fn label<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// A duration in words: `45 s`, `12 min`, `3 h`, `2 days`.
fn ago(seconds: f64) -> String {
    match seconds {
        s if !s.is_finite() => "never since the node started".to_owned(),
        s if s < 120.0 => format!("{s:.0} s ago"),
        s if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        s if s < 172_800.0 => format!("{:.0} h ago", s / 3600.0),
        s => format!("{:.0} days ago", s / 86400.0),
    }
}

pub(super) fn run(args: StatusArgs) -> Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let cal = args.zone.calendar()?;
    let rt = super::runtime()?;
    let (listing, problems) = rt.block_on(gather(&args, &config, &cal))?;
    args.output.print(&listing)?;
    if !problems.is_empty() {
        anyhow::bail!("{} problem(s): {}", problems.len(), problems.join("; "));
    }
    Ok(())
}

/// Everything `lgsp status` shows, and the problems among it.
async fn gather(
    args: &StatusArgs,
    config: &NodeConfig,
    cal: &lgsp_registry::calendar::WorkCalendar,
) -> Result<(Listing, Vec<String>)> {
    let mut problems = Vec::new();
    let mut text = Vec::new();
    let mut listing = Listing::new("node_status");
    let row = |text: &mut Vec<String>, what: &str, line: String| {
        text.push(format!("{what:<14} {line}"));
    };
    row(
        &mut text,
        "node",
        format!(
            "{}/{} (config {})",
            config.agency,
            config.name,
            args.config.display()
        ),
    );
    row(&mut text, "this lgsp", super::VERSION.to_owned());
    listing.fact("agency", config.agency.as_str());
    listing.fact("name", config.name.as_str());
    listing.fact("version", super::VERSION);

    // The running node, through its metrics.
    let samples = match config.metrics_listen {
        None => {
            row(
                &mut text,
                "node process",
                "unknown: no metrics_listen in the config (set it to see the catalog copy and links)"
                    .to_owned(),
            );
            listing.fact("node", json!({"answering": Value::Null}));
            None
        }
        Some(addr) => match scrape(reachable(addr)).await {
            Ok(samples) => {
                let build = series(&samples, "lgsp_build_info")
                    .next()
                    .map(|(labels, _)| {
                        format!(
                            "lgsp {} (commit {})",
                            label(labels, "version").unwrap_or("?"),
                            label(labels, "commit").unwrap_or("?")
                        )
                    })
                    .unwrap_or_else(|| "an lgsp without build information".to_owned());
                row(
                    &mut text,
                    "node process",
                    format!("answering on {}: {build}", reachable(addr)),
                );
                listing.fact(
                    "node",
                    json!({"answering": true, "metrics": reachable(addr).to_string(), "build": build}),
                );
                Some(samples)
            }
            Err(e) => {
                row(
                    &mut text,
                    "node process",
                    format!("not answering: {e} (is `lgsp node start` running?)"),
                );
                problems.push(format!(
                    "the node does not answer on {}: start it (`systemctl start lgsp-node`, or `lgsp node start --config {}`) or read its log",
                    reachable(addr),
                    args.config.display()
                ));
                listing.fact("node", json!({"answering": false, "error": e}));
                None
            }
        },
    };

    // The registry, asked with the node's own certificate.
    let creds = Credentials::load(&config.tls);
    match &creds {
        Ok(creds) => {
            let answers = super::registry::server_statuses(&config.registry, creds).await?;
            let up: Vec<_> = answers
                .iter()
                .filter_map(|(a, s)| s.as_ref().ok().map(|s| (a, s)))
                .collect();
            let leader = up.iter().find(|(_, s)| s.role == "leader");
            let line = format!(
                "{} of {} server(s) answer; {}",
                up.len(),
                answers.len(),
                match leader {
                    Some((addr, s)) => format!(
                        "leader: server {} ({addr}), term {}, catalog revision {}",
                        s.id, s.term, s.revision
                    ),
                    None => "no leader among them".to_owned(),
                }
            );
            row(&mut text, "registry", line);
            for (addr, answer) in &answers {
                if let Err(e) = answer {
                    row(
                        &mut text,
                        "",
                        format!("{addr}: {}", lgsp_certs::tls::explain_status(e)),
                    );
                }
            }
            if leader.is_none() {
                problems.push(
                    "no registry server answered as leader: check the registry hosts (`lgsp registry status` there) and the network to them"
                        .to_owned(),
                );
            }
            listing.fact(
                "registry",
                json!({
                    "servers": answers.len(),
                    "answering": up.len(),
                    "leader_id": leader.map(|(_, s)| s.id),
                    "leader_address": leader.map(|(a, _)| a.as_str()),
                    "catalog_revision": leader.map(|(_, s)| s.revision),
                }),
            );
        }
        Err(e) => {
            row(
                &mut text,
                "registry",
                format!("not asked: the node's TLS files cannot be loaded ({e})"),
            );
            listing.fact("registry", Value::Null);
        }
    }

    // The node's catalog copy and links, from its metrics.
    match &samples {
        Some(s) => {
            let age = sample(s, "lgsp_catalog_cache_age_seconds");
            let revision = sample(s, "lgsp_catalog_revision");
            row(
                &mut text,
                "catalog copy",
                match (age, revision) {
                    (Some(age), Some(rev)) => {
                        format!("confirmed {} at revision {rev:.0}", ago(age))
                    }
                    _ => "the node does not say".to_owned(),
                },
            );
            if age.is_some_and(|a| a > STALE_CATALOG_SECONDS) {
                problems.push(format!(
                    "the node's catalog copy is stale (confirmed {}): the node cannot reach the registry; check the network to it and `lgsp registry status`",
                    ago(age.unwrap_or(f64::INFINITY))
                ));
            }
            let links: Vec<(String, f64)> = series(s, "lgsp_node_links_open")
                .filter(|(_, v)| *v > 0.0)
                .map(|(l, v)| (label(l, "consumer").unwrap_or("?").to_owned(), v))
                .collect();
            let total: f64 = links.iter().map(|(_, v)| v).sum();
            row(
                &mut text,
                "links open",
                if links.is_empty() {
                    "none".to_owned()
                } else {
                    format!(
                        "{total:.0} ({})",
                        links
                            .iter()
                            .map(|(c, v)| format!("{c}: {v:.0}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            );
            listing.fact(
                "catalog",
                json!({
                    "age_seconds": age.filter(|a| a.is_finite()),
                    "revision": revision.map(|r| r as u64),
                }),
            );
            listing.fact(
                "links_open",
                links
                    .iter()
                    .map(|(c, v)| json!({"consumer": c, "links": *v as u64}))
                    .collect::<Vec<_>>(),
            );
        }
        None => {
            row(
                &mut text,
                "catalog copy",
                "unknown (the node's metrics are not available)".to_owned(),
            );
            listing.fact("catalog", Value::Null);
            listing.fact("links_open", Value::Null);
        }
    }

    // The node's own certificate.
    match creds
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|c| CertInfo::from_der(&c.chain[0], &config.tls.cert).map_err(|e| e.to_string()))
    {
        Ok(cert) => {
            let until = cert.not_after.unix_timestamp();
            let left = until - lgsp_registry::calendar::unix_now();
            let days = left.div_euclid(86_400);
            let id = cert
                .spiffe_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|e| e.clone());
            row(
                &mut text,
                "certificate",
                format!(
                    "{id}, expires {} ({})",
                    cal.show(until),
                    if left <= 0 {
                        "EXPIRED".to_owned()
                    } else {
                        format!("{days} day(s) left")
                    }
                ),
            );
            if left <= 0 {
                problems.push(format!(
                    "the node's certificate expired on {} (renew it: docs/operations.md)",
                    cal.show(until)
                ));
            } else if days < RENEW_WITHIN_DAYS {
                problems.push(format!(
                    "the node's certificate expires in {days} day(s): renew it (docs/operations.md)"
                ));
            }
            listing.fact(
                "certificate",
                json!({
                    "path": config.tls.cert.display().to_string(),
                    "spiffe_id": id,
                    "serial": cert.serial,
                    "not_after": super::output::time(cal, until),
                    "days_left": days,
                }),
            );
        }
        Err(e) => {
            row(
                &mut text,
                "certificate",
                format!("cannot read {}: {e}", config.tls.cert.display()),
            );
            problems.push(format!(
                "the node's certificate {} cannot be read: check [tls] in {}",
                config.tls.cert.display(),
                args.config.display()
            ));
            listing.fact("certificate", Value::Null);
        }
    }

    // Its datasets: the live generation of each, with its rows.
    let datasets = super::dataset::list(&config.data_dir, None, cal)?;
    let live: Vec<&Value> = datasets
        .items()
        .iter()
        .filter(|d| d["live"] == true)
        .collect();
    if live.is_empty() {
        row(&mut text, "datasets", "none".to_owned());
    }
    for (i, d) in live.iter().enumerate() {
        let kept = datasets
            .items()
            .iter()
            .filter(|k| k["service"] == d["service"] && k["live"] == false)
            .count();
        row(
            &mut text,
            if i == 0 { "datasets" } else { "" },
            format!(
                "{} {} {} row(s), imported {}{}",
                d["service"].as_str().unwrap_or("?"),
                d["generation"].as_str().unwrap_or("?"),
                d["rows"],
                d["imported"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or_else(|| "?".to_owned(), |t| cal.show(t.as_second())),
                if kept > 0 {
                    format!(" ({kept} earlier generation kept)")
                } else {
                    String::new()
                }
            ),
        );
        listing.item(json!({
            "service": d["service"],
            "generation": d["generation"],
            "rows": d["rows"],
            "imported": d["imported"],
            "kept_generations": kept,
        }));
    }
    row(
        &mut text,
        "problems",
        if problems.is_empty() {
            "none".to_owned()
        } else {
            problems.join("; ")
        },
    );
    listing.fact("problems", problems.clone());
    Ok((listing.header(text.join("\n")), problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# HELP lgsp_build The lgsp build.\n\
# TYPE lgsp_build info\n\
lgsp_build_info{version=\"0.1.0\",commit=\"abc1234\"} 1\n\
lgsp_catalog_cache_age_seconds 0.0\n\
lgsp_catalog_revision 42\n\
lgsp_node_links_open{consumer=\"000.00.13.H62\"} 2\n\
lgsp_node_links_open{consumer=\"000.00.14.H62\"} 0\n\
# EOF\n";

    #[test]
    fn metrics_are_read_by_series_and_label() {
        let s = parse_samples(EXPOSITION);
        assert_eq!(sample(&s, "lgsp_catalog_revision"), Some(42.0));
        let (labels, v) = series(&s, "lgsp_build_info").next().unwrap();
        assert_eq!((label(labels, "commit"), v), (Some("abc1234"), 1.0));
        let links: Vec<_> = series(&s, "lgsp_node_links_open").collect();
        assert_eq!(links.len(), 2);
        assert_eq!(label(links[0].0, "consumer"), Some("000.00.13.H62"));
    }

    #[test]
    fn a_wildcard_metrics_listener_is_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9301".parse().unwrap()),
            "127.0.0.1:9301".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.5:9301".parse().unwrap()),
            "10.0.0.5:9301".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(ago(3.2), "3 s ago");
        assert_eq!(ago(600.0), "10 min ago");
        assert_eq!(ago(f64::INFINITY), "never since the node started");
    }
}

//! `lgsp dataset`: import the data a node serves itself, and look at it.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lgsp_dataset::{DatasetError, DatasetStore, Query, Schema};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(super) enum DatasetCommand {
    /// Import a CSV or JSON Lines file as the data of a dataset service
    /// (dịch vụ chia sẻ dữ liệu), replacing what it served.
    ///
    /// CSV (.csv): UTF-8, comma-separated, the first row names the fields.
    /// JSON Lines (.jsonl, .ndjson): one JSON object per line. Every row is
    /// checked first (key present and unique, and the schema if given); if
    /// any row is bad, the bad rows are listed by line and nothing changes.
    /// A running node switches to the new data by itself within a second.
    ///
    /// Example: lgsp dataset import --data-dir /var/lib/lgsp --service ho-tich
    /// --file ho-tich.csv --key so_dinh_danh --schema ho-tich.schema.json
    Import {
        #[command(flatten)]
        at: DatasetArgs,
        /// The file to import; its extension gives the format.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The field that identifies a record (e.g. so_dinh_danh); every row
        /// must have it, and no two rows the same value.
        #[arg(long, value_name = "FIELD")]
        key: String,
        /// A JSON Schema (the subset lgsp enforces: type, maxLength, enum,
        /// required, additionalProperties) that every row must satisfy. With
        /// a schema, CSV cells become integers, numbers and booleans as it
        /// says; without one they stay strings.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
        /// The largest record accepted, as JSON text in bytes. The default
        /// fits a node's default `max_message_bytes` (4 MiB); raise both
        /// together.
        #[arg(long, value_name = "BYTES", default_value_t = lgsp_dataset::DEFAULT_MAX_RECORD_BYTES)]
        max_record_bytes: usize,
    },
    /// Print one record, as the JSON object stored.
    Show {
        #[command(flatten)]
        at: DatasetArgs,
        /// The record's key (the value of the key field given at import).
        #[arg(long)]
        key: String,
    },
    /// Print the records that match, one JSON object per line, in key order.
    ///
    /// Example: lgsp dataset query --data-dir /var/lib/lgsp --service ho-tich
    /// --filter "huyen=Tam Dương" --fields so_dinh_danh,ho_ten --limit 50
    Query {
        #[command(flatten)]
        at: DatasetArgs,
        /// Only records whose FIELD is VALUE (text compared exactly; numbers
        /// and booleans as written in JSON, e.g. 42 or true). Repeat to
        /// require several.
        #[arg(long = "filter", value_name = "FIELD=VALUE", value_parser = parse_filter)]
        filters: Vec<(String, String)>,
        /// Only these fields of each record, in this order (comma-separated).
        #[arg(long, value_name = "A,B", value_delimiter = ',')]
        fields: Vec<String>,
        /// Print at most this many records.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: u64,
    },
}

/// Which dataset: the node's data directory and the service's name.
#[derive(Debug, Args)]
pub(super) struct DatasetArgs {
    /// The node's data directory; datasets live in its `datasets` folder.
    #[arg(long, env = "LGSP_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// The service's name in the catalog (1-63 of a-z A-Z 0-9 - _ .), e.g. ho-tich.
    #[arg(long, value_name = "NAME", value_parser = parse_service)]
    service: String,
}

impl DatasetArgs {
    fn store(&self) -> DatasetStore {
        DatasetStore::new(&self.data_dir.join("datasets"))
    }
}

fn parse_service(name: &str) -> Result<String, String> {
    lgsp_certs::identity::validate_name(name)
        .map(|()| name.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_filter(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((field, value)) if !field.is_empty() => Ok((field.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not FIELD=VALUE")),
    }
}

pub(super) fn run(cmd: DatasetCommand) -> Result<()> {
    match cmd {
        DatasetCommand::Import {
            at,
            file,
            key,
            schema,
            max_record_bytes,
        } => import(&at, &file, &key, schema, max_record_bytes),
        DatasetCommand::Show { at, key } => {
            let dataset = at.store().open(&at.service)?;
            let record = dataset.get_json(&key)?.ok_or_else(|| {
                anyhow!(
                    "service {} has no record with {} {key:?}",
                    at.service,
                    dataset.key_field()
                )
            })?;
            println!("{record}");
            Ok(())
        }
        DatasetCommand::Query {
            at,
            filters,
            fields,
            limit,
        } => query(&at, filters, fields, limit),
    }
}

fn import(
    at: &DatasetArgs,
    file: &Path,
    key: &str,
    schema: Option<PathBuf>,
    max_record_bytes: usize,
) -> Result<()> {
    let schema = match &schema {
        Some(path) => Some(Schema::load(path).with_context(|| format!("{}", path.display()))?),
        None => None,
    };
    let bar = ProgressBar::new(0);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(format!("importing {}", file.display()));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    // The import checks the file, then writes the records in key order:
    // progress starts again from 0 for the second part.
    let result = at.store().with_max_record_bytes(max_record_bytes).import(
        &at.service,
        file,
        key,
        schema.as_ref(),
        &|done, total| {
            if done < bar.position() {
                bar.set_message("writing the records in key order");
                bar.reset_eta();
            }
            bar.set_length(total);
            bar.set_position(done);
        },
    );
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            println!(
                "imported {} records ({}) from {} into {} as {} in {:.1?}",
                report.records,
                indicatif::HumanBytes(report.bytes),
                file.display(),
                at.service,
                report.generation,
                report.elapsed
            );
            Ok(())
        }
        Err(DatasetError::BadRows {
            file,
            rows,
            total_bad,
        }) => {
            // The caller prints errors on one line; the rows need their own.
            let mut err = std::io::stderr().lock();
            for row in &rows {
                let _ = writeln!(err, "{}:{}: {}", file.display(), row.line, row.why);
            }
            if total_bad > rows.len() {
                let _ = writeln!(err, "... and {} more", total_bad - rows.len());
            }
            let noun = if total_bad == 1 { "row" } else { "rows" };
            let serving = match at.store().current_generation(&at.service) {
                Some(generation) => format!("{} still serves {generation}", at.service),
                None => format!("{} has no data yet", at.service),
            };
            Err(anyhow!(
                "{total_bad} bad {noun} in {}; nothing was imported ({serving})",
                file.display()
            ))
        }
        Err(e) => Err(e.into()),
    }
}

fn query(
    at: &DatasetArgs,
    filters: Vec<(String, String)>,
    fields: Vec<String>,
    limit: u64,
) -> Result<()> {
    let dataset = at.store().open(&at.service)?;
    let mut q = Query {
        filters,
        fields,
        page_size: 0,
        resume_token: String::new(),
    };
    if limit == 0 {
        return Ok(());
    }
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        q.page_size = u32::try_from(limit - printed).unwrap_or(u32::MAX);
        let page = dataset.query(&q)?;
        for (_, record) in &page.records {
            writeln!(out, "{record}")?;
        }
        printed += page.records.len() as u64;
        if page.resume_token.is_empty() {
            return Ok(());
        }
        if printed >= limit {
            drop(out);
            eprintln!("(stopped at --limit {limit}; there may be more)");
            return Ok(());
        }
        q.resume_token = page.resume_token;
    }
}

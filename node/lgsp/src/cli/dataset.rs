//! `lgsp dataset`: import the data a node serves itself, and look at it.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lgsp_dataset::{
    DatasetError, DatasetSchema, DatasetStore, ImportOptions, ImportReport, Query, Schema,
    TextEncoding, TextFormat,
};
use lgsp_node::admin::{AdminError, Reply, Request};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(super) enum DatasetCommand {
    /// Import a CSV or JSON Lines file as the data of a dataset service
    /// (dịch vụ chia sẻ dữ liệu), replacing what it served.
    ///
    /// CSV (.csv): the first row names the fields; UTF-8, UTF-16 or
    /// Windows-1258 (as Excel saves it in a Vietnamese locale), separated by
    /// `,`, `;` or tabs: guessed from the file's start unless --encoding or
    /// --delimiter say. JSON Lines (.jsonl, .ndjson): one JSON object per
    /// line. Text is stored in Unicode NFC whatever the file had. Every row is
    /// checked first (key present and unique, and the schema if given); if
    /// any row is bad, the bad rows are listed by line and nothing changes.
    /// A running node switches to the new data by itself within a second.
    ///
    /// A re-import must keep the live data's key, columns and JSON Schema
    /// (without --key or --schema it takes the live ones); a change is
    /// refused unless --replace-schema. The generation replaced is kept:
    /// `lgsp dataset rollback` restores it. --dry-run checks the file and
    /// shows what would change, without changing anything.
    ///
    /// Example: lgsp dataset import --data-dir /var/lib/lgsp --service ho-tich
    /// --file ho-tich.csv --key so_dinh_danh --schema ho-tich.schema.json
    ///
    /// Example: lgsp dataset import --data-dir /var/lib/lgsp --service ho-tich
    /// --file ho-tich-thang-12.csv --dry-run
    Import {
        #[command(flatten)]
        at: DatasetArgs,
        /// The file to import; its extension gives the format.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The field that identifies a record (e.g. so_dinh_danh); every row
        /// must have it, and no two rows the same value. Needed for the
        /// first import; later ones default to the live data's key.
        #[arg(long, value_name = "FIELD")]
        key: Option<String>,
        /// A JSON Schema (the subset lgsp enforces: type, maxLength, enum,
        /// required, additionalProperties) that every row must satisfy. With
        /// a schema, CSV cells become integers, numbers and booleans as it
        /// says; without one they stay strings. A re-import without it uses
        /// the schema kept with the live data.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
        /// Accept a key, columns or JSON Schema different from the live
        /// data's (consumers will see the new shape). Without --schema, the
        /// new data has no JSON Schema.
        #[arg(long)]
        replace_schema: bool,
        /// Check the file and show rows, schema and what would change;
        /// change nothing. Exits 1 if the import would be refused.
        #[arg(long)]
        dry_run: bool,
        /// The file's character encoding: utf-8, utf-16 (le or be) or
        /// windows-1258 (cp1258); guessed when not given.
        #[arg(long, value_name = "ENCODING")]
        encoding: Option<TextEncoding>,
        /// A CSV file's field separator: one character, e.g. ';' or tab
        /// ('\t'); guessed from the header when not given.
        #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
        delimiter: Option<u8>,
        /// The largest record accepted, as JSON text in bytes. The default
        /// fits a node's default `max_message_bytes` (4 MiB); raise both
        /// together.
        #[arg(long, value_name = "BYTES", default_value_t = lgsp_dataset::DEFAULT_MAX_RECORD_BYTES)]
        max_record_bytes: usize,
    },
    /// Serve the generation the last import replaced again (or the one
    /// named by --to). The generation rolled back from is kept, so
    /// `--to` it undoes the rollback. A running node switches within a
    /// second.
    ///
    /// Example: lgsp dataset rollback --data-dir /var/lib/lgsp --service ho-tich
    Rollback {
        #[command(flatten)]
        at: DatasetArgs,
        /// The kept generation to serve (e.g. gen-3, as `lgsp dataset list`
        /// shows); default: the one before the live one.
        #[arg(long, value_name = "GENERATION")]
        to: Option<String>,
    },
    /// List the datasets and their kept generations: which is live, rows,
    /// key, schema digest, source file and when it was imported (on the
    /// province's clocks). While the node runs, it answers through its
    /// admin socket (DATA_DIR/admin.sock).
    ///
    /// Example: lgsp dataset list --data-dir /var/lib/lgsp
    List {
        /// The node's data directory; datasets live in its `datasets` folder.
        #[arg(long, env = "LGSP_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
        /// Only this service's dataset.
        #[arg(long, value_name = "NAME", value_parser = parse_service)]
        service: Option<String>,
        #[command(flatten)]
        zone: super::time::ZoneArg,
        #[command(flatten)]
        output: super::output::OutputArgs,
    },
    /// Print one record, as the JSON object stored. While the node runs,
    /// it answers through its admin socket (DATA_DIR/admin.sock, for the
    /// node's user only); otherwise the dataset is opened directly.
    ///
    /// Example: lgsp dataset show --data-dir /var/lib/lgsp --service ho-tich --key 001099012345
    Show {
        #[command(flatten)]
        at: DatasetArgs,
        /// The record's key (the value of the key field given at import).
        #[arg(long)]
        key: String,
    },
    /// Print the records that match, one JSON object per line, in key order.
    /// While the node runs, it answers through its admin socket
    /// (DATA_DIR/admin.sock); otherwise the dataset is opened directly.
    ///
    /// Example: lgsp dataset query --data-dir /var/lib/lgsp --service ho-tich
    /// --param "huyen=Tam Dương" --fields so_dinh_danh,ho_ten --limit 50
    Query {
        #[command(flatten)]
        at: DatasetArgs,
        /// Only records whose FIELD is VALUE (text compared exactly; numbers
        /// and booleans as written in JSON, e.g. 42 or true). Repeat to
        /// require several. The same flag as `lgsp call --query --param`
        /// (`--filter` is the old spelling, still accepted).
        #[arg(long = "param", alias = "filter", value_name = "FIELD=VALUE", value_parser = parse_filter)]
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

fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "\\t" | "tab" | "\t" => Ok(b'\t'),
        _ if text.len() == 1 && text.is_ascii() && text != "\"" => Ok(text.as_bytes()[0]),
        _ => Err(format!(
            "{text:?} is not one ASCII character (e.g. ';' or ','; 'tab' for a tab)"
        )),
    }
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
            replace_schema,
            dry_run,
            encoding,
            delimiter,
            max_record_bytes,
        } => {
            let schema = match &schema {
                Some(path) => {
                    Some(Schema::load(path).with_context(|| format!("{}", path.display()))?)
                }
                None => None,
            };
            let options = ImportOptions {
                key,
                schema,
                replace_schema,
                dry_run,
                encoding,
                delimiter,
            };
            import(&at, &file, &options, max_record_bytes)
        }
        DatasetCommand::Rollback { at, to } => {
            let done = at.store().rollback(&at.service, to.as_deref())?;
            println!(
                "{} now serves {} ({} records) instead of {}; `lgsp dataset rollback --service {} --to {}` undoes this",
                at.service, done.to, done.records, done.from, at.service, done.from
            );
            Ok(())
        }
        DatasetCommand::List {
            data_dir,
            service,
            zone,
            output,
        } => output.print(&list(&data_dir, service.as_deref(), &zone.calendar()?)?),
        DatasetCommand::Show { at, key } => {
            let request = Request::Show {
                service: at.service.clone(),
                key: key.clone(),
            };
            if through_node(&at.data_dir, &request)?.is_some() {
                return Ok(());
            }
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
    options: &ImportOptions,
    max_record_bytes: usize,
) -> Result<()> {
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
    let result = at
        .store()
        .with_max_record_bytes(max_record_bytes)
        .import_with(&at.service, file, options, &|done, total| {
            if done < bar.position() {
                bar.set_message("writing the records in key order");
                bar.reset_eta();
            }
            bar.set_length(total);
            bar.set_position(done);
        });
    bar.finish_and_clear();
    match result {
        Ok(report) if report.dry_run => dry_run_report(at, file, &report, options),
        Ok(report) => {
            if report.read_as != plain_csv() {
                println!("read {} as {}", file.display(), report.read_as);
            }
            if let Some(change) = &report.schema_change {
                println!("schema replaced: {change}");
            }
            if let Some(replaced) = &report.replaced {
                println!(
                    "{} ({} records) is kept: `lgsp dataset rollback --service {}` serves it again",
                    replaced.name, replaced.records, at.service
                );
            }
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

/// How a file is read when nothing unusual is found: UTF-8, and commas
/// for CSV.
fn plain_csv() -> TextFormat {
    TextFormat {
        encoding: TextEncoding::Utf8,
        delimiter: b',',
    }
}

/// What a dry run found; an error when the import would be refused.
fn dry_run_report(
    at: &DatasetArgs,
    file: &Path,
    report: &ImportReport,
    options: &ImportOptions,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "dry run: {} checked ({}), {} good rows; nothing was changed",
        file.display(),
        report.read_as,
        report.records
    )?;
    let columns = |s: &DatasetSchema| {
        s.columns
            .as_ref()
            .map_or("(too many to list)".to_owned(), |c| c.join(", "))
    };
    match &report.replaced {
        None => {
            writeln!(
                out,
                "  {} has no data yet; this would be its first import",
                at.service
            )?;
            writeln!(out, "  rows:    {}", report.records)?;
            writeln!(out, "  key:     {}", report.schema.key)?;
            writeln!(out, "  columns: {}", columns(&report.schema))?;
            writeln!(out, "  schema:  {}", short_digest(&report.schema_digest))?;
        }
        Some(live) => {
            writeln!(out, "  would replace {} of {}", live.name, at.service)?;
            writeln!(out, "  rows:    {} → {}", live.records, report.records)?;
            writeln!(
                out,
                "  key:     {} → {}",
                live.schema.key, report.schema.key
            )?;
            writeln!(out, "  columns: {}", columns(&report.schema))?;
            writeln!(
                out,
                "  schema:  {} → {}",
                short_digest(&live.schema_digest),
                short_digest(&report.schema_digest)
            )?;
            match &report.schema_change {
                None => writeln!(out, "  schema unchanged")?,
                Some(change) => writeln!(out, "  schema change: {change}")?,
            }
            if let Some(changes) = &report.records_changed {
                writeln!(out, "  records: {changes}")?;
            }
        }
    }
    drop(out);
    if let (Some(change), Some(live)) = (&report.schema_change, &report.replaced)
        && !options.replace_schema
    {
        return Err(anyhow!(
            "this import would be refused: its schema differs from {}'s ({change}); \
             add --replace-schema if the change is meant",
            live.name
        ));
    }
    Ok(())
}

/// Asks the node running on `data_dir` through its admin socket, printing
/// each record it sends (sled lets only one process open a dataset, and a
/// running node holds them). `None` when no node answers there: the caller
/// opens the store itself. `Some(more)` once answered: whether a query's
/// limit left records out.
fn through_node(data_dir: &Path, request: &Request) -> Result<Option<bool>> {
    let mut out = std::io::stdout().lock();
    let mut failed_write = None;
    let asked = lgsp_node::admin::ask(data_dir, request, |reply| {
        if let Reply::Record(record) = reply {
            writeln!(out, "{record}").inspect_err(|e| {
                failed_write = Some(std::io::Error::new(e.kind(), e.to_string()));
            })?;
        }
        Ok(())
    });
    match asked {
        Ok(more) => Ok(Some(more)),
        Err(AdminError::NotRunning(_)) => Ok(None),
        // A reader that went away (`| head`) is told apart by the caller.
        Err(_) if failed_write.is_some() => Err(failed_write.take().expect("set").into()),
        Err(AdminError::Refused { message, .. }) => Err(anyhow!(message)),
        Err(e) => Err(e.into()),
    }
}

/// The datasets in `data_dir` (or `service`'s alone) with their kept
/// generations, one row per generation.
pub(super) fn list(
    data_dir: &Path,
    service: Option<&str>,
    cal: &lgsp_registry::calendar::WorkCalendar,
) -> Result<super::output::Listing> {
    let store = DatasetStore::new(&data_dir.join("datasets"));
    let request = Request::List {
        service: service.map(str::to_owned),
    };
    let mut generations = Vec::new();
    let asked = lgsp_node::admin::ask(data_dir, &request, |reply| {
        if let Reply::Generation(g) = reply {
            generations.push(g);
        }
        Ok(())
    });
    match asked {
        Ok(_) => {}
        Err(AdminError::NotRunning(_)) => {
            generations = lgsp_node::admin::generations(&store, service)?;
        }
        Err(AdminError::Refused { message, .. }) => return Err(anyhow!(message)),
        Err(e) => return Err(e.into()),
    }
    let mut listing = super::output::Listing::new("datasets")
        .header(format!(
            "{:<24} {:<8} {:<5} {:>10} {:<16} {:<12} {:<22} SOURCE",
            "SERVICE", "GEN", "LIVE", "ROWS", "KEY", "SCHEMA", "IMPORTED"
        ))
        .when_empty(format!("no datasets in {}", store.root().display()));
    for g in generations {
        listing.row(
            format!(
                "{:<24} {:<8} {:<5} {:>10} {:<16} {:<12} {:<22} {}",
                g.service,
                g.name,
                if g.live { "yes" } else { "kept" },
                g.records,
                g.key,
                short_digest(&g.schema_digest),
                cal.show(g.imported_at_unix as i64),
                g.source
            ),
            serde_json::json!({
                "service": g.service,
                "generation": g.name,
                "live": g.live,
                "rows": g.records,
                "key": g.key,
                "columns": g.columns,
                "schema_digest": g.schema_digest,
                "imported": super::output::time(cal, g.imported_at_unix as i64),
                "source": g.source,
            }),
        );
    }
    Ok(listing)
}

fn query(
    at: &DatasetArgs,
    filters: Vec<(String, String)>,
    fields: Vec<String>,
    limit: u64,
) -> Result<()> {
    let request = Request::Query {
        service: at.service.clone(),
        filters: filters.clone(),
        fields: fields.clone(),
        limit,
    };
    if let Some(more) = through_node(&at.data_dir, &request)? {
        if more {
            eprintln!("(stopped at --limit {limit}; there may be more)");
        }
        return Ok(());
    }
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

/// The first 12 characters of a schema digest, as listings show it (all of
/// it when shorter: a hand-edited generation.json must not panic here).
fn short_digest(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

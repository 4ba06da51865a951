//! Importing a file as a new generation of a dataset: stream it, check every
//! row, append the good ones to the data file with their keys in sled, and
//! switch `CURRENT` only if all were good.

use super::generation::{
    DatasetSchema, Manifest, compare_records, generation_names, is_complete, read_info,
    write_manifest,
};
use super::schema::{Ordered, Schema, SchemaError};
use super::text::{self, Decode, TextEncoding, TextFormat};
use super::{
    BadRow, DATA_FILE, DatasetError, DatasetStore, ImportOptions, ImportReport, Location,
    MAX_BAD_ROWS, META_TREE, Meta, RECORDS_TREE, SCHEMA_FILE, check_name, io_error, object_text,
    read_current, store_error, sync_dir, write_current, write_entry,
};
use serde_json::Value;
use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// sled's page cache while importing: enough for speed, small enough that a
/// 1 GiB file does not become 1 GiB of memory.
const IMPORT_CACHE_BYTES: u64 = 8 << 20;
/// Distinct field names kept for checking queries; beyond this the dataset
/// is taken to have no fixed field list.
const MAX_FIELD_NAMES: usize = 1024;
/// The records' text in the imported file's order, while importing.
const UNSORTED_FILE: &str = "records.unsorted";
/// Records moved to the data file per batch of new locations.
const SORT_CHUNK: usize = 10_000;
/// Progress is reported every this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    JsonLines,
}

impl Format {
    fn of(file: &Path) -> Result<Self, DatasetError> {
        let ext = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::JsonLines),
            _ => Err(DatasetError::UnsupportedFormat {
                file: file.to_owned(),
                ext: if ext.is_empty() {
                    "(none)".into()
                } else {
                    format!(".{ext}")
                },
            }),
        }
    }
}

pub(super) fn run(
    store: &DatasetStore,
    service: &str,
    file: &Path,
    options: &ImportOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<ImportReport, DatasetError> {
    let started = Instant::now();
    check_name(service)?;
    let format = Format::of(file)?;
    let total = std::fs::metadata(file).map_err(io_error(file))?.len();
    let read_as = text::sniff(
        file,
        format == Format::Csv,
        options.encoding,
        options.delimiter,
    )
    .map_err(io_error(file))?;

    let service_dir = store.service_dir(service);
    std::fs::create_dir_all(&service_dir).map_err(io_error(&service_dir))?;
    let _lock = ImportLock::take(&service_dir, service)?;
    let current = read_current(&service_dir)?;
    let live = match &current {
        Some(name) => Some(read_info(service, &service_dir, name, true)?),
        None => None,
    };
    remove_unfinished(&service_dir, current.as_deref());

    // Without --key or --schema, what the live data has: a re-import of
    // the same shape needs neither.
    let key = match (&options.key, &live) {
        (Some(key), _) => key.clone(),
        (None, Some(live)) => live.schema.key.clone(),
        (None, None) => return Err(DatasetError::KeyNeeded(service.to_owned())),
    };
    let kept_schema;
    let schema = match (&options.schema, &live) {
        (Some(schema), _) => Some(schema),
        (None, Some(live)) if !options.replace_schema => match &live.schema.json_schema {
            Some(text) => {
                kept_schema = Schema::from_json(text)?;
                Some(&kept_schema)
            }
            None => None,
        },
        (None, _) => None,
    };
    if let Some(schema) = schema
        && schema.property(&key).is_none()
        && !schema.allows_additional()
    {
        return Err(SchemaError::Invalid {
            at: format!("key field {key:?}"),
            why: "it is not a property, and the schema allows no other fields".into(),
        }
        .into());
    }

    let mut number = generation_names(&service_dir)
        .first()
        .and_then(|n| super::generation_number(n))
        .unwrap_or(0)
        + 1;
    let generation = loop {
        let name = format!("gen-{number}");
        match std::fs::create_dir(service_dir.join(&name)) {
            Ok(()) => break name,
            // A directory a failed cleanup left behind.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => number += 1,
            Err(e) => return Err(io_error(&service_dir.join(&name))(e)),
        }
    };
    let gen_dir = service_dir.join(&generation);
    let mut partial = Partial(Some(gen_dir.clone()));

    let rules = Rules {
        key_field: &key,
        schema,
        max_record_bytes: store.max_record_bytes,
        text: read_as,
    };
    let mut loader = Loader::new(&gen_dir, file, rules)?;
    let mut reported = 0;
    let mut tick = |bytes: u64| {
        if bytes >= reported + PROGRESS_STEP {
            reported = bytes;
            progress(bytes, total);
        }
    };
    progress(0, total);
    read(
        format,
        file,
        rules,
        &mut |line, row| {
            loader.row(line, row)?;
            Ok(ControlFlow::Continue(()))
        },
        &mut tick,
    )?;
    progress(total, total);
    let (records, meta) = loader.finish(format, progress)?;

    let mut columns = meta.fields.clone();
    if let Some(c) = &mut columns {
        c.sort();
    }
    let new_schema = DatasetSchema {
        key: key.clone(),
        columns,
        json_schema: schema.map(|s| s.source().to_owned()),
    };
    let schema_digest = new_schema.digest();
    let schema_change = live
        .as_ref()
        .and_then(|live| new_schema.change_from(&live.schema));
    if let (Some(change), Some(live)) = (&schema_change, &live)
        && !options.replace_schema
        && !options.dry_run
    {
        return Err(DatasetError::SchemaChanged {
            service: service.to_owned(),
            live: live.name.clone(),
            file: file.to_owned(),
            change: Box::new(change.clone()),
        });
    }
    let report = ImportReport {
        records,
        bytes: total,
        generation,
        elapsed: started.elapsed(),
        dry_run: options.dry_run,
        schema: new_schema,
        schema_digest: schema_digest.clone(),
        schema_change,
        replaced: live,
        read_as,
        records_changed: None,
    };
    if options.dry_run {
        let mut report = report;
        if let Some(live) = &report.replaced {
            report.records_changed = compare_records(&service_dir.join(&live.name), &gen_dir)?;
        }
        // `partial` deletes what was written.
        return Ok(report);
    }

    if let Some(schema) = schema {
        let path = gen_dir.join(SCHEMA_FILE);
        File::create(&path)
            .and_then(|mut f| {
                f.write_all(schema.source().as_bytes())?;
                f.sync_all()
            })
            .map_err(io_error(&path))?;
    }
    write_manifest(
        &gen_dir,
        &Manifest {
            key: key.clone(),
            columns: meta.fields,
            schema_digest,
            records,
            source: meta.source,
            imported_at_unix: meta.imported_at_unix,
        },
    )?;
    sync_dir(&gen_dir)?;
    write_current(&service_dir, &report.generation)?;
    partial.0 = None;
    // The generation replaced stays, for `lgsp dataset rollback`.
    keep_only(
        &service_dir,
        &[Some(report.generation.as_str()), current.as_deref()],
    );

    tracing::info!(
        service,
        file = %file.display(),
        records,
        generation = %report.generation,
        "dataset imported"
    );
    Ok(report)
}

/// Deletes what an import left half-written (a crash before the switch),
/// best effort. Finished generations stay.
fn remove_unfinished(service_dir: &Path, current: Option<&str>) {
    for name in generation_names(service_dir) {
        let dir = service_dir.join(&name);
        if Some(name.as_str()) != current && !is_complete(&dir) {
            remove_generation(&dir);
        }
    }
}

/// Deletes every generation but those in `keep`, best effort.
fn keep_only(service_dir: &Path, keep: &[Option<&str>]) {
    for name in generation_names(service_dir) {
        if !keep.contains(&Some(name.as_str())) {
            remove_generation(&service_dir.join(name));
        }
    }
}

fn remove_generation(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        tracing::warn!(%error, path = %dir.display(), "cannot delete an old dataset generation");
    }
}

/// A generation being built: deleted on drop unless it went live.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(dir) = &self.0
            && let Err(error) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!(%error, path = %dir.display(), "cannot delete a partial dataset generation");
        }
    }
}

/// `import.lock` in the service directory, holding the importer's pid, so
/// that two imports never build generations at once.
pub(super) struct ImportLock(PathBuf);

impl ImportLock {
    pub(super) fn take(service_dir: &Path, service: &str) -> Result<Self, DatasetError> {
        let path = service_dir.join("import.lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(std::process::id().to_string().as_bytes())
                        .map_err(io_error(&path))?;
                    return Ok(Self(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = pid.trim().to_owned();
                    if is_stale(&pid) {
                        tracing::warn!(path = %path.display(), %pid, "removing the lock of an import that died");
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    return Err(DatasetError::ImportRunning {
                        service: service.to_owned(),
                        pid,
                        lock: path,
                    });
                }
                Err(e) => return Err(io_error(&path)(e)),
            }
        }
        Err(DatasetError::ImportRunning {
            service: service.to_owned(),
            pid: "unknown".into(),
            lock: path,
        })
    }
}

/// Whether a lock's process is certainly gone. Only /proc can tell; without
/// it the lock is taken as held.
fn is_stale(pid: &str) -> bool {
    let Ok(pid) = pid.parse::<u32>() else {
        // Written by nobody: a crash between create and write.
        return !pid.is_empty() || Path::new("/proc/self").exists();
    };
    pid != std::process::id()
        && Path::new("/proc/self").exists()
        && !Path::new("/proc").join(pid.to_string()).exists()
}

impl Drop for ImportLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Counts the bytes read through it, for progress (before decoding).
struct Counting<'c, R> {
    inner: R,
    bytes: &'c Cell<u64>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.set(self.bytes.get() + n as u64);
        Ok(n)
    }
}

/// Follows the CSV reader's quoting byte by byte (csv_core's rules with
/// the default dialect), to tell where a quote that is never closed opened:
/// the reader itself ends such a field at the end of the file without a
/// word, so the field silently swallows every line after the quote.
struct QuoteWatch<R> {
    inner: R,
    state: Quoting,
    /// The line being read, from 1.
    line: u64,
    /// Bytes seen so far.
    offset: u64,
    /// The line and byte offset of the last quote that opened a field.
    opened: (u64, u64),
    /// Whether the input has ended.
    eof: bool,
    /// The field separator the CSV reader uses (`,`, `;` or a tab).
    delimiter: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: it closes the field, or doubles.
    QuoteInQuoted,
}

impl<R> QuoteWatch<R> {
    fn new(inner: R, delimiter: u8) -> Self {
        Self {
            inner,
            state: Quoting::FieldStart,
            line: 1,
            offset: 0,
            opened: (0, 0),
            eof: false,
            delimiter,
        }
    }

    fn see(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let ends_field = b == self.delimiter || matches!(b, b'\n' | b'\r');
            self.state = match (self.state, b) {
                (Quoting::FieldStart, b'"') => {
                    self.opened = (self.line, self.offset);
                    Quoting::Quoted
                }
                (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
                (Quoting::Quoted, _) => Quoting::Quoted,
                (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
                (_, _) if ends_field => Quoting::FieldStart,
                (_, _) => Quoting::Unquoted,
            };
            self.offset += 1;
            if b == b'\n' {
                self.line += 1;
            }
        }
    }

    /// Why the record that ends at byte `end` cannot be taken, when a
    /// quote in it opened and the file ended before it closed.
    fn unclosed(&self, end: u64) -> Option<String> {
        let (line, offset) = self.opened;
        (self.eof && self.state == Quoting::Quoted && end > offset).then(|| {
            format!(
                "the quote opened on line {line} is never closed, so the rest of the file \
                 would be read as one value; close it, and double any quote inside a quoted \
                 value (\"\")"
            )
        })
    }
}

impl<R: Read> Read for QuoteWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.see(&buf[..n]);
        Ok(n)
    }
}

/// What every row must satisfy.
#[derive(Clone, Copy)]
struct Rules<'a> {
    key_field: &'a str,
    schema: Option<&'a Schema>,
    /// The largest record accepted, as JSON text in bytes.
    max_record_bytes: usize,
    /// The file's encoding and separator.
    text: TextFormat,
}

/// One row as read: its fields in the order to store them, or why it could
/// not be read at all.
type Row = Result<Vec<(String, Value)>, String>;

/// Takes each row with its line; `Break` stops reading.
type Sink<'s> = dyn FnMut(u64, Row) -> Result<ControlFlow<()>, DatasetError> + 's;

/// The key of a row, as text.
fn key_of(fields: &[(String, Value)], key_field: &str) -> Result<String, String> {
    match fields.iter().find(|(n, _)| n == key_field) {
        None | Some((_, Value::Null)) => Err(format!("missing key field {key_field:?}")),
        Some((_, Value::String(s))) if s.is_empty() => {
            Err(format!("key field {key_field:?} is empty"))
        }
        Some((_, Value::String(s))) => Ok(s.clone()),
        Some((_, Value::Number(n))) => Ok(n.to_string()),
        Some((_, other)) => Err(format!(
            "key field {key_field:?} is {other}; a key must be a string or a number"
        )),
    }
}

/// Checks rows one at a time and writes them to the new generation.
///
/// A duplicate shows when sled's insert returns an earlier value, so every
/// row with a key is inserted, even after the first bad row (the generation
/// is then discarded anyway). The line of a duplicate's first occurrence is
/// found by a second read of the file, only when there are duplicates, so
/// that no key-to-line index has to be kept for the good case.
struct Loader<'a> {
    /// The file being imported.
    source: PathBuf,
    gen_dir: PathBuf,
    db: sled::Db,
    /// Key → where the record's text is in `data` (until `finish` moves
    /// the records, in key order, to the data file).
    records: sled::Tree,
    /// The records' text, appended in the order of the imported file.
    data: std::io::BufWriter<File>,
    data_len: u64,
    rules: Rules<'a>,
    fields: Option<Vec<String>>,
    count: u64,
    bad: Vec<BadRow>,
    total_bad: usize,
    /// Listed bad rows that repeat a key: (index in `bad`, key).
    duplicates: Vec<(usize, String)>,
}

impl<'a> Loader<'a> {
    fn new(gen_dir: &Path, file: &Path, rules: Rules<'a>) -> Result<Self, DatasetError> {
        let db = sled::Config::new()
            .path(gen_dir)
            .cache_capacity(IMPORT_CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(store_error(gen_dir))?;
        let records = db.open_tree(RECORDS_TREE).map_err(store_error(gen_dir))?;
        let data_path = gen_dir.join(UNSORTED_FILE);
        let data = File::create(&data_path).map_err(io_error(&data_path))?;
        Ok(Self {
            source: file.to_owned(),
            gen_dir: gen_dir.to_owned(),
            db,
            records,
            data: std::io::BufWriter::with_capacity(1 << 20, data),
            data_len: 0,
            rules,
            fields: Some(
                rules
                    .schema
                    .map(|s| s.properties().iter().map(|p| p.name.clone()).collect())
                    .unwrap_or_default(),
            ),
            count: 0,
            bad: Vec::new(),
            total_bad: 0,
            duplicates: Vec::new(),
        })
    }

    fn reject(&mut self, line: u64, why: String) {
        self.total_bad += 1;
        if self.bad.len() < MAX_BAD_ROWS {
            self.bad.push(BadRow { line, why });
        }
    }

    fn row(&mut self, line: u64, row: Row) -> Result<(), DatasetError> {
        let fields = match row {
            Ok(f) => f,
            Err(why) => {
                self.reject(line, why);
                return Ok(());
            }
        };
        let mut problems = Vec::new();
        let key = key_of(&fields, self.rules.key_field)
            .map_err(|why| problems.push(why))
            .ok();
        if let Some(schema) = self.rules.schema
            && let Err(why) = schema.validate_fields(fields.iter().map(|(n, v)| (n.as_str(), v)))
        {
            problems.push(why);
        }
        let mut duplicate = None;
        if let Some(key) = key {
            // Once a row is bad the generation is discarded: the keys are
            // still inserted, to find duplicates, but no text is written.
            let text = problems
                .is_empty()
                .then(|| object_text(fields.iter().map(|(n, v)| (n.as_str(), v))));
            // A record no node could send is refused here, not at the
            // first call for it.
            let max = self.rules.max_record_bytes;
            if let Some(text) = &text
                && text.len() > max
            {
                problems.push(format!(
                    "the record is {} bytes; a node sends at most {max} bytes of one record (--max-record-bytes, with the node's max_message_bytes)",
                    text.len()
                ));
            }
            let location =
                if let Some(text) = text.filter(|_| problems.is_empty() && self.total_bad == 0) {
                    let location = Location {
                        offset: self.data_len,
                        len: text.len() as u64,
                    };
                    // The path is only made for the error, not for every row.
                    let gen_dir = &self.gen_dir;
                    self.data
                        .write_all(text.as_bytes())
                        .map_err(|e| io_error(&gen_dir.join(UNSORTED_FILE))(e))?;
                    self.data_len += location.len;
                    location
                } else {
                    Location::default()
                };
            let earlier = self
                .records
                .insert(key.as_bytes(), &location.encode())
                .map_err(store_error(&self.gen_dir))?;
            if earlier.is_some() {
                // Last, so that the first line can be appended to the text.
                problems.push(format!("duplicate key {key:?}"));
                duplicate = Some(key);
            }
        }
        if !problems.is_empty() {
            if let Some(key) = duplicate.filter(|_| self.bad.len() < MAX_BAD_ROWS) {
                self.duplicates.push((self.bad.len(), key));
            }
            self.reject(line, problems.join("; "));
            return Ok(());
        }
        self.note_fields(&fields);
        self.count += 1;
        Ok(())
    }

    fn note_fields(&mut self, fields: &[(String, Value)]) {
        let Some(known) = &mut self.fields else {
            return;
        };
        for (name, _) in fields {
            if !known.contains(name) {
                known.push(name.clone());
            }
        }
        if known.len() > MAX_FIELD_NAMES {
            self.fields = None;
        }
    }

    /// The import's failure: the bad rows, each duplicate naming the line
    /// its key first appeared on.
    fn into_error(mut self, format: Format) -> Result<DatasetError, DatasetError> {
        if !self.duplicates.is_empty() {
            let last = self.duplicates.iter().map(|&(i, _)| self.bad[i].line).max();
            let mut first: HashMap<&str, u64> = HashMap::new();
            let wanted: Vec<&str> = self.duplicates.iter().map(|(_, k)| k.as_str()).collect();
            read(
                format,
                &self.source,
                self.rules,
                &mut |line, row| {
                    if Some(line) >= last {
                        return Ok(ControlFlow::Break(()));
                    }
                    if let Some(key) = row.ok().and_then(|f| key_of(&f, self.rules.key_field).ok())
                        && let Some(k) = wanted.iter().find(|k| **k == key)
                    {
                        first.entry(k).or_insert(line);
                    }
                    Ok(ControlFlow::Continue(()))
                },
                &mut |_| {},
            )?;
            for (i, key) in &self.duplicates {
                if let Some(line) = first.get(key.as_str()) {
                    self.bad[*i]
                        .why
                        .push_str(&format!(", first on line {line}"));
                }
            }
        }
        Ok(DatasetError::BadRows {
            file: self.source,
            rows: self.bad,
            total_bad: self.total_bad,
        })
    }

    /// Fails with the bad rows if there were any; otherwise records the
    /// metadata and makes the generation durable. Returns the record count
    /// and the metadata.
    fn finish(
        self,
        format: Format,
        progress: &dyn Fn(u64, u64),
    ) -> Result<(u64, Meta), DatasetError> {
        if self.total_bad > 0 {
            return Err(self.into_error(format)?);
        }
        let unsorted_path = self.gen_dir.join(UNSORTED_FILE);
        self.data
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_error(&unsorted_path))?;
        write_in_key_order(&self.records, &self.gen_dir, self.data_len, progress)?;
        std::fs::remove_file(&unsorted_path).map_err(io_error(&unsorted_path))?;
        let meta = Meta {
            data_file: true,
            key_field: self.rules.key_field.to_owned(),
            fields: self.fields.clone(),
            records: self.count,
            source: self
                .source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            imported_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let text = serde_json::to_vec(&meta).expect("metadata serializes");
        self.db
            .open_tree(META_TREE)
            .and_then(|t| t.insert("meta", text))
            .and_then(|_| self.db.flush())
            .map_err(store_error(&self.gen_dir))?;
        Ok((self.count, meta))
    }
}

/// Copies every record, in key order, from the unsorted file to the data
/// file (synced), pointing each key at its new place: a query then reads
/// the data file front to back instead of walking sled.
///
/// `progress` is called with (bytes written, bytes to write), starting
/// again from 0 after the check's (bytes read, file size).
fn write_in_key_order(
    records: &sled::Tree,
    gen_dir: &Path,
    total: u64,
    progress: &dyn Fn(u64, u64),
) -> Result<(), DatasetError> {
    use std::os::unix::fs::FileExt;
    let unsorted_path = gen_dir.join(UNSORTED_FILE);
    let unsorted = File::open(&unsorted_path).map_err(io_error(&unsorted_path))?;
    let data_path = gen_dir.join(DATA_FILE);
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        File::create(&data_path).map_err(io_error(&data_path))?,
    );
    let damaged = |key: &[u8]| DatasetError::Corrupt {
        path: gen_dir.to_owned(),
        why: format!(
            "record {:?}: its location in {UNSORTED_FILE} is damaged",
            String::from_utf8_lossy(key)
        ),
    };
    let mut offset = 0;
    let mut written = 0;
    let mut after: Option<sled::IVec> = None;
    // One buffer for every record's text.
    let mut text = Vec::new();
    progress(0, total);
    loop {
        // A chunk at a time, so the moved locations are written in batches
        // while no iterator is open on the tree.
        let from = after
            .as_ref()
            .map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        let mut moved = sled::Batch::default();
        let mut count = 0;
        for item in records
            .range::<Vec<u8>, _>((from, Bound::Unbounded))
            .take(SORT_CHUNK)
        {
            let (key, value) = item.map_err(store_error(gen_dir))?;
            let at = Location::decode(&value).ok_or_else(|| damaged(&key))?;
            text.resize(at.len as usize, 0);
            unsorted
                .read_exact_at(&mut text, at.offset)
                .map_err(io_error(&unsorted_path))?;
            let size = write_entry(&mut out, &key, &text).map_err(io_error(&data_path))?;
            moved.insert(
                &key,
                &Location {
                    offset,
                    len: at.len,
                }
                .encode(),
            );
            offset += size;
            written += at.len;
            count += 1;
            after = Some(key);
        }
        records.apply_batch(moved).map_err(store_error(gen_dir))?;
        progress(written, total);
        if count < SORT_CHUNK {
            break;
        }
    }
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_error(&data_path))
}

/// Reads `input` as an import of a file named `file` would, checking every
/// row (key, schema, size) but storing nothing and not looking for duplicate
/// keys. Returns the number of good rows, or every bad one.
pub(super) fn check(
    file: &Path,
    input: impl Read,
    key_field: &str,
    schema: Option<&Schema>,
    max_record_bytes: usize,
) -> Result<u64, DatasetError> {
    let format = Format::of(file)?;
    let rules = Rules {
        key_field,
        schema,
        max_record_bytes,
        text: crate::text::TextFormat {
            encoding: crate::text::TextEncoding::Utf8,
            delimiter: b',',
        },
    };
    let read = Cell::new(0);
    let reader = Counting {
        inner: input,
        bytes: &read,
    };
    let mut good = 0u64;
    let mut bad = Vec::new();
    let mut total_bad = 0;
    let mut sink = |line: u64, row: Row| {
        let problem = row.and_then(|fields| {
            let key = key_of(&fields, key_field)?;
            if let Some(schema) = schema {
                schema.validate_fields(fields.iter().map(|(n, v)| (n.as_str(), v)))?;
            }
            let text = object_text(fields.iter().map(|(n, v)| (n.as_str(), v)));
            if text.len() > max_record_bytes {
                return Err(format!(
                    "the record of key {key:?} is {} bytes; a node sends at most {max_record_bytes}",
                    text.len()
                ));
            }
            Ok(())
        });
        match problem {
            Ok(()) => good += 1,
            Err(why) => {
                total_bad += 1;
                if bad.len() < MAX_BAD_ROWS {
                    bad.push(BadRow { line, why });
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    };
    match format {
        Format::Csv => read_csv(reader, file, rules, &mut sink, &mut || {}),
        Format::JsonLines => read_json_lines(reader, file, rules, &mut sink, &mut || {}),
    }?;
    if total_bad > 0 {
        return Err(DatasetError::BadRows {
            file: file.to_owned(),
            rows: bad,
            total_bad,
        });
    }
    Ok(good)
}

/// Reads `file` row by row into `sink`, calling `tick` with the bytes read.
fn read(
    format: Format,
    file: &Path,
    rules: Rules<'_>,
    sink: &mut Sink<'_>,
    tick: &mut dyn FnMut(u64),
) -> Result<(), DatasetError> {
    let input = File::open(file).map_err(io_error(file))?;
    let bytes = Cell::new(0);
    let counted = Counting {
        inner: input,
        bytes: &bytes,
    };
    let reader: Box<dyn Read + '_> = match rules.text.encoding {
        TextEncoding::Utf8 => Box::new(counted),
        other => Box::new(Decode::new(counted, other)),
    };
    let mut tick = || tick(bytes.get());
    match format {
        Format::Csv => read_csv(reader, file, rules, sink, &mut tick),
        Format::JsonLines => read_json_lines(reader, file, rules, sink, &mut tick),
    }
}

/// The fields of a row in the order to store them: the schema's properties
/// first, then the others as they came.
fn in_schema_order(schema: Option<&Schema>, fields: Vec<(String, Value)>) -> Vec<(String, Value)> {
    let Some(schema) = schema else {
        return fields;
    };
    let mut fields: Vec<Option<(String, Value)>> = fields.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(fields.len());
    for p in schema.properties() {
        if let Some(slot) = fields
            .iter_mut()
            .find(|f| f.as_ref().is_some_and(|(n, _)| *n == p.name))
        {
            ordered.extend(slot.take());
        }
    }
    ordered.extend(fields.into_iter().flatten());
    ordered
}

fn read_csv(
    reader: impl Read,
    file: &Path,
    rules: Rules<'_>,
    sink: &mut Sink<'_>,
    tick: &mut dyn FnMut(),
) -> Result<(), DatasetError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(rules.text.delimiter)
        .flexible(true)
        .buffer_capacity(1 << 16)
        .from_reader(QuoteWatch::new(reader, rules.text.delimiter));
    let mut record = csv::ByteRecord::new();
    let io = |e: csv::Error| DatasetError::Io {
        path: file.to_owned(),
        source: match e.into_kind() {
            csv::ErrorKind::Io(e) => e,
            other => std::io::Error::other(format!("{other:?}")),
        },
    };
    if !csv.read_byte_record(&mut record).map_err(io)? {
        let why = "the file is empty; a CSV file needs a header row naming the fields";
        return sink(1, Err(why.into())).map(drop);
    }
    if let Some(why) = csv.get_ref().unclosed(csv.position().byte()) {
        return sink(1, Err(why)).map(drop);
    }
    let header = match header_names(&record, rules) {
        Ok(h) => h,
        Err(why) => return sink(1, Err(why)).map(drop),
    };
    loop {
        let (line, row) = match csv.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => (
                record.position().map_or(0, |p| p.line()),
                match csv.get_ref().unclosed(csv.position().byte()) {
                    Some(why) => Err(why),
                    None => csv_row(&header, &record, rules),
                },
            ),
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => return Err(io(e)),
            Err(e) => (
                e.position().map_or(0, |p| p.line()),
                Err(format!("malformed CSV: {e}")),
            ),
        };
        if sink(line, row)?.is_break() {
            return Ok(());
        }
        tick();
    }
}

/// The header's field names, or why they cannot be used.
fn header_names(record: &csv::ByteRecord, rules: Rules<'_>) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::with_capacity(record.len());
    let mut problems = Vec::new();
    for (i, raw) in record.iter().enumerate() {
        // Spreadsheets save UTF-8 with a byte order mark.
        let raw = if i == 0 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        match std::str::from_utf8(raw).map(text::nfc) {
            Ok(name) if name.trim().is_empty() => {
                problems.push(format!("column {} has no name", i + 1));
            }
            Ok(name) if names.contains(&name) => {
                problems.push(format!("column {name:?} appears twice"));
            }
            Ok(name) => names.push(name),
            Err(_) => problems.push(format!(
                "column {} is not valid UTF-8; {NOT_UTF8_HINT}",
                i + 1
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    if !names.iter().any(|n| n == rules.key_field) {
        let hint = match (names.as_slice(), rules.text.delimiter) {
            ([only], b',') if only.contains(';') => {
                " (the file seems to be separated by ';': give --delimiter ';')"
            }
            _ => "",
        };
        problems.push(format!(
            "the key field {:?} is not a column; the columns are: {} (read as {}){hint}",
            rules.key_field,
            names.join(", "),
            rules.text,
        ));
    }
    if let Some(schema) = rules.schema {
        for p in schema.properties() {
            if schema.is_required(&p.name) && !names.contains(&p.name) {
                problems.push(format!("required field {:?} is not a column", p.name));
            }
        }
        if !schema.allows_additional() {
            for name in &names {
                if schema.property(name).is_none() {
                    problems.push(format!(
                        "column {name:?} is not in the schema, which allows no other fields"
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(names)
    } else {
        Err(problems.join("; "))
    }
}

/// Said of text that is not UTF-8 where UTF-8 was expected.
const NOT_UTF8_HINT: &str = "save the file as UTF-8, or give its encoding \
     (--encoding windows-1258 for Excel's CSV in a Vietnamese locale)";

fn csv_row(header: &[String], record: &csv::ByteRecord, rules: Rules<'_>) -> Row {
    let schema = rules.schema;
    if record.len() != header.len() {
        return Err(format!(
            "{} fields where the header has {} (a stray {:?} or an unclosed quote?)",
            record.len(),
            header.len(),
            rules.text.delimiter as char
        ));
    }
    let mut fields = Vec::with_capacity(header.len());
    let mut problems = Vec::new();
    for (name, raw) in header.iter().zip(record.iter()) {
        let Ok(text) = std::str::from_utf8(raw).map(text::nfc) else {
            problems.push(format!(
                "field {name:?} is not valid UTF-8; {NOT_UTF8_HINT}"
            ));
            continue;
        };
        let text = text.as_str();
        match schema.map(|s| s.convert_csv_value(name, text)) {
            None => fields.push((name.clone(), Value::String(text.to_owned()))),
            Some(Ok(Some(value))) => fields.push((name.clone(), value)),
            Some(Ok(None)) => {}
            // Kept as text, so the row's key is still checked; the schema
            // check names the field and the type it should have.
            Some(Err(_)) => fields.push((name.clone(), Value::String(text.to_owned()))),
        }
    }
    if problems.is_empty() {
        Ok(fields)
    } else {
        Err(problems.join("; "))
    }
}

fn read_json_lines(
    reader: impl Read,
    file: &Path,
    rules: Rules<'_>,
    sink: &mut Sink<'_>,
    tick: &mut dyn FnMut(),
) -> Result<(), DatasetError> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_error(file))? == 0 {
            return Ok(());
        }
        line += 1;
        let mut bytes = &buf[..];
        if line == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let row = match std::str::from_utf8(bytes) {
            Err(_) => Err(format!("not valid UTF-8; {NOT_UTF8_HINT}")),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => serde_json::from_str::<Ordered<Value>>(text)
                .map(|o| {
                    let fields = o.0.into_iter();
                    let fields = fields.map(|(k, v)| (text::nfc(&k), text::nfc_value(v)));
                    in_schema_order(rules.schema, fields.collect())
                })
                .map_err(|e| json_problem(&e)),
        };
        if sink(line, row)?.is_break() {
            return Ok(());
        }
        tick();
    }
}

/// serde_json's message without its "at line 1 column N", which would be
/// misread as the file's line.
fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    format!("not a JSON object (column {}): {message}", e.column())
}

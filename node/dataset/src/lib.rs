//! Datasets a node serves itself (a data-sharing service, dịch vụ chia sẻ dữ
//! liệu, under Decree 47): records imported from CSV or JSON Lines into sled,
//! found by key, filter and page.
//!
//! On disk, under the store's root (the node's `<data-dir>/datasets`):
//!
//! ```text
//! <service>/CURRENT        the live generation's name, e.g. "gen-3"
//! <service>/gen-3/         a sled database: tree "records" (key → where the
//!                          record is in records.data) and tree "meta";
//!                          records.data, every record in key order: its key,
//!                          then the record as a JSON object (fields in file
//!                          or schema order);
//!                          schema.json when a schema was given;
//!                          generation.json: key, columns, schema digest,
//!                          rows, source file, import time (readable while
//!                          a node holds the sled database)
//! <service>/gen-2/         the generation gen-3 replaced, kept for rollback
//! <service>/import.lock    present while an import or rollback runs (holds
//!                          its pid)
//! ```
//!
//! An import writes a whole new generation and only then replaces `CURRENT`
//! (write, fsync, rename, fsync the directory), so readers see the old data
//! or the new, never a mix. A failed import deletes what it wrote. A
//! re-import whose key, columns or JSON Schema differ from the live data's
//! is refused unless asked for ([`ImportOptions::replace_schema`]). The
//! generation replaced is kept for [`DatasetStore::rollback`]; older ones
//! are deleted after the switch; on Unix a reader that still holds one open
//! keeps reading it.
//!
//! Text is stored in Unicode NFC, whatever the file had (NFD from some
//! keyboards, Windows-1258's combining tone marks), and keys and filters are
//! normalised the same way before they are compared, so the same words
//! always match. CSV files may be UTF-8, UTF-16 or Windows-1258, separated
//! by `,`, `;` or tabs: guessed from the file's start, or given.
//!
//! The records' text lives outside sled so that reading a whole dataset
//! keeps memory flat: sled keeps much of what a scan reads in memory, far
//! beyond its cache capacity, while a plain file is read through the
//! kernel's page cache, which the kernel reclaims. sled holds the keys
//! (order, lookup, duplicates) and their locations, a few bytes each.
//! Generations imported before records.data existed keep the text in sled
//! and are still read.
//!
//! sled lets one process at a time open a database: while a node serves a
//! dataset, `lgsp dataset show` in another process reports it busy.

mod generation;
mod import;
mod schema;
#[cfg(test)]
mod tests;
mod text;

pub use generation::{DatasetSchema, GenerationInfo, RecordChanges, Rollback, SchemaChange};
pub use schema::{FieldType, Property, Schema, SchemaError};
pub use text::{TextEncoding, TextFormat};

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The most bad rows an import error reports; the rest are only counted.
pub const MAX_BAD_ROWS: usize = 100;
/// Records a query page holds when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest query page.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The most records one query call reads; a selective filter over a large
/// dataset returns a short (even empty) page with a resume token rather than
/// reading everything in one call.
pub const MAX_SCAN_PER_PAGE: usize = 100_000;
/// How long [`DatasetCache`] trusts what it read in `CURRENT`.
pub const CACHE_RECHECK: Duration = Duration::from_millis(200);

const CURRENT: &str = "CURRENT";
const SCHEMA_FILE: &str = "schema.json";
const RECORDS_TREE: &str = "records";
const DATA_FILE: &str = "records.data";
const META_TREE: &str = "meta";
/// sled's page cache per open dataset; its default (1 GiB) is far too much
/// for a node serving many datasets.
const READ_CACHE_BYTES: u64 = 32 << 20;

/// Records a query reads ahead from the data file.
const SCAN_BUFFER_BYTES: usize = 256 << 10;
/// An entry of the data file: key length and text length (u32, big-endian)
/// around the key, then the text.
const ENTRY_HEADER_BYTES: u64 = 8;

type Entries<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, String), DatasetError>> + 'a>;

/// Appends one entry (key and text) to the data file; returns its size.
fn write_entry(out: &mut impl Write, key: &[u8], text: &[u8]) -> std::io::Result<u64> {
    let too_long = |what| std::io::Error::other(format!("the {what} is longer than 4 GiB"));
    let key_len = u32::try_from(key.len()).map_err(|_| too_long("key"))?;
    let text_len = u32::try_from(text.len()).map_err(|_| too_long("record"))?;
    out.write_all(&key_len.to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&text_len.to_be_bytes())?;
    out.write_all(text)?;
    Ok(ENTRY_HEADER_BYTES + key.len() as u64 + text.len() as u64)
}

/// Reads the next entry: (key, text, the entry's size).
fn read_entry(input: &mut impl std::io::Read) -> std::io::Result<(Vec<u8>, Vec<u8>, u64)> {
    let mut len = [0; 4];
    input.read_exact(&mut len)?;
    let mut key = vec![0; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut key)?;
    input.read_exact(&mut len)?;
    let mut text = vec![0; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut text)?;
    let size = ENTRY_HEADER_BYTES + key.len() as u64 + text.len() as u64;
    Ok((key, text, size))
}

/// A generation's data file, open for reading, and its length (it never
/// changes once the import has written it).
struct DataFile {
    file: std::fs::File,
    len: u64,
}

/// Reads a shared file from an offset of its own (`pread`), so that many
/// queries read one open file at once.
struct ReadAt<'a> {
    file: &'a std::fs::File,
    offset: u64,
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Where a record is in the data file: sled's value for its key. `offset`
/// is where its entry starts, `len` the length of its text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Location {
    offset: u64,
    len: u64,
}

impl Location {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.offset.to_be_bytes());
        out[8..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    fn decode(value: &[u8]) -> Option<Self> {
        let value: &[u8; 16] = value.try_into().ok()?;
        let (offset, len) = value.split_at(8);
        Some(Self {
            offset: u64::from_be_bytes(offset.try_into().ok()?),
            len: u64::from_be_bytes(len.try_into().ok()?),
        })
    }
}

/// Why a dataset operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A service name that cannot be a directory or a SPIFFE-style name
    /// (1 to 63 characters of a-z, A-Z, 0-9, '-', '_' and '.').
    #[error("bad service name {name:?}: {why}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// A service with no live generation: nothing was imported for it.
    #[error(
        "no dataset for service {service:?} in {root}; import one with \
         `lgsp dataset import --service {service} --file FILE --key FIELD`"
    )]
    NotFound {
        /// The service asked for.
        service: String,
        /// The store's root directory it was looked for in.
        root: PathBuf,
    },
    /// An import file whose extension is not `.csv`, `.jsonl` or `.ndjson`.
    #[error(
        "{file}: cannot tell the format from the extension {ext:?}; \
         use .csv, .jsonl or .ndjson"
    )]
    UnsupportedFormat {
        /// The file given to import.
        file: PathBuf,
        /// Its extension, as found (empty when it has none).
        ext: String,
    },
    /// Rows that failed; nothing was imported.
    #[error("{}", bad_rows_text(file, rows, *total_bad))]
    BadRows {
        /// The file imported.
        file: PathBuf,
        /// The first [`MAX_BAD_ROWS`] bad rows, in file order.
        rows: Vec<BadRow>,
        /// All bad rows, including those not listed.
        total_bad: usize,
    },
    /// The schema given to an import, or the one stored with a generation,
    /// was refused.
    #[error("schema: {0}")]
    Schema(#[from] SchemaError),
    /// A file or directory of the store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// sled failed on a generation's database.
    #[error("dataset database {path}: {source}")]
    Store {
        /// The generation's directory.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// The generation is open in another process (usually the running node):
    /// sled lets one process at a time open a database.
    #[error(
        "dataset {service:?} ({generation}) is open in another process, probably a \
         running node; sled allows one process at a time"
    )]
    Busy {
        /// The service whose dataset is busy.
        service: String,
        /// Its live generation, e.g. "gen-3".
        generation: String,
    },
    /// A first import without a key field: nothing to take it from.
    #[error(
        "{0:?} has no data yet, so its key field cannot be taken from it; \
         give --key FIELD"
    )]
    KeyNeeded(String),
    /// A re-import whose key, columns or JSON Schema differ from the live
    /// data's, without [`ImportOptions::replace_schema`].
    #[error(
        "{file}: its schema differs from what {service:?} serves ({live}): {change}; \
         nothing was imported. If the change is meant, import again with \
         --replace-schema ({live} is then kept for `lgsp dataset rollback`); \
         --dry-run shows what would change"
    )]
    SchemaChanged {
        /// The service imported into.
        service: String,
        /// Its live generation, still served.
        live: String,
        /// The file imported.
        file: PathBuf,
        /// What differs.
        change: Box<SchemaChange>,
    },
    /// A rollback with no kept generation to go to.
    #[error("{}", nothing_to_roll_back_text(service, live, asked.as_deref(), kept))]
    NothingToRollBack {
        /// The service.
        service: String,
        /// Its live generation, still served.
        live: String,
        /// The generation asked for, if one was named.
        asked: Option<String>,
        /// The other generations kept.
        kept: Vec<String>,
    },
    /// Another import of the same service holds `import.lock`.
    #[error(
        "another import of {service:?} is running (process {pid}); wait for it, or \
         delete {lock} if that process is gone"
    )]
    ImportRunning {
        /// The service being imported.
        service: String,
        /// The process id written in the lock file, as text.
        pid: String,
        /// The lock file: delete it by hand only if that process is gone.
        lock: PathBuf,
    },
    /// A query filter or projection names fields the dataset does not have.
    #[error("unknown field(s) {unknown} (the dataset has: {known})", unknown = unknown.join(", "), known = known.join(", "))]
    UnknownFields {
        /// The fields asked for that no record has.
        unknown: Vec<String>,
        /// Every field the dataset has.
        known: Vec<String>,
    },
    /// A resume token that no page of this dataset returned; holds it.
    #[error("bad resume token {0:?}: pass back exactly the token a previous page returned")]
    BadResumeToken(String),
    /// A generation, or its `CURRENT` pointer, that is not what an import
    /// leaves: unreadable metadata, a missing database, a truncated data file.
    #[error("dataset {path} is damaged: {why}")]
    Corrupt {
        /// The damaged file or generation directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

fn nothing_to_roll_back_text(
    service: &str,
    live: &str,
    asked: Option<&str>,
    kept: &[String],
) -> String {
    let what = match asked {
        Some(name) => format!("{service:?} keeps no finished generation {name:?}"),
        None => format!("{service:?} keeps no generation older than {live}, the live one"),
    };
    let kept = if kept.is_empty() {
        "no other generation is kept (one is kept after each import)".to_owned()
    } else {
        format!("kept besides {live}: {}", kept.join(", "))
    };
    format!("{what}; {kept}")
}

fn bad_rows_text(file: &Path, rows: &[BadRow], total_bad: usize) -> String {
    let noun = if total_bad == 1 { "row" } else { "rows" };
    let mut text = format!(
        "{total_bad} bad {noun} in {}; nothing was imported",
        file.display()
    );
    for row in rows {
        text.push_str(&format!("\n  {row}"));
    }
    if total_bad > rows.len() {
        text.push_str(&format!("\n  ... and {} more", total_bad - rows.len()));
    }
    text
}

/// One row an import refused, by its line in the file (1-based; a CSV
/// file's header is line 1, and a record spanning lines is named by its
/// first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// The row's line in the file, from 1.
    pub line: u64,
    /// Why it was refused: a row that does not parse, a missing, empty or
    /// duplicate key, or the schema's violations; several joined by "; ".
    pub why: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// What a successful import did, or, for a dry run, would do.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// Records imported, one per row: what the dataset now serves.
    pub records: u64,
    /// Size of the imported file, in bytes.
    pub bytes: u64,
    /// The generation now live, e.g. "gen-4" (for a dry run, the name it
    /// would have had).
    pub generation: String,
    /// How long the import took, reading, checking and writing.
    pub elapsed: Duration,
    /// Whether this was a dry run: everything checked, nothing changed.
    pub dry_run: bool,
    /// The new data's schema.
    pub schema: DatasetSchema,
    /// Its digest ([`DatasetSchema::digest`]).
    pub schema_digest: String,
    /// How the schema differs from the data it replaces, if it does (only
    /// ever `Some` with [`ImportOptions::replace_schema`] or a dry run).
    pub schema_change: Option<SchemaChange>,
    /// The generation that was live before, now kept for rollback.
    pub replaced: Option<GenerationInfo>,
    /// How the file was read: its encoding and separator, given or guessed.
    pub read_as: TextFormat,
    /// For a dry run over live data: which records would be added, removed
    /// and changed (`None` otherwise, or when the live generation predates
    /// data files).
    pub records_changed: Option<RecordChanges>,
}

/// How to import: see [`DatasetStore::import_with`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The field that identifies a record; `None` takes the live data's.
    pub key: Option<String>,
    /// The JSON Schema every row must satisfy. `None` keeps the live
    /// data's, if it has one (none at all with `replace_schema`).
    pub schema: Option<Schema>,
    /// Accept a key, column or JSON Schema different from the live data's.
    pub replace_schema: bool,
    /// Check everything and report, but change nothing.
    pub dry_run: bool,
    /// The file's encoding; `None` guesses it from its start (a byte order
    /// mark, UTF-16's NUL bytes, valid UTF-8, else Windows-1258).
    pub encoding: Option<TextEncoding>,
    /// A CSV file's separator; `None` takes the most frequent of `,`, `;`
    /// and tab in its header.
    pub delimiter: Option<u8>,
}

/// The datasets under one directory, one subdirectory per service.
#[derive(Clone, Debug)]
pub struct DatasetStore {
    root: PathBuf,
    max_record_bytes: usize,
}

/// The largest record an import accepts unless told otherwise, as JSON text
/// in bytes: a node's default message limit (4 MiB) less room for the
/// envelope around it. A larger record could be imported but never served.
pub const DEFAULT_MAX_RECORD_BYTES: usize = (4 << 20) - (64 << 10);

impl DatasetStore {
    /// A store rooted at `root` (created by the first import), importing
    /// records of at most [`DEFAULT_MAX_RECORD_BYTES`].
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// The same store, importing records of at most `bytes` (for a node
    /// whose `max_message_bytes` is larger than the default).
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// The store's directory: one subdirectory per service.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports `file` as the new data of `service`, replacing what it served.
    ///
    /// The format comes from the extension: `.csv` (a header row names the
    /// fields; cells are strings, converted to the schema's types when a
    /// schema is given) or `.jsonl`/`.ndjson` (one JSON object per line;
    /// blank lines are skipped). `key` names the field whose value, as text,
    /// finds a record; it must be present, non-empty and unique.
    ///
    /// Every row is checked before anything becomes visible. Fails with
    /// [`DatasetError::BadRows`] listing the first [`MAX_BAD_ROWS`] bad rows by
    /// line, and the previous data stays served. `progress` is called with
    /// (bytes read, file size) as the file is read, then again from 0 with
    /// (bytes written, bytes to write) while the records are written in key
    /// order. Rows are streamed, never
    /// held: memory follows the number of keys (sled keeps a couple of
    /// hundred bytes per key it has seen; 230 MB for a million), not the
    /// size of the records. After the check the records are written again in
    /// key order, for queries to read front to back.
    ///
    /// A re-import must have the live data's key, columns and JSON Schema
    /// ([`DatasetSchema`]); otherwise it fails with
    /// [`DatasetError::SchemaChanged`] and the live data stays: see
    /// [`Self::import_with`] to replace the schema, or to check without
    /// importing. The generation replaced is kept for [`Self::rollback`].
    pub fn import(
        &self,
        service: &str,
        file: &Path,
        key: &str,
        schema: Option<&Schema>,
        progress: &dyn Fn(u64, u64),
    ) -> Result<ImportReport, DatasetError> {
        let options = ImportOptions {
            key: Some(key.to_owned()),
            schema: schema.cloned(),
            ..ImportOptions::default()
        };
        import::run(self, service, file, &options, progress)
    }

    /// [`Self::import`] with options: the key and JSON Schema taken from
    /// the live data when not given, a schema change accepted, a dry run.
    /// Fails with [`DatasetError::KeyNeeded`] on a first import without a
    /// key.
    pub fn import_with(
        &self,
        service: &str,
        file: &Path,
        options: &ImportOptions,
        progress: &dyn Fn(u64, u64),
    ) -> Result<ImportReport, DatasetError> {
        import::run(self, service, file, options, progress)
    }

    /// Reads `input` as [`Self::import`] would read a file named `file`
    /// (its extension says the format) and checks every row, storing
    /// nothing: a dry run, which does not look for duplicate keys. Returns
    /// the number of good rows; fails with [`DatasetError::BadRows`] naming
    /// the bad ones, or [`DatasetError::UnsupportedFormat`].
    pub fn check(
        &self,
        file: &Path,
        input: impl std::io::Read,
        key: &str,
        schema: Option<&Schema>,
    ) -> Result<u64, DatasetError> {
        import::check(file, input, key, schema, self.max_record_bytes)
    }

    /// Opens the live generation of `service`. Fails with
    /// [`DatasetError::NotFound`] when nothing was imported, and with
    /// [`DatasetError::Busy`] when another process has it open. Within one
    /// process, opening the same generation twice shares one handle.
    pub fn open(&self, service: &str) -> Result<Dataset, DatasetError> {
        check_name(service)?;
        let generation =
            read_current(&self.service_dir(service))?.ok_or_else(|| DatasetError::NotFound {
                service: service.to_owned(),
                root: self.root.clone(),
            })?;
        Dataset::open(service, &self.service_dir(service), &generation)
    }

    /// The live generation of `service`, or `None` when it has none (or its
    /// `CURRENT` cannot be read). Cheap: one small file read.
    pub fn current_generation(&self, service: &str) -> Option<String> {
        check_name(service).ok()?;
        read_current(&self.service_dir(service)).ok().flatten()
    }

    /// The services that have a live generation, sorted.
    pub fn services(&self) -> Result<Vec<String>, DatasetError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.root)(e)),
        };
        let mut names = Vec::new();
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && entry.path().join(CURRENT).is_file()
                && check_name(name).is_ok()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn service_dir(&self, service: &str) -> PathBuf {
        self.root.join(service)
    }
}

fn check_name(service: &str) -> Result<(), DatasetError> {
    lgsp_certs::identity::validate_name(service).map_err(|e| DatasetError::BadName {
        name: service.to_owned(),
        why: match e {
            lgsp_certs::CertError::Name { why, .. } => why.to_string(),
            other => other.to_string(),
        },
    })
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_owned(),
        source,
    }
}

fn store_error(path: &Path) -> impl Fn(sled::Error) -> DatasetError + '_ {
    move |source| DatasetError::Store {
        path: path.to_owned(),
        source,
    }
}

/// `gen-<N>` → N.
fn generation_number(name: &str) -> Option<u64> {
    let n = name.strip_prefix("gen-")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

fn read_current(service_dir: &Path) -> Result<Option<String>, DatasetError> {
    let path = service_dir.join(CURRENT);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let name = text.trim();
            if generation_number(name).is_none() {
                return Err(DatasetError::Corrupt {
                    path,
                    why: format!("it names {name:?}, not a generation such as \"gen-1\""),
                });
            }
            Ok(Some(name.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Replaces `CURRENT` so that a crash leaves the old name or the new one.
fn write_current(service_dir: &Path, generation: &str) -> Result<(), DatasetError> {
    let path = service_dir.join(CURRENT);
    let tmp = service_dir.join("CURRENT.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(format!("{generation}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(service_dir)
}

fn sync_dir(dir: &Path) -> Result<(), DatasetError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// One generation of one service's data, open for reading. Cloning is cheap
/// and shares the handle.
#[derive(Clone)]
pub struct Dataset {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    generation: String,
    path: PathBuf,
    /// Keeps sled's handle open as long as any tree is used.
    _db: sled::Db,
    records: sled::Tree,
    /// The records' text; `None` for a generation that keeps it in sled.
    data: Option<DataFile>,
    key_field: String,
    /// Every field name seen, schema properties first; `None` when the
    /// records have too many distinct names to keep.
    fields: Option<Vec<String>>,
    schema: Option<Schema>,
    len: u64,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("service", &self.inner.service)
            .field("generation", &self.inner.generation)
            .field("records", &self.inner.len)
            .finish()
    }
}

/// Datasets open in this process, so that two opens of one generation share
/// sled's handle instead of failing on its file lock. Keyed by path and the
/// inode of sled's `conf`, so a generation deleted and made again by hand is
/// not mistaken for the old one.
type OpenDatasets = Mutex<HashMap<(PathBuf, u64), Weak<Inner>>>;

fn open_datasets() -> &'static OpenDatasets {
    static OPEN: OnceLock<OpenDatasets> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// What an import records about a generation, in its "meta" tree.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    /// Whether the text is in the data file (sled holds locations).
    #[serde(default)]
    data_file: bool,
    key_field: String,
    fields: Option<Vec<String>>,
    records: u64,
    source: String,
    imported_at_unix: u64,
}

impl Dataset {
    fn open(service: &str, service_dir: &Path, generation: &str) -> Result<Self, DatasetError> {
        use std::os::unix::fs::MetadataExt;
        let path = service_dir.join(generation);
        // sled would make an empty database where none is.
        let Some(conf) = std::fs::metadata(path.join("conf"))
            .ok()
            .filter(|m| m.is_file())
        else {
            return Err(DatasetError::Corrupt {
                path,
                why: format!("{CURRENT} names {generation} but it has no database"),
            });
        };
        let id = (path.clone(), conf.ino());
        let mut open = open_datasets()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(inner) = open.get(&id).and_then(Weak::upgrade) {
            return Ok(Self { inner });
        }
        open.retain(|_, weak| weak.strong_count() > 0);
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(READ_CACHE_BYTES)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    DatasetError::Busy {
                        service: service.to_owned(),
                        generation: generation.to_owned(),
                    }
                }
                _ => store_error(&path)(e),
            })?;
        let corrupt = |why: String| DatasetError::Corrupt {
            path: path.clone(),
            why,
        };
        let meta = db
            .open_tree(META_TREE)
            .and_then(|t| t.get("meta"))
            .map_err(store_error(&path))?
            .ok_or_else(|| corrupt("it has no metadata (an unfinished import?)".into()))?;
        let meta: Meta = serde_json::from_slice(&meta)
            .map_err(|e| corrupt(format!("its metadata is unreadable: {e}")))?;
        let schema = match std::fs::read_to_string(path.join(SCHEMA_FILE)) {
            Ok(text) => Some(Schema::from_json(&text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(&path.join(SCHEMA_FILE))(e)),
        };
        if !path.join(generation::MANIFEST_FILE).exists() {
            // A generation imported before manifests existed: describe it
            // now, while its database is open here, so that an import or
            // `lgsp dataset list` can read it while this process holds it.
            write_legacy_manifest(&path, &meta, schema.as_ref());
        }
        let records = db.open_tree(RECORDS_TREE).map_err(store_error(&path))?;
        let data = if meta.data_file {
            let data_path = path.join(DATA_FILE);
            let file = std::fs::File::open(&data_path).map_err(io_error(&data_path))?;
            let len = file.metadata().map_err(io_error(&data_path))?.len();
            Some(DataFile { file, len })
        } else {
            None
        };
        let inner = Arc::new(Inner {
            service: service.to_owned(),
            generation: generation.to_owned(),
            path: path.clone(),
            _db: db,
            records,
            data,
            key_field: meta.key_field,
            fields: meta.fields,
            schema,
            len: meta.records,
        });
        open.insert(id, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// This data's generation, e.g. "gen-3".
    pub fn generation(&self) -> &str {
        &self.inner.generation
    }

    /// The field whose value is each record's key.
    pub fn key_field(&self) -> &str {
        &self.inner.key_field
    }

    /// Every field name the records use (schema properties first, then the
    /// others in the order first seen), or `None` if there were too many
    /// distinct names to keep.
    pub fn fields(&self) -> Option<&[String]> {
        self.inner.fields.as_deref()
    }

    /// The schema the data was checked against at import, if one was given.
    pub fn schema(&self) -> Option<&Schema> {
        self.inner.schema.as_ref()
    }

    /// How many records there are.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Whether the dataset holds no records.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The record with `key`, as a JSON object text exactly as stored:
    /// fields in file (or schema) order, text as imported; `None` when no
    /// record has that key. Fails with [`DatasetError::Store`] or
    /// [`DatasetError::Corrupt`] when the generation cannot be read.
    pub fn get_json(&self, key: &str) -> Result<Option<String>, DatasetError> {
        let key = &text::nfc(key);
        let value = self
            .inner
            .records
            .get(key.as_bytes())
            .map_err(store_error(&self.inner.path))?;
        value.map(|v| self.text(key.as_bytes(), &v)).transpose()
    }

    /// The record with `key` as JSON object text holding only `fields`, in
    /// that order (a field the record lacks is left out), as a [`Query`]
    /// projects its records; `None` when no record has that key.
    pub fn get_fields(&self, key: &str, fields: &[String]) -> Result<Option<String>, DatasetError> {
        let Some(text) = self.get_json(key)? else {
            return Ok(None);
        };
        let q = Query {
            fields: fields.iter().map(|f| text::nfc(f)).collect(),
            ..Query::default()
        };
        self.select(key.as_bytes(), &text, &q)
    }

    /// The record with `key`, or `None` when there is none; fails as
    /// [`Self::get_json`] does.
    pub fn get(&self, key: &str) -> Result<Option<Map<String, Value>>, DatasetError> {
        let Some(text) = self.get_json(key)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| self.corrupt(key.as_bytes(), &e.to_string()))
    }

    /// One page of the records that match every filter, in key order.
    ///
    /// A filter `(field, value)` matches when the field's JSON value written
    /// as text (a string without its quotes; `42`, `true`, `null` otherwise)
    /// equals `value`. `fields` projects each record to those fields, in that
    /// order (empty: the whole record as stored). Pass the returned
    /// `resume_token` back for the next page; it is empty when there is
    /// nothing more. A page may be shorter than asked, even empty, while the
    /// token is not: see [`MAX_SCAN_PER_PAGE`]. Fails on a field the dataset
    /// does not have ([`DatasetError::UnknownFields`], when its field list is
    /// known) and on a bad token ([`DatasetError::BadResumeToken`]).
    pub fn query(&self, q: &Query) -> Result<Page, DatasetError> {
        // The records are NFC; so must be what they are compared with.
        let normalised;
        let q = if q
            .filters
            .iter()
            .flat_map(|(f, v)| [f, v])
            .chain(&q.fields)
            .all(|s| unicode_normalization::is_nfc(s))
        {
            q
        } else {
            normalised = Query {
                filters: q
                    .filters
                    .iter()
                    .map(|(f, v)| (text::nfc(f), text::nfc(v)))
                    .collect(),
                fields: q.fields.iter().map(|f| text::nfc(f)).collect(),
                ..q.clone()
            };
            &normalised
        };
        self.check_fields(q)?;
        let size = match q.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let start = if q.resume_token.is_empty() {
            Bound::Unbounded
        } else {
            let key = hex::decode(&q.resume_token)
                .map_err(|_| DatasetError::BadResumeToken(q.resume_token.clone()))?;
            Bound::Excluded(key)
        };
        let mut entries = self.entries_after(start)?;
        let mut page = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        let mut scanned = 0;
        let mut stopped_early = false;
        for item in entries.by_ref() {
            let (key, text) = item?;
            scanned += 1;
            let key_text = String::from_utf8_lossy(&key).into_owned();
            if q.filters.is_empty() && q.fields.is_empty() {
                page.push((key_text, text));
            } else if let Some(json) = self.select(&key, &text, q)? {
                page.push((key_text, json));
            }
            last = Some(key);
            if page.len() == size || scanned >= MAX_SCAN_PER_PAGE {
                stopped_early = true;
                break;
            }
        }
        let resume_token = match last {
            Some(last) if stopped_early && entries.next().is_some() => hex::encode(last),
            _ => String::new(),
        };
        Ok(Page {
            records: page,
            resume_token,
        })
    }

    /// Every record after `start`, in key order, as (key, text). From the
    /// data file, read sequentially: sled is asked only where to start.
    fn entries_after(&self, start: Bound<Vec<u8>>) -> Result<Entries<'_>, DatasetError> {
        let records = &self.inner.records;
        let Some(DataFile { file, len: end }) = &self.inner.data else {
            return Ok(Box::new(
                records
                    .range::<Vec<u8>, _>((start, Bound::Unbounded))
                    .map(|item| {
                        let (key, value) = item.map_err(store_error(&self.inner.path))?;
                        Ok((key.to_vec(), self.text(&key, &value)?))
                    }),
            ));
        };
        let end = *end;
        let data_path = self.inner.path.join(DATA_FILE);
        let offset = match start {
            Bound::Unbounded => 0,
            _ => match records
                .range::<Vec<u8>, _>((start, Bound::Unbounded))
                .next()
            {
                None => end,
                Some(item) => {
                    let (key, value) = item.map_err(store_error(&self.inner.path))?;
                    Location::decode(&value)
                        .ok_or_else(|| {
                            self.corrupt(&key, "its location in the data file is damaged")
                        })?
                        .offset
                }
            },
        };
        // A small page reads no more than the records left.
        let buffer = SCAN_BUFFER_BYTES
            .min(usize::try_from(end.saturating_sub(offset)).unwrap_or(usize::MAX));
        let reader = std::io::BufReader::with_capacity(buffer.max(1), ReadAt { file, offset });
        // The last good key, for the error that names where the file broke;
        // one buffer refilled, not a copy per record.
        let (mut at, mut reader, mut previous) = (offset, reader, Vec::<u8>::new());
        Ok(Box::new(std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let entry = read_entry(&mut reader).map_err(|e| DatasetError::Corrupt {
                path: data_path.clone(),
                why: if at == offset {
                    format!("the record at offset {at} cannot be read: {e}")
                } else {
                    format!(
                        "the record after {:?} (at offset {at}) cannot be read: {e}",
                        String::from_utf8_lossy(&previous)
                    )
                },
            });
            Some(entry.and_then(|(key, text, len)| {
                at += len;
                let text =
                    String::from_utf8(text).map_err(|_| self.corrupt(&key, "it is not UTF-8"))?;
                previous.clear();
                previous.extend_from_slice(&key);
                Ok((key, text))
            }))
        })))
    }

    /// The record's text filtered and projected, or `None` if a filter fails.
    fn select(&self, key: &[u8], text: &str, q: &Query) -> Result<Option<String>, DatasetError> {
        let schema::Ordered(fields) = serde_json::from_str::<schema::Ordered<Value>>(text)
            .map_err(|e| self.corrupt(key, &e.to_string()))?;
        let find = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        for (name, wanted) in &q.filters {
            let matches = match find(name) {
                Some(Value::String(s)) => s == wanted,
                Some(other) => serde_json::to_string(other).is_ok_and(|t| t == *wanted),
                None => false,
            };
            if !matches {
                return Ok(None);
            }
        }
        if q.fields.is_empty() {
            return Ok(Some(text.to_owned()));
        }
        let projected = q
            .fields
            .iter()
            .filter_map(|name| find(name).map(|v| (name.as_str(), v)));
        Ok(Some(object_text(projected)))
    }

    fn check_fields(&self, q: &Query) -> Result<(), DatasetError> {
        let Some(known) = &self.inner.fields else {
            return Ok(());
        };
        let mut unknown: Vec<String> = Vec::new();
        let asked = q.filters.iter().map(|(f, _)| f).chain(&q.fields);
        for name in asked {
            if !known.contains(name) && !unknown.contains(name) {
                unknown.push(name.clone());
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(DatasetError::UnknownFields {
                unknown,
                known: known.clone(),
            })
        }
    }

    /// The record's text, from the data file at the location sled holds
    /// (or from sled itself, for a generation without a data file).
    fn text(&self, key: &[u8], value: &[u8]) -> Result<String, DatasetError> {
        let bytes = match &self.inner.data {
            None => value.to_vec(),
            Some(DataFile { file, .. }) => {
                use std::os::unix::fs::FileExt;
                let at = Location::decode(value)
                    .ok_or_else(|| self.corrupt(key, "its location in the data file is damaged"))?;
                let mut bytes = vec![0; at.len as usize];
                let text_at = at.offset + ENTRY_HEADER_BYTES + key.len() as u64;
                file.read_exact_at(&mut bytes, text_at).map_err(|e| {
                    self.corrupt(
                        key,
                        &format!(
                            "{DATA_FILE} has no {} bytes at offset {text_at}: {e}",
                            at.len
                        ),
                    )
                })?;
                bytes
            }
        };
        String::from_utf8(bytes).map_err(|_| self.corrupt(key, "it is not UTF-8"))
    }

    fn corrupt(&self, key: &[u8], why: &str) -> DatasetError {
        DatasetError::Corrupt {
            path: self.inner.path.clone(),
            why: format!("record {:?}: {why}", String::from_utf8_lossy(key)),
        }
    }
}

fn write_legacy_manifest(path: &Path, meta: &Meta, schema: Option<&Schema>) {
    let mut columns = meta.fields.clone();
    if let Some(c) = &mut columns {
        c.sort();
    }
    let described = DatasetSchema {
        key: meta.key_field.clone(),
        columns,
        json_schema: schema.map(|s| s.source().to_owned()),
    };
    let manifest = generation::Manifest {
        key: meta.key_field.clone(),
        columns: meta.fields.clone(),
        schema_digest: described.digest(),
        records: meta.records,
        source: meta.source.clone(),
        imported_at_unix: meta.imported_at_unix,
    };
    if let Err(error) = generation::write_manifest(path, &manifest) {
        tracing::warn!(%error, "cannot describe an older dataset generation");
    }
}

/// Writes a JSON object with its fields in the given order, straight from
/// the (name, value) pairs, without building a map first.
fn object_text<'a>(fields: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut text = String::from("{");
    for (i, (name, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Value::from(name).to_string());
        text.push(':');
        text.push_str(&value.to_string());
    }
    text.push('}');
    text
}

/// A query over one dataset: see [`Dataset::query`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// (field, value) pairs that must all match.
    pub filters: Vec<(String, String)>,
    /// Fields to return, in this order; empty for whole records.
    pub fields: Vec<String>,
    /// Records per page: 0 means [`DEFAULT_PAGE_SIZE`]; at most [`MAX_PAGE_SIZE`].
    pub page_size: u32,
    /// Empty for the first page; then the previous page's token.
    pub resume_token: String,
}

/// One page of query results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// (key, record as JSON object text), in key order.
    pub records: Vec<(String, String)>,
    /// Pass back for the next page; empty when there is nothing more.
    pub resume_token: String,
}

/// Open datasets for a long-running node: hands out the live generation of
/// each service, noticing a new import within [`CACHE_RECHECK`].
#[derive(Debug)]
pub struct DatasetCache {
    store: DatasetStore,
    entries: Mutex<HashMap<String, (Arc<Dataset>, Instant)>>,
}

impl DatasetCache {
    /// A cache over `store`, empty until the first [`get`](Self::get).
    pub fn new(store: DatasetStore) -> Self {
        Self {
            store,
            entries: Mutex::default(),
        }
    }

    /// The live dataset of `service`. Reads `CURRENT` at most every
    /// [`CACHE_RECHECK`] and reopens when it names another generation; a
    /// handle given out earlier keeps reading its own generation. Fails as
    /// [`DatasetStore::open`] does.
    pub fn get(&self, service: &str) -> Result<Arc<Dataset>, DatasetError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((dataset, checked)) = entries.get_mut(service) {
            if checked.elapsed() < CACHE_RECHECK {
                return Ok(dataset.clone());
            }
            if self.store.current_generation(service).as_deref() == Some(dataset.generation()) {
                *checked = Instant::now();
                return Ok(dataset.clone());
            }
        }
        entries.remove(service);
        let dataset = Arc::new(self.store.open(service)?);
        entries.insert(service.to_owned(), (dataset.clone(), Instant::now()));
        Ok(dataset)
    }
}

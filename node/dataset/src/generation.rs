//! What each generation of a dataset is: its schema (key field, columns and
//! the JSON Schema it was checked against), its rows and when it was
//! imported, kept in `generation.json` beside the data so that it can be
//! read while a node holds the generation's sled database open. Also the
//! list of kept generations and rollback to the previous one.

use super::{
    CURRENT, DatasetError, DatasetStore, META_TREE, Meta, SCHEMA_FILE, check_name,
    generation_number, io_error, read_current, sync_dir, write_current,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The file in a generation's directory describing it.
pub(super) const MANIFEST_FILE: &str = "generation.json";

/// The shape of a dataset's data: what a consumer relies on. A re-import
/// that changes it is refused unless asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSchema {
    /// The field whose value finds a record.
    pub key: String,
    /// Every field the records have (a CSV file's header; the fields seen
    /// in JSON Lines, with the schema's properties), sorted; `None` when
    /// there were too many distinct names to keep.
    pub columns: Option<Vec<String>>,
    /// The JSON Schema text the records were checked against, if any.
    pub json_schema: Option<String>,
}

impl DatasetSchema {
    /// The schema's digest: SHA-256, in hex, over the key, the sorted
    /// columns and the JSON Schema with its object keys sorted (so that
    /// reordering a CSV file's columns or reformatting the schema file does
    /// not change it).
    pub fn digest(&self) -> String {
        let json_schema =
            self.json_schema
                .as_deref()
                .map(|text| match serde_json::from_str::<Value>(text) {
                    Ok(value) => canonical(&value),
                    Err(_) => text.to_owned(),
                });
        let described = serde_json::json!({
            "key": self.key,
            "columns": self.columns,
            "json_schema": json_schema,
        });
        hex::encode(Sha256::digest(canonical(&described).as_bytes()))
    }

    /// What differs from `before` to `self`, or `None` when nothing does.
    pub fn change_from(&self, before: &DatasetSchema) -> Option<SchemaChange> {
        let key = (self.key != before.key).then(|| (before.key.clone(), self.key.clone()));
        let (removed, added) = match (&before.columns, &self.columns) {
            (Some(old), Some(new)) => (
                old.iter().filter(|c| !new.contains(c)).cloned().collect(),
                new.iter().filter(|c| !old.contains(c)).cloned().collect(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let same_json_schema = match (&before.json_schema, &self.json_schema) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                let canon = |t: &str| serde_json::from_str::<Value>(t).map(|v| canonical(&v)).ok();
                a == b || canon(a).is_some_and(|a| Some(a) == canon(b))
            }
            _ => false,
        };
        let change = SchemaChange {
            key,
            columns_removed: removed,
            columns_added: added,
            json_schema: !same_json_schema,
        };
        (!change.is_empty()).then_some(change)
    }
}

/// JSON text with every object's keys sorted, for digests.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// How a new import's schema differs from the live data's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaChange {
    /// (live key, new key) when the key field changes.
    pub key: Option<(String, String)>,
    /// Columns the live data has and the new data lacks.
    pub columns_removed: Vec<String>,
    /// Columns the new data has and the live data lacks.
    pub columns_added: Vec<String>,
    /// Whether the JSON Schema is added, removed or different.
    pub json_schema: bool,
}

impl SchemaChange {
    fn is_empty(&self) -> bool {
        self.key.is_none()
            && self.columns_removed.is_empty()
            && self.columns_added.is_empty()
            && !self.json_schema
    }
}

impl fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some((old, new)) = &self.key {
            parts.push(format!("key {old} → {new}"));
        }
        if !self.columns_removed.is_empty() {
            parts.push(format!(
                "columns removed: {}",
                self.columns_removed.join(", ")
            ));
        }
        if !self.columns_added.is_empty() {
            parts.push(format!("columns added: {}", self.columns_added.join(", ")));
        }
        if self.json_schema {
            parts.push("JSON Schema changed".to_owned());
        }
        f.write_str(&parts.join("; "))
    }
}

/// What `generation.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) key: String,
    pub(super) columns: Option<Vec<String>>,
    pub(super) schema_digest: String,
    pub(super) records: u64,
    pub(super) source: String,
    pub(super) imported_at_unix: u64,
}

/// One kept generation of a dataset, as `lgsp dataset list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationInfo {
    /// Its name, e.g. "gen-3".
    pub name: String,
    /// Whether it is the one served (`CURRENT` names it).
    pub live: bool,
    /// Records it holds.
    pub records: u64,
    /// Its schema.
    pub schema: DatasetSchema,
    /// The schema's digest ([`DatasetSchema::digest`]).
    pub schema_digest: String,
    /// The name of the file it was imported from.
    pub source: String,
    /// When it was imported, in seconds since the Unix epoch (UTC).
    pub imported_at_unix: u64,
}

/// How the records of one generation differ from another's, by key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordChanges {
    /// Keys only the new data has.
    pub added: u64,
    /// Keys only the old data has.
    pub removed: u64,
    /// Keys both have, with different records.
    pub changed: u64,
    /// Keys both have, with the same record.
    pub unchanged: u64,
}

impl fmt::Display for RecordChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} removed, {} changed, {} unchanged",
            self.added, self.removed, self.changed, self.unchanged
        )
    }
}

/// Compares two generations' data files (both in key order) record by
/// record, reading each once from front to back; `None` when the old one
/// has no data file (a generation from before data files).
pub(super) fn compare_records(
    old_dir: &Path,
    new_dir: &Path,
) -> Result<Option<RecordChanges>, DatasetError> {
    let old_path = old_dir.join(super::DATA_FILE);
    if !old_path.is_file() {
        return Ok(None);
    }
    let new_path = new_dir.join(super::DATA_FILE);
    let mut old = Entries::open(&old_path)?;
    let mut new = Entries::open(&new_path)?;
    let mut changes = RecordChanges::default();
    let (mut a, mut b) = (old.next()?, new.next()?);
    loop {
        match (&a, &b) {
            (None, None) => return Ok(Some(changes)),
            (Some(_), None) => {
                changes.removed += 1;
                a = old.next()?;
            }
            (None, Some(_)) => {
                changes.added += 1;
                b = new.next()?;
            }
            (Some((ka, ta)), Some((kb, tb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    changes.removed += 1;
                    a = old.next()?;
                }
                std::cmp::Ordering::Greater => {
                    changes.added += 1;
                    b = new.next()?;
                }
                std::cmp::Ordering::Equal => {
                    if ta == tb {
                        changes.unchanged += 1;
                    } else {
                        changes.changed += 1;
                    }
                    a = old.next()?;
                    b = new.next()?;
                }
            },
        }
    }
}

/// One entry of a data file: its key and its record's text.
type Entry = (Vec<u8>, Vec<u8>);

/// A data file's entries, front to back.
struct Entries {
    path: std::path::PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    at: u64,
    len: u64,
}

impl Entries {
    fn open(path: &Path) -> Result<Self, DatasetError> {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        Ok(Self {
            path: path.to_owned(),
            reader: std::io::BufReader::with_capacity(1 << 18, file),
            at: 0,
            len,
        })
    }

    fn next(&mut self) -> Result<Option<Entry>, DatasetError> {
        if self.at >= self.len {
            return Ok(None);
        }
        let (key, text, size) =
            super::read_entry(&mut self.reader).map_err(|e| DatasetError::Corrupt {
                path: self.path.clone(),
                why: format!("the record at offset {} cannot be read: {e}", self.at),
            })?;
        self.at += size;
        Ok(Some((key, text)))
    }
}

/// What a rollback did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    /// The generation served before.
    pub from: String,
    /// The generation served now.
    pub to: String,
    /// Records the restored generation holds.
    pub records: u64,
}

/// Writes `generation.json` into a generation being built (synced).
pub(super) fn write_manifest(gen_dir: &Path, manifest: &Manifest) -> Result<(), DatasetError> {
    let path = gen_dir.join(MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    std::fs::File::create(&path)
        .and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        })
        .map_err(io_error(&path))
}

/// The description of the generation in `gen_dir`: from `generation.json`,
/// or, for a generation imported before that file existed, from its sled
/// metadata (which fails with [`DatasetError::Busy`] while a node has it
/// open).
pub(super) fn read_info(
    service: &str,
    service_dir: &Path,
    name: &str,
    live: bool,
) -> Result<GenerationInfo, DatasetError> {
    let gen_dir = service_dir.join(name);
    let json_schema = match std::fs::read_to_string(gen_dir.join(SCHEMA_FILE)) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&gen_dir.join(SCHEMA_FILE))(e)),
    };
    let path = gen_dir.join(MANIFEST_FILE);
    let manifest = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice::<Manifest>(&bytes).map_err(|e| DatasetError::Corrupt {
                path: path.clone(),
                why: format!("it is unreadable: {e}"),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            legacy_manifest(service, &gen_dir, name, json_schema.as_deref())?
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    let mut columns = manifest.columns;
    if let Some(c) = &mut columns {
        c.sort();
    }
    let schema = DatasetSchema {
        key: manifest.key,
        columns,
        json_schema,
    };
    Ok(GenerationInfo {
        name: name.to_owned(),
        live,
        records: manifest.records,
        schema_digest: schema.digest(),
        schema,
        source: manifest.source,
        imported_at_unix: manifest.imported_at_unix,
    })
}

fn legacy_manifest(
    service: &str,
    gen_dir: &Path,
    name: &str,
    json_schema: Option<&str>,
) -> Result<Manifest, DatasetError> {
    let db = sled::Config::new()
        .path(gen_dir)
        .open()
        .map_err(|e| match &e {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                DatasetError::Busy {
                    service: service.to_owned(),
                    generation: name.to_owned(),
                }
            }
            _ => super::store_error(gen_dir)(e),
        })?;
    let meta = db
        .open_tree(META_TREE)
        .and_then(|t| t.get("meta"))
        .map_err(super::store_error(gen_dir))?
        .ok_or_else(|| DatasetError::Corrupt {
            path: gen_dir.to_owned(),
            why: "it has no metadata (an unfinished import?)".into(),
        })?;
    let meta: Meta = serde_json::from_slice(&meta).map_err(|e| DatasetError::Corrupt {
        path: gen_dir.to_owned(),
        why: format!("its metadata is unreadable: {e}"),
    })?;
    let schema = DatasetSchema {
        key: meta.key_field.clone(),
        columns: meta.fields.clone().map(|mut c| {
            c.sort();
            c
        }),
        json_schema: json_schema.map(str::to_owned),
    };
    Ok(Manifest {
        schema_digest: schema.digest(),
        key: meta.key_field,
        columns: meta.fields,
        records: meta.records,
        source: meta.source,
        imported_at_unix: meta.imported_at_unix,
    })
}

/// Whether `gen_dir` holds a finished generation (not one an import left
/// half-written).
pub(super) fn is_complete(gen_dir: &Path) -> bool {
    gen_dir.join(MANIFEST_FILE).is_file() || gen_dir.join("conf").is_file()
}

/// The generation directories of a service, highest number first.
pub(super) fn generation_names(service_dir: &Path) -> Vec<String> {
    let mut names: Vec<(u64, String)> = std::fs::read_dir(service_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some((generation_number(&name)?, name))
        })
        .collect();
    names.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    names.into_iter().map(|(_, name)| name).collect()
}

impl DatasetStore {
    /// The kept generations of `service`, newest first: the live one and
    /// the one it replaced (what [`Self::rollback`] restores). Fails with
    /// [`DatasetError::NotFound`] when nothing was imported.
    pub fn generations(&self, service: &str) -> Result<Vec<GenerationInfo>, DatasetError> {
        check_name(service)?;
        let service_dir = self.service_dir(service);
        let current = read_current(&service_dir)?.ok_or_else(|| DatasetError::NotFound {
            service: service.to_owned(),
            root: self.root.clone(),
        })?;
        let mut infos = Vec::new();
        for name in generation_names(&service_dir) {
            let live = name == current;
            if !live && !service_dir.join(&name).join(MANIFEST_FILE).is_file() {
                // Half-written, or kept from before manifests existed.
                continue;
            }
            infos.push(read_info(service, &service_dir, &name, live)?);
        }
        Ok(infos)
    }

    /// Serves `to` (or, when `None`, the newest kept generation older than
    /// the live one) instead of the live generation, which is kept so that
    /// a second rollback `--to` it can undo this. A running node switches
    /// within a second. Fails with [`DatasetError::NothingToRollBack`] when
    /// no such generation is kept, and with [`DatasetError::ImportRunning`]
    /// while an import runs.
    pub fn rollback(&self, service: &str, to: Option<&str>) -> Result<Rollback, DatasetError> {
        check_name(service)?;
        let service_dir = self.service_dir(service);
        let not_found = || DatasetError::NotFound {
            service: service.to_owned(),
            root: self.root.clone(),
        };
        read_current(&service_dir)?.ok_or_else(not_found)?;
        let _lock = super::import::ImportLock::take(&service_dir, service)?;
        let current = read_current(&service_dir)?.ok_or_else(not_found)?;
        let current_number = generation_number(&current).unwrap_or(0);
        let kept: Vec<String> = generation_names(&service_dir)
            .into_iter()
            .filter(|n| *n != current && service_dir.join(n).join(MANIFEST_FILE).is_file())
            .collect();
        let target = match to {
            Some(name) => kept.iter().find(|n| *n == name).cloned(),
            None => kept
                .iter()
                .find(|n| generation_number(n).is_some_and(|g| g < current_number))
                .cloned(),
        };
        let Some(target) = target else {
            return Err(DatasetError::NothingToRollBack {
                service: service.to_owned(),
                live: current,
                asked: to.map(str::to_owned),
                kept,
            });
        };
        let info = read_info(service, &service_dir, &target, false)?;
        sync_dir(&service_dir.join(&target))?;
        write_current(&service_dir, &target)?;
        tracing::info!(service, from = %current, to = %target, "dataset rolled back");
        debug_assert!(service_dir.join(CURRENT).is_file());
        Ok(Rollback {
            from: current,
            to: target,
            records: info.records,
        })
    }
}

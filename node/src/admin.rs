//! The node's admin socket: a Unix socket in its data directory through
//! which `lgsp dataset show|query|list` read the live datasets while the
//! node runs (sled lets one process at a time open a database, and the
//! running node holds them).
//!
//! Local only: no TLS, the socket's file permission (0600, the node's user)
//! is the guard. One request per connection, JSON Lines both ways: the
//! client writes one [`Request`] line; the node answers with [`Reply`]
//! lines, the last one [`Reply::End`] or [`Reply::Error`]. A query is read
//! page by page and written as it goes, so a large answer takes no more
//! memory than a page.

use lgsp_dataset::{DatasetCache, DatasetError, DatasetStore, Query};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The socket's file name under the node's data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// Where the node at `data_dir` listens for admin requests.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// One request to the admin socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// One record of a dataset, by key.
    Show {
        /// The service's name.
        service: String,
        /// The record's key.
        key: String,
    },
    /// Records of a dataset that match, in key order.
    Query {
        /// The service's name.
        service: String,
        /// (field, value) pairs that must all match.
        filters: Vec<(String, String)>,
        /// Fields to return; empty for whole records.
        fields: Vec<String>,
        /// At most this many records.
        limit: u64,
    },
    /// The datasets' kept generations.
    List {
        /// Only this service's dataset.
        service: Option<String>,
    },
}

/// One line of an answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// A record, as the JSON object text stored.
    Record(String),
    /// One kept generation of a dataset.
    Generation(Generation),
    /// The answer is complete; `more` when a query stopped at its limit
    /// with records left.
    End {
        /// Whether records were left out by the limit.
        more: bool,
    },
    /// The request failed; the message says why and what to do.
    Error {
        /// What went wrong.
        message: String,
        /// The record or dataset asked for does not exist.
        not_found: bool,
    },
}

/// A kept generation, as `lgsp dataset list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Generation {
    /// The service whose dataset it is.
    pub service: String,
    /// Its name, e.g. "gen-3".
    pub name: String,
    /// Whether it is the one served.
    pub live: bool,
    /// Records it holds.
    pub records: u64,
    /// Its key field.
    pub key: String,
    /// Every field its records have, sorted; `None` when there were too
    /// many to keep.
    pub columns: Option<Vec<String>>,
    /// Its schema's digest.
    pub schema_digest: String,
    /// The file it was imported from.
    pub source: String,
    /// When it was imported, Unix seconds.
    pub imported_at_unix: u64,
}

impl Generation {
    fn of(service: &str, g: lgsp_dataset::GenerationInfo) -> Self {
        Self {
            service: service.to_owned(),
            name: g.name,
            live: g.live,
            records: g.records,
            key: g.schema.key,
            columns: g.schema.columns,
            schema_digest: g.schema_digest,
            source: g.source,
            imported_at_unix: g.imported_at_unix,
        }
    }
}

/// The kept generations of `service` (every dataset's when `None`), read
/// from `store` directly: what `lgsp dataset list` shows without a node.
pub fn generations(
    store: &DatasetStore,
    service: Option<&str>,
) -> Result<Vec<Generation>, DatasetError> {
    let services = match service {
        Some(s) => vec![s.to_owned()],
        None => store.services()?,
    };
    let mut all = Vec::new();
    for name in services {
        for g in store.generations(&name)? {
            all.push(Generation::of(&name, g));
        }
    }
    Ok(all)
}

/// Serves admin requests on `listener` until `stop` resolves, reading
/// datasets through the node's own handles (`ctx.datasets`, what it serves
/// with) and `store`.
pub(crate) async fn serve(
    listener: tokio::net::UnixListener,
    ctx: Arc<crate::context::NodeContext>,
    store: DatasetStore,
    stop: impl std::future::Future<Output = ()>,
) {
    let store = Arc::new(store);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let (ctx, store) = (ctx.clone(), store.clone());
        // Dataset reads are blocking (sled, the data file): answer on a
        // blocking thread, whose writes wait for the client to read (at
        // most 10 s each, so a client that stops reading frees it).
        tokio::task::spawn_blocking(move || {
            if let Err(error) = answer(stream, &ctx.datasets, &store) {
                tracing::debug!(%error, "admin socket: client went away");
            }
        });
    }
}

fn answer(
    stream: UnixStream,
    datasets: &DatasetCache,
    store: &DatasetStore,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream.try_clone()?, 64 * 1024)).read_line(&mut line)?;
    let mut out = std::io::BufWriter::new(stream);
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            send(
                &mut out,
                &Reply::Error {
                    message: format!("malformed admin request: {e}"),
                    not_found: false,
                },
            )?;
            return out.flush();
        }
    };
    match handle(request, datasets, store, &mut out) {
        Ok(more) => send(&mut out, &Reply::End { more })?,
        Err(Failure::Io(e)) => return Err(e),
        Err(Failure::Refused { message, not_found }) => {
            send(&mut out, &Reply::Error { message, not_found })?;
        }
    }
    out.flush()
}

/// Why a request was not answered in full.
enum Failure {
    /// The client went away.
    Io(std::io::Error),
    /// The node refuses: told to the client.
    Refused { message: String, not_found: bool },
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

impl From<DatasetError> for Failure {
    fn from(e: DatasetError) -> Self {
        Failure::Refused {
            not_found: matches!(e, DatasetError::NotFound { .. }),
            message: e.to_string(),
        }
    }
}

/// Answers `request` up to its last line; returns whether a query's limit
/// left records out.
fn handle(
    request: Request,
    datasets: &DatasetCache,
    store: &DatasetStore,
    out: &mut impl Write,
) -> Result<bool, Failure> {
    match request {
        Request::Show { service, key } => {
            let dataset = datasets.get(&service)?;
            match dataset.get_json(&key)? {
                Some(record) => {
                    send(out, &Reply::Record(record))?;
                    Ok(false)
                }
                None => Err(Failure::Refused {
                    message: format!(
                        "service {service} has no record with {} {key:?}",
                        dataset.key_field()
                    ),
                    not_found: true,
                }),
            }
        }
        Request::Query {
            service,
            filters,
            fields,
            limit,
        } => query(&*datasets.get(&service)?, filters, fields, limit, out),
        Request::List { service } => {
            for g in generations(store, service.as_deref())? {
                send(out, &Reply::Generation(g))?;
            }
            Ok(false)
        }
    }
}

/// Writes up to `limit` matching records page by page; returns whether
/// the limit left records out.
fn query(
    dataset: &lgsp_dataset::Dataset,
    filters: Vec<(String, String)>,
    fields: Vec<String>,
    limit: u64,
    out: &mut impl Write,
) -> Result<bool, Failure> {
    let mut q = Query {
        filters,
        fields,
        page_size: 0,
        resume_token: String::new(),
    };
    if limit == 0 {
        return Ok(false);
    }
    let mut sent = 0u64;
    while sent < limit {
        q.page_size = u32::try_from(limit - sent)
            .unwrap_or(u32::MAX)
            .min(lgsp_dataset::MAX_PAGE_SIZE);
        let page = dataset.query(&q)?;
        for (_, record) in page.records {
            send(out, &Reply::Record(record))?;
            sent += 1;
        }
        if page.resume_token.is_empty() {
            return Ok(false);
        }
        q.resume_token = page.resume_token;
    }
    Ok(true)
}

fn send(out: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, reply)?;
    out.write_all(b"\n")
}

/// Why the admin socket could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No node answers on the socket (none runs, or it left a stale
    /// socket): open the store directly instead.
    #[error("no node answers on {0}")]
    NotRunning(PathBuf),
    /// The socket exists but this user may not use it.
    #[error(
        "{0}: permission denied; the running node's admin socket is for the node's user (run as that user, e.g. `sudo -u lgsp lgsp dataset ...`)"
    )]
    Denied(PathBuf),
    /// The node answered with an error.
    #[error("{message}")]
    Refused {
        /// What the node said.
        message: String,
        /// The record or dataset does not exist.
        not_found: bool,
    },
    /// The connection failed midway, or the node's answer made no sense.
    #[error("the node's admin socket {path}: {why}")]
    Broken {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// Sends `request` to the node running on `data_dir` and hands each reply
/// line before the last to `each`; returns whether a query left records
/// out. Fails with [`AdminError::NotRunning`] when no node answers (the
/// caller then opens the store itself).
pub fn ask(
    data_dir: &Path,
    request: &Request,
    mut each: impl FnMut(Reply) -> std::io::Result<()>,
) -> Result<bool, AdminError> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(AdminError::Denied(path));
        }
        Err(_) => return Err(AdminError::NotRunning(path)),
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let broken = |why: String| AdminError::Broken {
        path: path.clone(),
        why,
    };
    let mut line = serde_json::to_string(request).map_err(|e| broken(e.to_string()))?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| broken(e.to_string()))?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| broken(e.to_string()))?;
        match serde_json::from_str::<Reply>(&line).map_err(|e| broken(e.to_string()))? {
            Reply::End { more } => return Ok(more),
            Reply::Error { message, not_found } => {
                return Err(AdminError::Refused { message, not_found });
            }
            reply => each(reply).map_err(|e| broken(e.to_string()))?,
        }
    }
    Err(broken(
        "the node closed the connection before the answer ended".into(),
    ))
}

/// Binds the admin socket at `path` (mode 0600), replacing a stale one: by
/// now this process holds the data directory's catalog copy, so no other
/// node uses it.
pub(crate) fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with a `ho-tich` dataset of three records.
    fn store() -> (tempfile::TempDir, DatasetStore) {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("ho-tich.csv");
        std::fs::write(
            &csv,
            "so_dinh_danh,ho_ten\n001,Nguyễn Thị Hương\n002,Trần Văn Đức\n003,Lê Thị Ánh\n",
        )
        .unwrap();
        let store = DatasetStore::new(&dir.path().join("datasets"));
        store
            .import("ho-tich", &csv, "so_dinh_danh", None, &|_, _| {})
            .unwrap();
        (dir, store)
    }

    fn replies(out: &[u8]) -> Vec<Reply> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn a_query_answer_stops_at_its_limit_and_says_records_are_left() {
        let (_dir, store) = store();
        let cache = DatasetCache::new(store.clone());
        let ask = |limit| {
            let mut out = Vec::new();
            let request = Request::Query {
                service: "ho-tich".into(),
                filters: Vec::new(),
                fields: vec!["ho_ten".into()],
                limit,
            };
            let more = handle(request, &cache, &store, &mut out).ok().unwrap();
            (replies(&out).len(), more)
        };
        assert_eq!(ask(2), (2, true));
        assert_eq!(ask(3), (3, false));
        assert_eq!(ask(0), (0, false));
    }

    #[test]
    fn a_missing_record_or_dataset_is_refused_as_not_found() {
        let (_dir, store) = store();
        let cache = DatasetCache::new(store.clone());
        let show = |service: &str, key: &str| {
            let request = Request::Show {
                service: service.into(),
                key: key.into(),
            };
            match handle(request, &cache, &store, &mut Vec::new()) {
                Err(Failure::Refused { message, not_found }) => (message, not_found),
                _ => panic!("{service}/{key} was answered"),
            }
        };
        let (message, not_found) = show("ho-tich", "999");
        assert!(
            not_found && message.contains("no record with so_dinh_danh"),
            "{message}"
        );
        assert!(show("khong-co", "001").1);
    }

    #[test]
    fn list_gives_every_kept_generation_with_its_key() {
        let (_dir, store) = store();
        let all = generations(&store, None).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (
                all[0].service.as_str(),
                all[0].live,
                all[0].records,
                all[0].key.as_str()
            ),
            ("ho-tich", true, 3, "so_dinh_danh")
        );
    }
}

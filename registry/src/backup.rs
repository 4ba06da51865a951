//! Online backup: a consistent copy of the catalog taken while the cluster
//! runs (`lgsp registry snapshot save`), and a data directory made from it
//! to found a new cluster (`lgsp registry snapshot restore`), as etcd's
//! `etcdctl snapshot save` and `etcdutl snapshot restore` do.
//!
//! A backup file is `lgsp-registry-snapshot-v1\n`, one `RegistryBackup`
//! message, and the SHA-256 of everything before it (32 bytes). The server
//! that takes the copy computes the checksum; the client checks it before
//! the file is renamed into place, and restore checks it again.

use crate::catalog;
use crate::config::PeerConfig;
use crate::error::RegistryError;
use crate::incarnation;
use crate::kv::Staged;
use crate::storage::RaftStore;
use lgsp_proto::{CatalogSnapshot, Member, RegistryBackup};
use prost::Message as _;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What every backup file starts with.
pub const MAGIC: &[u8] = b"lgsp-registry-snapshot-v1\n";

const SUM_LEN: usize = 32;

/// Why a backup could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a backup at all.
    #[error(
        "{path} is not an lgsp registry snapshot (it does not start with {:?}); give a file written by `lgsp registry snapshot save`",
        String::from_utf8_lossy(MAGIC).trim_end()
    )]
    NotASnapshot {
        /// The file.
        path: PathBuf,
    },
    /// The checksum does not match: the file was damaged or cut.
    #[error(
        "{path} is damaged: the SHA-256 of its contents is {actual}, but the file says {expected}; use another copy, or save a new snapshot"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum the file carries, hex.
        expected: String,
        /// The checksum of what it holds, hex.
        actual: String,
    },
    /// The checksum matches but the contents cannot be decoded.
    #[error("{path} cannot be read as a registry snapshot: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A restore that cannot work as asked.
    #[error("{0}")]
    Refused(String),
    /// The new data directory could not be written.
    #[error(transparent)]
    Store(#[from] RegistryError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The bytes of a backup file holding `backup`.
pub fn encode(backup: &RegistryBackup) -> Vec<u8> {
    let mut file = MAGIC.to_vec();
    backup.encode(&mut file).expect("a Vec grows as needed");
    let sum = Sha256::digest(&file);
    file.extend_from_slice(&sum);
    file
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 a backup file carries (its last 32 bytes), hex.
pub fn checksum_of(file: &[u8]) -> String {
    hex(&file[file.len().saturating_sub(SUM_LEN)..])
}

/// Checks and decodes the bytes of a backup file (`path` names it in
/// errors): the magic, then the checksum, then the message.
pub fn decode(path: &Path, file: &[u8]) -> Result<RegistryBackup, BackupError> {
    if !file.starts_with(MAGIC) {
        return Err(BackupError::NotASnapshot {
            path: path.to_owned(),
        });
    }
    if file.len() < MAGIC.len() + SUM_LEN {
        return Err(BackupError::Damaged {
            path: path.to_owned(),
            why: format!("{} bytes is too short to hold a checksum", file.len()),
        });
    }
    let (content, sum) = file.split_at(file.len() - SUM_LEN);
    let actual = Sha256::digest(content);
    if actual.as_slice() != sum {
        return Err(BackupError::Checksum {
            path: path.to_owned(),
            expected: hex(sum),
            actual: hex(&actual),
        });
    }
    RegistryBackup::decode(&content[MAGIC.len()..]).map_err(|e| BackupError::Damaged {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// Reads and checks the backup file at `path`.
pub fn read_file(path: &Path) -> Result<RegistryBackup, BackupError> {
    let file = std::fs::read(path).map_err(io(path))?;
    decode(path, &file)
}

/// Writes `file` (the bytes of a checked backup) to `path` atomically: a
/// temporary file beside it, synced, renamed over `path`, and the directory
/// synced, so that `path` is either the old file or the whole new one,
/// also after a power cut.
pub fn write_file(path: &Path, file: &[u8]) -> Result<(), BackupError> {
    decode(path, file)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| BackupError::Refused(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.part",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(file).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What a restore made.
#[derive(Debug)]
pub struct Restored {
    /// The catalog revision of the backup.
    pub revision: u64,
    /// How many records the new data directory holds.
    pub records: usize,
    /// The founding voters of the new cluster.
    pub voters: Vec<u64>,
}

/// Makes `data_dir` the data directory of server `id` founding a new
/// cluster of `peers` with the catalog of `backup`. Every founding server
/// is restored from the same file with the same `peers`, so they start
/// from the same state; the backup's own members, incarnations and log are
/// not carried over. Refuses a directory that already holds raft state.
pub fn restore(
    backup: &RegistryBackup,
    data_dir: &Path,
    id: u64,
    peers: &[PeerConfig],
) -> Result<Restored, BackupError> {
    if !peers.iter().any(|p| p.id == id) {
        return Err(BackupError::Refused(format!(
            "--peers does not name server {id}; list every founding server of the new cluster, this one included"
        )));
    }
    let mut snapshot: CatalogSnapshot = backup.catalog.clone().unwrap_or_default();
    let store = RaftStore::open(data_dir, Arc::new(catalog::Catalog))?;
    if store.is_initialized()? {
        return Err(BackupError::Refused(format!(
            "{} already holds a registry data directory; restore into a new, empty directory (a running cluster is never overwritten)",
            data_dir.display()
        )));
    }
    incarnation::own(store.db()).map_err(RegistryError::from)?;
    let voters: Vec<u64> = peers.iter().map(|p| p.id).collect();
    snapshot.members = peers
        .iter()
        .map(|p| Member {
            id: p.id,
            peer_address: p.peer.clone(),
            client_address: p.client.clone(),
            voter: true,
            incarnation: 0,
        })
        .collect();
    let mut batch = Staged::new(store.db());
    catalog::restore(store.db(), &mut batch, &snapshot.encode_to_vec())?;
    let ids: BTreeSet<u64> = voters.iter().copied().collect();
    incarnation::put_first_peers(&mut batch, &ids);
    incarnation::put_founders(&mut batch, &ids);
    batch.commit().map_err(RegistryError::from)?;
    // Last, and flushed: until the raft state is written the directory is
    // not initialized, and a restore that stopped halfway may run again.
    store.bootstrap(&voters)?;
    Ok(Restored {
        revision: snapshot.revision,
        records: snapshot.records.len(),
        voters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> RegistryBackup {
        RegistryBackup {
            revision: 42,
            applied_index: 50,
            server_id: 1,
            catalog: Some(CatalogSnapshot {
                revision: 42,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_backup_file_round_trips_and_a_changed_byte_is_refused_naming_the_checksum() {
        let file = encode(&backup());
        let path = Path::new("b.snap");
        assert_eq!(decode(path, &file).unwrap(), backup());
        let mut damaged = file.clone();
        let middle = MAGIC.len() + 2;
        damaged[middle] ^= 1;
        match decode(path, &damaged) {
            Err(e @ BackupError::Checksum { .. }) => {
                let why = e.to_string();
                assert!(why.contains(&checksum_of(&file)), "{why}");
                assert!(why.contains("SHA-256"), "{why}");
            }
            other => panic!("a damaged file was read as {other:?}"),
        }
        let cut = &file[..file.len() - 5];
        assert!(matches!(
            decode(path, cut),
            Err(BackupError::Checksum { .. })
        ));
        assert!(matches!(
            decode(path, b"PK\x03\x04 not a snapshot"),
            Err(BackupError::NotASnapshot { .. })
        ));
    }

    #[test]
    fn a_restored_data_directory_founds_a_cluster_with_the_catalog_and_is_never_restored_over() {
        use lgsp_proto::{Agency, CatalogRecord, Meta, RecordKind};
        let agency = CatalogRecord {
            kind: RecordKind::Agency as i32,
            key: "000.00.12.H62".into(),
            meta: Some(Meta {
                create_revision: 40,
                mod_revision: 41,
            }),
            value: Some(lgsp_proto::catalog_record::Value::Agency(Agency {
                code: "000.00.12.H62".into(),
                name: "Sở Tư pháp".into(),
                ..Default::default()
            })),
        };
        let mut saved = backup();
        saved.catalog.as_mut().unwrap().records.push(agency.clone());
        saved.catalog.as_mut().unwrap().members.push(Member {
            id: 9,
            peer_address: "10.9.9.9:7201".into(),
            ..Default::default()
        });
        let peers = crate::config::parse_peers("1=127.0.0.1:7201,2=127.0.0.1:7202").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let restored = restore(&saved, &data, 1, &peers).unwrap();
        assert_eq!((restored.revision, restored.records), (42, 1));
        assert_eq!(restored.voters, vec![1, 2]);

        let again = restore(&saved, &data, 1, &peers).unwrap_err().to_string();
        assert!(again.contains("already holds"), "{again}");
        let store = RaftStore::open(&data, Arc::new(catalog::Catalog)).unwrap();
        assert!(store.is_initialized().unwrap());
        assert_eq!(store.conf_state().unwrap().voters, vec![1, 2]);
        let db = store.db();
        assert_eq!(catalog::revision(db).unwrap(), 42);
        let got = catalog::get(db, RecordKind::Agency, "000.00.12.H62").unwrap();
        assert_eq!(got, Some(agency));
        // The new cluster's members, not the backup's.
        let ids: Vec<u64> = catalog::members(db).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2]);

        let stranger = restore(&saved, &dir.path().join("other"), 3, &peers).unwrap_err();
        assert!(
            stranger.to_string().contains("does not name server 3"),
            "{stranger}"
        );
    }

    #[test]
    fn a_backup_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.snap");
        let file = encode(&backup());
        write_file(&path, &file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), file);
        let mut damaged = file.clone();
        damaged[MAGIC.len()] ^= 1;
        assert!(write_file(&path, &damaged).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), file, "the old file stays");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

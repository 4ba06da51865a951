//! Online backup: a consistent copy of the catalog taken while the cluster
//! runs (`lgsp registry snapshot save`), and a data directory made from it
//! to found a new cluster (`lgsp registry snapshot restore`), as etcd's
//! `etcdctl snapshot save` and `etcdutl snapshot restore` do.
//!
//! A backup file is `lgsp-registry-snapshot-v2\n`, one
//! `SignedRegistryBackup` message (the `RegistryBackup`, signed by the
//! registry server that took it: see `signing.rs`), and the SHA-256 of
//! everything before it (32 bytes). The checksum tells a damaged or cut
//! file; the signature, checked against the province CA, a forged one. The
//! client checks both before the file is renamed into place, and restore
//! checks them again. A v1 file (before backups were signed) holds a bare
//! `RegistryBackup`: it is opened only when asked for explicitly.

mod signing;

pub use signing::{BackupSigner, SignedBy};

use crate::catalog;
use crate::config::PeerConfig;
use crate::error::RegistryError;
use crate::incarnation;
use crate::kv::Staged;
use crate::storage::RaftStore;
use lgsp_certs::identity::AgencyCode;
use lgsp_proto::{CatalogSnapshot, Member, RegistryBackup, SignedRegistryBackup};
use prost::Message as _;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What every backup file starts with.
pub const MAGIC: &[u8] = b"lgsp-registry-snapshot-v2\n";

/// What a backup file from before backups were signed starts with.
pub const MAGIC_UNSIGNED: &[u8] = b"lgsp-registry-snapshot-v1\n";

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
    /// The file carries no signature (a v1 file, from before backups were
    /// signed) and was not accepted explicitly.
    #[error(
        "{path} is an unsigned backup (saved by an lgsp from before backups were signed): nothing shows that a registry server took it, since anyone who can write the file can recompute its SHA-256. Restore it only if you know where it comes from, with --accept-unsigned; otherwise use a signed backup (`lgsp registry snapshot save`)"
    )]
    Unsigned {
        /// The file.
        path: PathBuf,
    },
    /// The signature does not verify against the province CA.
    #[error(
        "{path} is not a backup signed by a registry server of this province: {why}. Do not restore it (it may be forged); use another copy, or save a new snapshot"
    )]
    Signature {
        /// The file.
        path: PathBuf,
        /// What does not hold.
        why: String,
    },
    /// The CRL given to check the signer against cannot be used.
    #[error(
        "the CRL {origin} cannot be used to check who signed {path}: {why}. Give the current CRL of the province CA that issued ca.pem in --tls-dir: sign one with `lgsp ca crl --ca DIR --out FILE` and give --crl FILE, or give the CA directory with --ca-dir DIR"
    )]
    Crl {
        /// The backup file.
        path: PathBuf,
        /// Where the CRL came from.
        origin: String,
        /// What is wrong with it.
        why: String,
    },
    /// The signer's certificate is revoked: its key may be in other hands.
    #[error(
        "{path} is signed by {signer}, whose certificate (serial {serial}) is revoked on CRL number {crl_number}: whoever holds its key may have made this file, whatever time it says it was taken. Do not restore it; restore a backup signed by a registry server whose certificate is not revoked, or save a new one with `lgsp registry snapshot save` while a cluster still runs"
    )]
    Revoked {
        /// The backup file.
        path: PathBuf,
        /// The signer's identity.
        signer: String,
        /// Its certificate's serial, lower-case hex.
        serial: String,
        /// The number of the CRL that lists it.
        crl_number: u64,
    },
    /// The signer's certificate has expired since, and that was not accepted.
    #[error(
        "{path} is signed by {signer}, whose certificate (serial {serial}) expired at {not_after}: nobody revokes an expired certificate when its key leaks, so its signature proves little now. Restore it only if you know the file is one of your own old backups, with --accept-expired-signer; otherwise use a newer backup"
    )]
    SignerExpired {
        /// The backup file.
        path: PathBuf,
        /// The signer's identity.
        signer: String,
        /// Its certificate's serial, lower-case hex.
        serial: String,
        /// When it expired (UTC).
        not_after: String,
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

fn with_checksum(mut file: Vec<u8>) -> Vec<u8> {
    let sum = Sha256::digest(&file);
    file.extend_from_slice(&sum);
    file
}

/// The bytes of a backup file holding `backup`, signed by `signer` (the
/// registry server taking it). Fails when the key cannot sign.
pub fn encode(backup: &RegistryBackup, signer: &BackupSigner) -> Result<Vec<u8>, BackupError> {
    let bytes = backup.encode_to_vec();
    let (certificate, signature) = signer.sign(&bytes).map_err(BackupError::Refused)?;
    let signed = SignedRegistryBackup {
        backup: bytes,
        certificate,
        signature,
    };
    let mut file = MAGIC.to_vec();
    signed.encode(&mut file).expect("a Vec grows as needed");
    Ok(with_checksum(file))
}

/// The bytes of a v1 backup file, unsigned, as lgsp wrote them before
/// backups were signed (for tests of reading old files).
pub fn encode_unsigned(backup: &RegistryBackup) -> Vec<u8> {
    let mut file = MAGIC_UNSIGNED.to_vec();
    backup.encode(&mut file).expect("a Vec grows as needed");
    with_checksum(file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 a backup file carries (its last 32 bytes), hex.
pub fn checksum_of(file: &[u8]) -> String {
    hex(&file[file.len().saturating_sub(SUM_LEN)..])
}

/// A backup file whose checksum matched, not yet trusted.
#[derive(Debug)]
pub struct BackupFile {
    /// What it holds.
    pub backup: RegistryBackup,
    /// Its signature (`None`: a v1 file, unsigned).
    pub signed: Option<SignedRegistryBackup>,
}

/// Checks and decodes the bytes of a backup file (`path` names it in
/// errors): the magic, then the checksum, then the message. The signature
/// is not checked here: see [`open`].
pub fn decode(path: &Path, file: &[u8]) -> Result<BackupFile, BackupError> {
    let magic = [MAGIC, MAGIC_UNSIGNED]
        .into_iter()
        .find(|m| file.starts_with(m))
        .ok_or_else(|| BackupError::NotASnapshot {
            path: path.to_owned(),
        })?;
    if file.len() < magic.len() + SUM_LEN {
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
    let damaged = |e: prost::DecodeError| BackupError::Damaged {
        path: path.to_owned(),
        why: e.to_string(),
    };
    let body = &content[magic.len()..];
    if magic == MAGIC_UNSIGNED {
        return Ok(BackupFile {
            backup: RegistryBackup::decode(body).map_err(damaged)?,
            signed: None,
        });
    }
    let signed = SignedRegistryBackup::decode(body).map_err(damaged)?;
    Ok(BackupFile {
        backup: RegistryBackup::decode(signed.backup.as_slice()).map_err(damaged)?,
        signed: Some(signed),
    })
}

/// What the signer's certificate is checked against for revocation.
#[derive(Clone, Debug)]
pub enum Revocation {
    /// The province CA's CRL (DER): a signer it lists is refused, and so
    /// is a CRL not signed by the CA that issued the signer, or past its
    /// next update.
    Crl {
        /// The CRL, DER.
        der: Vec<u8>,
        /// Where it came from, named in errors (a file, a CA directory).
        origin: String,
    },
    /// Not checked: asked for explicitly (`--no-crl-check`), or a backup
    /// just received from a server that answered over mTLS.
    NotChecked,
}

/// What a backup must be signed by to be opened.
#[derive(Clone, Debug)]
pub struct BackupTrust {
    /// The province CA certificates (DER) the signer's certificate must be
    /// issued by.
    pub roots: Vec<CertificateDer<'static>>,
    /// The agency that runs the registry: the signer's certificate must be
    /// one of its registry servers' (`None`: any registry server the CA
    /// issued).
    pub province: Option<AgencyCode>,
    /// Open a v1 file, which carries no signature, all the same.
    pub accept_unsigned: bool,
    /// The CRL the signer's certificate is checked against.
    pub revocation: Revocation,
    /// Open a backup whose signer's certificate has expired since (it must
    /// still have been valid when the backup says it was taken).
    pub accept_expired_signer: bool,
}

/// A backup file checked and trusted.
#[derive(Debug)]
pub struct Opened {
    /// What it holds.
    pub backup: RegistryBackup,
    /// The registry server that signed it (`None`: an unsigned v1 file,
    /// accepted explicitly).
    pub signed_by: Option<SignedBy>,
    /// The number of the CRL the signer was checked against (`None`: not
    /// checked, or unsigned).
    pub crl_number: Option<u64>,
}

/// Checks the bytes of a backup file as [`decode`] does, then its
/// signature against `trust`: refuses an unsigned file unless
/// `trust.accept_unsigned`, one whose signature does not verify, one whose
/// signer is on `trust.revocation`'s CRL (or whose CRL is not the CA's or is
/// out of date), and one whose signer's certificate has expired by now
/// unless `trust.accept_expired_signer`.
pub fn open(path: &Path, file: &[u8], trust: &BackupTrust) -> Result<Opened, BackupError> {
    let BackupFile { backup, signed } = decode(path, file)?;
    let Some(signed) = signed else {
        if trust.accept_unsigned {
            return Ok(Opened {
                backup,
                signed_by: None,
                crl_number: None,
            });
        }
        return Err(BackupError::Unsigned {
            path: path.to_owned(),
        });
    };
    let crl = match &trust.revocation {
        Revocation::Crl { der, .. } => Some(der.as_slice()),
        Revocation::NotChecked => None,
    };
    let checks = signing::Checks {
        crl,
        accept_expired: trust.accept_expired_signer,
        now_unix: crate::calendar::unix_now_ms().div_euclid(1000),
    };
    let (signed_by, crl_number) = signing::verify(
        &signed.backup,
        &signed.certificate,
        &signed.signature,
        &trust.roots,
        trust.province.as_ref(),
        backup.taken_unix_ms,
        checks,
    )
    .map_err(|refusal| {
        let path = path.to_owned();
        match refusal {
            signing::Refusal::Signature(why) => BackupError::Signature { path, why },
            signing::Refusal::Crl(why) => BackupError::Crl {
                path,
                origin: match &trust.revocation {
                    Revocation::Crl { origin, .. } => origin.clone(),
                    Revocation::NotChecked => String::new(),
                },
                why,
            },
            signing::Refusal::Revoked {
                signer,
                serial,
                crl_number,
            } => BackupError::Revoked {
                path,
                signer,
                serial,
                crl_number,
            },
            signing::Refusal::Expired {
                signer,
                serial,
                not_after,
            } => BackupError::SignerExpired {
                path,
                signer,
                serial,
                not_after,
            },
        }
    })?;
    Ok(Opened {
        backup,
        signed_by: Some(signed_by),
        crl_number,
    })
}

/// Reads the backup file at `path` and opens it as [`open`] does.
pub fn read_file(path: &Path, trust: &BackupTrust) -> Result<Opened, BackupError> {
    let file = std::fs::read(path).map_err(io(path))?;
    open(path, &file, trust)
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

    use lgsp_certs::identity::{Role, SpiffeId};
    use lgsp_certs::{CertificateAuthority, Credentials, LeafSpec};

    const PROVINCE: &str = "000.00.01.H62";

    fn backup() -> RegistryBackup {
        RegistryBackup {
            revision: 42,
            applied_index: 50,
            server_id: 1,
            taken_unix_ms: crate::calendar::unix_now_ms(),
            catalog: Some(CatalogSnapshot {
                revision: 42,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A province CA (in a directory kept as long as the value lives).
    struct Province {
        _dir: tempfile::TempDir,
        ca: CertificateAuthority,
    }

    impl Province {
        fn new(trust_domain: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca = CertificateAuthority::init(&dir.path().join("ca"), trust_domain, "CA thử", 30)
                .unwrap();
            Self { _dir: dir, ca }
        }

        fn issue(&mut self, agency: &str, role: Role, name: &str) -> Credentials {
            let id = SpiffeId::new(
                self.ca.trust_domain(),
                AgencyCode::new(agency).unwrap(),
                role,
                name,
            )
            .unwrap();
            let issued = self.ca.issue(&LeafSpec::for_days(id, 1).unwrap()).unwrap();
            Credentials::from_pem(&issued.cert_pem, &issued.key_pem, self.ca.cert_pem()).unwrap()
        }

        fn signer(&mut self) -> BackupSigner {
            BackupSigner::new(&self.issue(PROVINCE, Role::Registry, "registry-1")).unwrap()
        }

        /// What a restore on a server of this province trusts.
        fn trust(&mut self) -> BackupTrust {
            let creds = self.issue(PROVINCE, Role::Registry, "registry-2");
            BackupTrust {
                roots: creds.roots,
                province: Some(AgencyCode::new(PROVINCE).unwrap()),
                accept_unsigned: false,
                revocation: Revocation::Crl {
                    der: self.ca.sign_crl(1).unwrap().der,
                    origin: "crl.pem".into(),
                },
                accept_expired_signer: false,
            }
        }
    }

    /// `file` with its backup replaced by `change(backup)`, the signature
    /// kept and the checksum recomputed: what someone who can write the
    /// file but holds no registry key can make.
    fn forged(file: &[u8], change: impl FnOnce(&mut RegistryBackup)) -> Vec<u8> {
        let content = &file[MAGIC.len()..file.len() - SUM_LEN];
        let mut signed = SignedRegistryBackup::decode(content).unwrap();
        let mut backup = RegistryBackup::decode(signed.backup.as_slice()).unwrap();
        change(&mut backup);
        signed.backup = backup.encode_to_vec();
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&signed.encode_to_vec());
        with_checksum(forged)
    }

    #[test]
    fn a_backup_file_round_trips_and_a_changed_byte_is_refused_naming_the_checksum() {
        let mut province = Province::new("vinhphuc.gov.vn");
        let file = encode(&backup(), &province.signer()).unwrap();
        let path = Path::new("b.snap");
        assert_eq!(decode(path, &file).unwrap().backup.revision, 42);
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
    fn a_backup_signed_by_a_registry_server_of_the_province_opens_naming_it() {
        let mut province = Province::new("vinhphuc.gov.vn");
        let saved = backup();
        let file = encode(&saved, &province.signer()).unwrap();
        let opened = open(Path::new("b.snap"), &file, &province.trust()).unwrap();
        assert_eq!(opened.backup, saved);
        let signer = opened.signed_by.expect("signed");
        assert_eq!(signer.id.role, Role::Registry);
        assert_eq!(signer.id.name, "registry-1");
    }

    #[test]
    fn a_backup_changed_and_rehashed_is_refused_as_not_signed_by_the_province() {
        let mut province = Province::new("vinhphuc.gov.vn");
        let file = encode(&backup(), &province.signer()).unwrap();
        // A grant added to the catalog, the SHA-256 made to match.
        let tampered = forged(&file, |b| {
            b.catalog
                .as_mut()
                .unwrap()
                .records
                .push(lgsp_proto::CatalogRecord {
                    key: "000.00.12.H62/ho-tich/000.00.99.H62".into(),
                    ..Default::default()
                })
        });
        let path = Path::new("tampered.snap");
        assert!(decode(path, &tampered).is_ok(), "the checksum matches");
        match open(path, &tampered, &province.trust()) {
            Err(e @ BackupError::Signature { .. }) => {
                let why = e.to_string();
                assert!(why.contains("does not match the contents"), "{why}");
                assert!(why.contains("Do not restore it"), "{why}");
            }
            other => panic!("a tampered backup was opened: {other:?}"),
        }
        // A backup's own time is signed too: moved into another
        // certificate's validity, it no longer verifies.
        let retimed = forged(&file, |b| b.taken_unix_ms -= 1);
        assert!(matches!(
            open(path, &retimed, &province.trust()),
            Err(BackupError::Signature { .. })
        ));
    }

    #[test]
    fn an_unsigned_backup_is_refused_unless_accepted_explicitly() {
        let mut province = Province::new("vinhphuc.gov.vn");
        let saved = backup();
        let old = encode_unsigned(&saved);
        let path = Path::new("old.snap");
        let mut trust = province.trust();
        match open(path, &old, &trust) {
            Err(e @ BackupError::Unsigned { .. }) => {
                let why = e.to_string();
                assert!(why.contains("--accept-unsigned"), "{why}");
            }
            other => panic!("an unsigned backup was opened: {other:?}"),
        }
        trust.accept_unsigned = true;
        let opened = open(path, &old, &trust).unwrap();
        assert_eq!(opened.backup, saved);
        assert_eq!(opened.signed_by, None);
    }

    #[test]
    fn a_backup_signed_by_another_ca_another_agency_or_not_a_registry_server_is_refused() {
        let mut province = Province::new("vinhphuc.gov.vn");
        let trust = province.trust();
        let path = Path::new("b.snap");
        let refused =
            |signer: BackupSigner| match open(path, &encode(&backup(), &signer).unwrap(), &trust) {
                Err(BackupError::Signature { why, .. }) => why,
                other => panic!("opened: {other:?}"),
            };
        let mut elsewhere = Province::new("vinhphuc.gov.vn");
        let why = refused(elsewhere.signer());
        assert!(why.contains("not issued by the province CA"), "{why}");
        let admin = province.issue(PROVINCE, Role::Admin, "ops");
        let why = refused(BackupSigner::new(&admin).unwrap());
        assert!(why.contains("only a registry server"), "{why}");
        let other_agency = province.issue("000.00.12.H62", Role::Registry, "r1");
        let why = refused(BackupSigner::new(&other_agency).unwrap());
        assert!(why.contains("not of the province's registry"), "{why}");
        // Taken when the signer's certificate was not valid yet.
        let mut early = backup();
        early.taken_unix_ms -= 24 * 3600 * 1000;
        match open(path, &encode(&early, &province.signer()).unwrap(), &trust) {
            Err(BackupError::Signature { why, .. }) => {
                assert!(why.contains("not valid when"), "{why}")
            }
            other => panic!("opened: {other:?}"),
        }
    }

    #[test]
    fn a_backup_whose_signer_was_revoked_since_is_refused_saying_what_to_do() {
        let mut province = Province::new("vinhphuc.gov.vn");
        let creds = province.issue(PROVINCE, Role::Registry, "registry-1");
        let file = encode(&backup(), &BackupSigner::new(&creds).unwrap()).unwrap();
        let serial = lgsp_certs::inspect::CertInfo::from_der(&creds.chain[0], Path::new("c"))
            .unwrap()
            .serial;
        province
            .ca
            .revoke(
                &serial,
                lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
            )
            .unwrap();
        let trust = province.trust();
        let Revocation::Crl { der, .. } = &trust.revocation else {
            unreachable!()
        };
        let number = lgsp_certs::inspect::CrlInfo::from_der(der, Path::new("crl"))
            .unwrap()
            .number
            .unwrap();
        match open(Path::new("old.snap"), &file, &trust) {
            Err(e @ BackupError::Revoked { .. }) => {
                let why = e.to_string();
                assert!(why.contains(&format!("serial {serial}")), "{why}");
                assert!(why.contains(&format!("CRL number {number}")), "{why}");
                assert!(why.contains("Do not restore it"), "{why}");
            }
            other => panic!("a revoked signer's backup was opened: {other:?}"),
        }
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
        let file = encode(&backup(), &Province::new("vinhphuc.gov.vn").signer()).unwrap();
        write_file(&path, &file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), file);
        let mut damaged = file.clone();
        damaged[MAGIC.len()] ^= 1;
        assert!(write_file(&path, &damaged).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), file, "the old file stays");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! Appending to the log: the [`SharingLog`] that chains and buffers entries, the
//! [`Signer`] that seals them with the node's key, the recovery of a log whose last line
//! was torn by a crash, and the sealer task.

use crate::certificate::{first_certificate, public_key_point};
use crate::error::{AuditError, io_err};
use crate::format::{
    Exchange, ExchangeFields, ExportHeader, GENESIS, SEAL_PREFIX, SEAL_VERSION, Seal, SealLine,
    decode_entry, decode_seal, encode_with_fields,
};
use crate::timestamp::now_rfc3339;
use lgsp_certs::inspect::{CertInfo, pem_blocks};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The log's file name inside the node's data directory.
pub const LOG_FILE: &str = "sharing-log.jsonl";

/// How often the sealer seals at the most: a crash loses at most this much of the log,
/// and an unsealed stretch is never longer.
pub const SEAL_INTERVAL: Duration = Duration::from_secs(1);

/// The node's key and identity, for signing seals.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    spiffe_id: String,
    /// SHA-256 of the certificate's DER, lower-case hex: seals name the certificate
    /// that checks them, and sign that name.
    cert_sha256: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The node's PKCS#8 ECDSA P-256 key (`PRIVATE KEY` PEM, as lgsp writes it) and its
    /// certificate. Fails with [`AuditError::Key`] when the key is of another kind, the
    /// certificate carries no SPIFFE ID, or the key is not the certificate's.
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, AuditError> {
        let key_err = |what: &str| AuditError::Key(what.to_owned());
        let key_der = pem_blocks(key_pem)
            .map_err(|e| AuditError::Key(e.to_string()))?
            .into_iter()
            .find(|(label, _)| label == "PRIVATE KEY")
            .ok_or_else(|| key_err("the key file holds no private key"))?
            .1;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der, &rng)
            .map_err(|e| AuditError::Key(format!("not a PKCS#8 ECDSA P-256 key ({e})")))?;
        let cert_der = first_certificate(cert_pem).map_err(|e| AuditError::Key(e.to_string()))?;
        let info = CertInfo::from_der(&cert_der, Path::new("<node certificate>"))
            .map_err(|e| AuditError::Key(e.to_string()))?;
        let spiffe_id = info
            .spiffe_id
            .map_err(|why| AuditError::Key(format!("the node certificate: {why}")))?
            .to_string();
        let point = public_key_point(&cert_der).map_err(|e| AuditError::Key(e.to_string()))?;
        if key.public_key().as_ref() != point.as_slice() {
            return Err(key_err("the key is not the node certificate's key"));
        }
        Ok(Self {
            key,
            rng,
            spiffe_id,
            cert_sha256: info.sha256,
        })
    }

    /// The SPIFFE ID seals name as their signer.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// A version 2 seal of entry `seq` whose hash is `head`, signed now.
    fn seal(&self, seq: u64, head: &str) -> Result<Seal, AuditError> {
        let mut seal = Seal {
            v: Some(SEAL_VERSION),
            seq,
            head: head.to_owned(),
            time: now_rfc3339(),
            signer: self.spiffe_id.clone(),
            cert: Some(self.cert_sha256.clone()),
            signature: String::new(),
        };
        self.sign(&mut seal)?;
        Ok(seal)
    }

    /// Names this node and its certificate in an export header and signs it
    /// (version 2): sets `signer`, `cert` and `signature`.
    pub(crate) fn sign_export(&self, header: &mut ExportHeader) -> Result<(), AuditError> {
        header.signer = Some(self.spiffe_id.clone());
        header.cert = Some(self.cert_sha256.clone());
        header.signature = None;
        let signature = self
            .key
            .sign(&self.rng, &header.message())
            .map_err(|_| AuditError::Key("ECDSA signing failed".into()))?;
        header.signature = Some(hex::encode(signature.as_ref()));
        Ok(())
    }

    /// Sets `seal.signature` to this key's signature over [`Seal::message`].
    pub(crate) fn sign(&self, seal: &mut Seal) -> Result<(), AuditError> {
        let signature = self
            .key
            .sign(&self.rng, &seal.message())
            .map_err(|_| AuditError::Key("ECDSA signing failed".into()))?;
        seal.signature = hex::encode(signature.as_ref());
        Ok(())
    }
}

/// Where the writer stands: the next entry's number and the chain head.
struct Writer {
    out: BufWriter<File>,
    next_seq: u64,
    head: String,
    /// The last sealed entry; 0 when none is known to be.
    sealed: u64,
    /// The last seal written, or read back when the log was opened: what the
    /// node anchors outside itself.
    last_seal: Option<Seal>,
    /// Why writing stopped: after a failed write the file's end is unknown, and another
    /// line would be glued to a torn one.
    stopped: Option<String>,
}

/// The node's sharing log, open for appending. Share it with `Arc`; appends from many
/// tasks are serialized by an internal lock.
pub struct SharingLog {
    path: PathBuf,
    signer: Signer,
    /// A second handle on the file, so `fsync` runs without holding the writer's lock.
    sync: File,
    writer: Mutex<Writer>,
}

impl fmt::Debug for SharingLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharingLog")
            .field("path", &self.path)
            .field("signer", &self.signer.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl SharingLog {
    /// Opens `<dir>/sharing-log.jsonl`, creating the directory and the file when missing.
    ///
    /// An existing log is continued from its last line. A final line without its newline
    /// (a crash mid-write) is cut off with a warning. Fails with [`AuditError::BadTail`] when
    /// the last complete line is not a valid entry or seal: that is not a crash but damage,
    /// for `lgsp audit verify` to explain.
    pub fn open(dir: &Path, signer: Signer) -> Result<SharingLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let tail = recover(&mut file, &path)?;
        let sync = file.try_clone().map_err(io_err(&path))?;
        Ok(SharingLog {
            signer,
            sync,
            writer: Mutex::new(Writer {
                out: BufWriter::with_capacity(64 * 1024, file),
                next_seq: tail.next_seq,
                head: tail.head,
                sealed: tail.sealed,
                last_seal: tail.last_seal,
                stopped: None,
            }),
            path,
        })
    }

    /// The log file, `<dir>/sharing-log.jsonl`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<MutexGuard<'_, Writer>, AuditError> {
        // Nothing panics while holding the lock; if something did, the state is still
        // whole lines, and `stopped` covers a write cut short.
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        match &writer.stopped {
            Some(why) => Err(AuditError::Stopped(why.clone())),
            None => Ok(writer),
        }
    }

    fn write(&self, writer: &mut Writer, bytes: &[u8]) -> Result<(), AuditError> {
        writer.out.write_all(bytes).map_err(|e| {
            writer.stopped = Some(e.to_string());
            io_err(&self.path)(e)
        })
    }

    /// Appends an entry for `exchange` and returns its sequence number. The line goes to
    /// a buffer; [`seal`](Self::seal) (run every second by the sealer) writes it out.
    /// Fails with [`AuditError::Io`] when the write fails, and with
    /// [`AuditError::Stopped`] on every call after one did.
    pub fn append(&self, exchange: Exchange) -> Result<u64, AuditError> {
        let fields = ExchangeFields::of(&exchange);
        let mut writer = self.lock()?;
        let seq = writer.next_seq;
        // The time is read under the lock, so that times follow the chain's order.
        let (line, hash) = encode_with_fields(seq, &now_rfc3339(), &fields, &writer.head);
        self.write(&mut writer, &line)?;
        writer.next_seq += 1;
        writer.head = hash;
        Ok(seq)
    }

    /// Writes out the buffered entries, signs a seal over the newest one if it is not
    /// sealed yet, and syncs the file to disk. Returns the entry sealed, or `None` when
    /// there was nothing new. Fails as [`append`](Self::append) does, with
    /// [`AuditError::Io`] when the sync fails, and with [`AuditError::Key`] when
    /// signing does.
    pub fn seal(&self) -> Result<Option<u64>, AuditError> {
        let sealed = {
            let mut writer = self.lock()?;
            let last = writer.next_seq - 1;
            let sealed = if last > writer.sealed {
                let seal = self.signer.seal(last, &writer.head)?;
                let mut line = serde_json::to_vec(&SealLine { seal: seal.clone() })
                    .expect("a seal of strings and integers always serializes");
                line.push(b'\n');
                self.write(&mut writer, &line)?;
                writer.sealed = last;
                writer.last_seal = Some(seal);
                Some(last)
            } else {
                None
            };
            if let Err(e) = writer.out.flush() {
                writer.stopped = Some(e.to_string());
                return Err(io_err(&self.path)(e));
            }
            sealed
        };
        if let Err(e) = self.sync.sync_data() {
            // After a failed fsync the kernel may have dropped the pages: what is on disk
            // is unknown, so stop rather than chain onto it.
            let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer.stopped = Some(e.to_string());
            return Err(io_err(&self.path)(e));
        }
        Ok(sealed)
    }

    /// The newest seal in the file: the last one written, or the one the file
    /// ended with when it was opened; `None` before the first. A seal is
    /// returned only once the file holds it (after its write), though it may
    /// not be synced yet: call [`seal`](Self::seal) first to anchor what is
    /// on disk.
    pub fn last_seal(&self) -> Option<Seal> {
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer.last_seal.clone()
    }

    /// Seals every `every` (at most [`SEAL_INTERVAL`], so at least once a second) until
    /// `shutdown` turns true or its sender is dropped, then seals once more and returns.
    /// Failures are logged; the task keeps trying.
    pub fn spawn_sealer(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let every = every.clamp(Duration::from_millis(1), SEAL_INTERVAL);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if *shutdown.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    _ = ticks.tick() => self.seal_in_background().await,
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
            self.seal_in_background().await;
        })
    }

    async fn seal_in_background(self: &Arc<Self>) {
        let log = Arc::clone(self);
        match tokio::task::spawn_blocking(move || log.seal()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot seal the sharing log"),
            Err(error) => tracing::error!(%error, "the sharing log sealer panicked"),
        }
    }
}

impl Drop for SharingLog {
    /// Seals what is not sealed yet, so that a log closed in an orderly way ends with a
    /// seal and `lgsp audit verify` can tell it whole from one cut short.
    fn drop(&mut self) {
        match self.seal() {
            Ok(_) | Err(AuditError::Stopped(_)) => {}
            Err(error) => tracing::error!(%error, "cannot seal the sharing log on closing"),
        }
    }
}

/// Where an existing log ends.
struct Tail {
    next_seq: u64,
    head: String,
    sealed: u64,
    last_seal: Option<Seal>,
}

/// Finds the chain head from the file's last line, cutting off a torn final line.
fn recover(file: &mut File, path: &Path) -> Result<Tail, AuditError> {
    let fresh = Tail {
        next_seq: 1,
        head: GENESIS.to_owned(),
        sealed: 0,
        last_seal: None,
    };
    let len = file.metadata().map_err(io_err(path))?.len();
    let complete = rfind_newline(file, len)
        .map_err(io_err(path))?
        .map_or(0, |p| p + 1);
    if complete < len {
        tracing::warn!(
            path = %path.display(),
            bytes = len - complete,
            "the sharing log ends in a torn line, left by a crash while writing; cutting it off"
        );
        file.set_len(complete).map_err(io_err(path))?;
    }
    if complete == 0 {
        return Ok(fresh);
    }
    let end = complete - 1;
    let start = rfind_newline(file, end)
        .map_err(io_err(path))?
        .map_or(0, |p| p + 1);
    let mut line = vec![0; (end - start) as usize];
    file.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
    file.read_exact(&mut line).map_err(io_err(path))?;
    let bad_tail = |e: AuditError| AuditError::BadTail {
        path: path.to_owned(),
        why: match e {
            AuditError::Tampered { why, .. } => why,
            other => other.to_string(),
        },
    };
    if line.starts_with(SEAL_PREFIX) {
        let seal = decode_seal(&line, 0).map_err(bad_tail)?;
        Ok(Tail {
            next_seq: seal.seq + 1,
            head: seal.head.clone(),
            sealed: seal.seq,
            last_seal: Some(seal),
        })
    } else {
        let entry = decode_entry(&line, 0).map_err(bad_tail)?;
        Ok(Tail {
            next_seq: entry.seq + 1,
            head: entry.hash,
            sealed: 0,
            last_seal: None,
        })
    }
}

/// The position of the last `\n` before `end`, reading backwards in chunks.
fn rfind_newline(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 8 * 1024;
    let mut buf = vec![0; CHUNK as usize];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        let chunk = &mut buf[..(hi - lo) as usize];
        file.seek(SeekFrom::Start(lo))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, exchange, sealed_log};

    #[test]
    fn torn_last_line_is_cut_off_on_reopen_and_the_chain_continues() {
        let f = Fixture::new("torn");
        sealed_log(&f);
        let log = f.open();
        log.append(exchange(11)).unwrap();
        drop(log); // sealed on closing
        let whole = std::fs::read(f.path()).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":12,\"time\":\"2025-");
        std::fs::write(f.path(), &torn).unwrap();

        let report = f.verify().unwrap();
        assert!(report.partial_last_line);
        assert_eq!((report.entries, report.last_sealed), (11, Some(11)));

        let log = f.open();
        assert_eq!(std::fs::read(f.path()).unwrap(), whole, "torn line cut off");
        assert_eq!(log.append(exchange(12)).unwrap(), 12);
        assert_eq!(log.seal().unwrap(), Some(12));
        drop(log);
        let report = f.verify().unwrap();
        assert_eq!(
            (report.entries, report.last_sealed, report.partial_last_line),
            (12, Some(12), false)
        );
    }

    #[test]
    fn reopening_after_a_seal_continues_the_numbering() {
        let f = Fixture::new("reopen");
        sealed_log(&f);
        let log = f.open();
        assert_eq!(log.seal().unwrap(), None, "the last line is a seal");
        assert_eq!(log.append(exchange(11)).unwrap(), 11);
        log.seal().unwrap();
        drop(log);
        assert_eq!(f.verify().unwrap().entries, 11);
    }

    #[test]
    fn damaged_last_line_refuses_to_open() {
        let f = Fixture::new("damaged");
        sealed_log(&f);
        let mut lines = f.lines();
        lines[10] = lines[10].replace("\"OK\"", "\"NOT_FOUND\"");
        lines.truncate(11);
        f.write_lines(&lines);
        let signer = Signer::from_pem(&f.key, &f.cert).unwrap();
        match SharingLog::open(&f.dir(), signer) {
            Err(AuditError::BadTail { why, .. }) => {
                assert_eq!(why, "hash does not match its content")
            }
            other => panic!("expected BadTail, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_appends_form_one_valid_chain() {
        let f = Fixture::new("concurrent");
        let log = Arc::new(f.open());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for n in 0..250 {
                        log.append(exchange(t * 1000 + n)).unwrap();
                        if n % 50 == 0 {
                            log.seal().unwrap();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        log.seal().unwrap();
        let report = f.verify().unwrap();
        assert_eq!(report.entries, 2000);
        assert_eq!((report.last_sealed, report.unsealed), (Some(2000), 0));
    }

    #[tokio::test]
    async fn sealer_seals_while_running_and_on_shutdown() {
        let f = Fixture::new("sealer");
        let log = Arc::new(f.open());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let sealer = Arc::clone(&log).spawn_sealer(Duration::from_millis(10), shutdown);
        log.append(exchange(1)).unwrap();
        for _ in 0..200 {
            if f.verify().unwrap().last_sealed == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.verify().unwrap().last_sealed, Some(1));
        log.append(exchange(2)).unwrap();
        stop.send(true).unwrap();
        sealer.await.unwrap();
        let report = f.verify().unwrap();
        assert_eq!((report.last_sealed, report.unsealed), (Some(2), 0));
    }

    #[test]
    fn closing_the_log_seals_what_is_not_sealed_yet() {
        let f = Fixture::new("close-seals");
        sealed_log(&f);
        let log = f.open();
        log.append(exchange(11)).unwrap();
        log.append(exchange(12)).unwrap();
        drop(log);
        assert!(
            f.lines()
                .last()
                .unwrap()
                .starts_with("{\"seal\":{\"v\":2,\"seq\":12,")
        );
        let report = f.verify().unwrap();
        assert_eq!((report.last_sealed, report.unsealed), (Some(12), 0));
        // Closing again with nothing new adds no seal.
        let before = f.lines().len();
        drop(f.open());
        assert_eq!(f.lines().len(), before);
    }

    #[test]
    fn signer_refuses_a_key_of_another_certificate() {
        let a = Fixture::new("signer-a");
        let b = Fixture::new("signer-b");
        match Signer::from_pem(&a.key, &b.cert) {
            Err(AuditError::Key(why)) => {
                assert_eq!(why, "the key is not the node certificate's key")
            }
            other => panic!("expected a key error, got {other:?}"),
        }
        let signer = Signer::from_pem(&a.key, &a.cert).unwrap();
        assert_eq!(
            signer.spiffe_id(),
            "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1"
        );
    }

    #[test]
    fn log_holding_only_a_torn_line_restarts_at_entry_one() {
        let f = Fixture::new("torn-only");
        std::fs::create_dir_all(f.dir()).unwrap();
        std::fs::write(f.path(), b"{\"seq\":1,\"time\":\"2025-03-01T0").unwrap();
        let log = f.open();
        assert!(
            std::fs::read(f.path()).unwrap().is_empty(),
            "torn line cut off"
        );
        assert_eq!(log.append(exchange(1)).unwrap(), 1);
        assert_eq!(log.seal().unwrap(), Some(1));
        drop(log);
        let entry: crate::Entry = serde_json::from_str(&f.lines()[0]).unwrap();
        assert_eq!(entry.prev, GENESIS);
        assert_eq!(f.verify().unwrap().last_sealed, Some(1));
    }

    #[test]
    fn entries_written_are_stamped_with_the_time_in_utc_milliseconds() {
        let f = Fixture::new("stamp");
        let log = f.open();
        log.append(exchange(1)).unwrap();
        log.seal().unwrap();
        drop(log);
        let entry: crate::Entry = serde_json::from_str(&f.lines()[0]).unwrap();
        let written = crate::timestamp::parse_time(&entry.time).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (0..60_000).contains(&(now - written)),
            "{} vs now",
            entry.time
        );
        assert!(
            entry.time.ends_with('Z') && entry.time.len() == 24,
            "{}",
            entry.time
        );
    }
}

//! The sharing log (nhật ký chia sẻ dữ liệu, D47 Art. 45): one line for every data
//! exchange this node takes part in, on the provider side and on the consumer side,
//! so that an auditor can tell afterwards who asked for what, when, and what came of it.
//!
//! The log is an append-only JSON Lines file, `<dir>/sharing-log.jsonl`, rather than a
//! database: auditors can read and ship it while the node runs, and a changed byte is
//! found by its line. It holds two kinds of line.
//!
//! - An **entry**, `{"seq":1,"time":"…","request_id":"…",…,"prev":"…","hash":"…"}`, with
//!   the fields in the order of [`Entry`]. `hash` is the SHA-256 (lower-case hex) of the
//!   entry's *canonical form*: the compact JSON object of every field but `hash`, in that
//!   order, as serde_json writes it (no whitespace, non-ASCII text as raw UTF-8, only `"`,
//!   `\` and control characters escaped). That is exactly the line with its final
//!   `,"hash":"…"` member removed, so the hash covers every byte of the line. `prev` is the
//!   previous entry's hash (64 zeros for entry 1): the entries form a chain.
//! - A **seal**, `{"seal":{"seq":N,"head":"…","time":"…","signature":"…","signer":"…"}}`,
//!   written at least once a second when entries were added: the node's ECDSA P-256
//!   signature (SHA-256, fixed-width `r‖s`, hex) over `"lgsp-sharing-log-seal\n" + N + "\n" +
//!   head`, where `head` is the hash of entry N. Anyone who edits the file can recompute the
//!   chain; nobody without the node's key can make a seal, so an edit to a sealed entry is
//!   found even when every hash after it was recomputed.
//!
//! What the file alone cannot show is its end cut off, seals included: ship the log off the
//! node (`lgsp audit export`) to guard against that.

use lgsp_certs::inspect::{CertInfo, pem_blocks};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The log's file name inside the node's data directory.
pub const LOG_FILE: &str = "sharing-log.jsonl";

/// The `prev` of entry 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How often the sealer seals at the most: a crash loses at most this much of the log,
/// and an unsealed stretch is never longer.
pub const SEAL_INTERVAL: Duration = Duration::from_secs(1);

/// What a seal's signature covers, before the sequence number and the head.
const SEAL_CONTEXT: &str = "lgsp-sharing-log-seal\n";

/// Everything the sharing log can fail at or find wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log was changed after it was written: `line` counts from 1, `seq` is the entry
    /// the line holds when it is an entry that could be read.
    #[error("line {line}{}: {why}", entry_note(.seq))]
    Tampered {
        line: usize,
        seq: Option<u64>,
        why: String,
    },
    #[error(
        "{path}: the last line is not a valid entry or seal ({why}); run `lgsp audit verify --log {path}` to see what happened"
    )]
    BadTail { path: PathBuf, why: String },
    #[error("cannot sign the sharing log: {0}")]
    Key(String),
    #[error("cannot check the seals with this certificate: {0}")]
    Cert(String),
    #[error(
        "malformed time {0:?}: expected RFC 3339 (2025-03-01T08:00:00+07:00) or a date (2025-03-01, a whole day in UTC)"
    )]
    BadTime(String),
    #[error("the time range is empty: {from} is after {to}")]
    EmptyRange { from: String, to: String },
    #[error("the sharing log stopped after a write failed ({0}); restart the node to reopen it")]
    Stopped(String),
}

fn entry_note(seq: &Option<u64>) -> String {
    seq.map(|s| format!(" (entry {s})")).unwrap_or_default()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One exchange as the node saw it: what the caller of [`SharingLog::append`] provides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// The request id that crosses nodes (and appears in `tracing` spans).
    pub request_id: String,
    /// `"provider"` when this node served the call, `"consumer"` when it made it.
    pub side: String,
    /// The consumer's agency code (QCVN 102), from its certificate.
    pub consumer: String,
    /// The provider's agency code.
    pub provider: String,
    /// The service id.
    pub service: String,
    pub operation: String,
    /// SHA-256 of the request message, lower-case hex.
    pub request_sha256: String,
    /// SHA-256 of the response (all of it, for a stream), lower-case hex.
    pub response_sha256: String,
    /// The gRPC status code name: `OK`, `PERMISSION_DENIED`...
    pub status: String,
    pub latency_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// An entry as read back from the log; the field order is the canonical one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds: `2025-03-01T01:02:03.456Z`.
    pub time: String,
    pub request_id: String,
    pub side: String,
    pub consumer: String,
    pub provider: String,
    pub service: String,
    pub operation: String,
    pub request_sha256: String,
    pub response_sha256: String,
    pub status: String,
    pub latency_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub prev: String,
    pub hash: String,
}

/// The canonical form of an entry: [`Entry`] without `hash`. serde writes a flattened
/// struct's fields in place, so the order is the same as [`Entry`]'s. The log writes
/// these bytes with [`encode_with_fields`]; this is the definition it is tested against.
#[cfg(test)]
#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    time: &'a str,
    #[serde(flatten)]
    exchange: &'a Exchange,
    prev: &'a str,
}

/// A seal: the node's signature over the chain up to entry `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub seq: u64,
    /// The hash of entry `seq`.
    pub head: String,
    pub time: String,
    /// ECDSA P-256 SHA-256, fixed-width `r‖s`, lower-case hex.
    pub signature: String,
    /// The SPIFFE ID of the node that signed.
    pub signer: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealLine {
    seal: Seal,
}

const SEAL_PREFIX: &[u8] = b"{\"seal\":";

fn seal_message(seq: u64, head: &str) -> String {
    format!("{SEAL_CONTEXT}{seq}\n{head}")
}

/// The entry line for `exchange` as entry `seq` after `prev`, with its newline, and its hash.
#[cfg(test)]
fn encode_entry(seq: u64, time: &str, exchange: &Exchange, prev: &str) -> (Vec<u8>, String) {
    encode_with_fields(seq, time, &ExchangeFields::of(exchange), prev)
}

/// An exchange as the JSON members of its entry line (without braces): the
/// part of the line known before its place in the chain, written outside
/// the log's lock.
struct ExchangeFields(Vec<u8>);

impl ExchangeFields {
    fn of(exchange: &Exchange) -> Self {
        let mut object = serde_json::to_vec(exchange)
            .expect("an entry of strings and integers always serializes");
        object.pop(); // `}`
        object.remove(0); // `{`
        Self(object)
    }
}

/// The bytes serde_json writes for [`Canonical`], put together from their
/// parts (a unit test holds the two equal): `{"seq":..,"time":..,` the
/// exchange's members `,"prev":..}`.
fn encode_with_fields(
    seq: u64,
    time: &str,
    fields: &ExchangeFields,
    prev: &str,
) -> (Vec<u8>, String) {
    let mut line = Vec::with_capacity(fields.0.len() + time.len() + prev.len() + 120);
    line.extend_from_slice(b"{\"seq\":");
    line.extend_from_slice(seq.to_string().as_bytes());
    line.extend_from_slice(b",\"time\":");
    serde_json::to_writer(&mut line, time).expect("a string always serializes");
    line.push(b',');
    line.extend_from_slice(&fields.0);
    line.extend_from_slice(b",\"prev\":");
    serde_json::to_writer(&mut line, prev).expect("a string always serializes");
    line.push(b'}');
    let hash = hex::encode(Sha256::digest(&line));
    line.pop(); // the closing brace
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// Reads an entry line (without its newline) and checks its hash against its bytes.
fn decode_entry(line: &[u8], number: usize) -> Result<Entry, AuditError> {
    let entry: Entry = serde_json::from_slice(line).map_err(|e| not_json(number, &e))?;
    let tampered = |why: &str| AuditError::Tampered {
        line: number,
        seq: Some(entry.seq),
        why: why.to_owned(),
    };
    let suffix = format!(",\"hash\":\"{}\"}}", entry.hash);
    let Some(body) = line.strip_suffix(suffix.as_bytes()) else {
        return Err(tampered(
            "not in the form lgsp writes (`hash` must be the last field, with nothing after it)",
        ));
    };
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    if hex::encode(hasher.finalize()) != entry.hash {
        return Err(tampered("hash does not match its content"));
    }
    Ok(entry)
}

fn decode_seal(line: &[u8], number: usize) -> Result<Seal, AuditError> {
    serde_json::from_slice::<SealLine>(line)
        .map(|l| l.seal)
        .map_err(|e| not_json(number, &e))
}

fn not_json(number: usize, error: &serde_json::Error) -> AuditError {
    let why = if error.is_data() {
        format!("not a valid entry or seal ({error})")
    } else {
        format!("not valid JSON ({error})")
    };
    AuditError::Tampered {
        line: number,
        seq: None,
        why,
    }
}

/// The node's key and identity, for signing seals.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    spiffe_id: String,
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
        })
    }

    /// The SPIFFE ID seals name as their signer.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    fn sign(&self, seq: u64, head: &str) -> Result<String, AuditError> {
        let signature = self
            .key
            .sign(&self.rng, seal_message(seq, head).as_bytes())
            .map_err(|_| AuditError::Key("ECDSA signing failed".into()))?;
        Ok(hex::encode(signature.as_ref()))
    }
}

fn certificates(pem: &str) -> Result<Vec<Vec<u8>>, AuditError> {
    let blocks = pem_blocks(pem).map_err(|e| AuditError::Cert(e.to_string()))?;
    Ok(blocks
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| der)
        .collect())
}

fn first_certificate(pem: &str) -> Result<Vec<u8>, AuditError> {
    certificates(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| AuditError::Cert("the PEM holds no CERTIFICATE".into()))
}

/// Splits one DER element off `input`: its tag, its content and what follows it.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The uncompressed EC point (65 bytes, `04‖x‖y`) of a P-256 certificate's public key.
///
/// Walks the DER to the SubjectPublicKeyInfo, the seventh field of TBSCertificate
/// (counting the optional version), rather than searching for byte patterns.
fn public_key_point(cert_der: &[u8]) -> Result<Vec<u8>, AuditError> {
    const SEQUENCE: u8 = 0x30;
    const BIT_STRING: u8 = 0x03;
    const VERSION: u8 = 0xa0;
    // AlgorithmIdentifier content: id-ecPublicKey, prime256v1.
    const EC_P256: &[u8] = &[
        0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
        0x3d, 0x03, 0x01, 0x07,
    ];
    let bad = |why: &str| AuditError::Cert(why.to_owned());
    let malformed = || bad("malformed certificate DER");
    let (tag, cert, _) = der_next(cert_der).ok_or_else(malformed)?;
    let (tbs_tag, tbs, _) = der_next(cert).ok_or_else(malformed)?;
    if tag != SEQUENCE || tbs_tag != SEQUENCE {
        return Err(malformed());
    }
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = der_next(rest).ok_or_else(malformed)?.2;
    }
    // serial, signature algorithm, issuer, validity, subject
    for _ in 0..5 {
        rest = der_next(rest).ok_or_else(malformed)?.2;
    }
    let (spki_tag, spki, _) = der_next(rest).ok_or_else(malformed)?;
    let (alg_tag, alg, after_alg) = der_next(spki).ok_or_else(malformed)?;
    if spki_tag != SEQUENCE || alg_tag != SEQUENCE {
        return Err(malformed());
    }
    if alg != EC_P256 {
        return Err(bad("the certificate's key is not ECDSA P-256"));
    }
    match der_next(after_alg) {
        Some((BIT_STRING, [0x00, point @ ..], _)) if point.len() == 65 && point[0] == 0x04 => {
            Ok(point.to_vec())
        }
        _ => Err(bad(
            "the certificate's P-256 key is not an uncompressed point",
        )),
    }
}

/// Where the writer stands: the next entry's number and the chain head.
struct Writer {
    out: BufWriter<File>,
    next_seq: u64,
    head: String,
    /// The last sealed entry; 0 when none is known to be.
    sealed: u64,
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
                stopped: None,
            }),
            path,
        })
    }

    /// The log file.
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
    /// there was nothing new.
    pub fn seal(&self) -> Result<Option<u64>, AuditError> {
        let sealed = {
            let mut writer = self.lock()?;
            let last = writer.next_seq - 1;
            let sealed = if last > writer.sealed {
                let seal = Seal {
                    seq: last,
                    head: writer.head.clone(),
                    time: now_rfc3339(),
                    signature: self.signer.sign(last, &writer.head)?,
                    signer: self.signer.spiffe_id.clone(),
                };
                let mut line = serde_json::to_vec(&SealLine { seal })
                    .expect("a seal of strings and integers always serializes");
                line.push(b'\n');
                self.write(&mut writer, &line)?;
                writer.sealed = last;
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

/// Where an existing log ends.
struct Tail {
    next_seq: u64,
    head: String,
    sealed: u64,
}

/// Finds the chain head from the file's last line, cutting off a torn final line.
fn recover(file: &mut File, path: &Path) -> Result<Tail, AuditError> {
    let fresh = Tail {
        next_seq: 1,
        head: GENESIS.to_owned(),
        sealed: 0,
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
            head: seal.head,
            sealed: seal.seq,
        })
    } else {
        let entry = decode_entry(&line, 0).map_err(bad_tail)?;
        Ok(Tail {
            next_seq: entry.seq + 1,
            head: entry.hash,
            sealed: 0,
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

/// What [`verify`] found in a log that is intact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub seals: u64,
    /// The newest entry a seal covers.
    pub last_sealed: Option<u64>,
    /// Entries after the last seal: not yet sealed (the node seals every second), so an
    /// edit to them is found only by the hash chain.
    pub unsealed: u64,
    /// The file ends in a line without its newline: one being written, or left by a crash.
    /// It is not checked.
    pub partial_last_line: bool,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sharing log OK: {} {}, {} {}",
            group(self.entries),
            plural(self.entries, "entry", "entries"),
            group(self.seals),
            plural(self.seals, "seal", "seals"),
        )?;
        if let Some(last) = self.last_sealed {
            write!(f, ", last sealed entry {}", group(last))?;
        }
        match (self.unsealed, self.last_sealed) {
            (0, _) => {}
            (1, Some(_)) => write!(f, "; 1 entry after the last seal is not yet sealed")?,
            (n, Some(_)) => write!(
                f,
                "; {} entries after the last seal are not yet sealed",
                group(n)
            )?,
            (1, None) => write!(f, "; the 1 entry is not yet sealed")?,
            (n, None) => write!(f, "; none of the {} entries is sealed yet", group(n))?,
        }
        if self.partial_last_line {
            write!(
                f,
                "; the last line is incomplete (being written, or torn by a crash) and was not checked"
            )?;
        }
        Ok(())
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let head = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = digits[..head].to_owned();
    for chunk in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).expect("ASCII digits"));
    }
    out
}

/// Reads a log's lines with their numbers (from 1), without the newline. A final line
/// without its newline is reported apart, unread.
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    number: usize,
    path: PathBuf,
}

enum Line<'a> {
    Complete(usize, &'a [u8]),
    Partial,
    End,
}

impl<R: BufRead> Lines<R> {
    fn next_line(&mut self) -> Result<Line<'_>, AuditError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(io_err(&self.path))?;
        if n == 0 {
            return Ok(Line::End);
        }
        if self.buf.last() != Some(&b'\n') {
            return Ok(Line::Partial);
        }
        self.number += 1;
        self.buf.pop();
        Ok(Line::Complete(self.number, &self.buf))
    }
}

fn open_lines(path: &Path) -> Result<Lines<BufReader<File>>, AuditError> {
    let file = File::open(path).map_err(io_err(path))?;
    Ok(Lines {
        reader: BufReader::with_capacity(256 * 1024, file),
        buf: Vec::new(),
        number: 0,
        path: path.to_owned(),
    })
}

/// Checks a whole log: every entry's hash against its bytes, the numbering and the
/// `prev` links, and every seal's signature with the public key of a certificate in
/// `cert_pem` (give several when the node's key was renewed; any may have signed).
///
/// Returns what was found when the log is intact, and fails with
/// [`AuditError::Tampered`] naming the first line that is not.
pub fn verify(path: &Path, cert_pem: &str) -> Result<VerifyReport, AuditError> {
    let keys = certificates(cert_pem)?
        .iter()
        .map(|der| public_key_point(der))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(AuditError::Cert("the PEM holds no CERTIFICATE".into()));
    }
    let mut lines = open_lines(path)?;
    let mut report = VerifyReport::default();
    let mut last_seq = 0u64;
    let mut head = GENESIS.to_owned();
    loop {
        let (number, line) = match lines.next_line()? {
            Line::Complete(number, line) => (number, line),
            Line::Partial => {
                report.partial_last_line = true;
                break;
            }
            Line::End => break,
        };
        let tampered = |seq: Option<u64>, why: String| AuditError::Tampered {
            line: number,
            seq,
            why,
        };
        if line.starts_with(SEAL_PREFIX) {
            let seal = decode_seal(line, number)?;
            if last_seq == 0 {
                return Err(tampered(
                    None,
                    format!("seal of entry {} comes before any entry", seal.seq),
                ));
            }
            if seal.seq != last_seq {
                return Err(tampered(
                    None,
                    format!("seal names entry {} but follows entry {last_seq}", seal.seq),
                ));
            }
            if seal.head != head {
                return Err(tampered(
                    None,
                    format!(
                        "seal's head does not match the hash of entry {last_seq} (entries before it were changed and their hashes recomputed)"
                    ),
                ));
            }
            let message = seal_message(seal.seq, &seal.head);
            let signed = hex::decode(&seal.signature).is_ok_and(|signature| {
                keys.iter().any(|point| {
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                        .verify(message.as_bytes(), &signature)
                        .is_ok()
                })
            });
            if !signed {
                return Err(tampered(
                    None,
                    format!(
                        "seal of entry {} has a bad signature (not made by the key of the given certificate)",
                        seal.seq
                    ),
                ));
            }
            report.seals += 1;
            report.last_sealed = Some(seal.seq);
            continue;
        }
        let entry = decode_entry(line, number)?;
        let expected = last_seq + 1;
        if entry.seq > expected {
            return Err(tampered(
                Some(entry.seq),
                format!(
                    "entry {expected} missing: line {number} holds entry {}",
                    entry.seq
                ),
            ));
        }
        if entry.seq < expected {
            return Err(tampered(
                Some(entry.seq),
                format!(
                    "entry {} out of place: entry {expected} was expected here (entries reordered or repeated)",
                    entry.seq
                ),
            ));
        }
        if entry.prev != head {
            let why = match last_seq {
                0 => format!("entry 1 must have prev {GENESIS}"),
                n => format!(
                    "prev does not match the hash of entry {n} (entries reordered or removed)"
                ),
            };
            return Err(tampered(Some(entry.seq), why));
        }
        last_seq = entry.seq;
        head = entry.hash;
        report.entries += 1;
    }
    report.unsealed = last_seq - report.last_sealed.unwrap_or(0);
    Ok(report)
}

/// The time range of an export: both ends optional and inclusive, in milliseconds
/// since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl TimeRange {
    /// Reads the bounds a person gives: RFC 3339 (`2025-03-01T08:00:00+07:00`) or a date
    /// (`2025-03-01`: from the start of that day, or to its end, UTC). Fails with
    /// [`AuditError::BadTime`] naming a malformed bound, or [`AuditError::EmptyRange`].
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, AuditError> {
        let range = TimeRange {
            from_ms: from.map(|s| parse_bound(s, false)).transpose()?,
            to_ms: to.map(|s| parse_bound(s, true)).transpose()?,
        };
        if matches!((range.from_ms, range.to_ms), (Some(lo), Some(hi)) if lo > hi) {
            return Err(AuditError::EmptyRange {
                from: from.unwrap_or_default().to_owned(),
                to: to.unwrap_or_default().to_owned(),
            });
        }
        Ok(range)
    }

    fn contains(&self, ms: i64) -> bool {
        self.from_ms.is_none_or(|lo| lo <= ms) && self.to_ms.is_none_or(|hi| ms <= hi)
    }
}

/// Writes the entries (not the seals) whose time lies within `range` to `out` as the
/// log's own lines, byte for byte, so the receiver can re-check their hashes. Returns how
/// many entries were written.
///
/// Export does not verify the log; run [`verify`] for that. It fails with
/// [`AuditError::Tampered`] for a line whose time cannot be read. A final line without
/// its newline (being written) is left out.
pub fn export(path: &Path, range: &TimeRange, out: &mut impl Write) -> Result<u64, AuditError> {
    #[derive(Deserialize)]
    struct Timed<'a> {
        seq: u64,
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
    }
    let mut lines = open_lines(path)?;
    let mut written = 0;
    while let Line::Complete(number, line) = lines.next_line()? {
        if line.starts_with(SEAL_PREFIX) {
            continue;
        }
        let timed: Timed = serde_json::from_slice(line).map_err(|e| not_json(number, &e))?;
        let time = parse_time(&timed.time).ok_or_else(|| AuditError::Tampered {
            line: number,
            seq: Some(timed.seq),
            why: format!("malformed time {:?}", timed.time),
        })?;
        if !range.contains(time) {
            continue;
        }
        out.write_all(line)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(io_err(Path::new("<output>")))?;
        written += 1;
    }
    Ok(written)
}

const DAY_MS: i64 = 86_400_000;

/// Milliseconds since the Unix epoch of a bound: RFC 3339, or a date meaning its first
/// (`end_of_day` false) or last millisecond, UTC.
fn parse_bound(s: &str, end_of_day: bool) -> Result<i64, AuditError> {
    let s = s.trim();
    let bad = || AuditError::BadTime(s.to_owned());
    if s.len() == 10 {
        let day = parse_date(s).ok_or_else(bad)?;
        return Ok(day * DAY_MS + if end_of_day { DAY_MS - 1 } else { 0 });
    }
    parse_time(s).ok_or_else(bad)
}

/// Days since the Unix epoch of `YYYY-MM-DD`.
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`T` or a space between date
/// and time; fractions beyond milliseconds are cut).
fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let day = parse_date(s.get(..10)?)?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in tail[..n.min(3)].iter().enumerate() {
            millis += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &tail[n..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let seconds = day * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `2025-03-01T01:02:03.456Z` for milliseconds since the Unix epoch.
fn format_millis(ms: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY_MS));
    let in_day = ms.rem_euclid(DAY_MS);
    let (h, m, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    format_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_certs::{AgencyCode, CertificateAuthority, LeafSpec, Role, SpiffeId};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "lgsp-sharing-log-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A node key and certificate issued by a fresh CA: (key PEM, cert PEM).
    fn node_credentials(tmp: &TempDir) -> (String, String) {
        let mut ca =
            CertificateAuthority::init(&tmp.0.join("ca"), "vinhphuc.gov.vn", "CA tỉnh", 30)
                .unwrap();
        let id = SpiffeId::new(
            "vinhphuc.gov.vn",
            AgencyCode::new("000.00.12.H62").unwrap(),
            Role::Node,
            "node-1",
        )
        .unwrap();
        let issued = ca.issue(&LeafSpec::for_days(id, 30).unwrap()).unwrap();
        (issued.key_pem, issued.cert_pem)
    }

    struct Fixture {
        tmp: TempDir,
        key: String,
        cert: String,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let tmp = TempDir::new(name);
            let (key, cert) = node_credentials(&tmp);
            Self { tmp, key, cert }
        }

        fn dir(&self) -> PathBuf {
            self.tmp.0.join("data")
        }

        fn path(&self) -> PathBuf {
            self.dir().join(LOG_FILE)
        }

        fn open(&self) -> SharingLog {
            SharingLog::open(
                &self.dir(),
                Signer::from_pem(&self.key, &self.cert).unwrap(),
            )
            .unwrap()
        }

        fn verify(&self) -> Result<VerifyReport, AuditError> {
            verify(&self.path(), &self.cert)
        }

        fn lines(&self) -> Vec<String> {
            std::fs::read_to_string(self.path())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn write_lines(&self, lines: &[String]) {
            std::fs::write(self.path(), lines.join("\n") + "\n").unwrap();
        }
    }

    fn exchange(n: u64) -> Exchange {
        Exchange {
            request_id: format!("req-{n}"),
            side: "provider".into(),
            consumer: "000.00.12.H62".into(),
            provider: "000.00.15.H62".into(),
            service: "ho-tich/khai-sinh".into(),
            operation: "query".into(),
            request_sha256: hex::encode(Sha256::digest(format!("request {n}"))),
            response_sha256: hex::encode(Sha256::digest(format!("response {n}"))),
            status: "OK".into(),
            latency_us: 1234 + n,
            bytes_in: 100,
            bytes_out: 2048,
        }
    }

    #[test]
    fn entry_lines_are_the_bytes_serde_writes_for_the_canonical_form() {
        let mut tricky = exchange(7);
        tricky.operation = "tra-cứu \"đặc biệt\"\\\n\t\u{1}".into();
        tricky.consumer = "Sở Tư pháp".into();
        for (seq, ex, prev) in [
            (1, exchange(1), "0".repeat(64)),
            (u64::MAX, tricky, "ab\"c".to_owned()),
        ] {
            let time = "2026-11-27T06:40:00.123Z";
            let expected = serde_json::to_vec(&Canonical {
                seq,
                time,
                exchange: &ex,
                prev: &prev,
            })
            .unwrap();
            let (line, hash) = encode_entry(seq, time, &ex, &prev);
            let body = &line[..line.len() - ",\"hash\":\"\"}\n".len() - hash.len()];
            assert_eq!(
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(&expected[..expected.len() - 1])
            );
            assert_eq!(hash, hex::encode(Sha256::digest(&expected)));
        }
    }

    /// Entries 1..=10 with seals after 4 and after 10: lines 1-4 entries, 5 seal,
    /// 6-11 entries, 12 seal.
    fn sealed_log(f: &Fixture) {
        let log = f.open();
        for n in 1..=4 {
            log.append(exchange(n)).unwrap();
        }
        assert_eq!(log.seal().unwrap(), Some(4));
        for n in 5..=10 {
            log.append(exchange(n)).unwrap();
        }
        assert_eq!(log.seal().unwrap(), Some(10));
        assert_eq!(log.seal().unwrap(), None, "nothing new to seal");
    }

    fn tampered(result: Result<VerifyReport, AuditError>) -> (usize, Option<u64>, String) {
        match result {
            Err(AuditError::Tampered { line, seq, why }) => (line, seq, why),
            other => panic!("expected tampering to be found, got {other:?}"),
        }
    }

    #[test]
    fn clean_log_with_seals_verifies() {
        let f = Fixture::new("clean");
        sealed_log(&f);
        let log = f.open();
        log.append(exchange(11)).unwrap();
        log.seal().unwrap();
        log.append(exchange(12)).unwrap();
        log.append(exchange(13)).unwrap();
        drop(log); // the BufWriter writes out the unsealed entries
        let report = f.verify().unwrap();
        assert_eq!(
            report,
            VerifyReport {
                entries: 13,
                seals: 3,
                last_sealed: Some(11),
                unsealed: 2,
                partial_last_line: false,
            }
        );
        assert_eq!(
            report.to_string(),
            "sharing log OK: 13 entries, 3 seals, last sealed entry 11; \
             2 entries after the last seal are not yet sealed"
        );
    }

    #[test]
    fn entry_line_is_its_canonical_form_plus_hash() {
        let f = Fixture::new("canonical");
        let log = f.open();
        log.append(exchange(1)).unwrap();
        log.seal().unwrap();
        let line = &f.lines()[0];
        let entry: Entry = serde_json::from_str(line).unwrap();
        let canonical = format!(
            "{{\"seq\":1,\"time\":\"{}\",\"request_id\":\"req-1\",\"side\":\"provider\",\
             \"consumer\":\"000.00.12.H62\",\"provider\":\"000.00.15.H62\",\
             \"service\":\"ho-tich/khai-sinh\",\"operation\":\"query\",\
             \"request_sha256\":\"{}\",\"response_sha256\":\"{}\",\"status\":\"OK\",\
             \"latency_us\":1235,\"bytes_in\":100,\"bytes_out\":2048,\"prev\":\"{GENESIS}\"}}",
            entry.time, entry.request_sha256, entry.response_sha256
        );
        assert_eq!(entry.hash, hex::encode(Sha256::digest(&canonical)));
        assert_eq!(
            *line,
            format!(
                "{},\"hash\":\"{}\"}}",
                &canonical[..canonical.len() - 1],
                entry.hash
            )
        );
        assert!(parse_time(&entry.time).is_some());
        assert_eq!(entry.time.len(), "2025-03-01T01:02:03.456Z".len());
    }

    #[test]
    fn changed_digit_in_an_entry_is_found_naming_that_entry() {
        let f = Fixture::new("digit");
        sealed_log(&f);
        let mut lines = f.lines();
        // line 7 holds entry 6, latency 1240
        assert!(lines[6].contains("\"latency_us\":1240,"));
        lines[6] = lines[6].replace("\"latency_us\":1240,", "\"latency_us\":1249,");
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (7, Some(6)));
        assert_eq!(why, "hash does not match its content");
        let message = f.verify().unwrap_err().to_string();
        assert_eq!(message, "line 7 (entry 6): hash does not match its content");
    }

    #[test]
    fn edit_with_recomputed_chain_is_caught_by_the_seal() {
        let f = Fixture::new("rechain");
        sealed_log(&f);
        // Rewrite entries 6.. with a changed entry 6 and a correct chain: only the
        // seal at line 12 can tell.
        let mut lines = f.lines();
        let mut prev: String = serde_json::from_str::<Entry>(&lines[5]).unwrap().hash;
        for (i, n) in (6..=10).enumerate() {
            let old: Entry = serde_json::from_str(&lines[6 + i]).unwrap();
            let mut ex = exchange(n);
            if n == 6 {
                ex.status = "PERMISSION_DENIED".into();
            }
            let (line, hash) = encode_entry(n, &old.time, &ex, &prev);
            lines[6 + i] = String::from_utf8(line).unwrap().trim_end().to_owned();
            prev = hash;
        }
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (12, None));
        assert!(
            why.starts_with("seal's head does not match the hash of entry 10"),
            "{why}"
        );
    }

    #[test]
    fn removed_line_is_found() {
        let f = Fixture::new("removed");
        sealed_log(&f);
        let mut lines = f.lines();
        lines.remove(2); // entry 3
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (3, Some(4)));
        assert_eq!(why, "entry 3 missing: line 3 holds entry 4");
    }

    #[test]
    fn swapped_lines_are_found() {
        let f = Fixture::new("swapped");
        sealed_log(&f);
        let mut lines = f.lines();
        lines.swap(6, 7); // entries 6 and 7
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (7, Some(7)));
        assert_eq!(why, "entry 6 missing: line 7 holds entry 7");
    }

    #[test]
    fn renumbered_entries_are_found_by_their_prev_link() {
        let f = Fixture::new("renumbered");
        sealed_log(&f);
        // Remove entry 3 and renumber the rest with recomputed hashes but prev left alone.
        let mut lines = f.lines();
        lines.truncate(4); // entries 1-4, no seal
        lines.remove(2);
        let old: Entry = serde_json::from_str(&lines[2]).unwrap();
        let (line, _) = encode_entry(3, &old.time, &exchange(4), &old.prev);
        lines[2] = String::from_utf8(line).unwrap().trim_end().to_owned();
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (3, Some(3)));
        assert_eq!(
            why,
            "prev does not match the hash of entry 2 (entries reordered or removed)"
        );
    }

    #[test]
    fn forged_seal_signature_is_found() {
        let f = Fixture::new("forged");
        sealed_log(&f);
        let mut lines = f.lines();
        let mut seal: SealLine = serde_json::from_str(&lines[11]).unwrap();
        let mut signature = hex::decode(&seal.seal.signature).unwrap();
        signature[10] ^= 1;
        seal.seal.signature = hex::encode(signature);
        lines[11] = serde_json::to_string(&seal).unwrap();
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (12, None));
        assert!(
            why.starts_with("seal of entry 10 has a bad signature"),
            "{why}"
        );
    }

    #[test]
    fn seal_by_another_key_is_refused() {
        let f = Fixture::new("other-key");
        sealed_log(&f);
        let other = Fixture::new("other-key-2");
        let (line, _, why) = tampered(verify(&f.path(), &other.cert));
        assert_eq!(line, 5);
        assert!(why.contains("bad signature"), "{why}");
        // With both certificates, as after a key renewal, the log verifies.
        let both = format!("{}{}", other.cert, f.cert);
        assert_eq!(verify(&f.path(), &both).unwrap().seals, 2);
    }

    #[test]
    fn broken_json_is_named_by_line() {
        let f = Fixture::new("json");
        sealed_log(&f);
        let mut lines = f.lines();
        lines[4].truncate(20);
        f.write_lines(&lines);
        let (line, seq, why) = tampered(f.verify());
        assert_eq!((line, seq), (5, None));
        assert!(why.starts_with("not valid JSON"), "{why}");
    }

    #[test]
    fn torn_last_line_is_cut_off_on_reopen_and_the_chain_continues() {
        let f = Fixture::new("torn");
        sealed_log(&f);
        let log = f.open();
        log.append(exchange(11)).unwrap();
        drop(log);
        let whole = std::fs::read(f.path()).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":12,\"time\":\"2025-");
        std::fs::write(f.path(), &torn).unwrap();

        let report = f.verify().unwrap();
        assert!(report.partial_last_line);
        assert_eq!((report.entries, report.unsealed), (11, 1));

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
    fn vietnamese_text_round_trips_byte_exact() {
        let f = Fixture::new("vietnamese");
        let log = f.open();
        let mut ex = exchange(1);
        ex.service = "Tra cứu hộ tịch: Đăng ký khai sinh (Sở Tư pháp tỉnh Vĩnh Phúc)".into();
        ex.operation = "truy vấn \"theo mã\"\tđịnh danh".into();
        log.append(ex.clone()).unwrap();
        log.seal().unwrap();
        drop(log);
        let raw = std::fs::read_to_string(f.path()).unwrap();
        assert!(
            raw.contains(&ex.service),
            "UTF-8 written raw, not \\u-escaped"
        );
        let entry: Entry = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
        assert_eq!(entry.service, ex.service);
        assert_eq!(entry.operation, ex.operation);
        f.verify().unwrap();

        let mut out = Vec::new();
        assert_eq!(
            export(&f.path(), &TimeRange::default(), &mut out).unwrap(),
            1
        );
        assert_eq!(
            out,
            format!("{}\n", raw.lines().next().unwrap()).into_bytes()
        );
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
    fn public_key_point_is_read_from_an_issued_certificate() {
        let f = Fixture::new("point");
        let der = first_certificate(&f.cert).unwrap();
        let point = public_key_point(&der).unwrap();
        assert_eq!((point.len(), point[0]), (65, 0x04));
        let key_der = pem_blocks(&f.key).unwrap().remove(0).1;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_der,
            &SystemRandom::new(),
        )
        .unwrap();
        assert_eq!(key.public_key().as_ref(), point.as_slice());
        assert!(public_key_point(&der[..der.len() / 2]).is_err());
    }

    #[test]
    fn export_selects_entries_by_time() {
        let f = Fixture::new("export");
        let exchange_at =
            |seq: u64, time: &str, prev: &str| encode_entry(seq, time, &exchange(seq), prev);
        let (l1, h1) = exchange_at(1, "2025-02-28T23:59:59.999Z", GENESIS);
        let (l2, h2) = exchange_at(2, "2025-03-01T00:00:00.000Z", &h1);
        let (l3, _) = exchange_at(3, "2025-03-01T17:30:00.000Z", &h2);
        std::fs::create_dir_all(f.dir()).unwrap();
        std::fs::write(f.path(), [l1.clone(), l2.clone(), l3.clone()].concat()).unwrap();
        let run = |from: Option<&str>, to: Option<&str>| {
            let mut out = Vec::new();
            let range = TimeRange::parse(from, to).unwrap();
            export(&f.path(), &range, &mut out).unwrap();
            out
        };
        assert_eq!(
            run(Some("2025-03-01"), Some("2025-03-01")),
            [l2.clone(), l3.clone()].concat()
        );
        assert_eq!(
            run(None, Some("2025-03-01T07:00:00+07:00")),
            [l1.clone(), l2.clone()].concat()
        );
        assert_eq!(run(Some("2025-03-02T00:00:00+07:00"), None), l3);
        assert!(matches!(
            TimeRange::parse(Some("1/3/2025"), None),
            Err(AuditError::BadTime(_))
        ));
        assert!(matches!(
            TimeRange::parse(Some("2025-03-02"), Some("2025-03-01")),
            Err(AuditError::EmptyRange { .. })
        ));
    }

    #[test]
    fn times_format_and_parse_consistently() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_709_251_323_456), "2024-03-01T00:02:03.456Z");
        for ms in [0, 951_782_400_000, 1_709_251_323_456, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_millis(ms)), Some(ms));
        }
        assert_eq!(
            parse_time("2024-03-01T07:02:03.456789+07:00"),
            Some(1_709_251_323_456)
        );
        assert_eq!(parse_time("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_time("2024-03-01T24:00:00Z"), None);
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(56), "56");
        assert_eq!(group(0), "0");
        assert_eq!(group(123_456), "123,456");
    }
}

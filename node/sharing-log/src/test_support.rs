//! What the crate's unit tests share: a node key and certificate from a fresh CA, a log
//! in a temporary directory, and a sealed log of ten entries.

use crate::format::{SealLine, encode_entry};
use crate::{
    AuditError, Exchange, GENESIS, LOG_FILE, SEAL_VERSION, Seal, SharingLog, Signer, VerifyReport,
    verify,
};
use lgsp_certs::{AgencyCode, CertificateAuthority, LeafSpec, Role, SpiffeId};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
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
pub(crate) fn node_credentials(tmp: &TempDir) -> (String, String) {
    let mut ca =
        CertificateAuthority::init(&tmp.0.join("ca"), "vinhphuc.gov.vn", "CA tỉnh", 30).unwrap();
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

pub(crate) struct Fixture {
    pub(crate) tmp: TempDir,
    pub(crate) key: String,
    pub(crate) cert: String,
}

impl Fixture {
    pub(crate) fn new(name: &str) -> Self {
        let tmp = TempDir::new(name);
        let (key, cert) = node_credentials(&tmp);
        Self { tmp, key, cert }
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.tmp.0.join("data")
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir().join(LOG_FILE)
    }

    pub(crate) fn open(&self) -> SharingLog {
        SharingLog::open(
            &self.dir(),
            Signer::from_pem(&self.key, &self.cert).unwrap(),
        )
        .unwrap()
    }

    pub(crate) fn verify(&self) -> Result<VerifyReport, AuditError> {
        verify(&self.path(), &self.cert)
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn write_lines(&self, lines: &[String]) {
        std::fs::create_dir_all(self.dir()).unwrap();
        std::fs::write(self.path(), lines.join("\n") + "\n").unwrap();
    }

    pub(crate) fn signer(&self) -> Signer {
        Signer::from_pem(&self.key, &self.cert).unwrap()
    }

    /// A seal line of entry `seq` with hash `head`, in `version` (`None` for version 1),
    /// signed with this fixture's key.
    pub(crate) fn seal_line(&self, seq: u64, head: &str, version: Option<u32>) -> String {
        let signer = self.signer();
        let mut seal = Seal {
            v: version,
            seq,
            head: head.to_owned(),
            time: "2025-03-01T00:00:00.000Z".into(),
            signer: signer.spiffe_id().to_owned(),
            cert: version.map(|_| self.cert_sha256()),
            signature: String::new(),
        };
        signer.sign(&mut seal).unwrap();
        serde_json::to_string(&SealLine { seal }).unwrap()
    }

    pub(crate) fn cert_sha256(&self) -> String {
        let der = crate::certificate::first_certificate(&self.cert).unwrap();
        hex::encode(Sha256::digest(der))
    }

    /// Writes a log of entries at `times` (entry n at `times[n - 1]`), with a version
    /// 2 seal after each entry numbered in `seals`.
    pub(crate) fn write_log_at(&self, times: &[&str], seals: &[u64]) {
        let mut lines = Vec::new();
        let mut prev = GENESIS.to_owned();
        for (seq, time) in (1..).zip(times) {
            let (line, hash) = encode_entry(seq, time, &exchange(seq), &prev);
            lines.push(String::from_utf8(line).unwrap().trim_end().to_owned());
            if seals.contains(&seq) {
                lines.push(self.seal_line(seq, &hash, Some(SEAL_VERSION)));
            }
            prev = hash;
        }
        self.write_lines(&lines);
    }
}

pub(crate) fn exchange(n: u64) -> Exchange {
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
        external_ids: Default::default(),
        on_behalf_of: None,
    }
}

/// Entries 1..=10 with seals after 4 and after 10: lines 1-4 entries, 5 seal,
/// 6-11 entries, 12 seal.
pub(crate) fn sealed_log(f: &Fixture) {
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

pub(crate) fn tampered(result: Result<VerifyReport, AuditError>) -> (usize, Option<u64>, String) {
    match result {
        Err(AuditError::Tampered { line, seq, why }) => (line, seq, why),
        other => panic!("expected tampering to be found, got {other:?}"),
    }
}

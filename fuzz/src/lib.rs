//! The fuzz targets' bodies, one function per target in `fuzz_targets/`, and
//! the fixtures they share. Each function takes bytes as an outsider could
//! send or write them and must never panic; `tests/corpus.rs` replays the
//! committed corpora through the same functions with plain `cargo test`.
//!
//! Fixtures (a CA, a node certificate and its key) are committed under
//! `fixtures/` so that every run sees the same keys and a crash found once
//! reproduces; [`write_seeds`] made them, with the seed corpora.

use lgsp_certs::CertificateAuthority;
use lgsp_certs::identity::SpiffeId;
use lgsp_certs::inspect::{CertInfo, CrlInfo, CsrInfo, pem_blocks, verify_crl};
use lgsp_dataset::{Dataset, DatasetStore, Schema};
use lgsp_sharing_log::{LOG_FILE, SharingLog, Signer, TimeRange};
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A fixture file's text, from `fixtures/` (made by [`write_seeds`]).
fn fixture(name: &str) -> &'static str {
    static FILES: OnceLock<std::sync::Mutex<Vec<(String, &'static str)>>> = OnceLock::new();
    let files = FILES.get_or_init(Default::default);
    let mut files = files
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, text)) = files.iter().find(|(n, _)| n == name) {
        return text;
    }
    let path = root().join("fixtures").join(name);
    let text: &'static str = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run the write_seeds test)", path.display()))
        .leak();
    files.push((name.to_owned(), text));
    text
}

/// The trust domain of the fixtures.
pub const TRUST_DOMAIN: &str = "vinhphuc.gov.vn";

/// The schema the dataset targets check rows against, half of the time.
const SCHEMA: &str = r#"{"type":"object","required":["ma","ten"],"properties":{"ma":{"type":"string","maxLength":20},"ten":{"type":"string"},"nam_sinh":{"type":"integer"},"gioi_tinh":{"type":"string","enum":["nam","nu"]},"diem":{"type":"number"},"con_song":{"type":"boolean"}},"additionalProperties":true}"#;

/// A directory for this process's scratch files, on tmpfs when there is one.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("scratch directory")
    })
    .path()
}

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = scratch().join("ca");
        std::fs::create_dir_all(&dir).expect("ca dir");
        for name in ["ca.crt", "ca.key", "ca.json"] {
            std::fs::write(dir.join(name), fixture(&format!("ca/{name}"))).expect("ca file");
        }
        CertificateAuthority::open(&dir).expect("fixture CA")
    })
}

fn roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        pem_blocks(fixture("ca/ca.crt"))
            .expect("fixture CA PEM")
            .into_iter()
            .map(|(_, der)| CertificateDer::from(der))
            .collect()
    })
}

fn schema() -> &'static Schema {
    static SCHEMA_: OnceLock<Schema> = OnceLock::new();
    SCHEMA_.get_or_init(|| Schema::from_json(SCHEMA).expect("fixture schema"))
}

fn dataset() -> &'static Dataset {
    static DATASET: OnceLock<Dataset> = OnceLock::new();
    DATASET.get_or_init(|| {
        let file = scratch().join("ho_tich.csv");
        let mut csv = String::from("ma,ten,nam_sinh,diem,con_song\n");
        for i in 0..300 {
            csv.push_str(&format!(
                "{i:05},Nguyễn Văn {i},{},{}.5,{}\n",
                1950 + i % 70,
                i % 10,
                i % 3 == 0
            ));
        }
        std::fs::write(&file, csv).expect("dataset file");
        let store = DatasetStore::new(&scratch().join("datasets"));
        store
            .import("ho-tich", &file, "ma", Some(schema()), &|_, _| {})
            .expect("fixture dataset");
        store.open("ho-tich").expect("open fixture dataset")
    })
}

/// A resume token the fixture dataset really hands out, for a seed.
fn dataset_page_token() -> String {
    let query = lgsp_dataset::Query {
        page_size: 5,
        ..Default::default()
    };
    dataset().query(&query).expect("first page").resume_token
}

/// `lgsp-node`'s checks of a call envelope.
pub fn envelope(data: &[u8]) {
    lgsp_node::fuzzing::envelope(data);
}

/// A dataset query (filters, projection, page size, resume token).
pub fn query(data: &[u8]) {
    lgsp_node::fuzzing::query(data, dataset());
}

/// The first byte chooses whether rows are checked against a schema.
fn dataset_rows(file: &str, data: &[u8]) {
    let (with_schema, rows) = match data.split_first() {
        Some((flag, rest)) => (flag & 1 == 1, rest),
        None => (false, data),
    };
    let store = DatasetStore::new(Path::new("/nonexistent")).with_max_record_bytes(4096);
    let _ = store.check(Path::new(file), rows, "ma", with_schema.then(schema));
}

/// A CSV file to import (after one byte choosing the schema).
pub fn dataset_csv(data: &[u8]) {
    dataset_rows("data.csv", data);
}

/// A JSON Lines file to import (after one byte choosing the schema).
pub fn dataset_jsonl(data: &[u8]) {
    dataset_rows("data.jsonl", data);
}

/// A node's `node.toml`.
pub fn node_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lgsp_node::config::NodeConfig::from_toml(text, Path::new("/etc/lgsp/node.toml"));
    }
}

/// A registry server's `registry.toml`, and a `--peers` list.
pub fn registry_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = lgsp_registry::RegistryConfig::from_toml(text) {
            let _ = config.validate();
        }
        let _ = lgsp_registry::config::parse_peers(text);
    }
}

/// A CSR as `lgsp ca sign` reads it (PEM), or its DER as `lgsp ca show` does.
pub fn csr(data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(pem) if pem.contains("-----BEGIN") => {
            if let Ok(request) = ca().check_csr(pem, Path::new("fuzz.csr"), 30) {
                let _ = ca().check_names(&request);
            }
        }
        _ => {
            let _ = CsrInfo::from_der(data, Path::new("fuzz.csr"));
        }
    }
}

/// A certificate as a peer presents it (DER): what it says, who the peer
/// is, and the SPIFFE ID in it as text.
pub fn cert_identity(data: &[u8]) {
    let _ = CertInfo::from_der(data, Path::new("fuzz.crt"));
    let _ = lgsp_certs::peer::peer_identity(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SpiffeId::parse(text);
        let _ = pem_blocks(text);
    }
}

/// A CRL as the registry hands it out (DER).
pub fn crl(data: &[u8]) {
    let _ = CrlInfo::from_der(data, Path::new("fuzz.crl"));
    let _ = verify_crl(data, roots());
}

/// A sharing log file as `lgsp audit verify` and `audit export` read it, and
/// as a node reopens it after a crash.
pub fn sharing_log(data: &[u8]) {
    let dir = scratch().join(format!("log-{:?}", std::thread::current().id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let path = dir.join(LOG_FILE);
    std::fs::write(&path, data).expect("log file");
    let cert = fixture("node/cert.pem");
    let _ = lgsp_sharing_log::verify(&path, cert);
    let _ = lgsp_sharing_log::verify_export(&path, cert);
    // The same bytes as an anchor file (`lgsp audit verify --anchor`).
    let _ = lgsp_sharing_log::Anchor::read(&path);
    let signer = Signer::from_pem(fixture("node/key.pem"), cert).expect("fixture signer");
    if let Ok(range) = TimeRange::parse(Some("2020-01-01"), None) {
        let _ = lgsp_sharing_log::plan_export(&path, &range);
        let _ = lgsp_sharing_log::export(&path, &range, &signer, &mut std::io::sink());
    }
    drop(SharingLog::open(&dir, signer));
}

/// A target's body: takes one input, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus tests.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("query", query),
    ("dataset_csv", dataset_csv),
    ("dataset_jsonl", dataset_jsonl),
    ("node_toml", node_toml),
    ("registry_toml", registry_toml),
    ("csr", csr),
    ("cert_identity", cert_identity),
    ("crl", crl),
    ("sharing_log", sharing_log),
];

/// The fuzz crate's directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

mod seeds;
pub use seeds::write_seeds;

//! Makes the fixtures and the seed corpora: run `cargo test --test corpus
//! -- --ignored write_seeds` in `fuzz/` (it replaces `fixtures/` and adds
//! to `corpus/`). Seeds are small valid inputs, plus the attacks lgsp has
//! already met, for the fuzzer to start from.

use crate::{TRUST_DOMAIN, root};
use lgsp_certs::ca::{LeafSpec, make_csr};
use lgsp_certs::inspect::pem_blocks;
use lgsp_certs::{AgencyCode, CertificateAuthority, Role, SpiffeId};
use lgsp_proto::{Envelope, FieldFilter, QueryRequest};
use lgsp_sharing_log::{Exchange, LOG_FILE, SharingLog, Signer, TimeRange};
use prost::Message as _;
use std::collections::HashMap;

fn put(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = root().join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn der(pem: &str) -> Vec<u8> {
    pem_blocks(pem).expect("PEM").remove(0).1
}

fn exchange(n: u64) -> Exchange {
    Exchange {
        request_id: format!("req-{n}"),
        side: "provider".into(),
        consumer: "000.00.13.H62".into(),
        provider: "000.00.12.H62".into(),
        service: "000.00.12.H62/ho-tich".into(),
        operation: "get".into(),
        request_sha256: "ab".repeat(32),
        response_sha256: "cd".repeat(32),
        status: "OK".into(),
        latency_us: 1000 + n,
        bytes_in: 10,
        bytes_out: 200,
        external_ids: Default::default(),
        on_behalf_of: None,
    }
}

/// Writes `fixtures/` (a new CA and node certificate: keys change) and the
/// seed corpora under `corpus/`.
pub fn write_seeds() {
    let fixtures = root().join("fixtures");
    let _ = std::fs::remove_dir_all(&fixtures);
    let mut ca = CertificateAuthority::init(&fixtures.join("ca"), TRUST_DOMAIN, "CA fuzz", 3650)
        .expect("fixture CA");
    let id = |agency: &str, name: &str| {
        SpiffeId::new(
            TRUST_DOMAIN,
            AgencyCode::new(agency).unwrap(),
            Role::Node,
            name,
        )
        .unwrap()
    };
    let mut spec = LeafSpec::for_days(id("000.00.12.H62", "node-1"), 3650).unwrap();
    spec.dns = vec!["node1.stp.vinhphuc.gov.vn".into()];
    spec.ips = vec!["10.0.0.7".parse().unwrap()];
    ca.allow_names("000.00.12.H62", &["stp.vinhphuc.gov.vn".into()], &[])
        .unwrap();
    let node = ca.issue(&spec).expect("node certificate");
    let node_dir = fixtures.join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    std::fs::write(node_dir.join("cert.pem"), &node.cert_pem).unwrap();
    std::fs::write(node_dir.join("key.pem"), &node.key_pem).unwrap();
    ca.revoke(
        &node.serial,
        lgsp_certs::ca::parse_reason("superseded").unwrap(),
    )
    .unwrap();
    let crl = ca.sign_crl(7).unwrap();

    // envelope
    let env = |op: &str, params: &[(&str, &str)], id: &str| {
        Envelope {
            service_id: "000.00.12.H62/ho-tich".into(),
            operation: op.into(),
            parameters: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            payload: br#"{"ma":"00001"}"#.to_vec(),
            request_id: id.into(),
        }
        .encode_to_vec()
    };
    put("envelope", "get", env("get", &[("key", "00001")], "req-1"));
    put("envelope", "dotdot", env("..", &[], ""));
    put(
        "envelope",
        "slash",
        env("a/b", &[("q", "Vĩnh Yên & co")], "x".repeat(200).as_str()),
    );
    put(
        "envelope",
        "params",
        env(
            "tra-cuu.v2",
            &[("ma", "1"), ("ten", "An"), ("a b", "c=d")],
            "r:1",
        ),
    );

    // query
    let q = |filters: &[(&str, &str)], fields: &[&str], size: u32, token: &str| {
        QueryRequest {
            service_id: "000.00.12.H62/ho-tich".into(),
            filters: filters
                .iter()
                .map(|(f, v)| FieldFilter {
                    field: (*f).into(),
                    equals: (*v).into(),
                })
                .collect(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            page_size: size,
            resume_token: token.into(),
            request_id: "q-1".into(),
        }
        .encode_to_vec()
    };
    put("query", "all", q(&[], &[], 0, ""));
    put(
        "query",
        "filter",
        q(&[("con_song", "true")], &["ma", "ten"], 7, ""),
    );
    put("query", "number", q(&[("nam_sinh", "1960")], &[], 3, ""));
    let page = crate::dataset_page_token();
    put("query", "resume", q(&[], &["ten"], 5, &page));
    put("query", "bad_token", q(&[], &[], 5, "not-a-token"));

    // dataset_csv / dataset_jsonl (the first byte: bit 0 chooses the schema)
    let csv = "ma,ten,nam_sinh,diem,con_song\n\
               1,Nguyễn Thị Ánh,1980,7.5,true\n\
               2,\"Trần, Văn \"\"Đức\"\"\",1975,8,false\n\
               3,\"Lê\nHoàng\",2001,,\n";
    put(
        "dataset_csv",
        "typed",
        [&[1u8][..], csv.as_bytes()].concat(),
    );
    put(
        "dataset_csv",
        "plain",
        [&[0u8][..], csv.as_bytes()].concat(),
    );
    put("dataset_csv", "unclosed", b"\x00ma,ten\n1,\"An\n2,B\n");
    put(
        "dataset_csv",
        "bom_crlf",
        b"\x01\xEF\xBB\xBFma,ten\r\n1,An\r\n1,An\r\n",
    );
    let jsonl = "{\"ma\":\"1\",\"ten\":\"An\",\"nam_sinh\":1990}\n\n{\"ma\":2,\"ten\":\"Bình\",\"diem\":1e3}\n[1]\n{\"ma\":\"3\",\"ma\":\"4\"}\n";
    put(
        "dataset_jsonl",
        "typed",
        [&[1u8][..], jsonl.as_bytes()].concat(),
    );
    put(
        "dataset_jsonl",
        "plain",
        [&[0u8][..], jsonl.as_bytes()].concat(),
    );

    // node_toml / registry_toml
    let deploy = root().join("../deploy");
    put(
        "node_toml",
        "deploy",
        std::fs::read(deploy.join("node.toml")).unwrap(),
    );
    put(
        "node_toml",
        "template",
        lgsp_node::config::template(
            "000.00.12.H62",
            "node-1",
            "\"10.0.0.11:7101\"",
            "0.0.0.0:7301",
            Some("node1.stp.vinhphuc.gov.vn:7301"),
            "127.0.0.1:7401",
        ),
    );
    put(
        "registry_toml",
        "deploy",
        std::fs::read(deploy.join("registry.toml")).unwrap(),
    );
    put(
        "registry_toml",
        "peers",
        "1=10.0.0.11:7201,2=10.0.0.12:7201,3=[::1]:7201",
    );

    // csr
    let mut asked = LeafSpec::for_days(id("000.00.12.H62", "node-2"), 30).unwrap();
    asked.dns = vec![
        "node2.stp.vinhphuc.gov.vn".into(),
        "api.bocongan.gov.vn".into(),
    ];
    asked.ips = vec!["10.0.0.8".parse().unwrap()];
    asked.display_name = Some("Sở Tư pháp tỉnh Vĩnh Phúc".into());
    let (csr_pem, _) = make_csr(&asked).unwrap();
    put("csr", "pem", &csr_pem);
    put("csr", "der", der(&csr_pem));

    // cert_identity
    put("cert_identity", "node", der(&node.cert_pem));
    put("cert_identity", "ca", der(ca.cert_pem()));
    put(
        "cert_identity",
        "spiffe",
        "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1",
    );

    // crl
    put("crl", "revoked_one", &crl.der);

    // sharing_log: a sealed log, and an export of it
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::from_pem(&node.key_pem, &node.cert_pem).unwrap();
    let log = SharingLog::open(dir.path(), signer).unwrap();
    for n in 1..=3 {
        log.append(exchange(n)).unwrap();
    }
    log.seal().unwrap();
    for n in 4..=5 {
        log.append(exchange(n)).unwrap();
    }
    log.seal().unwrap();
    drop(log);
    let path = dir.path().join(LOG_FILE);
    put("sharing_log", "sealed", std::fs::read(&path).unwrap());
    let mut export = Vec::new();
    let signer = Signer::from_pem(&node.key_pem, &node.cert_pem).unwrap();
    lgsp_sharing_log::export(
        &path,
        &TimeRange::parse(Some("2020-01-01"), None).unwrap(),
        &signer,
        &mut export,
    )
    .unwrap();
    put("sharing_log", "export", export);
}

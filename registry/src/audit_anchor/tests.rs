//! Anchors against the catalog state machine on the in-memory store: who may
//! write them, what they must hold, and that they never go back.

use crate::catalog::{apply, check, get};
use crate::error::CatalogError;
use crate::kv::{Kv, KvRead as _, Staged};
use crate::mem_kv::MemKv;
use crate::procedure::Asker;
use lgsp_certs::identity::{AgencyCode, Role, SpiffeId};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::command::Op;
use lgsp_proto::{Agency, AuditAnchor, CatalogRecord, Command, NodeRecord, RecordKind, RecordRef};

const PROVINCE: &str = "000.00.01.H62";
const A: &str = "000.00.12.H62";
const B: &str = "000.00.13.H62";
const CERT_A1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";

fn id(agency: &str, role: Role, name: &str) -> SpiffeId {
    SpiffeId::new(
        "vinhphuc.gov.vn",
        AgencyCode::new(agency).unwrap(),
        role,
        name,
    )
    .unwrap()
}

static PROVINCE_CODE: std::sync::LazyLock<AgencyCode> =
    std::sync::LazyLock::new(|| AgencyCode::new(PROVINCE).unwrap());

fn run(kv: &Kv, who: &SpiffeId, command: Command) -> Result<u64, CatalogError> {
    let asker = Asker {
        actor: who,
        province: &PROVINCE_CODE,
        now_unix: 1_796_608_800,
    };
    let checked = check(kv, &asker, &command)?;
    let mut batch = Staged::new(kv);
    let (_, events) = apply(&mut batch, checked).expect("apply");
    batch.commit().expect("commit");
    Ok(events[0].revision)
}

fn put(value: Value) -> Command {
    Command {
        op: Some(Op::Put(CatalogRecord {
            value: Some(value),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn remove(key: &str) -> Command {
    Command {
        op: Some(Op::Delete(RecordRef {
            kind: RecordKind::AuditAnchor as i32,
            key: key.into(),
        })),
        ..Default::default()
    }
}

/// Agencies A and B, each with node-1 registered under a certificate.
fn catalog() -> Kv {
    let kv = Kv::new(MemKv::default());
    let admin = id(PROVINCE, Role::Admin, "admin");
    for code in [A, B] {
        run(
            &kv,
            &admin,
            put(Value::Agency(Agency {
                code: code.into(),
                name: format!("Sở {code}"),
                ..Default::default()
            })),
        )
        .unwrap();
        run(
            &kv,
            &id(code, Role::Node, "node-1"),
            put(Value::Node(NodeRecord {
                agency_code: code.into(),
                name: "node-1".into(),
                endpoint: "node.example:7443".into(),
                cert_sha256: if code == A {
                    CERT_A1.into()
                } else {
                    "b1".repeat(32)
                },
                ..Default::default()
            })),
        )
        .unwrap();
    }
    kv
}

/// Node A/node-1's anchor of entry `seq` with head `head` (one hex digit repeated).
fn anchor(seq: u64, head: char) -> AuditAnchor {
    AuditAnchor {
        agency_code: A.into(),
        node: "node-1".into(),
        seal_version: 2,
        seq,
        head: head.to_string().repeat(64),
        seal_time: "2026-12-07T02:00:00.000Z".into(),
        signer: id(A, Role::Node, "node-1").to_string(),
        cert_sha256: CERT_A1.into(),
        signature: "5".repeat(128),
    }
}

fn stored(kv: &Kv) -> Option<AuditAnchor> {
    match get(kv, RecordKind::AuditAnchor, &format!("{A}/node-1"))
        .unwrap()
        .and_then(|r| r.value)
    {
        Some(Value::AuditAnchor(a)) => Some(a),
        _ => None,
    }
}

fn refusal(result: Result<u64, CatalogError>) -> (&'static str, String) {
    match result {
        Err(CatalogError::PermissionDenied(m)) => ("permission", m),
        Err(CatalogError::InvalidArgument(m)) => ("invalid", m),
        Err(CatalogError::FailedPrecondition(m)) => ("precondition", m),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_node_publishes_its_own_anchor_and_moves_it_forward() {
    let kv = catalog();
    let node = id(A, Role::Node, "node-1");
    run(&kv, &node, put(Value::AuditAnchor(anchor(10, 'a')))).unwrap();
    assert_eq!(stored(&kv).unwrap().seq, 10);
    // The same seal again (a retry) and a later one are accepted; one record per node.
    run(&kv, &node, put(Value::AuditAnchor(anchor(10, 'a')))).unwrap();
    run(&kv, &node, put(Value::AuditAnchor(anchor(25, 'b')))).unwrap();
    assert_eq!(stored(&kv).unwrap().head, "b".repeat(64));
    let all = kv
        .read_prefix(&crate::catalog::record_prefix(RecordKind::AuditAnchor))
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[test]
fn an_anchor_written_by_another_agencys_certificate_is_refused() {
    let kv = catalog();
    let forged = anchor(99, 'f');
    for who in [
        id(B, Role::Node, "node-1"),
        id(B, Role::Hub, "node-1"),
        id(B, Role::Admin, "admin"),
    ] {
        let (kind, why) = refusal(run(&kv, &who, put(Value::AuditAnchor(forged.clone()))));
        assert_eq!(kind, "permission", "{why}");
        assert!(
            why.contains(&format!(
                "that node's own certificate ({A}/node-1 anchors only its own sharing log)"
            )),
            "{why}"
        );
    }
    // Nor by another node of the same agency, its agency admin or the provincial admin.
    for who in [
        id(A, Role::Node, "node-2"),
        id(A, Role::Admin, "admin"),
        id(PROVINCE, Role::Admin, "admin"),
    ] {
        let (kind, why) = refusal(run(&kv, &who, put(Value::AuditAnchor(forged.clone()))));
        assert_eq!(kind, "permission", "{who}: {why}");
    }
    assert_eq!(stored(&kv), None);
}

#[test]
fn an_anchor_naming_another_signer_or_certificate_is_refused() {
    let kv = catalog();
    let node = id(A, Role::Node, "node-1");
    let mut other_signer = anchor(3, 'a');
    other_signer.signer = id(B, Role::Node, "node-1").to_string();
    let (kind, why) = refusal(run(&kv, &node, put(Value::AuditAnchor(other_signer))));
    assert_eq!(kind, "invalid");
    assert!(why.contains("a node anchors only its own log"), "{why}");

    let mut other_cert = anchor(3, 'a');
    other_cert.cert_sha256 = "c".repeat(64);
    let (kind, why) = refusal(run(&kv, &node, put(Value::AuditAnchor(other_cert))));
    assert_eq!(kind, "precondition");
    assert!(
        why.contains(&format!(
            "but the catalog holds {CERT_A1} for node {A}/node-1"
        )),
        "{why}"
    );
}

#[test]
fn an_anchor_with_a_malformed_field_is_refused_naming_it() {
    let kv = catalog();
    let node = id(A, Role::Node, "node-1");
    type Edit = fn(&mut AuditAnchor);
    let edits: [(Edit, &str); 6] = [
        (|a| a.seal_version = 1, "seal version 1"),
        (|a| a.seq = 0, "entry 0"),
        (
            |a| a.head = "A".repeat(64),
            "head must be 64 lower-case hex",
        ),
        (|a| a.signature = "5".repeat(4096), "signature must be 128"),
        (|a| a.seal_time = "x".repeat(41), "not an RFC 3339 time"),
        (
            |a| a.cert_sha256.pop().map(drop).unwrap_or(()),
            "fingerprint must be 64",
        ),
    ];
    for (edit, expected) in edits {
        let mut a = anchor(3, 'a');
        edit(&mut a);
        let (kind, why) = refusal(run(&kv, &node, put(Value::AuditAnchor(a))));
        assert_eq!(kind, "invalid", "{why}");
        assert!(why.contains(expected), "{expected:?} in {why}");
    }
}

#[test]
fn an_anchor_that_goes_back_is_refused_until_the_provincial_admin_removes_it() {
    let kv = catalog();
    let node = id(A, Role::Node, "node-1");
    run(&kv, &node, put(Value::AuditAnchor(anchor(40, 'a')))).unwrap();
    for back in [anchor(39, 'b'), anchor(40, 'c')] {
        let (kind, why) = refusal(run(&kv, &node, put(Value::AuditAnchor(back))));
        assert_eq!(kind, "precondition");
        assert!(
            why.contains("is at entry 40") && why.contains("lgsp audit anchor remove --node"),
            "{why}"
        );
    }
    assert_eq!(stored(&kv).unwrap().seq, 40);
    // Neither the node nor its agency's admin may remove it: that would undo the evidence.
    for who in [node.clone(), id(A, Role::Admin, "admin")] {
        let (kind, why) = refusal(run(&kv, &who, remove(&format!("{A}/node-1"))));
        assert_eq!(kind, "permission", "{why}");
    }
    run(
        &kv,
        &id(PROVINCE, Role::Admin, "admin"),
        remove(&format!("{A}/node-1")),
    )
    .unwrap();
    run(&kv, &node, put(Value::AuditAnchor(anchor(1, 'd')))).unwrap();
    assert_eq!(stored(&kv).unwrap().seq, 1);
}

#[test]
fn an_anchor_of_a_node_not_registered_is_refused() {
    let kv = catalog();
    let node = id(A, Role::Node, "node-9");
    let mut a = anchor(3, 'a');
    a.node = "node-9".into();
    a.signer = node.to_string();
    let (kind, why) = refusal(run(&kv, &node, put(Value::AuditAnchor(a))));
    assert_eq!(kind, "precondition");
    assert!(
        why.contains("node 000.00.12.H62/node-9 is not registered"),
        "{why}"
    );
}

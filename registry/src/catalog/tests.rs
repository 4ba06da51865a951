//! The catalog state machine against the in-memory store: every record
//! kind, its validation and authorization rules, every compare-and-set case,
//! revisions, history, listing, and snapshot and restore.

use super::*;
use crate::mem_kv::MemKv;
use lgsp_proto::{Agency, Crl, FocalPoint, Grant, NodeRecord, Service};

const ADMIN_AGENCY: &str = "000.00.01.H62";
const A: &str = "000.00.12.H62";
const B: &str = "000.00.13.H62";

fn actor(agency: &str, role: Role) -> SpiffeId {
    SpiffeId::new(
        "lgsp.test",
        AgencyCode::new(agency).unwrap(),
        role,
        "tester",
    )
    .unwrap()
}

fn admin() -> SpiffeId {
    actor(ADMIN_AGENCY, Role::Admin)
}

fn node_of(agency: &str) -> SpiffeId {
    actor(agency, Role::Node)
}

fn put_cmd(value: Value) -> Command {
    Command {
        op: Some(Op::Put(CatalogRecord {
            value: Some(value),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn delete_cmd(kind: RecordKind, key: &str) -> Command {
    Command {
        op: Some(Op::Delete(RecordRef {
            kind: kind as i32,
            key: key.into(),
        })),
        ..Default::default()
    }
}

/// Checks and applies `command` in one batch, as one committed entry.
fn run(
    kv: &Kv,
    who: &SpiffeId,
    command: &Command,
) -> Result<(Option<CatalogRecord>, WatchEvent), CatalogError> {
    let checked = check(kv, who, command)?;
    let mut batch = Staged::new(kv);
    let out = apply(&mut batch, checked).expect("apply");
    batch.commit().expect("commit");
    Ok(out)
}

fn agency(code: &str) -> Value {
    Value::Agency(Agency {
        code: code.into(),
        name: format!("Sở {code}"),
        focal_point: None,
    })
}

fn node(agency: &str, name: &str) -> Value {
    Value::Node(NodeRecord {
        agency_code: agency.into(),
        name: name.into(),
        endpoint: "node.example:7443".into(),
        cert_sha256: String::new(),
    })
}

fn service(id: &str) -> Service {
    Service {
        id: id.into(),
        kind: ServiceKind::Http as i32,
        ..Default::default()
    }
}

fn grant(service_id: &str, consumer: &str) -> Value {
    Value::Grant(Grant {
        service_id: service_id.into(),
        consumer_agency: consumer.into(),
        ..Default::default()
    })
}

/// A catalog with agencies A and B and service `A/ho-tich`.
fn catalog() -> Kv {
    let kv = Kv::new(MemKv::default());
    run(&kv, &admin(), &put_cmd(agency(A))).unwrap();
    run(&kv, &admin(), &put_cmd(agency(B))).unwrap();
    run(
        &kv,
        &node_of(A),
        &put_cmd(Value::Service(service(&format!("{A}/ho-tich")))),
    )
    .unwrap();
    kv
}

fn mod_revision(record: &CatalogRecord) -> u64 {
    record.meta.as_ref().unwrap().mod_revision
}

fn refused(result: Result<impl std::fmt::Debug, CatalogError>) -> CatalogError {
    result.expect_err("the command should be refused")
}

// Authorization.

#[test]
fn only_the_admin_registers_a_new_agency() {
    let kv = Kv::new(MemKv::default());
    let err = refused(run(&kv, &node_of(A), &put_cmd(agency(A))));
    assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
    run(&kv, &admin(), &put_cmd(agency(A))).unwrap();
}

#[test]
fn a_node_updates_its_own_registered_agency() {
    let kv = catalog();
    let (stored, _) = run(&kv, &node_of(A), &put_cmd(agency(A))).unwrap();
    assert_eq!(stored.unwrap().key, A);
}

#[test]
fn a_node_may_not_change_another_agencys_records() {
    let kv = catalog();
    for (who, command) in [
        (node_of(A), put_cmd(agency(B))),
        (node_of(A), put_cmd(node(B, "n1"))),
        (
            node_of(A),
            put_cmd(Value::Service(service(&format!("{B}/thue")))),
        ),
        (
            node_of(B),
            delete_cmd(RecordKind::Service, &format!("{A}/ho-tich")),
        ),
    ] {
        let err = refused(run(&kv, &who, &command));
        assert!(
            matches!(err, CatalogError::PermissionDenied(_)),
            "{command:?}: {err:?}"
        );
    }
}

#[test]
fn a_hub_acts_for_its_own_agency_and_a_registry_server_for_none() {
    let kv = catalog();
    run(&kv, &actor(A, Role::Hub), &put_cmd(node(A, "hub-node"))).unwrap();
    let err = refused(run(&kv, &actor(A, Role::Registry), &put_cmd(node(A, "n2"))));
    assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
}

#[test]
fn a_grant_belongs_to_the_agency_of_the_service() {
    let kv = catalog();
    let g = grant(&format!("{A}/ho-tich"), B);
    let err = refused(run(&kv, &node_of(B), &put_cmd(g.clone())));
    assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
    let (stored, _) = run(&kv, &node_of(A), &put_cmd(g)).unwrap();
    assert_eq!(stored.unwrap().key, format!("{A}/ho-tich|{B}"));
}

/// A CA in a temporary directory, for signed CRLs.
fn crl_authority() -> (tempfile::TempDir, lgsp_certs::CertificateAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let ca = lgsp_certs::CertificateAuthority::init(
        &dir.path().join("ca"),
        "vinhphuc.gov.vn",
        "CA thử",
        30,
    )
    .unwrap();
    (dir, ca)
}

/// The next CRL `ca` signs, as a catalog value.
fn signed_crl(ca: &mut lgsp_certs::CertificateAuthority) -> Value {
    let crl = ca.sign_crl(1).unwrap();
    Value::Crl(Crl {
        der: crl.der,
        number: crl.number,
        revoked_serials: crl.revoked,
    })
}

#[test]
fn only_the_admin_publishes_the_crl() {
    let kv = catalog();
    let (_dir, mut ca) = crl_authority();
    let crl = signed_crl(&mut ca);
    let err = refused(run(&kv, &node_of(A), &put_cmd(crl.clone())));
    assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
    let (stored, _) = run(&kv, &admin(), &put_cmd(crl)).unwrap();
    assert_eq!(stored.unwrap().key, "current");
}

#[test]
fn an_older_or_the_same_crl_never_replaces_a_newer_one() {
    let kv = catalog();
    let (_dir, mut ca) = crl_authority();
    let older = signed_crl(&mut ca);
    let newer = signed_crl(&mut ca);
    run(&kv, &admin(), &put_cmd(newer.clone())).unwrap();
    for stale in [older, newer] {
        let err = refused(run(&kv, &admin(), &put_cmd(stale)));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("not newer")),
            "{err:?}"
        );
    }
    run(&kv, &admin(), &put_cmd(signed_crl(&mut ca))).expect("a newer CRL replaces it");
}

#[test]
fn a_crl_record_must_say_what_the_crl_says() {
    let kv = catalog();
    let (_dir, mut ca) = crl_authority();
    let Value::Crl(mut crl) = signed_crl(&mut ca) else {
        unreachable!()
    };
    crl.number += 5;
    let err = refused(run(&kv, &admin(), &put_cmd(Value::Crl(crl.clone()))));
    assert!(matches!(err, CatalogError::InvalidArgument(_)), "{err:?}");
    crl.number -= 5;
    crl.revoked_serials.push("abcdef".into());
    let err = refused(run(&kv, &admin(), &put_cmd(Value::Crl(crl))));
    assert!(matches!(err, CatalogError::InvalidArgument(_)), "{err:?}");
    let junk = Value::Crl(Crl {
        der: vec![0x30, 0x00],
        ..Default::default()
    });
    let err = refused(run(&kv, &admin(), &put_cmd(junk)));
    assert!(matches!(err, CatalogError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn the_crl_cannot_be_deleted() {
    let command = Command {
        op: Some(Op::Delete(RecordRef {
            kind: RecordKind::Crl as i32,
            key: "current".into(),
        })),
        ..Default::default()
    };
    let err = precheck(&admin(), &command).unwrap_err();
    assert!(
        matches!(err, CatalogError::FailedPrecondition(_)),
        "{err:?}"
    );
}

// Validation.

#[test]
fn a_malformed_agency_code_is_an_invalid_argument() {
    let kv = Kv::new(MemKv::default());
    let err = refused(run(&kv, &admin(), &put_cmd(agency("sở tư pháp"))));
    assert!(matches!(err, CatalogError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn an_agency_needs_a_name_and_a_focal_point_email_with_an_at() {
    let kv = Kv::new(MemKv::default());
    let nameless = Value::Agency(Agency {
        code: A.into(),
        name: " ".into(),
        focal_point: None,
    });
    assert!(matches!(
        refused(run(&kv, &admin(), &put_cmd(nameless))),
        CatalogError::InvalidArgument(_)
    ));
    let bad_email = Value::Agency(Agency {
        code: A.into(),
        name: "Sở Tư pháp".into(),
        focal_point: Some(FocalPoint {
            email: "nobody".into(),
            ..Default::default()
        }),
    });
    assert!(matches!(
        refused(run(&kv, &admin(), &put_cmd(bad_email))),
        CatalogError::InvalidArgument(_)
    ));
}

#[test]
fn a_node_needs_a_registered_agency_a_host_port_and_a_sha256_fingerprint() {
    let kv = Kv::new(MemKv::default());
    assert!(matches!(
        refused(run(&kv, &admin(), &put_cmd(node(A, "n1")))),
        CatalogError::FailedPrecondition(_)
    ));
    run(&kv, &admin(), &put_cmd(agency(A))).unwrap();
    let mut no_port = node(A, "n1");
    if let Value::Node(n) = &mut no_port {
        n.endpoint = "node.example".into();
    }
    assert!(matches!(
        refused(run(&kv, &admin(), &put_cmd(no_port))),
        CatalogError::InvalidArgument(_)
    ));
    let mut bad_fingerprint = node(A, "n1");
    if let Value::Node(n) = &mut bad_fingerprint {
        n.cert_sha256 = "abc".into();
    }
    assert!(matches!(
        refused(run(&kv, &admin(), &put_cmd(bad_fingerprint))),
        CatalogError::InvalidArgument(_)
    ));
    let mut good = node(A, "n1");
    if let Value::Node(n) = &mut good {
        n.cert_sha256 = "ab".repeat(32);
    }
    run(&kv, &admin(), &put_cmd(good)).unwrap();
}

#[test]
fn a_service_takes_agency_and_name_from_its_id_and_starts_active() {
    let kv = catalog();
    let (stored, _) = run(
        &kv,
        &node_of(A),
        &put_cmd(Value::Service(service(&format!("{A}/thue")))),
    )
    .unwrap();
    let Some(Value::Service(s)) = stored.unwrap().value else {
        panic!("not a service");
    };
    assert_eq!((s.agency_code.as_str(), s.name.as_str()), (A, "thue"));
    assert_eq!(s.status, ServiceStatus::Active as i32);
}

#[test]
fn a_service_is_refused_when_its_parts_disagree_or_are_missing() {
    let kv = catalog();
    let id = format!("{A}/thue");
    let cases = [
        Service {
            name: "other".into(),
            ..service(&id)
        },
        Service {
            kind: ServiceKind::Unspecified as i32,
            ..service(&id)
        },
        Service {
            schema_json: "{not json".into(),
            ..service(&id)
        },
        service("no-slash"),
    ];
    for s in cases {
        let err = refused(run(&kv, &admin(), &put_cmd(Value::Service(s.clone()))));
        assert!(
            matches!(err, CatalogError::InvalidArgument(_)),
            "{s:?}: {err:?}"
        );
    }
}

#[test]
fn a_service_on_an_unregistered_node_is_refused_until_the_node_exists() {
    let kv = catalog();
    let s = Service {
        node: "n1".into(),
        ..service(&format!("{A}/thue"))
    };
    assert!(matches!(
        refused(run(&kv, &node_of(A), &put_cmd(Value::Service(s.clone())))),
        CatalogError::FailedPrecondition(_)
    ));
    run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    run(&kv, &node_of(A), &put_cmd(Value::Service(s))).unwrap();
}

#[test]
fn a_grant_needs_a_published_service_and_a_registered_consumer_and_starts_active() {
    let kv = catalog();
    assert!(matches!(
        refused(run(
            &kv,
            &node_of(A),
            &put_cmd(grant(&format!("{A}/thue"), B))
        )),
        CatalogError::FailedPrecondition(_)
    ));
    assert!(matches!(
        refused(run(
            &kv,
            &node_of(A),
            &put_cmd(grant(&format!("{A}/ho-tich"), "000.00.99.H62"))
        )),
        CatalogError::FailedPrecondition(_)
    ));
    let (stored, _) = run(
        &kv,
        &node_of(A),
        &put_cmd(grant(&format!("{A}/ho-tich"), B)),
    )
    .unwrap();
    let Some(Value::Grant(g)) = stored.unwrap().value else {
        panic!("not a grant");
    };
    assert_eq!(g.status, GrantStatus::Active as i32);
}

#[test]
fn an_empty_crl_is_refused() {
    let kv = catalog();
    let err = refused(run(&kv, &admin(), &put_cmd(Value::Crl(Crl::default()))));
    assert!(matches!(err, CatalogError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn a_put_whose_key_disagrees_with_its_value_is_refused() {
    let kv = catalog();
    let mut command = put_cmd(agency(A));
    if let Some(Op::Put(record)) = &mut command.op {
        record.key = B.into();
    }
    let err = refused(run(&kv, &admin(), &command));
    assert!(matches!(err, CatalogError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn a_record_over_the_size_limit_is_refused() {
    let kv = catalog();
    let big = Value::Crl(Crl {
        der: vec![1; MAX_RECORD_BYTES + 1],
        ..Default::default()
    });
    let err = refused(run(&kv, &admin(), &put_cmd(big)));
    assert!(matches!(err, CatalogError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn empty_commands_puts_without_value_and_deletes_without_kind_are_refused() {
    let kv = catalog();
    let no_value = Command {
        op: Some(Op::Put(CatalogRecord::default())),
        ..Default::default()
    };
    for command in [
        Command::default(),
        no_value,
        delete_cmd(RecordKind::Unspecified, A),
        delete_cmd(RecordKind::Node, "no-slash"),
    ] {
        let err = refused(run(&kv, &admin(), &command));
        assert!(
            matches!(err, CatalogError::InvalidArgument(_)),
            "{command:?}: {err:?}"
        );
    }
}

#[test]
fn deleting_an_absent_record_is_not_found() {
    let kv = catalog();
    let err = refused(run(
        &kv,
        &admin(),
        &delete_cmd(RecordKind::Node, &format!("{A}/n9")),
    ));
    assert!(matches!(err, CatalogError::NotFound(_)), "{err:?}");
}

// Compare-and-set.

#[test]
fn create_only_put_succeeds_when_absent_and_conflicts_when_present() {
    let kv = catalog();
    let mut command = put_cmd(node(A, "n1"));
    command.must_not_exist = true;
    run(&kv, &node_of(A), &command).unwrap();
    let err = refused(run(&kv, &node_of(A), &command));
    assert!(matches!(err, CatalogError::Conflict { .. }), "{err:?}");
}

#[test]
fn cas_with_the_current_mod_revision_is_applied() {
    let kv = catalog();
    let (stored, _) = run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    let mut command = put_cmd(node(A, "n1"));
    command.expected_mod_revision = mod_revision(&stored.unwrap());
    run(&kv, &node_of(A), &command).unwrap();
}

#[test]
fn cas_with_stale_mod_revision_is_refused() {
    let kv = catalog();
    let (first, _) = run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    let mut command = put_cmd(node(A, "n1"));
    command.expected_mod_revision = mod_revision(&first.unwrap());
    let err = refused(run(&kv, &node_of(A), &command));
    assert!(matches!(err, CatalogError::Conflict { .. }), "{err:?}");
}

#[test]
fn cas_expecting_a_revision_of_an_absent_record_is_refused() {
    let kv = catalog();
    let mut command = put_cmd(node(A, "n1"));
    command.expected_mod_revision = 1;
    let err = refused(run(&kv, &node_of(A), &command));
    assert!(matches!(err, CatalogError::Conflict { .. }), "{err:?}");
}

#[test]
fn cas_delete_applies_at_the_current_revision_and_conflicts_when_stale() {
    let kv = catalog();
    let (stored, _) = run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    let current = mod_revision(&stored.unwrap());
    let mut stale = delete_cmd(RecordKind::Node, &format!("{A}/n1"));
    stale.expected_mod_revision = current - 1;
    let err = refused(run(&kv, &node_of(A), &stale));
    assert!(matches!(err, CatalogError::Conflict { .. }), "{err:?}");
    let mut fresh = stale.clone();
    fresh.expected_mod_revision = current;
    let (gone, event) = run(&kv, &node_of(A), &fresh).unwrap();
    assert!(gone.is_none());
    assert_eq!(event.r#type, EventType::Delete as i32);
    assert_eq!(
        get(&kv, RecordKind::Node, &format!("{A}/n1")).unwrap(),
        None
    );
}

// Revisions and history.

#[test]
fn every_change_bumps_the_revision_and_an_update_keeps_the_create_revision() {
    let kv = catalog();
    let before = revision(&kv).unwrap();
    let (first, _) = run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    let (second, event) = run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    let (first, second) = (first.unwrap().meta.unwrap(), second.unwrap().meta.unwrap());
    assert_eq!(first.create_revision, before + 1);
    assert_eq!(first.mod_revision, before + 1);
    assert_eq!(second.create_revision, before + 1);
    assert_eq!(second.mod_revision, before + 2);
    assert_eq!(event.revision, before + 2);
    assert_eq!(revision(&kv).unwrap(), before + 2);
}

#[test]
fn a_delete_event_carries_the_last_record_at_the_delete_revision() {
    let kv = catalog();
    run(&kv, &node_of(A), &put_cmd(node(A, "n1"))).unwrap();
    let (_, event) = run(
        &kv,
        &node_of(A),
        &delete_cmd(RecordKind::Node, &format!("{A}/n1")),
    )
    .unwrap();
    let record = event.record.unwrap();
    assert_eq!(record.key, format!("{A}/n1"));
    assert_eq!(mod_revision(&record), event.revision);
}

#[test]
fn history_replays_every_change_in_order_from_a_revision() {
    let kv = catalog();
    let revisions: Vec<u64> = history(&kv, 2).map(|e| e.unwrap().revision).collect();
    assert_eq!(revisions, vec![2, 3]);
}

#[test]
fn a_check_sees_changes_staged_earlier_in_the_same_batch() {
    let kv = Kv::new(MemKv::default());
    let mut batch = Staged::new(&kv);
    let checked = check(&batch, &admin(), &put_cmd(agency(A))).unwrap();
    apply(&mut batch, checked).unwrap();
    // The agency is only staged, yet the node that needs it is accepted.
    let checked = check(&batch, &admin(), &put_cmd(node(A, "n1"))).unwrap();
    apply(&mut batch, checked).unwrap();
    assert_eq!(revision(&kv).unwrap(), 0);
    batch.commit().unwrap();
    assert_eq!(revision(&kv).unwrap(), 2);
}

#[test]
fn compacting_history_keeps_the_newest_events_and_moves_the_compact_revision() {
    let kv = catalog();
    for i in 0..20 {
        run(&kv, &node_of(A), &put_cmd(node(A, &format!("n{i}")))).unwrap();
    }
    let rev = revision(&kv).unwrap();
    compact_history(&kv, 4, 1024).unwrap();
    let oldest = compact_revision(&kv).unwrap();
    assert_eq!(oldest, rev - 4 + 1);
    let kept: Vec<u64> = history(&kv, 1).map(|e| e.unwrap().revision).collect();
    assert_eq!(kept, (oldest..=rev).collect::<Vec<_>>());
}

// Listing.

#[test]
fn list_filters_by_kind_prefix_and_keyword_and_pages_in_key_order() {
    let kv = catalog();
    for name in ["a1", "a2", "a3", "b1"] {
        run(&kv, &node_of(A), &put_cmd(node(A, name))).unwrap();
    }
    let query = |prefix: &str, keyword: &str, size: u32, token: &str| ListQuery {
        kind: RecordKind::Node as i32,
        prefix: prefix.into(),
        keyword: keyword.into(),
        page_size: size,
        page_token: token.into(),
        ..Default::default()
    };
    let keys = |records: Vec<CatalogRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.key).collect()
    };
    let (page, token) = list(&kv, &query(&format!("{A}/a"), "", 2, "")).unwrap();
    assert_eq!(keys(page), vec![format!("{A}/a1"), format!("{A}/a2")]);
    let (page, token) = list(&kv, &query(&format!("{A}/a"), "", 2, &token)).unwrap();
    assert_eq!(keys(page), vec![format!("{A}/a3")]);
    assert_eq!(token, "");
    let (page, _) = list(&kv, &query("", "B1", 0, "")).unwrap();
    assert_eq!(keys(page), vec![format!("{A}/b1")]);
    let (services, _) = list(
        &kv,
        &ListQuery {
            kind: RecordKind::Service as i32,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(keys(services), vec![format!("{A}/ho-tich")]);
    assert!(matches!(
        list(&kv, &ListQuery::default()),
        Err(CatalogError::InvalidArgument(_))
    ));
}

// Snapshot and restore.

#[test]
fn a_restored_snapshot_has_the_records_members_and_revision_and_no_history() {
    let source = catalog();
    let mut batch = Staged::new(&source);
    put_member(
        &mut batch,
        &Member {
            id: 7,
            peer_address: "r7:7000".into(),
            ..Default::default()
        },
    );
    batch.commit().unwrap();
    let data = snapshot_data(&source).unwrap();

    let target = Kv::new(MemKv::default());
    run(&target, &admin(), &put_cmd(agency("000.00.77.H62"))).unwrap();
    let mut batch = Staged::new(&target);
    restore(&target, &mut batch, &data).unwrap();
    batch.commit().unwrap();

    let rev = revision(&source).unwrap();
    assert_eq!(revision(&target).unwrap(), rev);
    assert_eq!(compact_revision(&target).unwrap(), rev + 1);
    assert_eq!(
        get(&target, RecordKind::Agency, "000.00.77.H62").unwrap(),
        None
    );
    assert_eq!(
        get(&target, RecordKind::Service, &format!("{A}/ho-tich")).unwrap(),
        get(&source, RecordKind::Service, &format!("{A}/ho-tich")).unwrap()
    );
    assert_eq!(history(&target, 1).count(), 0);
    assert_eq!(members(&target).unwrap()[0].id, 7);
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let target = Kv::new(MemKv::default());
    let mut batch = Staged::new(&target);
    assert!(restore(&target, &mut batch, b"\xff\xff\xff").is_err());
}

// Read errors.

#[test]
fn a_failing_record_read_is_an_error_not_an_absent_record() {
    let engine = MemKv::default();
    let kv = Kv::new(engine.clone());
    run(&kv, &admin(), &put_cmd(agency(A))).unwrap();
    engine.fail_reads(b"c:");
    assert!(get(&kv, RecordKind::Agency, A).is_err());
    let err = refused(run(&kv, &admin(), &put_cmd(node(A, "n1"))));
    assert!(matches!(err, CatalogError::Internal(_)), "{err:?}");
}

#[test]
fn a_failing_revision_read_is_an_error_not_revision_zero() {
    let engine = MemKv::default();
    let kv = Kv::new(engine.clone());
    run(&kv, &admin(), &put_cmd(agency(A))).unwrap();
    engine.fail_reads(REVISION);
    assert!(revision(&kv).is_err());
    let checked = check(&kv, &admin(), &put_cmd(agency(B))).unwrap();
    let mut batch = Staged::new(&kv);
    assert!(apply(&mut batch, checked).is_err());
}

// Deletes and what depends on them.

#[test]
fn only_the_admin_removes_an_agency() {
    let kv = catalog();
    let err = refused(run(&kv, &node_of(B), &delete_cmd(RecordKind::Agency, B)));
    assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
    run(&kv, &admin(), &delete_cmd(RecordKind::Agency, B)).expect("B has nothing left");
}

#[test]
fn an_agency_with_services_or_grants_is_not_removed_until_they_are() {
    let kv = catalog();
    let ho_tich = format!("{A}/ho-tich");
    run(&kv, &node_of(A), &put_cmd(grant(&ho_tich, B))).unwrap();
    // A still provides a service; B still receives a grant.
    for agency in [A, B] {
        let err = refused(run(&kv, &admin(), &delete_cmd(RecordKind::Agency, agency)));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains(&format!("grant {ho_tich}|{B}"))),
            "{err:?}"
        );
    }
    // A service with a grant is not removed either.
    let err = refused(run(
        &kv,
        &node_of(A),
        &delete_cmd(RecordKind::Service, &ho_tich),
    ));
    assert!(
        matches!(err, CatalogError::FailedPrecondition(_)),
        "{err:?}"
    );
    // Removed in order, everything goes.
    let grant_key = format!("{ho_tich}|{B}");
    run(&kv, &node_of(A), &delete_cmd(RecordKind::Grant, &grant_key)).unwrap();
    run(&kv, &admin(), &delete_cmd(RecordKind::Agency, B)).unwrap();
    run(&kv, &node_of(A), &delete_cmd(RecordKind::Service, &ho_tich)).unwrap();
    run(&kv, &admin(), &delete_cmd(RecordKind::Agency, A)).unwrap();
}

#[test]
fn a_node_that_serves_a_service_is_not_removed() {
    let kv = catalog();
    run(&kv, &node_of(A), &put_cmd(node(A, "node-1"))).unwrap();
    let served = Service {
        node: "node-1".into(),
        ..service(&format!("{A}/dkkd"))
    };
    run(&kv, &node_of(A), &put_cmd(Value::Service(served))).unwrap();
    let key = format!("{A}/node-1");
    let err = refused(run(&kv, &node_of(A), &delete_cmd(RecordKind::Node, &key)));
    assert!(
        matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("dkkd")),
        "{err:?}"
    );
}

#[test]
fn a_prefix_read_through_a_stage_sees_staged_writes_and_removals() {
    let kv = Kv::new(MemKv::default());
    let mut first = Staged::new(&kv);
    first.insert(b"p/a".to_vec(), b"1".to_vec());
    first.insert(b"p/b".to_vec(), b"2".to_vec());
    first.insert(b"q/a".to_vec(), b"3".to_vec());
    first.commit().unwrap();
    let mut stage = Staged::new(&kv);
    stage.remove(b"p/a".to_vec());
    stage.insert(b"p/c".to_vec(), b"4".to_vec());
    let seen: Vec<Vec<u8>> = stage
        .read_prefix(b"p/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(seen, [b"p/b".to_vec(), b"p/c".to_vec()]);
}

// Quotas.

#[test]
fn an_agency_cannot_hold_more_than_its_quota_of_records_of_one_kind() {
    let kv = catalog();
    // The catalog already holds A/ho-tich.
    for n in 1..MAX_RECORDS_PER_AGENCY {
        let s = service(&format!("{A}/dich-vu-{n}"));
        run(&kv, &node_of(A), &put_cmd(Value::Service(s))).unwrap();
    }
    let one_more = service(&format!("{A}/mot-nua"));
    let err = refused(run(
        &kv,
        &node_of(A),
        &put_cmd(Value::Service(one_more.clone())),
    ));
    assert!(
        matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("quota")),
        "{err:?}"
    );
    // Replacing a record it holds is not one more; the admin is not bound.
    let again = service(&format!("{A}/dich-vu-1"));
    run(&kv, &node_of(A), &put_cmd(Value::Service(again))).unwrap();
    run(&kv, &admin(), &put_cmd(Value::Service(one_more))).unwrap();
}

#[test]
fn an_agency_cannot_fill_the_catalog_with_large_records() {
    let kv = catalog();
    let schema = format!("{{\"mo_ta\":\"{}\"}}", "x".repeat(60_000));
    let mut refused_at = None;
    for n in 0..200 {
        let s = Service {
            schema_json: schema.clone(),
            ..service(&format!("{A}/lon-{n}"))
        };
        if let Err(err) = run(&kv, &node_of(A), &put_cmd(Value::Service(s))) {
            assert!(
                matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("bytes")),
                "{err:?}"
            );
            refused_at = Some(n);
            break;
        }
    }
    let n = refused_at.expect("refused before 200 records of 60 KB");
    assert!(
        n * 60_000 <= MAX_BYTES_PER_AGENCY + 60_000,
        "refused only at {n}"
    );
}

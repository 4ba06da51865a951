//! The catalog state machine against the in-memory store: every record
//! kind, its validation and authorization rules, every compare-and-set case,
//! revisions, history, listing, and snapshot and restore.

use super::*;
use crate::mem_kv::MemKv;
use lgsp_certs::identity::SpiffeId;
use lgsp_proto::{Agency, Crl, FocalPoint, Grant, NodeRecord, Service};

const ADMIN_AGENCY: &str = "000.00.01.H62";
/// Monday 7 December 2026, 09:00 in Vietnam.
const NOW: i64 = 1_796_608_800;
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

static PROVINCE: std::sync::LazyLock<AgencyCode> =
    std::sync::LazyLock::new(|| AgencyCode::new(ADMIN_AGENCY).unwrap());

/// `who` asking at [`NOW`], in a province run by [`ADMIN_AGENCY`].
fn asker(who: &SpiffeId) -> Asker<'_> {
    Asker {
        actor: who,
        province: &PROVINCE,
        now_unix: NOW,
    }
}

/// Checks and applies `command` in one batch, as one committed entry.
fn run(
    kv: &Kv,
    who: &SpiffeId,
    command: &Command,
) -> Result<(Option<CatalogRecord>, WatchEvent), CatalogError> {
    run_at(kv, who, command, NOW)
}

/// [`run`] with the receiving server's clock at `now_unix`; a refusal that
/// still writes (a node name in use) is applied, then returned.
fn run_at(
    kv: &Kv,
    who: &SpiffeId,
    command: &Command,
    now_unix: i64,
) -> Result<(Option<CatalogRecord>, WatchEvent), CatalogError> {
    let asker = Asker {
        now_unix,
        ..asker(who)
    };
    let mut checked = check(kv, &asker, command)?;
    let refusal = checked.take_refusal();
    let mut batch = Staged::new(kv);
    let (record, mut events) = apply(&mut batch, checked).expect("apply");
    batch.commit().expect("commit");
    match refusal {
        Some(refused) => Err(refused),
        None => Ok((record, events.remove(0))),
    }
}

fn agency(code: &str) -> Value {
    Value::Agency(Agency {
        code: code.into(),
        name: format!("Sở {code}"),
        focal_point: None,
        ..Default::default()
    })
}

fn node(agency: &str, name: &str) -> Value {
    Value::Node(NodeRecord {
        agency_code: agency.into(),
        name: name.into(),
        endpoint: "node.example:7443".into(),
        ..Default::default()
    })
}

/// Node `A/n1` as instance `instance` registers it, reached at `endpoint`.
fn node_instance(instance: &str, endpoint: &str) -> NodeRecord {
    NodeRecord {
        agency_code: A.into(),
        name: "n1".into(),
        endpoint: endpoint.into(),
        instance_id: instance.into(),
        ..Default::default()
    }
}

fn stored_node(kv: &Kv) -> NodeRecord {
    match get(kv, RecordKind::Node, &format!("{A}/n1"))
        .unwrap()
        .and_then(|r| r.value)
    {
        Some(Value::Node(n)) => n,
        other => panic!("not a node: {other:?}"),
    }
}

#[test]
fn a_second_instance_is_refused_while_the_first_is_heard_from_and_the_first_is_told() {
    let kv = catalog();
    let first = node_instance("aaaa", "10.0.0.21:7301");
    let second = node_instance("bbbb", "10.0.0.99:7301");
    run_at(&kv, &node_of(A), &put_cmd(Value::Node(first.clone())), NOW).unwrap();
    assert_eq!(stored_node(&kv).heard_unix, NOW);
    let err = run_at(&kv, &node_of(A), &put_cmd(Value::Node(second)), NOW + 5).unwrap_err();
    assert!(
        matches!(&err, CatalogError::InUse(m)
            if m.contains("already running") && m.contains("aaaa") && m.contains("10.0.0.21:7301")
                && m.contains("--name node-2") && m.contains("after 25 s")),
        "{err:?}"
    );
    // The first keeps its entry, and its record now names the contender.
    let kept = stored_node(&kv);
    assert_eq!(
        (kept.instance_id.as_str(), kept.endpoint.as_str()),
        ("aaaa", "10.0.0.21:7301")
    );
    let contender = kept.contender.expect("the contender is noted");
    assert_eq!(
        (
            contender.instance_id.as_str(),
            contender.endpoint.as_str(),
            contender.at_unix
        ),
        ("bbbb", "10.0.0.99:7301", NOW + 5)
    );
    // The first's own renewal is accepted and clears the note.
    run_at(&kv, &node_of(A), &put_cmd(Value::Node(first)), NOW + 10).unwrap();
    let renewed = stored_node(&kv);
    assert_eq!(renewed.heard_unix, NOW + 10);
    assert!(renewed.contender.is_none());
}

#[test]
fn another_instance_takes_the_name_once_the_lease_lapses_or_the_first_stopped() {
    let kv = catalog();
    let first = node_instance("aaaa", "10.0.0.21:7301");
    run_at(&kv, &node_of(A), &put_cmd(Value::Node(first.clone())), NOW).unwrap();
    let later = NOW + NODE_LEASE_SECONDS;
    run_at(
        &kv,
        &node_of(A),
        &put_cmd(Value::Node(node_instance("bbbb", "10.0.0.22:7301"))),
        later,
    )
    .unwrap();
    assert_eq!(stored_node(&kv).instance_id, "bbbb");
    // A node stopping in order gives its name up at once.
    let stopping = NodeRecord {
        stopping: true,
        ..node_instance("bbbb", "10.0.0.22:7301")
    };
    run_at(&kv, &node_of(A), &put_cmd(Value::Node(stopping)), later + 1).unwrap();
    assert_eq!(stored_node(&kv).heard_unix, 0);
    run_at(&kv, &node_of(A), &put_cmd(Value::Node(first)), later + 2).unwrap();
    assert_eq!(stored_node(&kv).instance_id, "aaaa");
}

/// An online service served by its agency's `node-1` (which [`catalog`]
/// registers for A and B).
fn service(id: &str) -> Service {
    Service {
        id: id.into(),
        kind: ServiceKind::Http as i32,
        node: "node-1".into(),
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

/// A catalog with agencies A and B, a node `node-1` of each, and service
/// `A/ho-tich`.
fn catalog() -> Kv {
    let kv = Kv::new(MemKv::default());
    run(&kv, &admin(), &put_cmd(agency(A))).unwrap();
    run(&kv, &admin(), &put_cmd(agency(B))).unwrap();
    run(&kv, &node_of(A), &put_cmd(node(A, "node-1"))).unwrap();
    run(&kv, &node_of(B), &put_cmd(node(B, "node-1"))).unwrap();
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
fn an_agency_admin_updates_its_own_registered_agency_and_a_node_may_not() {
    let kv = catalog();
    let err = refused(run(&kv, &node_of(A), &put_cmd(agency(A))));
    assert!(
        matches!(&err, CatalogError::PermissionDenied(m) if m.contains("needs an admin certificate of agency")),
        "{err:?}"
    );
    let (stored, _) = run(&kv, &actor(A, Role::Admin), &put_cmd(agency(A))).unwrap();
    assert_eq!(stored.unwrap().key, A);
    let err = refused(run(&kv, &actor(A, Role::Admin), &put_cmd(agency(B))));
    assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
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
    for who in [node_of(B), node_of(A), actor(B, Role::Admin)] {
        let err = refused(run(&kv, &who, &put_cmd(g.clone())));
        assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
    }
    // The provider's own admin grants by approving requests, not directly.
    let err = refused(run(&kv, &actor(A, Role::Admin), &put_cmd(g.clone())));
    assert!(
        matches!(&err, CatalogError::PermissionDenied(m) if m.contains("lgsp requests approve")),
        "{err:?}"
    );
    let (stored, _) = run(&kv, &admin(), &put_cmd(g)).unwrap();
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
    let err = precheck(&asker(&admin()), &command).unwrap_err();
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
        ..Default::default()
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
        ..Default::default()
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
fn a_node_version_is_kept_and_a_long_or_control_one_refused() {
    let kv = catalog();
    let with = |version: &str| {
        Value::Node(NodeRecord {
            version: version.into(),
            ..node_instance("aaaa", "10.0.0.21:7301")
        })
    };
    for bad in ["1".repeat(81), "0.1.0\u{1b}[2J".to_owned()] {
        let err = refused(run(&kv, &admin(), &put_cmd(with(&bad))));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("node version")),
            "{bad:?}: {err:?}"
        );
    }
    run(&kv, &admin(), &put_cmd(with("0.1.0 (commit 85ca323)"))).unwrap();
    assert_eq!(stored_node(&kv).version, "0.1.0 (commit 85ca323)");
}

#[test]
fn node_capabilities_are_bounded_and_only_an_import_says_it_verifies_batches() {
    let kv = catalog();
    let with = |capabilities: Vec<String>| {
        Value::Node(NodeRecord {
            capabilities,
            ..node_instance("aaaa", "10.0.0.21:7301")
        })
    };
    for bad in [
        vec!["x".repeat(41)],
        vec!["obo-batch".to_owned(); 9],
        vec![String::new()],
        vec!["obo\nbatch".to_owned()],
        vec!["ôbô".to_owned()],
    ] {
        let err = refused(run(&kv, &admin(), &put_cmd(with(bad.clone()))));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("capabilit")),
            "{bad:?}: {err:?}"
        );
    }
    run(&kv, &admin(), &put_cmd(with(vec!["obo-batch".to_owned()]))).unwrap();
    assert_eq!(stored_node(&kv).capabilities, ["obo-batch"]);
    // A province's own service cannot claim what only an import carries.
    let (stored, _) = run(
        &kv,
        &node_of(A),
        &put_cmd(Value::Service(Service {
            verifies_batched_records: true,
            ..service(&format!("{A}/thue"))
        })),
    )
    .unwrap();
    let Some(Value::Service(stored)) = stored.and_then(|r| r.value) else {
        panic!("no service stored");
    };
    assert!(!stored.verifies_batched_records);
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
fn an_online_service_without_a_node_is_refused_naming_the_agencys_nodes() {
    let kv = catalog();
    let s = Service {
        node: String::new(),
        ..service(&format!("{A}/thue"))
    };
    let err = refused(run(&kv, &node_of(A), &put_cmd(Value::Service(s))));
    assert!(
        matches!(&err, CatalogError::FailedPrecondition(m)
            if m.contains("names no node") && m.contains("--node") && m.contains("node-1")),
        "{err:?}"
    );
}

#[test]
fn an_online_service_of_an_agency_without_nodes_is_refused_saying_to_start_one() {
    let kv = Kv::new(MemKv::default());
    run(&kv, &admin(), &put_cmd(agency(A))).unwrap();
    let s = Service {
        node: String::new(),
        ..service(&format!("{A}/thue"))
    };
    let err = refused(run(&kv, &admin(), &put_cmd(Value::Service(s))));
    assert!(
        matches!(&err, CatalogError::FailedPrecondition(m)
            if m.contains("no node in the catalog") && m.contains("lgsp node start")),
        "{err:?}"
    );
}

#[test]
fn a_service_naming_another_agencys_node_is_refused() {
    let kv = catalog();
    run(&kv, &node_of(B), &put_cmd(node(B, "node-b"))).unwrap();
    let s = Service {
        node: "node-b".into(),
        ..service(&format!("{A}/thue"))
    };
    let err = refused(run(&kv, &admin(), &put_cmd(Value::Service(s))));
    assert!(
        matches!(&err, CatalogError::FailedPrecondition(m)
            if m.contains("\"node-b\"") && m.contains(&format!("agency {A} has not registered"))),
        "{err:?}"
    );
}

#[test]
fn a_service_shared_offline_or_withdrawn_needs_no_node() {
    let kv = catalog();
    let package = Service {
        node: String::new(),
        sharing_method: SharingMethod::DataPackage as i32,
        ..service(&format!("{A}/goi-du-lieu"))
    };
    run(&kv, &node_of(A), &put_cmd(Value::Service(package))).unwrap();
    let withdrawn = Service {
        node: String::new(),
        status: ServiceStatus::Withdrawn as i32,
        ..service(&format!("{A}/cu"))
    };
    run(&kv, &node_of(A), &put_cmd(Value::Service(withdrawn))).unwrap();
}

#[test]
fn a_grant_needs_a_published_service_and_a_registered_consumer_and_starts_active() {
    let kv = catalog();
    assert!(matches!(
        refused(run(&kv, &admin(), &put_cmd(grant(&format!("{A}/thue"), B)))),
        CatalogError::FailedPrecondition(_)
    ));
    assert!(matches!(
        refused(run(
            &kv,
            &admin(),
            &put_cmd(grant(&format!("{A}/ho-tich"), "000.00.99.H62"))
        )),
        CatalogError::FailedPrecondition(_)
    ));
    let (stored, _) = run(&kv, &admin(), &put_cmd(grant(&format!("{A}/ho-tich"), B))).unwrap();
    let Some(Value::Grant(g)) = stored.unwrap().value else {
        panic!("not a grant");
    };
    assert_eq!(g.status, GrantStatus::Active as i32);
}

/// Checks and applies `command` as the committed entry its proposer took
/// at `entry_ms` by its own wall clock, through the function every server
/// applies it with (`RaftLoop::apply_proposal` calls it): at the apply
/// clock, in one batch that is committed whatever the outcome.
fn run_entry(
    kv: &Kv,
    who: &SpiffeId,
    command: &Command,
    entry_ms: i64,
) -> Result<(), CatalogError> {
    let mut batch = Staged::new(kv);
    let outcome = apply_command(&mut batch, &PROVINCE, &who.to_string(), command, entry_ms)
        .expect("the store")
        .map(drop);
    batch.commit().expect("commit");
    outcome
}

#[test]
fn a_proposers_clock_stepping_back_never_brings_an_expired_grant_back_into_force() {
    let kv = catalog();
    let ends = NOW + 60;
    let expiring = put_cmd(Value::Grant(Grant {
        service_id: format!("{A}/ho-tich"),
        consumer_agency: B.into(),
        expires_unix: ends,
        ..Default::default()
    }));
    run_entry(&kv, &admin(), &expiring, NOW * 1000).unwrap();
    // Two minutes later the grant has ended: granting it again until the
    // same end is refused.
    let err = refused(run_entry(&kv, &admin(), &expiring, (NOW + 120) * 1000));
    assert!(err.to_string().contains("already passed"), "{err}");
    // A proposer whose clock stepped back 90 s (NTP, a VM restored) must
    // not make the ended grant valid again.
    let err = refused(run_entry(&kv, &admin(), &expiring, (NOW + 30) * 1000));
    assert!(err.to_string().contains("already passed"), "{err}");
    assert_eq!(apply_clock_ms(&kv).unwrap(), (NOW + 120) * 1000);

    // A server that catches up by snapshot goes on from the same clock.
    let target = Kv::new(MemKv::default());
    let mut batch = Staged::new(&target);
    restore(&target, &mut batch, &snapshot_data(&kv).unwrap()).unwrap();
    batch.commit().unwrap();
    assert_eq!(apply_clock_ms(&target).unwrap(), (NOW + 120) * 1000);
    let err = refused(run_entry(&target, &admin(), &expiring, (NOW + 30) * 1000));
    assert!(err.to_string().contains("already passed"), "{err}");
    // A clock that runs on moves the apply clock on.
    let later = (NOW + 600) * 1000;
    let mut batch = Staged::new(&target);
    assert_eq!(apply_clock(&mut batch, later).unwrap(), later);
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
    // Agencies A and B, their nodes, the service: revisions 1 to 5.
    let revisions: Vec<u64> = history(&kv, 2).map(|e| e.unwrap().revision).collect();
    assert_eq!(revisions, vec![2, 3, 4, 5]);
}

#[test]
fn a_check_sees_changes_staged_earlier_in_the_same_batch() {
    let kv = Kv::new(MemKv::default());
    let mut batch = Staged::new(&kv);
    let checked = check(&batch, &asker(&admin()), &put_cmd(agency(A))).unwrap();
    apply(&mut batch, checked).unwrap();
    // The agency is only staged, yet the node that needs it is accepted.
    let checked = check(&batch, &asker(&admin()), &put_cmd(node(A, "n1"))).unwrap();
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

#[test]
fn a_filtered_list_examines_a_bounded_number_of_records_per_call_and_says_where_to_go_on() {
    let engine = MemKv::default();
    let kv = Kv::new(engine.clone());
    // Written directly: no agency may hold this many, but the catalog as a
    // whole does (many agencies' nodes), and a filter scans them all.
    let total = 3 * LIST_EXAMINED;
    let mut batch = Staged::new(&kv);
    for i in 0..total {
        let name = if i == total - 1 {
            "dac-biet".to_owned()
        } else {
            format!("n{i:05}")
        };
        let Value::Node(n) = node(A, &name) else {
            unreachable!()
        };
        let key = format!("{A}/{name}");
        let record = CatalogRecord {
            kind: RecordKind::Node as i32,
            key: key.clone(),
            value: Some(Value::Node(n)),
            ..Default::default()
        };
        batch.insert(
            record_db_key(RecordKind::Node, &key),
            record.encode_to_vec(),
        );
    }
    batch.commit().unwrap();
    let mut query = ListQuery {
        kind: RecordKind::Node as i32,
        keyword: "dac-biet".into(),
        page_size: 10,
        ..Default::default()
    };
    let mut found = Vec::new();
    let mut calls = 0;
    loop {
        let before = engine.pairs_read();
        let (page, token) = list(&kv, &query).unwrap();
        let examined = engine.pairs_read() - before;
        assert!(
            examined <= LIST_EXAMINED + 1,
            "one call examined {examined} records; at most {LIST_EXAMINED} may be"
        );
        calls += 1;
        found.extend(page.into_iter().map(|r| r.key));
        if token.is_empty() {
            break;
        }
        query.page_token = token;
    }
    assert_eq!(found, vec![format!("{A}/dac-biet")]);
    assert_eq!(calls, 3, "{total} records, {LIST_EXAMINED} a call");
}

#[test]
fn list_keyword_matches_as_people_type_without_diacritics_or_case() {
    let kv = catalog();
    let mut s = service(&format!("{A}/dat-dai"));
    s.name = "dat-dai".into();
    s.description = "Hộ tịch điện tử; Đăng ký đất đai".into();
    run(&kv, &node_of(A), &put_cmd(Value::Service(s))).unwrap();
    let found = |keyword: &str| -> Vec<String> {
        let q = ListQuery {
            kind: RecordKind::Service as i32,
            keyword: keyword.into(),
            ..Default::default()
        };
        list(&kv, &q)
            .unwrap()
            .0
            .into_iter()
            .map(|r| r.key)
            .collect()
    };
    let dat_dai = vec![format!("{A}/dat-dai")];
    assert_eq!(found("ho tich dien"), dat_dai);
    assert_eq!(found("HỘ TỊCH ĐIỆN"), dat_dai);
    // Typed decomposed (NFD), as some keyboards send it.
    assert_eq!(found("Ho\u{0302}\u{0323} ti\u{0323}ch đ"), dat_dai);
    assert_eq!(found("dang ky dat dai"), dat_dai);
    assert!(found("ho tich xyz").is_empty());
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
    let checked = check(&kv, &asker(&admin()), &put_cmd(agency(B))).unwrap();
    let mut batch = Staged::new(&kv);
    assert!(apply(&mut batch, checked).is_err());
}

// Deletes and what depends on them.

#[test]
fn only_the_admin_removes_an_agency() {
    let kv = catalog();
    let err = refused(run(&kv, &node_of(B), &delete_cmd(RecordKind::Agency, B)));
    assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
    let b_node = format!("{B}/node-1");
    run(&kv, &admin(), &delete_cmd(RecordKind::Node, &b_node)).unwrap();
    run(&kv, &admin(), &delete_cmd(RecordKind::Agency, B)).expect("B has nothing left");
}

#[test]
fn an_agency_with_services_or_grants_is_not_removed_until_they_are() {
    let kv = catalog();
    let ho_tich = format!("{A}/ho-tich");
    run(&kv, &admin(), &put_cmd(grant(&ho_tich, B))).unwrap();
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
    run(&kv, &admin(), &delete_cmd(RecordKind::Grant, &grant_key)).unwrap();
    for agency in [A, B] {
        let node = format!("{agency}/node-1");
        if agency == A {
            run(&kv, &node_of(A), &delete_cmd(RecordKind::Service, &ho_tich)).unwrap();
        }
        run(&kv, &admin(), &delete_cmd(RecordKind::Node, &node)).unwrap();
        run(&kv, &admin(), &delete_cmd(RecordKind::Agency, agency)).unwrap();
    }
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

// The regulation's procedures (procedure.rs): roles, services, requests,
// suspension, termination, maintenance.

mod procedures {
    use super::*;
    use lgsp_proto::{
        AccessRequest, Agreement, Calendar, DataItem, ItemClass, Maintenance, RequestStatus,
        SecurityClass, SuspensionKind, TerminationKind,
    };

    const DAY: i64 = 86_400;

    fn agency_admin(agency: &str) -> SpiffeId {
        actor(agency, Role::Admin)
    }

    fn item(name: &str, class: ItemClass) -> DataItem {
        DataItem {
            name: name.into(),
            class: class as i32,
            ..Default::default()
        }
    }

    /// A's dataset service `ho-tich` with open x, default y, special z.
    fn with_items() -> Kv {
        let kv = catalog();
        let s = Service {
            description: "Hộ tịch".into(),
            items: vec![
                item("x", ItemClass::Open),
                item("y", ItemClass::Shared),
                item("z", ItemClass::Special),
            ],
            ..service(&format!("{A}/ho-tich"))
        };
        run(&kv, &agency_admin(A), &put_cmd(Value::Service(s))).unwrap();
        kv
    }

    fn request(name: &str, items: &[&str]) -> AccessRequest {
        AccessRequest {
            id: format!("{B}/{name}"),
            service_id: format!("{A}/ho-tich"),
            application_id: "mot-cua".into(),
            application_name: "Một cửa điện tử".into(),
            purpose: "Giải quyết thủ tục hành chính".into(),
            frequency: "hàng ngày".into(),
            items: items.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn stored<T>(out: (Option<CatalogRecord>, WatchEvent), pick: fn(Value) -> Option<T>) -> T {
        pick(out.0.unwrap().value.unwrap()).unwrap()
    }

    fn as_request(v: Value) -> Option<AccessRequest> {
        match v {
            Value::Request(r) => Some(r),
            _ => None,
        }
    }

    fn as_grant(v: Value) -> Option<Grant> {
        match v {
            Value::Grant(g) => Some(g),
            _ => None,
        }
    }

    fn as_service(v: Value) -> Option<Service> {
        match v {
            Value::Service(s) => Some(s),
            _ => None,
        }
    }

    fn decide(id: &str, status: RequestStatus, reason: &str, items: &[&str]) -> Command {
        put_cmd(Value::Request(AccessRequest {
            id: id.into(),
            status: status as i32,
            decision_reason: reason.into(),
            granted_items: items.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }))
    }

    fn denied(err: CatalogError, needs: &str) {
        assert!(
            matches!(&err, CatalogError::PermissionDenied(m) if m.contains(needs)),
            "expected a refusal naming {needs:?}: {err:?}"
        );
    }

    fn grant_of(kv: &Kv) -> Grant {
        match get(kv, RecordKind::Grant, &format!("{A}/ho-tich|{B}"))
            .unwrap()
            .and_then(|r| r.value)
        {
            Some(Value::Grant(g)) => g,
            other => panic!("no grant: {other:?}"),
        }
    }

    #[test]
    fn each_role_trying_an_action_not_its_own_is_refused_naming_the_role_needed() {
        let kv = with_items();
        // Filing for B: B's admin, not B's node, not A's admin.
        let r = put_cmd(Value::Request(request("r1", &["x"])));
        denied(
            refused(run(&kv, &node_of(B), &r)),
            "an admin certificate of agency",
        );
        denied(
            refused(run(&kv, &agency_admin(A), &r)),
            "an admin of the consumer agency 000.00.13.H62",
        );
        run(&kv, &agency_admin(B), &r).unwrap();
        // Deciding: A's admin, not B's admin.
        let approve = decide(&format!("{B}/r1"), RequestStatus::Approved, "", &[]);
        denied(
            refused(run(&kv, &agency_admin(B), &approve)),
            "an admin of the provider agency 000.00.12.H62",
        );
        // The calendar and the CRL: the provincial admin only.
        let cal = put_cmd(Value::Calendar(Calendar::default()));
        denied(
            refused(run(&kv, &agency_admin(A), &cal)),
            "the provincial admin",
        );
        run(&kv, &admin(), &cal).unwrap();
        // Suspending: the provider's admin, not its node, not the consumer.
        run(&kv, &agency_admin(A), &approve).unwrap();
        let suspend = put_cmd(Value::Grant(Grant {
            status: GrantStatus::Suspended as i32,
            suspension: SuspensionKind::Breach as i32,
            reason: "vi phạm".into(),
            restore: "gửi báo cáo".into(),
            ..as_grant(grant(&format!("{A}/ho-tich"), B)).unwrap()
        }));
        denied(
            refused(run(&kv, &node_of(A), &suspend)),
            "an admin certificate of agency",
        );
        denied(
            refused(run(&kv, &agency_admin(B), &suspend)),
            "an admin certificate of agency 000.00.12.H62",
        );
        run(&kv, &agency_admin(A), &suspend).unwrap();
    }

    #[test]
    fn a_state_secret_service_or_item_never_enters_the_catalog() {
        let kv = catalog();
        let secret = Service {
            security: SecurityClass::StateSecret as i32,
            ..service(&format!("{A}/mat"))
        };
        let err = refused(run(&kv, &admin(), &put_cmd(Value::Service(secret))));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("Art. 1.2")),
            "{err:?}"
        );
        let secret_item = Service {
            items: vec![DataItem {
                security: SecurityClass::StateSecret as i32,
                ..item("toa-do", ItemClass::Special)
            }],
            ..service(&format!("{A}/ban-do"))
        };
        let err = refused(run(&kv, &admin(), &put_cmd(Value::Service(secret_item))));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("toa-do")),
            "{err:?}"
        );
    }

    #[test]
    fn a_change_to_a_service_bumps_its_version_and_is_recorded_in_its_history() {
        let kv = with_items();
        let before = stored(
            run(
                &kv,
                &agency_admin(A),
                &put_cmd(Value::Service(Service {
                    description: "Hộ tịch".into(),
                    items: vec![
                        item("x", ItemClass::Open),
                        item("y", ItemClass::Shared),
                        item("z", ItemClass::Special),
                    ],
                    ..service(&format!("{A}/ho-tich"))
                })),
            )
            .unwrap(),
            as_service,
        );
        let v = before.version.clone();
        let after = stored(
            run(
                &kv,
                &agency_admin(A),
                &put_cmd(Value::Service(Service {
                    description: "Hộ tịch: khai sinh".into(),
                    version: v.clone(),
                    ..before.clone()
                })),
            )
            .unwrap(),
            as_service,
        );
        assert_ne!(after.version, v, "a change bumps the version");
        let last = after.history.last().unwrap();
        assert!(last.action.starts_with("changed to v"), "{last:?}");
        assert!(last.actor.contains("/admin/"), "{last:?}");
        assert_eq!(last.at_unix, NOW);
    }

    #[test]
    fn a_filed_request_is_due_in_five_working_days_in_the_provinces_calendar() {
        let kv = with_items();
        // Monday 7 Dec 2026 09:00 +07; a holiday on Thursday 10 Dec.
        run(
            &kv,
            &admin(),
            &put_cmd(Value::Calendar(Calendar {
                time_zone: "Asia/Ho_Chi_Minh".into(),
                holidays: vec!["2026-12-10".into()],
            })),
        )
        .unwrap();
        let r = stored(
            run(
                &kv,
                &agency_admin(B),
                &put_cmd(Value::Request(request("r1", &["x", "y"]))),
            )
            .unwrap(),
            as_request,
        );
        assert_eq!(r.status, RequestStatus::Filed as i32);
        assert_eq!(r.filed_unix, NOW);
        // 8, 9, (10 holiday), 11, (12-13 weekend), 14, 15: due at the end of Tuesday 15 Dec.
        assert_eq!(r.due_unix, NOW - 9 * 3600 + 9 * DAY);
        assert_eq!(
            r.requester_name,
            format!("Sở {B}"),
            "the requester's name comes from the catalog"
        );
    }

    #[test]
    fn a_request_missing_a_field_the_decree_names_is_refused_naming_it() {
        let kv = with_items();
        let mut r = request("r1", &["x"]);
        r.purpose.clear();
        let err = refused(run(&kv, &agency_admin(B), &put_cmd(Value::Request(r))));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("purpose")),
            "{err:?}"
        );
        let err = refused(run(
            &kv,
            &agency_admin(B),
            &put_cmd(Value::Request(request("r2", &["w"]))),
        ));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("no data item(s) w")),
            "{err:?}"
        );
    }

    #[test]
    fn a_refusal_needs_a_reason_and_a_decided_request_stays_decided() {
        let kv = with_items();
        run(
            &kv,
            &agency_admin(B),
            &put_cmd(Value::Request(request("r1", &["x"]))),
        )
        .unwrap();
        let id = format!("{B}/r1");
        let err = refused(run(
            &kv,
            &agency_admin(A),
            &decide(&id, RequestStatus::Refused, " ", &[]),
        ));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("reason")),
            "{err:?}"
        );
        let r = stored(
            run(
                &kv,
                &agency_admin(A),
                &decide(&id, RequestStatus::Refused, "Mục đích chưa rõ ràng", &[]),
            )
            .unwrap(),
            as_request,
        );
        assert_eq!(r.status, RequestStatus::Refused as i32);
        assert_eq!(r.decision_reason, "Mục đích chưa rõ ràng");
        assert_eq!(
            r.purpose, "Giải quyết thủ tục hành chính",
            "the filed fields are kept"
        );
        let err = refused(run(
            &kv,
            &agency_admin(A),
            &decide(&id, RequestStatus::Approved, "", &[]),
        ));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("already refused")),
            "{err:?}"
        );
    }

    #[test]
    fn an_approval_creates_the_grant_for_the_items_chosen_linked_to_its_request() {
        let kv = with_items();
        run(
            &kv,
            &agency_admin(B),
            &put_cmd(Value::Request(request("r1", &["x", "y", "z"]))),
        )
        .unwrap();
        let id = format!("{B}/r1");
        // z is special: no agreement, no grant covering it.
        let err = refused(run(
            &kv,
            &agency_admin(A),
            &decide(&id, RequestStatus::Approved, "", &[]),
        ));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("Art. 38")),
            "{err:?}"
        );
        let err = refused(run(
            &kv,
            &agency_admin(A),
            &decide(&id, RequestStatus::Approved, "", &["x", "w"]),
        ));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("w were not requested")),
            "{err:?}"
        );
        let province = PROVINCE.clone();
        let who = agency_admin(A);
        let checked = check(
            &kv,
            &Asker {
                actor: &who,
                province: &province,
                now_unix: NOW,
            },
            &decide(&id, RequestStatus::Approved, "", &["x", "y"]),
        )
        .unwrap();
        let mut batch = Staged::new(&kv);
        let (_, events) = apply(&mut batch, checked).unwrap();
        batch.commit().unwrap();
        assert_eq!(
            events.len(),
            2,
            "the request and its grant, each a watch event"
        );
        let g = grant_of(&kv);
        assert_eq!(g.items, ["x", "y"]);
        assert_eq!(g.request_id, id);
        assert_eq!(g.status, GrantStatus::Active as i32);
        assert!(
            g.history
                .last()
                .unwrap()
                .action
                .contains("approved request")
        );
    }

    #[test]
    fn special_items_are_granted_under_an_agreement_in_force() {
        let kv = with_items();
        run(
            &kv,
            &agency_admin(B),
            &put_cmd(Value::Request(request("r1", &["z"]))),
        )
        .unwrap();
        let mut approve = AccessRequest {
            id: format!("{B}/r1"),
            status: RequestStatus::Approved as i32,
            agreement: Some(Agreement {
                reference: "TT-01/2026".into(),
                until_unix: NOW - 1,
            }),
            ..Default::default()
        };
        let err = refused(run(
            &kv,
            &agency_admin(A),
            &put_cmd(Value::Request(approve.clone())),
        ));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("expired")),
            "{err:?}"
        );
        approve.agreement = Some(Agreement {
            reference: "TT-01/2026".into(),
            until_unix: NOW + 365 * DAY,
        });
        run(&kv, &agency_admin(A), &put_cmd(Value::Request(approve))).unwrap();
        assert_eq!(grant_of(&kv).agreement.unwrap().reference, "TT-01/2026");
    }

    #[test]
    fn a_grant_whose_end_has_passed_is_refused_at_creation() {
        let kv = with_items();
        let g = Grant {
            expires_unix: NOW - DAY,
            items: vec!["x".into()],
            ..as_grant(grant(&format!("{A}/ho-tich"), B)).unwrap()
        };
        let err = refused(run(&kv, &admin(), &put_cmd(Value::Grant(g))));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("already passed")),
            "{err:?}"
        );
    }

    #[test]
    fn suspension_needs_its_kind_reason_and_restore_and_termination_an_article_44_reason() {
        let kv = with_items();
        run(
            &kv,
            &admin(),
            &put_cmd(Value::Grant(Grant {
                items: vec!["x".into()],
                ..as_grant(grant(&format!("{A}/ho-tich"), B)).unwrap()
            })),
        )
        .unwrap();
        let base = as_grant(grant(&format!("{A}/ho-tich"), B)).unwrap();
        let suspend = |kind: SuspensionKind, reason: &str, restore: &str| {
            put_cmd(Value::Grant(Grant {
                status: GrantStatus::Suspended as i32,
                suspension: kind as i32,
                reason: reason.into(),
                restore: restore.into(),
                ..base.clone()
            }))
        };
        for bad in [
            suspend(SuspensionKind::Unspecified, "vi phạm", "báo cáo"),
            suspend(SuspensionKind::Breach, "", "báo cáo"),
            suspend(SuspensionKind::Breach, "vi phạm", ""),
        ] {
            assert!(matches!(
                refused(run(&kv, &agency_admin(A), &bad)),
                CatalogError::InvalidArgument(_)
            ));
        }
        run(
            &kv,
            &agency_admin(A),
            &suspend(
                SuspensionKind::SecurityRisk,
                "Lộ khoá bí mật",
                "Cấp lại chứng thư",
            ),
        )
        .unwrap();
        let g = grant_of(&kv);
        assert_eq!(
            (g.status, g.restore.as_str()),
            (GrantStatus::Suspended as i32, "Cấp lại chứng thư")
        );
        assert_eq!(
            g.items,
            ["x"],
            "what was granted is kept through a suspension"
        );
        // Resume.
        run(
            &kv,
            &agency_admin(A),
            &put_cmd(Value::Grant(Grant {
                status: GrantStatus::Active as i32,
                ..base.clone()
            })),
        )
        .unwrap();
        assert_eq!(grant_of(&kv).status, GrantStatus::Active as i32);
        // Terminate: an Art. 44 reason is required.
        let terminate = |kind: TerminationKind| {
            put_cmd(Value::Grant(Grant {
                status: GrantStatus::Terminated as i32,
                termination: kind as i32,
                ..base.clone()
            }))
        };
        assert!(
            matches!(refused(run(&kv, &agency_admin(A), &terminate(TerminationKind::Unspecified))), CatalogError::InvalidArgument(m) if m.contains("Art. 44"))
        );
        run(
            &kv,
            &agency_admin(A),
            &terminate(TerminationKind::NoLongerNeeded),
        )
        .unwrap();
        let g = grant_of(&kv);
        assert_eq!(g.termination, TerminationKind::NoLongerNeeded as i32);
        let actions: Vec<&str> = g.history.iter().map(|c| c.action.as_str()).collect();
        assert_eq!(
            actions,
            ["granted directly", "suspended", "resumed", "terminated"]
        );
        // A terminated grant is not suspended again.
        let err = refused(run(
            &kv,
            &agency_admin(A),
            &suspend(SuspensionKind::Breach, "x", "y"),
        ));
        assert!(
            matches!(
                err,
                CatalogError::PermissionDenied(_) | CatalogError::FailedPrecondition(_)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn maintenance_needs_seven_working_days_notice_unless_force_majeure() {
        let kv = with_items();
        let current = || match get(&kv, RecordKind::Service, &format!("{A}/ho-tich"))
            .unwrap()
            .unwrap()
            .value
        {
            Some(Value::Service(s)) => s,
            _ => unreachable!(),
        };
        let window = |start: i64, force: bool| Maintenance {
            start_unix: start,
            end_unix: start + 4 * 3600,
            force_majeure: force,
            reason: "Nâng cấp máy chủ".into(),
            announced_unix: 0,
        };
        let with = |w: Maintenance| {
            put_cmd(Value::Service(Service {
                maintenance: vec![w],
                ..current()
            }))
        };
        // Three days ahead: refused, naming the earliest start allowed.
        let err = refused(run(
            &kv,
            &agency_admin(A),
            &with(window(NOW + 3 * DAY, false)),
        ));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("needs 7")),
            "{err:?}"
        );
        // Monday 7 Dec → Wednesday 16 Dec: 8, 9, 10, 11, 14, 15 = 6 full working days: refused.
        assert!(
            refused(run(
                &kv,
                &agency_admin(A),
                &with(window(NOW + 9 * DAY, false))
            ))
            .to_string()
            .contains("6 working day")
        );
        // Thursday 17 Dec: 7 working days of notice.
        run(&kv, &agency_admin(A), &with(window(NOW + 10 * DAY, false))).unwrap();
        let s = current();
        assert_eq!(s.maintenance[0].announced_unix, NOW);
        // Force majeure takes effect at once.
        run(
            &kv,
            &agency_admin(A),
            &put_cmd(Value::Service(Service {
                maintenance: vec![s.maintenance[0].clone(), window(NOW + DAY, true)],
                ..s
            })),
        )
        .unwrap();
        let s = current();
        assert_eq!(s.maintenance[1].start_unix, NOW);
        assert!(s.history.iter().any(|c| c.action.contains("force majeure")));
    }
}

// Federation records and who may write what they carry, tried as an
// attacker would: another agency's hub, a node marking its own service as
// imported, an agency admin making itself "foreign".

mod federation {
    use super::*;
    use lgsp_proto::{Agency, Export, FederationPeer, Import};

    const PEER_DOMAIN: &str = "ndxp.gov.vn";
    const FOREIGN: &str = "000.00.05.G01";

    fn provincial_hub() -> SpiffeId {
        actor(ADMIN_AGENCY, Role::Hub)
    }

    fn peer() -> Value {
        Value::Peer(FederationPeer {
            name: "ndxp".into(),
            trust_domain: PEER_DOMAIN.into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
            hub_endpoint: "hub.ndxp.gov.vn:7501".into(),
            ..Default::default()
        })
    }

    fn foreign_agency(domain: &str) -> Value {
        Value::Agency(Agency {
            code: FOREIGN.into(),
            name: "Bộ Công an".into(),
            trust_domain: domain.into(),
            ..Default::default()
        })
    }

    fn imported(via: &str) -> Value {
        Value::Service(Service {
            origin: "ndxp".into(),
            via_hub: via.into(),
            ..service(&format!("{FOREIGN}/dan-cu"))
        })
    }

    /// A catalog with a peer and an import of its `dan-cu` service.
    fn federated() -> Kv {
        let kv = catalog();
        run(&kv, &admin(), &put_cmd(agency(ADMIN_AGENCY))).unwrap();
        run(&kv, &admin(), &put_cmd(peer())).unwrap();
        run(
            &kv,
            &admin(),
            &put_cmd(Value::Import(Import {
                peer: "ndxp".into(),
                service_id: format!("{FOREIGN}/dan-cu"),
            })),
        )
        .unwrap();
        kv
    }

    fn denied(err: CatalogError) {
        assert!(matches!(err, CatalogError::PermissionDenied(_)), "{err:?}");
    }

    #[test]
    fn the_provinces_hub_brings_in_what_an_import_names_and_nothing_else() {
        let kv = federated();
        let hub = provincial_hub();
        let via = format!("{ADMIN_AGENCY}/tester");
        // An agency of a domain that is no peer's: refused.
        denied(refused(run(
            &kv,
            &hub,
            &put_cmd(foreign_agency("evil.example")),
        )));
        run(&kv, &hub, &put_cmd(foreign_agency(PEER_DOMAIN))).unwrap();
        run(&kv, &hub, &put_cmd(imported(&via))).unwrap();
        // A service the catalog does not import, or carried by another hub: refused.
        let unimported = Value::Service(Service {
            origin: "ndxp".into(),
            via_hub: via.clone(),
            ..service(&format!("{FOREIGN}/khac"))
        });
        denied(refused(run(&kv, &hub, &put_cmd(unimported))));
        denied(refused(run(
            &kv,
            &hub,
            &put_cmd(imported("000.00.00.H62/other")),
        )));
        // One of this province's agencies is never made foreign by the hub.
        let province_agency = Value::Agency(Agency {
            code: A.into(),
            name: "Sở A".into(),
            trust_domain: PEER_DOMAIN.into(),
            ..Default::default()
        });
        denied(refused(run(&kv, &hub, &put_cmd(province_agency))));
    }

    #[test]
    fn a_peer_crl_must_be_signed_by_the_peers_ca_and_newer_than_the_one_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut ca =
            lgsp_certs::ca::CertificateAuthority::init(dir.path(), PEER_DOMAIN, "CA", 30).unwrap();
        let mut stranger =
            lgsp_certs::ca::CertificateAuthority::init(other.path(), PEER_DOMAIN, "CA", 30)
                .unwrap();
        let first = ca.sign_crl(1).unwrap().der;
        let second = ca.sign_crl(1).unwrap().der;
        let ca_pem = ca.cert_pem().to_owned();
        let with_crl = |der: Vec<u8>| {
            Value::Peer(FederationPeer {
                name: "ndxp".into(),
                trust_domain: PEER_DOMAIN.into(),
                ca_pem: ca_pem.clone(),
                hub_endpoint: "hub.ndxp.gov.vn:7501".into(),
                crl_der: der,
                ..Default::default()
            })
        };
        let kv = catalog();
        let forged = stranger.sign_crl(1).unwrap().der;
        let err = refused(run(&kv, &admin(), &put_cmd(with_crl(forged))));
        assert!(
            matches!(&err, CatalogError::InvalidArgument(m) if m.contains("not one of its CA's")),
            "{err:?}"
        );
        run(&kv, &admin(), &put_cmd(with_crl(second.clone()))).unwrap();
        let err = refused(run(&kv, &admin(), &put_cmd(with_crl(first))));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("not newer")),
            "{err:?}"
        );
        // The same record again (another field changed) is not a step back.
        run(&kv, &admin(), &put_cmd(with_crl(second))).unwrap();
    }

    #[test]
    fn a_peer_ca_re_exported_keeps_its_crl_and_a_new_ca_drops_it_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut ca =
            lgsp_certs::ca::CertificateAuthority::init(dir.path(), PEER_DOMAIN, "CA", 30).unwrap();
        let stranger =
            lgsp_certs::ca::CertificateAuthority::init(other.path(), PEER_DOMAIN, "CA", 30)
                .unwrap();
        let first = ca.sign_crl(1).unwrap().der;
        let second = ca.sign_crl(1).unwrap().der;
        let ca_pem = ca.cert_pem().to_owned();
        let re_exported = format!("{}\r\n\r\n", ca_pem.trim_end().replace('\n', "\r\n"));
        let with = |ca_pem: &str, der: Vec<u8>, drops: bool| {
            put_cmd(Value::Peer(FederationPeer {
                name: "ndxp".into(),
                trust_domain: PEER_DOMAIN.into(),
                ca_pem: ca_pem.to_owned(),
                hub_endpoint: "hub.ndxp.gov.vn:7501".into(),
                crl_der: der,
                new_ca_drops_crl: drops,
                ..Default::default()
            }))
        };
        let kv = catalog();
        run(&kv, &admin(), &with(&ca_pem, second, false)).unwrap();
        let e = refused(run(&kv, &admin(), &with(&re_exported, first, false)));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("not newer")),
            "{e:?}"
        );
        let e = refused(run(&kv, &admin(), &with(&re_exported, Vec::new(), false)));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("never removed silently")),
            "{e:?}"
        );
        let e = refused(run(
            &kv,
            &admin(),
            &with(stranger.cert_pem(), Vec::new(), false),
        ));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("--new-ca-drops-crl")),
            "{e:?}"
        );
        run(&kv, &admin(), &with(stranger.cert_pem(), Vec::new(), true)).unwrap();
    }

    #[test]
    fn the_provincial_hub_may_put_a_peers_newer_crl_in_force_and_change_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca =
            lgsp_certs::ca::CertificateAuthority::init(dir.path(), PEER_DOMAIN, "CA", 30).unwrap();
        let first = ca.sign_crl(1).unwrap().der;
        let second = ca.sign_crl(1).unwrap().der;
        let peer = FederationPeer {
            name: "ndxp".into(),
            trust_domain: PEER_DOMAIN.into(),
            ca_pem: ca.cert_pem().to_owned(),
            hub_endpoint: "hub.ndxp.gov.vn:7501".into(),
            crl_der: first,
            ..Default::default()
        };
        let with = |change: &dyn Fn(&mut FederationPeer)| {
            let mut p = peer.clone();
            change(&mut p);
            put_cmd(Value::Peer(p))
        };
        let kv = catalog();
        // A hub never creates a peer.
        denied(refused(run(&kv, &provincial_hub(), &with(&|_| {}))));
        run(&kv, &admin(), &with(&|_| {})).unwrap();
        let newer = |p: &mut FederationPeer| p.crl_der = second.clone();
        denied(refused(run(&kv, &actor(A, Role::Hub), &with(&newer))));
        denied(refused(run(&kv, &actor(A, Role::Node), &with(&newer))));
        denied(refused(run(
            &kv,
            &provincial_hub(),
            &with(&|p| {
                newer(p);
                p.hub_endpoint = "attacker.example:7501".into();
            }),
        )));
        denied(refused(run(
            &kv,
            &provincial_hub(),
            &with(&|p| p.crl_der.clear()),
        )));
        run(&kv, &provincial_hub(), &with(&newer)).unwrap();
        // Back to the older one: refused for the hub as for the admin.
        let err = refused(run(&kv, &provincial_hub(), &with(&|_| {})));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("not newer")),
            "{err:?}"
        );
    }

    #[test]
    fn another_agencys_hub_writes_no_foreign_record() {
        let kv = federated();
        let hub_of_a = actor(A, Role::Hub);
        denied(refused(run(
            &kv,
            &hub_of_a,
            &put_cmd(foreign_agency(PEER_DOMAIN)),
        )));
        run(
            &kv,
            &provincial_hub(),
            &put_cmd(foreign_agency(PEER_DOMAIN)),
        )
        .unwrap();
        denied(refused(run(
            &kv,
            &hub_of_a,
            &put_cmd(imported(&format!("{A}/tester"))),
        )));
    }

    #[test]
    fn nobody_but_the_hub_marks_a_service_imported() {
        let kv = federated();
        let own = Value::Service(Service {
            origin: "ndxp".into(),
            via_hub: format!("{ADMIN_AGENCY}/tester"),
            ..service(&format!("{A}/ho-tich"))
        });
        for who in [node_of(A), actor(A, Role::Admin), admin()] {
            denied(refused(run(&kv, &who, &put_cmd(own.clone()))));
        }
    }

    #[test]
    fn an_agency_admin_cannot_make_its_agency_foreign() {
        let kv = federated();
        let moved = Value::Agency(Agency {
            code: A.into(),
            name: "Sở A".into(),
            trust_domain: PEER_DOMAIN.into(),
            ..Default::default()
        });
        denied(refused(run(
            &kv,
            &actor(A, Role::Admin),
            &put_cmd(moved.clone()),
        )));
        run(&kv, &admin(), &put_cmd(moved)).unwrap();
    }

    #[test]
    fn an_approved_request_of_a_foreign_agency_grants_it_under_its_trust_domain() {
        let kv = federated();
        run(&kv, &admin(), &put_cmd(foreign_agency(PEER_DOMAIN))).unwrap();
        let id = format!("{FOREIGN}/r1");
        run(
            &kv,
            &admin(),
            &put_cmd(Value::Request(lgsp_proto::AccessRequest {
                id: id.clone(),
                service_id: format!("{A}/ho-tich"),
                application_id: "x".into(),
                application_name: "x".into(),
                purpose: "x".into(),
                frequency: "x".into(),
                ..Default::default()
            })),
        )
        .unwrap();
        run(
            &kv,
            &actor(A, Role::Admin),
            &put_cmd(Value::Request(lgsp_proto::AccessRequest {
                id,
                status: lgsp_proto::RequestStatus::Approved as i32,
                ..Default::default()
            })),
        )
        .unwrap();
        let Some(Value::Grant(g)) = get(&kv, RecordKind::Grant, &format!("{A}/ho-tich|{FOREIGN}"))
            .unwrap()
            .and_then(|r| r.value)
        else {
            panic!("no grant");
        };
        assert_eq!(g.consumer_trust_domain, PEER_DOMAIN);
    }

    #[test]
    fn a_peer_or_service_still_exported_or_imported_is_not_removed() {
        let kv = federated();
        run(
            &kv,
            &admin(),
            &put_cmd(Value::Export(Export {
                service_id: format!("{A}/ho-tich"),
                peer: "ndxp".into(),
            })),
        )
        .unwrap();
        for (kind, key) in [
            (RecordKind::Peer, "ndxp".to_owned()),
            (RecordKind::Service, format!("{A}/ho-tich")),
        ] {
            let err = refused(run(&kv, &admin(), &delete_cmd(kind, &key)));
            assert!(
                matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("export")),
                "{err:?}"
            );
        }
    }
}

mod approvals {
    use super::*;
    use lgsp_proto::{AccessRequest, RequestStatus};

    fn file(kv: &Kv, name: &str) -> String {
        let id = format!("{B}/{name}");
        run(
            kv,
            &actor(B, Role::Admin),
            &put_cmd(Value::Request(AccessRequest {
                id: id.clone(),
                service_id: format!("{A}/ho-tich"),
                application_id: "x".into(),
                application_name: "x".into(),
                purpose: "x".into(),
                frequency: "x".into(),
                ..Default::default()
            })),
        )
        .unwrap();
        id
    }

    fn decide(id: &str, status: RequestStatus) -> Command {
        put_cmd(Value::Request(AccessRequest {
            id: id.into(),
            status: status as i32,
            decision_reason: "lý do".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn approving_does_not_replace_a_grant_in_force_nor_lift_its_suspension() {
        let kv = catalog();
        run(&kv, &admin(), &put_cmd(grant(&format!("{A}/ho-tich"), B))).unwrap();
        let id = file(&kv, "r1");
        let err = refused(run(
            &kv,
            &actor(A, Role::Admin),
            &decide(&id, RequestStatus::Approved),
        ));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("already holds a grant")),
            "{err:?}"
        );
    }

    #[test]
    fn a_request_whose_service_is_gone_can_still_be_withdrawn_or_refused() {
        let kv = catalog();
        let (r1, r2) = (file(&kv, "r1"), file(&kv, "r2"));
        run(
            &kv,
            &admin(),
            &delete_cmd(RecordKind::Service, &format!("{A}/ho-tich")),
        )
        .unwrap();
        run(
            &kv,
            &actor(B, Role::Admin),
            &decide(&r1, RequestStatus::Withdrawn),
        )
        .unwrap();
        run(
            &kv,
            &actor(A, Role::Admin),
            &decide(&r2, RequestStatus::Refused),
        )
        .unwrap();
    }

    #[test]
    fn a_version_is_bumped_at_its_last_number() {
        assert_eq!(crate::procedure::bump("3"), "4");
        assert_eq!(crate::procedure::bump("2.9"), "2.10");
        assert_eq!(crate::procedure::bump("v1.2-rc"), "v1.2-rc.1");
        assert_eq!(crate::procedure::bump(""), "1");
    }
}

// The province-wide bound: what a snapshot can carry.

/// The bytes the records take, by a scan (what the kept count must say).
fn scanned_bytes(kv: &Kv) -> u64 {
    kv.read_prefix(RECORD_PREFIX)
        .unwrap()
        .iter()
        .map(|(_, v)| v.len() as u64)
        .sum()
}

#[test]
fn the_kept_byte_count_follows_puts_deletes_and_a_restore_exactly() {
    let kv = catalog();
    assert_eq!(
        read_u64(&kv, CATALOG_BYTES).unwrap(),
        Some(scanned_bytes(&kv))
    );
    // A record replaced by a longer one, another deleted.
    let mut longer = service(&format!("{A}/ho-tich"));
    longer.description = "Dịch vụ tra cứu hộ tịch của tỉnh, bản dài hơn".into();
    run(&kv, &node_of(A), &put_cmd(Value::Service(longer))).unwrap();
    run(
        &kv,
        &admin(),
        &delete_cmd(RecordKind::Node, &format!("{B}/node-1")),
    )
    .unwrap();
    assert_eq!(catalog_bytes(&kv).unwrap(), scanned_bytes(&kv));
    assert!(scanned_bytes(&kv) > 0);

    let data = snapshot_data(&kv).unwrap();
    let target = Kv::new(MemKv::default());
    let mut batch = Staged::new(&target);
    restore(&target, &mut batch, &data).unwrap();
    batch.commit().unwrap();
    assert_eq!(
        read_u64(&target, CATALOG_BYTES).unwrap(),
        Some(scanned_bytes(&kv))
    );
}

#[test]
fn a_store_from_before_the_count_is_counted_by_a_scan() {
    let kv = catalog();
    let mut batch = Staged::new(&kv);
    batch.remove(CATALOG_BYTES);
    batch.commit().unwrap();
    assert_eq!(catalog_bytes(&kv).unwrap(), scanned_bytes(&kv));
    // The next write keeps the count again.
    run(&kv, &node_of(A), &put_cmd(node(A, "node-2"))).unwrap();
    assert_eq!(
        read_u64(&kv, CATALOG_BYTES).unwrap(),
        Some(scanned_bytes(&kv))
    );
}

#[test]
fn a_write_past_the_catalog_bound_is_refused_whoever_writes_and_a_shrink_passes() {
    let kv = catalog();
    let held = catalog_bytes(&kv).unwrap();
    let grow = check_command(&kv, &asker(&admin()), &put_cmd(agency("000.00.14.H62"))).unwrap();
    // Room for it: passes.
    refuse_past_catalog_bound(&kv, &grow, held + 1_000).unwrap();
    // No room, even for the provincial admin: refused, saying why.
    match refuse_past_catalog_bound(&kv, &grow, held) {
        Err(CatalogError::FailedPrecondition(why)) => {
            assert!(why.contains("a registry snapshot can carry"), "{why}");
            assert!(why.contains(&held.to_string()), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A delete at the bound still passes: the way back is always open.
    let shrink = check_command(
        &kv,
        &asker(&admin()),
        &delete_cmd(RecordKind::Node, &format!("{B}/node-1")),
    )
    .unwrap();
    refuse_past_catalog_bound(&kv, &shrink, held).unwrap();
    // Every write is checked against the bound in force.
    let mut batch = Staged::new(&kv);
    batch.insert(CATALOG_BYTES, MAX_CATALOG_BYTES.to_be_bytes());
    batch.commit().unwrap();
    let why = refused(run(&kv, &admin(), &put_cmd(agency("000.00.14.H62"))));
    assert!(
        why.to_string().contains("a registry snapshot can carry"),
        "{why}"
    );
    run(
        &kv,
        &admin(),
        &delete_cmd(RecordKind::Node, &format!("{B}/node-1")),
    )
    .unwrap();
    // The bound in force leaves room for a snapshot's other contents.
    const { assert!(MAX_CATALOG_BYTES + (32 << 20) <= crate::transport::MAX_PEER_MESSAGE as u64) };
}

mod rest_clients {
    use super::*;
    use lgsp_proto::RestClient;

    const OUTSIDE: &str = "000.00.07.G01";

    fn client(agency: &str, trust_domain: &str, services: &[&str]) -> Value {
        Value::RestClient(RestClient {
            name: "btp-hotich".into(),
            trust_domain: trust_domain.into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
            agency_code: agency.into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
    }

    fn with_outside_agency() -> Kv {
        let kv = catalog();
        run(
            &kv,
            &admin(),
            &put_cmd(Value::Agency(Agency {
                code: OUTSIDE.into(),
                name: "Bộ Tư pháp".into(),
                trust_domain: "moj.gov.vn".into(),
                ..Default::default()
            })),
        )
        .unwrap();
        kv
    }

    #[test]
    fn a_rest_client_needs_an_outside_agency_of_its_trust_domain_and_province_services() {
        let kv = with_outside_agency();
        let ho_tich = format!("{A}/ho-tich");
        // A province agency, another trust domain, an unknown service: refused, saying why.
        let e = refused(run(
            &kv,
            &admin(),
            &put_cmd(client(A, "moj.gov.vn", &[&ho_tich])),
        ));
        assert!(e.to_string().contains("trust domain"), "{e}");
        let e = refused(run(
            &kv,
            &admin(),
            &put_cmd(client(OUTSIDE, "other.gov.vn", &[&ho_tich])),
        ));
        assert!(e.to_string().contains("moj.gov.vn"), "{e}");
        let e = refused(run(
            &kv,
            &admin(),
            &put_cmd(client(OUTSIDE, "moj.gov.vn", &["000.00.12.H62/khong-co"])),
        ));
        assert!(e.to_string().contains("no service"), "{e}");
        // Only the provincial admin adds one.
        refused(run(
            &kv,
            &node_of(A),
            &put_cmd(client(OUTSIDE, "moj.gov.vn", &[&ho_tich])),
        ));
        run(
            &kv,
            &admin(),
            &put_cmd(client(OUTSIDE, "moj.gov.vn", &[&ho_tich])),
        )
        .unwrap();
    }

    #[test]
    fn a_rest_client_crl_is_its_cas_moves_forward_and_is_never_dropped_silently() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut ca =
            lgsp_certs::ca::CertificateAuthority::init(dir.path(), "moj.gov.vn", "CA", 30).unwrap();
        let mut stranger =
            lgsp_certs::ca::CertificateAuthority::init(other.path(), "moj.gov.vn", "CA", 30)
                .unwrap();
        let first = ca.sign_crl(1).unwrap().der;
        let second = ca.sign_crl(1).unwrap().der;
        let ho_tich = format!("{A}/ho-tich");
        let with_crl = |ca_pem: &str, der: Vec<u8>| {
            let Value::RestClient(c) = client(OUTSIDE, "moj.gov.vn", &[&ho_tich]) else {
                unreachable!()
            };
            put_cmd(Value::RestClient(RestClient {
                ca_pem: ca_pem.to_owned(),
                crl_der: der,
                ..c
            }))
        };
        let kv = with_outside_agency();
        let ca_pem = ca.cert_pem().to_owned();
        let forged = stranger.sign_crl(1).unwrap().der;
        let e = refused(run(&kv, &admin(), &with_crl(&ca_pem, forged)));
        assert!(
            matches!(&e, CatalogError::InvalidArgument(m) if m.contains("not one of its CA's")),
            "{e:?}"
        );
        run(&kv, &admin(), &with_crl(&ca_pem, second.clone())).unwrap();
        let e = refused(run(&kv, &admin(), &with_crl(&ca_pem, first)));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("not newer")),
            "{e:?}"
        );
        // Dropping it while the CA is the same: refused, saying how instead.
        let e = refused(run(&kv, &admin(), &with_crl(&ca_pem, Vec::new())));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("never removed silently")),
            "{e:?}"
        );
        // The same CRL again (another field changed) is not a step back.
        run(&kv, &admin(), &with_crl(&ca_pem, second)).unwrap();
        // A new CA drops the old one's CRL only when the write says so.
        let e = refused(run(
            &kv,
            &admin(),
            &with_crl(stranger.cert_pem(), Vec::new()),
        ));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("--new-ca-drops-crl")),
            "{e:?}"
        );
        let Command {
            op: Some(lgsp_proto::command::Op::Put(mut record)),
            ..
        } = with_crl(stranger.cert_pem(), Vec::new())
        else {
            unreachable!()
        };
        if let Some(Value::RestClient(c)) = &mut record.value {
            c.new_ca_drops_crl = true;
        }
        run(&kv, &admin(), &put_cmd(record.value.unwrap())).unwrap();
        let stored = crate::catalog::get(&kv, RecordKind::RestClient, "btp-hotich")
            .unwrap()
            .and_then(|r| r.value);
        assert!(
            matches!(&stored, Some(Value::RestClient(c)) if !c.new_ca_drops_crl && c.crl_der.is_empty()),
            "the acknowledgement is not stored: {stored:?}"
        );
    }

    #[test]
    fn a_rest_client_ca_re_exported_with_other_line_endings_keeps_its_crl() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca =
            lgsp_certs::ca::CertificateAuthority::init(dir.path(), "moj.gov.vn", "CA", 30).unwrap();
        let first = ca.sign_crl(1).unwrap().der;
        let second = ca.sign_crl(1).unwrap().der;
        let ho_tich = format!("{A}/ho-tich");
        let with_crl = |ca_pem: &str, der: Vec<u8>| {
            let Value::RestClient(c) = client(OUTSIDE, "moj.gov.vn", &[&ho_tich]) else {
                unreachable!()
            };
            put_cmd(Value::RestClient(RestClient {
                ca_pem: ca_pem.to_owned(),
                crl_der: der,
                ..c
            }))
        };
        let kv = with_outside_agency();
        let ca_pem = ca.cert_pem().to_owned();
        let re_exported = format!("{}\r\n\r\n", ca_pem.trim_end().replace('\n', "\r\n"));
        run(&kv, &admin(), &with_crl(&ca_pem, second)).unwrap();
        // The same CA, other bytes: dropping the CRL is still dropping it...
        let e = refused(run(&kv, &admin(), &with_crl(&re_exported, Vec::new())));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("never removed silently")),
            "{e:?}"
        );
        // ...and an older CRL is still a step back.
        let e = refused(run(&kv, &admin(), &with_crl(&re_exported, first)));
        assert!(
            matches!(&e, CatalogError::FailedPrecondition(m) if m.contains("not newer")),
            "{e:?}"
        );
    }

    #[test]
    fn an_agency_or_service_a_rest_client_names_is_not_deleted_under_it() {
        let kv = with_outside_agency();
        let ho_tich = format!("{A}/ho-tich");
        run(
            &kv,
            &admin(),
            &put_cmd(client(OUTSIDE, "moj.gov.vn", &[&ho_tich])),
        )
        .unwrap();
        let e = refused(run(&kv, &admin(), &delete_cmd(RecordKind::Agency, OUTSIDE)));
        assert!(e.to_string().contains("REST client btp-hotich"), "{e}");
        let e = refused(run(
            &kv,
            &admin(),
            &delete_cmd(RecordKind::Service, &ho_tich),
        ));
        assert!(e.to_string().contains("REST client btp-hotich"), "{e}");
        run(
            &kv,
            &admin(),
            &delete_cmd(RecordKind::RestClient, "btp-hotich"),
        )
        .unwrap();
        run(&kv, &admin(), &delete_cmd(RecordKind::Service, &ho_tich)).unwrap();
    }
}

// REST systems and routes: the provincial admin's records, checked when
// applied; a system with routes, or a service with a route, stays until the
// route goes.

mod rest {
    use super::*;
    use lgsp_proto::{RestAuth, RestOperation, RestRoute, RestSystem};

    fn system() -> Value {
        Value::RestSystem(RestSystem {
            name: "bo-tai-chinh".into(),
            base_url: "https://api.mof.gov.vn/v1".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into(),
            auth: RestAuth::ApiKey as i32,
            api_key_header: "X-API-Key".into(),
            ..Default::default()
        })
    }

    fn route(service: &str) -> Value {
        Value::RestRoute(RestRoute {
            service_id: service.into(),
            system: "bo-tai-chinh".into(),
            operations: vec![RestOperation {
                name: "get".into(),
                method: "GET".into(),
                path: "/citizens/{id}".into(),
                query: vec![],
            }],
            xroad_service: String::new(),
        })
    }

    /// [`catalog`] with the provincial IT department's hub node and its
    /// service `thue`, to carry to a REST system.
    fn with_hub_service() -> (Kv, String) {
        let kv = catalog();
        let hub = actor(ADMIN_AGENCY, Role::Hub);
        run(&kv, &admin(), &put_cmd(agency(ADMIN_AGENCY))).unwrap();
        run(&kv, &hub, &put_cmd(node(ADMIN_AGENCY, "node-1"))).unwrap();
        let id = format!("{ADMIN_AGENCY}/thue");
        run(&kv, &hub, &put_cmd(Value::Service(service(&id)))).unwrap();
        (kv, id)
    }

    #[test]
    fn only_the_provincial_admin_writes_rest_systems_and_routes() {
        let (kv, service) = with_hub_service();
        for who in [
            node_of(A),
            actor(A, Role::Admin),
            actor(ADMIN_AGENCY, Role::Hub),
        ] {
            assert!(
                matches!(
                    refused(run(&kv, &who, &put_cmd(system()))),
                    CatalogError::PermissionDenied(_)
                ),
                "{who}"
            );
        }
        run(&kv, &admin(), &put_cmd(system())).unwrap();
        assert!(matches!(
            refused(run(&kv, &node_of(A), &put_cmd(route(&service)))),
            CatalogError::PermissionDenied(_)
        ));
        run(&kv, &admin(), &put_cmd(route(&service))).unwrap();
    }

    #[test]
    fn a_route_needs_a_published_service_and_a_known_system_and_holds_them() {
        let (kv, service) = with_hub_service();
        let err = refused(run(&kv, &admin(), &put_cmd(route(&service))));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("lgsp hub rest add")),
            "{err:?}"
        );
        run(&kv, &admin(), &put_cmd(system())).unwrap();
        let err = refused(run(
            &kv,
            &admin(),
            &put_cmd(route(&format!("{ADMIN_AGENCY}/none"))),
        ));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("not published")),
            "{err:?}"
        );
        // Another agency's service is served by its own node, not the hub.
        let err = refused(run(&kv, &admin(), &put_cmd(route(&format!("{A}/ho-tich")))));
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("under the hub's agency")),
            "{err:?}"
        );
        run(&kv, &admin(), &put_cmd(route(&service))).unwrap();
        for (kind, key) in [
            (RecordKind::RestSystem, "bo-tai-chinh".to_owned()),
            (RecordKind::Service, service.clone()),
        ] {
            let err = refused(run(&kv, &admin(), &delete_cmd(kind, &key)));
            assert!(
                matches!(&err, CatalogError::FailedPrecondition(m) if m.contains("REST route")),
                "{kind:?}: {err:?}"
            );
        }
        run(&kv, &admin(), &delete_cmd(RecordKind::RestRoute, &service)).unwrap();
        run(
            &kv,
            &admin(),
            &delete_cmd(RecordKind::RestSystem, "bo-tai-chinh"),
        )
        .unwrap();
    }

    #[test]
    fn a_rest_system_over_plain_http_or_without_its_auth_parts_is_refused() {
        let kv = catalog();
        for (change, why) in [
            (
                (|s: &mut RestSystem| s.base_url = "http://api.mof.gov.vn".into())
                    as fn(&mut RestSystem),
                "not an https:// URL",
            ),
            (
                |s| s.api_key_header = "X API".into(),
                "not an HTTP header name",
            ),
            (|s| s.auth = RestAuth::Oauth2 as i32, "token URL"),
            (|s| s.auth = 0, "say how the hub authenticates"),
        ] {
            let Value::RestSystem(mut s) = system() else {
                unreachable!()
            };
            change(&mut s);
            let err = refused(run(&kv, &admin(), &put_cmd(Value::RestSystem(s))));
            assert!(
                matches!(&err, CatalogError::InvalidArgument(m) if m.contains(why)),
                "{why}: {err:?}"
            );
        }
    }
}

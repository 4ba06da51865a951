//! Idempotency keys over real mTLS: a write sent again under its key,
//! through another server, is answered with its first outcome and not
//! applied again, and the key is refused for another write; membership
//! changes likewise, made by the leader whichever server gets them.

use lgsp_proto::catalog_record::Value;
use lgsp_proto::{Agency, CatalogRecord, Command, RecordKind, command};
use lgsp_registry::error::{MOD_REVISION, OUTCOME};
use lgsp_tests::cluster::Cluster;

fn rename(name: &str, expected_mod_revision: u64) -> Command {
    Command {
        op: Some(command::Op::Put(CatalogRecord {
            value: Some(Value::Agency(Agency {
                code: "000.00.12.H62".into(),
                name: name.into(),
                ..Default::default()
            })),
            ..Default::default()
        })),
        expected_mod_revision,
        must_not_exist: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_again_under_its_key_through_another_server_is_answered_and_not_applied() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let one = cluster.client_of(&[1], &cluster.admin);
    let two = cluster.client_of(&[2], &cluster.admin);
    let key = lgsp_registry::idempotency::new_key();

    let first = one
        .apply_keyed(rename("Sở Tư pháp", 0), key.clone())
        .await
        .expect("applied");
    let again = two
        .apply_keyed(rename("Sở Tư pháp", 0), key.clone())
        .await
        .expect("answered");
    assert_eq!(again.revision, first.revision);
    let record = again.record.expect("the record as written");
    assert_eq!(record.key, "000.00.12.H62");
    assert_eq!(record.meta, first.record.as_ref().unwrap().meta);
    assert!(matches!(record.value, Some(Value::Agency(a)) if a.name == "Sở Tư pháp"));
    let now = two
        .get(RecordKind::Agency, "000.00.12.H62", false)
        .await
        .unwrap();
    assert_eq!(now.revision, first.revision, "nothing was applied again");

    // A refusal is stored too: the same compare-and-set, sent again after
    // the record moved to the revision it expected, is still refused.
    let cas_key = lgsp_registry::idempotency::new_key();
    let expected = first.revision + 1;
    let refused = one
        .apply_keyed(rename("Đổi tên", expected), cas_key.clone())
        .await
        .expect_err("the record is not at the expected revision");
    assert_eq!(refused.code(), tonic::Code::Aborted);
    assert_eq!(refused.metadata().get(OUTCOME).unwrap(), "refused");
    let moved = one.apply(rename("Sở Tư pháp tỉnh", 0)).await.unwrap();
    assert_eq!(moved.revision, expected);
    let repeated = two
        .apply_keyed(rename("Đổi tên", expected), cas_key)
        .await
        .expect_err("answered with the first refusal");
    assert_eq!(repeated.code(), tonic::Code::Aborted);
    assert_eq!(
        repeated.metadata().get(MOD_REVISION),
        refused.metadata().get(MOD_REVISION)
    );

    // The key of one write is refused for another.
    let reused = two
        .apply_keyed(rename("Khác", 0), key)
        .await
        .expect_err("a key reused for another write");
    assert_eq!(reused.code(), tonic::Code::InvalidArgument);
    assert!(
        reused.message().contains("another write"),
        "{}",
        reused.message()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_sent_again_under_its_key_is_answered_with_its_first_result() {
    use lgsp_proto::{AddMemberRequest, RemoveMemberRequest};
    use lgsp_registry::error::LEADER;

    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let leader_address = cluster.configs[&leader].listen.to_string();
    let new_member = AddMemberRequest {
        id: 4,
        peer_address: "127.0.0.1:9".into(),
        client_address: "127.0.0.1:10".into(),
        idempotency_key: lgsp_registry::idempotency::new_key(),
    };

    // A follower takes no membership change: it answers at once, nothing
    // applied, naming the leader's client address.
    let refused = cluster
        .client_of(&[followers[0]], &cluster.admin)
        .server(0)
        .add_member(new_member.clone())
        .await
        .expect_err("a follower makes no membership change");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.metadata().get(OUTCOME).unwrap(), "not-applied");
    assert_eq!(
        refused.metadata().get(LEADER).unwrap(),
        leader_address.as_str()
    );

    // A client given that follower alone goes on to the leader it names.
    let first = cluster
        .client_of(&[followers[0]], &cluster.admin)
        .add_member(new_member.clone())
        .await
        .expect("added through the leader");
    assert!(first.members.iter().any(|m| m.id == 4 && !m.voter));
    // The answer was lost: sent again under its key, through the other
    // follower, it is answered with the first result, not "already a member".
    let on_leader = cluster.client_of(&[leader], &cluster.admin);
    let log_before = quiet_last_index(&on_leader).await;
    let again = cluster
        .client_of(&[followers[1]], &cluster.admin)
        .add_member(new_member.clone())
        .await
        .expect("answered with the first result");
    assert_eq!(again, first);
    assert_eq!(
        settled_last_index(&on_leader).await,
        log_before,
        "the change was proposed again"
    );
    let unkeyed = cluster
        .client_of(&[leader], &cluster.admin)
        .add_member(AddMemberRequest {
            idempotency_key: lgsp_registry::idempotency::new_key(),
            ..new_member
        })
        .await
        .expect_err("a new key for the same change");
    assert_eq!(unkeyed.code(), tonic::Code::FailedPrecondition);
    assert!(
        unkeyed.message().contains("already a member"),
        "{unkeyed:?}"
    );

    let admin = cluster.admin_client();
    let remove_key = lgsp_registry::idempotency::new_key();
    let removed = admin
        .remove_member_keyed(4, remove_key.clone())
        .await
        .expect("removed");
    assert!(removed.members.iter().all(|m| m.id != 4));
    let status_before = admin.status().await.unwrap();
    let log_before = quiet_last_index(&on_leader).await;
    let again = cluster
        .client_of(&[followers[1]], &cluster.admin)
        .remove_member_keyed(4, remove_key)
        .await
        .expect("answered with the first result, not \"not a member\"");
    assert_eq!(again, removed);
    // Nothing was proposed again: the leader's log did not grow (by a
    // configuration change, or the leave-joint entry that follows one).
    assert_eq!(
        settled_last_index(&on_leader).await,
        log_before,
        "the removal was proposed again"
    );
    let status_after = admin.status().await.unwrap();
    assert_eq!(status_after.members, status_before.members);
    assert!(!status_after.joint_consensus);
    let direct = cluster
        .client_of(&[leader], &cluster.admin)
        .server(0)
        .remove_member(RemoveMemberRequest {
            id: 4,
            idempotency_key: Vec::new(),
        })
        .await
        .expect_err("4 is no longer a member");
    assert_eq!(direct.code(), tonic::Code::NotFound);
    cluster.shutdown().await;
}

/// The last index of the log of the server `client` talks to, once that
/// server has applied all of it and is in no joint configuration (so no
/// entry of a change under way is still to come).
async fn settled_last_index(client: &lgsp_registry::RegistryClient) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let s = client.status().await.expect("status");
        if !s.joint_consensus && s.last_index == s.applied_index {
            return s.last_index;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the log did not settle: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// [`settled_last_index`] once it stayed the same for over a second: the
/// leader also writes entries of its own (each member's incarnation, once,
/// soon after it is first heard), which must not be taken for a change
/// proposed again.
async fn quiet_last_index(client: &lgsp_registry::RegistryClient) -> u64 {
    let mut last = settled_last_index(client).await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        let now = settled_last_index(client).await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the leader's log kept growing: at {last}");
}

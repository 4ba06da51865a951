//! Idempotency keys over real mTLS: a write sent again under its key,
//! through another server, is answered with its first outcome and not
//! applied again, and the key is refused for another write.

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

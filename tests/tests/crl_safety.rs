//! One bad CRL must not lock the province out, and an old one must not
//! bring revoked certificates back: the registry verifies a CRL's signature
//! against the provincial CA and its number against the one in force before
//! accepting it, and nodes verify it again before putting it in force.

use lgsp_certs::CertificateAuthority;
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::TRUST_DOMAIN;
use lgsp_tests::province::{A, two_agencies};
use std::collections::HashMap;
use tonic::Code;

fn get_record() -> Envelope {
    Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), "001099012345".into())]),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_signed_by_another_ca_of_the_same_name_is_refused_and_the_province_keeps_working() {
    let (mut province, _a, b) = two_agencies().await;
    // An impostor CA: the same trust domain and subject name as the
    // province's, another key.
    let dir = tempfile::tempdir().unwrap();
    let mut impostor =
        CertificateAuthority::init(&dir.path().join("ca"), TRUST_DOMAIN, "CA tỉnh thử", 30)
            .unwrap();
    let bad = impostor.sign_crl(1).unwrap();
    let refused = province
        .catalog()
        .publish_crl(bad.der, bad.number, bad.revoked)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("not signed by a trusted CA"),
        "{}",
        refused.message()
    );

    // Everything still works: calls between agencies, and the admin's
    // publishing of a good CRL.
    let mut client = DataExchangeClient::new(b.app_channel().await);
    client.call(get_record()).await.expect("B still calls A");
    let good = province.registry.pki.ca.sign_crl(1).unwrap();
    province
        .catalog()
        .publish_crl(good.der, good.number, good.revoked)
        .await
        .expect("the provincial CA's CRL is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crl_cannot_replace_the_one_in_force() {
    let (mut province, _a, _b) = two_agencies().await;
    let ca = &mut province.registry.pki.ca;
    let older = ca.sign_crl(1).unwrap();
    let newer = ca.sign_crl(1).unwrap();
    let catalog = province.catalog();
    catalog
        .publish_crl(newer.der, newer.number, newer.revoked)
        .await
        .unwrap();
    let refused = catalog
        .publish_crl(older.der, older.number, older.revoked)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("not newer"),
        "{}",
        refused.message()
    );
}

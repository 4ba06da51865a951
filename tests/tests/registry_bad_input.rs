//! Requests the registry must refuse, each with the gRPC code a client acts
//! on and a message that names the problem, over real mTLS on loopback.

use lgsp_certs::Role;
use lgsp_proto::catalog_record::Value;
use lgsp_proto::registry_peer_client::RegistryPeerClient;
use lgsp_proto::{RaftBatch, RecordKind, Service, ServiceKind};
use lgsp_tests::cluster::Cluster;
use tonic::Code;

const OWN: &str = "000.00.12.H62";
const OTHER: &str = "000.00.13.H62";

fn dataset(id: &str) -> Value {
    Value::Service(Service {
        id: id.into(),
        kind: ServiceKind::Dataset as i32,
        description: "Sổ hộ tịch".into(),
        node: "node-1".into(),
        ..Default::default()
    })
}

/// Asserts `result` failed with `code` and a message containing every one of `words`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    words: &[&str],
) {
    let status = result.expect_err("the registry accepted a request it must refuse");
    assert_eq!(status.code(), code, "unexpected code: {status:?}");
    for word in words {
        assert!(
            status.message().contains(word),
            "the message should name the problem ({word:?}): {:?}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_service_for_an_unknown_agency_is_a_failed_precondition() {
    let cluster = Cluster::start(1).await;
    let result = cluster
        .admin_client()
        .put(dataset("000.00.99.H62/ho-tich"), 0)
        .await;
    assert_refused(
        result,
        Code::FailedPrecondition,
        &["000.00.99.H62", "not registered"],
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_service_id_is_an_invalid_argument() {
    let cluster = Cluster::start(1).await;
    cluster.register_agency(OWN, "Sở Tư pháp").await;
    let result = cluster.admin_client().put(dataset("bad id"), 0).await;
    assert_refused(
        result,
        Code::InvalidArgument,
        &["malformed service id", "\"bad id\""],
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_publish_its_own_agencys_services_but_not_another_agencys() {
    let mut cluster = Cluster::start(1).await;
    cluster.register_agency(OWN, "Sở Tư pháp").await;
    cluster.register_agency(OTHER, "Sở Y tế").await;
    let (node, _) = cluster.pki.issue(OWN, Role::Node, "node-1");
    let client = cluster.client_of(&[1], &node);

    let result = client
        .put(dataset(&format!("{OTHER}/ho-so-benh-an")), 0)
        .await;
    assert_refused(result, Code::PermissionDenied, &[OWN, OTHER]);
    let absent = cluster
        .admin_client()
        .get(
            RecordKind::Service,
            &format!("{OTHER}/ho-so-benh-an"),
            false,
        )
        .await;
    assert!(
        matches!(&absent, Err(s) if s.code() == Code::NotFound),
        "the refused record was stored: {absent:?}"
    );

    let own = format!("{OWN}/ho-tich");
    client
        .put(
            Value::Node(lgsp_proto::NodeRecord {
                agency_code: OWN.into(),
                name: "node-1".into(),
                endpoint: "node-1.example:7301".into(),
                ..Default::default()
            }),
            0,
        )
        .await
        .expect("the node registers itself");
    client
        .put(dataset(&own), 0)
        .await
        .expect("a node publishes its own agency's service");
    let got = client.get(RecordKind::Service, &own, false).await.unwrap();
    assert!(matches!(
        got.record.and_then(|r| r.value),
        Some(Value::Service(s)) if s.agency_code == OWN
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_a_certificate_that_is_not_a_registry_servers() {
    let mut cluster = Cluster::start(1).await;
    let (node, _) = cluster.pki.issue(OWN, Role::Node, "node-1");
    let peer_addr = cluster.servers[&1].peer_addr().to_string();
    let endpoint = lgsp_certs::tls::client_endpoint(&peer_addr, &node, None).unwrap();
    let mut peer = RegistryPeerClient::new(endpoint.connect().await.expect("TLS handshake"));
    let result = peer
        .send(RaftBatch {
            messages: vec![],
            incarnation: 0,
        })
        .await;
    assert_refused(result, Code::PermissionDenied, &["node", "registry"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_a_registry_certificate_of_another_agency() {
    // Every server applies the catalog's rules with the province taken from
    // its own certificate: a server of another agency is no peer.
    let mut cluster = Cluster::start(1).await;
    let (stranger, _) = cluster.pki.issue(OWN, Role::Registry, "registry-9");
    let peer_addr = cluster.servers[&1].peer_addr().to_string();
    let endpoint = lgsp_certs::tls::client_endpoint(&peer_addr, &stranger, None).unwrap();
    let mut peer = RegistryPeerClient::new(endpoint.connect().await.expect("TLS handshake"));
    let result = peer
        .send(RaftBatch {
            messages: vec![],
            incarnation: 0,
        })
        .await;
    assert_refused(result, Code::PermissionDenied, &["accepts only agency"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_an_invalid_argument() {
    let cluster = Cluster::start(1).await;
    cluster.register_agency(OWN, "Sở Tư pháp").await;
    let huge = Value::Service(Service {
        id: format!("{OWN}/ho-tich"),
        kind: ServiceKind::Dataset as i32,
        description: "x".repeat(100 * 1024),
        ..Default::default()
    });
    let result = cluster.admin_client().put(huge, 0).await;
    let status = result.expect_err("a 100 KB record was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The size limit speaks first (the description alone is also too long).
    assert!(
        status
            .message()
            .contains("the catalog accepts at most 65536"),
        "the message should say the record is too large: {:?}",
        status.message()
    );
    cluster.shutdown().await;
}

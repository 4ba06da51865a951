//! A client checks who it reached, not only that the server's certificate
//! chains to the provincial CA. Each test is an attack from a network
//! position (a DNS or ARP redirect, played here by changing the address the
//! catalog gives) or with a stolen or revoked certificate: the call must be
//! refused in the handshake, saying who answered and who was expected, and
//! the consumer's sharing log must not record a forged answer as OK.

use lgsp_certs::inspect::CertInfo;
use lgsp_certs::{Authenticator, ClientTrust, Credentials, Expected, Role, ServerTls};
use lgsp_proto::catalog_record::Value;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_proto::data_exchange_server::{DataExchange, DataExchangeServer};
use lgsp_proto::{CallResponse, Envelope, NodeRecord, QueryPage, QueryRequest, RecordKind};
use lgsp_registry::{Catalog, RegistryClient};
use lgsp_tests::province::{A, NodeProcess, Province, two_agencies};
use lgsp_tests::{Pki, TRUST_DOMAIN, WhoAmIServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tonic::{Code, Request, Response, Status};

/// An agency that is neither A nor B: its node certificate is the
/// attacker's.
const C: &str = "000.00.14.H62";

/// What the forger answers to every call.
const FORGED: &[u8] = r#"{"ho_ten":"Giả mạo"}"#.as_bytes();

/// A server holding a valid node certificate of agency C that answers
/// every call with forged data, as an attacker on the network would.
#[derive(Clone, Copy, Debug)]
struct Forger;

#[tonic::async_trait]
impl DataExchange for Forger {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<CallResponse>, Status> {
        Ok(Response::new(CallResponse {
            payload: FORGED.to_vec(),
            request_id: request.into_inner().request_id,
            metadata: HashMap::new(),
        }))
    }

    type QueryStream = Pin<Box<dyn futures::Stream<Item = Result<QueryPage, Status>> + Send>>;

    async fn query(
        &self,
        _request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        Err(Status::unimplemented("forger"))
    }
}

/// Starts the forger with `creds` on a free port; returns its address.
async fn start_forger(creds: Credentials) -> SocketAddr {
    let tls = ServerTls::new(creds).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = Authenticator::new(tls.clone(), TRUST_DOMAIN);
    let incoming = tls.incoming(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DataExchangeServer::with_interceptor(Forger, auth))
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

/// A's node record as the catalog holds it.
async fn node_record(province: &Province, agency: &str, name: &str) -> NodeRecord {
    let got = province
        .admin
        .get(RecordKind::Node, &format!("{agency}/{name}"), false)
        .await
        .unwrap();
    match got.record.and_then(|r| r.value) {
        Some(Value::Node(n)) => n,
        other => panic!("no node record for {agency}/{name}: {other:?}"),
    }
}

/// Calls A's dataset through B's node as B's application does, with
/// `request_id`.
async fn call_through_b(b: &NodeProcess, request_id: &str) -> Result<Vec<u8>, Status> {
    let mut client = DataExchangeClient::new(b.app_channel().await);
    client
        .call(Envelope {
            service_id: format!("{A}/ho-tich"),
            operation: "get".into(),
            parameters: HashMap::from([("key".into(), "001099012345".into())]),
            request_id: request_id.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().payload)
}

/// Calls through B (new request ids `prefix-N`) until a call is refused,
/// at most `within`; panics if every call kept succeeding. Returns the
/// refusal and its request id.
async fn until_refused(b: &NodeProcess, prefix: &str, within: Duration) -> (Status, String) {
    let deadline = Instant::now() + within;
    for n in 0.. {
        let request_id = format!("{prefix}-{n}");
        match call_through_b(b, &request_id).await {
            Err(status) => return (status, request_id),
            Ok(payload) => {
                assert_ne!(
                    payload, FORGED,
                    "B's node handed the forger's data to its application"
                );
                assert!(
                    Instant::now() < deadline,
                    "B's node kept calling for {within:?}\n{}",
                    b.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    unreachable!()
}

/// The status B's sharing log records for `request_id`, waiting up to 5 s
/// for the entry (the log is written through a buffer, flushed at each
/// seal, about once a second).
async fn logged_status(b: &NodeProcess, request_id: &str) -> String {
    let needle = format!("\"request_id\":\"{request_id}\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(b.sharing_log()).unwrap_or_default();
        if let Some(entry) = log.lines().rfind(|l| l.contains(&needle)) {
            let value: serde_json::Value = serde_json::from_str(entry).unwrap();
            return value["status"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "B logged no exchange {request_id}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_node_refuses_another_agencys_node_at_the_providers_address() {
    let (mut province, _a, b) = two_agencies().await;
    province.register_agency(C, "Sở Y tế tỉnh Vĩnh Phúc").await;
    let (forger_creds, _) = province.issue(C, Role::Node, "node-c");
    let forger = start_forger(forger_creds).await;

    // The redirect: the address B dials for A's node now reaches C's.
    let mut record = node_record(&province, A, "node-a").await;
    record.endpoint = forger.to_string();
    Catalog::new(province.admin.clone())
        .register_node(record)
        .await
        .unwrap();

    let (refused, request_id) = until_refused(&b, "redirect", Duration::from_secs(5)).await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let text = lgsp_certs::tls::explain_status(&refused);
    assert!(text.contains("not the one expected"), "{text}");
    assert!(text.contains(C), "the refusal names who answered: {text}");
    assert!(
        text.contains(A),
        "the refusal names who was expected: {text}"
    );
    assert_ne!(logged_status(&b, &request_id).await, "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_another_certificate_than_the_catalogs_is_refused() {
    let (province, _a, b) = two_agencies().await;
    // A's node at its own address, but the catalog pins another
    // certificate: what a node whose key was replaced by an attacker (with a
    // second certificate for the same identity) looks like.
    let mut record = node_record(&province, A, "node-a").await;
    record.cert_sha256 = "00".repeat(32);
    Catalog::new(province.admin.clone())
        .register_node(record)
        .await
        .unwrap();

    let (refused, request_id) = until_refused(&b, "pin", Duration::from_secs(5)).await;
    let text = lgsp_certs::tls::explain_status(&refused);
    assert!(text.contains("fingerprint"), "{text}");
    assert_ne!(logged_status(&b, &request_id).await, "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_revoked_after_the_link_opened_is_no_longer_called() {
    let (mut province, a, b) = two_agencies().await;
    // B has called A: a link and a connection are open.
    call_through_b(&b, "before").await.expect("granted call");

    let der = a.creds.chain[0].as_ref().to_vec();
    let serial = CertInfo::from_der(&der, Path::new("a")).unwrap().serial;
    province.revoke(&serial).await;

    let (refused, request_id) = until_refused(&b, "revoked", Duration::from_secs(5)).await;
    let text = lgsp_certs::tls::explain_status(&refused);
    assert!(text.to_lowercase().contains("revoked"), "{text}");
    assert_ne!(logged_status(&b, &request_id).await, "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_cannot_play_the_registry() {
    let mut pki = Pki::new(TRUST_DOMAIN);
    let (node, _) = pki.issue(A, Role::Node, "node-a");
    let (admin, _) = pki.issue("000.00.00.H62", Role::Admin, "so-tttt");
    let fake = WhoAmIServer::start(node, TRUST_DOMAIN).await;

    // The admin's client, as `lgsp ca publish-crl` uses it: the handshake
    // fails, so nothing is sent and the admin is told why.
    let client = RegistryClient::new(&[fake.addr.to_string()], &admin).unwrap();
    let refused = client.status().await.unwrap_err();
    let text = lgsp_certs::tls::explain_status(&refused);
    assert!(text.contains("not the one expected"), "{text}");
    assert!(text.contains("not a registry"), "{text}");

    // The same check, on its own.
    let trust = ClientTrust::new(&admin).unwrap();
    let connected = lgsp_certs::server_identity::connect(
        &fake.addr.to_string(),
        &admin,
        trust,
        Expected::registry(TRUST_DOMAIN),
    )
    .await;
    assert!(
        connected.is_err(),
        "connected to a node posing as a registry"
    );
    fake.stop().await;
}

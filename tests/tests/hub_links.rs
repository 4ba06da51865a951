//! The province's hub and its outside links, as real processes with real
//! TLS: `lgsp hub status` shows a federation peer down, then up once its
//! hub answers; a peer added while the hub runs is trusted without
//! restart, a certificate its CRL revokes is refused (even on a connection
//! opened before), and a removed peer is refused. A CRL the peer's hub
//! serves is followed into the catalog when its CA signed it and it is newer.
//!
//! The peer's hub here is a small Federation server started by the test
//! with a certificate of another instance's CA: enough for the province's
//! hub to probe it and for the test to call the province's hub as it would.

use lgsp_certs::{Credentials, Expected, Role};
use lgsp_proto::federation_client::FederationClient;
use lgsp_proto::federation_server::{Federation, FederationServer};
use lgsp_proto::{ExportsRequest, ExportsResponse};
use lgsp_tests::cluster::{PROVINCE, free_addr};
use lgsp_tests::province::{NodeProcess, Province};
use lgsp_tests::{Pki, lgsp};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Code, Request, Response, Status};

const NATIONAL_DOMAIN: &str = "ndxp.gov.vn";
const NATIONAL: &str = "000.00.00.G01";

/// `lgsp ARGS` as the provincial admin; its stdout.
fn admin(p: &mut Province, args: &[&str]) -> String {
    p.admin_cli(args)
}

/// A province with its hub running (no peer yet) and another instance's CA.
async fn province_with_hub() -> (Province, NodeProcess, String, Pki) {
    let mut p = Province::start().await;
    p.register_agency(PROVINCE, "Sở Thông tin và Truyền thông tỉnh Vĩnh Phúc")
        .await;
    let (mut hub, outward) = p.prepare_hub(PROVINCE, "hub");
    hub.start_hub(&outward);
    p.wait_for_node(PROVINCE, "hub", &hub).await;
    (p, hub, outward, Pki::new(NATIONAL_DOMAIN))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `lgsp hub peer add` for the national instance `q`, its hub at `endpoint`.
fn add_peer(p: &mut Province, q: &Pki, endpoint: &str) {
    let ca = write(q.dir.path(), "ndxp-ca.pem", q.ca.cert_pem());
    admin(
        p,
        &[
            "hub",
            "peer",
            "add",
            "--name",
            "ndxp",
            "--trust-domain",
            NATIONAL_DOMAIN,
            "--ca",
            ca.to_str().unwrap(),
            "--endpoint",
            endpoint,
        ],
    );
}

/// The national hub, as far as the province's hub probes it: it answers
/// `Exports` with nothing exported and the CRL the test puts in force there.
#[derive(Debug, Default)]
struct PeerHub {
    crl: Arc<Mutex<Vec<u8>>>,
}

#[tonic::async_trait]
impl Federation for PeerHub {
    async fn exports(
        &self,
        _: Request<ExportsRequest>,
    ) -> Result<Response<ExportsResponse>, Status> {
        Ok(Response::new(ExportsResponse {
            trust_domain: NATIONAL_DOMAIN.into(),
            services: Vec::new(),
            crl_der: self.crl.lock().unwrap().clone(),
        }))
    }
}

/// Serves [`PeerHub`] on `addr` with `creds`, trusting `province_roots`.
async fn start_peer_hub(
    addr: SocketAddr,
    creds: &Credentials,
    province_roots: &Credentials,
) -> tokio::sync::oneshot::Sender<()> {
    start_peer_hub_with(addr, creds, province_roots, PeerHub::default()).await
}

async fn start_peer_hub_with(
    addr: SocketAddr,
    creds: &Credentials,
    province_roots: &Credentials,
    peer_hub: PeerHub,
) -> tokio::sync::oneshot::Sender<()> {
    let tls = lgsp_certs::tls::ServerTls::new(Credentials {
        roots: province_roots.roots.clone(),
        ..creds.clone()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FederationServer::new(peer_hub))
            .serve_with_incoming_shutdown(tls.incoming(listener), async {
                let _ = stopped.await;
            }),
    );
    stop
}

/// `lgsp hub status --hub-metrics` until `peer`'s line contains `want`
/// (up to `within`); the whole output.
async fn status_until(p: &mut Province, hub: &NodeProcess, want: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let out = admin(p, &["hub", "status", "--hub-metrics", &hub.metrics]);
        let line = out
            .lines()
            .find(|l| {
                l.trim_start().starts_with("ndxp ") && (l.contains(" ago") || l.contains("never"))
            })
            .unwrap_or_default();
        if line.contains(want) {
            return out;
        }
        assert!(
            start.elapsed() < within,
            "the link to ndxp never showed {want:?} in {within:?}:\n{out}\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_status_shows_a_peer_down_then_up() {
    let (mut p, hub, _, mut q) = province_with_hub().await;
    let (q_hub, _) = q.issue(NATIONAL, Role::Hub, "hub");
    // The peer's hub address, with nothing listening there yet.
    let peer_addr = free_addr();
    add_peer(&mut p, &q, &peer_addr.to_string());

    // Down: the hub's probes fail and its circuit opens (3 failures).
    let down = status_until(&mut p, &hub, "open (failing)", Duration::from_secs(15)).await;
    let line = down.lines().find(|l| l.contains("open (failing)")).unwrap();
    assert!(line.contains("never"), "no success yet: {down}");
    assert!(!line.contains(" 0/0/0 "), "failures are counted: {down}");

    // Up: the peer's hub answers; the next probe closes the circuit.
    let _peer = start_peer_hub(peer_addr, &q_hub, &p.registry.admin.clone()).await;
    let up = status_until(&mut p, &hub, "closed (up)", Duration::from_secs(15)).await;
    let line = up.lines().find(|l| l.contains("closed (up)")).unwrap();
    assert!(line.contains(" s ago"), "a last success: {up}");
    assert!(line.contains(" ms"), "a latency: {up}");

    // The same health in Prometheus form, labelled by the peer only.
    let (_, metrics) = lgsp_tests::metrics::scrape(&hub.metrics).await;
    assert!(
        metrics.contains("lgsp_hub_peer_breaker_state{peer=\"ndxp\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "lgsp_hub_peer_calls_total{peer=\"ndxp\",direction=\"out\",outcome=\"failed\"}"
        ),
        "{metrics}"
    );
}

/// Calls `Exports` on the province's hub at `outward` as `creds` (a hub of
/// the national instance), over `channel` when given.
async fn exports_as(channel: &tonic::transport::Channel) -> Result<ExportsResponse, Status> {
    FederationClient::new(channel.clone())
        .exports(ExportsRequest {})
        .await
        .map(Response::into_inner)
}

async fn channel_to(
    outward: &str,
    creds: &Credentials,
    p: &Province,
) -> Result<tonic::transport::Channel, String> {
    let creds = Credentials {
        roots: p.registry.admin.roots.clone(),
        ..creds.clone()
    };
    let trust = lgsp_certs::ClientTrust::new(&creds).unwrap();
    lgsp_certs::server_identity::connect(
        outward,
        &creds,
        trust,
        Expected::hub(lgsp_tests::TRUST_DOMAIN),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Whether a fresh connection as `creds` gets an answer within `within`;
/// the last refusal otherwise.
async fn served_within(
    outward: &str,
    creds: &Credentials,
    p: &Province,
    within: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let outcome = match channel_to(outward, creds, p).await {
            Ok(c) => exports_as(&c).await.map(|_| ()).map_err(|s| s.to_string()),
            Err(e) => Err(e),
        };
        if outcome.is_ok() || start.elapsed() > within {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_while_the_hub_runs_is_trusted_and_a_revoked_or_removed_one_is_refused() {
    let (mut p, hub, outward, mut q) = province_with_hub().await;
    let (q_hub, serial) = q.issue(NATIONAL, Role::Hub, "hub");
    let (q_hub_2, _) = q.issue(NATIONAL, Role::Hub, "hub-2");

    // Not a peer yet: not served.
    assert!(
        served_within(&outward, &q_hub, &p, Duration::ZERO)
            .await
            .is_err(),
        "served before the peer was added"
    );
    // Added while the hub runs: served within seconds, no restart.
    add_peer(&mut p, &q, "127.0.0.1:9");
    let added = Instant::now();
    served_within(&outward, &q_hub, &p, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the added peer is still refused: {e}\n{}", hub.log()));
    eprintln!("peer trusted {:?} after `hub peer add`", added.elapsed());
    let open = channel_to(&outward, &q_hub, &p).await.unwrap();
    exports_as(&open)
        .await
        .expect("served on a connection opened now");

    // Its limits are in its record: at one call per second, a burst is
    // refused with RESOURCE_EXHAUSTED naming the peer and the limit.
    let ca = q.dir.path().join("ndxp-ca.pem");
    let ca = ca.to_str().unwrap().to_owned();
    let limit = |rate: &'static str| -> Vec<String> {
        [
            "hub",
            "peer",
            "add",
            "--name",
            "ndxp",
            "--trust-domain",
            NATIONAL_DOMAIN,
            "--ca",
            &ca,
            "--endpoint",
            "127.0.0.1:9",
            "--rate",
            rate,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = limit("1");
    admin(&mut p, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let start = Instant::now();
    let limited = loop {
        match exports_as(&open).await {
            Err(s) if s.code() == Code::ResourceExhausted => break s,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "never limited: {other:?}"
                );
            }
        }
    };
    assert!(
        limited.message().contains("federation peer ndxp"),
        "{limited:?}"
    );
    assert!(limited.message().contains("1 per second"), "{limited:?}");
    let args = limit("10000");
    admin(&mut p, &args.iter().map(String::as_str).collect::<Vec<_>>());

    // A CRL signed by another CA is refused by `hub peer crl`.
    let mut stranger = Pki::new(NATIONAL_DOMAIN);
    let forged = stranger.ca.sign_crl(1).unwrap();
    let forged_file = write(q.dir.path(), "forged.crl", &forged.pem);
    let registry = p.registry_addrs().join(",");
    let tls = p.tls_dir("admin-cli", &p.registry.admin.clone());
    let out = lgsp(&[
        "hub",
        "peer",
        "crl",
        "--name",
        "ndxp",
        "--crl",
        forged_file.to_str().unwrap(),
        "--registry",
        &registry,
        "--tls-dir",
        tls.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "a forged CRL was published");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not a CRL of peer ndxp's CA"), "{said}");

    // The peer revokes its hub's certificate; the admin publishes its CRL.
    q.ca.revoke(
        &serial,
        lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
    )
    .unwrap();
    let crl = q.ca.sign_crl(7).unwrap();
    let crl_file = write(q.dir.path(), "ndxp.crl", &crl.pem);
    admin(
        &mut p,
        &[
            "hub",
            "peer",
            "crl",
            "--name",
            "ndxp",
            "--crl",
            crl_file.to_str().unwrap(),
        ],
    );
    // Refused on the connection opened before, naming the revocation.
    let start = Instant::now();
    let refused = loop {
        match exports_as(&open).await {
            Err(s) if s.code() == Code::Unauthenticated => break s,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the revoked certificate is still served: {other:?}\n{}",
                    hub.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(refused.message().contains("revoked"), "{refused:?}");
    assert!(refused.message().contains(&serial), "{refused:?}");
    // And at a new connection; the peer's other hub certificate still works.
    assert!(
        served_within(&outward, &q_hub, &p, Duration::ZERO)
            .await
            .is_err(),
        "a new connection with the revoked certificate was served"
    );
    served_within(&outward, &q_hub_2, &p, Duration::from_secs(2))
        .await
        .expect("the peer's certificate that is not revoked");

    // Removed: refused, on a connection opened before and at a new one.
    let open_2 = channel_to(&outward, &q_hub_2, &p).await.unwrap();
    admin(&mut p, &["hub", "peer", "remove", "--name", "ndxp"]);
    let start = Instant::now();
    loop {
        match exports_as(&open_2).await {
            Err(s) if s.code() == Code::PermissionDenied => {
                assert!(s.message().contains("not of a federation peer"), "{s:?}");
                break;
            }
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the removed peer is still served: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        served_within(&outward, &q_hub_2, &p, Duration::ZERO)
            .await
            .is_err(),
        "a new connection of the removed peer was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_the_peers_hub_serves_is_followed_when_its_ca_signed_it() {
    let (mut p, hub, outward, mut q) = province_with_hub().await;
    let (q_hub, _) = q.issue(NATIONAL, Role::Hub, "hub");
    let (q_hub_2, serial_2) = q.issue(NATIONAL, Role::Hub, "hub-2");
    let crl = Arc::new(Mutex::new(Vec::new()));
    let peer_addr = free_addr();
    let _peer = start_peer_hub_with(
        peer_addr,
        &q_hub,
        &p.registry.admin.clone(),
        PeerHub { crl: crl.clone() },
    )
    .await;
    add_peer(&mut p, &q, &peer_addr.to_string());
    served_within(&outward, &q_hub_2, &p, Duration::from_secs(5))
        .await
        .expect("the peer's second hub certificate, before any revocation");

    // A CRL the peer's CA did not sign, revoking that certificate: ignored
    // and said so in the hub's log; the certificate is still served.
    q.ca.revoke(
        &serial_2,
        lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
    )
    .unwrap();
    let mut stranger = Pki::new(NATIONAL_DOMAIN);
    stranger
        .ca
        .revoke(
            &serial_2,
            lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
        )
        .ok();
    *crl.lock().unwrap() = stranger.ca.sign_crl(1).unwrap().der;
    let start = Instant::now();
    while !hub.log().contains("served a CRL its CA did not sign") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the forged CRL was never looked at:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served_within(&outward, &q_hub_2, &p, Duration::ZERO)
        .await
        .expect("a forged CRL revoked a certificate");

    // The peer's own CRL: in force in the catalog and at the hub within
    // seconds, without `lgsp hub peer crl`.
    let served = q.ca.sign_crl(7).unwrap().der;
    let number = lgsp_certs::inspect::CrlInfo::from_der(&served, Path::new("<crl>"))
        .unwrap()
        .number
        .unwrap();
    *crl.lock().unwrap() = served;
    let start = Instant::now();
    while served_within(&outward, &q_hub_2, &p, Duration::ZERO)
        .await
        .is_ok()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the peer's CRL was not followed:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the peer's CRL followed in {:?}", start.elapsed());
    let peers = admin(&mut p, &["hub", "peer", "list", "-o", "json"]);
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    assert_eq!(peers["items"][0]["crl_number"], number, "{peers}");
    served_within(&outward, &q_hub, &p, Duration::from_secs(2))
        .await
        .expect("the peer's hub certificate the CRL does not list");
}

/// A get of `key` in `service` from `consumer`'s node, as the province's
/// hub carries it to the provider: with the record of on whose behalf.
fn on_behalf_of(
    consumer: &Credentials,
    service: &str,
    key: &str,
    request_id: &str,
) -> Request<lgsp_proto::Envelope> {
    let env = lgsp_proto::Envelope {
        service_id: service.into(),
        operation: "get".into(),
        parameters: [("key".to_owned(), key.to_owned())].into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Addressed to the province (the provider checks that), carried by the
    // national hub.
    let audience = lgsp_node::obo::Audience {
        trust_domain: lgsp_tests::TRUST_DOMAIN.into(),
        via_hub: format!("spiffe://{NATIONAL_DOMAIN}/agency/000.00.00.G01/hub/hub"),
    };
    let signed = lgsp_node::obo::sign(consumer, &env, now, &audience).unwrap();
    let mut request = Request::new(env);
    lgsp_node::obo::to_metadata(request.metadata_mut(), &signed);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refuses_a_record_signed_by_a_foreign_node_its_peer_crl_revokes() {
    const A: &str = "000.00.12.H62";
    const CONSUMER: &str = "000.00.07.G01";
    let mut p = Province::start().await;
    p.register_agency(A, "Sở Tư pháp tỉnh Vĩnh Phúc").await;
    let mut q = Pki::new(NATIONAL_DOMAIN);
    add_peer(&mut p, &q, "127.0.0.1:9");
    let mut node_a = p.prepare_node(
        A,
        "node-1",
        "[[services]]\nname = \"ho-tich\"\nkind = \"dataset\"\n",
    );
    let csv = write(
        &node_a.dir,
        "data.csv",
        "id,ho_ten\n001099012345,Nguyễn Thị Hương\n",
    );
    let out = lgsp(&[
        "dataset",
        "import",
        "--data-dir",
        node_a.data_dir().to_str().unwrap(),
        "--service",
        "ho-tich",
        "--file",
        csv.to_str().unwrap(),
        "--key",
        "id",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node_a.start();
    p.wait_for_node(A, "node-1", &node_a).await;
    let service = format!("{A}/ho-tich");
    p.publish(
        &service,
        lgsp_proto::ServiceKind::Dataset,
        "node-1",
        "ho-tich",
    )
    .await;
    admin(
        &mut p,
        &[
            "agency",
            "register",
            "--code",
            CONSUMER,
            "--name",
            "Bộ Tư pháp",
            "--trust-domain",
            NATIONAL_DOMAIN,
        ],
    );
    admin(
        &mut p,
        &[
            "access",
            "grant",
            "--service",
            &service,
            "--consumer",
            CONSUMER,
            "--reason",
            "Thỏa thuận kết nối NDXP",
        ],
    );

    // The province's hub, as the provider node sees it; the national node.
    let (hub, _) = p.issue(lgsp_tests::cluster::PROVINCE, Role::Hub, "hub");
    let (consumer, serial) = q.issue(CONSUMER, Role::Node, "node-1");
    let trust = lgsp_certs::ClientTrust::new(&hub).unwrap();
    let channel = lgsp_certs::server_identity::connect(
        &node_a.provider,
        &hub,
        trust,
        Expected::node(
            lgsp_tests::TRUST_DOMAIN,
            lgsp_certs::AgencyCode::new(A).unwrap(),
            "node-1",
            None,
        ),
    )
    .await
    .unwrap();
    let as_hub = lgsp_proto::data_exchange_client::DataExchangeClient::new(channel);
    let mut n = 0;
    let mut call = || {
        n += 1;
        let mut client = as_hub.clone();
        let request = on_behalf_of(&consumer, &service, "001099012345", &format!("thu-hoi-{n}"));
        async move { client.call(request).await }
    };
    let start = Instant::now();
    loop {
        match call().await {
            Ok(r) => {
                assert!(String::from_utf8_lossy(&r.get_ref().payload).contains("Nguyễn Thị Hương"));
                break;
            }
            Err(s) => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the record of a node not revoked is refused: {s:?}\n{}",
                    node_a.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // The national instance revokes its node; the provincial admin
    // publishes its CRL. No hub has loaded it: the provider refuses.
    q.ca.revoke(
        &serial,
        lgsp_certs::ca::parse_reason("key-compromise").unwrap(),
    )
    .unwrap();
    let crl = q.ca.sign_crl(7).unwrap();
    let crl_file = write(q.dir.path(), "ndxp.crl", &crl.pem);
    admin(
        &mut p,
        &[
            "hub",
            "peer",
            "crl",
            "--name",
            "ndxp",
            "--crl",
            crl_file.to_str().unwrap(),
        ],
    );
    let start = Instant::now();
    let refused = loop {
        match call().await {
            Err(s) if s.code() == Code::Unauthenticated => break s,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the provider still serves a record signed by a revoked foreign node: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(refused.message().contains("revoked"), "{refused:?}");
    assert!(refused.message().contains(&serial), "{refused:?}");
    assert!(refused.message().contains("ndxp"), "{refused:?}");
}

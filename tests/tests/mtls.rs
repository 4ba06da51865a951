//! Mutual TLS between lgsp peers over real sockets on 127.0.0.1: who gets in,
//! who is refused, and why the refused are told.

use lgsp_certs::Role;
use lgsp_certs::tls::client_endpoint;
use lgsp_proto::identity_service_client::IdentityServiceClient;
use lgsp_tests::{Pki, TRUST_DOMAIN, WhoAmIServer, call_who_am_i, who_am_i};
use time::{Duration, OffsetDateTime};

const AGENCY: &str = "000.00.12.H62";

async fn server(pki: &mut Pki) -> WhoAmIServer {
    let (creds, _) = pki.issue("000.00.00.H62", Role::Registry, "reg-1");
    WhoAmIServer::start(creds, TRUST_DOMAIN).await
}

#[tokio::test]
async fn valid_node_certificate_is_accepted_and_identity_comes_from_it() {
    let mut pki = Pki::new(TRUST_DOMAIN);
    let srv = server(&mut pki).await;
    let (creds, serial) = pki.issue(AGENCY, Role::Node, "node-1");
    let endpoint = client_endpoint(&srv.addr.to_string(), &creds, None).unwrap();
    let channel = endpoint.connect().await.unwrap();
    // A client claiming another agency in request metadata changes nothing.
    let mut client =
        IdentityServiceClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("x-lgsp-agency", "000.00.99.H62".parse().unwrap());
            req.metadata_mut().insert(
                "x-spiffe-id",
                "spiffe://vinhphuc.gov.vn/agency/000.00.99.H62/admin/root"
                    .parse()
                    .unwrap(),
            );
            Ok(req)
        });
    let id = client
        .who_am_i(lgsp_proto::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(
        id.spiffe_id,
        "spiffe://vinhphuc.gov.vn/agency/000.00.12.H62/node/node-1"
    );
    assert_eq!(id.agency_code, AGENCY);
    assert_eq!(id.role, lgsp_proto::Role::Node as i32);
    assert_eq!(id.serial, serial);
    srv.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused_and_told_why() {
    let mut pki = Pki::new(TRUST_DOMAIN);
    let srv = server(&mut pki).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca.cert_pem()))
        .domain_name("localhost");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", srv.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let err = who_am_i(endpoint).await.unwrap_err();
    assert!(
        err.contains("requires a client certificate"),
        "unexpected error: {err}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let mut pki = Pki::new(TRUST_DOMAIN);
    let srv = server(&mut pki).await;
    let mut other = Pki::new(TRUST_DOMAIN);
    let (mut creds, _) = other.issue(AGENCY, Role::Node, "node-1");
    // Trust the real server, present the foreign certificate.
    creds.ca_pem = pki.ca.cert_pem().to_owned();
    let endpoint = client_endpoint(&srv.addr.to_string(), &creds, None).unwrap();
    let err = who_am_i(endpoint).await.unwrap_err();
    assert!(
        err.contains("not issued by a CA the server trusts"),
        "unexpected error: {err}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let mut pki = Pki::new(TRUST_DOMAIN);
    let srv = server(&mut pki).await;
    let mut spec = pki.spec(AGENCY, Role::Node, "node-old");
    let now = OffsetDateTime::now_utc();
    spec.not_before = now - Duration::days(30);
    spec.not_after = now - Duration::days(1);
    let (creds, _) = pki.issue_spec(&spec);
    let endpoint = client_endpoint(&srv.addr.to_string(), &creds, None).unwrap();
    let err = who_am_i(endpoint).await.unwrap_err();
    assert!(err.contains("expired"), "unexpected error: {err}");
    srv.stop().await;
}

#[tokio::test]
async fn revoked_certificate_is_refused_without_restart() {
    let mut pki = Pki::new(TRUST_DOMAIN);
    let srv = server(&mut pki).await;
    let (creds, serial) = pki.issue(AGENCY, Role::Node, "node-1");
    let endpoint = client_endpoint(&srv.addr.to_string(), &creds, None).unwrap();

    // Before revocation: a connection that works, and stays open.
    let channel = endpoint.connect().await.unwrap();
    let mut open_client = IdentityServiceClient::new(channel);
    call_who_am_i(&mut open_client).await.unwrap();

    pki.ca
        .revoke(&serial, rcgen::RevocationReason::KeyCompromise)
        .unwrap();
    let crl = pki.ca.sign_crl(1).unwrap();
    srv.tls.set_crl(&crl.der).unwrap();

    // A new connection is refused at the handshake...
    let err = who_am_i(endpoint.clone()).await.unwrap_err();
    assert!(err.contains("revoked"), "unexpected error: {err}");
    // ...and the connection opened before the revocation is refused per call.
    let err = call_who_am_i(&mut open_client).await.unwrap_err();
    assert!(
        err.starts_with("Unauthenticated") && err.contains("revoked"),
        "unexpected error: {err}"
    );
    // Others are unaffected.
    let (other, _) = pki.issue(AGENCY, Role::Node, "node-2");
    who_am_i(client_endpoint(&srv.addr.to_string(), &other, None).unwrap())
        .await
        .unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn certificate_of_another_trust_domain_signed_by_our_ca_is_refused() {
    // A CA that is trusted but whose leaf names a foreign trust domain cannot
    // be made with `lgsp ca`; the server refuses it anyway if one exists.
    let mut pki = Pki::new(TRUST_DOMAIN);
    let srv = server(&mut pki).await;
    let mut foreign = Pki::new("hanoi.gov.vn");
    let (creds, _) = foreign.issue(AGENCY, Role::Node, "node-1");
    srv.tls
        .set_roots(vec![
            pki.ca_der(),
            rustls_pki_types_der(foreign.ca.cert_pem()),
        ])
        .unwrap();
    let mut creds = creds;
    creds.ca_pem = pki.ca.cert_pem().to_owned();
    let err = who_am_i(client_endpoint(&srv.addr.to_string(), &creds, None).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.starts_with("Unauthenticated") && err.contains("hanoi.gov.vn"),
        "unexpected error: {err}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_server_trusting_several_cas_refuses_only_what_each_cas_crl_revokes() {
    // The hub's outward listener: several CAs, a CRL from only some of them.
    let mut pki = Pki::new(TRUST_DOMAIN);
    let srv = server(&mut pki).await;
    let mut peer = Pki::new("hanoi.gov.vn");
    let (revoked, serial) = peer.issue(AGENCY, Role::Hub, "hub");
    let (kept, _) = peer.issue(AGENCY, Role::Hub, "hub-2");
    peer.ca
        .revoke(&serial, rcgen::RevocationReason::KeyCompromise)
        .unwrap();
    let crl = peer.ca.sign_crl(1).unwrap();
    srv.tls
        .set_trust(
            vec![pki.ca_der(), rustls_pki_types_der(peer.ca.cert_pem())],
            vec![crl.der],
        )
        .unwrap();
    let (own, _) = pki.issue(AGENCY, Role::Node, "node-1");
    let ca_pem = pki.ca.cert_pem().to_owned();
    let to_srv = |creds: &lgsp_certs::Credentials| {
        let mut creds = creds.clone();
        creds.ca_pem = ca_pem.clone();
        client_endpoint(&srv.addr.to_string(), &creds, None).unwrap()
    };
    // The peer's revoked certificate: refused in the handshake.
    let err = who_am_i(to_srv(&revoked)).await.unwrap_err();
    assert!(err.contains("revoked"), "unexpected error: {err}");
    // Its other certificate passes the handshake (the server's own check
    // then refuses the foreign trust domain, not a revocation).
    let err = who_am_i(to_srv(&kept)).await.unwrap_err();
    assert!(
        err.starts_with("Unauthenticated")
            && err.contains("hanoi.gov.vn")
            && !err.contains("revoked"),
        "unexpected error: {err}"
    );
    // The CA without a CRL here: its certificates are not refused for it.
    who_am_i(to_srv(&own)).await.unwrap();
    srv.stop().await;
}

fn rustls_pki_types_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

trait CaDer {
    fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static>;
}

impl CaDer for Pki {
    fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        rustls_pki_types_der(self.ca.cert_pem())
    }
}

//! The consumer side with mutual TLS under the agency's own CA: only the
//! agency's applications, holding certificates from that CA, may call
//! through the node.

use lgsp_certs::Role;
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::Pki;
use lgsp_tests::province::{A, B, HO_TICH_CSV, two_agencies_custom};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_listener_with_mtls_serves_the_agencys_apps_and_refuses_others() {
    // Tam Dương's own CA for its applications.
    let mut apps_ca = Pki::new("tamduong.local");
    let (app, _) = apps_ca.issue(B, Role::Node, "ho-tich-app");
    let consumer_tls = "[consumer.tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\nca = \"tls/apps-ca.pem\"\n";
    let (mut province, _a, b) = two_agencies_custom(1, "", consumer_tls, HO_TICH_CSV, |_, b| {
        std::fs::write(b.dir.join("tls/apps-ca.pem"), apps_ca.ca.cert_pem()).unwrap();
    })
    .await;

    // The node presents its provincial certificate; the app presents one from Tam Dương's CA.
    let provincial_ca = std::fs::read_to_string(b.dir.join("tls/ca.pem")).unwrap();
    let endpoint = |identity: Option<tonic::transport::Identity>| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&provincial_ca))
            .domain_name("127.0.0.1");
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        tonic::transport::Endpoint::from_shared(format!("https://{}", b.consumer))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let env = Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), "001099012345".into())]),
        ..Default::default()
    };
    let mut last = None;
    let mut served = false;
    for _ in 0..150 {
        let attempt = async {
            let channel = endpoint(Some(tonic::transport::Identity::from_pem(
                &app.cert_pem,
                &app.key_pem,
            )))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            DataExchangeClient::new(channel).call(env.clone()).await
        };
        match attempt.await {
            Ok(r) => {
                assert!(
                    String::from_utf8_lossy(&r.into_inner().payload).contains("Nguyễn Thị Hương")
                );
                served = true;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the app with a Tam Dương certificate was never served: {last:?}\n{}",
        b.log()
    );

    // Without a certificate, or with a provincial node certificate instead
    // of an app one, refused at the TLS handshake: never an answer from the
    // node's gRPC service (which would mean the call got in).
    let refusal = |outcome: Result<tonic::transport::Channel, tonic::transport::Error>| async {
        let status = match outcome {
            Ok(channel) => match DataExchangeClient::new(channel).call(env.clone()).await {
                Ok(_) => return None,
                Err(status) => status,
            },
            Err(e) => return Some((tonic::Code::Unavailable, format!("{e:?}"))),
        };
        Some((status.code(), lgsp_certs::tls::explain_status(&status)))
    };
    let (other, _) = province.issue(B, Role::Node, "not-an-app");
    let provincial = tonic::transport::Identity::from_pem(&other.cert_pem, &other.key_pem);
    // The client usually reads the server's alert; when hyper sees the
    // close first, it only learns that the connection closed.
    // What B's consumer side counted; a refused caller must not add to it.
    let consumer_calls = async || {
        let (_, body) = lgsp_tests::metrics::scrape(&b.metrics).await;
        body.lines()
            .filter(|l| l.starts_with("lgsp_calls_total{side=\"consumer\""))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let counted = consumer_calls().await;
    assert!(!counted.is_empty(), "the app's call was counted");
    for (who, identity, alert) in [
        (
            "an app without a certificate",
            None,
            "requires a client certificate",
        ),
        (
            "a certificate not from the agency's app CA",
            Some(provincial),
            "not issued by a CA the server trusts",
        ),
    ] {
        let (code, why) = refusal(endpoint(identity).connect().await)
            .await
            .unwrap_or_else(|| panic!("{who} was served"));
        assert!(
            matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            "{who}: refused by the service, not at the handshake: {code:?} {why}"
        );
        assert!(
            why.contains(alert) || why.contains("connection closed"),
            "{who}: {why}"
        );
        assert_eq!(
            consumer_calls().await,
            counted,
            "{who} reached the node's gRPC service"
        );
    }
}

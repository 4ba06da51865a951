//! Health and reflection on the province-facing listeners are services
//! like the others: they answer only certificates the listener accepts (a
//! revoked one is refused on its open connection too), reflection lists
//! only what the listener serves, and the registry answers health checks.

use lgsp_certs::Role;
use lgsp_certs::tls::client_endpoint;
use lgsp_tests::province::{B, two_agencies};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn health(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn reflected(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let reply = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner()
        .message()
        .await
        .expect("reply")
        .expect("one reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_by_health_on_its_open_connection() {
    let (mut province, a, _b) = two_agencies().await;
    let (creds, serial) = province.issue(B, Role::Node, "node-b-ops");
    let channel = client_endpoint(&a.provider, &creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    health(channel.clone(), "").await.expect("served before");
    province.revoke(&serial).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match health(channel.clone(), "").await {
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(status.message().contains("revoked"), "{status:?}");
                break;
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "health still answered a revoked certificate after 5 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_only_what_each_listener_serves() {
    let (mut province, a, b) = two_agencies().await;
    let (creds, _) = province.issue(B, Role::Node, "node-b-ops");
    let provider = client_endpoint(&a.provider, &creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let listed = reflected(provider).await;
    for served in ["lgsp.v1.DataExchange", "lgsp.v1.NodeLink"] {
        assert!(listed.iter().any(|s| s == served), "{listed:?}");
    }
    for not_served in ["lgsp.v1.Registry", "lgsp.v1.RegistryPeer"] {
        assert!(!listed.iter().any(|s| s == not_served), "{listed:?}");
    }
    let consumer = reflected(b.app_channel().await).await;
    assert!(
        !consumer
            .iter()
            .any(|s| s == "lgsp.v1.NodeLink" || s == "lgsp.v1.Registry"),
        "{consumer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_answers_health_checks_over_mtls() {
    let (province, a, _b) = two_agencies().await;
    let addr = province.registry_addrs().remove(0);
    let channel = client_endpoint(&addr, &a.creds, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(channel.clone(), "").await.expect("serving"), 1);
    assert_eq!(
        health(channel, "lgsp.v1.Registry").await.expect("serving"),
        1
    );
}

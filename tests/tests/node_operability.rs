//! What an operator relies on to run a node: standard gRPC health and
//! reflection on both listeners, Prometheus metrics of the exchanges, and
//! the sharing log exported by time range.

use lgsp_certs::Role;
use lgsp_certs::tls::client_endpoint;
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::lgsp;
use lgsp_tests::metrics::{sample, scrape};
use lgsp_tests::province::{A, B, NodeProcess, two_agencies};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const DATA_EXCHANGE: &str = "lgsp.v1.DataExchange";

fn get(service: &str, key: &str, request_id: &str) -> Envelope {
    Envelope {
        service_id: service.into(),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), key.into())]),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// A's provider listener, over mTLS with a node certificate of B.
async fn provider_channel(
    province: &mut lgsp_tests::province::Province,
    a: &NodeProcess,
) -> Channel {
    let (creds, _) = province.issue(B, Role::Node, "node-b-ops");
    client_endpoint(&a.provider, &creds, None)
        .unwrap()
        .connect()
        .await
        .expect("connect to A's provider listener")
}

async fn health(channel: Channel, service: &str) -> ServingStatus {
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("health check of {service:?}: {s:?}"))
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("a known serving status")
}

async fn reflected_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_on_both_listeners() {
    let (mut province, a, b) = two_agencies().await;
    let consumer = b.app_channel().await;
    let provider = provider_channel(&mut province, &a).await;

    for (side, channel) in [("consumer", &consumer), ("provider", &provider)] {
        for service in ["", DATA_EXCHANGE] {
            assert_eq!(
                health(channel.clone(), service).await,
                ServingStatus::Serving,
                "{side} listener, service {service:?}"
            );
        }
        let services = reflected_services(channel.clone()).await;
        assert!(
            services.iter().any(|s| s == DATA_EXCHANGE),
            "{side} listener's reflection lists {services:?}"
        );
    }

    // The descriptors are complete enough for a tool such as grpcurl.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(DATA_EXCHANGE.into())),
    };
    let reply = ServerReflectionClient::new(consumer)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner()
        .message()
        .await
        .expect("reply")
        .expect("one reply");
    match reply.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            assert!(!files.file_descriptor_proto.is_empty(), "{files:?}")
        }
        other => panic!("expected the file declaring {DATA_EXCHANGE}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_side_service_consumer_and_code() {
    let (_province, a, b) = two_agencies().await;
    let service = format!("{A}/ho-tich");
    let mut app = DataExchangeClient::new(b.app_channel().await);
    for i in 0..3 {
        app.call(get(&service, "001099012345", &format!("req-metrics-{i}")))
            .await
            .expect("call");
    }
    let err = app
        .call(get(&service, "khong-co", "req-metrics-missing"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let (status, body) = scrape(&a.metrics).await;
    assert!(status.contains(" 200"), "{status}");
    let ok_labels = [
        "side=\"provider\"",
        &format!("service=\"{service}\""),
        &format!("consumer=\"{B}\""),
        "code=\"OK\"",
    ];
    let ok = sample(&body, "lgsp_calls_total{", &ok_labels)
        .unwrap_or_else(|| panic!("no provider OK calls of {service} in:\n{body}"));
    // two_agencies made calls of its own before these three.
    assert!(ok >= 3.0, "{ok} OK calls counted:\n{body}");
    let not_found = [
        "side=\"provider\"",
        &format!("service=\"{service}\""),
        "code=\"NOT_FOUND\"",
    ];
    assert_eq!(
        sample(&body, "lgsp_calls_total{", &not_found),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "lgsp_call_duration_seconds_count{",
            &["side=\"provider\""]
        )
        .is_some(),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "lgsp_exchange_bytes_total{",
            &["side=\"provider\"", "direction=\"out\""]
        )
        .is_some_and(|n| n > 0.0),
        "{body}"
    );
    let age = sample(&body, "lgsp_catalog_cache_age_seconds", &[])
        .unwrap_or_else(|| panic!("no cache age in:\n{body}"));
    assert!(age.is_finite() && age < 5.0, "a live cache is fresh: {age}");
    assert!(
        sample(&body, "lgsp_catalog_revision", &[]).is_some_and(|r| r > 0.0),
        "{body}"
    );

    // B counts the same calls on its consumer side.
    let (_, body) = scrape(&b.metrics).await;
    let consumer_ok = [
        "side=\"consumer\"",
        &format!("service=\"{service}\""),
        "code=\"OK\"",
    ];
    assert!(
        sample(&body, "lgsp_calls_total{", &consumer_ok).is_some_and(|n| n >= 3.0),
        "{body}"
    );
}

/// Today's date on the province's clocks (Asia/Ho_Chi_Minh, UTC+7 all
/// year), as `lgsp audit export` reads dates.
fn province_date(offset_days: i64) -> String {
    let vietnam = time::UtcOffset::from_hms(7, 0, 0).unwrap();
    let date = time::OffsetDateTime::now_utc().to_offset(vietnam).date()
        + time::Duration::days(offset_days);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_writes_the_calls_of_the_day_and_nothing_from_the_future() {
    // Taken before the calls, so that they are all from this date on.
    let today = province_date(0);
    let (_province, a, b) = two_agencies().await;
    let service = format!("{A}/ho-tich");
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let ids = ["req-export-1", "req-export-2", "req-export-3"];
    for id in ids {
        app.call(get(&service, "001088054321", id))
            .await
            .expect("call");
    }
    // The log is written out at least once a second, when it is sealed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(a.sharing_log())
        .unwrap_or_default()
        .contains(ids[2])
    {
        assert!(Instant::now() < deadline, "A's log never got {}", ids[2]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out_file = a.dir.join("export-today.jsonl");
    let out = lgsp(&[
        "audit",
        "export",
        "--log",
        a.sharing_log().to_str().unwrap(),
        "--key",
        a.dir.join("tls/key.pem").to_str().unwrap(),
        "--cert",
        a.dir.join("tls/cert.pem").to_str().unwrap(),
        "--from",
        &today,
        "--out",
        out_file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "export: {stderr}");
    let exported = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // A header, the entries and the seals that prove them.
    let entries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("request_id").is_some())
        .collect();
    for id in ids {
        let entry = entries
            .iter()
            .find(|e| e["request_id"] == id)
            .unwrap_or_else(|| panic!("{id} not exported:\n{exported}"));
        assert_eq!(entry["side"], "provider", "{entry}");
        assert_eq!(entry["consumer"], B, "{entry}");
        assert_eq!(entry["service"], service.as_str(), "{entry}");
    }
    assert!(
        lines[0].get("export").is_some() && lines.last().unwrap().get("seal").is_some(),
        "an export starts with its header and ends with a seal:\n{exported}"
    );
    assert!(
        stderr.contains(&format!("exported {} entries", entries.len())),
        "{stderr}"
    );

    // Nothing has happened tomorrow yet: an empty export, not an error.
    let future_file = a.dir.join("export-tomorrow.jsonl");
    let out = lgsp(&[
        "audit",
        "export",
        "--log",
        a.sharing_log().to_str().unwrap(),
        "--key",
        a.dir.join("tls/key.pem").to_str().unwrap(),
        "--cert",
        a.dir.join("tls/cert.pem").to_str().unwrap(),
        "--from",
        &province_date(1),
        "--out",
        future_file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "export: {stderr}");
    assert!(stderr.contains("exported 0 entries"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&future_file).unwrap(), "");
}

//! Bad input does not hurt a node: malformed envelopes, unknown services,
//! a dataset file that breaks its schema, oversized messages and
//! connections that never finish their TLS handshake each get a clear
//! answer (or are dropped), nothing is half-written, and the node keeps
//! serving.

use lgsp_certs::Role;
use lgsp_certs::tls::{HANDSHAKE_TIMEOUT, client_endpoint};
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::lgsp;
use lgsp_tests::province::{A, B, NodeProcess, two_agencies};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// The node's default `limits.max_message_bytes`.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

fn get(service: &str, key: &str) -> Envelope {
    Envelope {
        service_id: service.into(),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), key.into())]),
        ..Default::default()
    }
}

fn ho_tich() -> String {
    format!("{A}/ho-tich")
}

/// Fetches one record of A's dataset through B and returns its `ho_ten`.
async fn name_through_b(b: &NodeProcess, key: &str) -> Result<String, tonic::Status> {
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let r = tokio::time::timeout(Duration::from_secs(5), app.call(get(&ho_tich(), key)))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer within 5 s"))??;
    let record: serde_json::Value = serde_json::from_slice(&r.into_inner().payload).unwrap();
    Ok(record["ho_ten"].as_str().unwrap_or_default().to_owned())
}

fn assert_alive(node: &mut NodeProcess) {
    assert!(
        node.is_running(),
        "node {} exited:\n{}",
        node.name,
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_envelopes_are_invalid_argument_and_unknown_services_not_found() {
    let (_province, mut a, mut b) = two_agencies().await;
    let mut app = DataExchangeClient::new(b.app_channel().await);

    // No service id at all: refused by B itself, before any routing.
    let err = app.call(get("", "001099012345")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("service id") && err.message().contains("<agency-code>/"),
        "the message says what a service id looks like: {err:?}"
    );

    // An operation a dataset does not have: A refuses it, B passes the status on.
    let err = app
        .call(Envelope {
            operation: "delete".into(),
            ..get(&ho_tich(), "001099012345")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("\"delete\"") && err.message().contains("\"get\""),
        "the message names the bad operation and the supported one: {err:?}"
    );

    // "get" without its key parameter.
    let err = app
        .call(Envelope {
            service_id: ho_tich(),
            operation: "get".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("parameter \"key\""),
        "the message names the missing parameter: {err:?}"
    );

    // Well formed, but nobody published it.
    let unknown = format!("{A}/khong-ton-tai");
    let err = app.call(get(&unknown, "1")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains(&unknown) && err.message().contains("not in the provincial catalog"),
        "{err:?}"
    );

    assert_eq!(
        name_through_b(&b, "001099012345").await.unwrap(),
        "Nguyễn Thị Hương"
    );
    assert_alive(&mut a);
    assert_alive(&mut b);
}

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "so_dinh_danh": {"type": "string", "maxLength": 12},
    "ho_ten": {"type": "string", "maxLength": 40},
    "nam_sinh": {"type": "integer"},
    "noi_sinh": {"type": "string"}
  },
  "required": ["so_dinh_danh", "ho_ten", "nam_sinh"],
  "additionalProperties": false
}"#;

/// Line 3 has a 16-character key (maxLength 12), line 4 no `nam_sinh`
/// (required); lines 2 and 5 are good.
const BAD_CSV: &str = "so_dinh_danh,ho_ten,nam_sinh,noi_sinh\n\
001099012345,Nguyễn Thị Hương (mới),1999,Vĩnh Yên\n\
0010880543219999,Trần Văn Đức,1988,Phúc Yên\n\
001077000111,Lê Thị Ánh,,Vĩnh Yên\n\
001066000222,Phạm Văn Bình,1966,Tam Dương\n";

/// The generation directories of a dataset and what `CURRENT` names.
fn dataset_state(data_dir: &Path, service: &str) -> (Vec<String>, String) {
    let dir = data_dir.join("datasets").join(service);
    let mut entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let current = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
    (entries, current)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violating_reimport_names_bad_lines_and_the_old_data_stays_served() {
    // two_agencies imports a good file into A before starting it.
    let (_province, mut a, mut b) = two_agencies().await;
    let before = dataset_state(&a.data_dir(), "ho-tich");

    let schema = a.dir.join("ho-tich.schema.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let bad = a.dir.join("ho-tich-moi.csv");
    std::fs::write(&bad, BAD_CSV).unwrap();
    let out = lgsp(&[
        "dataset",
        "import",
        "--data-dir",
        a.data_dir().to_str().unwrap(),
        "--service",
        "ho-tich",
        "--file",
        bad.to_str().unwrap(),
        "--key",
        "so_dinh_danh",
        "--schema",
        schema.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad file must fail: {stderr}");
    let file = bad.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:3:")) && stderr.contains("maxLength"),
        "line 3's key is too long: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:4:")) && stderr.contains("nam_sinh"),
        "line 4 lacks a required field: {stderr}"
    );
    for good in [2, 5] {
        assert!(
            !stderr.contains(&format!("{file}:{good}:")),
            "line {good} is good: {stderr}"
        );
    }
    assert!(
        stderr.contains("2 bad rows") && stderr.contains("nothing was imported"),
        "{stderr}"
    );
    assert_eq!(
        dataset_state(&a.data_dir(), "ho-tich"),
        before,
        "a refused import leaves no new generation behind and CURRENT unchanged"
    );

    // The running node rechecks CURRENT every 200 ms; give a wrong switch time to show.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        name_through_b(&b, "001099012345").await.unwrap(),
        "Nguyễn Thị Hương",
        "the record served before is served unchanged"
    );
    let err = name_through_b(&b, "001066000222").await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "no row of the refused file is served: {err:?}"
    );
    assert_alive(&mut a);
    assert_alive(&mut b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_out_of_range_and_the_node_keeps_serving() {
    let (mut province, mut a, mut b) = two_agencies().await;
    let big = Envelope {
        payload: vec![b'x'; 5 << 20],
        ..get(&ho_tich(), "001099012345")
    };

    // Through B's consumer side.
    let mut app = DataExchangeClient::new(b.app_channel().await);
    let err = tokio::time::timeout(Duration::from_secs(10), app.call(big.clone()))
        .await
        .expect("refused promptly")
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("too large")
            && err
                .message()
                .contains(&format!("the limit is: {MAX_MESSAGE_BYTES} bytes")),
        "the message gives the limit: {err:?}"
    );

    // Straight to A's provider side, with a granted node certificate.
    let (creds, _) = province.issue(B, Role::Node, "node-b2");
    let channel = client_endpoint(&a.provider, &creds, None)
        .unwrap()
        .connect()
        .await
        .expect("connect to A");
    let mut direct = DataExchangeClient::new(channel);
    let err = tokio::time::timeout(Duration::from_secs(10), direct.call(big))
        .await
        .expect("refused promptly")
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");

    // Both nodes, and the same connections, keep serving.
    app.call(get(&ho_tich(), "001099012345"))
        .await
        .expect("B serves after an oversized request");
    direct
        .call(get(&ho_tich(), "001088054321"))
        .await
        .expect("A serves after an oversized request");
    assert_alive(&mut a);
    assert_alive(&mut b);
}

/// Reads until the server closes the connection (EOF or reset); returns
/// how long after `opened` that was, or `None` if it stayed open until `limit`.
async fn closed_after(mut tcp: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::from_std(opened + limit);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(opened.elapsed()),
            // A TLS alert may come first; the close follows.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_stall_the_tls_handshake_block_no_one_and_are_closed() {
    let (mut province, mut a, mut b) = two_agencies().await;
    let opened = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(&a.provider).await.expect("connect"));
    }
    // The start of a ClientHello: a handshake record promising 512 bytes,
    // then a handshake header promising 508 and two bytes of version.
    let mut partial = TcpStream::connect(&a.provider).await.expect("connect");
    partial
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();
    stalled.push(partial);

    // While they hang: a call through B (its pooled connection) and a brand-new
    // mTLS connection to A both go through at once.
    let started = Instant::now();
    assert_eq!(
        name_through_b(&b, "001099012345").await.unwrap(),
        "Nguyễn Thị Hương"
    );
    let (creds, _) = province.issue(B, Role::Node, "node-b2");
    let channel = tokio::time::timeout(
        Duration::from_secs(3),
        client_endpoint(&a.provider, &creds, None)
            .unwrap()
            .connect(),
    )
    .await
    .expect("a new handshake is not held up by stalled ones")
    .expect("connect to A");
    DataExchangeClient::new(channel)
        .call(get(&ho_tich(), "001088054321"))
        .await
        .expect("a fresh connection is served");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "calls took {took:?}");

    // The server drops each stalled connection once the handshake times out.
    let limit = HANDSHAKE_TIMEOUT + Duration::from_secs(2);
    let closes =
        futures::future::join_all(stalled.into_iter().map(|c| closed_after(c, opened, limit)))
            .await;
    for (i, closed) in closes.iter().enumerate() {
        let after = closed.unwrap_or_else(|| {
            panic!("stalled connection {i} still open {limit:?} after it was opened")
        });
        assert!(
            after >= HANDSHAKE_TIMEOUT - Duration::from_millis(500),
            "connection {i} closed after {after:?}, before the handshake timeout"
        );
    }
    assert!(
        a.log().contains("TLS handshake timed out"),
        "A logs the dropped connections:\n{}",
        a.log()
    );

    assert_eq!(
        name_through_b(&b, "001077000111").await.unwrap(),
        "Lê Thị Ánh"
    );
    assert_alive(&mut a);
    assert_alive(&mut b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reimport_of_another_shape_is_refused_while_serving_and_rollback_switches_the_node() {
    let (_province, mut a, mut b) = two_agencies().await;
    let data = a.data_dir();
    let import = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "dataset",
            "import",
            "--data-dir",
            data.to_str().unwrap(),
            "--service",
            "ho-tich",
            "--file",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        lgsp(&args)
    };
    // Two rows, another key and other columns, while A serves the dataset
    // (and holds its database open): refused, naming the change.
    let other = a.dir.join("khac.csv");
    std::fs::write(&other, "ma,ho_ten\n1,Khác Một\n001099012345,Khác Hai\n").unwrap();
    let out = import(&other, &["--key", "ma"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("key so_dinh_danh → ma"), "{stderr}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        name_through_b(&b, "001099012345").await.unwrap(),
        "Nguyễn Thị Hương"
    );

    // The same shape, without --key: imported and served; then rolled back.
    let newer = a.dir.join("moi.csv");
    std::fs::write(
        &newer,
        "so_dinh_danh,ho_ten,ngay_sinh,noi_sinh\n001099012345,Nguyễn Thị Hương (mới),1999-03-12,Vĩnh Yên\n",
    )
    .unwrap();
    let out = import(&newer, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while name_through_b(&b, "001099012345").await.unwrap() != "Nguyễn Thị Hương (mới)" {
        assert!(
            Instant::now() < deadline,
            "the node never served the new import"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = lgsp(&[
        "dataset",
        "rollback",
        "--data-dir",
        data.to_str().unwrap(),
        "--service",
        "ho-tich",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while name_through_b(&b, "001099012345").await.unwrap() != "Nguyễn Thị Hương" {
        assert!(
            Instant::now() < deadline,
            "the node never served the rolled-back data"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(name_through_b(&b, "001088054321").await.is_ok());
    let listed = lgsp(&["dataset", "list", "--data-dir", data.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert_alive(&mut a);
    assert_alive(&mut b);
}

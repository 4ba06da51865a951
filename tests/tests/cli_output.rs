//! What an operator's scripts and monitoring read: every listing command's
//! `-o json`, `lgsp status` on a node's host, and the node's build and
//! certificate metrics, against a real province of processes.

use lgsp_certs::Role;
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::cluster::PROVINCE;
use lgsp_tests::province::{A, B, NodeProcess, two_agencies};
use lgsp_tests::{lgsp, lgsp_bin};
use serde_json::Value;
use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}\n{}\n({})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status
    )
}

/// Runs `lgsp ARGS -o json`; the parsed document.
fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = lgsp(&all);
    assert!(out.status.success(), "lgsp {all:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lgsp {all:?} printed no JSON ({e}):\n{}", text(&out)))
}

/// The item of `doc` whose `field` is `value`.
fn item<'a>(doc: &'a Value, field: &str, value: &str) -> &'a Value {
    doc["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {doc:#}"))
        .iter()
        .find(|i| i[field] == value)
        .unwrap_or_else(|| panic!("no item with {field} = {value} in {doc:#}"))
}

/// B's application calls A's dataset once, which opens B's node link to A.
async fn call_a(b: &NodeProcess) {
    DataExchangeClient::new(b.app_channel().await)
        .call(Envelope {
            service_id: format!("{A}/ho-tich"),
            operation: "get".into(),
            parameters: HashMap::from([("key".into(), "001099012345".into())]),
            ..Default::default()
        })
        .await
        .expect("B calls A's dataset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_command_prints_json_with_stable_fields() {
    let (mut province, a, _b) = two_agencies().await;
    let (admin, _) = province.issue(PROVINCE, Role::Admin, "ops");
    let tls = province.tls_dir("ops-tls", &admin);
    let registry = province.registry_addrs().join(",");
    let at = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend([
            "--registry".to_owned(),
            registry.clone(),
            "--tls-dir".to_owned(),
            tls.display().to_string(),
        ]);
        all
    };
    let run = |args: &[&str]| {
        let all = at(args);
        json(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let nodes = run(&["node", "list"]);
    assert_eq!(nodes["kind"], "nodes");
    assert!(nodes["catalog_revision"].as_u64().unwrap() > 0, "{nodes:#}");
    let node_a = item(&nodes, "agency", A);
    assert_eq!(node_a["name"], "node-a");
    assert_eq!(node_a["endpoint"], a.provider.as_str());
    assert_eq!(node_a["cert_sha256"].as_str().unwrap().len(), 64);
    // Each node registers the build it runs, as `lgsp --version` names it.
    let version = String::from_utf8_lossy(&lgsp(&["--version"]).stdout)
        .trim()
        .trim_start_matches("lgsp ")
        .to_owned();
    assert!(version.contains("(commit "), "{version}");
    assert_eq!(node_a["version"], version.as_str(), "{nodes:#}");

    let agencies = run(&["agency", "list"]);
    assert_eq!(agencies["kind"], "agencies");
    assert_eq!(item(&agencies, "code", B)["name"], "UBND huyện Tam Dương");

    let services = run(&["service", "list", "--keyword", "ho tich"]);
    assert_eq!(services["kind"], "services");
    let ho_tich = item(&services, "id", &format!("{A}/ho-tich"));
    assert_eq!(ho_tich["kind"], "dataset");
    assert_eq!(ho_tich["status"], "active");
    assert_eq!(ho_tich["node"], "node-a");
    assert_eq!(ho_tich["description"], "Hộ tịch");

    let grants = run(&["access", "list", "--service", &format!("{A}/ho-tich")]);
    assert_eq!(grants["kind"], "grants");
    let grant = item(&grants, "consumer", B);
    assert_eq!(grant["state"], "active");
    assert_eq!(grant["until"], Value::Null);
    assert_eq!(grant["items"], serde_json::json!([]));

    let requests = run(&["requests", "list", "--all"]);
    assert_eq!(requests["kind"], "requests");
    assert!(requests["items"].is_array(), "{requests:#}");
    assert!(
        requests["as_of"].as_str().unwrap().ends_with("+07:00"),
        "{requests:#}"
    );

    let status = run(&["registry", "status"]);
    assert_eq!(status["kind"], "registry_servers");
    let leader = status["leader_id"].as_u64().expect("a leader");
    let server = &status["items"][0];
    assert_eq!(server["reachable"], true);
    assert_eq!(server["leader_id"].as_u64(), Some(leader));
    assert!(
        server["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{status:#}"
    );
    assert!(server["members"][0]["client_address"].is_string());

    let peers = run(&["hub", "peer", "list"]);
    assert_eq!(peers["kind"], "federation_peers");
    assert_eq!(peers["items"], serde_json::json!([]));
    let hub = run(&["hub", "status"]);
    assert_eq!(hub["kind"], "hub_status");

    // A node-local listing: the datasets in A's data directory.
    let datasets = json(&[
        "dataset",
        "list",
        "--data-dir",
        a.data_dir().to_str().unwrap(),
    ]);
    assert_eq!(datasets["kind"], "datasets");
    let live = item(&datasets, "service", "ho-tich");
    assert_eq!(live["live"], true);
    assert_eq!(live["rows"], 3);
    assert_eq!(live["key"], "so_dinh_danh");
    assert!(
        live["imported"].as_str().unwrap().ends_with("+07:00"),
        "{datasets:#}"
    );

    // The text form is unchanged by the flag's existence.
    let plain = lgsp(
        &at(&["node", "list"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains(&format!("{A}/node-a  endpoint ")),
        "{}",
        text(&plain)
    );
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains(&format!("  version {version}  ")),
        "{}",
        text(&plain)
    );
}

/// The series `name` (with its labels, if any) of a scrape.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_node_host_on_one_screen_and_names_what_needs_attention() {
    let (_province, mut a, b) = two_agencies().await;
    call_a(&b).await;

    // The node's metrics say what build it runs and when its certificate expires.
    let version = lgsp(&["--version"]);
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{version}"));
    let metrics = scrape(&a.metrics).await;
    assert!(
        metrics.contains(&format!(
            "lgsp_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    let cert =
        lgsp_certs::inspect::CertInfo::from_der(&a.creds.chain[0], std::path::Path::new("a"))
            .unwrap();
    assert!(
        metrics.contains(&format!(
            "lgsp_certificate_expiry_timestamp_seconds {}",
            cert.not_after.unix_timestamp()
        )),
        "{metrics}"
    );

    // lgsp status, for people: every part on one screen.
    let config = a.config_path();
    let config = config.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let screen = loop {
        let out = lgsp(&["status", "--config", config]);
        let screen = text(&out);
        // The link B opened shows once the node counts it.
        if out.status.success() && screen.contains(&format!("links open     1 ({B}: 1)")) {
            break screen;
        }
        assert!(Instant::now() < deadline, "{screen}\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("lgsp status, as the test saw it:\n{screen}");
    for expected in [
        &format!("node           {A}/node-a"),
        "node process   answering on 127.0.0.1:",
        &format!("(commit {commit})"),
        "registry       1 of 1 server(s) answer; leader: server 1",
        "catalog copy   confirmed ",
        &format!("certificate    spiffe://vinhphuc.gov.vn/agency/{A}/node/node-a, expires "),
        "day(s) left",
        "datasets       ho-tich gen-",
        " 3 row(s), imported ",
        " +07:00\n",
        "problems       none",
    ] {
        assert!(screen.contains(expected), "no {expected:?} in:\n{screen}");
    }

    // ...and for scripts.
    let doc = json(&["status", "--config", config]);
    assert_eq!(doc["kind"], "node_status");
    assert_eq!(doc["node"]["answering"], true);
    assert_eq!(doc["registry"]["leader_id"], 1);
    assert!(
        doc["catalog"]["age_seconds"].as_f64().unwrap() < 60.0,
        "{doc:#}"
    );
    assert!(
        doc["certificate"]["days_left"].as_i64().unwrap() >= 28,
        "{doc:#}"
    );
    assert_eq!(doc["links_open"][0]["consumer"], B);
    assert_eq!(item(&doc, "service", "ho-tich")["rows"], 3);
    assert_eq!(doc["problems"], serde_json::json!([]));

    // A stopped node is named as the problem, with exit code 1.
    a.stop();
    let out = lgsp(&["status", "--config", config]);
    let screen = text(&out);
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(
        screen.contains("node process   not answering: ")
            && screen.contains("is `lgsp node start` running?")
            && screen.contains("error: 1 problem(s): the node does not answer on 127.0.0.1:")
            && screen.contains(&format!(
                "start it (`systemctl start lgsp-node`, or `lgsp node start --config {config}`)"
            )),
        "{screen}"
    );
    assert!(lgsp_bin().exists());
}

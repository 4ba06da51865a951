//! A real Prometheus server (Debian's `prometheus` package) scrapes an agency
//! node's metrics endpoint and answers a query for the node's calls through
//! its HTTP API: the metrics are what Prometheus itself accepts, not only
//! text that looks right.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use lgsp_proto::Envelope;
use lgsp_proto::data_exchange_client::DataExchangeClient;
use lgsp_tests::cluster::free_addr;
use lgsp_tests::province::{A, B, two_agencies};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `prometheus` binary Debian's package installs.
fn prometheus_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// A Prometheus server this test started; killed on drop. (A system service
/// the package may have started is neither used nor touched.)
struct Prometheus {
    addr: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, target: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: lgsp-node-a\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = free_addr();
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start prometheus");
        Self { addr, log, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path_and_query` from the server's HTTP API; the body, or why not.
    async fn get(&self, path_and_query: &str) -> Result<String, String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get(path_and_query)
            .header("host", self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .map_err(|_| "no answer in 5 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        conn.abort();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a query result holds the provider-side series of B's calls to A's
/// dataset, with a count above zero.
fn has_provider_series(body: &str, service: &str) -> bool {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    json["status"] == "success"
        && json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|series| {
                let m = &series["metric"];
                let count = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                m["__name__"] == "lgsp_calls_total"
                    && m["side"] == "provider"
                    && m["service"] == service
                    && m["consumer"] == B
                    && count >= 1.0
            })
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_a_node_and_answers_a_query_for_its_calls() {
    let bin = prometheus_bin().expect(
        "no prometheus binary: install Debian's prometheus package (apt-get install prometheus)",
    );
    let (_province, a, b) = two_agencies().await;
    let service = format!("{A}/ho-tich");
    let mut client = DataExchangeClient::new(b.app_channel().await);
    client
        .call(Envelope {
            service_id: service.clone(),
            operation: "get".into(),
            parameters: HashMap::from([("key".into(), "001099012345".into())]),
            ..Default::default()
        })
        .await
        .expect("B calls A's dataset");

    let dir = tempfile::tempdir().expect("tempdir");
    let prometheus = Prometheus::start(&bin, dir.path(), &a.metrics);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match prometheus.get("/api/v1/query?query=lgsp_calls_total").await {
            Ok(body) if has_provider_series(&body, &service) => break,
            Ok(body) => body,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            let targets = prometheus
                .get("/api/v1/targets")
                .await
                .unwrap_or_else(|e| e);
            panic!(
                "Prometheus did not return lgsp_calls_total{{side=\"provider\",service=\"{service}\"}} \
                 from node A's metrics ({}) within 30 s.\nlast answer: {last}\ntargets: {targets}\n\
                 prometheus log:\n{}\nnode A log:\n{}",
                a.metrics,
                prometheus.log(),
                a.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The same scrape carries what build the node runs and when its
    // certificate expires, as Prometheus stores them.
    let build = prometheus
        .get("/api/v1/query?query=lgsp_build_info")
        .await
        .expect("query lgsp_build_info");
    let build: serde_json::Value = serde_json::from_str(&build).expect("JSON");
    let series = &build["data"]["result"][0];
    assert_eq!(
        series["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{build}"
    );
    assert!(
        series["metric"]["commit"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{build}"
    );
    assert_eq!(series["value"][1], "1", "{build}");
    let days = prometheus
        .get("/api/v1/query?query=(lgsp_certificate_expiry_timestamp_seconds-time())/86400")
        .await
        .expect("query the certificate's expiry");
    let days: serde_json::Value = serde_json::from_str(&days).expect("JSON");
    let left: f64 = days["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{days}"));
    assert!((0.0..=31.0).contains(&left), "days left: {left}");
}

//! Reading a node's Prometheus endpoint the way a scraper does.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` with a bare HTTP/1.1 request; returns the status line and body.
pub async fn scrape(addr: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    tcp.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
        .await
        .expect("metrics answered within 5 s")
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample whose line starts with `name` and contains every
/// one of `labels`.
pub fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits up to `within` until the sample `name` with `labels` on the node
/// at `addr` reads `value`; fails with the last scrape otherwise.
pub async fn wait_for_sample(
    addr: &str,
    name: &str,
    labels: &[&str],
    value: f64,
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (_, body) = scrape(addr).await;
        if sample(&body, name, labels) == Some(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}{labels:?} never read {value} within {within:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Prometheus metrics of a node: calls by side, service, consumer and
//! status; latency histograms; bytes; the catalog cache's age and revision;
//! what build runs (`lgsp_build_info`) and when the node's certificate
//! expires. Served as text on `GET /metrics`.

use crate::catalog_cache::CatalogCache;
use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    side: &'static str,
    service: String,
    consumer: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    side: &'static str,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignedLabels {
    /// "batched" (one signature over a batch's tree) or "alone".
    signature: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    side: &'static str,
    direction: &'static str,
}

/// The commit the running binary was built from, set once by the binary
/// (the library cannot know it); "unknown" until then.
static BUILD_COMMIT: OnceLock<String> = OnceLock::new();

/// Records the commit this process was built from, for `lgsp_build_info`.
/// Only the first call counts.
pub fn set_build_commit(commit: &str) {
    let _ = BUILD_COMMIT.set(commit.to_owned());
}

/// The build this process runs, as `lgsp --version` prints it: the
/// release and the commit ("unknown" when not set).
pub fn build_version() -> String {
    format!(
        "{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        BUILD_COMMIT.get().map_or("unknown", String::as_str)
    )
}

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Behind a lock so that a role built on the node (the hub) can add its
    /// own collector after the node has started.
    registry: std::sync::Mutex<Registry>,
    calls: Family<CallLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    bytes: Family<BytesLabels, Counter>,
    links: Family<LinkLabels, Gauge>,
    link_calls: Family<LinkLabels, Counter>,
    records_signed: Family<SignedLabels, Counter>,
    cache_age: Gauge<f64, AtomicU64>,
    cache_revision: Gauge,
    certificate_expiry: Gauge,
}

impl Metrics {
    /// Every metric of the node, registered under the `lgsp` prefix, at zero.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("lgsp");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Exchanges handled, by side, service, consumer agency and gRPC status",
            calls.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        registry.register(
            "call_duration_seconds",
            "Time to handle an exchange",
            latency.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "exchange_bytes",
            "Bytes of requests (in) and responses (out)",
            bytes.clone(),
        );
        let links = Family::<LinkLabels, Gauge>::default();
        registry.register(
            "node_links_open",
            "Node links other agencies' nodes hold open to this node, by consumer agency",
            links.clone(),
        );
        let link_calls = Family::<LinkLabels, Counter>::default();
        registry.register(
            "link_calls",
            "Calls received on node links, by consumer agency (the rest of lgsp_calls_total came as ordinary gRPC calls)",
            link_calls.clone(),
        );
        let records_signed = Family::<SignedLabels, Counter>::default();
        registry.register(
            "obo_records_signed",
            "On-behalf-of records this node signed for calls to other instances, by signature: batched (one over a batch of records) or alone",
            records_signed.clone(),
        );
        let cache_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "catalog_cache_age_seconds",
            "Seconds since the catalog cache was last confirmed current by the registry (0 while live)",
            cache_age.clone(),
        );
        let cache_revision = Gauge::default();
        registry.register(
            "catalog_revision",
            "Catalog revision of the node's cache",
            cache_revision.clone(),
        );
        registry.register(
            "build",
            "The lgsp build this node runs: its version and the commit it was built from",
            Info::new(vec![
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                (
                    "commit".to_owned(),
                    BUILD_COMMIT
                        .get()
                        .cloned()
                        .unwrap_or_else(|| "unknown".to_owned()),
                ),
            ]),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the node's own certificate expires, Unix seconds (renew it before: docs/operations.md)",
            certificate_expiry.clone(),
        );
        Arc::new(Self {
            registry: std::sync::Mutex::new(registry),
            calls,
            latency,
            bytes,
            links,
            link_calls,
            records_signed,
            cache_age,
            cache_revision,
            certificate_expiry,
        })
    }

    /// Records when the node's certificate expires (`not_after`, Unix seconds).
    pub fn set_certificate_expiry(&self, not_after_unix: i64) {
        self.certificate_expiry.set(not_after_unix);
    }

    /// Counts one exchange on `side` (`provider` or `consumer`): a call of
    /// `service` by agency `consumer` ending with `code`, its latency, and
    /// the bytes received and sent.
    #[allow(clippy::too_many_arguments)] // the dimensions of one exchange
    pub fn observe(
        &self,
        side: &'static str,
        service: &str,
        consumer: &str,
        code: tonic::Code,
        latency: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                side,
                service: service.to_owned(),
                consumer: consumer.to_owned(),
                code: crate::refusal::code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                side,
                service: service.to_owned(),
            })
            .observe(latency.as_secs_f64());
        for (direction, n) in [("in", bytes_in), ("out", bytes_out)] {
            self.bytes
                .get_or_create(&BytesLabels { side, direction })
                .inc_by(n);
        }
    }

    /// The series of a link `consumer`'s node opened to this node: the
    /// open-links gauge (already counting this one; decrement it when the
    /// link ends) and the counter of calls received on links. Looked up
    /// once per link, not per call.
    pub fn link_opened(&self, consumer: &str) -> (Gauge, Counter) {
        let labels = LinkLabels {
            consumer: consumer.to_owned(),
        };
        let open = self.links.get_or_create_owned(&labels);
        open.inc();
        (open, self.link_calls.get_or_create_owned(&labels))
    }

    /// Counts a record of on whose behalf this node signed, batched or
    /// alone.
    pub fn record_signed(&self, batched: bool) {
        let signature = if batched { "batched" } else { "alone" };
        self.records_signed
            .get_or_create(&SignedLabels { signature })
            .inc();
    }

    /// Adds `collector`, rendered (under the `lgsp` prefix) on every later
    /// scrape: how the hub adds its links' health to its node's metrics.
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .register_collector(collector);
    }

    /// The text exposition, with the cache gauges read now.
    pub fn render(&self, cache: &CatalogCache) -> String {
        self.cache_age
            .set(cache.age().map_or(f64::INFINITY, |d| d.as_secs_f64()));
        self.cache_revision.set(cache.revision() as i64);
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    cache: Arc<CatalogCache>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let (metrics, cache) = (metrics.clone(), cache.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let response =
                        if req.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(metrics.render(&cache))))
                        } else {
                            hyper::Response::builder().status(404).body(Full::new(
                                Bytes::from_static(b"lgsp serves /metrics here\n"),
                            ))
                        };
                    async move { response }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

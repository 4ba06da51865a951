//! `node.toml`: the settings of an agency node. Paths in it are relative to
//! the file's own directory.

use lgsp_certs::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why `node.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: the process may retry after a fix of
    /// the system (permissions, a missing mount).
    #[error("cannot read {}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// Why the operating system refused it.
        #[source]
        source: std::io::Error,
    },
    /// The file says something wrong: every problem found, for the person
    /// who wrote it. A process exits with the usage code on it.
    #[error("{}: {problems}", path.display())]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// Every problem found, joined with `; `.
        problems: String,
    },
}

/// Where a listener binds and what other agencies use to reach it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Bind address of the province-facing mTLS listener.
    pub listen: SocketAddr,
    /// host:port other agencies' nodes connect to, published in this node's
    /// catalog record; defaults to `listen`. When `listen` has port 0 the
    /// bound address is published instead.
    #[serde(default)]
    pub advertise: String,
}

/// The consumer side's listener: where the agency's own applications call
/// other agencies' services through this node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Bind address of the listener for the agency's own applications
    /// (plain HTTP/2 unless `tls` is set: keep it on localhost or an
    /// internal network).
    pub listen: SocketAddr,
    /// Mutual TLS for the applications: `cert` and `key` are what the
    /// listener presents (the node's own will do), `ca` the agency's local
    /// CA, which must have issued every application's certificate.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Connections the applications may have open at once; more are closed
    /// on accept (and at most a quarter of the node's open-file limit).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a new connection may wait before its first bytes.
    #[serde(default = "default_preface_timeout")]
    pub preface_timeout_s: u64,
    /// Seconds a connection may carry nothing either way before it is
    /// closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// Sign the on-behalf-of records of concurrent calls to other instances
    /// in batches (one ECDSA signature over a Merkle tree of them) when they
    /// come a thousand a second or more. Unset (the default): for a service
    /// whose every hop says it verifies batches (the province's hub in its
    /// node record, the peer's hub and the service's node in the import),
    /// since a hub or provider older than batch verification refuses such a
    /// record as forged. `true`: always; `false`: never.
    #[serde(default)]
    pub batch_obo_signatures: Option<bool>,
}

impl ConsumerConfig {
    /// The consumer listener at `listen`, plain HTTP/2, with the default
    /// bounds on connections.
    pub fn plain(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            max_connections: default_max_connections(),
            preface_timeout_s: default_preface_timeout(),
            idle_timeout_s: default_idle_timeout(),
            batch_obo_signatures: None,
        }
    }
}

fn default_max_connections() -> usize {
    4096
}

fn default_preface_timeout() -> u64 {
    10
}

fn default_idle_timeout() -> u64 {
    300
}

/// A service this node serves, as published in the catalog.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "ServiceEntry")]
pub struct ServiceConfig {
    /// The service name: the id is `<agency>/<name>`.
    pub name: String,
    /// What the service returns, for other agencies reading the catalog.
    pub description: String,
    /// What answers the service's calls.
    pub backend: Backend,
}

/// What answers a service's calls on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A dataset the node holds, imported with `lgsp dataset import`.
    Dataset,
    /// An HTTP/JSON system of the agency.
    Http {
        /// URL template; `{op}` is replaced by the operation.
        url: String,
        /// How the call's payload is sent to the system.
        method: HttpMethod,
        /// How long a call may take.
        timeout: Duration,
    },
    /// A gRPC system of the agency serving `lgsp.v1.DataExchange` itself.
    Grpc {
        /// `http://host:port` of the agency's system.
        url: String,
        /// How long a call may take.
        timeout: Duration,
    },
}

/// The methods an HTTP backend is called with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMethod {
    /// Parameters in the query string, no body.
    Get,
    /// The payload as the JSON body.
    Post,
}

impl HttpMethod {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }
}

/// A `[[services]]` table as written in `node.toml`; checked into a
/// [`ServiceConfig`] as it is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    name: String,
    /// `dataset`, `http` or `grpc`.
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// How long a backend call may take unless `timeout_ms` says otherwise.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

impl TryFrom<ServiceEntry> for ServiceConfig {
    type Error = String;

    fn try_from(entry: ServiceEntry) -> Result<Self, String> {
        let name = entry.name;
        let timeout = entry
            .timeout_ms
            .map_or(DEFAULT_BACKEND_TIMEOUT, Duration::from_millis);
        let backend = match entry.kind.as_str() {
            "dataset" => Backend::Dataset,
            "http" => {
                if !(entry.url.starts_with("http://") || entry.url.starts_with("https://")) {
                    return Err(format!(
                        "service {name:?}: an http service needs url = \"http://...\""
                    ));
                }
                let method = match entry.method.as_deref() {
                    None | Some("POST") => HttpMethod::Post,
                    Some("GET") => HttpMethod::Get,
                    Some(_) => return Err(format!("service {name:?}: method must be GET or POST")),
                };
                Backend::Http {
                    url: entry.url,
                    method,
                    timeout,
                }
            }
            "grpc" => {
                if !entry.url.starts_with("http://") {
                    return Err(format!(
                        "service {name:?}: a grpc service needs url = \"http://host:port\" (the agency's system, serving lgsp.v1.DataExchange)"
                    ));
                }
                Backend::Grpc {
                    url: entry.url,
                    timeout,
                }
            }
            other => {
                return Err(format!(
                    "service {name:?}: kind {other:?} is not dataset, http or grpc"
                ));
            }
        };
        Ok(ServiceConfig {
            name,
            description: entry.description,
            backend,
        })
    }
}

/// Limits applied per consumer agency.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Calls one consumer agency may have in flight at once.
    pub max_concurrent_per_consumer: usize,
    /// Calls per second one consumer agency may make (token bucket).
    pub rate_per_consumer: u32,
    /// Largest request or response message, bytes.
    pub max_message_bytes: usize,
    /// The longest a query stream relayed by this node (a consumer node's,
    /// a hub's, either way) may last, seconds, when its caller set no
    /// shorter deadline: then it ends with DEADLINE_EXCEEDED and frees its
    /// slot. At least 1, at most 86400.
    pub max_query_stream_s: u64,
    /// A relayed query stream on which no page moves (none arrives from
    /// upstream, or the reader takes none) for this long, seconds, ends
    /// with DEADLINE_EXCEEDED and frees its slot. At least 1, at most 3600.
    pub query_page_idle_s: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_per_consumer: 256,
            rate_per_consumer: 20_000,
            max_message_bytes: 4 << 20,
            max_query_stream_s: 600,
            query_page_idle_s: 60,
        }
    }
}

impl LimitsConfig {
    /// The bounds of every query stream this node relays.
    pub fn relay(&self) -> crate::relay::RelayLimits {
        crate::relay::RelayLimits {
            max_duration: std::time::Duration::from_secs(self.max_query_stream_s),
            page_idle: std::time::Duration::from_secs(self.query_page_idle_s),
        }
    }
}

/// The sharing log's anchoring (`[audit]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often, in seconds, the node publishes its sharing log's newest seal
    /// to the registry (and once more when it stops), so that a log cut at its
    /// end fails `lgsp audit verify --anchor`. At least 1, at most 3600.
    pub anchor_interval_s: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            anchor_interval_s: 60,
        }
    }
}

/// The whole node configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The agency's QCVN 102 code.
    pub agency: String,
    /// This node's name (the certificate's SPIFFE name).
    pub name: String,
    /// Where the node keeps its copy of the catalog, its datasets and its
    /// sharing log.
    pub data_dir: PathBuf,
    /// Registry client addresses (host:port); at least one.
    pub registry: Vec<String>,
    /// The node's certificate (issued for `agency` and `name`, role node),
    /// key and the provincial CA, used on the provider side, to the registry
    /// and to sign the sharing log.
    pub tls: TlsFiles,
    /// The provider side's listener, for other agencies' nodes.
    pub provider: ProviderConfig,
    /// The consumer side's listener, for the agency's own applications.
    pub consumer: ConsumerConfig,
    /// Prometheus metrics listener (plain HTTP), e.g. 127.0.0.1:9301.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Limits per consumer agency on the provider side; defaults apply when
    /// the table is absent.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How the sharing log is anchored in the registry; defaults apply when
    /// the table is absent.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The services this node serves for its agency.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// For a hub (`lgsp hub start`): its own listeners beyond the node's.
    #[serde(default)]
    pub hub: HubConfig,
}

/// The `[hub]` table: what only a hub reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Where outside REST systems and X-Road security servers call
    /// province services (HTTP/JSON over mTLS), e.g. 0.0.0.0:7443; none
    /// by default. `lgsp hub start --rest-listen` overrides it.
    pub rest_listen: Option<SocketAddr>,
}

impl NodeConfig {
    /// Reads `path`, resolving relative paths against its directory, and
    /// reports every problem at once: [`ConfigError::Read`] when the file
    /// cannot be read, [`ConfigError::Invalid`] for anything wrong in it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses `text` as the contents of the file at `path` (against whose
    /// directory relative paths resolve) and checks it, reporting every
    /// problem at once as [`ConfigError::Invalid`].
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |problems: String| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut config.data_dir);
        abs(&mut config.tls.cert);
        abs(&mut config.tls.key);
        abs(&mut config.tls.ca);
        if let Some(t) = config.consumer.tls.as_mut() {
            abs(&mut t.cert);
            abs(&mut t.key);
            abs(&mut t.ca);
        }
        if config.provider.advertise.is_empty() {
            config.provider.advertise = config.provider.listen.to_string();
        }
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(e) = lgsp_certs::AgencyCode::new(&self.agency) {
            problems.push(format!("agency: {e}"));
        }
        if let Err(e) = lgsp_certs::identity::validate_name(&self.name) {
            problems.push(format!("name: {e}"));
        }
        if self.registry.is_empty() {
            problems.push("registry: at least one registry address is needed".to_owned());
        }
        if let Err(why) = check_advertise(&self.provider.advertise) {
            problems.push(format!("provider.advertise: {why}"));
        }
        if !(1..=86_400).contains(&self.limits.max_query_stream_s) {
            problems.push(format!(
                "limits.max_query_stream_s: {} is not between 1 and 86400 seconds (default 600)",
                self.limits.max_query_stream_s
            ));
        }
        if !(1..=3600).contains(&self.limits.query_page_idle_s) {
            problems.push(format!(
                "limits.query_page_idle_s: {} is not between 1 and 3600 seconds (default 60)",
                self.limits.query_page_idle_s
            ));
        }
        if !(1..=3600).contains(&self.audit.anchor_interval_s) {
            problems.push(format!(
                "audit.anchor_interval_s: {} is not between 1 and 3600 seconds (default 60)",
                self.audit.anchor_interval_s
            ));
        }
        for s in &self.services {
            if let Err(e) = lgsp_certs::identity::validate_name(&s.name) {
                problems.push(format!("service {:?}: {e}", s.name));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The configured service named `name` (without the agency), if this
    /// node serves it.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Checks that `advertise` (host:port) is an address other nodes can dial:
/// not a wildcard such as 0.0.0.0, which a node binds to but nobody reaches.
pub fn check_advertise(advertise: &str) -> Result<(), String> {
    let host = match advertise.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => return Err(format!("{advertise:?} is not host:port")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(format!(
            "{advertise} names no address other nodes can reach; set advertise = \"<this server's DNS name or IP>:<port>\" (what other agencies' nodes connect to)"
        )),
        _ if host.is_empty() => Err(format!("{advertise:?} has no host")),
        _ => Ok(()),
    }
}

/// What `lgsp node init` writes as `advertise` for a provider listener at
/// `listen`: when it binds a wildcard address, the first name or address
/// the certificate asks for that is not local (`localhost`, loopback),
/// with the listener's port; `None` leaves `advertise` to default to
/// `listen`.
pub fn derive_advertise(listen: &str, dns: &[String], ips: &[std::net::IpAddr]) -> Option<String> {
    let addr: SocketAddr = listen.parse().ok()?;
    if !addr.ip().is_unspecified() {
        return None;
    }
    let host = dns
        .iter()
        .find(|d| d.as_str() != "localhost")
        .cloned()
        .or_else(|| {
            ips.iter().find(|ip| !ip.is_loopback()).map(|ip| match ip {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                std::net::IpAddr::V4(v4) => v4.to_string(),
            })
        })?;
    Some(format!("{host}:{}", addr.port()))
}

/// The commented `node.toml` that `lgsp node init` writes.
pub fn template(
    agency: &str,
    name: &str,
    registry: &str,
    provider: &str,
    advertise: Option<&str>,
    consumer: &str,
) -> String {
    let advertise = match advertise {
        Some(address) => format!("advertise = \"{address}\"  # what other nodes connect to"),
        None => "# advertise = \"node.example.gov.vn:7301\"  # what other nodes connect to (default: listen)".to_owned(),
    };
    format!(
        r#"# lgsp agency node (nút của cơ quan). Paths are relative to this file.
# Start it with: lgsp node start --config node.toml

# The agency's QCVN 102 code and this node's name: they must match the
# certificate (tls/cert.pem), whose SPIFFE ID is
# spiffe://<trust-domain>/agency/{agency}/node/{name}
agency = "{agency}"
name = "{name}"

# Sharing log, datasets and the local copy of the catalog.
data_dir = "data"

# The provincial registry's client addresses (any one will do).
registry = [{registry}]

# Prometheus metrics (plain HTTP).
# metrics_listen = "127.0.0.1:9301"

# tls/key.pem was made here by `lgsp node init`. Send tls/csr.pem to the
# provincial IT department (Sở KH&CN); put the signed certificate in
# tls/cert.pem and the provincial CA certificate in tls/ca.pem.
[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
ca = "tls/ca.pem"

# Province-facing listener: mutual TLS, other agencies' nodes call it.
[provider]
listen = "{provider}"
{advertise}

# Listener for this agency's own applications (plain gRPC): keep it local.
[consumer]
listen = "{consumer}"
# Bounds on the applications' connections (the defaults):
# max_connections = 4096
# preface_timeout_s = 10
# idle_timeout_s = 300
# Sign the records of calls to other instances in batches under load. Unset:
# only for services whose every hop says it verifies batches; true: always;
# false: never.
# batch_obo_signatures = true
# Require certificates from the agency's own CA of its applications:
# [consumer.tls]
# cert = "tls/cert.pem"
# key = "tls/key.pem"
# ca = "tls/agency-apps-ca.pem"

# [limits]
# max_concurrent_per_consumer = 256
# rate_per_consumer = 20000        # calls per second per consumer agency
# max_message_bytes = 4194304
# max_query_stream_s = 600        # longest a relayed query stream lasts
# query_page_idle_s = 60          # a relayed query stream with no page for this long ends

# The sharing log's newest seal goes to the registry this often (seconds), and
# when the node stops: `lgsp audit verify --anchor` then finds a log cut at its end.
# [audit]
# anchor_interval_s = 60

# Services this node serves. Publish each in the catalog too:
#   lgsp service publish --id {agency}/<name> --kind dataset --node {name}
#
# A dataset held by the node, loaded with
#   lgsp dataset import --data-dir data --service <name> --file rows.csv --key <field>
# [[services]]
# name = "ho-tich"
# kind = "dataset"
#
# A gRPC system of the agency that serves lgsp.v1.DataExchange itself:
# [[services]]
# name = "thue"
# kind = "grpc"
# url = "http://127.0.0.1:9090"
# timeout_ms = 5000
#
# An HTTP/JSON system of the agency that the node fronts; {{op}} is the operation.
# [[services]]
# name = "dang-ky-kinh-doanh"
# kind = "http"
# url = "http://127.0.0.1:8080/api/{{op}}"
# method = "POST"
# timeout_ms = 5000
"#
    )
}

#[cfg(test)]
mod audit_tests {
    use super::*;

    const MINIMAL: &str = r#"
agency = "000.00.12.H62"
name = "node-1"
data_dir = "data"
registry = ["127.0.0.1:7101"]
[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
ca = "tls/ca.pem"
[provider]
listen = "127.0.0.1:7301"
[consumer]
listen = "127.0.0.1:7302"
"#;

    #[test]
    fn the_anchor_interval_defaults_to_a_minute_and_is_bounded() {
        let path = Path::new("/etc/lgsp/node.toml");
        let config = NodeConfig::from_toml(MINIMAL, path).unwrap();
        assert_eq!(config.audit.anchor_interval_s, 60);
        let config =
            NodeConfig::from_toml(&format!("{MINIMAL}[audit]\nanchor_interval_s = 5\n"), path)
                .unwrap();
        assert_eq!(config.audit.anchor_interval_s, 5);
        for bad in [0, 3601] {
            let err = NodeConfig::from_toml(
                &format!("{MINIMAL}[audit]\nanchor_interval_s = {bad}\n"),
                path,
            )
            .unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "audit.anchor_interval_s: {bad} is not between 1 and 3600 seconds"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn relayed_query_streams_last_ten_minutes_at_most_and_a_minute_without_a_page() {
        let path = Path::new("/etc/lgsp/node.toml");
        let config = NodeConfig::from_toml(MINIMAL, path).unwrap();
        assert_eq!(
            config.limits.relay(),
            crate::relay::RelayLimits {
                max_duration: std::time::Duration::from_secs(600),
                page_idle: std::time::Duration::from_secs(60),
            }
        );
        let err = NodeConfig::from_toml(
            &format!("{MINIMAL}[limits]\nmax_query_stream_s = 0\nquery_page_idle_s = 0\n"),
            path,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("limits.max_query_stream_s: 0"), "{err}");
        assert!(err.contains("limits.query_page_idle_s: 0"), "{err}");
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_advertises_the_first_name_others_can_reach() {
        let dns = vec![
            "localhost".to_owned(),
            "node.stp.vinhphuc.gov.vn".to_owned(),
        ];
        let ips = vec!["127.0.0.1".parse().unwrap()];
        assert_eq!(
            derive_advertise("0.0.0.0:7301", &dns, &ips).as_deref(),
            Some("node.stp.vinhphuc.gov.vn:7301")
        );
        let ips = vec!["127.0.0.1".parse().unwrap(), "10.0.0.21".parse().unwrap()];
        assert_eq!(
            derive_advertise("0.0.0.0:7301", &["localhost".into()], &ips).as_deref(),
            Some("10.0.0.21:7301")
        );
        // A specific address is what others dial already; only local names: nothing to say.
        assert_eq!(derive_advertise("10.0.0.21:7301", &dns, &ips), None);
        assert_eq!(
            derive_advertise("0.0.0.0:7301", &["localhost".into()], &[]),
            None
        );
    }

    #[test]
    fn a_wildcard_or_malformed_advertise_is_refused() {
        assert!(check_advertise("node.stp.vinhphuc.gov.vn:7301").is_ok());
        assert!(check_advertise("10.0.0.21:7301").is_ok());
        assert!(check_advertise("[fd00::1]:7301").is_ok());
        for bad in ["0.0.0.0:7301", "[::]:7301", "node.example", ":7301"] {
            assert!(check_advertise(bad).is_err(), "{bad}");
        }
    }
}

//! Helpers for lgsp's system tests: a throw-away PKI, servers on
//! 127.0.0.1:0 behind real mTLS, and the `lgsp` binary as a real process.

pub mod cluster;
pub mod https_server;
pub mod linearizability;
pub mod metrics;
pub mod power_cut;
pub mod process;
pub mod province;
pub mod python;

use lgsp_certs::ca::{CertificateAuthority, LeafSpec};
use lgsp_certs::{AgencyCode, Authenticator, Credentials, Role, ServerTls, SpiffeId, WhoAmI};
use lgsp_proto::identity_service_client::IdentityServiceClient;
use lgsp_proto::identity_service_server::IdentityServiceServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

/// The SPIFFE trust domain of the test province's CA: every certificate
/// the tests issue names it.
pub const TRUST_DOMAIN: &str = "vinhphuc.gov.vn";

/// A CA in a temporary directory, minting credentials for tests.
#[derive(Debug)]
pub struct Pki {
    /// The temporary directory, removed when the `Pki` drops; the CA lives
    /// in its `ca` subdirectory and tests put their servers' and nodes'
    /// files next to it.
    pub dir: tempfile::TempDir,
    /// The province's CA, issuing and revoking the tests' certificates.
    pub ca: CertificateAuthority,
}

impl Pki {
    /// A new CA for `trust_domain`, valid for 30 days, in a fresh temporary
    /// directory, vouching for `localhost` and `127.0.0.1` for every agency
    /// (every test server runs on this host). Panics when the directory or
    /// the CA cannot be made.
    pub fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca =
            CertificateAuthority::init(&dir.path().join("ca"), trust_domain, "CA tỉnh thử", 30)
                .expect("ca init");
        ca.allow_names(
            lgsp_certs::name_policy::EVERY_AGENCY,
            &["localhost".into()],
            &[std::net::IpAddr::from([127, 0, 0, 1])],
        )
        .expect("name policy");
        Self { dir, ca }
    }

    /// The directory holding the CA's certificate, key and state, as
    /// `lgsp ca` commands take it.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// A spec for `agency`'s `role` named `name`, valid for a day, for
    /// `localhost` and `127.0.0.1` (where the tests' servers listen).
    pub fn spec(&self, agency: &str, role: Role, name: &str) -> LeafSpec {
        let id = SpiffeId::new(
            self.ca.trust_domain(),
            AgencyCode::new(agency).expect("agency code"),
            role,
            name,
        )
        .expect("spiffe id");
        let mut spec = LeafSpec::for_days(id, 1).expect("spec");
        spec.dns = vec!["localhost".into()];
        spec.ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
        spec
    }

    /// Issues credentials for `spec`; returns them and the serial.
    pub fn issue_spec(&mut self, spec: &LeafSpec) -> (Credentials, String) {
        let issued = lgsp_province::pki::issue_spec(&mut self.ca, spec).expect("issue");
        (issued.creds, issued.serial)
    }

    /// Issues credentials for `agency`'s `role` named `name`, valid for a
    /// day; returns them and the certificate's serial. Panics on an invalid
    /// agency code or name.
    pub fn issue(&mut self, agency: &str, role: Role, name: &str) -> (Credentials, String) {
        let spec = self.spec(agency, role, name);
        self.issue_spec(&spec)
    }
}

/// A running gRPC server answering `WhoAmI` behind mTLS and [`Authenticator`].
#[derive(Debug)]
pub struct WhoAmIServer {
    /// Where it listens: 127.0.0.1 on a port the system chose.
    pub addr: SocketAddr,
    /// Its mTLS configuration, which a test may change while it runs (a new
    /// CRL, new credentials).
    pub tls: Arc<ServerTls>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl WhoAmIServer {
    /// Starts serving with `creds`, accepting clients whose certificate is in
    /// `trust_domain`. Panics when the credentials are refused or no port can
    /// be bound.
    pub async fn start(creds: Credentials, trust_domain: &str) -> Self {
        let tls = ServerTls::new(creds).expect("server tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let auth = Authenticator::new(tls.clone(), trust_domain);
        let incoming = tls.clone().incoming(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(IdentityServiceServer::with_interceptor(WhoAmI, auth))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await
                .expect("server");
        });
        Self {
            addr,
            tls,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Asks the server to shut down and waits up to 5 s for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Connects with `endpoint` and asks who we are. The error, if any, is the
/// explained message a user would see.
pub async fn who_am_i(
    endpoint: tonic::transport::Endpoint,
) -> Result<lgsp_proto::Identity, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| explain_transport(&e))?;
    call_who_am_i(&mut IdentityServiceClient::new(channel)).await
}

/// One `WhoAmI` call on an existing connection.
pub async fn call_who_am_i(
    client: &mut IdentityServiceClient<tonic::transport::Channel>,
) -> Result<lgsp_proto::Identity, String> {
    client
        .who_am_i(lgsp_proto::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().identity.expect("identity"))
        .map_err(|s| format!("{:?}: {}", s.code(), lgsp_certs::tls::explain_status(&s)))
}

fn explain_transport(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `lgsp` binary next to the test executable (built by the README's test
/// command before the tests run).
pub fn lgsp_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = profile_dir.join("lgsp");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin lgsp` before the tests (the README's test command does)",
        bin.display()
    );
    bin
}

/// Runs `lgsp` with `args` and returns what it did.
pub fn lgsp(args: &[&str]) -> Output {
    std::process::Command::new(lgsp_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run lgsp")
}

/// The lines of `output`'s standard error.
pub fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

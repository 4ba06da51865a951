//! A small province as real processes: a registry, agency nodes started
//! with `lgsp node start`, and a plain HTTP backend, all on 127.0.0.1.

use crate::cluster::{PROVINCE, free_addr, write_creds};
use crate::process::ProcessCluster;
use crate::{TRUST_DOMAIN, lgsp, lgsp_bin};
use bytes::Bytes;
use lgsp_certs::{AgencyCode, Credentials, Role, SpiffeId};
use lgsp_proto::Envelope;
use lgsp_proto::{GrantStatus, ServiceKind, SuspensionKind, TerminationKind};
use lgsp_province::backend::{self, HttpCall};
use lgsp_province::wait;
use lgsp_registry::{Catalog, GrantKey, Publication, RegistryClient, Validity};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One agency node process.
#[derive(Debug)]
pub struct NodeProcess {
    /// The agency's code.
    pub agency: String,
    /// The node's name within its agency, as in its certificate.
    pub name: String,
    /// Its directory: `node.toml`, `node.log`, `tls` and `data`.
    pub dir: PathBuf,
    /// host:port of the mTLS listener other agencies' nodes call.
    pub provider: String,
    /// host:port of the plain listener for the agency's own applications.
    pub consumer: String,
    /// host:port of the Prometheus `/metrics` endpoint.
    pub metrics: String,
    /// The node's certificate and key, signed by the province's CA.
    pub creds: Credentials,
    child: Option<Child>,
}

impl NodeProcess {
    /// The node's `node.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    /// Where the node keeps its copy of the catalog, its datasets and its
    /// sharing log.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The node's sharing log file, one JSON record per line.
    pub fn sharing_log(&self) -> PathBuf {
        self.data_dir()
            .join("sharing-log")
            .join("sharing-log.jsonl")
    }

    /// What the node has written to `node.log` so far; empty when there is
    /// no log yet.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// Starts `lgsp node start` with the node's `node.toml`, logging to
    /// `node.log`, without waiting for it to listen (see
    /// [`Self::app_channel`], [`Province::wait_for_node`]). Panics when the
    /// process cannot be started.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .expect("log");
        let child = Command::new(lgsp_bin())
            .args(["node", "start", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node");
        self.child = Some(child);
    }

    /// Starts `lgsp hub start` with the node's `node.toml` and `outward` as
    /// the listener for peers' hubs, logging to `node.log`.
    pub fn start_hub(&mut self, outward: &str) {
        self.start_hub_with(outward, &[]);
    }

    /// [`Self::start_hub`] with `extra` arguments to `lgsp hub start`.
    pub fn start_hub_with(&mut self, outward: &str, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .expect("log");
        let child = Command::new(lgsp_bin())
            .args(["hub", "start", "--outward-listen", outward])
            .args(extra)
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start hub");
        self.child = Some(child);
    }

    /// Another process of this node, as copying its files to a second
    /// server makes it: the same certificate, key and `node.toml`, in
    /// `dir_name` beside this one, with its own (empty) data directory and
    /// its own ports. Not started.
    pub fn copy_as(&self, dir_name: &str) -> NodeProcess {
        let dir = self.dir.with_file_name(dir_name);
        std::fs::create_dir_all(dir.join("tls")).expect("copy dir");
        for file in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::copy(self.dir.join("tls").join(file), dir.join("tls").join(file))
                .expect("copy tls");
        }
        let (provider, consumer, metrics) = (
            free_addr().to_string(),
            free_addr().to_string(),
            free_addr().to_string(),
        );
        let toml = std::fs::read_to_string(self.config_path())
            .expect("node.toml")
            .replace(&self.provider, &provider)
            .replace(&self.consumer, &consumer)
            .replace(&self.metrics, &metrics);
        std::fs::write(dir.join("node.toml"), toml).expect("write node.toml");
        NodeProcess {
            agency: self.agency.clone(),
            name: self.name.clone(),
            dir,
            provider,
            consumer,
            metrics,
            creds: self.creds.clone(),
            child: None,
        }
    }

    /// Waits up to `within` for the node's process to exit; its status, or
    /// `None` when it is still running (or was never started).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the node's process is still alive (it was started and has
    /// not exited, crashed or been stopped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM (what `systemctl stop` sends) without waiting for the
    /// node to exit; [`Self::stop`] then waits.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
    }

    /// Sends SIGTERM and waits up to 10 s for the node to exit, then kills it
    /// with SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A plain gRPC channel to this node's consumer listener (what an
    /// application of the agency uses), retrying for up to 15 s. Panics with
    /// the node's log when it never accepts the connection.
    pub async fn app_channel(&self) -> tonic::transport::Channel {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match tonic::transport::Endpoint::from_shared(format!("http://{}", self.consumer))
                .expect("uri")
                .connect()
                .await
            {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "node {} not up: {e}\n{}",
                        self.name,
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A registry plus agency nodes.
#[derive(Debug)]
pub struct Province {
    /// The registry's server processes and the province's CA.
    pub registry: ProcessCluster,
    /// A registry client presenting the provincial admin's certificate.
    pub admin: RegistryClient,
    /// The instance's trust domain.
    pub trust_domain: String,
}

impl Province {
    /// A province whose registry is a single server, once it has a leader
    /// (waiting up to 15 s, panicking otherwise).
    pub async fn start() -> Self {
        Self::start_with_servers(1).await
    }

    /// A province whose registry has `servers` servers, once they agree on a
    /// leader (waiting up to 15 s, panicking otherwise).
    pub async fn start_with_servers(servers: u64) -> Self {
        Self::start_instance(servers, TRUST_DOMAIN, PROVINCE).await
    }

    /// Another lgsp instance (the national platform, another province):
    /// its own CA for `trust_domain`, a registry of `servers` servers run by
    /// agency `province`.
    pub async fn start_instance(servers: u64, trust_domain: &str, province: &str) -> Self {
        let registry = ProcessCluster::start_in(servers, trust_domain, province);
        registry.leader().await;
        let admin = registry.client();
        Self {
            registry,
            admin,
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// Prepares the instance's hub: a node of agency `agency` named `name`
    /// with a hub certificate, and a free outward port (see
    /// [`NodeProcess::start_hub`]).
    pub fn prepare_hub(&mut self, agency: &str, name: &str) -> (NodeProcess, String) {
        let mut hub = self.prepare_node(agency, name, "");
        let (creds, _) = self.issue(agency, Role::Hub, name);
        write_creds(&hub.dir.join("tls"), &creds);
        hub.creds = creds;
        (hub, free_addr().to_string())
    }

    /// The registry servers' client addresses, as a node's `registry`
    /// setting lists them.
    pub fn registry_addrs(&self) -> Vec<String> {
        self.registry
            .servers
            .iter()
            .map(|s| s.client.clone())
            .collect()
    }

    /// Registers agency `code` named `name` in the catalog as the provincial
    /// admin. Panics when the registry refuses it.
    pub async fn register_agency(&self, code: &str, name: &str) {
        self.catalog()
            .register_agency(&AgencyCode::new(code).expect("agency code"), name, None)
            .await
            .expect("register agency");
    }

    /// The catalog, changed as the provincial admin.
    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.admin.clone())
    }

    /// Prepares a node with `lgsp node init`, signs its CSR with the
    /// province's CA and writes its node.toml with free ports and
    /// `services` (TOML `[[services]]` tables).
    pub fn prepare_node(&mut self, agency: &str, name: &str, services: &str) -> NodeProcess {
        let dir = self
            .registry
            .pki
            .dir
            .path()
            .join(format!("node-{agency}-{name}"));
        let out = lgsp(&[
            "node",
            "init",
            "--agency",
            agency,
            "--name",
            name,
            "--dir",
            dir.to_str().unwrap(),
            "--trust-domain",
            &self.trust_domain.clone(),
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ]);
        assert!(
            out.status.success(),
            "node init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let csr = std::fs::read_to_string(dir.join("tls/csr.pem")).expect("csr");
        let ca = &mut self.registry.pki.ca;
        let request = ca
            .check_csr(&csr, &dir.join("tls/csr.pem"), 30)
            .expect("check csr");
        let (cert, _) = ca.sign(request).expect("sign");
        std::fs::write(dir.join("tls/cert.pem"), &cert).expect("cert");
        std::fs::write(dir.join("tls/ca.pem"), ca.cert_pem()).expect("ca");
        let key = std::fs::read_to_string(dir.join("tls/key.pem")).expect("key");
        let creds = Credentials::from_pem(&cert, &key, ca.cert_pem()).expect("creds");
        let (provider, consumer, metrics) = (
            free_addr().to_string(),
            free_addr().to_string(),
            free_addr().to_string(),
        );
        let registry = self
            .registry_addrs()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // The generated file must load as written; then the test's ports replace the defaults.
        let generated = std::fs::read_to_string(dir.join("node.toml")).expect("node.toml");
        let toml = generated
            .replace(
                "registry = [\"127.0.0.1:7101\"]",
                &format!("registry = [{registry}]"),
            )
            .replace(
                "listen = \"0.0.0.0:7301\"",
                &format!("listen = \"{provider}\""),
            )
            .replace(
                "listen = \"127.0.0.1:7401\"",
                &format!("listen = \"{consumer}\""),
            )
            .replace(
                "# metrics_listen = \"127.0.0.1:9301\"",
                &format!("metrics_listen = \"{metrics}\""),
            );
        std::fs::write(dir.join("node.toml"), format!("{toml}\n{services}\n"))
            .expect("write node.toml");
        NodeProcess {
            agency: agency.into(),
            name: name.into(),
            dir,
            provider,
            consumer,
            metrics,
            creds,
            child: None,
        }
    }

    /// Waits until `agency`'s node `name` has registered itself.
    pub async fn wait_for_node(&self, agency: &str, name: &str, node: &NodeProcess) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self
                .admin
                .get(
                    lgsp_proto::RecordKind::Node,
                    &format!("{agency}/{name}"),
                    false,
                )
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {name} never registered:\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes service `id` (`<agency>/<name>`) of `kind`, served by the
    /// agency's node `node`, with `description`. Panics when the registry
    /// refuses it.
    pub async fn publish(&self, id: &str, kind: ServiceKind, node: &str, description: &str) {
        let id = id.parse().expect("service id");
        self.catalog()
            .publish(Publication::new(id, kind, node, description))
            .await
            .expect("publish");
    }

    /// Sets the grant of `service` to `consumer`: active, suspended or
    /// terminated. Panics when the registry refuses it.
    pub async fn grant(&self, service: &str, consumer: &str, status: GrantStatus) {
        let key = GrantKey {
            service: service.parse().expect("service id"),
            consumer: AgencyCode::new(consumer).expect("agency code"),
        };
        let reason = "thử nghiệm";
        let catalog = self.catalog();
        match status {
            GrantStatus::Suspended => {
                catalog
                    .suspend(&key, SuspensionKind::Breach, reason, "liên hệ Sở TT&TT")
                    .await
            }
            GrantStatus::Terminated => {
                catalog
                    .terminate(&key, TerminationKind::NoLongerNeeded, reason)
                    .await
            }
            _ => catalog.grant(&key, Validity::Open, reason).await,
        }
        .expect("grant");
    }

    /// Revokes the certificate with `serial` (key compromise) and publishes
    /// the new CRL in the catalog. Returns once the registry acknowledged
    /// it, with the instant the write started.
    pub async fn revoke(&mut self, serial: &str) -> Instant {
        let ca = &mut self.registry.pki.ca;
        ca.revoke(serial, rcgen::RevocationReason::KeyCompromise)
            .expect("revoke");
        let crl = ca.sign_crl(1).expect("sign CRL");
        // Counted from the start of the write, as the README's bound is.
        let published = Instant::now();
        self.catalog()
            .publish_crl(crl.der, crl.number, crl.revoked)
            .await
            .expect("publish CRL");
        published
    }

    /// Credentials for any identity, from the province's CA, valid for a
    /// day; returns them and the certificate's serial.
    pub fn issue(&mut self, agency: &str, role: Role, name: &str) -> (Credentials, String) {
        self.registry.pki.issue(agency, role, name)
    }

    /// `lgsp ARGS --registry .. --tls-dir ..` as the provincial admin;
    /// its stdout. Fails the test, with the command's stderr, when the
    /// command fails.
    pub fn admin_cli(&self, args: &[&str]) -> String {
        let registry = self.registry_addrs().join(",");
        let tls = self.tls_dir("admin-cli", &self.registry.admin);
        let mut all = args.to_vec();
        all.extend(["--registry", &registry, "--tls-dir", tls.to_str().unwrap()]);
        let out = lgsp(&all);
        assert!(
            out.status.success(),
            "lgsp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `creds` into a TLS directory and returns it.
    pub fn tls_dir(&self, name: &str, creds: &Credentials) -> PathBuf {
        let dir = self.registry.pki.dir.path().join(name);
        write_creds(&dir, creds);
        dir
    }

    /// The SPIFFE ID of the provincial admin.
    pub fn admin_id() -> SpiffeId {
        SpiffeId::new(
            TRUST_DOMAIN,
            AgencyCode::new(PROVINCE).expect("code"),
            Role::Admin,
            "so-tttt",
        )
        .expect("id")
    }
}

/// The providing agency: the provincial Department of Justice, serving the
/// `ho-tich` dataset and the `dkkd` HTTP backend.
pub const A: &str = "000.00.12.H62";
/// The consuming agency: Tam Dương district's People's Committee, granted
/// A's services.
pub const B: &str = "000.00.13.H62";

/// A plain HTTP/JSON backend of agency A (a business registry), on
/// 127.0.0.1, serving until the test process exits; returns its host:port.
/// Operation `cham` answers after 3 seconds. Panics when it cannot bind.
pub async fn start_backend() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let answer = |call: HttpCall| async move {
        // A slow ("chậm") operation, for deadlines.
        if call.path.ends_with("/cham") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let asked: serde_json::Value = serde_json::from_slice(&call.body).unwrap_or_default();
        let reply = serde_json::json!({
            "path": call.path,
            "consumer": call.consumer,
            "ma_so_doanh_nghiep": asked["ma_so_doanh_nghiep"],
            "ten": "Công ty TNHH Hoa Sen Vĩnh Phúc",
        });
        Bytes::from(reply.to_string())
    };
    let (addr, _) = backend::serve_forever(listener, answer).unwrap();
    addr.to_string()
}

/// Three civil status (hộ tịch) records, keyed by `so_dinh_danh` (personal
/// identification number): A's `ho-tich` dataset as CSV.
pub const HO_TICH_CSV: &str = "so_dinh_danh,ho_ten,ngay_sinh,noi_sinh\n\
001099012345,Nguyễn Thị Hương,1999-03-12,Vĩnh Yên\n\
001088054321,Trần Văn Đức,1988-11-02,Phúc Yên\n\
001077000111,Lê Thị Ánh,1977-07-07,Vĩnh Yên\n";

/// A province with A serving a dataset and an HTTP backend, B granted both.
pub async fn two_agencies() -> (Province, NodeProcess, NodeProcess) {
    two_agencies_with_servers(1).await
}

/// [`two_agencies`] with a registry of `servers` servers.
pub async fn two_agencies_with_servers(servers: u64) -> (Province, NodeProcess, NodeProcess) {
    let (province, a, b) = two_agencies_custom(servers, "", "", HO_TICH_CSV, |_, _| {}).await;
    // Both nodes are registered and B's cache knows A's node before the test goes on.
    wait_until_callable(&b).await;
    (province, a, b)
}

/// The province of [`two_agencies`], with `a_extra` and `b_extra` appended
/// to the nodes' `node.toml`, `csv` as A's `ho-tich` dataset, and `prepare`
/// run on both nodes before they start. Returns once the service is
/// published and granted (without waiting for B to see it).
pub async fn two_agencies_custom(
    servers: u64,
    a_extra: &str,
    b_extra: &str,
    csv: &str,
    prepare: impl FnOnce(&NodeProcess, &NodeProcess),
) -> (Province, NodeProcess, NodeProcess) {
    let mut province = Province::start_with_servers(servers).await;
    province
        .register_agency(A, "Sở Tư pháp tỉnh Vĩnh Phúc")
        .await;
    province.register_agency(B, "UBND huyện Tam Dương").await;
    let backend = start_backend().await;
    let mut a = province.prepare_node(
        A,
        "node-a",
        &format!(
            "[[services]]\nname = \"ho-tich\"\nkind = \"dataset\"\n\n[[services]]\nname = \"dkkd\"\nkind = \"http\"\nurl = \"http://{backend}/api/{{op}}\"\n\n{a_extra}"
        ),
    );
    let mut b = province.prepare_node(B, "node-b", b_extra);
    let file = a.dir.join("ho-tich.csv");
    std::fs::write(&file, csv).unwrap();
    let out = crate::lgsp(&[
        "dataset",
        "import",
        "--data-dir",
        a.data_dir().to_str().unwrap(),
        "--service",
        "ho-tich",
        "--file",
        file.to_str().unwrap(),
        "--key",
        "so_dinh_danh",
    ]);
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prepare(&a, &b);
    a.start();
    b.start();
    province.wait_for_node(A, "node-a", &a).await;
    province
        .publish(
            &format!("{A}/ho-tich"),
            ServiceKind::Dataset,
            "node-a",
            "Hộ tịch",
        )
        .await;
    province
        .publish(
            &format!("{A}/dkkd"),
            ServiceKind::Http,
            "node-a",
            "Đăng ký kinh doanh",
        )
        .await;
    province
        .grant(&format!("{A}/ho-tich"), B, GrantStatus::Active)
        .await;
    province
        .grant(&format!("{A}/dkkd"), B, GrantStatus::Active)
        .await;
    (province, a, b)
}

/// Waits up to 15 s until a `get` of A's `ho-tich` dataset through B's node
/// is answered. Panics with B's log otherwise.
pub async fn wait_until_callable(b: &NodeProcess) {
    let envelope = Envelope {
        service_id: format!("{A}/ho-tich"),
        operation: "get".into(),
        parameters: HashMap::from([("key".into(), "001099012345".into())]),
        ..Default::default()
    };
    if let Err(e) =
        wait::until_served(b.app_channel().await, &envelope, Duration::from_secs(15)).await
    {
        panic!(
            "A's dataset never became callable through B: {e}\n{}",
            b.log()
        );
    }
}

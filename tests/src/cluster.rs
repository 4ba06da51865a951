//! In-process registry clusters over real mTLS on 127.0.0.1, for tests that
//! kill, partition and restart servers.

use crate::{Pki, TRUST_DOMAIN};
use lgsp_certs::{AgencyCode, Credentials, Role, TlsFiles};
use lgsp_proto::RecordKind;
use lgsp_proto::catalog_record::Value;
use lgsp_province::registry::{self, Member, RegistryCluster};
use lgsp_registry::{Catalog, RegistryClient, RegistryConfig, RegistryServer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1, never the same one twice in this test process.
pub fn free_addr() -> std::net::SocketAddr {
    lgsp_province::net::free_addr().expect("a free port on 127.0.0.1")
}

/// Writes PEM credentials into `dir` as cert.pem, key.pem, ca.pem.
pub fn write_creds(dir: &Path, creds: &Credentials) -> TlsFiles {
    TlsFiles::write(dir, creds).expect("write TLS files")
}

/// A registry cluster of in-process servers.
#[derive(Debug)]
pub struct Cluster {
    /// The CA that issued the servers' and the admin's certificates; its
    /// directory holds the servers' data directories.
    pub pki: Pki,
    /// Every server's configuration by id, kept while the server is stopped
    /// so that it can be restarted.
    pub configs: BTreeMap<u64, RegistryConfig>,
    /// The running servers by id; a stopped server is not in it.
    pub servers: BTreeMap<u64, RegistryServer>,
    /// The provincial admin's credentials (`so-tttt`).
    pub admin: Credentials,
}

/// The province's own agency code: the provincial admin's and the registry
/// servers' certificates are issued for it.
pub const PROVINCE: &str = "000.00.00.H62";

/// Tests tick fast (50 ms) and give up on a proposal after 3 s.
fn fast(config: &mut RegistryConfig) {
    config.tick_ms = 50;
    config.propose_timeout_ms = 3000;
}

impl Cluster {
    /// Starts `n` servers (ids 1..=n) and waits for a leader.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// Starts `n` servers as [`Self::start`] does, with `tune` applied to
    /// each server's configuration after the tests' fast timings. Panics
    /// when the servers cannot start or elect a leader within 10 s.
    pub async fn start_with(n: u64, tune: impl Fn(&mut RegistryConfig)) -> Self {
        let mut pki = Pki::new(TRUST_DOMAIN);
        let (admin, _) = pki.issue(PROVINCE, Role::Admin, "so-tttt");
        let mut cluster = Self {
            pki,
            configs: BTreeMap::new(),
            servers: BTreeMap::new(),
            admin,
        };
        let members = registry::members(n).expect("free ports");
        let dir = cluster.pki.dir.path().to_owned();
        let configs = registry::plan(&mut cluster.pki.ca, PROVINCE, None, &dir, &members, |c| {
            fast(c);
            tune(c);
        })
        .expect("registry configurations");
        let started = RegistryCluster::start(configs, Duration::from_secs(10))
            .await
            .expect("registry cluster start");
        cluster.configs = started.configs;
        cluster.servers = started.servers;
        cluster
    }

    /// A fresh config (data dir, certificate) for server `id`, not yet a
    /// member: its peers are itself alone.
    pub fn config_for(
        &mut self,
        id: u64,
        client: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    ) -> RegistryConfig {
        let dir = self.pki.dir.path().to_owned();
        let member = Member { id, client, peer };
        let mut configs = registry::plan(&mut self.pki.ca, PROVINCE, None, &dir, &[member], fast)
            .expect("registry configuration");
        let mut config = configs.remove(&id).expect("planned");
        config.peers.clear();
        config
    }

    /// Server `id`'s data directory (its sled store). Panics when no server
    /// `id` was configured.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.configs[&id].data_dir.clone()
    }

    /// A client of the given servers presenting `creds`.
    pub fn client_of(&self, ids: &[u64], creds: &Credentials) -> RegistryClient {
        let endpoints: Vec<String> = ids
            .iter()
            .map(|id| self.configs[id].listen.to_string())
            .collect();
        RegistryClient::new(&endpoints, creds).expect("client")
    }

    /// An admin client of every configured server.
    pub fn admin_client(&self) -> RegistryClient {
        let ids: Vec<u64> = self.configs.keys().copied().collect();
        self.client_of(&ids, &self.admin)
    }

    /// The id of the leader the running servers agree on, waiting up to 10 s.
    pub async fn wait_for_leader(&self) -> u64 {
        registry::wait_for_leader(&self.servers, Duration::from_secs(10))
            .await
            .expect("a leader")
    }

    /// Stops server `id` (as a crash would, minus the lost page cache).
    pub async fn stop(&mut self, id: u64) {
        if let Some(s) = self.servers.remove(&id) {
            let _ = s.shutdown().await;
        }
    }

    /// Starts server `id` again from its data directory.
    pub async fn restart(&mut self, id: u64) {
        let config = self.configs[&id].clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            // sled's lock on the directory is released when the last handle drops.
            match RegistryServer::start(config.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(%e, "restart not possible yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restart of server {id} failed: {e}"),
            }
        };
        self.servers.insert(id, server);
    }

    /// Registers agency `code` as the admin; returns the revision.
    pub async fn register_agency(&self, code: &str, name: &str) -> u64 {
        Catalog::new(self.admin_client())
            .register_agency(&AgencyCode::new(code).expect("agency code"), name, None)
            .await
            .expect("register agency")
    }

    /// Stops every running server, one after the other.
    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.servers.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// The agency record for `code`, read back.
pub async fn agency_name(client: &RegistryClient, code: &str, stale: bool) -> Option<String> {
    match client.get(RecordKind::Agency, code, stale).await {
        Ok(r) => match r.record?.value? {
            Value::Agency(a) => Some(a.name),
            _ => None,
        },
        Err(_) => None,
    }
}

/// Creates a record that must not exist yet, the way a careful client does
/// across failures: when the outcome of an attempt is unknown, it tries
/// again, create-only, and an "already exists" then means the earlier
/// attempt was applied. Returns the record's create revision.
pub async fn create_resolving(client: &RegistryClient, value: Value) -> u64 {
    let (kind, key) = lgsp_registry::catalog::key_of(&value);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let command = lgsp_proto::Command {
            op: Some(lgsp_proto::command::Op::Put(lgsp_proto::CatalogRecord {
                value: Some(value.clone()),
                ..Default::default()
            })),
            expected_mod_revision: 0,
            must_not_exist: true,
        };
        match client.apply(command).await {
            Ok(r) => return r.revision,
            Err(s) if s.code() == tonic::Code::Aborted => {
                let got = client.get(kind, &key, false).await.expect("read back");
                return got
                    .record
                    .and_then(|r| r.meta)
                    .expect("meta")
                    .create_revision;
            }
            Err(s) => {
                assert!(
                    Instant::now() < deadline,
                    "create of {key} kept failing: {s}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

//! In-process registry clusters over real mTLS on 127.0.0.1, for tests that
//! kill, partition and restart servers.

use crate::{Pki, TRUST_DOMAIN};
use lgsp_certs::{AgencyCode, Credentials, Role, TlsFiles};
use lgsp_proto::RecordKind;
use lgsp_proto::catalog_record::Value;
use lgsp_registry::config::PeerConfig;
use lgsp_registry::{Catalog, RegistryClient, RegistryConfig, RegistryServer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound, then released for the server to take),
/// never the same one twice in this test process, so that tests running at
/// the same time cannot be handed each other's ports.
pub fn free_addr() -> std::net::SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut given = GIVEN.lock().expect("ports lock");
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// Writes PEM credentials into `dir` as cert.pem, key.pem, ca.pem.
pub fn write_creds(dir: &Path, creds: &Credentials) -> TlsFiles {
    TlsFiles::write(dir, creds).expect("write TLS files")
}

/// A registry cluster of in-process servers.
pub struct Cluster {
    pub pki: Pki,
    pub configs: BTreeMap<u64, RegistryConfig>,
    pub servers: BTreeMap<u64, RegistryServer>,
    pub admin: Credentials,
}

pub const PROVINCE: &str = "000.00.00.H62";

impl Cluster {
    /// Starts `n` servers (ids 1..=n) and waits for a leader.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: u64, tune: impl Fn(&mut RegistryConfig)) -> Self {
        let mut pki = Pki::new(TRUST_DOMAIN);
        let (admin, _) = pki.issue(PROVINCE, Role::Admin, "so-tttt");
        let mut cluster = Self {
            pki,
            configs: BTreeMap::new(),
            servers: BTreeMap::new(),
            admin,
        };
        let addrs: Vec<(u64, std::net::SocketAddr, std::net::SocketAddr)> =
            (1..=n).map(|id| (id, free_addr(), free_addr())).collect();
        let peers: Vec<PeerConfig> = addrs
            .iter()
            .map(|(id, client, peer)| PeerConfig {
                id: *id,
                peer: peer.to_string(),
                client: client.to_string(),
            })
            .collect();
        for (id, client, peer) in &addrs {
            let mut config = cluster.config_for(*id, *client, *peer);
            config.peers = peers.clone();
            tune(&mut config);
            cluster.configs.insert(*id, config);
        }
        let starts: Vec<_> = cluster
            .configs
            .values()
            .cloned()
            .map(|c| tokio::spawn(RegistryServer::start(c)))
            .collect();
        for s in starts {
            let server = s.await.expect("join").expect("registry server start");
            cluster.servers.insert(server.id, server);
        }
        cluster.wait_for_leader().await;
        cluster
    }

    /// A fresh config (data dir, certificate) for server `id`.
    pub fn config_for(
        &mut self,
        id: u64,
        client: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    ) -> RegistryConfig {
        let dir = self.pki.dir.path().join(format!("registry-{id}"));
        let (creds, _) = self
            .pki
            .issue(PROVINCE, Role::Registry, &format!("registry-{id}"));
        RegistryConfig {
            id,
            listen: client,
            peer_listen: peer,
            data_dir: dir.join("data"),
            tls: Some(write_creds(&dir.join("tls"), &creds)),
            tick_ms: 50,
            propose_timeout_ms: 3000,
            ..Default::default()
        }
    }

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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut leaders = Vec::new();
            for s in self.servers.values() {
                if let Ok(st) = s.raft().status().await {
                    leaders.push(st.leader_id);
                }
            }
            if let Some(&l) = leaders.first()
                && l != 0
                && self.servers.contains_key(&l)
                && leaders.iter().all(|x| *x == l)
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed in 10 s: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

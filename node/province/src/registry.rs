//! A registry cluster in this process over real mTLS, each server with its
//! own certificate and data directory, started together and running once
//! its servers agree on a leader.

use crate::ProvinceError;
use crate::pki::{Holder, issue};
use lgsp_certs::ca::CertificateAuthority;
use lgsp_certs::{Role, TlsFiles};
use lgsp_registry::config::PeerConfig;
use lgsp_registry::{RegistryConfig, RegistryServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// One server of a cluster: its id and its two listeners.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    /// The server's Raft id.
    pub id: u64,
    /// Where clients (nodes, the command line) reach it.
    pub client: SocketAddr,
    /// Where the other servers reach it.
    pub peer: SocketAddr,
}

/// Ids 1..=n, each with two free loopback addresses. Fails if no loopback
/// port can be bound.
pub fn members(n: u64) -> std::io::Result<Vec<Member>> {
    (1..=n)
        .map(|id| {
            Ok(Member {
                id,
                client: crate::net::free_addr()?,
                peer: crate::net::free_addr()?,
            })
        })
        .collect()
}

/// The configuration of every server of `members`: a `registry-<id>`
/// certificate of `agency` from `ca` (with `display` as its subject's
/// organisation), files under `dir/registry-<id>`, every member as a peer;
/// `tune` adjusts each. Fails if a certificate cannot be issued or its
/// files cannot be written.
pub fn plan(
    ca: &mut CertificateAuthority,
    agency: &str,
    display: Option<&str>,
    dir: &Path,
    members: &[Member],
    tune: impl Fn(&mut RegistryConfig),
) -> Result<BTreeMap<u64, RegistryConfig>, ProvinceError> {
    let peers: Vec<PeerConfig> = members
        .iter()
        .map(|m| PeerConfig {
            id: m.id,
            peer: m.peer.to_string(),
            client: m.client.to_string(),
        })
        .collect();
    let mut configs = BTreeMap::new();
    for m in members {
        let name = format!("registry-{}", m.id);
        let holder = Holder {
            agency,
            role: Role::Registry,
            name: &name,
            display,
        };
        let issued = issue(ca, holder, 30)?;
        let home = dir.join(&name);
        let mut config = RegistryConfig {
            id: m.id,
            listen: m.client,
            peer_listen: m.peer,
            data_dir: home.join("data"),
            peers: peers.clone(),
            tls: Some(TlsFiles::write(&home.join("tls"), &issued.creds)?),
            ..Default::default()
        };
        tune(&mut config);
        configs.insert(m.id, config);
    }
    Ok(configs)
}

/// The servers of a cluster, by id, and how each was configured.
#[derive(Debug)]
pub struct RegistryCluster {
    /// How each server was (or will be again) started.
    pub configs: BTreeMap<u64, RegistryConfig>,
    /// The servers running now.
    pub servers: BTreeMap<u64, RegistryServer>,
}

impl RegistryCluster {
    /// Starts every server of `configs` at once and waits (at most
    /// `within`) until they agree on a leader. Fails if a server cannot
    /// start or no leader is agreed on in time
    /// ([`ProvinceError::Timeout`]).
    pub async fn start(
        configs: BTreeMap<u64, RegistryConfig>,
        within: Duration,
    ) -> Result<Self, ProvinceError> {
        let starts: Vec<_> = configs
            .values()
            .cloned()
            .map(|c| tokio::spawn(RegistryServer::start(c)))
            .collect();
        let mut servers = BTreeMap::new();
        for start in starts {
            let server = start
                .await
                .map_err(|e| std::io::Error::other(format!("a registry server panicked: {e}")))??;
            servers.insert(server.id, server);
        }
        let cluster = Self { configs, servers };
        cluster.wait_for_leader(within).await?;
        Ok(cluster)
    }

    /// The client addresses of every configured server, in id order.
    pub fn client_addrs(&self) -> Vec<String> {
        self.configs
            .values()
            .map(|c| c.listen.to_string())
            .collect()
    }

    /// The id of the leader the running servers agree on, waiting at most
    /// `within`; fails with [`ProvinceError::Timeout`] after that.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<u64, ProvinceError> {
        wait_for_leader(&self.servers, within).await
    }

    /// Stops every server, in id order; fails on the first one that does
    /// not stop cleanly (the servers after it are then dropped, not stopped).
    pub async fn shutdown(self) -> Result<(), ProvinceError> {
        for (_, server) in self.servers {
            server.shutdown().await?;
        }
        Ok(())
    }
}

/// The id of the leader `servers` agree on (each asked itself), waiting at
/// most `within`; fails with [`ProvinceError::Timeout`] after that. A server
/// that cannot report its status counts as not agreeing.
pub async fn wait_for_leader(
    servers: &BTreeMap<u64, RegistryServer>,
    within: Duration,
) -> Result<u64, ProvinceError> {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for s in servers.values() {
            if let Ok(st) = s.raft().status().await {
                leaders.push(st.leader_id);
            }
        }
        if let Some(&l) = leaders.first()
            && l != 0
            && servers.contains_key(&l)
            && leaders.iter().all(|x| *x == l)
        {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            return Err(ProvinceError::Timeout {
                what: "the registry servers agreeing on a leader".into(),
                within,
                last: Some(format!("leaders seen: {leaders:?}")),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The configuration of a registry server, from TOML or flags.

use crate::error::RegistryError;
use crate::watchers::WatchLimits;
use lgsp_certs::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Another registry server, as this one reaches it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its Raft id, as in its own `RegistryConfig::id`.
    pub id: u64,
    /// host:port of its peer (Raft) listener.
    pub peer: String,
    /// host:port of its client listener, for clients to discover.
    #[serde(default)]
    pub client: String,
}

/// A registry server's settings. `Default` gives the tuning; `validate`
/// reports every problem at once.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// This server's Raft id, unique in the cluster, never reused.
    pub id: u64,
    /// Client API listener (mTLS).
    pub listen: SocketAddr,
    /// Peer (Raft) listener (mTLS, registry certificates only).
    pub peer_listen: SocketAddr,
    /// Where the server keeps its raft log and hard state (`raft.log`) and
    /// its catalog (`catalog.log`); losing it means rejoining the cluster as
    /// a new member.
    pub data_dir: PathBuf,
    /// Every founding member, this server included, for a new cluster; the
    /// current members when joining. On a restart they must be the servers
    /// the data directory was first started with, or its cluster's current
    /// members: a start never changes membership (see `bootstrap.rs`).
    pub peers: Vec<PeerConfig>,
    /// Start empty and wait to be sent a snapshot by the leader, after
    /// `lgsp registry add-member`; the server is a learner until it has
    /// caught up, then the leader makes it a voter.
    pub join: bool,
    /// The server's registry certificate, key and CA certificate; required
    /// (`validate` refuses a configuration without them).
    pub tls: Option<TlsFiles>,
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Compact the log (the catalog becomes the snapshot) beyond this many entries.
    pub snapshot_entries: u64,
    /// Changes kept for `Watch`; older revisions make a watcher reload.
    pub watch_history: u64,
    /// How long a write may wait to commit before its outcome is reported unknown.
    pub propose_timeout_ms: u64,
    /// How long a batch of Raft messages to a peer may take to be
    /// delivered (and a piece of a snapshot to be taken) before the peer is
    /// reported unreachable. A snapshot as a whole has no deadline.
    pub peer_timeout_ms: u64,
    /// Watches one certificate name may hold open on this server.
    pub max_watches_per_client: usize,
    /// Watches this server holds open in all.
    pub max_watches: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            id: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7201)),
            data_dir: PathBuf::from("registry-data"),
            peers: Vec::new(),
            join: false,
            tls: None,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 10_000,
            watch_history: 100_000,
            propose_timeout_ms: 5_000,
            peer_timeout_ms: 5_000,
            max_watches_per_client: WatchLimits::default().per_client,
            max_watches: WatchLimits::default().total,
        }
    }
}

impl RegistryConfig {
    /// Reads a TOML file.
    pub fn from_toml(text: &str) -> Result<Self, RegistryError> {
        toml::from_str(text).map_err(|e| RegistryError::Config(e.to_string()))
    }

    /// Every problem with this configuration, in one error.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let mut problems = Vec::new();
        if self.id == 0 {
            problems.push("id must be a positive number (--id)".to_owned());
        }
        if self.tls.is_none() {
            problems.push("TLS files are missing (--tls-dir, or [tls] cert/key/ca)".to_owned());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            problems.push("election ticks must be greater than heartbeat ticks".to_owned());
        }
        if self.peer_timeout_ms == 0 {
            problems.push("peer_timeout_ms must be positive".to_owned());
        }
        if self.heartbeat_ticks == 0 || self.tick_ms == 0 {
            problems.push("tick_ms and heartbeat_ticks must be positive".to_owned());
        }
        if !self.join && !self.peers.iter().any(|p| p.id == self.id) {
            problems.push(format!(
                "the peers list (--peers) must include this server ({}) when founding a cluster",
                self.id
            ));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            problems.push("a peer id appears twice in --peers".to_owned());
        }
        if ids.contains(&0) {
            problems.push("peer id 0 is not allowed".to_owned());
        }
        if self.max_watches_per_client == 0 || self.max_watches == 0 {
            problems.push(
                "max_watches_per_client and max_watches must be positive (a node needs one watch)"
                    .to_owned(),
            );
        }
        if self.listen == self.peer_listen && self.listen.port() != 0 {
            problems.push("the client and peer listeners must differ".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::Config(problems.join("; ")))
        }
    }
}

impl RegistryConfig {
    /// The bounds on the watches this server holds open.
    pub fn watch_limits(&self) -> WatchLimits {
        WatchLimits {
            per_client: self.max_watches_per_client,
            total: self.max_watches,
        }
    }
}

/// Parses `--peers 1=127.0.0.1:7201,2=127.0.0.1:7202` (optionally
/// `ID=PEER_ADDR/CLIENT_ADDR`).
pub fn parse_peers(s: &str) -> Result<Vec<PeerConfig>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|item| {
            let (id, addrs) = item
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
            let id = id
                .parse::<u64>()
                .map_err(|_| format!("{id:?} in {item:?} is not a server id"))?;
            let (peer, client) = addrs.split_once('/').unwrap_or((addrs, ""));
            Ok(PeerConfig {
                id,
                peer: peer.to_owned(),
                client: client.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_every_problem() {
        let config = RegistryConfig {
            election_ticks: 1,
            ..Default::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("id must be"), "{err}");
        assert!(err.contains("TLS files"), "{err}");
        assert!(err.contains("election ticks must be greater"), "{err}");
    }

    #[test]
    fn peers_flag_parses() {
        let peers = parse_peers("1=127.0.0.1:7201,2=h:7202/h:7102").unwrap();
        assert_eq!(peers[1].client, "h:7102");
        assert!(parse_peers("x=1").is_err());
    }
}

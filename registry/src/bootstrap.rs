//! Founding, joining and restarting are explicit: what a registry server
//! checks before it writes its first raft state, and before it runs again
//! from a data directory that has some.
//!
//! - **An empty data directory** founds a cluster (or joins one) only if no
//!   peer knows this server's id from a data directory that held state (its
//!   incarnation, see `incarnation.rs`): a wiped server must never found
//!   again and vote under its old id. A founder also refuses when the
//!   cluster its peers belong to was founded by other servers than its
//!   `--peers` name, or no longer counts it as a member. Peers that do not
//!   answer are no objection: founders start at about the same time, and
//!   peers that know the server refuse its messages anyway.
//! - **A data directory with state** runs only with the peers it was first
//!   started with, or the current members: a start never changes
//!   membership, and flags that disagree are a configuration error, not
//!   silently replaced by what the directory holds.

use crate::config::RegistryConfig;
use crate::error::RegistryError;
use lgsp_certs::Credentials;
use lgsp_proto::PeerStatusResponse;
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a peer may take to answer before it counts as not answering.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What each other server of `config.peers` answers about itself and this
/// server, asked all at once: by id, the answer or why there is none.
pub async fn ask_peers(
    config: &RegistryConfig,
    creds: &Credentials,
) -> Vec<(u64, Result<PeerStatusResponse, String>)> {
    let asks = config
        .peers
        .iter()
        .filter(|p| p.id != config.id && !p.peer.is_empty())
        .map(|p| async move {
            let answer = crate::transport::ask_peer(&p.peer, creds, config.id, ASK_TIMEOUT).await;
            (p.id, answer)
        });
    futures::future::join_all(asks).await
}

fn ids(set: &BTreeSet<u64>) -> String {
    let list: Vec<String> = set.iter().map(u64::to_string).collect();
    format!("{{{}}}", list.join(", "))
}

/// The ids `config` names as peers, itself included.
pub fn configured_ids(config: &RegistryConfig) -> BTreeSet<u64> {
    config
        .peers
        .iter()
        .map(|p| p.id)
        .chain([config.id])
        .collect()
}

/// Decides whether a server whose data directory (incarnation
/// `incarnation`) holds no raft state may found (or, with `config.join`,
/// join) a cluster, given its peers' `answers`. Fails with
/// [`RegistryError::Config`] naming the peer that objects and what to do.
pub fn check_empty_start(
    config: &RegistryConfig,
    incarnation: u64,
    answers: &[(u64, Result<PeerStatusResponse, String>)],
) -> Result<(), RegistryError> {
    let me = config.id;
    let dir = config.data_dir.display();
    let configured = configured_ids(config);
    let mut problems = Vec::new();
    let knowing: Vec<(u64, u64)> = answers
        .iter()
        .filter_map(|(peer, answer)| answer.as_ref().ok().map(|s| (*peer, s.known_incarnation)))
        .filter(|(_, known)| *known != 0 && *known != incarnation)
        .collect();
    if let Some((_, known)) = knowing.first() {
        let peers: Vec<String> = knowing.iter().map(|(p, _)| p.to_string()).collect();
        problems.push(format!(
            "server {} knows server {me} from a data directory that held raft state (incarnation {known:016x}), \
             but {dir} holds none: it was wiped or replaced, and a server that lost its state must not vote again under its old id. \
             Restore {dir} from a backup of this server, or rejoin under a new id: \
             `lgsp registry remove-member --id {me}`, `lgsp registry add-member --id NEW_ID ...`, then start this server with --id NEW_ID --join",
            peers.join(" and server ")
        ));
    }
    for (peer, answer) in answers {
        let Ok(s) = answer else { continue };
        if s.known_incarnation != 0 && s.known_incarnation != incarnation {
            continue;
        }
        if config.join || s.applied_index == 0 {
            continue;
        }
        let founders: BTreeSet<u64> = s.founders.iter().copied().collect();
        let members: BTreeSet<u64> = s.voters.iter().chain(&s.learners).copied().collect();
        if !founders.is_empty() && founders != configured {
            problems.push(format!(
                "--peers names the founding servers {}, but server {peer} belongs to a cluster founded by {}: \
                 give every founding server the same --peers, or, to add this server to that cluster, \
                 run `lgsp registry add-member --id {me} ...` and start it with --join",
                ids(&configured),
                ids(&founders)
            ));
        } else if !members.contains(&me) {
            problems.push(format!(
                "server {peer} belongs to a running cluster whose members are {}, without server {me}: \
                 to add this server, run `lgsp registry add-member --id {me} ...` and start it with --join \
                 (the id of a removed server is never used again)",
                ids(&members)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RegistryError::Config(format!(
            "registry server {me} refuses to {} with the empty data directory {dir}: {}",
            if config.join {
                "join"
            } else {
                "found a cluster"
            },
            problems.join("; ")
        )))
    }
}

/// What a data directory with raft state says of membership.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredMembership {
    /// The server ids it was first started with, itself included; `None`
    /// for a directory older than this record.
    pub first_peers: Option<BTreeSet<u64>>,
    /// The members of its current configuration (voters, outgoing voters
    /// and learners).
    pub current: BTreeSet<u64>,
}

/// Decides whether a server may run from a data directory with raft state
/// with the peers `config` names: those it was first started with, or the
/// current members. Fails with [`RegistryError::Config`] saying what
/// disagrees; a directory too old to say what it was first started with is
/// only warned about.
pub fn check_restart(
    config: &RegistryConfig,
    stored: &StoredMembership,
) -> Result<(), RegistryError> {
    if config.peers.is_empty() {
        return Ok(());
    }
    let configured = configured_ids(config);
    if configured == stored.current || stored.first_peers.as_ref() == Some(&configured) {
        return Ok(());
    }
    let dir = config.data_dir.display();
    let Some(first) = &stored.first_peers else {
        tracing::warn!(
            "--peers names {}, but the data directory {dir} belongs to a cluster of {}; running with the stored membership",
            ids(&configured),
            ids(&stored.current)
        );
        return Ok(());
    };
    Err(RegistryError::Config(format!(
        "--peers names the servers {}, but the data directory {dir} was first started with {} and its cluster's members are now {}: \
         a start never changes membership. Start with the peers it was first started with or the current members; \
         change membership with `lgsp registry add-member`/`remove-member`. \
         If {dir} is left from a first start that failed and the cluster never ran, remove it and start again; \
         if it is another server's, use the right --data-dir",
        ids(&configured),
        ids(first),
        ids(&stored.current)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;

    fn config(id: u64, peers: &[u64], join: bool) -> RegistryConfig {
        RegistryConfig {
            id,
            join,
            peers: peers
                .iter()
                .map(|id| PeerConfig {
                    id: *id,
                    peer: format!("127.0.0.1:{}", 7200 + id),
                    client: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn answer(id: u64, applied: u64, known: u64, founders: &[u64]) -> PeerStatusResponse {
        PeerStatusResponse {
            id,
            applied_index: applied,
            voters: vec![1, 2, 3],
            learners: vec![],
            incarnation: 100 + id,
            known_incarnation: known,
            founders: founders.to_vec(),
            version: String::new(),
        }
    }

    #[test]
    fn a_wiped_server_known_to_a_peer_refuses_to_found_or_join_again() {
        let answers = vec![
            (1, Ok(answer(1, 40, 0xabc, &[1, 2, 3]))),
            (2, Err("connection refused".to_owned())),
        ];
        for join in [false, true] {
            let err = check_empty_start(&config(3, &[1, 2, 3], join), 0xdef, &answers)
                .unwrap_err()
                .to_string();
            assert!(err.contains("server 1 knows server 3"), "{err}");
            assert!(err.contains("Restore"), "{err}");
            assert!(err.contains("remove-member --id 3"), "{err}");
        }
    }

    #[test]
    fn a_late_founder_unknown_to_its_peers_founds_with_them() {
        let answers = vec![
            (1, Ok(answer(1, 40, 0, &[1, 2, 3]))),
            (2, Err("connection refused".to_owned())),
        ];
        check_empty_start(&config(3, &[1, 2, 3], false), 7, &answers).unwrap();
        // Its own incarnation, heard before its first state was written.
        let answers = vec![(1, Ok(answer(1, 40, 7, &[1, 2, 3])))];
        check_empty_start(&config(3, &[1, 2, 3], false), 7, &answers).unwrap();
    }

    #[test]
    fn a_founder_whose_peers_founded_another_cluster_refuses() {
        let answers = vec![(1, Ok(answer(1, 40, 0, &[1, 2, 3])))];
        let err = check_empty_start(&config(4, &[1, 2, 3, 4], false), 7, &answers)
            .unwrap_err()
            .to_string();
        assert!(err.contains("founded by {1, 2, 3}"), "{err}");
        let mut removed = answer(1, 40, 0, &[]);
        removed.voters = vec![1, 2];
        let err = check_empty_start(&config(3, &[1, 2, 3], false), 7, &[(1, Ok(removed))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("without server 3"), "{err}");
    }

    #[test]
    fn a_restart_with_peers_it_never_had_is_refused() {
        let stored = StoredMembership {
            first_peers: Some(BTreeSet::from([1])),
            current: BTreeSet::from([1]),
        };
        let err = check_restart(&config(1, &[1, 2, 3], false), &stored)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first started with {1}"), "{err}");
        assert!(err.contains("a start never changes membership"), "{err}");
    }

    #[test]
    fn a_restart_with_the_founding_peers_or_the_current_members_runs() {
        let stored = StoredMembership {
            first_peers: Some(BTreeSet::from([1, 2, 3])),
            current: BTreeSet::from([1, 2, 4]),
        };
        check_restart(&config(1, &[1, 2, 3], false), &stored).unwrap();
        check_restart(&config(1, &[1, 2, 4], false), &stored).unwrap();
        check_restart(&config(4, &[], true), &stored).unwrap();
        let old = StoredMembership {
            first_peers: None,
            current: BTreeSet::from([1, 2, 3]),
        };
        check_restart(&config(1, &[1, 2, 5], false), &old).unwrap();
    }
}

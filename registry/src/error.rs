//! Registry errors, and the one place they become gRPC statuses.

use tonic::Status;

/// Why the catalog refused a command. Decided identically on every server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The command itself is malformed: a bad key, an empty or too long
    /// field, a missing record kind.
    #[error("{0}")]
    InvalidArgument(String),
    /// The record (or registry server) the command names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The actor may not change this record: another agency's record, or one
    /// only the provincial admin may change.
    #[error("{0}")]
    PermissionDenied(String),
    /// Something the command depends on is missing or in the wrong state
    /// (an agency not registered, a server already a member).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A node's name is in use by another live instance (a second process
    /// with the same certificate); the first keeps it.
    #[error("{0}")]
    InUse(String),
    /// A compare-and-set condition did not hold.
    #[error("{why}")]
    Conflict {
        /// What did not hold, in words.
        why: String,
        /// The record's mod revision when the command was applied (0 when
        /// absent): what a client retrying the compare-and-set needs, given
        /// in the status's `lgsp-mod-revision` metadata.
        mod_revision: u64,
    },
    /// The store could not be read while checking the command. Not a
    /// refusal: the consensus loop stops rather than decide differently
    /// from the other servers.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A read or write of the key-value store failed, or what it read is not
/// what the registry wrote: never replaced by a default, since a default
/// hard state or applied index would make a server vote or apply again.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine itself failed (I/O, corruption it detected).
    #[error("storage engine: {0}")]
    Engine(String),
    /// The value under `key` cannot be decoded.
    #[error("the value under {key:?} is damaged: {reason}")]
    Damaged {
        /// The key whose value is damaged, as text.
        key: String,
        /// Why it cannot be decoded (e.g. "3 bytes, not an 8-byte integer").
        reason: String,
    },
    /// Bytes of the Raft log file that were synced changed on disk: the
    /// record at byte `at` is damaged, yet a sync mark at byte `synced`
    /// proves the bytes before it were synced.
    #[error(
        "{path}: the record at byte {at} is damaged, but the bytes before byte {synced} were synced: entries this server acknowledged are lost on its disk"
    )]
    Corrupt {
        /// The log file.
        path: String,
        /// Where the damaged record starts.
        at: u64,
        /// Where the sync mark past it is.
        synced: u64,
    },
}

/// Everything a registry server can fail at.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The catalog refused the command; every server refuses it alike.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The data directory could not be opened, or applying a committed entry
    /// failed to read the store (the consensus loop stops).
    #[error("storage: {0}")]
    Storage(String),
    /// A read or write of the key-value store failed or read damaged data.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// raft-rs failed, or the consensus thread could not start or died.
    #[error("raft: {0}")]
    Raft(String),
    /// No leader is known or reachable; the request was not applied.
    #[error("{0}")]
    Unavailable(String),
    /// The request is for the leader alone (a membership change) and this
    /// server is not it; nothing was applied. The status carries the
    /// leader's client address ([`LEADER`]) for the client to go on there.
    #[error("{why}")]
    NotLeader {
        /// What happened and what to do, in words.
        why: String,
        /// The leader's client address as the cluster knows it (empty:
        /// not known).
        leader_address: String,
    },
    /// The request was proposed but its outcome is unknown (e.g. the leader
    /// changed before it committed); it may or may not have been applied.
    #[error("{0}")]
    Indeterminate(String),
    /// The configuration is unusable (every problem named), a listener
    /// cannot be bound, the server's certificate is not a registry
    /// certificate, or its data directory was wiped behind the cluster's back.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory holds damaged data that a restart cannot repair
    /// (the message says what and what to do).
    #[error("{0}")]
    Damaged(String),
    /// The server's certificate, key or CA could not be loaded or used.
    #[error("{0}")]
    Tls(#[from] lgsp_certs::CertError),
    /// The consensus loop has stopped; nothing more is accepted.
    #[error("the registry server is shutting down")]
    ShuttingDown,
    /// A watch was refused: its client, or the server, holds as many open
    /// watches as it may (the message says which, and what to do).
    #[error("{0}")]
    TooManyWatches(String),
}

impl From<raft::Error> for RegistryError {
    fn from(e: raft::Error) -> Self {
        RegistryError::Raft(e.to_string())
    }
}

/// The metadata key that says what became of a write the status answers:
/// `refused` (the catalog decided against it: certainly not applied),
/// `not-applied` (the server could not take it: certainly not applied,
/// retrying is safe) or `unknown` (it may or may not be applied: read it
/// back before retrying). See the `Registry` service in `registry.proto`.
pub const OUTCOME: &str = "lgsp-outcome";

/// The metadata key of a compare-and-set refusal that gives the record's
/// mod revision at the time (0: absent).
pub const MOD_REVISION: &str = "lgsp-mod-revision";

/// The metadata key of a request refused by a server that is not the
/// leader (membership changes): the leader's client address, where the same
/// request goes next.
pub const LEADER: &str = "lgsp-leader";

fn with_outcome(status: Status, outcome: &'static str, revision: Option<u64>) -> Status {
    let mut metadata = status.metadata().clone();
    metadata.insert(
        OUTCOME,
        tonic::metadata::MetadataValue::from_static(outcome),
    );
    if let Some(revision) = revision
        && let Ok(value) = revision.to_string().parse()
    {
        metadata.insert(MOD_REVISION, value);
    }
    Status::with_metadata(status.code(), status.message(), metadata)
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Catalog(c) => {
                let revision = match &c {
                    CatalogError::Conflict { mod_revision, .. } => Some(*mod_revision),
                    _ => None,
                };
                let status = match c {
                    CatalogError::InvalidArgument(m) => Status::invalid_argument(m),
                    CatalogError::NotFound(m) => Status::not_found(m),
                    CatalogError::PermissionDenied(m) => Status::permission_denied(m),
                    CatalogError::FailedPrecondition(m) => Status::failed_precondition(m),
                    CatalogError::InUse(m) => Status::already_exists(m),
                    CatalogError::Conflict { why, .. } => Status::aborted(why),
                    CatalogError::Internal(m) => return Status::internal(m),
                };
                with_outcome(status, "refused", revision)
            }
            RegistryError::Unavailable(m) => {
                with_outcome(Status::unavailable(m), "not-applied", None)
            }
            RegistryError::NotLeader {
                why,
                leader_address,
            } => {
                let status = with_outcome(Status::unavailable(why), "not-applied", None);
                let mut metadata = status.metadata().clone();
                if !leader_address.is_empty()
                    && let Ok(value) = leader_address.parse()
                {
                    metadata.insert(LEADER, value);
                }
                Status::with_metadata(status.code(), status.message(), metadata)
            }
            RegistryError::Indeterminate(m) => {
                with_outcome(Status::deadline_exceeded(m), "unknown", None)
            }
            RegistryError::ShuttingDown => {
                with_outcome(Status::unavailable(e.to_string()), "not-applied", None)
            }
            RegistryError::TooManyWatches(m) => Status::resource_exhausted(m),
            other => Status::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compare_and_set_refusal_says_it_was_refused_and_gives_the_current_revision() {
        let status = Status::from(RegistryError::Catalog(CatalogError::Conflict {
            why: "Agency \"000.00.12.H62\" is at mod revision 7, not the expected 5".into(),
            mod_revision: 7,
        }));
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert_eq!(status.metadata().get(OUTCOME).unwrap(), "refused");
        assert_eq!(status.metadata().get(MOD_REVISION).unwrap(), "7");
    }

    #[test]
    fn definite_and_unknown_outcomes_are_told_apart() {
        let unavailable = Status::from(RegistryError::Unavailable("no leader".into()));
        assert_eq!(unavailable.metadata().get(OUTCOME).unwrap(), "not-applied");
        let unknown = Status::from(RegistryError::Indeterminate("leader changed".into()));
        assert_eq!(unknown.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(unknown.metadata().get(OUTCOME).unwrap(), "unknown");
        let invalid = Status::from(RegistryError::Catalog(CatalogError::InvalidArgument(
            "bad key".into(),
        )));
        assert_eq!(invalid.metadata().get(OUTCOME).unwrap(), "refused");
        assert!(invalid.metadata().get(MOD_REVISION).is_none());
        let elsewhere = Status::from(RegistryError::NotLeader {
            why: "not the leader".into(),
            leader_address: "127.0.0.1:7101".into(),
        });
        assert_eq!(elsewhere.code(), tonic::Code::Unavailable);
        assert_eq!(elsewhere.metadata().get(OUTCOME).unwrap(), "not-applied");
        assert_eq!(elsewhere.metadata().get(LEADER).unwrap(), "127.0.0.1:7101");
    }
}

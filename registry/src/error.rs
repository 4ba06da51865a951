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
    /// A compare-and-set condition did not hold.
    #[error("{0}")]
    Conflict(String),
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
    /// The request was proposed but its outcome is unknown (e.g. the leader
    /// changed before it committed); it may or may not have been applied.
    #[error("{0}")]
    Indeterminate(String),
    /// The configuration is unusable (every problem named), a listener
    /// cannot be bound, the server's certificate is not a registry
    /// certificate, or its data directory was wiped behind the cluster's back.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server's certificate, key or CA could not be loaded or used.
    #[error("{0}")]
    Tls(#[from] lgsp_certs::CertError),
    /// The consensus loop has stopped; nothing more is accepted.
    #[error("the registry server is shutting down")]
    ShuttingDown,
}

impl From<raft::Error> for RegistryError {
    fn from(e: raft::Error) -> Self {
        RegistryError::Raft(e.to_string())
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Catalog(c) => match c {
                CatalogError::InvalidArgument(m) => Status::invalid_argument(m),
                CatalogError::NotFound(m) => Status::not_found(m),
                CatalogError::PermissionDenied(m) => Status::permission_denied(m),
                CatalogError::FailedPrecondition(m) => Status::failed_precondition(m),
                CatalogError::Conflict(m) => Status::aborted(m),
                CatalogError::Internal(m) => Status::internal(m),
            },
            RegistryError::Unavailable(m) => Status::unavailable(m),
            RegistryError::Indeterminate(m) => Status::deadline_exceeded(m),
            RegistryError::ShuttingDown => Status::unavailable(e.to_string()),
            other => Status::internal(other.to_string()),
        }
    }
}

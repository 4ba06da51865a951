//! Registry errors, and the one place they become gRPC statuses.

use tonic::Status;

/// Why the catalog refused a command. Decided identically on every server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A compare-and-set condition did not hold.
    #[error("{0}")]
    Conflict(String),
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
    Damaged { key: String, reason: String },
}

/// Everything a registry server can fail at.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("storage: {0}")]
    Storage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(String),
    /// No leader is known or reachable; the request was not applied.
    #[error("{0}")]
    Unavailable(String),
    /// The request was proposed but its outcome is unknown (e.g. the leader
    /// changed before it committed); it may or may not have been applied.
    #[error("{0}")]
    Indeterminate(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Tls(#[from] lgsp_certs::CertError),
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

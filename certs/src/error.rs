//! The errors of the provincial PKI, each naming what was wrong and with what.

use std::path::PathBuf;

/// Everything the PKI library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "malformed agency code {code:?}: {why} (a QCVN 102 code is 1 to 35 characters of 0-9, A-Z and '.', e.g. 000.00.12.H62)"
    )]
    AgencyCode { code: String, why: &'static str },
    #[error("unknown role {0:?}: expected one of node, registry, hub, admin")]
    Role(String),
    #[error(
        "malformed name {name:?}: {why} (1 to 63 characters of a-z, A-Z, 0-9, '-', '_' and '.')"
    )]
    Name { name: String, why: &'static str },
    #[error("malformed trust domain {0:?}: expected a lower-case DNS name such as vinhphuc.gov.vn")]
    TrustDomain(String),
    #[error(
        "malformed SPIFFE ID {id:?}: {why} (expected spiffe://<trust-domain>/agency/<code>/<role>/<name>)"
    )]
    SpiffeId { id: String, why: String },
    #[error("the certificate carries no SPIFFE ID (no spiffe:// URI SAN)")]
    NoSpiffeId,
    #[error("the certificate carries {0} SPIFFE IDs; exactly one is allowed")]
    ManySpiffeIds(usize),
    #[error("trust domain {found:?} is not this CA's ({expected:?})")]
    ForeignTrustDomain { expected: String, found: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no CA in {0} (expected ca.crt, ca.key and ca.json there; make one with `lgsp ca init`)"
    )]
    NoCa(PathBuf),
    #[error("{0} already holds a CA; refusing to overwrite it")]
    CaExists(PathBuf),
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{path}: not a valid {what}: {why}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("{path}: the CA state file is damaged: {why}")]
    State { path: PathBuf, why: String },
    #[error("serial {0} was not issued by this CA")]
    UnknownSerial(String),
    #[error("serial {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("unknown revocation reason {0:?}: expected one of {1}")]
    Reason(String, &'static str),
    #[error("validity must be 1 to {max} days, not {days}")]
    Days { days: i64, max: i64 },
    #[error("invalid DNS name {0:?} for a SAN")]
    DnsName(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = CertError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CertError {
    let path = path.into();
    move |source| CertError::Io { path, source }
}

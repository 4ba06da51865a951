//! The errors of the provincial PKI, each naming what was wrong and with what.

use std::path::PathBuf;

/// Everything the PKI library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// An agency code outside the QCVN 102 alphabet or length.
    #[error(
        "malformed agency code {code:?}: {why} (a QCVN 102 code is 1 to 35 characters of 0-9, A-Z and '.', e.g. 000.00.12.H62)"
    )]
    AgencyCode {
        /// The code as given.
        code: String,
        /// What is wrong with it, in words.
        why: &'static str,
    },
    /// A role other than node, registry, hub or admin; holds the word given.
    #[error("unknown role {0:?}: expected one of node, registry, hub, admin")]
    Role(String),
    /// A SPIFFE ID name (its last segment) that is empty, too long or has a
    /// character not allowed.
    #[error(
        "malformed name {name:?}: {why} (1 to 63 characters of a-z, A-Z, 0-9, '-', '_' and '.')"
    )]
    Name {
        /// The name as given.
        name: String,
        /// What is wrong with it, in words.
        why: &'static str,
    },
    /// A trust domain that is not a lower-case DNS name; holds it as given.
    #[error(
        "malformed trust domain {0:?}: expected a lower-case DNS name such as <province>.gov.vn"
    )]
    TrustDomain(String),
    /// A URI that is not an lgsp SPIFFE ID.
    #[error(
        "malformed SPIFFE ID {id:?}: {why} (expected spiffe://<trust-domain>/agency/<code>/<role>/<name>)"
    )]
    SpiffeId {
        /// The URI as given.
        id: String,
        /// Which part is wrong, in words.
        why: String,
    },
    /// A certificate or CSR without a `spiffe://` URI SAN.
    #[error("the certificate carries no SPIFFE ID (no spiffe:// URI SAN)")]
    NoSpiffeId,
    /// A certificate or CSR with more than one SPIFFE ID; holds how many.
    #[error("the certificate carries {0} SPIFFE IDs; exactly one is allowed")]
    ManySpiffeIds(usize),
    /// An identity of another province's trust domain, which this CA does not sign.
    #[error("trust domain {found:?} is not this CA's ({expected:?})")]
    ForeignTrustDomain {
        /// The CA's own trust domain.
        expected: String,
        /// The trust domain the identity names.
        found: String,
    },
    /// A file or directory that could not be read, written or made.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A directory without a complete CA; holds the directory.
    #[error(
        "no CA in {0} (expected ca.crt, ca.key and ca.json there; make one with `lgsp ca init`)"
    )]
    NoCa(PathBuf),
    /// `init` in a directory that already holds a CA; holds the directory.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    CaExists(PathBuf),
    /// A file that must be new already exists; holds its path.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// A certificate, key, CSR, CRL or PEM file that does not parse or verify.
    #[error("{path}: not a valid {what}: {why}")]
    Parse {
        /// Where it came from (`<memory>/…` or `<crl>` when not from a file).
        path: PathBuf,
        /// What it should have been ("X.509 certificate", "PEM private key"...).
        what: &'static str,
        /// What the parser said.
        why: String,
    },
    /// A CA's `ca.json` that cannot be read back or written.
    #[error("{path}: the CA state file is damaged: {why}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A serial this CA never issued (or that is not hex); holds it.
    #[error("serial {0} was not issued by this CA")]
    UnknownSerial(String),
    /// A serial revoked before; holds it, normalised.
    #[error("serial {0} is already revoked")]
    AlreadyRevoked(String),
    /// A revocation reason not in RFC 5280's list; holds the word given and
    /// the list.
    #[error("unknown revocation reason {0:?}: expected one of {1}")]
    Reason(String, &'static str),
    /// A validity period out of range.
    #[error("validity must be 1 to {max} days, not {days}")]
    Days {
        /// The validity asked for, in days.
        days: i64,
        /// The most allowed for this kind of certificate or CRL, in days.
        max: i64,
    },
    /// A DNS name that cannot be a SAN; holds it.
    #[error("invalid DNS name {0:?} for a SAN")]
    DnsName(String),
    /// A DNS name or IP address the CA does not vouch for on behalf of the
    /// agency asking: its name policy does not allow it.
    #[error(
        "the CA does not vouch for {host:?} as a host of agency {agency} (its policy allows: {allowed}); if the agency really serves there, allow it with `{fix}`"
    )]
    HostNotVouched {
        /// The DNS name or IP address asked for.
        host: String,
        /// The agency code of the identity asking.
        agency: String,
        /// What the policy allows that agency, in words.
        allowed: String,
        /// The command that would allow it.
        fix: String,
    },
    /// rcgen could not build, sign or serialise a certificate, CSR or CRL.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls or tonic refused a TLS configuration; holds their reason.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// A CRL whose signature does not verify against any trusted CA: put in
    /// force, it could lock out every certificate of the province (or let
    /// revoked ones back in), so it is refused and the last good one stays.
    #[error(
        "the CRL (issuer {issuer}, number {number}) is not signed by a trusted CA certificate: {why}; the CRL in force stays"
    )]
    CrlSignature {
        /// The issuer the CRL names.
        issuer: String,
        /// Its CRL number, or `none`.
        number: String,
        /// Why no trusted CA verifies it.
        why: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = CertError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CertError {
    let path = path.into();
    move |source| CertError::Io { path, source }
}

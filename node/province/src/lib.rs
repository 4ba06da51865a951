//! A province on loopback, in parts: what the demo (`lgsp demo`), the
//! benchmarks (`lgsp bench`) and the system tests (`tests/`) all start.
//!
//! - [`pki`]: certificates for an agency, role and name from a CA.
//! - [`registry`]: a registry cluster in this process, its leader elected.
//! - [`backend`]: an agency's HTTP system, answering with a handler.
//! - [`net`]: free loopback addresses.
//! - [`wait`]: waiting until a node serves a call.
//!
//! Each part returns errors instead of panicking, so the demo can report
//! them; tests unwrap.

pub mod backend;
pub mod net;
pub mod pki;
pub mod registry;
pub mod wait;

/// Why a part of the province could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProvinceError {
    /// A certificate could not be made or used.
    #[error(transparent)]
    Cert(#[from] lgsp_certs::CertError),
    /// A registry server failed.
    #[error(transparent)]
    Registry(#[from] lgsp_registry::RegistryError),
    /// A file or socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Something did not happen in time.
    #[error("{what} did not happen within {within:?}{}", last.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Timeout {
        /// What was awaited, as a phrase ("node node-1 of agency 000.00.01.H29
        /// registering itself").
        what: String,
        /// How long it was awaited.
        within: std::time::Duration,
        /// What the last attempt saw (a refusal, the leaders seen), if any:
        /// usually the reason it never happened.
        last: Option<String>,
    },
}

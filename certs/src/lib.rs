//! The provincial PKI of lgsp, on `rcgen` and `rustls`.
//!
//! - [`ca`]: the provincial CA: init, issue, CSR signing, revocation, CRLs.
//! - [`identity`]: the SPIFFE ID in every certificate
//!   (`spiffe://<trust-domain>/agency/<code>/<role>/<name>`) and its parts.
//! - [`inspect`]: reading certificates and CRLs back, in plain words.
//! - [`name_policy`]: which host names the CA vouches for, per agency.
//! - [`tls`]: mTLS server and client configs, swappable at run time.
//! - [`peer`]: per-call authentication of gRPC peers from their certificates.
//! - [`server_identity`]: a client's check that it reached the server it
//!   meant to (identity and fingerprint, not host name), and its channels.

pub mod ca;
pub mod error;
mod fsutil;
pub mod identity;
pub mod inspect;
pub mod name_policy;
pub mod peer;
pub mod server_identity;
pub mod tls;

pub use ca::{CertificateAuthority, LeafSpec};
pub use error::{CertError, Result};
pub use fsutil::{write_atomic, write_new};
pub use identity::{AgencyCode, Role, SpiffeId};
pub use peer::{Authenticator, Peer, WhoAmI};
pub use server_identity::{ClientTrust, Expected};
pub use tls::{Credentials, ServerTls, TlsFiles};

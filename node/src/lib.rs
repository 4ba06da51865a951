//! The lgsp agency node's data plane: the provider side that serves this
//! agency's services to other agencies' nodes, the consumer side that the
//! agency's applications call, and what both rest on (the catalog cache,
//! access enforcement, limits, node links, the sharing log, metrics).
//!
//! [`server::NodeServer`] starts a whole node from a [`config::NodeConfig`].
//! The `lgsp` binary (`node/lgsp`) holds the command line, the demo and the
//! benchmarks; this crate has no command-line dependencies.

pub mod access;
pub mod admin;
pub mod audit_anchor;
pub mod backend;
pub mod catalog_cache;
pub mod config;
pub mod consumer;
pub mod context;
pub mod deadline;
pub mod fuzzing;
pub mod limits;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod obo;
pub mod peer_crl;
pub mod provider;
pub mod refusal;
pub mod registration;
pub mod relay;
pub mod replay;
pub mod server;
pub mod shutdown;
pub mod trace;

pub use trace::new_request_id;

//! The registry: the province's shared service catalog, replicated with Raft
//! (tikv raft-rs) over sled storage, served over gRPC with mutual TLS.
//!
//! - [`storage`]: raft log and state in sled behind raft-rs' `Storage`.
//! - [`catalog`]: the state machine: records, revisions, history.
//! - [`raft_node`]: the consensus loop.
//! - [`transport`]: Raft messages between servers.
//! - [`service`]: the client and peer gRPC services.
//! - [`server`]: a whole registry server, started and stopped.
//! - [`client`]: a client that finds a working server.

pub mod catalog;
pub mod client;
pub mod config;
pub mod error;
mod raft_log;
pub mod raft_node;
pub mod server;
pub mod service;
pub mod storage;
pub mod transport;

pub use client::RegistryClient;
pub use config::RegistryConfig;
pub use error::{CatalogError, RegistryError};
pub use server::RegistryServer;

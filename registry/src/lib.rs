//! The registry: the province's shared service catalog, replicated with Raft
//! (tikv raft-rs), served over gRPC with mutual TLS.
//!
//! - [`kv`]: the key-value store trait, with [`log_file`], [`sled_kv`] and
//!   [`mem_kv`].
//! - [`storage`]: raft log and state behind raft-rs' `Storage`, the log and
//!   the catalog each in a [`log_file`] (an append-only file, every key in
//!   memory).
//! - [`catalog`]: the state machine: records, revisions, history;
//!   [`snapshot_builder`] builds its Raft snapshots off the consensus thread,
//!   from a [`frozen`] view of its store while it goes on applying.
//! - [`raft_node`]: the consensus loop.
//! - [`transport`]: Raft messages between servers, behind a [`transport::Network`]
//!   trait; [`mem_network`] is an in-memory network for tests.
//! - [`service`]: the client and peer gRPC services; [`watchers`] bounds
//!   the watches they hold open.
//! - [`server`]: a whole registry server, started and stopped.
//! - [`backup`]: online backup files, and new clusters restored from them.
//! - [`bootstrap`]: what a server checks before it founds, joins or restarts.
//! - [`incarnation`]: each data directory's incarnation id, and what peers
//!   it was first started with.
//! - [`idempotency`]: idempotency keys, so a retried write applies once.
//! - [`client`]: a client that finds a working server.
//! - [`catalog_client`]: the catalog's verbs (register, publish, grant, ...), typed.
//! - [`procedure`]: the regulation's procedures (roles, access requests,
//!   suspension, termination, maintenance), enforced at apply time.
//! - [`calendar`]: working days in the province's time zone.
//! - [`audit_anchor`]: the anchors of the nodes' sharing logs, checked.
//! - [`keys`]: record keys (`ServiceId`, `NodeKey`, `GrantKey`), parsed once.

pub mod audit_anchor;
pub mod backup;
pub mod bootstrap;
pub mod calendar;
pub mod catalog;
pub mod catalog_client;
pub mod client;
pub mod config;
pub mod error;
pub mod federation;
pub mod frozen;
pub mod idempotency;
pub mod incarnation;
pub mod keys;
pub mod kv;
pub mod log_file;
pub mod mem_kv;
pub mod mem_network;
pub mod procedure;
mod raft_log;
pub mod raft_node;
pub mod rest_system;
pub mod server;
pub mod service;
pub mod sled_kv;
pub mod snapshot_builder;
pub mod storage;
pub mod text;
pub mod transport;
pub mod watchers;

pub use catalog_client::{Catalog, Decision, Publication, Validity};
pub use client::RegistryClient;
pub use config::RegistryConfig;
pub use error::{CatalogError, RegistryError, StoreError};
pub use keys::{GrantKey, KeyError, NodeKey, ServiceId};
pub use server::RegistryServer;

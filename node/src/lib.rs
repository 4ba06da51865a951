//! The lgsp agency node and the `lgsp` command line.
//!
//! [`cli`] parses arguments and calls into the libraries; behaviour lives in
//! the library crates and modules so that tests can call it directly.

pub mod access;
pub mod backend;
pub mod bench;
pub mod catalog_cache;
pub mod cli;
pub mod config;
pub mod dataset;
pub mod demo;
pub mod exchange;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod server;
pub mod sharing_log;

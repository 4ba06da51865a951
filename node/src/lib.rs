//! The lgsp agency node and the `lgsp` command line.
//!
//! [`cli`] parses arguments and calls into the libraries; behaviour lives in
//! the library crates and modules so that tests can call it directly.

pub mod bench;
pub mod cli;

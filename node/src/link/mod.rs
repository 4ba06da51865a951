//! Node links: one long-lived `NodeLink.Calls` stream from a consumer node
//! to each provider node it calls, carrying the agency applications' unary
//! calls as messages.
//!
//! A unary gRPC call costs the provider a new HTTP/2 stream (HEADERS with
//! HPACK, a trip through the server's service stack, trailers) on top of
//! the work it was asked for. On a link a call is one DATA frame each way,
//! and frames of calls in flight together leave in the same writes. The
//! provider still treats every call on a link as if it came alone: the
//! certificate is checked against the CRL in force, the consumer's limits
//! apply, the grant is checked, and the exchange is logged.
//!
//! A call goes as a unary `Call` instead when its envelope is large (so that
//! one upload does not hold up the small calls behind it) or when the
//! provider node is older and has no link service.
//!
//! [`server`] answers links on the provider node, [`client`] keeps this
//! node's links to the provider nodes it calls.

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{Links, Sent};
pub use server::{LinkServer, refusal};

/// Envelopes larger than this (encoded) go as a unary call on their own
/// HTTP/2 stream rather than on the link shared with other calls.
pub const MAX_LINK_ENVELOPE: usize = 64 * 1024;

/// Calls queued on a link before callers wait for room, and replies queued
/// on the provider before they are handed to HTTP/2.
const QUEUE: usize = 256;

/// Room for a link message's own fields (id, code, a status message of up
/// to [`MAX_STATUS_MESSAGE`], details of up to [`MAX_STATUS_DETAILS`])
/// around a message of the node's largest size.
pub const FRAMING: usize = 32 * 1024;
const MAX_STATUS_MESSAGE: usize = 4 * 1024;
const MAX_STATUS_DETAILS: usize = 16 * 1024;

/// Calls one link may have in flight on the provider, from the moment they
/// are read until their reply is handed to HTTP/2; then the provider stops
/// reading the link until some are done.
const IN_FLIGHT_PER_LINK: usize = 1024;

/// Links one consumer agency may have open to this node at once (a node
/// opens one per provider node; an agency has a few nodes).
pub const LINKS_PER_CONSUMER: usize = 16;

/// The request header in which a consumer node gives its largest message.
const MAX_MESSAGE_HEADER: &str = "x-lgsp-max-message";

//! The lgsp.v1 protocol: every message and gRPC service lgsp speaks, generated
//! at build time from the `.proto` files under `proto/lgsp/v1`.

/// Generated code for package `lgsp.v1`.
pub mod v1 {
    // Generated code is not ours to lint; its documentation is the comments
    // in the .proto files, which prost copies where they exist.
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    #![allow(missing_debug_implementations, rust_2018_idioms)]
    tonic::include_proto!("lgsp.v1");
}

/// The encoded `FileDescriptorSet` of every lgsp.v1 file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lgsp_descriptor.bin"));

pub use v1::*;

//! Baton: a task broker for chains of tasks ("executors"), with throttles,
//! heavy-task routing and leases enforced by the broker.
//!
//! This crate is the public API: the generated protocol ([`pb`]) and the
//! typed Rust client.

/// Generated protocol types and gRPC stubs of `baton.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("baton.v1");

    /// Encoded file descriptor set of `baton.v1`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
}

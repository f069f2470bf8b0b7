//! The service contract, generated at build time from
//! `proto/wsched/v1/scheduler.proto` (the one source of truth).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("wsched.v1");

/// The encoded descriptors of the proto files, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wsched_descriptor");

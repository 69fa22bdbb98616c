//! The wire contract between Kappie's node shipper and its collector (SPEC §2).
//!
//! This crate owns `proto/kappie.proto` and the Rust types and tonic client/server generated
//! from it at build time by protox (no system `protoc` needed). Series are defined once per
//! shipper session by reference; batches carry counter deltas and gauge values against those
//! references plus the shipper's identity and a per-shipper sequence number, which the
//! collector uses to apply each batch exactly once.

/// Generated protobuf messages and gRPC service for package `kappie.v1`.
pub mod v1 {
    tonic::include_proto!("kappie.v1");
}

pub use v1::*;

/// Prometheus remote write 1.0 and remote read messages (package `prometheus`).
pub mod prometheus {
    tonic::include_proto!("prometheus");
}

/// Prometheus's staleness marker: the NaN bit pattern Prometheus writes when a series
/// disappears.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

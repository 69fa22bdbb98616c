//! Kappie's node shipper.
//!
//! This crate owns what runs on every node: the data [`source::Source`]s that read the
//! kernel's network counters (/proc, sysfs, sock_diag and eBPF on Linux; HNS and VFP on
//! Windows, [`sources::windows`]; all behind the same trait), the turning of cumulative
//! kernel counters into deltas against a baseline that survives restarts and knows reboots
//! ([`state`]), the bounded queue that coalesces deltas per series during a collector
//! outage ([`queue`]), and the gRPC push client that delivers each batch exactly once
//! ([`push`]). [`agent`] ties them into the collection loop; [`telemetry`] keeps the
//! shipper's own metrics, which [`http`] serves with its health and readiness.

pub mod agent;
#[cfg(target_os = "linux")]
pub mod caps;
pub mod config;
pub mod dataplane;
pub mod http;
pub mod push;
pub mod queue;
pub mod series;
pub mod source;
pub mod sources;
pub mod state;
pub mod telemetry;

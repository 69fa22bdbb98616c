//! Kappie's cluster collector.
//!
//! This crate owns the collector process: gRPC ingest of node shipper batches (applied
//! exactly once and durable before they are acknowledged, with running counter totals so
//! counters stay monotonic across shipper restarts), the embedded store it writes through
//! (`kappie-storage`), and the Prometheus-compatible HTTP API that Grafana, `kubectl
//! port-forward` users and the `kappie` CLI query, with the PromQL engine ([`promql`]) that
//! reads through the storage `Querier`. Remote read and remote write out arrive with their
//! own issue and plug into [`api::router`] and the same `Querier`.

pub mod api;
pub mod config;
pub mod ingest;
pub mod limits;
pub mod promql;
pub mod remote;
pub mod server;
pub mod shipper_auth;
pub mod shippers;
pub mod telemetry;
pub mod tls;
pub mod watched;

pub use config::Config;
pub use server::{serve, Running};

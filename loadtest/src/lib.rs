//! Load testing for the Kappie collector.
//!
//! This crate owns the load generator: many simulated node shippers pushing Kappie-shaped
//! batches over gRPC and query clients hitting the Prometheus HTTP API of one collector,
//! reporting throughput, latency percentiles, memory and bytes per sample side by side with
//! a real Prometheus fed the same data. It is filled in by the storage and PromQL work.

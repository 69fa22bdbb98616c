//! Load testing and benchmarks for Kappie.
//!
//! This crate owns the load generators and benchmarks that run against real Kappie
//! processes: `shipper-sockets` (the node shipper's collection cycle on a node with 10,000
//! TCP sockets, in network namespaces it makes itself) today, and the simulated shippers and
//! query clients that drive one collector side by side with a real Prometheus as the
//! storage and PromQL work lands. Figures and the commands that produced them go in
//! `docs/BENCHMARKS.md`.

//! `cluster-sim`: a cluster's worth of node shippers in one process, pushing to one
//! collector over real gRPC with the real protocol (SPEC §2).
//!
//! - [`catalog`]: the label values of SPEC §1 as a real node spells them.
//! - [`node`]: one node's 400–640 series and how their values move.
//! - [`shipper`]: a node's collection schedule and its exactly-once sender.
//! - [`remote_write`]: the same schedule sent to a Prometheus by remote write, the peer.
//! - [`record`]: what the shippers saw (acknowledgements, failures, reconnects).
//! - [`process`]: the collector process (start, SIGTERM/SIGKILL, start again) and /proc.
//! - [`verify`]: the collector's stored counts against what the shippers sent.
//! - [`report`]: the figures, as text and JSON.

pub mod catalog;
pub mod node;
pub mod process;
pub mod record;
pub mod remote_write;
pub mod report;
pub mod shipper;
pub mod verify;

//! The seam every data source implements.

use crate::series::Kind;
use std::path::PathBuf;

/// One reading: a cumulative counter value or a gauge value for one series, without the
/// `node_name` and `cluster` labels (the agent adds them).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub metric: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Observation {
    pub fn counter(metric: &'static str, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        Observation {
            metric,
            kind: Kind::Counter,
            labels,
            value,
        }
    }
    pub fn gauge(metric: &'static str, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        Observation {
            metric,
            kind: Kind::Gauge,
            labels,
            value,
        }
    }
}

/// Why a source could not collect.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("cannot parse {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    /// A system call other than a file read failed (`what` names it and its object).
    #[error("{what}: {err}")]
    Ioctl { what: String, err: std::io::Error },
    /// A platform call (a program run, an API called) failed or answered what cannot be read.
    #[error("{call}: {msg}")]
    Call { call: String, msg: String },
    /// What the source reads from is not there right now (a local agent that is down). It
    /// is logged once when it starts and once when it ends, and counted every time.
    #[error("{what} is unavailable: {err}")]
    Unavailable { what: String, err: String },
}

/// A data source of the node shipper.
///
/// `collect` is called once per collection interval from a blocking thread (never on the
/// async runtime), and appends every reading of this moment to `out`. Counters are the
/// kernel's cumulative values: the agent turns them into deltas. A source that fails
/// returns an error; the agent logs it, counts it and goes on with the other sources.
pub trait Source: Send {
    /// Short name used in configuration (`--disable-sources`) and logs.
    fn name(&self) -> &'static str;
    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError>;
    /// Metrics whose counters the last `collect` found restarted from zero (their producer
    /// restarted): the agent forgets all their baselines before it turns that collection
    /// into deltas. Kernel counters never need it (a reboot is the boot id's); a source
    /// reading another process's counters does.
    fn restarted_metrics(&mut self) -> Vec<&'static str> {
        Vec::new()
    }
    /// What this source must remember across a shipper restart to judge the saved
    /// baselines (saved with them, atomically, after every collection).
    fn checkpoint(&self) -> Option<String> {
        None
    }
    /// Hands back what [`Source::checkpoint`] returned before the restart, before the
    /// first `collect` (only when the baselines it belongs to were kept).
    fn restore(&mut self, _checkpoint: &str) {}
    /// Called once when the shipper stops cleanly (SIGTERM): release what was attached.
    fn shutdown(self: Box<Self>) {}
}

/// Reads a whole file, with the path in the error.
pub fn read(path: PathBuf) -> Result<String, SourceError> {
    std::fs::read_to_string(&path).map_err(|err| SourceError::Read { path, err })
}

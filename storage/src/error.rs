use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong inside the store.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(
        "corrupt store: {0}; restore the data directory from a backup or start with an empty one"
    )]
    Corrupt(String),
    #[error("invalid label set: {0}")]
    InvalidLabels(String),
    #[error("invalid matcher: {0}")]
    InvalidMatcher(String),
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// A write failed after its log record was durable, so memory and disk may disagree:
    /// the store refuses writes and durable marks until it is opened again, when the log
    /// replays everything acknowledged.
    #[error("the store stopped taking writes after an earlier error ({0}); restart the process: the log replays every acknowledged write")]
    Stopped(String),
    /// Not written: an earlier commit that this one was validated after failed to reach
    /// the log (see `pipeline`). Nothing of this commit is stored; it may be retried.
    #[error("the write was not stored because an earlier concurrent write failed ({0}); retry it")]
    Aborted(String),
}

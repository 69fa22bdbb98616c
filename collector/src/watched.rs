//! A value read from files and read again when any of their modification times changes:
//! the TLS certificate and key, and the HTTP API's credential files (Kubernetes Secrets and
//! cert-manager rewrite them in place).

use std::path::PathBuf;
use std::time::SystemTime;

/// Reads the value from the files (in the order given).
pub type Reader<T> = fn(&[PathBuf]) -> anyhow::Result<T>;

pub struct Watched<T> {
    paths: Vec<PathBuf>,
    read: Reader<T>,
    seen: Vec<Option<SystemTime>>,
    value: T,
}

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl<T> Watched<T> {
    /// Reads the files now: an error stops the start with its reason.
    pub fn load(paths: Vec<PathBuf>, read: Reader<T>) -> anyhow::Result<Self> {
        let seen = modified(&paths);
        let value = read(&paths)?;
        Ok(Watched {
            paths,
            read,
            seen,
            value,
        })
    }

    /// Reads the files again if any changed; when the new contents cannot be read (a
    /// rotation half written) keeps the old value and says so, and tries again after the
    /// next change. True when the value changed.
    pub fn refresh(&mut self, what: &str) -> bool {
        let now = modified(&self.paths);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        match (self.read)(&self.paths) {
            Ok(v) => {
                self.value = v;
                tracing::info!(files = ?self.paths, "{what} read again");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the changed {what}; keeping the old one");
                false
            }
        }
    }

    pub fn get(&self) -> &T {
        &self.value
    }
}

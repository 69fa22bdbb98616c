//! What the shipper keeps on local disk between runs: the counter baselines of the last
//! batch it queued, the queued batches themselves and the next sequence number, written
//! together in one atomic file replace. Because a batch and the baselines it was computed
//! against are always written in the same replace, and a sequence number is written before
//! the batch carrying it is sent, a SIGKILL at any point neither loses nor double-counts.
//!
//! The kernel's boot id tells a reboot: after one, cumulative /proc counters start again
//! from zero, so the baselines are cleared (the queued batches are kept; they hold counts
//! that happened).
//!
//! A source whose counters live in another process (the Cilium agent) keeps a marker of
//! that process's counter lifetime here too ([`PersistedState::sources`]), written with the
//! baselines it belongs to, so that a restarted shipper can tell whether the counters were
//! reset while it was away.

use crate::queue::Batch;
use crate::series::SeriesKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

const FORMAT_VERSION: u32 = 1;

/// The state file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    pub boot_id: String,
    pub next_sequence: u64,
    /// (series, last cumulative value, when it was last seen in ms).
    pub baselines: Vec<(SeriesKey, f64, i64)>,
    pub pending: Vec<Batch>,
    /// Per source name, what the source needs to judge the baselines after a restart
    /// ([`crate::source::Source::checkpoint`]). Absent in files of older shippers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, String>,
}

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot write state file {path}: {err}; check that its directory exists and is writable"
    )]
    Write { path: PathBuf, err: std::io::Error },
    #[error("cannot read state file {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
}

/// Counter baselines.
#[derive(Debug, Default)]
pub struct Baselines {
    values: HashMap<SeriesKey, (f64, i64)>,
}

impl Baselines {
    /// Turns a cumulative value into the increase since the last one. A value below the
    /// baseline is a counter reset (the counter restarted from zero), so all of it is new.
    pub fn delta(&mut self, key: &SeriesKey, value: f64, now_ms: i64) -> f64 {
        let prev = self
            .values
            .insert(key.clone(), (value, now_ms))
            .map(|(v, _)| v)
            .unwrap_or(0.0);
        if value >= prev {
            value - prev
        } else {
            value
        }
    }

    /// Forgets the baselines of every series of `metric`: its counters restarted from zero,
    /// so the next value of each is all new (including series not reported right now, whose
    /// old baselines would otherwise swallow the first counts after they come back).
    pub fn forget_metric(&mut self, metric: &str) {
        self.values.retain(|k, _| k.metric != metric);
    }

    /// Forgets series not seen for `ttl_ms` (interfaces and sockets come and go).
    pub fn prune(&mut self, now_ms: i64, ttl_ms: i64) {
        self.values.retain(|_, (_, seen)| now_ms - *seen <= ttl_ms);
    }

    pub fn clear(&mut self) {
        self.values.clear();
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Reads the kernel's boot id (changes on every boot).
#[cfg(target_os = "linux")]
pub fn read_boot_id(proc_root: &Path) -> std::io::Result<String> {
    Ok(
        std::fs::read_to_string(proc_root.join("sys/kernel/random/boot_id"))?
            .trim()
            .to_owned(),
    )
}

/// Elsewhere (Windows) there is no boot id to read, so baselines are kept across reboots:
/// the Windows source's node totals start with the shipper, and a per-endpoint counter that
/// restarts lower is taken as a reset ([`Baselines::delta`]). An id that could change
/// without a reboot (one derived from the uptime) would be worse: each change clears the
/// baselines and counts everything since boot again.
#[cfg(not(target_os = "linux"))]
pub fn read_boot_id(_proc_root: &Path) -> std::io::Result<String> {
    Ok("none".to_owned())
}

/// Loads the state file; a missing file is a first start.
/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: a first start.
    Missing,
    /// A state file that cannot be used (damaged, or of an unknown version): the collector
    /// may hold totals up to some push of ours, so counts since boot must not be sent again.
    Unusable,
    State(PersistedState),
}

pub fn load(path: &Path) -> Result<Loaded, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(err) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                err,
            })
        }
    };
    match serde_json::from_str::<PersistedState>(&text) {
        Ok(s) if s.version == FORMAT_VERSION => Ok(Loaded::State(s)),
        Ok(s) => {
            tracing::warn!(path = %path.display(), version = s.version, "state file has an unknown version; starting from the current counter values");
            Ok(Loaded::Unusable)
        }
        Err(e) => {
            // Only possible if the file was edited or the disk corrupted it: writes are
            // atomic replaces.
            tracing::error!(path = %path.display(), error = %e, "state file is corrupt; starting from the current counter values");
            Ok(Loaded::Unusable)
        }
    }
}

/// Writes the state file atomically: temp file, fsync, rename, fsync of the directory.
pub fn save(
    path: &Path,
    boot_id: &str,
    next_sequence: u64,
    baselines: &Baselines,
    sources: &BTreeMap<String, String>,
    pending: impl Iterator<Item = Batch>,
) -> Result<(), StateError> {
    let st = PersistedState {
        version: FORMAT_VERSION,
        boot_id: boot_id.to_owned(),
        next_sequence,
        baselines: baselines
            .values
            .iter()
            .map(|(k, (v, t))| (k.clone(), *v, *t))
            .collect(),
        pending: pending.collect(),
        sources: sources.clone(),
    };
    let werr = |err| StateError::Write {
        path: path.to_owned(),
        err,
    };
    let bytes = serde_json::to_vec(&st).map_err(|e| werr(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
    }
    std::fs::rename(&tmp, path).map_err(werr)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(werr)?;
    }
    Ok(())
}

impl PersistedState {
    /// Baselines to continue from: the stored ones, unless the machine rebooted since.
    pub fn baselines_for_boot(&self, boot_id: &str) -> Baselines {
        if self.boot_id != boot_id {
            tracing::info!(old = %self.boot_id, new = %boot_id, "node rebooted since the last run: counters restart from zero");
            return Baselines::default();
        }
        Baselines {
            values: self
                .baselines
                .iter()
                .map(|(k, v, t)| (k.clone(), (*v, *t)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_resets_and_reboots() {
        let k = SeriesKey::new("m", vec![]);
        let mut b = Baselines::default();
        assert_eq!(b.delta(&k, 10.0, 1), 10.0);
        assert_eq!(b.delta(&k, 15.0, 2), 5.0);
        assert_eq!(b.delta(&k, 3.0, 3), 3.0, "a decrease is a reset");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let marks = BTreeMap::from([("cilium".to_owned(), "mark".to_owned())]);
        save(&path, "boot-a", 9, &b, &marks, std::iter::empty()).unwrap();
        let Loaded::State(st) = load(&path).unwrap() else {
            panic!("state not loaded")
        };
        assert_eq!(st.next_sequence, 9);
        assert_eq!(st.sources, marks);
        let mut same = st.baselines_for_boot("boot-a");
        assert_eq!(same.delta(&k, 4.0, 4), 1.0);
        let mut rebooted = st.baselines_for_boot("boot-b");
        assert_eq!(rebooted.delta(&k, 4.0, 4), 4.0);
        same.prune(100, 10);
        assert!(same.is_empty());
    }

    #[test]
    fn forgetting_a_metric_makes_all_of_its_next_values_new() {
        let fwd = SeriesKey::new("kappie_forward_count", vec![]);
        let drop = SeriesKey::new("kappie_drop_count", vec![]);
        let mut b = Baselines::default();
        b.delta(&fwd, 100.0, 1);
        b.delta(&drop, 50.0, 1);
        b.forget_metric("kappie_forward_count");
        assert_eq!(
            b.delta(&fwd, 120.0, 2),
            120.0,
            "restarted: all of it is new"
        );
        assert_eq!(b.delta(&drop, 60.0, 2), 10.0, "other metrics keep theirs");
    }

    #[test]
    fn a_state_file_without_source_marks_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            br#"{"version":1,"boot_id":"b","next_sequence":3,"baselines":[],"pending":[]}"#,
        )
        .unwrap();
        let Loaded::State(st) = load(&path).unwrap() else {
            panic!("state not loaded")
        };
        assert!(st.sources.is_empty());
    }

    #[test]
    fn corrupt_or_missing_file_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(matches!(load(&path).unwrap(), Loaded::Missing));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(load(&path).unwrap(), Loaded::Unusable));
    }
}

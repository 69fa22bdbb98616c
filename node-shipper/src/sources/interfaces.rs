//! `kappie_interface_stats` from /sys/class/net/<interface>/statistics/<counter>.
//!
//! Every counter file of every interface is reported under its own name (`rx_bytes`,
//! `rx_dropped`, …). ethtool's driver statistics are not read yet (see the README's
//! "not yet" list).

use crate::source::{Observation, Source, SourceError};
use std::path::{Path, PathBuf};

/// Reads one interface's statistics directory into `(statistic, value)` pairs, sorted.
pub fn read_statistics_dir(dir: &Path) -> Result<Vec<(String, f64)>, SourceError> {
    let rd = std::fs::read_dir(dir).map_err(|err| SourceError::Read {
        path: dir.to_owned(),
        err,
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|err| SourceError::Read {
            path: dir.to_owned(),
            err,
        })?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // A counter the driver refuses to read (EOPNOTSUPP/EINVAL), or one that went
            // away with its interface: skip it.
            Err(_) => continue,
        };
        let v: u64 = text.trim().parse().map_err(|_| SourceError::Parse {
            path: path.clone(),
            msg: format!("{:?} is not an integer", text.trim()),
        })?;
        out.push((name, v as f64));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The source.
pub struct InterfacesSource {
    sys_root: PathBuf,
}

impl InterfacesSource {
    pub fn new(sys_root: PathBuf) -> Self {
        InterfacesSource { sys_root }
    }
}

impl Source for InterfacesSource {
    fn name(&self) -> &'static str {
        "interfaces"
    }

    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        let net = self.sys_root.join("class/net");
        let rd = std::fs::read_dir(&net).map_err(|err| SourceError::Read {
            path: net.clone(),
            err,
        })?;
        for entry in rd {
            let entry = entry.map_err(|err| SourceError::Read {
                path: net.clone(),
                err,
            })?;
            let ifname = entry.file_name().to_string_lossy().into_owned();
            let stats = match read_statistics_dir(&entry.path().join("statistics")) {
                Ok(s) => s,
                // The interface went away between listing and reading.
                Err(SourceError::Read { err, .. })
                    if err.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            for (stat, v) in stats {
                out.push(Observation::counter(
                    "kappie_interface_stats",
                    vec![("interface_name", ifname.clone()), ("statistic_name", stat)],
                    v,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_captured_statistics() {
        let sys = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sys");
        let mut out = Vec::new();
        InterfacesSource::new(sys.clone())
            .collect(&mut out)
            .unwrap();
        for ifname in ["lo", "eth0"] {
            let expected: f64 = std::fs::read_to_string(
                sys.join(format!("class/net/{ifname}/statistics/rx_bytes")),
            )
            .unwrap()
            .trim()
            .parse()
            .unwrap();
            let got = out
                .iter()
                .find(|o| {
                    o.labels
                        == vec![
                            ("interface_name", ifname.to_owned()),
                            ("statistic_name", "rx_bytes".to_owned()),
                        ]
                })
                .unwrap();
            assert_eq!(got.value, expected);
        }
        assert_eq!(
            out.len(),
            2 * 24,
            "24 counters per interface in the fixture"
        );
        let mut missing = InterfacesSource::new(sys.join("does-not-exist"));
        assert!(
            missing.collect(&mut Vec::new()).is_err(),
            "a missing sysfs is an error, not silence"
        );
    }
}

//! `kappie_interface_stats` from /sys/class/net/<interface>/statistics/<counter> and from
//! the interface's driver statistics, the ones `ethtool -S` prints ([`super::ethtool`]).
//!
//! Every counter file of every interface is reported under its own name (`rx_bytes`,
//! `rx_dropped`, …), and every driver statistic under the name `ethtool -S` prints, except:
//! - a driver statistic named like one of the interface's sysfs counters (drivers often
//!   repeat `rx_packets`, `rx_dropped`, … in their own set): the sysfs value is kept and the
//!   driver's left out. sysfs is the kernel's one definition of those counters for every
//!   driver, which dashboards compare across interfaces; a prefixed copy would be a name
//!   `ethtool -S` does not print, and one label set with two values is no counter;
//! - a name the driver repeats in its own set: the first is kept;
//! - statistics that are not counts ([`NOT_COUNTERS`], veth's `peer_ifindex`), and empty
//!   names.
//!
//! The interfaces are those sysfs lists. Their driver statistics are read by name in the
//! shipper's own network namespace, and only for an interface whose sysfs `ifindex` is the
//! index of that name there: a sysfs of another namespace (or a fixture without `ifindex`)
//! gets no other interface's statistics. An interface without driver statistics (loopback)
//! just has none.

use super::ethtool::{DriverStats, Ethtool, NOT_COUNTERS};
use crate::source::{Observation, Source, SourceError};
use std::collections::HashSet;
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

/// The driver statistics of one interface that `kappie_interface_stats` reports, given that
/// interface's sysfs counters: see the module doc for what is left out and why.
pub fn driver_counters(sysfs: &[(String, f64)], driver: Vec<(String, u64)>) -> Vec<(String, f64)> {
    let mut seen = HashSet::new();
    driver
        .into_iter()
        .filter(|(name, _)| {
            !name.is_empty()
                && !NOT_COUNTERS.contains(&name.as_str())
                && !sysfs.iter().any(|(s, _)| s == name)
                && seen.insert(name.clone())
        })
        .map(|(name, v)| (name, v as f64))
        .collect()
}

/// The source.
pub struct InterfacesSource {
    sys_root: PathBuf,
    driver: Box<dyn DriverStats>,
}

impl InterfacesSource {
    /// sysfs under `sys_root`, driver statistics from the ethtool ioctl.
    pub fn new(sys_root: PathBuf) -> Self {
        Self::with_driver_stats(sys_root, Box::new(Ethtool::new()))
    }

    pub fn with_driver_stats(sys_root: PathBuf, driver: Box<dyn DriverStats>) -> Self {
        InterfacesSource { sys_root, driver }
    }
}

impl Source for InterfacesSource {
    fn name(&self) -> &'static str {
        "interfaces"
    }

    /// Reports every interface it can; a driver that fails is reported as the error after
    /// all the rest (its sysfs counters included) is in `out`.
    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        let net = self.sys_root.join("class/net");
        let rd = std::fs::read_dir(&net).map_err(|err| SourceError::Read {
            path: net.clone(),
            err,
        })?;
        let mut present = HashSet::new();
        let mut driver_error = None;
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
            let ifindex = std::fs::read_to_string(entry.path().join("ifindex"))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            let driver = match ifindex.map(|i| self.driver.read(&ifname, i)) {
                Some(Ok(d)) => driver_counters(&stats, d),
                Some(Err(e)) => {
                    driver_error.get_or_insert(e);
                    Vec::new()
                }
                None => Vec::new(),
            };
            for (stat, v) in stats.into_iter().chain(driver) {
                out.push(Observation::counter(
                    "kappie_interface_stats",
                    vec![("interface_name", ifname.clone()), ("statistic_name", stat)],
                    v,
                ));
            }
            present.insert(ifname);
        }
        self.driver.forget_except(&present);
        driver_error.map_or(Ok(()), Err)
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

    fn stats(names: &[(&str, u64)]) -> Vec<(String, u64)> {
        names.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn a_driver_statistic_named_like_a_sysfs_counter_keeps_the_sysfs_value() {
        let sysfs = vec![
            ("rx_dropped".to_owned(), 3.0),
            ("rx_packets".to_owned(), 9.0),
        ];
        let driver = stats(&[
            ("rx_dropped", 5),
            ("rx_queue_0_drops", 2),
            ("rx_packets", 1),
        ]);
        assert_eq!(
            driver_counters(&sysfs, driver),
            vec![("rx_queue_0_drops".to_owned(), 2.0)]
        );
    }

    #[test]
    fn non_counters_repeated_and_empty_names_are_left_out() {
        let driver = stats(&[
            ("peer_ifindex", 7),
            ("tx_kicks", 4),
            ("", 1),
            ("tx_kicks", 99),
            ("rx_kicks", 0),
        ]);
        assert_eq!(
            driver_counters(&[], driver),
            vec![("tx_kicks".to_owned(), 4.0), ("rx_kicks".to_owned(), 0.0)],
            "the first of a repeated name is kept, in the driver's order"
        );
    }

    /// What a driver answers: its statistics, or `Err` for a failure.
    type Reply = Result<Vec<(String, u64)>, ()>;

    /// Driver statistics by interface name and index.
    struct Table(Vec<(&'static str, i32, Reply)>);

    impl DriverStats for Table {
        fn read(&mut self, ifname: &str, ifindex: i32) -> Result<Vec<(String, u64)>, SourceError> {
            match self
                .0
                .iter()
                .find(|(n, i, _)| *n == ifname && *i == ifindex)
            {
                Some((_, _, Ok(s))) => Ok(s.clone()),
                Some((_, _, Err(()))) => Err(SourceError::Ioctl {
                    what: format!("ethtool ETHTOOL_GSTATS on {ifname}"),
                    err: std::io::Error::from_raw_os_error(libc::EIO),
                }),
                None => Ok(Vec::new()),
            }
        }
    }

    fn sysfs_interface(root: &Path, ifname: &str, ifindex: Option<i32>) {
        let dir = root.join("class/net").join(ifname);
        std::fs::create_dir_all(dir.join("statistics")).unwrap();
        std::fs::write(dir.join("statistics/rx_bytes"), "10\n").unwrap();
        if let Some(i) = ifindex {
            std::fs::write(dir.join("ifindex"), format!("{i}\n")).unwrap();
        }
    }

    fn value(out: &[Observation], ifname: &str, stat: &str) -> Option<f64> {
        out.iter()
            .find(|o| o.labels[0].1 == ifname && o.labels[1].1 == stat)
            .map(|o| o.value)
    }

    #[test]
    fn driver_statistics_are_reported_beside_sysfs_and_a_failing_driver_after_the_rest() {
        let root = tempfile::tempdir().unwrap();
        sysfs_interface(root.path(), "veth0", Some(4));
        sysfs_interface(root.path(), "broken0", Some(5));
        sysfs_interface(root.path(), "noindex0", None);
        let mut src = InterfacesSource::with_driver_stats(
            root.path().to_owned(),
            Box::new(Table(vec![
                (
                    "veth0",
                    4,
                    Ok(stats(&[("peer_ifindex", 3), ("rx_queue_0_drops", 6)])),
                ),
                ("broken0", 5, Err(())),
                ("noindex0", 6, Ok(stats(&[("tx_kicks", 1)]))),
            ])),
        );
        let mut out = Vec::new();
        let err = src.collect(&mut out).unwrap_err();
        assert!(err.to_string().contains("broken0"), "{err}");
        assert_eq!(value(&out, "veth0", "rx_queue_0_drops"), Some(6.0));
        assert_eq!(value(&out, "veth0", "peer_ifindex"), None);
        for ifname in ["veth0", "broken0", "noindex0"] {
            assert_eq!(value(&out, ifname, "rx_bytes"), Some(10.0), "{ifname}");
        }
        assert_eq!(
            value(&out, "noindex0", "tx_kicks"),
            None,
            "without its sysfs ifindex an interface is not looked up by name"
        );
        assert!(out.iter().all(
            |o| o.metric == "kappie_interface_stats" && o.kind == crate::series::Kind::Counter
        ));
    }
}

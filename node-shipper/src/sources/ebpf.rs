//! The eBPF dataplane source: `kappie_forward_count/bytes` and `kappie_tcp_flag_counters`
//! from tc programs on the chosen interfaces (tcx where the kernel has it, clsact
//! otherwise), `kappie_drop_count/bytes` from `tp_btf/kfree_skb` with the kernel's own drop
//! reason names read from its BTF. Maps are per-CPU and pinned under `pin_dir` (bpffs), so
//! counts survive a shipper restart; programs are detached when the source is dropped.
//!
//! Loading reads as one sequence per object: load, find program, attach; each step says
//! what to do when it fails.

use crate::source::{Observation, Source, SourceError};
use aya::maps::{Map, PerCpuHashMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{tc, BtfTracePoint, SchedClassifier, TcAttachType, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use kappie_ebpf::{Counter, DropKey, ForwardKey, ForwardValue, DIR_EGRESS, DIR_INGRESS, TCP_FLAGS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What to attach where.
#[derive(Debug, Clone)]
pub struct EbpfConfig {
    /// Interface names to count forwards and TCP flags on.
    pub interfaces: Vec<String>,
    /// bpffs directory for the pinned maps.
    pub pin_dir: PathBuf,
    /// Count drops (`tp_btf/kfree_skb`).
    pub drops: bool,
    /// Use the `skb:kfree_skb` tracepoint even where `tp_btf` works (it is the fallback
    /// where BTF programs are not allowed).
    pub drops_tracepoint: bool,
}

/// Why eBPF could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("{step}: {source}; {hint}")]
    Step {
        step: String,
        hint: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(super) fn step<E: std::error::Error + Send + Sync + 'static>(
    step: impl Into<String>,
    hint: &'static str,
) -> impl FnOnce(E) -> EbpfError {
    let step = step.into();
    move |e| EbpfError::Step {
        step,
        hint,
        source: Box::new(e),
    }
}

/// A TCP flag counter's key in a [`Snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlagKey {
    pub ifindex: u32,
    pub direction: u32,
    /// Bit number, an index into [`TCP_FLAGS`].
    pub flag: u32,
}

/// Sums of the per-CPU counters, by map key.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub forward: HashMap<ForwardKey, Counter>,
    pub flags: HashMap<FlagKey, u64>,
    pub drops: HashMap<DropKey, Counter>,
}

/// The source.
pub struct EbpfSource {
    forward: Ebpf,
    drops: Option<Ebpf>,
    reasons: HashMap<u32, String>,
    ifindexes: Vec<u32>,
    /// Attachments pinned in bpffs: they outlive this process (a SIGKILLed shipper's
    /// programs go on counting into the pinned maps) until [`EbpfSource::detach`].
    links: Vec<(PathBuf, PinnedLink)>,
}

fn ifindex(name: &str) -> Result<u32, EbpfError> {
    let c = std::ffi::CString::new(name)
        .map_err(step("interface name", "interface names have no NUL bytes"))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(step(
            format!("find interface {name}"),
            "check --ebpf-interfaces",
        )(std::io::Error::last_os_error())),
        i => Ok(i),
    }
}

impl EbpfSource {
    /// Loads the programs, attaches them and opens (or reuses) the pinned maps.
    pub fn start(config: &EbpfConfig) -> Result<Self, EbpfError> {
        super::kernelfs::ensure_bpffs(&config.pin_dir)?;
        let mut forward = EbpfLoader::new()
            .map_pin_path(&config.pin_dir)
            .load(kappie_ebpf::forward_object())
            .map_err(step("load forward.bpf.o", "the kernel needs BPF and CAP_BPF/CAP_NET_ADMIN; if pinned maps of an older Kappie exist, remove the pin directory"))?;
        let mut ifindexes = Vec::new();
        let mut links = Vec::new();
        for (name, attach) in [
            ("kappie_tc_ingress", TcAttachType::Ingress),
            ("kappie_tc_egress", TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = program(&mut forward, name)?;
            prog.load().map_err(step(
                format!("load program {name}"),
                "the verifier refused it; see the error",
            ))?;
            for iface in &config.interfaces {
                if attach == TcAttachType::Ingress {
                    ifindexes.push(ifindex(iface)?);
                }
                let pin = config.pin_dir.join(format!("link-{name}-{iface}"));
                if reuse_pinned(&pin, &mut links) {
                    continue;
                }
                let id = match prog.attach(iface, attach) {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::info!(interface = %iface, error = %e, "tcx attach failed (kernel lacks tcx?); falling back to clsact, which cannot outlive a killed shipper");
                        if let Err(e) = tc::qdisc_add_clsact(iface) {
                            if e.kind() != std::io::ErrorKind::AlreadyExists {
                                return Err(step(
                                    format!("add clsact qdisc to {iface}"),
                                    "the shipper needs CAP_NET_ADMIN",
                                )(e));
                            }
                        }
                        prog.attach_with_options(
                            iface,
                            attach,
                            tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
                        )
                        .map_err(step(
                            format!("attach {name} to {iface}"),
                            "the shipper needs CAP_NET_ADMIN and CAP_BPF",
                        ))?
                    }
                };
                let link = prog
                    .take_link(id)
                    .map_err(step(format!("take link of {name}"), "report this"))?;
                match FdLink::try_from(link) {
                    Ok(fd) => pin_link(fd, pin, &mut links)?,
                    // A netlink (clsact) attachment has no link to pin; keep it alive here.
                    Err(e) => tracing::debug!(error = %e, "clsact attachment not pinned"),
                }
            }
        }
        let (drops, reasons) = if config.drops {
            let reasons =
                super::btf::drop_reasons(Path::new("/sys/kernel/btf/vmlinux")).map_err(|e| {
                    step(
                        "read drop reasons from BTF",
                        "the kernel needs CONFIG_DEBUG_INFO_BTF",
                    )(std::io::Error::other(e))
                })?;
            let btf = Btf::from_sys_fs().map_err(step(
                "load kernel BTF",
                "the kernel needs CONFIG_DEBUG_INFO_BTF",
            ))?;
            let mut drops = EbpfLoader::new()
                .map_pin_path(&config.pin_dir)
                .btf(Some(&btf))
                .load(kappie_ebpf::drops_object())
                .map_err(step(
                    "load drops.bpf.o",
                    "the kernel needs BTF programs (tp_btf)",
                ))?;
            let attached = if config.drops_tracepoint {
                Err(step("tp_btf/kfree_skb", "")(std::io::Error::other(
                    "tracepoint forced by configuration",
                )))
            } else {
                attach_kfree_skb_btf(&mut drops, &btf, &config.pin_dir, &mut links)
            };
            if let Err(e) = attached {
                tracing::info!(error = %e, "tp_btf/kfree_skb unavailable; falling back to the skb:kfree_skb tracepoint");
                attach_kfree_skb_tracepoint(&mut drops, &config.pin_dir, &mut links)?;
            }
            (Some(drops), reasons)
        } else {
            (None, HashMap::new())
        };
        tracing::info!(interfaces = ?config.interfaces, drops = config.drops, pin_dir = %config.pin_dir.display(), "eBPF programs attached");
        Ok(EbpfSource {
            forward,
            drops,
            reasons,
            ifindexes,
            links,
        })
    }

    /// Detaches every program (on SIGTERM). The pinned maps stay, so a later start
    /// continues from the same counters. Dropping the source without this (or a SIGKILL)
    /// leaves the pinned programs counting.
    pub fn detach(self) {
        for (pin, link) in self.links {
            match link.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), error = %e, "cannot unpin eBPF link; remove it by hand to detach")
                }
            }
        }
        tracing::info!("eBPF programs detached");
    }

    /// Sums of every counter, by key (all interfaces and namespaces).
    pub fn snapshot(&self) -> Result<Snapshot, aya::maps::MapError> {
        let mut s = Snapshot::default();
        let sum = |v: &[Counter]| {
            v.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
        };
        if let Some(m) = self.forward.map("kappie_forward") {
            let m: PerCpuHashMap<&aya::maps::MapData, ForwardKey, ForwardValue> = map_ref(m)?;
            for kv in m.iter() {
                let (k, per_cpu) = kv?;
                let mut c = Counter::default();
                for v in per_cpu.iter() {
                    c.packets += v.packets;
                    c.bytes += v.bytes;
                    for (flag, n) in v.flags.iter().enumerate() {
                        let key = FlagKey {
                            ifindex: k.ifindex,
                            direction: k.direction,
                            flag: flag as u32,
                        };
                        *s.flags.entry(key).or_default() += n;
                    }
                }
                s.forward.insert(k, c);
            }
        }
        if let Some(m) = self.drops.as_ref().and_then(|d| d.map("kappie_drops")) {
            let m: PerCpuHashMap<&aya::maps::MapData, DropKey, Counter> = map_ref(m)?;
            for kv in m.iter() {
                let (k, v) = kv?;
                s.drops.insert(k, sum(&v));
            }
        }
        Ok(s)
    }

    /// Run time and run count of each program this source loaded, from the kernel's BPF
    /// statistics (counted only while `kernel.bpf_stats_enabled` is 1).
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        let mut out = Vec::new();
        for ebpf in std::iter::once(&self.forward).chain(self.drops.as_ref()) {
            for (name, prog) in ebpf.programs() {
                if let Ok(info) = prog.info() {
                    out.push((name.to_owned(), info.run_time(), info.run_count()));
                }
            }
        }
        out
    }

    pub fn reason_name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("UNKNOWN_{reason}"))
    }
}

/// Program `name` of `obj` as its type `T`.
fn program<'a, T>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    obj.program_mut(name)
        .ok_or_else(|| {
            step(
                format!("find program {name}"),
                "the embedded object is broken; rebuild with ebpf/build.sh",
            )(std::io::Error::other("missing"))
        })?
        .try_into()
        .map_err(step(
            format!("program {name}"),
            "the embedded object is broken; rebuild with ebpf/build.sh",
        ))
}

/// Pins `link` at `pin` so the attachment outlives the shipper.
fn pin_link(
    link: FdLink,
    pin: PathBuf,
    links: &mut Vec<(PathBuf, PinnedLink)>,
) -> Result<(), EbpfError> {
    let pinned = link.pin(&pin).map_err(step(
        format!("pin {}", pin.display()),
        "check that bpffs is writable",
    ))?;
    links.push((pin, pinned));
    Ok(())
}

/// Keeps the link a previous shipper pinned at `pin` (still counting), if there is one.
fn reuse_pinned(pin: &Path, links: &mut Vec<(PathBuf, PinnedLink)>) -> bool {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            links.push((pin.to_owned(), link));
            true
        }
        Err(_) => false,
    }
}

fn attach_kfree_skb_btf(
    drops: &mut Ebpf,
    btf: &Btf,
    pin_dir: &Path,
    links: &mut Vec<(PathBuf, PinnedLink)>,
) -> Result<(), EbpfError> {
    let pin = pin_dir.join("link-kappie_kfree_skb");
    if reuse_pinned(&pin, links) {
        return Ok(());
    }
    let prog: &mut BtfTracePoint = program(drops, "kappie_kfree_skb")?;
    prog.load("kfree_skb", btf).map_err(step(
        "load tp_btf/kfree_skb",
        "the kernel refused a BTF program",
    ))?;
    let id = prog.attach().map_err(step(
        "attach tp_btf/kfree_skb",
        "the shipper needs CAP_BPF and CAP_PERFMON",
    ))?;
    let link = prog
        .take_link(id)
        .map_err(step("take link of kappie_kfree_skb", "report this"))?;
    pin_link(FdLink::from(link), pin, links)
}

fn attach_kfree_skb_tracepoint(
    drops: &mut Ebpf,
    pin_dir: &Path,
    links: &mut Vec<(PathBuf, PinnedLink)>,
) -> Result<(), EbpfError> {
    let pin = pin_dir.join("link-kappie_kfree_skb_tp");
    if reuse_pinned(&pin, links) {
        return Ok(());
    }
    let prog: &mut TracePoint = program(drops, "kappie_kfree_skb_tp")?;
    prog.load().map_err(step(
        "load tracepoint skb:kfree_skb",
        "the verifier refused it; see the error",
    ))?;
    super::kernelfs::ensure_tracefs()?;
    let id = prog.attach("skb", "kfree_skb").map_err(step(
        "attach tracepoint skb:kfree_skb",
        "the shipper needs CAP_BPF and CAP_PERFMON",
    ))?;
    let link = prog
        .take_link(id)
        .map_err(step("take link of kappie_kfree_skb_tp", "report this"))?;
    match FdLink::try_from(link) {
        Ok(fd) => pin_link(fd, pin, links)?,
        Err(e) => {
            tracing::info!(error = %e, "tracepoint attachment cannot be pinned on this kernel; it ends with the shipper")
        }
    }
    Ok(())
}

fn map_ref<K: aya::Pod, V: aya::Pod>(
    m: &Map,
) -> Result<PerCpuHashMap<&aya::maps::MapData, K, V>, aya::maps::MapError> {
    PerCpuHashMap::try_from(m)
}

fn direction(d: u32) -> &'static str {
    match d {
        DIR_INGRESS => "ingress",
        DIR_EGRESS => "egress",
        _ => "unknown",
    }
}

impl Source for EbpfSource {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn shutdown(self: Box<Self>) {
        self.detach();
    }

    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        let s = self.snapshot().map_err(|e| SourceError::Parse {
            path: PathBuf::from("bpf maps"),
            msg: e.to_string(),
        })?;
        let mut fwd: HashMap<u32, Counter> = HashMap::new();
        for (k, c) in &s.forward {
            if self.ifindexes.contains(&k.ifindex) {
                let e = fwd.entry(k.direction).or_default();
                e.packets += c.packets;
                e.bytes += c.bytes;
            }
        }
        for d in [DIR_INGRESS, DIR_EGRESS] {
            let c = fwd.get(&d).copied().unwrap_or_default();
            out.push(Observation::counter(
                "kappie_forward_count",
                vec![("direction", direction(d).into())],
                c.packets as f64,
            ));
            out.push(Observation::counter(
                "kappie_forward_bytes",
                vec![("direction", direction(d).into())],
                c.bytes as f64,
            ));
        }
        let mut flags: HashMap<(u32, u32), u64> = HashMap::new();
        for (k, n) in &s.flags {
            if self.ifindexes.contains(&k.ifindex) {
                *flags.entry((k.flag, k.direction)).or_default() += n;
            }
        }
        for ((flag, d), n) in flags {
            let name = TCP_FLAGS.get(flag as usize).copied().unwrap_or("UNKNOWN");
            out.push(Observation::counter(
                "kappie_tcp_flag_counters",
                vec![("flag", name.into()), ("direction", direction(d).into())],
                n as f64,
            ));
        }
        let mut drops: HashMap<(u32, u32), Counter> = HashMap::new();
        for (k, c) in &s.drops {
            let e = drops.entry((k.reason, k.direction)).or_default();
            e.packets += c.packets;
            e.bytes += c.bytes;
        }
        for ((reason, d), c) in drops {
            let labels = vec![
                ("reason", self.reason_name(reason)),
                ("direction", direction(d).into()),
            ];
            out.push(Observation::counter(
                "kappie_drop_count",
                labels.clone(),
                c.packets as f64,
            ));
            out.push(Observation::counter(
                "kappie_drop_bytes",
                labels,
                c.bytes as f64,
            ));
        }
        Ok(())
    }
}

/// Interfaces that carry a default route (IPv4 from `net/route`, IPv6 from
/// `net/ipv6_route` under `proc_root`).
pub fn default_route_interfaces(proc_root: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Ok(t) = std::fs::read_to_string(proc_root.join("net/route")) {
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                out.push(f[0].to_owned());
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string(proc_root.join("net/ipv6_route")) {
        for l in t.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
                out.push(f[9].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Expands names and `prefix*` patterns against the interfaces in `sys_root/class/net`.
pub fn expand_interfaces(patterns: &[String], sys_root: &Path) -> Vec<String> {
    let present: Vec<String> = std::fs::read_dir(sys_root.join("class/net"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<String> = present
        .into_iter()
        .filter(|i| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => i.starts_with(prefix),
                None => i == p,
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_routes_and_patterns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net")).unwrap();
        std::fs::write(
            dir.path().join("net/route"),
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("net/ipv6_route"),
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth2\n\
             fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0\n",
        )
        .unwrap();
        assert_eq!(
            super::default_route_interfaces(dir.path()),
            vec!["eth0", "eth2"]
        );
        for i in ["eth0", "eth1", "veth9", "lo"] {
            std::fs::create_dir_all(dir.path().join("class/net").join(i)).unwrap();
        }
        let pats = vec!["eth*".to_string(), "lo".to_string(), "missing".to_string()];
        assert_eq!(
            super::expand_interfaces(&pats, dir.path()),
            vec!["eth0", "eth1", "lo"]
        );
    }
}

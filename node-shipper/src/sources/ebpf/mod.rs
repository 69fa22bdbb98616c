//! The eBPF dataplane source: `kappie_forward_count/bytes` and `kappie_tcp_flag_counters`
//! from tc programs on the chosen interfaces (tcx where the kernel has it, clsact
//! otherwise), `kappie_drop_count/bytes` from `tp_btf/kfree_skb` with the kernel's own drop
//! reason names read from its BTF. Maps are per-CPU and pinned under `pin_dir` (bpffs), so
//! counts survive a shipper restart; programs are detached when the source is dropped.
//!
//! Loading reads as one sequence per object: load, find program, attach; each step says
//! what to do when it fails.

mod attach;
mod errors;

pub use attach::{Attachment, EbpfPrograms, ProgramRuns};
pub(crate) use errors::{kernel_step, step};
pub use errors::{needs, EbpfError};

use crate::source::{Observation, Source, SourceError};
use attach::{
    attach_kfree_skb_btf, attach_kfree_skb_tracepoint, attach_tc, program, release, reuse_pinned,
    Attached,
};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};
use kappie_ebpf::{
    Counter, DropKey, ForwardKey, ForwardValue, DIR_EGRESS, DIR_INGRESS, FORWARD_SLOTS, TCP_FLAGS,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Report `kappie_forward_count/bytes` (off on Cilium nodes, where Cilium's counts are
    /// the forward counts and the tc programs are there for the TCP flags only).
    pub forward: bool,
    /// Attach the tc programs with tcx only, never through a clsact qdisc (on Cilium nodes:
    /// tcx runs several programs on one hook in order, Kappie's first; a tc filter of
    /// Kappie's in a qdisc Cilium manages is not known to be safe).
    pub tcx_only: bool,
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
    /// Report `kappie_forward_*` ([`EbpfConfig::forward`]).
    report_forward: bool,
    drops: Option<Ebpf>,
    reasons: HashMap<u32, String>,
    ifindexes: Vec<u32>,
    /// Attachments pinned in bpffs outlive this process (a SIGKILLed shipper's programs go
    /// on counting into the pinned maps) until [`EbpfSource::detach`].
    attached: Vec<Attached>,
    programs: EbpfPrograms,
}

/// What [`EbpfSource::start`] loads before the source is whole.
struct Loaded {
    forward: Ebpf,
    drops: Option<Ebpf>,
    reasons: HashMap<u32, String>,
    ifindexes: Vec<u32>,
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
    /// Loads the programs, attaches them and opens (or reuses) the pinned maps. On an
    /// error, what this call attached is detached again (a shipper that goes on without
    /// eBPF leaves nothing counting that nobody reads); links an earlier shipper pinned
    /// stay.
    pub fn start(config: &EbpfConfig) -> Result<Self, EbpfError> {
        super::kernelfs::ensure_bpffs(&config.pin_dir)?;
        let mut attached = Vec::new();
        let loaded = load_and_attach(config, &mut attached);
        // Loading parsed the kernel's BTF three times (5 MiB of vmlinux BTF, some 25 MiB
        // at the peak), all freed by now; glibc keeps freed heap for reuse and would hold
        // it for the life of the process (measured: 36 MiB RSS without this, 13 with).
        trim_heap();
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                release(attached.into_iter().filter(|a| !a.what.reused));
                return Err(e);
            }
        };
        let programs = EbpfPrograms(Arc::new(
            attached
                .iter()
                .map(|a| (a.what.clone(), a.prog_pin.clone()))
                .collect(),
        ));
        tracing::info!(interfaces = ?config.interfaces, drops = config.drops, pin_dir = %config.pin_dir.display(),
            hooks = ?attached.iter().map(|a| a.what.hook).collect::<Vec<_>>(), "eBPF programs attached");
        Ok(EbpfSource {
            forward: loaded.forward,
            report_forward: config.forward,
            drops: loaded.drops,
            reasons: loaded.reasons,
            ifindexes: loaded.ifindexes,
            attached,
            programs,
        })
    }

    /// Detaches every program (on SIGTERM). The pinned maps stay, so a later start
    /// continues from the same counters. Dropping the source without this (or a SIGKILL)
    /// leaves the pinned programs counting.
    pub fn detach(self) {
        release(self.attached);
        tracing::info!("eBPF programs detached");
    }

    /// What this source attached, for the shipper's own metrics.
    pub fn programs(&self) -> EbpfPrograms {
        self.programs.clone()
    }

    /// Sums of every counter, by key: forward and flag counters of the interfaces this source
    /// attached to (the only ones its programs count; slots of an array are read by index),
    /// drops of all interfaces and namespaces.
    pub fn snapshot(&self) -> Result<Snapshot, aya::maps::MapError> {
        let mut s = Snapshot::default();
        let sum = |v: &[Counter]| {
            v.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
        };
        let mut add_forward = |k: ForwardKey, per_cpu: &[ForwardValue]| {
            let c = s.forward.entry(k).or_default();
            for v in per_cpu {
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
        };
        // Interfaces at or above FORWARD_SLOTS; and below it, what a Kappie before the
        // array counted into this pinned map (or an attachment of it still running): summed
        // with the array's slot so the counter goes on.
        if let Some(m) = self.forward.map("kappie_forward") {
            let m: PerCpuHashMap<&MapData, ForwardKey, ForwardValue> = PerCpuHashMap::try_from(m)?;
            for kv in m.iter() {
                let (k, per_cpu) = kv?;
                add_forward(k, &per_cpu);
            }
        }
        if let Some(m) = self.forward.map("kappie_forward_slots") {
            let m: PerCpuArray<&MapData, ForwardValue> = PerCpuArray::try_from(m)?;
            let mut ifindexes = self.ifindexes.clone();
            ifindexes.sort_unstable();
            ifindexes.dedup();
            for ifindex in ifindexes.into_iter().filter(|i| *i < FORWARD_SLOTS) {
                for direction in [DIR_INGRESS, DIR_EGRESS] {
                    let per_cpu = m.get(&(ifindex * 2 + direction), 0)?;
                    add_forward(ForwardKey { ifindex, direction }, &per_cpu);
                }
            }
        }
        if let Some(m) = self.drops.as_ref().and_then(|d| d.map("kappie_drops")) {
            let m: PerCpuHashMap<&MapData, DropKey, Counter> = PerCpuHashMap::try_from(m)?;
            for kv in m.iter() {
                let (k, v) = kv?;
                s.drops.insert(k, sum(&v));
            }
        }
        Ok(s)
    }

    /// Run time and run count of each attached program, from the kernel's BPF statistics
    /// (counted only while `kernel.bpf_stats_enabled` is 1).
    pub fn program_stats(&self) -> Vec<(String, Duration, u64)> {
        self.programs
            .runs()
            .into_iter()
            .map(|r| (r.program.to_owned(), r.run_time, r.run_count))
            .collect()
    }

    pub fn reason_name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("UNKNOWN_{reason}"))
    }
}

/// Returns the heap memory the process freed to the kernel (glibc's `malloc_trim`).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases the allocator's free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, read once for the loaders, the `tp_btf` attach and the drop
/// reason names. aya 0.13's `EbpfLoader::new()` parses it once more for each loader all the
/// same (before `.btf()` replaces that parse; it has no constructor without it), so this
/// saves a read of the file, not a parse: what returns the memory is [`trim_heap`].
struct KernelBtf {
    /// aya's parse, or why there is none (the forward programs load without it).
    btf: Result<Btf, String>,
    /// Drop reason names, when drops are counted.
    reasons: Result<HashMap<u32, String>, String>,
}

impl KernelBtf {
    fn read(drops: bool) -> KernelBtf {
        let raw = std::fs::read(VMLINUX).map_err(|e| format!("cannot read {VMLINUX}: {e}"));
        let btf = raw.as_ref().map_err(Clone::clone).and_then(|b| {
            Btf::parse(b, Endianness::default()).map_err(|e| format!("cannot parse {VMLINUX}: {e}"))
        });
        let reasons = match (&raw, drops) {
            (_, false) => Ok(HashMap::new()),
            (Ok(b), true) => super::btf::drop_reasons_in(b),
            (Err(e), true) => Err(e.clone()),
        };
        KernelBtf { btf, reasons }
    }
}

/// The load, find program, attach sequence of both objects; each attachment is added to
/// `attached` as soon as it exists, so that the caller can undo it on an error.
fn load_and_attach(config: &EbpfConfig, attached: &mut Vec<Attached>) -> Result<Loaded, EbpfError> {
    let kernel = KernelBtf::read(config.drops);
    let mut forward = EbpfLoader::new()
        .btf(kernel.btf.as_ref().ok())
        .map_pin_path(&config.pin_dir)
        .load(kappie_ebpf::forward_object())
        .map_err(kernel_step(
            "loading forward.bpf.o (its maps and BTF)",
            needs::MAPS,
            "if pinned maps of an older Kappie exist, remove the pin directory",
            None,
        ))?;
    let ifindexes = config
        .interfaces
        .iter()
        .map(|i| ifindex(i))
        .collect::<Result<Vec<_>, _>>()?;
    // The tc programs are loaded only to be attached: with no interface, not at all.
    let tc = [
        ("kappie_tc_ingress", TcAttachType::Ingress),
        ("kappie_tc_egress", TcAttachType::Egress),
    ];
    for (name, attach) in tc.into_iter().filter(|_| !config.interfaces.is_empty()) {
        let prog: &mut SchedClassifier = program(&mut forward, name)?;
        prog.load().map_err(kernel_step(
            format!("loading the tc program {name}"),
            needs::TC_LOAD,
            "the verifier refused it; see its log",
            None,
        ))?;
        for iface in &config.interfaces {
            let suffix = format!("{name}-{iface}");
            if let Some(a) = reuse_pinned(&config.pin_dir, &suffix, name, Some(iface), "tcx") {
                attached.push(a);
                continue;
            }
            attached.push(attach_tc(
                prog,
                name,
                iface,
                attach,
                &config.pin_dir,
                &suffix,
                config.tcx_only,
            )?);
        }
    }
    let (drops, reasons) = if config.drops {
        let KernelBtf { btf, reasons } = kernel;
        let reasons = reasons.map_err(|e| {
            step(
                "read drop reasons from BTF",
                "the kernel needs CONFIG_DEBUG_INFO_BTF",
            )(std::io::Error::other(e))
        })?;
        let btf = btf.map_err(|e| {
            step("load kernel BTF", "the kernel needs CONFIG_DEBUG_INFO_BTF")(
                std::io::Error::other(e),
            )
        })?;
        let mut drops = EbpfLoader::new()
            .map_pin_path(&config.pin_dir)
            .btf(Some(&btf))
            .load(kappie_ebpf::drops_object())
            .map_err(kernel_step(
                "loading drops.bpf.o (its maps and BTF)",
                needs::MAPS,
                "the kernel needs BTF programs (tp_btf)",
                None,
            ))?;
        let a = if config.drops_tracepoint {
            attach_kfree_skb_tracepoint(&mut drops, &config.pin_dir)?
        } else {
            match attach_kfree_skb_btf(&mut drops, &btf, &config.pin_dir) {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!(error = %e, "tp_btf/kfree_skb unavailable; falling back to the skb:kfree_skb tracepoint");
                    attach_kfree_skb_tracepoint(&mut drops, &config.pin_dir).map_err(
                        |fallback| EbpfError::Both {
                            first: Box::new(e),
                            fallback: Box::new(fallback),
                        },
                    )?
                }
            }
        };
        attached.push(a);
        (Some(drops), reasons)
    } else {
        (None, HashMap::new())
    };
    Ok(Loaded {
        forward,
        drops,
        reasons,
        ifindexes,
    })
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
        for d in [DIR_INGRESS, DIR_EGRESS]
            .into_iter()
            .filter(|_| self.report_forward)
        {
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

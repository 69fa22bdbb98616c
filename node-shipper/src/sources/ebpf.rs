//! The eBPF dataplane source: `kappie_forward_count/bytes` and `kappie_tcp_flag_counters`
//! from tc programs on the chosen interfaces (tcx where the kernel has it, clsact
//! otherwise), `kappie_drop_count/bytes` from `tp_btf/kfree_skb` with the kernel's own drop
//! reason names read from its BTF. Maps are per-CPU and pinned under `pin_dir` (bpffs), so
//! counts survive a shipper restart; programs are detached when the source is dropped.
//!
//! Loading reads as one sequence per object: load, find program, attach; each step says
//! what to do when it fails.

use crate::caps::{self, Cap};
use crate::source::{Observation, Source, SourceError};
use aya::maps::{Map, PerCpuHashMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    tc, BtfTracePoint, ProgramError, ProgramInfo, SchedClassifier, TcAttachType, TracePoint,
};
use aya::{Btf, Ebpf, EbpfLoader};
use kappie_ebpf::{Counter, DropKey, ForwardKey, ForwardValue, DIR_EGRESS, DIR_INGRESS, TCP_FLAGS};
use std::collections::{HashMap, HashSet};
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
    /// The kernel refused a step with EPERM or EACCES: `reason` names the capabilities the
    /// step needs and those this process lacks, then the kernel's (or the verifier's) own
    /// word in brackets and what else to do.
    #[error("{step} was refused ({errno}): {reason}")]
    Refused {
        step: String,
        errno: &'static str,
        reason: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step and its fallback both failed.
    #[error("{first}; and the fallback: {fallback}")]
    Both {
        first: Box<EbpfError>,
        #[source]
        fallback: Box<EbpfError>,
    },
}

/// What each step the kernel may refuse for want of privilege needs, as found on Linux
/// 6.18 by running each step under `setpriv` with one capability removed at a time
/// (`tests/capabilities.rs` keeps the load steps true). Steps not listed need none there:
/// BPF_OBJ_GET of a pin (bpffs file permissions decide), a tcx link and a `tp_btf` link (a
/// process holding the loaded program may attach it), reading `bpf_prog_info`.
pub mod needs {
    use super::Cap;
    /// Creating (or opening the pinned) maps and loading the object's BTF.
    pub const MAPS: &[Cap] = &[Cap::Bpf];
    /// Loading a SCHED_CLS program: CAP_NET_ADMIN besides CAP_BPF (EPERM before
    /// verification); and the verifier refuses the forward program's packet-pointer
    /// arithmetic (a variable IP header length) without CAP_PERFMON (EACCES: its Spectre v1
    /// hardening for loaders without it).
    pub const TC_LOAD: &[Cap] = &[Cap::Bpf, Cap::NetAdmin, Cap::Perfmon];
    /// Adding a clsact qdisc or a tc filter through netlink (the fallback without tcx).
    pub const CLSACT: &[Cap] = &[Cap::NetAdmin];
    /// Loading a tracing (`tp_btf`) or tracepoint program.
    pub const TRACING_LOAD: &[Cap] = &[Cap::Bpf, Cap::Perfmon];
    /// perf_event_open of a tracepoint, to attach the tracepoint program (EACCES).
    pub const PERF_EVENT: &[Cap] = &[Cap::Perfmon];
    /// Mounting bpffs or tracefs where none is.
    pub const MOUNT: &[Cap] = &[Cap::SysAdmin];
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

/// Like [`step`], for a step the kernel may refuse for want of privilege: an EPERM or
/// EACCES becomes [`EbpfError::Refused`], naming the capabilities in `needs` and those of
/// them this process lacks, then `refused_hint` when there is another way out. The
/// exception is a verifier rejection (EACCES with a verifier log) while this process has
/// every capability in `needs`: that is the program's fault, and the verifier's log says
/// why.
pub(super) fn kernel_step<E: std::error::Error + Send + Sync + 'static>(
    step: impl Into<String>,
    needs: &'static [Cap],
    hint: &'static str,
    refused_hint: Option<&'static str>,
) -> impl FnOnce(E) -> EbpfError {
    let step = step.into();
    move |e| {
        let verifier = load_failure(&e);
        let has_all = caps::effective().is_ok_and(|eff| caps::lacking_in(eff, needs).is_empty());
        match caps::refusal(&e) {
            Some("EACCES")
                if verifier
                    .as_deref()
                    .is_some_and(|v| v.starts_with("verifier:"))
                    && has_all =>
            {
                EbpfError::Step {
                    step,
                    hint,
                    source: Box::new(e),
                }
            }
            Some(errno) => EbpfError::Refused {
                step,
                errno,
                reason: format!(
                    "{} [{}]{}",
                    caps::explain(needs),
                    verifier.unwrap_or_else(|| e.to_string()),
                    refused_hint.map(|h| format!("; {h}")).unwrap_or_default()
                ),
                source: Box::new(e),
            },
            None => EbpfError::Step {
                step,
                hint,
                source: Box::new(e),
            },
        }
    }
}

/// When `e` is a failed program load: the verifier's verdict (the last line of its log
/// before the statistics), or the syscall's error when the kernel refused before verifying.
fn load_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let ProgramError::LoadError {
        verifier_log,
        io_error,
    } = e.downcast_ref::<ProgramError>()?
    else {
        return None;
    };
    let log = verifier_log.to_string();
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("verification time"))
        .unwrap_or(lines.len());
    Some(match lines[..end].last() {
        Some(l) => format!("verifier: {l}"),
        None => format!("BPF_PROG_LOAD: {io_error}"),
    })
}

/// One program attached to one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The program's name in its object (`kappie_tc_ingress`, `kappie_kfree_skb`, …).
    pub program: &'static str,
    /// The interface, for the tc programs.
    pub interface: Option<String>,
    /// `tcx`, `clsact`, `tp_btf` or `tracepoint`.
    pub hook: &'static str,
    /// Made by an earlier shipper (its pinned link was kept, still counting).
    pub reused: bool,
}

/// An attachment and what keeps it: the pinned link (none for a clsact attachment, which
/// lives in the qdisc) and the pin of the attached program, by which its run statistics are
/// read (the program of a reused link is not one this process loaded).
struct Attached {
    what: Attachment,
    link: Option<(PathBuf, PinnedLink)>,
    prog_pin: PathBuf,
}

/// The kernel's statistics of one program (`bpf_prog_info`), summed over the loaded
/// instances of it that are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramRuns {
    pub program: &'static str,
    /// `run_cnt`.
    pub run_count: u64,
    /// `run_time_ns`.
    pub run_time: Duration,
}

/// What the source attached, shareable with the HTTP server: read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct EbpfPrograms(Arc<Vec<(Attachment, PathBuf)>>);

impl EbpfPrograms {
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.0.iter().map(|(a, _)| a)
    }

    /// Run count and run time of every attached program, from the kernel now. The kernel
    /// counts only while `kernel.bpf_stats_enabled` is 1 (or a BPF_ENABLE_STATS file
    /// descriptor is open). Needs no capability beyond access to the pins.
    pub fn runs(&self) -> Vec<ProgramRuns> {
        let mut seen = HashSet::new();
        let mut out: Vec<ProgramRuns> = Vec::new();
        for (a, pin) in self.0.iter() {
            let info = match ProgramInfo::from_pin(pin) {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!(pin = %pin.display(), error = %e, "cannot read the statistics of a pinned program");
                    continue;
                }
            };
            if !seen.insert(info.id()) {
                continue;
            }
            match out.iter_mut().find(|r| r.program == a.program) {
                Some(r) => {
                    r.run_count += info.run_count();
                    r.run_time += info.run_time();
                }
                None => out.push(ProgramRuns {
                    program: a.program,
                    run_count: info.run_count(),
                    run_time: info.run_time(),
                }),
            }
        }
        out
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
        let loaded = match load_and_attach(config, &mut attached) {
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

/// The load, find program, attach sequence of both objects; each attachment is added to
/// `attached` as soon as it exists, so that the caller can undo it on an error.
fn load_and_attach(config: &EbpfConfig, attached: &mut Vec<Attached>) -> Result<Loaded, EbpfError> {
    let mut forward = EbpfLoader::new()
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
            )?);
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

/// Attaches tc program `name` to `iface`: tcx where the kernel has it (a link, pinned so
/// that it outlives the shipper), else a clsact qdisc through netlink.
fn attach_tc(
    prog: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    attach: TcAttachType,
    pin_dir: &Path,
    suffix: &str,
) -> Result<Attached, EbpfError> {
    let (hook, link) = match prog.attach(iface, attach) {
        Ok(id) => {
            let link = prog
                .take_link(id)
                .map_err(step(format!("take link of {name}"), "report this"))?;
            let fd = FdLink::try_from(link)
                .map_err(step(format!("tcx link of {name}"), "report this"))?;
            (
                "tcx",
                Some(pin_link(fd, pin_dir.join(format!("link-{suffix}")))?),
            )
        }
        Err(tcx) => {
            tracing::info!(interface = %iface, error = %tcx, "tcx attach failed (kernel lacks tcx?); falling back to clsact, which cannot outlive a killed shipper");
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(kernel_step(
                        format!(
                            "adding a clsact qdisc to {iface} (after the tcx attach failed: {tcx})"
                        ),
                        needs::CLSACT,
                        "the kernel refused the qdisc",
                        None,
                    )(e));
                }
            }
            let id = prog
                .attach_with_options(
                    iface,
                    attach,
                    tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
                )
                .map_err(kernel_step(
                    format!("attaching {name} to {iface} through clsact"),
                    needs::CLSACT,
                    "the kernel refused the tc filter",
                    None,
                ))?;
            let link = prog
                .take_link(id)
                .map_err(step(format!("take link of {name}"), "report this"))?;
            // A netlink (clsact) attachment has no link to pin: it lives in the qdisc.
            if let Err(e) = FdLink::try_from(link) {
                tracing::debug!(error = %e, "clsact attachment not pinned");
            }
            ("clsact", None)
        }
    };
    let prog_pin = pin_dir.join(format!("prog-{suffix}"));
    pin_program(&prog_pin, |p| prog.pin(p));
    Ok(Attached {
        what: Attachment {
            program: name,
            interface: Some(iface.to_owned()),
            hook,
            reused: false,
        },
        link,
        prog_pin,
    })
}

/// Unpins the links and program pins of `attached`, which detaches them.
fn release(attached: impl IntoIterator<Item = Attached>) {
    for a in attached {
        if let Some((pin, link)) = a.link {
            match link.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), error = %e, "cannot unpin eBPF link; remove it by hand to detach")
                }
            }
        }
        if let Err(e) = std::fs::remove_file(&a.prog_pin) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(pin = %a.prog_pin.display(), error = %e, "cannot unpin eBPF program; remove it by hand");
            }
        }
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
fn pin_link(link: FdLink, pin: PathBuf) -> Result<(PathBuf, PinnedLink), EbpfError> {
    let pinned = link.pin(&pin).map_err(step(
        format!("pin {}", pin.display()),
        "check that bpffs is writable",
    ))?;
    Ok((pin, pinned))
}

/// Pins the program just attached at `pin` (replacing what an earlier shipper left there),
/// so that its run statistics can be read while it is attached, by a later shipper too.
/// Only the statistics depend on it: a failure is a warning.
fn pin_program(pin: &Path, pin_it: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>) {
    let _ = std::fs::remove_file(pin);
    if let Err(e) = pin_it(pin) {
        tracing::warn!(pin = %pin.display(), error = %e, "cannot pin the eBPF program; its run statistics are not reported");
    }
}

/// The attachment a previous shipper pinned at `link-<suffix>` (still counting), if there
/// is one.
fn reuse_pinned(
    pin_dir: &Path,
    suffix: &str,
    program: &'static str,
    interface: Option<&str>,
    hook: &'static str,
) -> Option<Attached> {
    let pin = pin_dir.join(format!("link-{suffix}"));
    let link = PinnedLink::from_pin(&pin).ok()?;
    Some(Attached {
        what: Attachment {
            program,
            interface: interface.map(str::to_owned),
            hook,
            reused: true,
        },
        link: Some((pin, link)),
        prog_pin: pin_dir.join(format!("prog-{suffix}")),
    })
}

fn attach_kfree_skb_btf(
    drops: &mut Ebpf,
    btf: &Btf,
    pin_dir: &Path,
) -> Result<Attached, EbpfError> {
    const NAME: &str = "kappie_kfree_skb";
    if let Some(a) = reuse_pinned(pin_dir, NAME, NAME, None, "tp_btf") {
        return Ok(a);
    }
    let prog: &mut BtfTracePoint = program(drops, NAME)?;
    prog.load("kfree_skb", btf).map_err(kernel_step(
        "loading the tp_btf/kfree_skb program",
        needs::TRACING_LOAD,
        "the kernel refused a BTF program",
        None,
    ))?;
    let id = prog.attach().map_err(step(
        "attaching tp_btf/kfree_skb",
        "the kernel refused the attachment",
    ))?;
    let link = prog
        .take_link(id)
        .map_err(step("take link of kappie_kfree_skb", "report this"))?;
    let link = pin_link(FdLink::from(link), pin_dir.join(format!("link-{NAME}")))?;
    let prog_pin = pin_dir.join(format!("prog-{NAME}"));
    pin_program(&prog_pin, |p| prog.pin(p));
    Ok(Attached {
        what: Attachment {
            program: NAME,
            interface: None,
            hook: "tp_btf",
            reused: false,
        },
        link: Some(link),
        prog_pin,
    })
}

fn attach_kfree_skb_tracepoint(drops: &mut Ebpf, pin_dir: &Path) -> Result<Attached, EbpfError> {
    const NAME: &str = "kappie_kfree_skb_tp";
    if let Some(a) = reuse_pinned(pin_dir, NAME, NAME, None, "tracepoint") {
        return Ok(a);
    }
    let prog: &mut TracePoint = program(drops, NAME)?;
    prog.load().map_err(kernel_step(
        "loading the skb:kfree_skb tracepoint program",
        needs::TRACING_LOAD,
        "the verifier refused it; see its log",
        None,
    ))?;
    super::kernelfs::ensure_tracefs()?;
    let id = prog.attach("skb", "kfree_skb").map_err(kernel_step(
        "attaching the skb:kfree_skb tracepoint (perf_event_open)",
        needs::PERF_EVENT,
        "the kernel refused the attachment",
        None,
    ))?;
    let link = prog
        .take_link(id)
        .map_err(step("take link of kappie_kfree_skb_tp", "report this"))?;
    let link = match FdLink::try_from(link) {
        Ok(fd) => Some(pin_link(fd, pin_dir.join(format!("link-{NAME}")))?),
        Err(e) => {
            tracing::info!(error = %e, "tracepoint attachment cannot be pinned on this kernel; it ends with the shipper");
            None
        }
    };
    let prog_pin = pin_dir.join(format!("prog-{NAME}"));
    pin_program(&prog_pin, |p| prog.pin(p));
    Ok(Attached {
        what: Attachment {
            program: NAME,
            interface: None,
            hook: "tracepoint",
            reused: false,
        },
        link,
        prog_pin,
    })
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
    use super::{kernel_step, needs, EbpfError};

    #[test]
    fn only_eperm_and_eacces_are_refusals_and_they_name_the_capabilities() {
        let refused = kernel_step("loading x", needs::TC_LOAD, "hint", Some("or else"))(
            std::io::Error::from_raw_os_error(libc::EPERM),
        );
        let EbpfError::Refused { errno, .. } = &refused else {
            panic!("{refused}");
        };
        assert_eq!(*errno, "EPERM");
        let text = refused.to_string();
        assert!(
            text.starts_with(
                "loading x was refused (EPERM): it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; this process "
            ) && text.ends_with("; or else"),
            "{text}"
        );
        let other = kernel_step("loading x", needs::MAPS, "hint", None)(
            std::io::Error::from_raw_os_error(libc::EINVAL),
        );
        assert!(matches!(other, EbpfError::Step { .. }), "{other}");
        assert!(other.to_string().ends_with("; hint"), "{other}");
    }

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

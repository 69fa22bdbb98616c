//! Attachments: tc programs on interfaces (tcx, or clsact through netlink), the drops
//! program on `kfree_skb` (`tp_btf`, or the tracepoint); each pinned with its program in
//! bpffs, so that it outlives the shipper and its run statistics can be read by a later
//! one.

use super::errors::{kernel_step, needs, step, EbpfError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    tc, BtfTracePoint, LinkOrder, ProgramInfo, SchedClassifier, TcAttachType, TracePoint,
};
use aya::{Btf, Ebpf};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
pub(super) struct Attached {
    pub(super) what: Attachment,
    link: Option<(PathBuf, PinnedLink)>,
    pub(super) prog_pin: PathBuf,
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
pub struct EbpfPrograms(pub(super) Arc<Vec<(Attachment, PathBuf)>>);

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

/// Attaches tc program `name` to `iface`: tcx where the kernel has it (a link, pinned so
/// that it outlives the shipper), else (unless `tcx_only`) a clsact qdisc through netlink.
///
/// With tcx the program goes first on the hook: the programs of a hook run in order until
/// one returns a verdict other than "next", and Kappie's always return "next"
/// (`TC_ACT_UNSPEC`), so every program after it still runs and decides the packet's fate,
/// while a program before it that passes, drops or redirects (as Cilium's do; Cilium
/// attaches at the tail) would hide those packets from it.
#[allow(clippy::too_many_arguments)]
pub(super) fn attach_tc(
    prog: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    attach: TcAttachType,
    pin_dir: &Path,
    suffix: &str,
    tcx_only: bool,
) -> Result<Attached, EbpfError> {
    let first = tc::TcAttachOptions::TcxOrder(LinkOrder::first());
    let (hook, link) = match prog.attach_with_options(iface, attach, first) {
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
        Err(tcx) if tcx_only => return Err(step(
            format!("attaching {name} to {iface} with tcx"),
            "on a Cilium node Kappie's tc programs attach with tcx only (kernel 6.6 or later); \
                 without it the TCP flag counters are off (--disable-sources ebpf silences this)",
        )(tcx)),
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
pub(super) fn release(attached: impl IntoIterator<Item = Attached>) {
    // tcx programs to see gone before returning (interface, direction, program id).
    let mut tcx = Vec::new();
    for a in attached {
        if let (true, Some(iface)) = (a.what.hook == "tcx", &a.what.interface) {
            let dir = if a.what.program.ends_with("egress") {
                TcAttachType::Egress
            } else {
                TcAttachType::Ingress
            };
            if let Ok(info) = ProgramInfo::from_pin(&a.prog_pin) {
                tcx.push((iface.clone(), dir, info.id()));
            }
        }
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
    // The kernel lets go of a link whose last reference was its pin only after an RCU grace
    // period and a work item: until then it still counts. Wait (bounded) until it is off
    // the hook, so that a detach means "stopped" (a test once counted 50 packets sent right
    // after it).
    let deadline = std::time::Instant::now() + DETACH_WAIT;
    for (iface, dir, id) in tcx {
        loop {
            let attached = match SchedClassifier::query_tcx(&iface, dir) {
                Ok((_, progs)) => progs.iter().any(|p| p.id() == id),
                Err(_) => false, // the interface is gone, or no tcx: nothing runs there
            };
            if !attached {
                break;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(interface = %iface, program_id = id, wait_ms = DETACH_WAIT.as_millis() as u64,
                    "eBPF program still attached after detaching; the kernel releases it later");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Longest a detach waits for the kernel to take its tc programs off their hooks.
const DETACH_WAIT: Duration = Duration::from_secs(2);

/// Program `name` of `obj` as its type `T`.
pub(super) fn program<'a, T>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut T, EbpfError>
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
pub(super) fn pin_link(link: FdLink, pin: PathBuf) -> Result<(PathBuf, PinnedLink), EbpfError> {
    let pinned = link.pin(&pin).map_err(step(
        format!("pin {}", pin.display()),
        "check that bpffs is writable",
    ))?;
    Ok((pin, pinned))
}

/// Pins the program just attached at `pin` (replacing what an earlier shipper left there),
/// so that its run statistics can be read while it is attached, by a later shipper too.
/// Only the statistics depend on it: a failure is a warning.
pub(super) fn pin_program(
    pin: &Path,
    pin_it: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) {
    let _ = std::fs::remove_file(pin);
    if let Err(e) = pin_it(pin) {
        tracing::warn!(pin = %pin.display(), error = %e, "cannot pin the eBPF program; its run statistics are not reported");
    }
}

/// The attachment a previous shipper pinned at `link-<suffix>` (still counting), if there
/// is one.
pub(super) fn reuse_pinned(
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

pub(super) fn attach_kfree_skb_btf(
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

pub(super) fn attach_kfree_skb_tracepoint(
    drops: &mut Ebpf,
    pin_dir: &Path,
) -> Result<Attached, EbpfError> {
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
    crate::sources::kernelfs::ensure_tracefs()?;
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

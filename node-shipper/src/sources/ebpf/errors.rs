//! Why eBPF could not start, and what each step the kernel may refuse needs: a refusal
//! (EPERM/EACCES) is explained by the capabilities the step needs and those this process
//! lacks.

use crate::caps::{self, Cap};
use aya::programs::ProgramError;

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

pub(crate) fn step<E: std::error::Error + Send + Sync + 'static>(
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
pub(crate) fn kernel_step<E: std::error::Error + Send + Sync + 'static>(
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
}

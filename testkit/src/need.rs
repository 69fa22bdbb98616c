//! What a test needs from the machine, checked in one place. A test that lacks something
//! says plainly why it skips, and fails instead when `CI` is set: CI (`.ci/run`, which runs
//! `scripts/test.sh`) installs every package and runs as root, so a skip there would hide a
//! broken machine or a broken test.
//!
//! Kernel filesystems (bpffs, tracefs) are not needs: the shipper mounts them itself, so no
//! test depends on what an earlier run left mounted.

use std::io::Write;
use std::path::Path;

/// One thing a test needs.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Root with the capabilities to make namespaces, mount and load eBPF
    /// (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON).
    Root,
    /// A program on the PATH and the Debian package that has it.
    Tool {
        program: &'static str,
        package: &'static str,
    },
    /// The running kernel's BTF (`/sys/kernel/btf/vmlinux`).
    KernelBtf,
}

/// Root and `ip`: what [`crate::Netns`] and [`crate::Veth`] need (`sysctl` for
/// [`crate::Veth::quiet`]).
pub const NETNS: [Need; 3] = [Need::Root, IPROUTE2, PROCPS];
/// `ip`, `ss`, `nstat`.
pub const IPROUTE2: Need = Need::Tool {
    program: "ip",
    package: "iproute2",
};
/// `sysctl`.
pub const PROCPS: Need = Need::Tool {
    program: "sysctl",
    package: "procps",
};
pub const NFT: Need = Need::Tool {
    program: "nft",
    package: "nftables",
};
pub const PROMETHEUS: Need = Need::Tool {
    program: "prometheus",
    package: "prometheus",
};
pub const OPENSSL: Need = Need::Tool {
    program: "openssl",
    package: "openssl",
};

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

impl Need {
    /// Why this is missing and how to get it, or `None` when it is there.
    pub fn missing(&self) -> Option<String> {
        match *self {
            Need::Root => {
                let euid = unsafe { libc::geteuid() };
                if euid != 0 {
                    return Some(format!(
                        "needs root (runs as uid {euid}); run the tests as root, as CI does"
                    ));
                }
                let lacking: Vec<&str> = [
                    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                    (CAP_PERFMON, "CAP_PERFMON"),
                    (CAP_BPF, "CAP_BPF"),
                ]
                .into_iter()
                .filter(|(bit, _)| !has_capability(*bit))
                .map(|(_, name)| name)
                .collect();
                (!lacking.is_empty()).then(|| {
                    format!(
                        "runs as root but lacks {} (a restricted container?)",
                        lacking.join(", ")
                    )
                })
            }
            Need::Tool { program, package } => (!on_path(program)).then(|| {
                format!("needs {program}, which is not on the PATH (apt-get install {package})")
            }),
            Need::KernelBtf => (!Path::new("/sys/kernel/btf/vmlinux").exists()).then(|| {
                "needs the kernel's BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)".into()
            }),
        }
    }
}

/// Whether the test running on this thread may go on with `needs`. When something is
/// missing it prints why and returns `false` (the test returns early), or panics when `CI`
/// is set. The test's name is the thread's, as the test harness names it.
pub fn require(needs: &[Need]) -> bool {
    let name = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    require_for(&name, needs)
}

/// [`require`] for a test named `test`.
pub fn require_for(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(Need::missing).collect();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why} — and CI is set, where nothing may be skipped"
    );
    // Straight to stderr, past the test harness's capture, so the skip shows in
    // `cargo test` output even though the test passes.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether the effective capability set of this thread has `bit` (from
/// `/proc/thread-self/status`; a bit the kernel does not know counts as present, so older kernels
/// without CAP_BPF are judged by CAP_SYS_ADMIN alone).
fn has_capability(bit: u32) -> bool {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    if bit > last {
        return true;
    }
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_exists_is_found_and_one_that_does_not_is_not() {
        assert!(on_path("sh"));
        assert!(Need::Tool {
            program: "kappie-no-such-program",
            package: "nothing"
        }
        .missing()
        .is_some_and(|m| m.contains("apt-get install nothing")));
    }

    #[test]
    fn nothing_needed_is_nothing_missing() {
        assert!(require(&[]));
    }
}

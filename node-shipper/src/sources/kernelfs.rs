//! The kernel filesystems the eBPF source needs: bpffs for its pins and tracefs for the
//! `skb:kfree_skb` tracepoint (the drops fallback where `tp_btf` is refused). Each is found
//! where the kernel documents it and, when it is missing and the shipper may mount
//! (CAP_SYS_ADMIN), mounted there; otherwise the error says what to mount.
//!
//! What the shipper mounts stays mounted when it exits: these are the host's standard
//! mounts (systemd makes both at boot), harmless to others, and a pin in bpffs must outlive
//! the shipper anyway. A Kubernetes pod has a mount namespace of its own, so there the
//! mount ends with the pod.

use super::ebpf::{kernel_step, needs, step, EbpfError};
use std::ffi::CStr;
use std::path::Path;

const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Held from the look to the mount, so that two sources starting at once in one process
/// (tests do) neither both mount, stacking a second filesystem on the first, nor see the
/// other's mount half-way and judge the pin directory to be off bpffs.
static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn mounting() -> std::sync::MutexGuard<'static, ()> {
    MOUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as u32 == BPF_FS_MAGIC }
}

/// Makes sure `dir` is on a bpffs (pins elsewhere are impossible): mounts one at
/// `/sys/fs/bpf` when `dir` is below it and nothing is mounted there (a DaemonSet mounts
/// the host's), then creates `dir`.
pub(super) fn ensure_bpffs(dir: &Path) -> Result<(), EbpfError> {
    let _mounting = mounting();
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        if !dir.starts_with("/sys/fs/bpf") || is_bpffs(Path::new("/sys/fs/bpf")) {
            return Err(step(
                format!("pin directory {}", dir.display()),
                "it must be on a bpffs (mount -t bpf bpf DIR); the default is below /sys/fs/bpf",
            )(std::io::Error::other("not on a bpffs")));
        }
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(kernel_step(
                "mounting bpffs at /sys/fs/bpf",
                needs::MOUNT,
                "mount it (mount -t bpf bpf /sys/fs/bpf) or give the shipper CAP_SYS_ADMIN",
                Some(
                    "or mount it beforehand (mount -t bpf bpf /sys/fs/bpf; in Kubernetes, a \
                     hostPath volume of the host's /sys/fs/bpf)",
                ),
            )(std::io::Error::last_os_error()));
        }
        tracing::info!(
            path = "/sys/fs/bpf",
            "bpffs was not mounted; mounted it for the pinned eBPF maps (it stays mounted \
             after the shipper exits, as the pins must)"
        );
    }
    std::fs::create_dir_all(dir).map_err(step(
        format!("create {}", dir.display()),
        "check that bpffs is writable",
    ))
}

/// Where tracefs is looked for, in aya's order (`find_tracefs_path` in aya's
/// `programs/utils.rs`): its own mount point, then the older place inside debugfs.
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where the shipper mounts tracefs when neither place has it.
pub const TRACEFS_MOUNT_POINT: &CStr = c"/sys/kernel/tracing";

/// aya's test for tracefs: the directory exists and is not empty (the kernel creates
/// `/sys/kernel/tracing` empty when tracefs is not mounted there).
fn has_tracing_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Whether aya will find tracefs now.
pub fn tracefs_found() -> bool {
    TRACEFS_DIRS.iter().any(|d| has_tracing_files(Path::new(d)))
}

/// Makes sure aya finds tracefs before a tracepoint is attached: mounts it at
/// [`TRACEFS_MOUNT_POINT`] when neither of aya's places has it.
///
/// Must run before the process's first tracepoint attach: aya looks tracefs up once per
/// process and keeps the answer, so a lookup that found nothing stays failed.
pub(super) fn ensure_tracefs() -> Result<(), EbpfError> {
    let _mounting = mounting();
    if tracefs_found() {
        return Ok(());
    }
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            TRACEFS_MOUNT_POINT.as_ptr(),
            c"tracefs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        const WHAT_TO_MOUNT: &str = "mount it on the host (mount -t tracefs tracefs \
             /sys/kernel/tracing) and, in Kubernetes, give the shipper a hostPath volume of \
             /sys/kernel/tracing mounted at /sys/kernel/tracing";
        return Err(kernel_step(
            "mounting tracefs at /sys/kernel/tracing for the skb:kfree_skb tracepoint",
            needs::MOUNT,
            WHAT_TO_MOUNT,
            Some(WHAT_TO_MOUNT),
        )(std::io::Error::last_os_error()));
    }
    tracing::info!(
        path = %TRACEFS_MOUNT_POINT.to_string_lossy(),
        "tracefs was not mounted; mounted it for the skb:kfree_skb tracepoint (it stays \
         mounted after the shipper exits: it is the kernel's standard tracing mount)"
    );
    Ok(())
}

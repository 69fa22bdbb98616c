//! The kernel filesystems the eBPF source needs: bpffs for its pins. It is found where the
//! kernel documents it and, when it is missing and the shipper may mount (CAP_SYS_ADMIN),
//! mounted there; otherwise the error says what to mount.

use super::ebpf::{step, EbpfError};
use std::path::Path;

const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

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
            return Err(step(
                "mount bpffs at /sys/fs/bpf",
                "mount it (mount -t bpf bpf /sys/fs/bpf) or give the shipper CAP_SYS_ADMIN",
            )(std::io::Error::last_os_error()));
        }
    }
    std::fs::create_dir_all(dir).map_err(step(
        format!("create {}", dir.display()),
        "check that bpffs is writable",
    ))
}

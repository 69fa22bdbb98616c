//! The `skb:kfree_skb` tracepoint fallback on a machine where tracefs is not mounted (a
//! fresh one: issue 11, section 5). Each test runs in a private mount namespace with tracefs
//! and debugfs unmounted, so it sees that machine whatever this one has mounted; and in a
//! test binary of its own, because aya looks tracefs up once per process.

use kappie_node_shipper::sources::ebpf::{EbpfConfig, EbpfSource};
use kappie_node_shipper::sources::kernelfs::tracefs_found;
use kappie_testkit::{require, with_unmounted, Need};
use std::path::{Path, PathBuf};

const TRACEFS_MAGIC: i64 = 0x7472_6163;
const TRACING: [&str; 3] = [
    "/sys/kernel/debug/tracing",
    "/sys/kernel/debug",
    "/sys/kernel/tracing",
];

/// A directory of the test's own, removed on drop (from outside the private mount
/// namespace, where the bpffs mounted on it is gone).
struct RunDir(PathBuf);
impl RunDir {
    fn new(tag: &str) -> RunDir {
        let dir = PathBuf::from(format!("/run/kappie-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        RunDir(dir)
    }
}
impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mounts a bpffs on `dir` (in the private mount namespace, so it goes with it) and returns
/// an eBPF configuration that pins there and counts drops with the tracepoint only (no
/// interfaces).
fn config(dir: &Path) -> EbpfConfig {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount bpffs: {}", std::io::Error::last_os_error());
    EbpfConfig {
        interfaces: Vec::new(),
        pin_dir: dir.join("kappie"),
        drops: true,
        drops_tracepoint: true,
        forward: true,
        tcx_only: false,
    }
}

fn fs_type(p: &Path) -> i64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    st.f_type as i64
}

#[test]
fn tracepoint_fallback_mounts_tracefs_where_none_is_mounted() {
    if !require(&[Need::Root, Need::KernelBtf]) {
        return;
    }
    let dir = RunDir::new("tracefs-mount");
    with_unmounted(&TRACING, || {
        assert!(!tracefs_found(), "the test unmounted tracefs");
        let config = config(&dir.0);
        let src = EbpfSource::start(&config).expect("the tracepoint attaches");
        assert_eq!(
            fs_type(Path::new("/sys/kernel/tracing")),
            TRACEFS_MAGIC,
            "the shipper mounted tracefs at /sys/kernel/tracing"
        );
        src.detach();
    });
}

/// Header and data of capget/capset (linux/capability.h, version 3: two 32-bit words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_SYS_ADMIN: u32 = 21;

/// Takes CAP_SYS_ADMIN out of this thread's effective set (capabilities are per thread).
fn drop_cap_sys_admin() {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_SYS_ADMIN);
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn without_cap_sys_admin_the_fallback_says_what_to_mount() {
    if !require(&[Need::Root, Need::KernelBtf]) {
        return;
    }
    let dir = RunDir::new("tracefs-nocap");
    with_unmounted(&TRACING, || {
        let config = config(&dir.0);
        drop_cap_sys_admin();
        let err = match EbpfSource::start(&config) {
            Ok(src) => {
                src.detach();
                panic!("started without tracefs and without CAP_SYS_ADMIN");
            }
            Err(e) => e.to_string(),
        };
        assert!(!tracefs_found(), "nothing was mounted");
        for want in [
            "mount -t tracefs tracefs /sys/kernel/tracing",
            "hostPath volume of /sys/kernel/tracing",
        ] {
            assert!(err.contains(want), "{want:?} not in: {err}");
        }
    });
}

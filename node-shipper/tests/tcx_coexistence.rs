//! Kappie's tc programs beside another dataplane's on the same tcx hook, as on a Cilium node
//! (docs/cilium.md). tcx runs the programs of a hook in order until one returns a verdict
//! other than "next"; Cilium's return pass, drop or redirect, Kappie's always "next". So
//! Kappie attaches first, and then both run on every packet and the other program still
//! decides its fate.
//!
//! The other dataplane is a tiny program this test loads with raw bpf(2) calls (no compiler
//! needed): it counts the packets it sees in an array map and returns `TC_ACT_OK` (pass,
//! which ends the chain). It is attached before Kappie starts, as Cilium's is there first;
//! a second one after it shows that what follows a passing program never runs.

use kappie_node_shipper::source::{Observation, Source};
use kappie_node_shipper::sources::ebpf::{EbpfConfig, EbpfSource};
use kappie_testkit::need::NETNS;
use kappie_testkit::{require, Netns, Veth};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const TC_ACT_OK: i32 = 0;

fn bpf<T>(cmd: i64, attr: &mut T) -> std::io::Result<OwnedFd> {
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high one
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// A tc program and its one-slot array map: `count[0] += 1; return verdict`.
struct Counter {
    map: OwnedFd,
    prog: OwnedFd,
    link: Option<OwnedFd>,
}

impl Counter {
    fn load(name: &str, verdict: i32) -> Counter {
        #[repr(C)]
        struct MapAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        let map = bpf(
            BPF_MAP_CREATE,
            &mut MapAttr {
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: 8,
                max_entries: 1,
            },
        )
        .expect("create the counter map");
        let insns = [
            insn(0x62, 10, 0, -4, 0),             // *(u32 *)(r10 - 4) = 0
            insn(0xbf, 2, 10, 0, 0),              // r2 = r10
            insn(0x07, 2, 0, 0, -4),              // r2 += -4
            insn(0x18, 1, 1, 0, map.as_raw_fd()), // r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
            insn(0, 0, 0, 0, 0),
            insn(0x85, 0, 0, 0, 1),       // call bpf_map_lookup_elem
            insn(0x15, 0, 0, 2, 0),       // if r0 == 0 goto +2
            insn(0xb7, 1, 0, 0, 1),       // r1 = 1
            insn(0xdb, 0, 1, 0, 0),       // lock *(u64 *)(r0 + 0) += r1
            insn(0xb7, 0, 0, 0, verdict), // r0 = verdict
            insn(0x95, 0, 0, 0, 0),       // exit
        ];
        #[repr(C)]
        struct ProgAttr {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
        }
        let mut prog_name = [0u8; 16];
        prog_name[..name.len()].copy_from_slice(name.as_bytes());
        let mut log = vec![0u8; 4096];
        let mut attr = ProgAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: c"GPL".as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            kern_version: 0,
            prog_flags: 0,
            prog_name,
        };
        let prog = bpf(BPF_PROG_LOAD, &mut attr).unwrap_or_else(|e| {
            panic!(
                "load {name}: {e}\n{}",
                String::from_utf8_lossy(&log).trim_end_matches('\0')
            )
        });
        Counter {
            map,
            prog,
            link: None,
        }
    }

    /// Attaches with tcx at the tail of `ifindex`'s ingress hook (call on a thread in the
    /// interface's namespace). Detached when dropped.
    fn attach_last(&mut self, ifindex: u32) {
        #[repr(C)]
        struct LinkAttr {
            prog_fd: u32,
            target_ifindex: u32,
            attach_type: u32,
            flags: u32,
            relative: u32,
            pad: u32,
            expected_revision: u64,
        }
        let link = bpf(
            BPF_LINK_CREATE,
            &mut LinkAttr {
                prog_fd: self.prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: BPF_TCX_INGRESS,
                flags: 0,
                relative: 0,
                pad: 0,
                expected_revision: 0,
            },
        )
        .expect("tcx link (kernel 6.6 or later)");
        self.link = Some(link);
    }

    fn count(&self) -> u64 {
        #[repr(C)]
        struct LookupAttr {
            map_fd: u32,
            pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = LookupAttr {
            map_fd: self.map.as_raw_fd() as u32,
            pad: 0,
            key: &key as *const u32 as u64,
            value: &mut value as *mut u64 as u64,
            flags: 0,
        };
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &mut attr as *mut LookupAttr,
                std::mem::size_of::<LookupAttr>(),
            )
        };
        assert_eq!(rc, 0, "lookup: {}", std::io::Error::last_os_error());
        value
    }
}

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn flag(obs: &[Observation], flag: &str, direction: &str) -> f64 {
    obs.iter()
        .filter(|o| o.metric == "kappie_tcp_flag_counters")
        .find(|o| {
            o.labels.contains(&("flag", flag.to_owned()))
                && o.labels.contains(&("direction", direction.to_owned()))
        })
        .map(|o| o.value)
        .unwrap_or(0.0)
}

#[test]
fn kappie_runs_first_beside_a_dataplane_that_passes_packets_and_counts_flags_exactly() {
    if !require(&NETNS) {
        return;
    }
    let client = Netns::new("tcxc");
    let server = Netns::new("tcxs");
    let veth = Veth::new(&client, &server, 31);
    veth.quiet(&client, &server);
    let ifindex: u32 = server
        .output("cat", &[&format!("/sys/class/net/{}/ifindex", veth.b_if)])
        .trim()
        .parse()
        .unwrap();

    // The other dataplane is there first; a program after it shows where a chain ends.
    let mut other = Counter::load("other_dataplane", TC_ACT_OK);
    let mut after = Counter::load("after_other", TC_ACT_OK);
    server.enter(|| {
        other.attach_last(ifindex);
        after.attach_last(ifindex);
    });

    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/kappie-test-tcx-{}",
        std::process::id()
    )));
    let config = EbpfConfig {
        interfaces: vec![veth.b_if.clone()],
        pin_dir: pins.0.clone(),
        drops: false,
        drops_tracepoint: false,
        // As on a Cilium node: flags only, tcx only.
        forward: false,
        tcx_only: true,
    };
    let mut src = server
        .enter(|| EbpfSource::start(&config))
        .expect("Kappie's tc programs attach with tcx");
    let order: Vec<String> = server.enter(|| {
        aya::programs::SchedClassifier::query_tcx(&veth.b_if, aya::programs::TcAttachType::Ingress)
            .expect("query the tcx hook")
            .1
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect()
    });
    assert_eq!(
        order,
        ["kappie_tc_ingre", "other_dataplane", "after_other"],
        "Kappie first (names as the kernel keeps them, 15 bytes)"
    );

    let mut before = Vec::new();
    src.collect(&mut before).unwrap();
    // Connections to a closed port: one SYN in, one RST+ACK out each, nothing else on the
    // link (static neighbours, IPv6 off). Each is refused: the RST came back, so the SYN went
    // on to the stack after both programs.
    const N: u64 = 25;
    let target = std::net::SocketAddr::from((veth.b_addr4, 9));
    client.enter(|| {
        for _ in 0..N {
            let e = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .expect_err("nothing listens on port 9");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        }
    });
    let mut now = Vec::new();
    src.collect(&mut now).unwrap();
    let moved = |f: &str, d: &str| flag(&now, f, d) - flag(&before, f, d);
    assert_eq!(moved("SYN", "ingress"), N as f64, "Kappie saw every SYN");
    assert_eq!(moved("RST", "egress"), N as f64);
    assert_eq!(moved("ACK", "egress"), N as f64);
    assert_eq!(moved("RST", "ingress"), 0.0);
    assert_eq!(
        other.count(),
        N,
        "the other dataplane still ran on every packet"
    );
    assert_eq!(after.count(), 0, "nothing runs after a program that passes");
    assert!(
        now.iter().all(|o| !o.metric.starts_with("kappie_forward")),
        "no kappie_forward_* beside another dataplane"
    );
    Box::new(src).shutdown();
}

//! The capabilities the DaemonSet grants the shipper (uid 0, not privileged, `drop: [ALL]`,
//! `add: [BPF, NET_ADMIN, PERFMON]`): with any one of them removed, a shipper with
//! `--ebpf-required` exits non-zero and its error names the capability it lacks. Each run
//! is the real binary under `setpriv`, in a network namespace and on a bpffs of the test's
//! own, so nothing needs CAP_SYS_ADMIN.

use kappie_testkit::need::NETNS;
use kappie_testkit::{require, wait_for, Bpffs, Need, Netns, Proc, Veth};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

const SETPRIV: Need = Need::Tool {
    program: "setpriv",
    package: "util-linux",
};

/// `setpriv` arguments that leave the process uid 0 with exactly `caps` (names as setpriv
/// spells them: `bpf`, `net_admin`, `perfmon`) in every set, as a container with
/// `drop: [ALL]` and `add:` those would.
fn setpriv_args(caps: &[&str]) -> Vec<String> {
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "--reuid".into(),
        "0".into(),
        "--regid".into(),
        "0".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--no-new-privs".into(),
    ]
}

/// Runs the shipper with `--ebpf-required` and only `caps`, counting forwards on one end of
/// a veth pair; returns its exit status and its log once it exits (it must, within a
/// bounded wait).
fn run_with(tag: &str, net: u8, caps: &[&str]) -> (ExitStatus, String) {
    let client = Netns::new(&format!("{tag}c"));
    let server = Netns::new(&format!("{tag}s"));
    let veth = Veth::new(&client, &server, net);
    let pins = Bpffs::new(&format!("caps-{tag}"));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = server.command(Path::new("setpriv"));
    cmd.args(setpriv_args(caps))
        .arg(env!("CARGO_BIN_EXE_kappie-shipper"))
        .args(["--ebpf-required", "--http-listen", ""])
        .args(["--ebpf-interfaces", &veth.b_if])
        .arg("--ebpf-pin-dir")
        .arg(pins.path.join("kappie"))
        .args(["--disable-sources", "netstat,sockets,interfaces"])
        .args(["--collector", "http://127.0.0.1:1", "--node-name", "caps"])
        .arg("--state-file")
        .arg(dir.path().join("state.json"))
        .env("RUST_LOG", "info");
    let log = dir.path().join("shipper.log");
    let mut shipper = Proc::spawn("shipper", cmd, &log);
    let status = wait_for("the shipper to exit", Duration::from_secs(30), || {
        shipper.child.try_wait().unwrap()
    });
    (status, std::fs::read_to_string(&log).unwrap())
}

fn refused_for_want_of(tag: &str, net: u8, missing: &str) {
    if !require(&[NETNS.as_slice(), &[Need::KernelBtf, SETPRIV]].concat()) {
        return;
    }
    let all = ["bpf", "net_admin", "perfmon"];
    let caps: Vec<&str> = all.into_iter().filter(|c| *c != missing).collect();
    let (status, log) = run_with(tag, net, &caps);
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    let cap = format!("CAP_{}", missing.to_uppercase());
    assert!(log.contains("eBPF is required"), "{log}");
    let lacks = log
        .split("this process lacks ")
        .nth(1)
        .and_then(|rest| rest.split(" [").next())
        .unwrap_or_else(|| panic!("the error says what the process lacks:\n{log}"));
    assert_eq!(lacks, cap, "the error names exactly {cap}:\n{log}");
    assert!(!log.contains('\x1b'), "no colour codes in a log file");
}

#[test]
fn without_cap_bpf_the_shipper_exits_naming_it() {
    refused_for_want_of("capb", 31, "bpf");
}

#[test]
fn without_cap_net_admin_the_shipper_exits_naming_it() {
    refused_for_want_of("capn", 32, "net_admin");
}

#[test]
fn without_cap_perfmon_the_shipper_exits_naming_it() {
    refused_for_want_of("capp", 33, "perfmon");
}

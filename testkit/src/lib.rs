//! Helpers for Kappie's integration tests: what a test needs from the machine ([`require`]),
//! network namespaces and veth pairs that the test makes itself and removes on drop, threads
//! that enter a namespace, child processes that are killed on drop, and polling with a
//! deadline.

pub mod need;
pub mod prometheus;

pub use need::{require, require_for, Need};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace with its loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("kappie-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it opens live there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).expect("open netns");
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        })
    }

    /// Routes the namespace's default traffic to `gateway` (a peer on one of its links), so
    /// the shipper's default-route interface detection finds that link, as on a node.
    pub fn default_route_via(&self, gateway: std::net::Ipv4Addr) {
        run(
            "ip",
            &[
                "-n",
                &self.name,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ],
        );
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Output of a command run inside the namespace.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Runs `f` on a thread of its own in a private mount namespace (a copy of this one whose
/// changes no other thread or process sees), after unmounting whatever is mounted at each
/// of `unmount`, in order: the test sees a machine where those are not mounted, whatever
/// the host has. Needs root.
pub fn with_unmounted<T: Send>(unmount: &[&str], f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // A thread may have a mount namespace of its own (unshare gives it its own
            // filesystem context too); MS_PRIVATE keeps the unmounts from propagating back.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            let rc = unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "make / private: {}", std::io::Error::last_os_error());
            for path in unmount {
                let c = std::ffi::CString::new(*path).expect("a path without NUL");
                // Mounts can be stacked; EINVAL (not a mount point) or ENOENT ends it.
                while unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {}
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A veth pair between two namespaces with an IPv4 and an IPv6 address on each end.
pub struct Veth {
    pub a_addr4: std::net::Ipv4Addr,
    pub b_addr4: std::net::Ipv4Addr,
    pub a_addr6: std::net::Ipv6Addr,
    pub b_addr6: std::net::Ipv6Addr,
    pub a_if: String,
    pub b_if: String,
}

impl Veth {
    /// Links `a` and `b` with 198.18.<net>.1/24 and .2 (the benchmarking range, used only
    /// inside these namespaces) and 2001:db8:<net>::1/64 and ::2.
    pub fn new(a: &Netns, b: &Netns, net: u8) -> Veth {
        let a_if = format!("kva{net}");
        let b_if = format!("kvb{net}");
        run(
            "ip",
            &[
                "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if,
                "netns", &b.name,
            ],
        );
        let v = Veth {
            a_addr4: std::net::Ipv4Addr::new(198, 18, net, 1),
            b_addr4: std::net::Ipv4Addr::new(198, 18, net, 2),
            a_addr6: format!("2001:db8:{net}::1").parse().unwrap(),
            b_addr6: format!("2001:db8:{net}::2").parse().unwrap(),
            a_if,
            b_if,
        };
        for (ns, ifname, a4, a6) in [
            (a, &v.a_if, v.a_addr4, v.a_addr6),
            (b, &v.b_if, v.b_addr4, v.b_addr6),
        ] {
            run(
                "ip",
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{a4}/24"),
                    "dev",
                    ifname,
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{a6}/64"),
                    "dev",
                    ifname,
                    "nodad",
                ],
            );
            run("ip", &["-n", &ns.name, "link", "set", ifname, "up"]);
        }
        v
    }
}

impl Veth {
    /// Makes the link carry only what the test sends: IPv6 off on both ends (no neighbour
    /// discovery or MLD) and permanent IPv4 neighbour entries (no ARP).
    pub fn quiet(&self, a: &Netns, b: &Netns) {
        for (ns, ifname, peer_ns, peer_if, peer_ip) in [
            (a, &self.a_if, b, &self.b_if, self.b_addr4),
            (b, &self.b_if, a, &self.a_if, self.a_addr4),
        ] {
            ns.output(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")],
            );
            let mac = peer_ns.output("cat", &[&format!("/sys/class/net/{peer_if}/address")]);
            ns.output(
                "ip",
                &[
                    "neigh",
                    "replace",
                    &peer_ip.to_string(),
                    "lladdr",
                    mac.trim(),
                    "dev",
                    ifname,
                    "nud",
                    "permanent",
                ],
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(program: &str, args: &[&str]) {
    let st = Command::new(program).args(args).status().unwrap();
    assert!(st.success(), "{program} {args:?} failed");
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        cmd.stdout(f.try_clone().unwrap()).stderr(f);
        Proc {
            child: cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}")),
            name,
        }
    }

    /// SIGKILL, as the OOM killer or a node failure would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bpffs of the test's own, mounted at `/run/kappie-bpffs-<tag>-<pid>` (outside /sys, which
/// `ip netns exec` remounts, so pins outlive each shipper process and no test depends on
/// the machine's /sys/fs/bpf); unmounting it on drop releases whatever was pinned there.
pub struct Bpffs {
    pub path: std::path::PathBuf,
}

impl Bpffs {
    pub fn new(tag: &str) -> Bpffs {
        let path =
            std::path::PathBuf::from(format!("/run/kappie-bpffs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mount bpffs at {}", path.display());
        Bpffs { path }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A tmpfs of `size` (e.g. `12m`) mounted at a directory of the test's; unmounted on drop.
/// `resize` remounts it with another size (space "returns" for disk-full tests).
pub struct Tmpfs {
    pub path: std::path::PathBuf,
}

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs at {}", at.display());
        Tmpfs {
            path: at.to_owned(),
        }
    }

    pub fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "remount {} with size {size}",
            self.path.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

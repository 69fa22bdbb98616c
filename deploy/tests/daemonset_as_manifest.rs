//! The node shipper run exactly as the rendered DaemonSet runs it, so that the manifest's
//! capability list can be trusted: the container's root filesystem is the image's
//! (deploy/image-rootfs.sh), read-only; the DaemonSet's volumes are mounted where it mounts
//! them (host /proc and /sys read-only at /host/proc and /host/sys, bpffs at /sys/fs/bpf,
//! tracefs, the state directory); the process runs with the manifest's uid and gid and with
//! exactly its added capabilities as the bounding, inheritable and ambient sets, with
//! no_new_privs (allowPrivilegeEscalation: false), via `setpriv` inside a `chroot`. A network
//! namespace of the test's own stands in for the node's network (hostNetwork), with a default
//! route over a veth so the shipper picks its interface as on a node.
//!
//! The projected ServiceAccount token volume is a directory the test writes a token into, as
//! the kubelet would: signed with a key of the test's own (openssl), for the projection's
//! audience, naming the node and the DaemonSet's ServiceAccount; the collector checks it
//! against that key's JWKS file, so the shipper runs with authentication on as deployed.
//!
//! What differs from a kubelet, and why: the collector address (the manifest's Service name
//! cannot resolve here; the collector runs on the namespace's loopback), the interval (1 s,
//! to keep the test short), the "host" bpffs is one the test mounts (a test must not depend
//! on the machine's mounts), and the runtime's seccomp profile is not applied (containerd's
//! RuntimeDefault allows bpf() and perf_event_open() to containers that hold CAP_BPF and
//! CAP_PERFMON; docs/kubernetes.md says where that comes from).
//!
//! Then each capability is removed in turn: the shipper must exit with an error naming it.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kappie_deploy::{deploy_dir, find, render, strict};
use kappie_testkit::need::{NETNS, OPENSSL};
use kappie_testkit::{require, wait_for, Bpffs, Need, Netns, Proc, Veth};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NODE: &str = "as-manifest-node";
const HTTP: &str = "http://127.0.0.1:19190";
const SETPRIV: Need = Need::Tool {
    program: "setpriv",
    package: "util-linux",
};
const UNSHARE: Need = Need::Tool {
    program: "unshare",
    package: "util-linux",
};
const CHROOT: Need = Need::Tool {
    program: "chroot",
    package: "coreutils",
};

/// What the DaemonSet says about the shipper's process.
struct Manifest {
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid: i64,
    gid: i64,
    caps: Vec<String>,
    no_new_privs: bool,
    read_only_root: bool,
    /// (mountPath, hostPath or `projected:<volume>`, readOnly), parents first.
    mounts: Vec<(String, String, bool)>,
    /// The serviceAccountToken projections: (volume, path in it, audience).
    tokens: Vec<(String, String, Option<String>)>,
    /// `system:serviceaccount:<namespace>:<name>` of the pods.
    service_account: String,
}

fn manifest() -> Manifest {
    let objects = render(&deploy_dir().join("kubernetes")).unwrap();
    let ds: DaemonSet = strict(find(&objects, "DaemonSet", "kappie-shipper").unwrap()).unwrap();
    let service_account = format!(
        "system:serviceaccount:{}:{}",
        ds.metadata.namespace.clone().unwrap(),
        ds.spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap()
            .service_account_name
            .unwrap()
    );
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        let v = if let Some(v) = &e.value {
            v.clone()
        } else {
            let from = e.value_from.clone().unwrap();
            if let Some(f) = from.field_ref {
                assert_eq!(f.field_path, "spec.nodeName");
                NODE.to_owned()
            } else {
                let k = from.config_map_key_ref.unwrap();
                let cm: ConfigMap = strict(find(&objects, "ConfigMap", &k.name).unwrap()).unwrap();
                cm.data.unwrap()[&k.key].clone()
            }
        };
        env.push((e.name.clone(), v));
    }
    let mut tokens = Vec::new();
    let mut mounts: Vec<(String, String, bool)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let v = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .unwrap();
            let host = match (&v.host_path, &v.projected) {
                (Some(h), _) => h.path.clone(),
                (None, Some(p)) => {
                    for src in p.sources.iter().flatten() {
                        let t = src
                            .service_account_token
                            .clone()
                            .expect("serviceAccountToken projections only");
                        tokens.push((v.name.clone(), t.path, t.audience));
                    }
                    format!("projected:{}", v.name)
                }
                _ => panic!("hostPath and projected token volumes only: {}", v.name),
            };
            (m.mount_path.clone(), host, m.read_only == Some(true))
        })
        .collect();
    mounts.sort_by_key(|m| m.0.len());
    Manifest {
        args: c.args.clone().unwrap(),
        env,
        uid: sc.run_as_user.unwrap(),
        gid: sc.run_as_group.unwrap(),
        caps: sc.capabilities.unwrap().add.unwrap(),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        read_only_root: sc.read_only_root_filesystem == Some(true),
        mounts,
        tokens,
        service_account,
    }
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A key in `dir` and its JWKS in `dir/jwks.json`; then, for each projected token of the
/// manifest, the token the kubelet would write, in `dir/projected-<volume>/<path>`.
fn project_tokens(dir: &Path, m: &Manifest) {
    kappie_collector::shipper_auth::ring_jwt::install();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .args(["-out", "issuer.key"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = EncodingKey::from_rsa_pem(&std::fs::read(dir.join("issuer.key")).unwrap()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("test-issuer".into());
    let set = serde_json::json!({ "keys": [jwk] });
    std::fs::write(dir.join("jwks.json"), set.to_string()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (volume, path, audience) in &m.tokens {
        let claims = serde_json::json!({
            "aud": [audience.clone().unwrap_or_else(|| "https://kubernetes.default.svc".into())],
            "exp": now + 3600, "iat": now, "nbf": now, "iss": ISSUER,
            "sub": m.service_account,
            "kubernetes.io": {"namespace": "kappie", "node": {"name": NODE, "uid": "n-1"},
                "pod": {"name": "kappie-shipper-test", "uid": "p-1"},
                "serviceaccount": {"name": "kappie-shipper", "uid": "s-1"}},
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-issuer".into());
        let vol = dir.join(format!("projected-{volume}"));
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(
            vol.join(path),
            jsonwebtoken::encode(&header, &claims, &key).unwrap(),
        )
        .unwrap();
    }
}

/// target/debug (or wherever this test binary's profile directory is).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The container: the image's root filesystem plus `setpriv` (in /test-tools, which is not
/// part of the image) and the mount points of the manifest's volumes.
fn rootfs(dir: &Path, m: &Manifest) -> PathBuf {
    let root = dir.join("rootfs");
    let script = deploy_dir().join("image-rootfs.sh");
    let st = Command::new("bash")
        .arg(&script)
        .arg(&root)
        .arg(bin_dir())
        .status()
        .unwrap();
    assert!(st.success(), "{} failed", script.display());
    let tools = root.join("test-tools");
    std::fs::create_dir_all(&tools).unwrap();
    let setpriv = String::from_utf8(
        Command::new("which")
            .arg("setpriv")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let setpriv = setpriv.trim();
    std::fs::copy(setpriv, tools.join("setpriv")).unwrap();
    let ldd = String::from_utf8(Command::new("ldd").arg(setpriv).output().unwrap().stdout).unwrap();
    for lib in ldd.lines().filter_map(|l| l.split("=> ").nth(1)) {
        let lib = lib.split_whitespace().next().unwrap();
        let name = Path::new(lib).file_name().unwrap();
        std::fs::copy(lib, tools.join(name)).unwrap();
    }
    for (path, _, _) in &m.mounts {
        // Mount points under /sys exist in the sysfs the runtime mounts there.
        if !path.starts_with("/sys/") {
            std::fs::create_dir_all(root.join(path.trim_start_matches('/'))).unwrap();
        }
    }
    root
}

/// Starts the shipper in `node` as the DaemonSet would, with these capabilities.
fn start_as_manifest(
    node: &Netns,
    m: &Manifest,
    root: &Path,
    host: &dyn Fn(&str) -> PathBuf,
    caps: &[String],
    log: &Path,
) -> Proc {
    let sh = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let r = root.display().to_string();
    let mut script = String::from("set -eu\n");
    // The image's root, read-only; the runtime's /proc, /sys (read-only) and /dev.
    script += &format!("mount --bind {0} {0}\n", sh(&r));
    if m.read_only_root {
        script += &format!("mount -o remount,bind,ro {}\n", sh(&r));
    }
    script += &format!("mount --rbind /proc {}/proc\n", sh(&r));
    script += &format!("mount -t sysfs -o ro sysfs {}/sys\n", sh(&r));
    script += &format!("mount --rbind /dev {}/dev\n", sh(&r));
    for (path, host_path, ro) in &m.mounts {
        let target = format!("{r}{path}");
        script += &format!(
            "mount --rbind {} {}\n",
            sh(&host(host_path).display().to_string()),
            sh(&target)
        );
        if *ro {
            script += &format!("mount -o remount,bind,ro {}\n", sh(&target));
        }
    }
    let list = |prefix: &str| {
        let mut s = String::from(prefix);
        for c in caps {
            s += &format!(",+{}", c.to_lowercase());
        }
        s
    };
    let mut args: Vec<String> = m
        .args
        .iter()
        .map(|a| {
            if a.starts_with("--collector=") {
                "--collector=http://127.0.0.1:19195".to_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    args.push("--interval=1s".into());
    let chroot =
        String::from_utf8(Command::new("which").arg("chroot").output().unwrap().stdout).unwrap();
    script += &format!(
        "exec env -i {} {} {} /lib64/ld-linux-x86-64.so.2 --library-path /test-tools \
         /test-tools/setpriv --reuid={} --regid={} --clear-groups --inh-caps={} \
         --ambient-caps={} --bounding-set={} {} -- /usr/local/bin/kappie-shipper {}\n",
        m.env
            .iter()
            .map(|(k, v)| sh(&format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" "),
        chroot.trim(),
        sh(&r),
        m.uid,
        m.gid,
        list("-all"),
        list("-all"),
        list("-all"),
        if m.no_new_privs { "--no-new-privs" } else { "" },
        args.iter().map(|a| sh(a)).collect::<Vec<_>>().join(" "),
    );
    std::fs::write(log.with_extension("sh"), &script).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &node.name,
        "unshare",
        "--mount",
        "--propagation",
        "private",
    ])
    .args(["bash", "-c", &script]);
    Proc::spawn("shipper", cmd, log)
}

fn value(node: &Netns, q: &str) -> Option<f64> {
    node.enter(|| {
        let r: serde_json::Value = ureq::get(&format!("{HTTP}/api/v1/query"))
            .query("query", q)
            .call()
            .ok()?
            .into_json()
            .ok()?;
        let v = r["data"]["result"].as_array()?;
        if v.len() != 1 {
            return None;
        }
        v[0]["value"][1].as_str()?.parse().ok()
    })
}

fn get(node: &Netns, url: &str) -> Option<(u16, String)> {
    node.enter(|| match ureq::get(url).call() {
        Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
        Err(_) => None,
    })
}

fn dump(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn the_shipper_works_under_the_daemonsets_settings_and_needs_each_capability() {
    let needs = [
        NETNS.as_slice(),
        &[Need::KernelBtf, SETPRIV, UNSHARE, CHROOT, OPENSSL],
    ]
    .concat();
    if !require(&needs) {
        return;
    }
    let m = manifest();
    assert_eq!(m.caps, ["BPF", "NET_ADMIN", "PERFMON"]);
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path(), &m);
    // A bpffs of the test's own stands in for the host's /sys/fs/bpf.
    let bpffs = Bpffs::new("manifest");
    let state = dir.path().join("host-var-lib-kappie");
    std::fs::create_dir_all(&state).unwrap();
    assert!(
        !m.tokens.is_empty(),
        "the DaemonSet projects a collector token"
    );
    project_tokens(dir.path(), &m);
    let host = |p: &str| -> PathBuf {
        match p {
            "/sys/fs/bpf" => bpffs.path.clone(),
            "/var/lib/kappie" => state.clone(),
            p if p.starts_with("projected:") => dir
                .path()
                .join(format!("projected-{}", &p["projected:".len()..])),
            other => PathBuf::from(other),
        }
    };

    let node = Netns::new("mnode");
    let peer = Netns::new("mpeer");
    let veth = Veth::new(&peer, &node, 23);
    veth.quiet(&peer, &node);
    node.default_route_via(veth.a_addr4);
    let mut collector_cmd = node.command(&bin_dir().join("kappie-collector"));
    collector_cmd
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--http-listen",
            "127.0.0.1:19190",
            "--grpc-listen",
            "127.0.0.1:19195",
        ])
        .arg("--shipper-token-jwks-file")
        .arg(dir.path().join("jwks.json"))
        .args(["--shipper-token-issuer", ISSUER]);
    let _collector = Proc::spawn(
        "collector",
        collector_cmd,
        &dir.path().join("collector.log"),
    );
    wait_for("collector ready", Duration::from_secs(30), || {
        get(&node, &format!("{HTTP}/-/ready")).filter(|(c, _)| *c == 200)
    });

    // With every capability the manifest adds: every source works, eBPF counts exactly.
    let log = dir.path().join("shipper.log");
    let mut shipper = start_as_manifest(&node, &m, &root, &host, &m.caps, &log);
    let ready = Instant::now() + Duration::from_secs(60);
    while get(&node, "http://127.0.0.1:9965/-/ready").map(|r| r.0) != Some(200) {
        if let Ok(Some(st)) = shipper.child.try_wait() {
            panic!("shipper exited {st:?}:\n{}", dump(&log));
        }
        assert!(Instant::now() < ready, "shipper not ready:\n{}", dump(&log));
        std::thread::sleep(Duration::from_millis(100));
    }
    let sel = format!("node_name=\"{NODE}\"");
    let fwd = format!("kappie_forward_count{{direction=\"ingress\",{sel}}}");
    let drops = format!("kappie_drop_count{{reason=\"NO_SOCKET\",direction=\"ingress\",{sel}}}");
    let first = wait_for("forward counts", Duration::from_secs(30), || {
        value(&node, &fwd)
    });
    assert_eq!(first, 0.0, "the quiet link carried nothing yet");
    let drops0 = value(&node, &drops).unwrap_or(0.0);
    const N: usize = 200;
    let target = format!("{}:9", veth.b_addr4);
    peer.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..N {
            s.send_to(b"kappie", target.as_str()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let settled = |q: &str, want: f64| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v = value(&node, q);
            if v == Some(want) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{q} = {v:?}, want {want}\n{}",
                dump(&log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    settled(&fwd, N as f64);
    settled(&drops, drops0 + N as f64);
    // The /proc and sysfs sources read the node's namespace through /host/proc, /host/sys.
    let iface = format!(
        "kappie_interface_stats{{interface_name=\"{}\",statistic_name=\"rx_packets\",{sel}}}",
        veth.b_if
    );
    assert!(value(&node, &iface).unwrap_or(0.0) >= N as f64, "{iface}");
    for q in [
        format!("count(kappie_tcp_connection_stats{{{sel}}})"),
        format!("count(kappie_ip_connection_stats{{{sel}}})"),
        format!("sum(kappie_tcp_state{{state=\"ESTABLISHED\",{sel}}})"),
    ] {
        let v = wait_for(&q, Duration::from_secs(20), || value(&node, &q));
        assert!(v >= 1.0, "{q} = {v}");
    }
    let (code, metrics) = get(&node, "http://127.0.0.1:9965/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("kappie_shipper_"), "{metrics}");
    // SIGTERM, as the kubelet stops a pod: the programs are detached, the state saved.
    assert_eq!(
        unsafe { libc::kill(shipper.child.id() as i32, libc::SIGTERM) },
        0
    );
    let st = shipper.child.wait().unwrap();
    assert!(st.success(), "shipper exit {st:?}\n{}", dump(&log));
    assert!(
        state.join("shipper-state.json").exists(),
        "state file on the host path"
    );
    let pinned: Vec<String> = std::fs::read_dir(bpffs.path.join("kappie"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!pinned.is_empty(), "maps pinned in the host's bpffs");
    assert!(
        !pinned.iter().any(|n| n.starts_with("link-")),
        "links still pinned after SIGTERM: {pinned:?}"
    );

    // Without any one of them it stops with an error that names it.
    for missing in &m.caps {
        let caps: Vec<String> = m.caps.iter().filter(|c| *c != missing).cloned().collect();
        let log = dir.path().join(format!("shipper-without-{missing}.log"));
        let mut p = start_as_manifest(&node, &m, &root, &host, &caps, &log);
        let st = wait_for(
            &format!("the shipper without CAP_{missing} to exit"),
            Duration::from_secs(60),
            || p.child.try_wait().unwrap(),
        );
        let text = dump(&log);
        assert!(!st.success(), "without CAP_{missing} it ran on:\n{text}");
        assert!(
            text.contains(&format!("lacks CAP_{missing}")),
            "without CAP_{missing}, the error does not name it:\n{text}"
        );
        let line = text
            .lines()
            .find(|l| l.contains("lacks CAP_"))
            .unwrap_or_default();
        eprintln!("without CAP_{missing}: {line}");
    }
}

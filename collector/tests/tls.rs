//! TLS on both ports (issue 16), with real certificates made by openssl: a shipper that
//! trusts the CA (`--collector-ca-file`) and presents a client certificate naming its node
//! pushes over gRPC with TLS; a shipper whose certificate names another node than it claims
//! is refused and counted; the HTTP API answers over HTTPS (curl with the CA), plain text
//! gets no answer, and a rotated certificate (new files in place, as cert-manager writes
//! them) is served without a restart.

mod common;

use common::{collector_process, workspace_bin};
use kappie_testkit::need::OPENSSL;
use kappie_testkit::{require, wait_for, Need, Proc};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 private key in `dir/file`.
fn genkey(dir: &Path, file: &str) {
    let args = [
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
    ];
    openssl(dir, &[&args[..], &[file]].concat());
}

/// A key and a certificate for `san` signed by the CA in `dir`, serial `serial`.
fn cert(dir: &Path, name: &str, serial: &str, san: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    genkey(dir, &key);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/CN=kappie-collector",
            "-out",
            &csr,
        ],
    );
    std::fs::write(dir.join("san.ext"), format!("subjectAltName={san}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &crt,
        ],
    );
}

fn curl(dir: &Path, url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(dir.join("ca.crt"))
        .arg(url)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Serial number of the certificate the server at `addr` presents.
fn served_serial(dir: &Path, addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -CAfile ca.crt </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn shippers_and_clients_speak_tls_and_a_rotated_certificate_is_served() {
    if !require(&[
        OPENSSL,
        Need::Tool {
            program: "curl",
            package: "curl",
        },
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    genkey(d, "ca.key");
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=kappie-test-ca",
            "-days",
            "2",
            "-out",
            "ca.crt",
        ],
    );
    cert(d, "one", "0x1001", "IP:127.0.0.1,DNS:localhost");
    cert(d, "two", "0x2002", "IP:127.0.0.1,DNS:localhost");
    // Client certificates naming the node they may write as.
    cert(d, "tls-node", "0x3003", "DNS:tls-node");
    cert(d, "other-node", "0x4004", "DNS:other-node");
    std::fs::copy(d.join("one.crt"), d.join("tls.crt")).unwrap();
    std::fs::copy(d.join("one.key"), d.join("tls.key")).unwrap();

    let (_collector, http, grpc) = collector_process(
        &d.join("data"),
        &d.join("collector.log"),
        &[
            "--tls-cert-file",
            d.join("tls.crt").to_str().unwrap(),
            "--tls-key-file",
            d.join("tls.key").to_str().unwrap(),
            "--tls-client-ca-file",
            d.join("ca.crt").to_str().unwrap(),
        ],
    );
    let https = http.replace("http://", "https://");
    let http_addr = http.trim_start_matches("http://").to_string();
    wait_for("the collector over HTTPS", Duration::from_secs(60), || {
        curl(d, &format!("{https}/-/ready"))
    });
    // Plain text gets no answer.
    assert!(ureq::get(&format!("{http}/-/ready")).call().is_err());

    // A shipper with the certificate of its node, and one whose certificate names another
    // node than it claims (its series would carry cluster="evil").
    let shipper = |cert: &str, cluster: &str, run: &str| {
        let mut cmd = Command::new(workspace_bin("kappie-shipper"));
        cmd.args(["--disable-sources", "ebpf", "--interval", "300ms"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--node-name", "tls-node", "--cluster", cluster])
            .args(["--collector", &grpc.replace("http://", "https://")])
            .arg("--collector-ca-file")
            .arg(d.join("ca.crt"))
            .arg("--client-cert-file")
            .arg(d.join(format!("{cert}.crt")))
            .arg("--client-key-file")
            .arg(d.join(format!("{cert}.key")))
            .arg("--state-file")
            .arg(d.join(format!("state-{run}.json")));
        Proc::spawn("shipper", cmd, &d.join(format!("shipper-{run}.log")))
    };
    let _shipper = shipper("tls-node", "tls", "good");
    let _intruder = shipper("other-node", "evil", "evil");
    let count = |cluster: &str| {
        let q = format!("count(kappie_tcp_state%7Bcluster%3D%22{cluster}%22%7D)");
        curl(d, &format!("{https}/api/v1/query?query={q}"))
    };
    wait_for(
        "the shipper's series over TLS",
        Duration::from_secs(60),
        || count("tls").filter(|b| b.contains("\"result\":[{")),
    );
    // The intruder is refused and counted, and none of its series are stored.
    wait_for("the intruder refused", Duration::from_secs(60), || {
        let m = curl(d, &format!("{https}/metrics"))?;
        let line = m
            .lines()
            .find(|l| l.starts_with("kappie_ingest_refused_unauthorized_total "))?;
        (!line.ends_with(" 0")).then_some(())
    });
    let evil = count("evil").unwrap();
    assert!(
        evil.contains("\"result\":[]"),
        "the intruder's series were stored: {evil}"
    );
    let log = std::fs::read_to_string(d.join("shipper-evil.log")).unwrap();
    assert!(
        log.contains("not the node your client certificate names"),
        "{log}"
    );

    // Rotation: the new certificate and key are written in place.
    assert_eq!(served_serial(d, &http_addr), "serial=1001");
    std::fs::copy(d.join("two.crt"), d.join("tls.crt")).unwrap();
    std::fs::copy(d.join("two.key"), d.join("tls.key")).unwrap();
    wait_for("the rotated certificate", Duration::from_secs(30), || {
        (served_serial(d, &http_addr) == "serial=2002").then_some(())
    });
    assert!(curl(d, &format!("{https}/-/healthy")).is_some());
}

//! TLS on both ports (issue 16), with real certificates made by openssl: a shipper that
//! trusts the CA (`--collector-ca-file`) pushes over gRPC with TLS, the HTTP API answers
//! over HTTPS (curl with the CA), plain text gets no answer, and a rotated certificate
//! (new files in place, as cert-manager writes them) is served without a restart.

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

/// A server key and a certificate for 127.0.0.1 signed by the CA in `dir`, serial `serial`.
fn server_cert(dir: &Path, name: &str, serial: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
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
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
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
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca.key",
        ],
    );
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
    server_cert(d, "one", "0x1001");
    server_cert(d, "two", "0x2002");
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
        ],
    );
    let https = http.replace("http://", "https://");
    let http_addr = http.trim_start_matches("http://").to_string();
    wait_for("the collector over HTTPS", Duration::from_secs(60), || {
        curl(d, &format!("{https}/-/ready"))
    });
    // Plain text gets no answer.
    assert!(ureq::get(&format!("{http}/-/ready")).call().is_err());

    let mut cmd = Command::new(workspace_bin("kappie-shipper"));
    cmd.args(["--disable-sources", "ebpf", "--interval", "300ms"])
        .args(["--node-name", "tls-node", "--cluster", "tls"])
        .args(["--collector", &grpc.replace("http://", "https://")])
        .arg("--collector-ca-file")
        .arg(d.join("ca.crt"))
        .arg("--state-file")
        .arg(d.join("shipper-state.json"));
    let _shipper = Proc::spawn("shipper", cmd, &d.join("shipper.log"));
    let query = format!(
        "{https}/api/v1/query?query=count(kappie_tcp_state%7Bnode_name%3D%22tls-node%22%7D)"
    );
    wait_for(
        "the shipper's series over TLS",
        Duration::from_secs(60),
        || curl(d, &query).filter(|b| b.contains("\"result\":[{")),
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

//! Shipper authentication by projected ServiceAccount tokens (issue 16), with real keys made
//! by openssl, tokens shaped as the API server issues them (signed here), the real collector
//! process and the real shipper binary: a shipper whose token names its node delivers; one
//! whose token names another node is PERMISSION_DENIED and counted; expired, wrong audience,
//! issuer or subject, a bad signature, no node claim or no token at all are UNAUTHENTICATED;
//! a rotated token file and a new key (in the JWKS file, or at the JWKS URL, which the
//! collector fetches with a bearer token and reads the issuer beside) are picked up.

mod common;

use common::{collector_process, wait_ready, workspace_bin};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::HelloRequest;
use kappie_testkit::need::OPENSSL;
use kappie_testkit::{require, wait_for, Proc};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SHIPPER_SA: &str = "system:serviceaccount:kappie:kappie-shipper";

/// A private key in `dir/name.key` (PKCS#8 PEM): `rsa` (2048 bits) or `ec` (P-256).
fn genkey(dir: &Path, name: &str, kind: &str) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).arg("genpkey");
    match kind {
        "rsa" => cmd.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        _ => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    };
    let out = cmd.args(["-out", &format!("{name}.key")]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join(format!("{name}.key"))).unwrap()
}

/// A signing key with its key id and algorithm.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn new(dir: &Path, kid: &str, alg: Algorithm) -> Signer {
        kappie_collector::shipper_auth::ring_jwt::install();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&genkey(dir, kid, "ec")).unwrap(),
            _ => EncodingKey::from_rsa_pem(&genkey(dir, kid, "rsa")).unwrap(),
        };
        Signer {
            kid: kid.into(),
            alg,
            key,
        }
    }

    /// The public half, as the API server lists it in its JWKS.
    fn jwk(&self) -> Jwk {
        let mut j = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        j.common.key_id = Some(self.kid.clone());
        j
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn jwks(keys: &[&Signer]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    })
    .unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims of a projected token of a shipper pod on `node` (as Kubernetes 1.30+ issues
/// them), valid for an hour.
fn claims(node: &str) -> Value {
    let t = now();
    json!({
        "aud": ["kappie"],
        "exp": t + 3600,
        "iat": t,
        "nbf": t,
        "iss": ISSUER,
        "jti": "5f0c4f3e-7d2a-4b7e-9a51-1b7d3a1c2e90",
        "sub": SHIPPER_SA,
        "kubernetes.io": {
            "namespace": "kappie",
            "node": {"name": node, "uid": "0b4c3a52-0f4e-4d39-8b8e-2d4b1f6f0a11"},
            "pod": {"name": "kappie-shipper-x7k2p", "uid": "9a3e2f10-5c4b-4e8a-b1d2-3c4d5e6f7a8b"},
            "serviceaccount": {"name": "kappie-shipper", "uid": "2e6f1c0d-8a9b-4c3d-a1b2-c3d4e5f6a7b8"}
        }
    })
}

fn write(dir: &Path, file: &str, text: &str) {
    // Written beside and renamed, as the kubelet swaps projected files.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// The collector process with the JWKS file `dir/jwks.json`; its HTTP and gRPC URLs.
fn collector_with_jwks_file(dir: &Path) -> (Proc, String, String) {
    let (p, http, grpc) = collector_process(
        &dir.join("data"),
        &dir.join("collector.log"),
        &[
            "--shipper-token-jwks-file",
            dir.join("jwks.json").to_str().unwrap(),
            "--shipper-token-issuer",
            ISSUER,
        ],
    );
    wait_ready(&http);
    (p, http, grpc)
}

/// Hello as `node` with `token` (none: no authorization metadata); the status code and
/// message of the answer.
fn hello(grpc: &str, node: &str, token: Option<&str>) -> (tonic::Code, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = IngestClient::connect(grpc.to_owned()).await.unwrap();
        let mut req = tonic::Request::new(HelloRequest {
            shipper_id: node.into(),
            session: 1,
            node_name: node.into(),
            cluster: "t".into(),
            version: "test".into(),
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        match c.hello(req).await {
            Ok(_) => (tonic::Code::Ok, String::new()),
            Err(st) => (st.code(), st.message().to_owned()),
        }
    })
}

/// The real shipper as `node`, sending the token in `dir/token-<run>`.
fn shipper(dir: &Path, grpc: &str, node: &str, run: &str) -> Proc {
    let mut cmd = Command::new(workspace_bin("kappie-shipper"));
    cmd.args(["--disable-sources", "ebpf", "--interval", "300ms"])
        .args(["--max-backoff", "500ms", "--http-listen", "127.0.0.1:0"])
        .args(["--node-name", node, "--cluster", run, "--collector", grpc])
        .arg("--collector-token-file")
        .arg(dir.join(format!("token-{run}")))
        .arg("--state-file")
        .arg(dir.join(format!("state-{run}.json")));
    Proc::spawn("shipper", cmd, &dir.join(format!("shipper-{run}.log")))
}

fn series_of(http: &str, cluster: &str) -> usize {
    let v = common::query(
        http,
        &format!("count(kappie_tcp_state{{cluster=\"{cluster}\"}})"),
    );
    common::single_value(&v).unwrap_or(0.0) as usize
}

fn refused_unauthorized(http: &str) -> f64 {
    let m = ureq::get(&format!("{http}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("kappie_ingest_refused_unauthorized_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_shipper_with_its_nodes_token_delivers_and_a_rotated_token_file_is_read() {
    if !require(&[OPENSSL]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rsa = Signer::new(d, "rsa-1", Algorithm::RS256);
    write(d, "jwks.json", &jwks(&[&rsa]));
    let (_c, http, grpc) = collector_with_jwks_file(d);

    // The shipper starts with a token for another audience: refused, nothing stored.
    let mut wrong = claims("token-node");
    wrong["aud"] = json!(["https://kubernetes.default.svc"]);
    write(d, "token-good", &rsa.sign(&wrong));
    let _s = shipper(d, &grpc, "token-node", "good");
    let log = d.join("shipper-good.log");
    wait_for("the shipper to be refused", Duration::from_secs(60), || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("ServiceAccount token refused: its audience is")
            .then_some(())
    });
    assert_eq!(series_of(&http, "good"), 0);

    // The kubelet writes a token with the right audience: the shipper reads it and delivers.
    write(d, "token-good", &rsa.sign(&claims("token-node")));
    wait_for(
        "the shipper's series with the rotated token",
        Duration::from_secs(60),
        || (series_of(&http, "good") > 0).then_some(()),
    );
    assert_eq!(refused_unauthorized(&http), 0.0);
}

#[test]
fn a_token_for_another_node_is_permission_denied_and_counted() {
    if !require(&[OPENSSL]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = Signer::new(d, "ec-1", Algorithm::ES256);
    write(d, "jwks.json", &jwks(&[&ec]));
    let (_c, http, grpc) = collector_with_jwks_file(d);

    // A valid token of node-a, used by a shipper that says it is node-b.
    write(d, "token-evil", &ec.sign(&claims("node-a")));
    let _s = shipper(d, &grpc, "node-b", "evil");
    wait_for("the intruder refused", Duration::from_secs(60), || {
        (refused_unauthorized(&http) > 0.0).then_some(())
    });
    // The shipper logs the refusal once the answer is back.
    wait_for(
        "the refusal in the shipper's log",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(d.join("shipper-evil.log")).unwrap_or_default();
            let why = "is not the node your ServiceAccount token names (";
            (log.contains(&format!("{why}\\\"node-a\\\")"))
                || log.contains(&format!("{why}\"node-a\")")))
            .then_some(())
        },
    );
    assert_eq!(series_of(&http, "evil"), 0, "none of its series is stored");
    assert_eq!(
        hello(&grpc, "node-b", Some(&ec.sign(&claims("node-a")))).0,
        tonic::Code::PermissionDenied
    );
    // The same token as its own node is fine (ES256 verifies).
    assert_eq!(
        hello(&grpc, "node-a", Some(&ec.sign(&claims("node-a")))).0,
        tonic::Code::Ok
    );
}

#[test]
fn invalid_or_missing_tokens_are_unauthenticated_with_the_reason() {
    if !require(&[OPENSSL]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rsa = Signer::new(d, "rsa-1", Algorithm::RS256);
    // Signs with its own key but names the real key's id.
    let mut forger = Signer::new(d, "forger", Algorithm::RS256);
    forger.kid = "rsa-1".into();
    write(d, "jwks.json", &jwks(&[&rsa]));
    let (_c, _http, grpc) = collector_with_jwks_file(d);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("n1");
        f(&mut c);
        rsa.sign(&c)
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("valid", Some(with(&|_| {})), ""),
        (
            "expired",
            Some(with(&|c| c["exp"] = json!(now() - 120))),
            "it has expired",
        ),
        (
            "not yet valid",
            Some(with(&|c| c["nbf"] = json!(now() + 600))),
            "not valid yet",
        ),
        (
            "nbf as a string",
            Some(with(&|c| c["nbf"] = json!((now() + 600).to_string()))),
            "refused",
        ),
        (
            "wrong audience",
            Some(with(&|c| c["aud"] = json!(["other"]))),
            "its audience is [\"other\"], not \"kappie\"",
        ),
        (
            "wrong issuer",
            Some(with(&|c| c["iss"] = json!("https://evil.example"))),
            "its issuer is \"https://evil.example\"",
        ),
        (
            "wrong subject",
            Some(with(&|c| {
                c["sub"] = json!("system:serviceaccount:default:default")
            })),
            "subject \"system:serviceaccount:default:default\" is not an allowed",
        ),
        (
            "no node claim",
            Some(with(&|c| {
                c["kubernetes.io"].as_object_mut().unwrap().remove("node");
            })),
            "no kubernetes.io.node.name claim",
        ),
        (
            "bad signature",
            Some(forger.sign(&claims("n1"))),
            "signature does not verify",
        ),
        ("not a JWT", Some("hello".into()), "not a JWT"),
        ("missing", None, "a ServiceAccount token is required"),
    ];
    for (name, token, reason) in cases {
        let (code, msg) = hello(&grpc, "n1", token.as_deref());
        if reason.is_empty() {
            assert_eq!(code, tonic::Code::Ok, "{name}: {msg}");
            continue;
        }
        assert_eq!(code, tonic::Code::Unauthenticated, "{name}: {msg}");
        assert!(msg.contains(reason), "{name}: {msg:?} lacks {reason:?}");
        if let Some(t) = &token {
            let signature = t.rsplit('.').next().unwrap();
            assert!(
                !msg.contains(signature),
                "{name}: the token is echoed: {msg}"
            );
        }
    }
}

#[test]
fn a_new_key_in_the_jwks_file_is_used_without_a_restart() {
    if !require(&[OPENSSL]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = Signer::new(d, "rsa-1", Algorithm::RS256);
    let new = Signer::new(d, "rsa-2", Algorithm::RS256);
    write(d, "jwks.json", &jwks(&[&old]));
    let (_c, _http, grpc) = collector_with_jwks_file(d);
    let token = new.sign(&claims("n1"));
    let (code, msg) = hello(&grpc, "n1", Some(&token));
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(
        msg.contains("no key of the issuer has id \"rsa-2\""),
        "{msg}"
    );
    // The issuer's keys are rotated: both keys listed while tokens of either are in use.
    write(d, "jwks.json", &jwks(&[&old, &new]));
    wait_for("the new key to be used", Duration::from_secs(30), || {
        (hello(&grpc, "n1", Some(&token)).0 == tonic::Code::Ok).then_some(())
    });
    assert_eq!(
        hello(&grpc, "n1", Some(&old.sign(&claims("n1")))).0,
        tonic::Code::Ok
    );
}

/// A stand-in for the API server's discovery endpoints over plain HTTP: the current JWKS at
/// `/openid/v1/jwks` and the discovery document, only with `Authorization: Bearer
/// collector-sa-token` (else 401); counts the requests it answered.
struct IssuerEndpoint {
    addr: String,
    jwks: Arc<Mutex<String>>,
    served: Arc<Mutex<Vec<String>>>,
}

impl IssuerEndpoint {
    fn start(jwks: String) -> IssuerEndpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let jwks = Arc::new(Mutex::new(jwks));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (j, s) = (jwks.clone(), served.clone());
        // Ends with the test process; serves one request per connection.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut authorized = false;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    let h = h.trim().to_ascii_lowercase();
                    authorized |= h == "authorization: bearer collector-sa-token";
                }
                let (status, body) = match (authorized, path.as_str()) {
                    (false, _) => ("401 Unauthorized", String::new()),
                    (true, "/openid/v1/jwks") => ("200 OK", j.lock().unwrap().clone()),
                    (true, "/.well-known/openid-configuration") => (
                        "200 OK",
                        json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/openid/v1/jwks")})
                            .to_string(),
                    ),
                    _ => ("404 Not Found", String::new()),
                };
                s.lock().unwrap().push(format!("{path} {status}"));
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        IssuerEndpoint { addr, jwks, served }
    }
}

#[test]
fn keys_and_issuer_are_fetched_from_a_url_and_a_new_key_is_fetched_at_once() {
    if !require(&[OPENSSL]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = Signer::new(d, "rsa-1", Algorithm::RS256);
    let new = Signer::new(d, "ec-2", Algorithm::ES256);
    let issuer = IssuerEndpoint::start(jwks(&[&old]));
    write(d, "sa-token", "collector-sa-token\n");
    let (_c, http, grpc) = collector_process(
        &d.join("data"),
        &d.join("collector.log"),
        &[
            "--shipper-token-jwks-url",
            &format!("http://{}/openid/v1/jwks", issuer.addr),
            "--shipper-token-bearer-file",
            d.join("sa-token").to_str().unwrap(),
        ],
    );
    wait_ready(&http);
    // Keys and the issuer (from the discovery document) are loaded in the background.
    wait_for("the keys fetched", Duration::from_secs(30), || {
        (hello(&grpc, "n1", Some(&old.sign(&claims("n1")))).0 == tonic::Code::Ok).then_some(())
    });
    let mut other_issuer = claims("n1");
    other_issuer["iss"] = json!("https://other.example");
    let (code, msg) = hello(&grpc, "n1", Some(&old.sign(&other_issuer)));
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(msg.contains(&format!("not \"{ISSUER}\"")), "{msg}");

    // The API server signs with a new key: the first token that names it fetches the set.
    *issuer.jwks.lock().unwrap() = jwks(&[&old, &new]);
    let (code, msg) = hello(&grpc, "n1", Some(&new.sign(&claims("n1"))));
    assert_eq!(code, tonic::Code::Ok, "{msg}");
    let served = issuer.served.lock().unwrap().clone();
    assert!(
        served.iter().all(|s| s.ends_with("200 OK")),
        "every fetch carried the bearer token: {served:?}"
    );
    assert!(served.len() >= 3, "{served:?}");
}

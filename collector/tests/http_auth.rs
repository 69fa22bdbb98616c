//! HTTP API authentication (issue 16): with a token file and a users file set, the API and
//! `/metrics` answer 401 without valid credentials, the health endpoints answer anyway, and
//! a rotated token takes effect without a restart.

mod common;

use base64::Engine;
use common::InProcess;
use kappie_testkit::prometheus::{remote_write, series};
use std::time::Duration;

fn status(req: ureq::Request) -> (u16, String) {
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => {
            let www = r.header("WWW-Authenticate").unwrap_or("").to_string();
            (c, format!("{www} {}", r.into_string().unwrap()))
        }
        Err(e) => panic!("{e}"),
    }
}

fn basic(user: &str, password: &str) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {enc}")
}

#[tokio::test]
async fn the_api_asks_for_credentials_and_the_probes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let users_file = dir.path().join("users");
    let hash = bcrypt::hash("grafana-pw", 4).unwrap();
    std::fs::write(
        &users_file,
        format!("# htpasswd -nB grafana\ngrafana:{hash}\n"),
    )
    .unwrap();
    let config = kappie_collector::Config {
        data_dir: dir.path().join("data"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_auth_token_file: Some(token_file.clone()),
        http_auth_users_file: Some(users_file.clone()),
        self_scrape_interval_seconds: 0,
        ..kappie_collector::Config::default()
    };
    let c = InProcess::start_with(config).await;
    let base = c.http_url();
    tokio::task::spawn_blocking(move || {
        let q = format!("{base}/api/v1/query?query=1");
        let (code, body) = status(ureq::get(&q));
        assert_eq!(code, 401, "{body}");
        assert!(
            body.contains("Basic realm=\"kappie\"") && body.contains("unauthorized"),
            "{body}"
        );
        for bad in [
            "Bearer wrong".to_string(),
            basic("grafana", "wrong"),
            basic("nobody", "grafana-pw"),
            "Basic !!!".to_string(),
        ] {
            assert_eq!(
                status(ureq::get(&q).set("Authorization", &bad)).0,
                401,
                "{bad}"
            );
        }
        assert_eq!(
            status(ureq::get(&q).set("Authorization", "Bearer s3cret-token")).0,
            200
        );
        for _ in 0..2 {
            // The second time from the cache of verified credentials.
            let (code, body) =
                status(ureq::get(&q).set("Authorization", &basic("grafana", "grafana-pw")));
            assert_eq!(code, 200, "{body}");
        }
        assert_eq!(status(ureq::get(&format!("{base}/metrics"))).0, 401);
        for probe in ["/-/healthy", "/-/ready"] {
            assert_eq!(status(ureq::get(&format!("{base}{probe}"))).0, 200);
        }
        // Remote write in is behind it too (the testkit client sends no credentials).
        let w = remote_write(
            &format!("{base}/api/v1/write"),
            vec![series(&[("__name__", "x")], &[(1_000, 1.0)])],
        );
        assert!(w.unwrap_err().contains("HTTP 401"));
        // A rotated token takes effect without a restart.
        std::fs::write(&token_file, "rotated\n").unwrap();
        kappie_testkit::wait_for("the new token", Duration::from_secs(10), || {
            (status(ureq::get(&q).set("Authorization", "Bearer rotated")).0 == 200).then_some(())
        });
        assert_eq!(
            status(ureq::get(&q).set("Authorization", "Bearer s3cret-token")).0,
            401
        );
    })
    .await
    .unwrap();
    c.stop().await;
}

/// Basic auth's challenge makes a browser prompt for a user name and password; with only a
/// token configured that prompt could never succeed, so the challenge is `Bearer` (the web
/// console asks for the token itself).
#[tokio::test]
async fn with_only_a_token_the_challenge_is_bearer() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let config = kappie_collector::Config {
        data_dir: dir.path().join("data"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_auth_token_file: Some(token_file),
        ..kappie_collector::Config::default()
    };
    let c = InProcess::start_with(config).await;
    let base = c.http_url();
    tokio::task::spawn_blocking(move || {
        let (code, body) = status(ureq::get(&format!("{base}/api/v1/query?query=1")));
        assert_eq!(code, 401, "{body}");
        assert!(body.starts_with("Bearer realm=\"kappie\" "), "{body}");
        // The console's page itself is public: it holds no data and asks for the token.
        assert_eq!(status(ureq::get(&format!("{base}/"))).0, 200);
    })
    .await
    .unwrap();
    c.stop().await;
}

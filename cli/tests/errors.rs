//! What `kappie` says and which exit code it ends with when something is wrong: no
//! collector, credentials wanted or refused, bad usage; and the help that shows examples.

mod common;

use common::{collector_with_fixture, kappie, kappie_command, run, Collector};
use kappie_testkit::prometheus::free_port;

const HINT: &str = "Is `kubectl -n kappie port-forward svc/kappie-collector 9090` running?";

#[test]
fn an_unreachable_collector_exits_2_with_the_port_forward_hint() {
    // Nobody listens on a free port.
    let server = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["shippers"][..],
        &["top", "drops"],
        &["query", "up"],
        &["query", "up", "--range", "1h"],
    ] {
        let r = kappie(&server, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert_eq!(r.stdout, "", "{args:?}: {r:?}");
        let prefix = format!("kappie: cannot reach the collector at {server}: ");
        assert!(r.stderr.starts_with(&prefix), "{args:?}: {r:?}");
        assert!(r.stderr.contains("refused"), "{args:?}: {r:?}");
        assert!(
            r.stderr.ends_with(&format!(". {HINT}\n")),
            "{args:?}: {r:?}"
        );
    }
}

#[test]
fn the_server_comes_from_kappie_server() {
    let c = collector_with_fixture();
    let r = run(kappie_command()
        .env("KAPPIE_SERVER", &c.http)
        .args(["top", "remotes", "--limit", "1"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.rows()[1], "192.0.2.10 443 12 2", "{r:?}");
}

/// A collector that wants the bearer token `token` (in a file of its temp dir).
fn with_token(token: &str) -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    Collector::start_in(
        dir,
        free_port(),
        &["--http-auth-token-file", file.to_str().unwrap()],
    )
}

#[test]
fn without_credentials_a_401_says_to_pass_them() {
    let c = with_token("s3cret");
    let r = kappie(&c.http, &["shippers"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("requires authentication (HTTP 401)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("--token-file"), "{r:?}");
    assert!(r.stderr.contains("--user"), "{r:?}");
}

#[test]
fn a_token_file_or_kappie_token_authenticates() {
    let c = with_token("s3cret");
    let file = c.dir.path().join("client-token");
    std::fs::write(&file, "s3cret\n").unwrap();
    let r = kappie(
        &c.http,
        &["--token-file", file.to_str().unwrap(), "query", "1+1"],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "2\n"), "{r:?}");
    let r = run(kappie_command()
        .env("KAPPIE_TOKEN", "s3cret")
        .args(["--server", &c.http, "query", "1+1"]));
    assert_eq!((r.code, r.stdout.as_str()), (0, "2\n"), "{r:?}");
}

#[test]
fn a_wrong_token_is_refused_with_exit_2() {
    let c = with_token("s3cret");
    let r = run(kappie_command()
        .env("KAPPIE_TOKEN", "guess")
        .args(["--server", &c.http, "shippers"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("refused the credentials (HTTP 401)"),
        "{r:?}"
    );
}

#[test]
fn basic_auth_from_user_or_kappie_user() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let hash = bcrypt::hash("pa:ss", 4).unwrap();
    std::fs::write(&users, format!("ann:{hash}\n")).unwrap();
    let c = Collector::start_in(
        dir,
        free_port(),
        &["--http-auth-users-file", users.to_str().unwrap()],
    );
    let r = kappie(&c.http, &["--user", "ann:pa:ss", "query", "1+1"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "2\n"), "{r:?}");
    let r = run(kappie_command()
        .env("KAPPIE_USER", "ann:pa:ss")
        .args(["--server", &c.http, "query", "1+1"]));
    assert_eq!((r.code, r.stdout.as_str()), (0, "2\n"), "{r:?}");
    let r = kappie(&c.http, &["--user", "ann:wrong", "query", "1+1"]);
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn usage_errors_exit_1() {
    // Nothing is sent for any of these: the server would be unreachable (exit 2).
    let server = format!("http://127.0.0.1:{}", free_port());
    for (args, says) in [
        (&["top"][..], "<VIEW>"),
        (&["top", "everything"], "invalid value 'everything'"),
        (&["top", "drops", "--since", "5"], "invalid duration"),
        (&["top", "drops", "--limit", "0"], "--limit"),
        (&["query", "up", "--step", "1m"], "--range"),
        (&["query", "up", "--time", "yesterday"], "invalid time"),
        (&["--user", "ann", "shippers"], "USER:PASSWORD"),
        (
            &["--token-file", "/nonexistent/token", "shippers"],
            "/nonexistent/token",
        ),
        (&["-o", "yaml", "shippers"], "invalid value 'yaml'"),
    ] {
        let r = kappie(&server, args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(says),
            "{args:?} should say {says:?}: {r:?}"
        );
    }
    let r = run(kappie_command().args(["--server", "localhost:9090", "shippers"]));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("expected a URL"), "{r:?}");
}

#[test]
fn help_lists_the_exit_codes_and_each_command_has_examples() {
    let r = run(kappie_command().arg("--help"));
    assert_eq!(r.code, 0, "{r:?}");
    for s in [
        "Exit codes:",
        "3  `kappie shippers` found a stale shipper",
        "KAPPIE_SERVER",
    ] {
        assert!(r.stdout.contains(s), "{s:?} in {}", r.stdout);
    }
    for (cmd, example) in [
        ("shippers", "kappie shippers --stale 2m"),
        ("top", "kappie top drops --node"),
        ("query", "--range 1h --step 5m"),
        ("watch", "kappie watch drops --interval 2s"),
    ] {
        let r = run(kappie_command().args([cmd, "--help"]));
        assert_eq!(r.code, 0, "{cmd}: {r:?}");
        assert!(r.stdout.contains("Examples:"), "{cmd}: {}", r.stdout);
        assert!(r.stdout.contains(example), "{cmd}: {}", r.stdout);
    }
}

#[test]
fn watch_without_a_terminal_says_to_use_top() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["watch"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("needs a terminal"), "{r:?}");
}

//! A full disk (issue 16): the real collector on a small tmpfs is written to by remote write
//! until the filesystem is full. Writes are then refused with 503 (never a crash, never an
//! acknowledgement that is not durable), every acknowledged sample stays readable, and when
//! space returns writes are taken again: in place, or, if the store had to stop, after the
//! restart its liveness answer (`/-/healthy`, 503) asks for. A SIGKILL at the end and a
//! restart show every acknowledged sample, bit for bit.

mod common;

use kappie_proto::prometheus::label_matcher::Type as MatchType;
use kappie_testkit::prometheus::{remote_read_samples, remote_write, series};
use kappie_testkit::{require, wait_for, Need, Proc, Tmpfs};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn start(dir: &Path, data: &Path, round: usize) -> (Proc, String) {
    let log = dir.join(format!("collector-{round}.log"));
    let args = [
        "--wal-segment-bytes",
        "1048576",
        "--maintenance-interval-seconds",
        "1",
    ];
    let (proc, http, _) = common::collector_process(data, &log, &args);
    common::wait_ready(&http);
    (proc, http)
}

static BASE: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now - 12 * 3_600_000
});

/// Samples written so far, by series, as (ms, bits): what must be read back.
type Acked = BTreeMap<String, Vec<(i64, u64)>>;

/// One remote write of 100 series x 20 samples with random floats (nothing to compress),
/// `n`-th of the run; on 204 its samples are added to `acked`. Returns the HTTP status.
fn write(http: &str, n: i64, rng: &mut rand::rngs::StdRng, acked: &mut Acked) -> u16 {
    // From 12 hours ago on, 20 s a request: inside retention, never in the future.
    let t0 = *BASE + n * 20 * 1_000;
    let mut batch = Vec::new();
    let mut samples = Vec::new();
    for s in 0..100 {
        let name = format!("s{s}");
        let points: Vec<(i64, f64)> = (0..20)
            .map(|k| (t0 + k * 1_000, f64::from_bits(rng.gen::<u64>() >> 2)))
            .collect();
        batch.push(series(&[("__name__", "fill"), ("s", &name)], &points));
        samples.push((name, points));
    }
    match remote_write(&format!("{http}/api/v1/write"), batch) {
        Ok(()) => {
            for (name, points) in samples {
                acked
                    .entry(name)
                    .or_default()
                    .extend(points.iter().map(|&(t, v)| (t, v.to_bits())));
            }
            204
        }
        Err(e) => {
            // "…: HTTP 503: {json}"
            let code = e
                .split("HTTP ")
                .nth(1)
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("remote write failed without an HTTP answer: {e}"));
            assert_eq!(code, 503, "{e}");
            assert!(
                e.contains("unavailable") && e.contains("retry later"),
                "{e}"
            );
            code
        }
    }
}

fn verify(http: &str, acked: &Acked) {
    let got = remote_read_samples(
        &format!("{http}/api/v1/read"),
        &[(MatchType::Eq, "__name__", "fill")],
        0,
        i64::MAX,
    )
    .unwrap();
    let got: Acked = got
        .into_iter()
        .map(|(labels, samples)| {
            let s = labels.iter().find(|(k, _)| k == "s").unwrap().1.clone();
            (s, samples)
        })
        .collect();
    assert_eq!(got.len(), acked.len(), "series");
    for (s, want) in acked {
        let have = &got[s];
        // Refused writes may be in the log and come back after a restart: acknowledged
        // samples must all be there, in order; others only as whole retried requests.
        let mut it = have.iter();
        for w in want {
            assert!(
                it.any(|h| h == w),
                "series {s}: acknowledged sample {w:?} (request {}) is missing; have {} of {} samples, last {:?}",
                (w.0 - *BASE) / 20_000, have.len(), want.len(), have.last()
            );
        }
    }
}

#[test]
fn a_full_disk_refuses_writes_with_503_loses_nothing_and_recovers() {
    if !require(&[
        Need::Root,
        Need::Tool {
            program: "mount",
            package: "mount",
        },
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs");
    let tmpfs = Tmpfs::mount(&fs, "12m");
    let data = fs.join("data");
    let (proc, http) = start(dir.path(), &data, 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut acked = Acked::new();
    let mut n = 0;
    // Fill the disk: about 40 KB of log per request into 12 MB.
    let mut refused = 0;
    while refused < 5 {
        assert!(n < 2_000, "the disk never filled up");
        if write(&http, n, &mut rng, &mut acked) == 503 {
            refused += 1;
        }
        n += 1;
    }
    let full_at = n;
    eprintln!(
        "disk full after {full_at} requests; {} acknowledged",
        acked.values().next().map_or(0, |v| v.len() / 20)
    );
    // Still up, still answering, nothing acknowledged lost.
    assert_eq!(
        ureq::get(&format!("{http}/-/ready"))
            .call()
            .unwrap()
            .status(),
        200
    );
    verify(&http, &acked);

    // Space returns.
    tmpfs.resize("512m");
    // Writes are taken again, in place, or the store says it must be restarted.
    let (proc, http) = {
        let mut taken = false;
        let mut stopped = false;
        wait_for(
            "writes taken again, or /-/healthy asking for a restart",
            Duration::from_secs(30),
            || {
                if write(&http, n, &mut rng, &mut acked) == 204 {
                    taken = true;
                } else if ureq::get(&format!("{http}/-/healthy")).call().is_err() {
                    stopped = true;
                }
                n += 1;
                (taken || stopped).then_some(())
            },
        );
        eprintln!(
            "after space returned: writes taken in place: {taken}; restart asked for: {stopped}"
        );
        if stopped {
            proc.kill9();
            start(dir.path(), &data, 1)
        } else {
            (proc, http)
        }
    };
    for _ in 0..20 {
        assert_eq!(write(&http, n, &mut rng, &mut acked), 204);
        n += 1;
    }
    verify(&http, &acked);
    proc.kill9();
    let (proc, http) = start(dir.path(), &data, 2);
    verify(&http, &acked);
    drop(proc);
}

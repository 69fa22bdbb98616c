//! Crash safety: a child process appends in a loop and prints each acknowledged commit; the
//! test kills it with SIGKILL at random points, reopens the store and checks that every
//! acknowledged sample is there, that samples and ingest state agree exactly (atomicity),
//! and that the store opens and reads without corruption.
//!
//! `KAPPIE_CRASH_ROUNDS` sets the number of kills (default 5, which CI runs).

use kappie_storage::{Appender, Labels, MatchOp, Matcher, Querier, Storage, StorageConfig};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERIES: u64 = 50;

fn config() -> StorageConfig {
    StorageConfig {
        cache_capacity_bytes: 4 << 20,
        // Small windows and blocks so chunks are cut, blocks made and records truncated
        // often while the child runs.
        chunk_span_ms: 20_000,
        block_duration_ms: 2_000_000,
        head_idle_ms: 5_000,
        // Small log segments so that truncation deletes some while the child runs.
        wal_segment_bytes: 64 << 10,
        ..StorageConfig::default()
    }
}

fn labels(j: u64) -> Labels {
    Labels::new([
        ("__name__", "crash_test".to_owned()),
        ("series", j.to_string()),
    ])
    .unwrap()
}

fn next_of(s: &Storage) -> u64 {
    s.meta(b"next")
        .unwrap()
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// Runs the ignored test `name` of this binary as a child process on data directory `dir`,
/// its stdout piped.
fn spawn_child(name: &str, dir: &std::path::Path, stderr: Stdio) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KAPPIE_CRASH_CHILD", dir)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// The child of `sigkill_at_random_points_loses_nothing_acknowledged`, run by it in a process
/// of its own (ignored in ordinary runs: it loops until killed).
#[test]
#[ignore = "child process of the crash tests; they run it"]
fn crash_child() {
    let dir =
        std::env::var("KAPPIE_CRASH_CHILD").expect("KAPPIE_CRASH_CHILD names a data directory");
    let s = Storage::open(std::path::Path::new(&dir), &config()).unwrap();
    let mut i = next_of(&s);
    loop {
        let mut a = s.appender();
        for j in 0..SERIES {
            // Series j skips some steps so that some heads go idle and get cut.
            if j.is_multiple_of(7) && (i / 10) % 3 == 1 {
                continue;
            }
            a.append(&labels(j), (i * 1000) as i64, i as f64).unwrap();
        }
        a.set_meta(b"next", &(i + 1).to_be_bytes());
        a.commit().unwrap();
        println!("acked {i}");
        if i.is_multiple_of(25) {
            s.maintain((i * 1000) as i64).unwrap();
        }
        i += 1;
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_acknowledged() {
    let rounds: usize = std::env::var("KAPPIE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x1234_5678_9abc_def1u64 ^ std::process::id() as u64;
    let mut total_acked = 0;
    // Where the child resumes: the store's `next` after the previous round.
    let mut resume = 0;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 300);
        let mut child = spawn_child("crash_child", dir.path(), Stdio::null());
        let stdout = child.stdout.take().unwrap();
        let (acks, acked) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints the test name and " ... " before the first line.
                if let Some((_, n)) = line.rsplit_once("acked ") {
                    last = n.trim().parse::<u64>().ok();
                    if let Some(n) = last {
                        let _ = acks.send(n);
                    }
                }
            }
            last
        });
        // Wait until the child has acknowledged 20 commits this round (so that over the
        // rounds windows are cut, compacted and truncated, however loaded the machine),
        // then kill it at a random point after that.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match acked.recv_timeout(left) {
                Ok(n) if n >= resume + 20 => break,
                Ok(_) => {}
                Err(e) => panic!(
                    "round {round}: the child acknowledged no commit {} ({e})",
                    resume + 20
                ),
            }
        }
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last_acked = reader.join().unwrap();
        let s = Storage::open(dir.path(), &config()).expect("the store opens after SIGKILL");
        let next = next_of(&s);
        if let Some(last) = last_acked {
            assert!(
                next > last,
                "round {round}: acknowledged {last} but the store resumes at {next}"
            );
            total_acked = last + 1;
        }
        // Every step below `next` is there exactly, in every series that appended it, and
        // nothing beyond it: the samples and the `next` marker were one atomic write.
        let m = Matcher::new(MatchOp::Equal, "__name__", "crash_test").unwrap();
        let got = s.select(&[m], i64::MIN, i64::MAX).unwrap();
        for series in &got {
            let j: u64 = series.labels.get("series").unwrap().parse().unwrap();
            let want: Vec<u64> = (0..next)
                .filter(|i| !(j.is_multiple_of(7) && (i / 10) % 3 == 1))
                .collect();
            let have: Vec<u64> = series.samples.iter().map(|x| x.v as u64).collect();
            assert_eq!(have, want, "round {round} series {j}");
            assert!(series.samples.iter().all(|x| x.t == x.v as i64 * 1000));
        }
        if next > 0 {
            assert_eq!(got.len() as u64, SERIES, "round {round}");
        }
        eprintln!(
            "round {round}: killed after {:?}, acked up to {last_acked:?}, store at {next}",
            started.elapsed()
        );
        resume = next;
        drop(s);
    }
    assert!(total_acked > 0, "the child never acknowledged anything");
    // Reads above went through compacted pages too, not only staged chunks.
    let count = |d: &str| std::fs::read_dir(dir.path().join(d)).map_or(0, |r| r.count());
    eprintln!(
        "{total_acked} commits acknowledged; {} blocks with compacted windows, {} windows staged",
        count("blocks"),
        count("staging")
    );
    assert!(count("blocks") > 0, "no window was ever compacted");
    let segments = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(
        !dir.path().join("wal/00000000000000000001.wal").exists(),
        "log truncation never deleted the first segment ({segments} segments)"
    );
}

/// Series, commits and samples per commit of the hour-boundary test (issue 11: 2,000 series,
/// 12 commits of 30 samples at 10 s starting 4 minutes before an hour boundary).
const HB_SERIES: u64 = 2_000;
const HB_COMMITS: u64 = 12;
const HB_PER_COMMIT: u64 = 30;
/// Four minutes before an hour boundary (2023-11-14T23:00:00Z).
const HB_START_MS: i64 = 1_700_002_800_000 - 240_000;

fn hb_labels(j: u64) -> Labels {
    Labels::new([
        ("__name__", "boundary_test".to_owned()),
        ("series", j.to_string()),
    ])
    .unwrap()
}

/// The child of `sigkill_after_commits_across_an_hour_boundary_keeps_every_sample`: commits
/// everything with the default settings (no maintenance), says so, and waits to be killed.
#[test]
#[ignore = "child process of the crash tests; they run it"]
fn hour_boundary_child() {
    let dir =
        std::env::var("KAPPIE_CRASH_CHILD").expect("KAPPIE_CRASH_CHILD names a data directory");
    let s = Storage::open(std::path::Path::new(&dir), &StorageConfig::default()).unwrap();
    for c in 0..HB_COMMITS {
        let mut a = s.appender();
        for j in 0..HB_SERIES {
            for k in 0..HB_PER_COMMIT {
                let i = c * HB_PER_COMMIT + k;
                a.append(
                    &hb_labels(j),
                    HB_START_MS + i as i64 * 10_000,
                    (i * 1000 + j) as f64,
                )
                .unwrap();
            }
        }
        let r = a.commit().unwrap();
        assert_eq!(r.appended as u64, HB_SERIES * HB_PER_COMMIT);
    }
    println!("acked all");
    loop {
        std::thread::park();
    }
}

/// Regression (issue 11, section 1): replay trusted each series' newest staged chunk as a
/// high-water mark although the staging databases are not flushed together; after a SIGKILL
/// the newer window's chunks were on disk and the older window's tail was not, and replay
/// skipped exactly the samples that existed nowhere else (208 of 2,000 series lost 24
/// samples each).
#[test]
fn sigkill_after_commits_across_an_hour_boundary_keeps_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("hour_boundary_child", dir.path(), Stdio::inherit());
    let stdout = child.stdout.take().unwrap();
    let acked = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("acked all"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked, "the child did not acknowledge its commits");

    let s = Storage::open(dir.path(), &StorageConfig::default()).expect("reopens");
    let m = Matcher::new(MatchOp::Equal, "__name__", "boundary_test").unwrap();
    let got = s.select(&[m], i64::MIN, i64::MAX).unwrap();
    assert_eq!(got.len() as u64, HB_SERIES);
    let n = HB_COMMITS * HB_PER_COMMIT;
    let short: Vec<(u64, usize)> = got
        .iter()
        .map(|series| {
            (
                series.labels.get("series").unwrap().parse::<u64>().unwrap(),
                series.samples.len(),
            )
        })
        .filter(|(_, len)| *len as u64 != n)
        .collect();
    assert!(
        short.is_empty(),
        "{} series lost acknowledged samples after SIGKILL, e.g. {:?}",
        short.len(),
        &short[..short.len().min(5)]
    );
    for series in &got {
        let j: u64 = series.labels.get("series").unwrap().parse().unwrap();
        for (i, x) in series.samples.iter().enumerate() {
            assert_eq!(x.t, HB_START_MS + i as i64 * 10_000, "series {j}");
            assert_eq!(
                x.v.to_bits(),
                ((i as u64 * 1000 + j) as f64).to_bits(),
                "series {j}"
            );
        }
    }
}

/// Writers of the group-commit test, each with its own series, and all of them with one
/// series in common (a new one every `GC_SHARED_EVERY` steps).
const GC_WRITERS: u64 = 4;
const GC_SERIES: u64 = 10;
const GC_SHARED_EVERY: u64 = 20;

fn gc_labels(w: u64, j: u64) -> Labels {
    Labels::new([
        ("__name__", "group_commit_test".to_owned()),
        ("writer", w.to_string()),
        ("series", j.to_string()),
    ])
    .unwrap()
}

fn gc_shared(k: u64) -> Labels {
    Labels::new([
        ("__name__", "group_commit_shared".to_owned()),
        ("k", k.to_string()),
    ])
    .unwrap()
}

fn gc_next(s: &Storage, w: u64) -> u64 {
    s.meta(format!("next/{w}").as_bytes())
        .unwrap()
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// The child of `sigkill_during_concurrent_commits_keeps_every_acknowledged_sample_once`:
/// `GC_WRITERS` threads commit at once (so commits share fsyncs and wait in the pipeline)
/// until killed, printing `acked <writer> <step> <shared sample kept>`.
#[test]
#[ignore = "child process of the crash tests; they run it"]
fn group_commit_child() {
    let dir =
        std::env::var("KAPPIE_CRASH_CHILD").expect("KAPPIE_CRASH_CHILD names a data directory");
    let s = Storage::open(std::path::Path::new(&dir), &config()).unwrap();
    let writers: Vec<_> = (0..GC_WRITERS)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut i = gc_next(&s, w);
                loop {
                    let t = (i * 1000) as i64;
                    let mut a = s.appender();
                    for j in 0..GC_SERIES {
                        a.append(&gc_labels(w, j), t, i as f64).unwrap();
                    }
                    // Writers at the same step send the same sample: one is appended, the
                    // others are duplicates of it (possibly while it is still in flight);
                    // a writer behind the others is refused (out of order).
                    a.append(&gc_shared(i / GC_SHARED_EVERY), t, i as f64)
                        .unwrap();
                    a.set_meta(format!("next/{w}").as_bytes(), &(i + 1).to_be_bytes());
                    let r = a.commit().unwrap();
                    println!("acked {w} {i} {}", r.refused() == 0);
                    if w == 0 && i.is_multiple_of(50) {
                        s.maintain(t).unwrap();
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}

/// Group commit (several commits share one fsync, and are validated while earlier ones
/// are still being written): after a SIGKILL at a random point every acknowledged step of
/// every writer is there exactly once, nothing is there that its writer's ingest state does
/// not count, and every acknowledged sample of the shared series is there.
#[test]
fn sigkill_during_concurrent_commits_keeps_every_acknowledged_sample_once() {
    let rounds: usize = std::env::var("KAPPIE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    // Steps whose shared sample was acknowledged as kept, over all rounds.
    let mut shared_kept: Vec<u64> = Vec::new();
    let mut acked_total = 0;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(200 + seed % 600);
        let mut child = spawn_child("group_commit_child", dir.path(), Stdio::null());
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last: std::collections::HashMap<u64, u64> = Default::default();
            let mut kept = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some((_, rest)) = line.rsplit_once("acked ") else {
                    continue;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                let (Some(w), Some(i), Some(k)) = (f.first(), f.get(1), f.get(2)) else {
                    continue;
                };
                let (w, i): (u64, u64) = (w.parse().unwrap(), i.parse().unwrap());
                last.insert(w, i);
                if *k == "true" {
                    kept.push(i);
                }
            }
            (last, kept)
        });
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (last, kept) = reader.join().unwrap();
        acked_total += last.len();
        shared_kept.extend(kept);
        let s = Storage::open(dir.path(), &config()).expect("the store opens after SIGKILL");
        for w in 0..GC_WRITERS {
            let next = gc_next(&s, w);
            if let Some(&l) = last.get(&w) {
                assert!(
                    next > l,
                    "round {round}: writer {w} acknowledged {l} but resumes at {next}"
                );
            }
            let m = [
                Matcher::new(MatchOp::Equal, "__name__", "group_commit_test").unwrap(),
                Matcher::new(MatchOp::Equal, "writer", w.to_string()).unwrap(),
            ];
            let got = s.select(&m, i64::MIN, i64::MAX).unwrap();
            let want: Vec<u64> = (0..next).collect();
            for series in &got {
                let have: Vec<u64> = series.samples.iter().map(|x| x.v as u64).collect();
                assert_eq!(have, want, "round {round} writer {w} {:?}", series.labels);
                assert!(series.samples.iter().all(|x| x.t == x.v as i64 * 1000));
            }
            if next > 0 {
                assert_eq!(got.len() as u64, GC_SERIES, "round {round} writer {w}");
            }
        }
        let m = Matcher::new(MatchOp::Equal, "__name__", "group_commit_shared").unwrap();
        let shared: std::collections::HashSet<(i64, u64)> = s
            .select(&[m], i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .flat_map(|series| series.samples.iter().map(|x| (x.t, x.v.to_bits())))
            .collect();
        for &i in &shared_kept {
            assert!(
                shared.contains(&((i * 1000) as i64, (i as f64).to_bits())),
                "round {round}: shared sample of step {i} was acknowledged but is gone"
            );
        }
        eprintln!(
            "round {round}: killed after {delay:?}, last acknowledged steps {last:?}, {} shared samples acknowledged so far",
            shared_kept.len()
        );
        drop(s);
    }
    assert!(acked_total > 0, "the children never acknowledged anything");
}

//! Damaged data directories (issue 16): a real collector writes a few hours of data (so its
//! directory holds log segments, staging files, compacted window files and sled's `main/`),
//! is killed, and then, for every kind of file, a copy of the directory has one file of that
//! kind damaged (a byte flipped in the middle, or the file cut in half) and a collector is
//! started on it. It must either refuse to start with a message that says what to do, or
//! start and answer only true samples (a sample it returns has the value that was written
//! at that time), with any loss logged. It must never panic.

mod common;

use kappie_proto::prometheus::label_matcher::Type as MatchType;
use kappie_testkit::prometheus::{remote_read_samples, remote_write, series};
use kappie_testkit::{wait_for, Proc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERIES: usize = 40;
const STEP_MS: i64 = 10_000;

type Samples = BTreeMap<String, BTreeMap<i64, u64>>;

fn value(s: usize, k: i64) -> f64 {
    // Counters for even series, floats with arbitrary mantissas for odd ones.
    if s.is_multiple_of(2) {
        (k * (s as i64 + 3)) as f64
    } else {
        (k as f64 * 0.37 + s as f64).sin() * 1e6
    }
}

fn start(dir: &Path, data: &Path, log: &str, maintenance_s: &str) -> (Proc, String) {
    let args = ["--maintenance-interval-seconds", maintenance_s];
    let (proc, http, _) = common::collector_process(data, &dir.join(log), &args);
    (proc, http)
}

fn read_all(http: &str) -> Result<Samples, String> {
    let got = remote_read_samples(
        &format!("{http}/api/v1/read"),
        &[(MatchType::Eq, "__name__", "c")],
        0,
        i64::MAX,
    )?;
    Ok(got
        .into_iter()
        .map(|(labels, samples)| {
            let s = labels.iter().find(|(k, _)| k == "s").unwrap().1.clone();
            (s, samples.into_iter().collect())
        })
        .collect())
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn damaged_files_are_repaired_with_a_logged_loss_or_refused_never_served_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    // Four hours ending now at a 10 s step, 30 samples of every series per request: the
    // first two with maintenance every second (so their windows are compacted), the last
    // two after a restart with no maintenance (so their cut chunks stay staged and the log
    // keeps everything), whatever the time of day.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (now - 4 * 3_600_000) / STEP_MS * STEP_MS;
    let steps = 4 * 3_600_000 / STEP_MS;
    let mut written = Samples::new();
    let kinds = |d: &Path| {
        let mut fs = Vec::new();
        files(d, &mut fs);
        let has = |ext: &str| fs.iter().any(|f| f.to_string_lossy().ends_with(ext));
        (has(".kpw"), has(".kps"), has(".wal"))
    };
    for (phase, maintenance) in [(0, "1"), (1, "3600")] {
        let log = format!("collector-write-{phase}.log");
        let (proc, http) = start(dir.path(), &pristine, &log, maintenance);
        wait_for("the collector to be ready", Duration::from_secs(60), || {
            ureq::get(&format!("{http}/-/ready")).call().ok()
        });
        let parts = steps / 30 / 2;
        for part in phase * parts..(phase + 1) * parts {
            let mut batch = Vec::new();
            for s in 0..SERIES {
                let points: Vec<(i64, f64)> = (part * 30..part * 30 + 30)
                    .map(|k| (t0 + k * STEP_MS, value(s, k)))
                    .collect();
                let e = written.entry(format!("s{s}")).or_default();
                e.extend(points.iter().map(|&(t, v)| (t, v.to_bits())));
                batch.push(series(
                    &[("__name__", "c"), ("s", &format!("s{s}"))],
                    &points,
                ));
            }
            remote_write(&format!("{http}/api/v1/write"), batch).unwrap();
        }
        if phase == 0 {
            wait_for("compacted windows", Duration::from_secs(60), || {
                kinds(&pristine).0.then_some(())
            });
        }
        assert_eq!(read_all(&http).unwrap(), written);
        proc.kill9();
    }
    assert_eq!(kinds(&pristine), (true, true, true));

    let mut all = Vec::new();
    files(&pristine, &mut all);
    // One file of each kind: the largest of it (the most to damage).
    let mut by_kind: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for f in &all {
        let name = f.to_string_lossy();
        let kind = if name.ends_with(".wal") {
            "log segment"
        } else if name.ends_with(".kps") {
            "staging file"
        } else if name.ends_with(".kpw") {
            "window file"
        } else if name.contains("/main/") && name.ends_with("/db") {
            "sled main db"
        } else if name.contains("/main/") && name.ends_with("/conf") {
            "sled main conf"
        } else {
            continue;
        };
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let e = by_kind.entry(kind).or_insert_with(|| f.clone());
        if size(f) > size(e) {
            *e = f.clone();
        }
    }
    assert_eq!(by_kind.len(), 5, "{by_kind:?}");

    let mut outcomes = Vec::new();
    for (kind, file) in &by_kind {
        for damage in ["flip", "truncate"] {
            let case = format!("{kind}, {damage}");
            let data = dir
                .path()
                .join(format!("{kind}-{damage}").replace(' ', "-"));
            copy_dir(&pristine, &data);
            let target = data.join(file.strip_prefix(&pristine).unwrap());
            let mut bytes = std::fs::read(&target).unwrap();
            match damage {
                "flip" => {
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x5a;
                }
                _ => bytes.truncate(bytes.len() / 2),
            }
            std::fs::write(&target, &bytes).unwrap();
            let log = format!("collector-{kind}-{damage}.log").replace(' ', "-");
            let (mut proc, http) = start(dir.path(), &data, &log, "1");
            // Ready, or exited.
            let deadline = Instant::now() + Duration::from_secs(60);
            let exited = loop {
                if let Some(status) = proc.child.try_wait().unwrap() {
                    break Some(status);
                }
                if ureq::get(&format!("{http}/-/ready")).call().is_ok() {
                    break None;
                }
                assert!(
                    Instant::now() < deadline,
                    "{case}: neither ready nor exited"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            let text = std::fs::read_to_string(dir.path().join(&log)).unwrap();
            assert!(
                !text.contains("panicked"),
                "{case}: the collector panicked:\n{text}"
            );
            let outcome = match exited {
                Some(status) => {
                    assert!(!status.success(), "{case}: exited 0\n{text}");
                    assert!(
                        text.contains("backup") || text.contains("empty"),
                        "{case}: refused without saying what to do:\n{text}"
                    );
                    "refused to start".to_string()
                }
                None => match read_all(&http) {
                    // Damage found when read (pages are checked then, not at start): an
                    // error that names the file and what to do, never other values.
                    Err(e) => {
                        assert!(
                            e.contains("damaged") && e.contains("restore"),
                            "{case}: remote read failed without saying what to do: {e}"
                        );
                        "started; reads of the damaged part answer an error naming the file"
                            .to_string()
                    }
                    Ok(got) => {
                        let mut missing = 0;
                        for (s, want) in &written {
                            let have = got.get(s).cloned().unwrap_or_default();
                            for (t, bits) in &have {
                                assert_eq!(
                                    want.get(t),
                                    Some(bits),
                                    "{case}: series {s} answers a sample at {t} that was never written so"
                                );
                            }
                            missing += want.len() - have.len();
                        }
                        if missing > 0 {
                            assert!(
                                text.contains("WARN") || text.contains("ERROR"),
                                "{case}: {missing} samples lost without a word in the log:\n{text}"
                            );
                        }
                        format!(
                            "started, {missing} of {} samples lost",
                            SERIES * steps as usize
                        )
                    }
                },
            };
            eprintln!("{case}: {outcome}");
            outcomes.push((case, outcome));
            drop(proc);
        }
    }
    assert_eq!(outcomes.len(), 10);
}

//! The store through its public API on a real sled directory.

use kappie_storage::{Appender, Labels, MatchOp, Matcher, Querier, Sample, Storage, StorageConfig};
use std::collections::BTreeSet;

fn labels(name: &str, job: &str) -> Labels {
    Labels::new([("__name__", name), ("job", job)]).unwrap()
}

fn small() -> StorageConfig {
    StorageConfig {
        cache_capacity_bytes: 4 << 20,
        ..StorageConfig::default()
    }
}

/// A store whose chunk windows are one minute (a chunk is cut every 6 steps of 10 s), its
/// config, and a time at the start of a window.
fn minute_windows(dir: &std::path::Path) -> (Storage, StorageConfig, i64) {
    let cfg = StorageConfig {
        chunk_span_ms: 60_000,
        ..small()
    };
    let s = Storage::open(dir, &cfg).unwrap();
    (s, cfg, 1_700_000_000_000i64 / 60_000 * 60_000)
}

fn all(s: &Storage) -> Vec<kappie_storage::Series> {
    s.select(
        &[Matcher::new(MatchOp::Regex, "__name__", ".+").unwrap()],
        i64::MIN,
        i64::MAX,
    )
    .unwrap()
}

#[test]
fn commit_is_visible_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Storage::open(dir.path(), &small()).unwrap();
        let mut a = s.appender();
        a.append(&labels("up", "a"), -5, 1.0).unwrap();
        a.append(&labels("up", "a"), 10, 2.0).unwrap();
        a.append(&labels("up", "b"), 10, 3.0).unwrap();
        a.set_meta(b"seq/x", b"7");
        let r = a.commit().unwrap();
        assert_eq!(r.appended, 3);
    }
    let s = Storage::open(dir.path(), &small()).unwrap();
    assert_eq!(s.series_count(), 2);
    assert_eq!(s.meta(b"seq/x").unwrap().as_deref(), Some(&b"7"[..]));
    let m = Matcher::new(MatchOp::Equal, "job", "a").unwrap();
    let got = s.select(&[m], -10, 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].samples,
        vec![Sample { t: -5, v: 1.0 }, Sample { t: 10, v: 2.0 }]
    );
    let m = Matcher::new(MatchOp::Regex, "__name__", "u.").unwrap();
    assert_eq!(s.select(std::slice::from_ref(&m), 0, 10).unwrap().len(), 2);
    assert_eq!(s.select(&[m], 0, 9).unwrap().len(), 0);
}

#[test]
fn dropped_appender_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), &small()).unwrap();
    let mut a = s.appender();
    a.append(&labels("up", "a"), 1, 1.0).unwrap();
    a.set_meta(b"k", b"v");
    drop(a);
    assert_eq!(s.series_count(), 0);
    assert_eq!(s.meta(b"k").unwrap(), None);
    assert!(all(&s).is_empty());
}

#[test]
fn out_of_order_and_duplicates_are_defined() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), &small()).unwrap();
    let l = labels("m", "a");
    let mut a = s.appender();
    a.append(&l, 100, 1.0).unwrap();
    a.append(&l, 200, 2.0).unwrap();
    a.commit().unwrap();
    let mut a = s.appender();
    a.append(&l, 200, 2.0).unwrap(); // same sample again: ignored
    a.append(&l, 200, 5.0).unwrap(); // same time, other value: refused
    a.append(&l, 150, 1.5).unwrap(); // older: refused
    a.append(&l, 300, 3.0).unwrap();
    a.append(&l, 300, 4.0).unwrap(); // within one append too
    a.set_meta(b"still", b"written");
    let r = a.commit().unwrap();
    assert_eq!(
        (
            r.appended,
            r.duplicates_ignored,
            r.duplicate_timestamp,
            r.out_of_order
        ),
        (1, 1, 2, 1)
    );
    assert_eq!(
        s.meta(b"still").unwrap().as_deref(),
        Some(&b"written"[..]),
        "the rest of the append is kept"
    );
    assert_eq!(
        all(&s)[0].samples,
        vec![
            Sample { t: 100, v: 1.0 },
            Sample { t: 200, v: 2.0 },
            Sample { t: 300, v: 3.0 }
        ]
    );
    assert_eq!(
        s.stats()
            .samples_refused_out_of_order
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn chunks_cut_persist_and_read_back_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        chunk_span_ms: 600_000,
        block_duration_ms: 3_600_000,
        ..small()
    };
    let mut expected = Vec::new();
    let t0 = 1_700_000_000_000i64;
    {
        let s = Storage::open(dir.path(), &cfg).unwrap();
        // 1000 samples at 10 s: cuts at 120 samples and at every 10-minute window, across
        // three 1-hour blocks.
        for batch in 0..10 {
            let mut a = s.appender();
            for i in 0..100 {
                let n = batch * 100 + i;
                let (t, v) = (t0 + n * 10_000, (n * n) as f64 / 3.0);
                a.append(&labels("c", "x"), t, v).unwrap();
                expected.push(Sample { t, v });
            }
            a.commit().unwrap();
        }
        assert_eq!(all(&s)[0].samples, expected);
        assert!(s.block_count() >= 3);
    }
    // Reopen without maintenance: the head comes back from the write-ahead records.
    let s = Storage::open(dir.path(), &cfg).unwrap();
    assert_eq!(all(&s)[0].samples, expected);
    let r = s.maintain(t0 + 1000 * 10_000).unwrap();
    assert_eq!(
        r.blocks_removed, 0,
        "nothing is past the 15 day retention: {r:?}"
    );
    drop(s);
    let s = Storage::open(dir.path(), &cfg).unwrap();
    assert_eq!(all(&s)[0].samples, expected);
    // Range reads cut at the edges.
    let m = Matcher::new(MatchOp::Equal, "job", "x").unwrap();
    let mid = s.select(&[m], t0 + 95_000, t0 + 4_000_000).unwrap();
    let want: Vec<Sample> = expected
        .iter()
        .copied()
        .filter(|x| x.t >= t0 + 95_000 && x.t <= t0 + 4_000_000)
        .collect();
    assert_eq!(mid[0].samples, want);
    // Raw chunks cover the same samples.
    let chunks = s.select_chunks(&[], t0, t0 + 10_000_000).unwrap();
    let n: usize = chunks[0]
        .chunks
        .iter()
        .map(|c| kappie_storage::chunkenc::decode(&c.bytes).unwrap().len())
        .sum();
    assert_eq!(n, 1000);
}

#[test]
fn retention_frees_disk_and_forgets_old_series() {
    let dir = tempfile::tempdir().unwrap();
    let hour = 3_600_000i64;
    let cfg = StorageConfig {
        chunk_span_ms: 600_000,
        block_duration_ms: hour,
        retention_ms: 2 * hour,
        head_idle_ms: 60_000,
        ..small()
    };
    let s = Storage::open(dir.path(), &cfg).unwrap();
    let t0 = 1_700_000_000_000i64 / hour * hour;
    // 200 series for 5 hours; series "old" only in the first hour.
    for step in 0..(5 * 360) {
        let t = t0 + step * 10_000;
        let mut a = s.appender();
        for i in 0..200 {
            a.append(&labels("load", &i.to_string()), t, (step * i) as f64)
                .unwrap();
        }
        if step < 360 {
            a.append(&labels("old", "x"), t, 1.0).unwrap();
        }
        a.commit().unwrap();
    }
    let now = t0 + 5 * hour;
    s.maintain(t0 + 2 * hour).unwrap(); // flushes and cuts idle chunks; removes nothing yet
    let before = s.size_on_disk().unwrap();
    let blocks_before = s.block_count();
    let r = s.maintain(now).unwrap();
    assert!(r.blocks_removed >= 2, "{r:?}");
    assert_eq!(r.series_removed, 1, "{r:?}");
    let after = s.size_on_disk().unwrap();
    assert!(after < before, "size {before} -> {after}");
    assert_eq!(s.block_count(), blocks_before - r.blocks_removed);
    let old = Matcher::new(MatchOp::Equal, "__name__", "old").unwrap();
    assert!(s.select(&[old], i64::MIN, i64::MAX).unwrap().is_empty());
    assert!(
        s.label_values("__name__", &[], i64::MIN, i64::MAX).unwrap() == vec!["load".to_string()]
    );
    // Samples in the removed range are refused, counted.
    let mut a = s.appender();
    a.append(&labels("load", "new"), t0, 1.0).unwrap();
    assert_eq!(a.commit().unwrap().too_old, 1);

    // Size retention: keep at most what one block takes.
    drop(s);
    let cfg2 = StorageConfig {
        retention_bytes: Some(1),
        ..cfg
    };
    let s = Storage::open(dir.path(), &cfg2).unwrap();
    let n = s.block_count();
    let r = s.maintain(now).unwrap();
    assert_eq!(r.blocks_removed, n - 1, "all but the newest block go");
}

/// One of `v`, at random.
fn pick<'a>(rng: &mut rand::rngs::StdRng, v: &[&'a str]) -> &'a str {
    use rand::seq::SliceRandom;
    v.choose(rng).copied().unwrap_or_default()
}

#[test]
fn index_matches_brute_force_on_random_label_sets() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), &small()).unwrap();
    use rand::{Rng, SeedableRng};
    // Seeded, so the random cases are reproducible.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let vals = ["", "a", "b", "ab", "abc", "x-1", "é"];
    let mut sets = BTreeSet::new();
    let mut a = s.appender();
    for i in 0..400 {
        let l = Labels::new([
            ("__name__", pick(&mut rng, &["m1", "m2", "m3"]).to_owned()),
            ("a", pick(&mut rng, &vals).to_owned()),
            ("b", pick(&mut rng, &vals).to_owned()),
            ("c", pick(&mut rng, &vals).to_owned()),
            ("i", (i % 37).to_string()),
        ])
        .unwrap();
        a.append(&l, 1000, i as f64).unwrap();
        sets.insert(l);
    }
    a.commit().unwrap();
    let ops = [
        MatchOp::Equal,
        MatchOp::NotEqual,
        MatchOp::Regex,
        MatchOp::NotRegex,
    ];
    let patterns = [
        "", "a", "b", "ab", "a.*", ".*", ".+", "a|b", "x-1|é", "(ab)?c?", "nomatch",
    ];
    for case in 0..600 {
        let n = 1 + (rng.gen::<u64>() % 3) as usize;
        let matchers: Vec<Matcher> = (0..n)
            .map(|_| {
                let op = ops[(rng.gen::<u64>() % 4) as usize];
                let name = pick(&mut rng, &["__name__", "a", "b", "c", "i", "missing"]);
                let value = pick(&mut rng, &patterns);
                Matcher::new(op, name, value).unwrap()
            })
            .collect();
        let want: Vec<&Labels> = sets
            .iter()
            .filter(|l| matchers.iter().all(|m| m.matches_labels(l)))
            .collect();
        let got = s.series(&matchers, i64::MIN, i64::MAX).unwrap();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "case {case}: {matchers:?}"
        );
    }
}

#[test]
fn label_names_and_values_respect_time_and_matchers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), &small()).unwrap();
    let mut a = s.appender();
    a.append(
        &Labels::new([("__name__", "early"), ("zone", "a")]).unwrap(),
        1000,
        1.0,
    )
    .unwrap();
    a.append(
        &Labels::new([("__name__", "late"), ("zone", "b"), ("extra", "1")]).unwrap(),
        5000,
        1.0,
    )
    .unwrap();
    a.commit().unwrap();
    assert_eq!(
        s.label_names(&[], 0, 10_000).unwrap(),
        vec!["__name__", "extra", "zone"]
    );
    assert_eq!(
        s.label_names(&[], 0, 2000).unwrap(),
        vec!["__name__", "zone"]
    );
    assert_eq!(
        s.label_values("zone", &[], 0, 10_000).unwrap(),
        vec!["a", "b"]
    );
    assert_eq!(
        s.label_values("zone", &[], 4000, 10_000).unwrap(),
        vec!["b"]
    );
    let m = Matcher::new(MatchOp::Equal, "__name__", "early").unwrap();
    assert_eq!(s.label_values("zone", &[m], 0, 10_000).unwrap(), vec!["a"]);
}

#[test]
fn log_holds_keep_records_for_readers_up_to_their_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        wal_segment_bytes: 2_000,
        wal_hold_max_bytes: 20_000,
        head_idle_ms: 0,
        ..small()
    };
    let s = Storage::open(dir.path(), &cfg).unwrap();
    s.hold_wal("dest", 1);
    // Values the log's compression cannot shrink much (the limits are in log bytes).
    let commit = |from: i64| {
        let mut a = s.appender();
        for t in from..from + 50 {
            let v = (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 12;
            a.append(&labels("up", "a"), t * 1000, v as f64 / 7.0)
                .unwrap();
        }
        a.commit().unwrap();
    };
    for i in 0..10 {
        commit(i * 50);
    }
    // Idle head chunks are cut, so the store itself needs none of the log; the hold keeps it.
    let r = s.maintain(100_000_000).unwrap();
    assert_eq!(r.held_samples_dropped, 0);
    let mut t = s.wal_tailer(0);
    let recs = t.next(usize::MAX).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.samples.len()).sum::<usize>(),
        500,
        "every record still there"
    );
    assert!(s.wal_bytes_after(0) > 0);
    // Past the limit the oldest held segments go, and the reader is told how many samples.
    for i in 10..80 {
        commit(i * 50);
    }
    let r = s.maintain(100_000_000).unwrap();
    assert!(r.held_samples_dropped > 0);
    assert_eq!(s.wal_hold_dropped("dest"), r.held_samples_dropped);
    assert!(
        s.wal_bytes_after(0) <= 20_000 + 2_000 * 2,
        "{}",
        s.wal_bytes_after(0)
    );
    let left: u64 = s
        .wal_tailer(0)
        .next(usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.samples.len() as u64)
        .sum();
    assert_eq!(left + r.held_samples_dropped, 4_000, "kept + dropped = all");
    // Once the reader moves on, the log shrinks to what the store needs.
    s.hold_wal("dest", s.last_seq() + 1);
    s.maintain(100_000_000).unwrap();
    assert!(s.wal_bytes_after(0) <= 4_000, "{}", s.wal_bytes_after(0));
}

/// Regression: after the head chunk was cut and the store reopened, resending exactly the
/// last sample (a remote-write retry) was refused as `duplicate_timestamp` (HTTP 400 to the
/// sender) because the last value was no longer in memory.
#[test]
fn resending_the_last_sample_after_a_restart_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        head_idle_ms: 0,
        ..small()
    };
    let l = labels("m", "a");
    {
        let s = Storage::open(dir.path(), &cfg).unwrap();
        let mut a = s.appender();
        a.append(&l, 1_000, 1.0).unwrap();
        a.append(&l, 2_000, 2.0).unwrap();
        a.commit().unwrap();
        s.maintain(10_000_000).unwrap();
    }
    let s = Storage::open(dir.path(), &cfg).unwrap();
    let mut a = s.appender();
    a.append(&l, 2_000, 2.0).unwrap();
    let r = a.commit().unwrap();
    assert_eq!((r.duplicates_ignored, r.duplicate_timestamp), (1, 0));
    let mut a = s.appender();
    a.append(&l, 2_000, 7.0).unwrap();
    let r = a.commit().unwrap();
    assert_eq!((r.duplicates_ignored, r.duplicate_timestamp), (0, 1));
    assert_eq!(all(&s)[0].samples.len(), 2);
}

/// Samples compared by bits (NaN and stale markers included).
fn bits(series: &[kappie_storage::Series]) -> Vec<(String, Vec<(i64, u64)>)> {
    series
        .iter()
        .map(|s| {
            (
                format!("{:?}", s.labels),
                s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
            )
        })
        .collect()
}

/// What remote read would ship: every raw chunk decoded as Prometheus's XOR encoding.
fn raw_bits(s: &Storage, mint: i64, maxt: i64) -> Vec<(String, Vec<(i64, u64)>)> {
    s.select_chunks(&[], mint, maxt)
        .unwrap()
        .iter()
        .map(|cs| {
            let mut v = Vec::new();
            for c in &cs.chunks {
                for (t, x) in kappie_storage::chunkenc::decode(&c.bytes).unwrap() {
                    if t >= mint && t <= maxt {
                        v.push((t, x.to_bits()));
                    }
                }
            }
            (format!("{:?}", cs.labels), v)
        })
        .collect()
}

fn subdirs(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn compaction_packs_finished_windows_and_changes_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let hour = 3_600_000i64;
    let cfg = StorageConfig {
        chunk_span_ms: 600_000,
        block_duration_ms: hour,
        head_idle_ms: 60_000,
        page_bytes: 2048, // several pages per window
        ..small()
    };
    let t0 = 1_700_000_000_000i64 / hour * hour;
    let steps = 1000i64; // 2.8 hours at 10 s
    let value = |kind: usize, i: usize, n: i64| -> f64 {
        match kind {
            0 => (i as i64 * 1000 + n * (i as i64 % 5) + n % 3) as f64, // counter
            1 => (n as f64) / 3.0,                                      // float
            2 if n % 50 == 7 => f64::from_bits(kappie_storage::STALE_NAN_BITS),
            2 if n % 77 == 0 => f64::INFINITY,
            2 => -(n as f64),
            _ => ((n * 7919) % 13) as f64 - 6.0, // small gauge
        }
    };
    let s = Storage::open(dir.path(), &cfg).unwrap();
    for n in 0..steps {
        let mut a = s.appender();
        for i in 0..40 {
            // Series 39 stops half-way: its last window holds a cut idle chunk.
            if i == 39 && n > steps / 2 {
                continue;
            }
            a.append(
                &labels("m", &format!("s{i}")),
                t0 + n * 10_000,
                value(i % 4, i, n),
            )
            .unwrap();
        }
        a.commit().unwrap();
    }
    let now = t0 + steps * 10_000;
    let before = bits(&all(&s));
    let raw_before = raw_bits(&s, t0 + 123_456, t0 + 7_000_000);
    assert_eq!(before.len(), 40);
    assert!(subdirs(&dir.path().join("staging")) >= 16);
    s.flush().unwrap();
    let size_before = s.size_on_disk().unwrap();

    let r = s.maintain(now).unwrap();
    // Every window but the last one or two (their end is not yet head_idle ago) is packed.
    assert!(r.windows_compacted >= 15, "{r:?}");
    assert!(subdirs(&dir.path().join("staging")) <= 2);
    assert_eq!(bits(&all(&s)), before);
    assert_eq!(raw_bits(&s, t0 + 123_456, t0 + 7_000_000), raw_before);
    let size_after = s.size_on_disk().unwrap();
    eprintln!("disk {size_before} -> {size_after} bytes");
    assert!(size_after < size_before, "{size_before} -> {size_after}");

    // A series first seen now, with samples in compacted windows: staged under the next
    // generation, compacted again, read together with the first generation.
    let mut a = s.appender();
    for n in (100..400).step_by(3) {
        a.append(&labels("late", "x"), t0 + n * 10_000, n as f64)
            .unwrap();
    }
    assert_eq!(a.commit().unwrap().appended, 100);
    let r = s.maintain(now + hour).unwrap();
    assert!(r.windows_compacted >= 5, "{r:?}");
    let late = Matcher::new(MatchOp::Equal, "__name__", "late").unwrap();
    let got = s
        .select(std::slice::from_ref(&late), i64::MIN, i64::MAX)
        .unwrap();
    let want: Vec<i64> = (100..400).step_by(3).map(|n| t0 + n * 10_000).collect();
    assert_eq!(got[0].samples.iter().map(|x| x.t).collect::<Vec<_>>(), want);
    let m = Matcher::new(MatchOp::Equal, "__name__", "m").unwrap();
    assert_eq!(
        bits(
            &s.select(std::slice::from_ref(&m), i64::MIN, i64::MAX)
                .unwrap()
        ),
        before
    );
    drop(s);

    // Reopen: the same answers, and order is still enforced from compacted data.
    let s = Storage::open(dir.path(), &cfg).unwrap();
    assert_eq!(bits(&s.select(&[m], i64::MIN, i64::MAX).unwrap()), before);
    assert_eq!(
        s.select(&[late], i64::MIN, i64::MAX).unwrap()[0]
            .samples
            .len(),
        100
    );
    let last39 = t0 + (steps / 2) * 10_000;
    let mut a = s.appender();
    a.append(&labels("m", "s39"), last39 - 10_000, 0.0).unwrap();
    a.append(&labels("m", "s39"), last39, value(3, 39, steps / 2))
        .unwrap();
    let r = a.commit().unwrap();
    assert_eq!(
        (r.out_of_order, r.duplicates_ignored, r.appended),
        (1, 1, 0),
        "{r:?}"
    );
    let mut a = s.appender();
    a.append(&labels("m", "s39"), last39, 12345.0).unwrap();
    assert_eq!(a.commit().unwrap().duplicate_timestamp, 1);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_staged_window_left_behind_by_a_finished_compaction_is_dropped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        chunk_span_ms: 600_000,
        head_idle_ms: 60_000,
        ..small()
    };
    let t0 = 1_700_000_000_000i64 / 600_000 * 600_000;
    {
        let s = Storage::open(dir.path(), &cfg).unwrap();
        for n in 0..300 {
            let mut a = s.appender();
            for j in 0..20 {
                a.append(
                    &labels("m", &format!("j{j}")),
                    t0 + n * 10_000,
                    (n * j) as f64,
                )
                .unwrap();
            }
            a.commit().unwrap();
        }
        // Chunks cut so far are staged (flushed), nothing is compacted yet.
        s.flush().unwrap();
    }
    let expected = bits(&all(&Storage::open(dir.path(), &cfg).unwrap()));
    assert_eq!(expected.len(), 20);
    let saved = dir.path().join("saved-staging");
    copy_dir(&dir.path().join("staging"), &saved);
    let staged = subdirs(&saved);
    assert!(staged >= 4, "{staged} staged windows");
    {
        let s = Storage::open(dir.path(), &cfg).unwrap();
        let r = s.maintain(t0 + 10 * 3_600_000).unwrap();
        assert_eq!(r.windows_compacted, staged + 1, "{r:?}"); // + the last, cut idle
        assert_eq!(subdirs(&dir.path().join("staging")), 0);
    }
    // As if the process had died after the pages were durable but before it deleted the
    // staging directories: they are back, and must not be read twice.
    std::fs::remove_dir_all(dir.path().join("staging")).unwrap();
    copy_dir(&saved, &dir.path().join("staging"));
    let s = Storage::open(dir.path(), &cfg).unwrap();
    assert_eq!(subdirs(&dir.path().join("staging")), 0, "dropped on open");
    assert_eq!(bits(&all(&s)), expected);
}

#[test]
fn commits_during_compaction_lose_and_double_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        chunk_span_ms: 60_000,
        head_idle_ms: 10_000,
        page_bytes: 1024,
        ..small()
    };
    let s = Storage::open(dir.path(), &cfg).unwrap();
    let t0 = 1_700_000_000_000i64 / 60_000 * 60_000;
    let steps = 3000i64;
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for n in 0..steps {
                let mut a = s.appender();
                for j in 0..30 {
                    a.append(
                        &labels("w", &format!("j{j}")),
                        t0 + n * 1000,
                        (n + j) as f64,
                    )
                    .unwrap();
                }
                // Now and then a new series with 130 samples in a window that may be being
                // compacted: the commit cuts a full chunk into it.
                if n % 20 == 10 {
                    for k in 0..130 {
                        a.append(&labels("late", &format!("n{n}")), t0 + k * 400, k as f64)
                            .unwrap();
                    }
                }
                assert_eq!(a.commit().unwrap().refused(), 0);
            }
        })
    };
    let mut compacted = 0;
    while !writer.is_finished() {
        let newest = s
            .stats()
            .newest_sample_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        compacted += s.maintain(newest).unwrap().windows_compacted;
    }
    writer.join().unwrap();
    compacted += s
        .maintain(t0 + steps * 1000 + 3_600_000)
        .unwrap()
        .windows_compacted;
    assert!(compacted > 40, "{compacted} windows compacted");
    let check = |s: &Storage| {
        let w = Matcher::new(MatchOp::Equal, "__name__", "w").unwrap();
        let got = s.select(&[w], i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 30);
        for series in got {
            let j: i64 = series.labels.get("job").unwrap()[1..].parse().unwrap();
            let want: Vec<Sample> = (0..steps)
                .map(|n| Sample {
                    t: t0 + n * 1000,
                    v: (n + j) as f64,
                })
                .collect();
            assert_eq!(series.samples, want, "series {j}");
        }
        let late = Matcher::new(MatchOp::Equal, "__name__", "late").unwrap();
        let got = s.select(&[late], i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 150);
        assert!(got.iter().all(|x| x.samples.len() == 130));
    };
    check(&s);
    drop(s);
    check(&Storage::open(dir.path(), &cfg).unwrap());
}

#[test]
fn a_data_directory_of_the_first_layout_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Layout 1 kept `I id -> first time` per series in main/.
        let main = sled::Config::new()
            .path(dir.path().join("main"))
            .use_compression(true)
            .open()
            .unwrap();
        let mut k = vec![b'I'];
        k.extend_from_slice(&1u64.to_be_bytes());
        main.insert(k, &0i64.to_be_bytes()).unwrap();
        main.flush().unwrap();
    }
    let err = Storage::open(dir.path(), &small()).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("first storage layout") && msg.contains("empty data directory"),
        "{msg}"
    );
}

/// `main/` opened directly. sled releases its file lock from a background thread after the
/// store is dropped, so the lock may still be held for a moment: retried until it is free.
fn open_main(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(dir.join("main"))
            .use_compression(true)
            .open()
        {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("main/ not yet free ({e}); retrying");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open main/: {e}"),
        }
    }
}

#[test]
fn postings_left_by_an_interrupted_series_removal_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000i64;
    {
        let s = Storage::open(dir.path(), &small()).unwrap();
        let mut a = s.appender();
        a.append(&labels("m", "a"), t0, 1.0).unwrap();
        a.append(&labels("m", "b"), t0, 2.0).unwrap();
        a.commit().unwrap();
        // Cut, flushed, log truncated: nothing to replay on open.
        s.maintain(t0 + 3_600_000).unwrap();
    }
    // Retention removes a series' entry first, then its postings; stop in between: the
    // second series' entry is gone, its postings are not.
    {
        let main = open_main(dir.path());
        let (k, v) = main.scan_prefix(b"S").next().unwrap().unwrap();
        assert_eq!(v.len(), 36, "two series of 18 bytes");
        main.insert(k, &v[..18]).unwrap();
        main.flush().unwrap();
    }
    let s = Storage::open(dir.path(), &small()).unwrap();
    let got = all(&s);
    assert_eq!(got.len(), 1, "{got:?}");
    let gone = if got[0].labels.get("job") == Some("a") {
        "b"
    } else {
        "a"
    };
    assert_eq!(
        s.label_values("job", &[], i64::MIN, i64::MAX)
            .unwrap()
            .len(),
        1
    );
    drop(s);
    let key: Vec<u8> = [b"Pjob\xff".as_slice(), gone.as_bytes(), b"\xff"].concat();
    assert!(
        open_main(dir.path()).get(&key).unwrap().is_none(),
        "the posting job={gone} is still there"
    );
}

/// Regression (found by the collector's crash loop): a chunk cut from the head was staged
/// only after the head lock was released, and readers read staging and the head under
/// separate locks, so a query could miss a whole chunk while it moved. Readers racing with
/// commits that cut chunks (every 120 samples) and with maintenance that cuts idle ones must
/// always see every series as an unbroken run of steps.
#[test]
fn readers_never_miss_a_chunk_while_it_moves_from_head_to_staging() {
    const SERIES: u64 = 200;
    const STEPS: u64 = 1_200;
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), &StorageConfig::default()).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let m = Matcher::new(MatchOp::Equal, "__name__", "race").unwrap();
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    for series in s
                        .select(std::slice::from_ref(&m), i64::MIN, i64::MAX)
                        .unwrap()
                    {
                        let paused = series.labels.get("j") == Some("0");
                        for (i, x) in series.samples.iter().enumerate() {
                            let step = if paused { i / 40 * 50 + i % 40 } else { i };
                            assert_eq!(
                                x.t,
                                step as i64 * 10_000,
                                "{:?}: sample {i} of {} is missing or out of place",
                                series.labels,
                                series.samples.len()
                            );
                        }
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for step in 0..STEPS {
        let mut a = s.appender();
        for j in 0..SERIES {
            // Series 0 pauses now and then, so maintenance cuts its idle head chunk.
            if j == 0 && step % 50 >= 40 {
                continue;
            }
            let l = Labels::new([("__name__", "race".to_owned()), ("j", j.to_string())]).unwrap();
            a.append(&l, step as i64 * 10_000, step as f64).unwrap();
        }
        a.commit().unwrap();
        if step % 50 == 45 {
            // As if far later: series 0's head is idle, the others are not (their last
            // sample is within `head_idle` of it).
            s.maintain(step as i64 * 10_000 + 14 * 60_000).unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
}

/// A clean stop keeps each sample once, in its chunk (issue 11, section 3: the log was most
/// of a stopped store): after `close` the log holds no record, every sample reads back after
/// reopening, and commits go on.
#[test]
fn close_cuts_every_head_chunk_and_empties_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), &small()).unwrap();
    for step in 0..50i64 {
        let mut a = s.appender();
        for j in 0..20 {
            a.append(
                &labels("closing", &j.to_string()),
                step * 10_000,
                (step * j) as f64,
            )
            .unwrap();
        }
        a.commit().unwrap();
    }
    let before = bits(&all(&s));
    // Every file in the log's directory: a clean stop removes the spare segment too.
    let wal = |d: &std::path::Path| {
        std::fs::read_dir(d.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum::<u64>()
    };
    assert!(wal(dir.path()) > 0);
    s.close().unwrap();
    assert_eq!(
        wal(dir.path()),
        0,
        "the log holds nothing after a clean stop"
    );
    assert_eq!(bits(&all(&s)), before);
    let mut a = s.appender();
    a.append(&labels("closing", "0"), 50 * 10_000, 1.0).unwrap();
    a.commit().unwrap();
    drop(s);
    let s = Storage::open(dir.path(), &small()).unwrap();
    let after = bits(&all(&s));
    assert_eq!(after.len(), before.len());
    assert_eq!(after[0].1.len(), before[0].1.len() + 1);
}

/// Ingest state stays in memory until the log is about to lose its record (2026-12-02:
/// counter totals were rewritten in sled on every push). Whatever maintenance truncates,
/// every value, its newest version and removals must come back after a reopen, and a
/// prefix scan must see pending and written keys alike.
#[test]
fn pending_ingest_state_survives_truncation_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        wal_segment_bytes: 1, // a segment per record, so truncation removes records
        ..small()
    };
    let now = 1_000_000_000;
    {
        let s = Storage::open(dir.path(), &cfg).unwrap();
        let mut a = s.appender();
        a.set_meta(b"tot/a", b"1");
        a.set_meta(b"tot/gone", b"x");
        a.set_meta(b"tot/b", b"1");
        a.commit().unwrap();
        // Maintenance with nothing in the head: the log can lose every record, so the
        // state goes to sled first.
        let r = s.maintain(now).unwrap();
        assert!(r.wal_segments_removed > 0, "{r:?}");
        let mut a = s.appender();
        a.set_meta(b"tot/b", b"2");
        a.remove_meta(b"tot/gone");
        a.append(&labels("up", "a"), now, 1.0).unwrap();
        a.commit().unwrap();
        // A head chunk holds the newest record: `tot/b` = 2 stays pending, in the log.
        s.maintain(now).unwrap();
        assert_eq!(s.meta(b"tot/b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(s.meta(b"tot/gone").unwrap(), None);
        let keys: Vec<Vec<u8>> = s
            .meta_scan_prefix(b"tot/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"tot/a".to_vec(), b"tot/b".to_vec()]);
    } // dropped without close: the pending state is only in the log
    let s = Storage::open(dir.path(), &cfg).unwrap();
    assert_eq!(s.meta(b"tot/a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(s.meta(b"tot/b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.meta(b"tot/gone").unwrap(), None);
    // A clean stop leaves what is still pending in the log (as maintenance would).
    s.close().unwrap();
    drop(s);
    let s = Storage::open(dir.path(), &cfg).unwrap();
    assert_eq!(s.meta(b"tot/b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.meta(b"tot/gone").unwrap(), None);
}

/// Ingest state written with a shared label set (`set_meta_bytes`, issue 15: the pending
/// map held a copy of every series' label set in its `tot/` key and `def/` value) reads,
/// scans, replaces and survives maintenance and reopen exactly like the same bytes written
/// with `set_meta`, however its key is split.
#[test]
fn shared_ingest_state_reads_like_its_bytes() {
    use kappie_storage::MetaBytes;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        wal_segment_bytes: 1,
        ..small()
    };
    let now = 1_000_000_000;
    let enc: Arc<[u8]> = Arc::from(labels("up", "a").encode());
    let key = [b"tot/".as_slice(), &enc].concat();
    let value = [b"\x01".as_slice(), &enc].concat();
    let check = |s: &Storage, v: &[u8]| {
        assert_eq!(s.meta(&key).unwrap().as_deref(), Some(v));
        assert_eq!(s.meta(b"def/k").unwrap().as_deref(), Some(&value[..]));
        let scanned = s.meta_scan_prefix(b"tot/__name__").unwrap();
        assert_eq!(scanned, vec![(key.clone(), v.to_vec())]);
        let all: Vec<Vec<u8>> = s
            .meta_scan_prefix(b"")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(all, vec![b"def/k".to_vec(), b"tot/".to_vec(), key.clone()]);
    };
    {
        let s = Storage::open(dir.path(), &cfg).unwrap();
        let mut a = s.appender();
        a.set_meta_bytes(MetaBytes::shared(b"tot/", &enc), MetaBytes::new(b"1"));
        a.set_meta_bytes(MetaBytes::new(b"def/k"), MetaBytes::shared(b"\x01", &enc));
        // A key that is a prefix of the shared one, written whole.
        a.set_meta(b"tot/", b"p");
        a.commit().unwrap();
        check(&s, b"1");
        // The same key split elsewhere replaces the value.
        let mut a = s.appender();
        a.set_meta_bytes(
            MetaBytes::shared(&key[..9], &Arc::from(&key[9..])),
            MetaBytes::new(b"2"),
        );
        a.append(&labels("up", "a"), now, 1.0).unwrap();
        a.commit().unwrap();
        check(&s, b"2");
        // Into sled (the log may lose every record before the head chunk's), then read back.
        s.maintain(now).unwrap();
        check(&s, b"2");
    } // dropped without close: what is pending is only in the log
    let s = Storage::open(dir.path(), &cfg).unwrap();
    check(&s, b"2");
    s.maintain(now + 3 * 3_600_000).unwrap();
    drop(s);
    let s = Storage::open(dir.path(), &cfg).unwrap();
    check(&s, b"2");
}

/// A clean stop with many counter totals pending (2026-12-02: writing them all to sled at
/// close took over 60 s at 519k series) keeps them in the log: after each of several
/// close/reopen rounds every total has its newest value, every sample reads back once,
/// and a maintenance with an empty head finally writes them to sled and empties the log.
#[test]
fn close_keeps_pending_totals_in_the_log_exactly_once() {
    const SERIES: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let cfg = small();
    let total = |j: usize| format!("tot/{j:05}").into_bytes();
    let mut step = 0i64;
    let t = |step: i64| 1_000_000_000 + step * 10_000;
    let commit_round = |s: &Storage, step: &mut i64| {
        for _ in 0..3 {
            let mut a = s.appender();
            for j in 0..SERIES {
                a.append(&labels("c", &j.to_string()), t(*step), *step as f64)
                    .unwrap();
                a.set_meta(&total(j), (*step * j as i64).to_string().as_bytes());
            }
            a.commit().unwrap();
            *step += 1;
        }
    };
    let check = |s: &Storage, step: i64| {
        for j in 0..SERIES {
            let want = ((step - 1) * j as i64).to_string();
            assert_eq!(s.meta(&total(j)).unwrap().as_deref(), Some(want.as_bytes()));
        }
        assert_eq!(s.meta_scan_prefix(b"tot/").unwrap().len(), SERIES);
        let got = all(s);
        assert_eq!(got.len(), SERIES);
        for series in &got {
            let ts: Vec<i64> = series.samples.iter().map(|x| x.t).collect();
            let want: Vec<i64> = (0..step).map(t).collect();
            assert_eq!(ts, want, "every sample once");
        }
    };
    for _round in 0..3 {
        let s = Storage::open(dir.path(), &cfg).unwrap();
        check_if_any(&s, step, &check);
        commit_round(&s, &mut step);
        s.close().unwrap();
        check(&s, step);
        drop(s);
    }
    let s = Storage::open(dir.path(), &cfg).unwrap();
    check(&s, step);
    // Nothing in the head: maintenance writes every pending total and the log can go.
    s.maintain(t(step) + 3_600_000).unwrap();
    let wal_bytes = log_bytes(&dir.path().join("wal"));
    assert_eq!(
        wal_bytes, 0,
        "the log holds nothing once the totals are in sled"
    );
    drop(s);
    let s = Storage::open(dir.path(), &cfg).unwrap();
    check(&s, step);
}

fn check_if_any(s: &Storage, step: i64, check: &dyn Fn(&Storage, i64)) {
    if step > 0 {
        check(s, step);
    }
}

/// New series' postings wait in memory until maintenance writes them to sled (2026-12-02:
/// every commit read and rewrote each posting list it touched). Reads must see sled's and
/// the pending ones alike, for every kind of matcher and for label values, before and after
/// maintenance, after a crash (a drop without `close`: replayed from the log) and after a
/// clean stop.
#[test]
fn postings_read_the_same_pending_and_written() {
    let dir = tempfile::tempdir().unwrap();
    let l = |job: &str, zone: Option<&str>| {
        let mut p = vec![("__name__", "pp".to_owned()), ("job", job.to_owned())];
        if let Some(z) = zone {
            p.push(("zone", z.to_owned()));
        }
        Labels::new(p).unwrap()
    };
    let write = |s: &Storage, series: &[Labels], t: i64| {
        let mut a = s.appender();
        for x in series {
            a.append(x, t, 1.0).unwrap();
        }
        a.commit().unwrap();
    };
    let m = |op, name: &str, value: &str| Matcher::new(op, name, value).unwrap();
    let view = |s: &Storage| {
        let count = |ms: &[Matcher]| s.select(ms, i64::MIN, i64::MAX).unwrap().len();
        (
            [
                count(&[m(MatchOp::Equal, "job", "b")]),
                count(&[m(MatchOp::Regex, "job", "[bd]")]),
                count(&[m(MatchOp::NotRegex, "job", "[bd]")]),
                count(&[m(MatchOp::NotEqual, "zone", "z1")]),
                count(&[m(MatchOp::Equal, "job", "d"), m(MatchOp::Equal, "zone", "")]),
            ],
            s.label_values("job", &[], i64::MIN, i64::MAX).unwrap(),
            s.label_values("zone", &[], i64::MIN, i64::MAX).unwrap(),
        )
    };
    let written = [l("a", Some("z1")), l("b", None), l("c", None)];
    let pending = [l("b", Some("z2")), l("d", None)];
    let expected = (
        [2, 3, 2, 4, 1],
        vec!["a".to_owned(), "b".into(), "c".into(), "d".into()],
        vec!["z1".to_owned(), "z2".into()],
    );
    {
        let s = Storage::open(dir.path(), &small()).unwrap();
        write(&s, &written, 1_000);
        s.maintain(2_000).unwrap();
        write(&s, &pending, 2_000);
        assert_eq!(view(&s), expected, "sled's postings and pending ones");
        s.maintain(3_000).unwrap();
        assert_eq!(view(&s), expected, "all written");
        write(&s, &[l("e", Some("z3"))], 3_000);
        // Dropped without close: the pending postings of `e` exist only in the log.
    }
    let mut expected = expected;
    expected.0[2] += 1; // job!~"[bd]" and zone!="z1" now match e too
    expected.0[3] += 1;
    expected.1.push("e".into());
    expected.2.push("z3".into());
    let s = Storage::open(dir.path(), &small()).unwrap();
    assert_eq!(view(&s), expected, "replayed from the log");
    write(&s, &[l("e", Some("z3"))], 4_000);
    s.close().unwrap();
    drop(s);
    let s = Storage::open(dir.path(), &small()).unwrap();
    assert_eq!(view(&s), expected, "after a clean stop");
    assert_eq!(s.series_count(), 6);
}

/// Commits overlap in the pipeline: several writers commit steps of the same series at
/// once, so one commit's cut chunks wait for their staging turn (readable from the head)
/// while the next commit appends to and cuts the same series, and maintenance marks and
/// compacts meanwhile. Readers must see each series strictly in time order, and every
/// accepted step exactly once, before and after reopening.
#[test]
fn overlapping_commits_that_cut_chunks_lose_and_double_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;
    const SERIES: usize = 40;
    const STEPS: i64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let (s, cfg, t0) = minute_windows(dir.path());
    let series: Arc<Vec<Labels>> = Arc::new(
        (0..SERIES)
            .map(|j| labels("overlap", &format!("j{j}")))
            .collect(),
    );
    let next = Arc::new(AtomicI64::new(0));
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let (s, next, series) = (s.clone(), next.clone(), series.clone());
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                loop {
                    let step = next.fetch_add(1, Ordering::SeqCst);
                    if step >= STEPS {
                        return accepted;
                    }
                    let mut a = s.appender();
                    for l in series.iter() {
                        a.append(l, t0 + step * 10_000, step as f64).unwrap();
                    }
                    let r = a.commit().unwrap();
                    // Every series has the same history: a step is taken or refused whole.
                    match r.appended {
                        SERIES => accepted.push(step),
                        0 => assert_eq!(r.out_of_order, SERIES, "{r:?}"),
                        _ => panic!("a step was taken in part: {r:?}"),
                    }
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || {
            let m = Matcher::new(MatchOp::Equal, "__name__", "overlap").unwrap();
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                for x in s
                    .select(std::slice::from_ref(&m), i64::MIN, i64::MAX)
                    .unwrap()
                {
                    for w in x.samples.windows(2) {
                        assert!(
                            w[0].t < w[1].t,
                            "{:?}: {:?} then {:?}",
                            x.labels,
                            w[0],
                            w[1]
                        );
                    }
                    for p in &x.samples {
                        assert_eq!(p.v, ((p.t - t0) / 10_000) as f64);
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    let mut compacted = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        let newest = s.stats().newest_sample_ms.load(Ordering::Relaxed);
        compacted += s.maintain(newest).unwrap().windows_compacted;
    }
    let mut accepted: Vec<i64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    accepted.sort_unstable();
    done.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert!(
        accepted.len() as i64 > STEPS / 2,
        "{} steps taken",
        accepted.len()
    );
    assert!(compacted > 0, "no window was compacted meanwhile");
    let want: Vec<Sample> = accepted
        .iter()
        .map(|&n| Sample {
            t: t0 + n * 10_000,
            v: n as f64,
        })
        .collect();
    let check = |s: &Storage| {
        let got = all(s);
        assert_eq!(got.len(), SERIES);
        for x in got {
            assert_eq!(x.samples, want, "{:?}", x.labels);
        }
    };
    check(&s);
    drop(s);
    check(&Storage::open(dir.path(), &cfg).unwrap());
}

/// `commit_then` hands over the outcome once the commit is durable, before it is applied
/// and before the chunks it cut are staged; a read started after that sees the commit (it
/// waits for the apply), and a commit it refuses says so.
#[test]
fn commit_then_answers_when_the_commit_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (s, cfg, t0) = minute_windows(dir.path());
    let l = labels("early", "a");
    let m = Matcher::new(MatchOp::Equal, "__name__", "early").unwrap();
    let read = move |s: &Storage| -> Vec<i64> {
        s.select(std::slice::from_ref(&m), i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .flat_map(|x| x.samples.into_iter().map(|p| p.t))
            .collect()
    };
    let read = std::sync::Arc::new(read);
    let mut want = Vec::new();
    // Each commit a minute of 10 s steps: every commit cuts the chunk of the one before.
    for step in 0..5i64 {
        let mut a = s.appender();
        for k in 0..6 {
            let t = t0 + step * 60_000 + k * 10_000;
            a.append(&l, t, t as f64).unwrap();
            want.push(t);
        }
        let staged = || {
            s.stats()
                .chunks_cut
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        let mut seen = None;
        let mut reader = None;
        a.commit_then(|r| {
            assert_eq!(r.unwrap().appended, 6);
            seen = Some(staged());
            // A read started now, on another thread, must see this commit: it waits until
            // the commit is applied, which happens after this callback returns.
            let (s2, read2) = (s.clone(), read.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            let h = std::thread::spawn(move || tx.send(read2(&s2)).unwrap());
            if step == 0 {
                // Still waiting while the commit is not applied (without the wait it
                // answers at once, without the commit's samples).
                let early = rx.recv_timeout(std::time::Duration::from_millis(300));
                assert!(
                    early.is_err(),
                    "a read finished before the commit was applied: {early:?}"
                );
            }
            reader = Some((h, rx));
        });
        // Answered before the chunk this commit cut (the one before) was staged.
        let before = (step - 1).max(0) as u64;
        assert_eq!(seen, Some(before), "step {step}");
        assert_eq!(staged(), step as u64);
        let (h, rx) = reader.expect("answered");
        assert_eq!(rx.recv().unwrap(), want, "step {step}");
        h.join().unwrap();
    }
    // A commit whose samples are all refused is answered too.
    let mut answered = false;
    let mut b = s.appender();
    b.append(&l, t0, 0.0).unwrap();
    b.commit_then(|r| {
        assert_eq!(r.unwrap().out_of_order, 1);
        answered = true;
    });
    assert!(answered);
    drop(s);
    assert_eq!(read(&Storage::open(dir.path(), &cfg).unwrap()), want);
}

/// Bytes of the log's segment files in `dir` (not the zero-filled spare beside them).
fn log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// A replay that cuts more chunks than it stages at once (16,384: it stages them as they
/// pile up instead of holding every one until the end) keeps every sample, in order.
#[test]
fn a_long_replay_stages_as_it_goes_and_keeps_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let (s, cfg, t0) = minute_windows(dir.path());
    let n = 9_000;
    let steps = 26i64;
    let series: Vec<Labels> = (0..n).map(|i| labels("long", &format!("s{i}"))).collect();
    for step in 0..steps {
        let mut a = s.appender();
        for (i, l) in series.iter().enumerate() {
            a.append(l, t0 + step * 10_000, (i as i64 * step) as f64)
                .unwrap();
        }
        assert_eq!(a.commit().unwrap().appended, n);
    }
    // No maintenance ran: nothing is marked durable in staging, so the reopened store
    // cuts every chunk again from the log (samples in 5 minute windows: 4 cut a series).
    drop(s);
    let s = Storage::open(dir.path(), &cfg).unwrap();
    let cut = s
        .stats()
        .chunks_cut
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        cut > 16_384,
        "the replay cut {cut} chunks, fewer than one batch"
    );
    let got = all(&s);
    assert_eq!(got.len(), n);
    for x in &got {
        let i: i64 = x.labels.get("job").unwrap()[1..].parse().unwrap();
        let want: Vec<(i64, f64)> = (0..steps)
            .map(|step| (t0 + step * 10_000, (i * step) as f64))
            .collect();
        let have: Vec<(i64, f64)> = x.samples.iter().map(|p| (p.t, p.v)).collect();
        assert_eq!(have, want, "{:?}", x.labels);
    }
}

//! Benchmark: bytes per sample of one compacted window: what the store writes (its own
//! `maintain`) and the window codec (`kappie_storage::wincodec`) in a window file
//! (`kappie_storage::winfile`) written directly, with layout alternatives.
//!
//! Data: `--series` series of each `--shape` (`kappie_loadtest::shapes`, seeded by `--seed`),
//! `--samples` samples 10 s apart in one aligned hour (three hours before now), so every
//! series' samples are one piece of one chunk window.
//!
//! - The store: the samples written through the store's `Appender` and compacted by its own
//!   `maintain`; reported is `du` of `blocks/` (since 2026-11-30 one window file; before,
//!   16 KiB pages in a sled database, whose figures are in docs/BENCHMARKS.md).
//! - Window codec: `wincodec::encode` of the whole window as one value, and the window
//!   written by `winfile::write` (16 KiB pages, one timestamp table per file), whose length
//!   is the figure; every series is read back with `read_series` and compared bit for bit.
//!   Also the alternative layout that gives each page a timestamp table of its own (each page
//!   one `wincodec::encode` of the same series the file's pages hold).
//!
//! `main/` (series table and postings) is the index both layouts need; its `du` is printed.

use anyhow::{bail, Context};
use clap::Parser;
use kappie_loadtest::shapes::{self, Generator, Shape, STEP_MS};
use kappie_storage::wincodec::{self, WindowSeries};
use kappie_storage::{chunkenc, winfile, Appender, Labels, Storage, StorageConfig};
use std::path::Path;
use std::time::Instant;

const HOUR: i64 = 3_600_000;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20_000)]
    series: usize,
    #[arg(long, default_value_t = 360)]
    samples: usize,
    /// Shapes to measure (all three unless given).
    #[arg(long, value_enum)]
    shape: Vec<Shape>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = winfile::DEFAULT_PAGE_BYTES)]
    page_bytes: usize,
    /// Keep the data directories instead of deleting them at the end.
    #[arg(long)]
    keep: bool,
}

fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.blocks() * 512;
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shapes = if args.shape.is_empty() {
        vec![Shape::Friendly, Shape::Realistic, Shape::Hostile]
    } else {
        args.shape.clone()
    };
    if args.samples as i64 * STEP_MS > HOUR {
        bail!("--samples {} do not fit one hour", args.samples);
    }
    let base = (kappie_loadtest::now_ms() / HOUR - 3) * HOUR;
    let work = kappie_loadtest::work_dir("window-codec-bench")?;
    let total = (args.series * args.samples) as f64;
    let per = |b: u64| b as f64 / total;
    let mut rows = Vec::new();
    for shape in shapes {
        let mut data: Vec<WindowSeries> = (0..args.series)
            .map(|i| (i as u64, Vec::with_capacity(args.samples)))
            .collect();
        let mut g = Generator::new(shape, args.seed, base, 0..args.series);
        for step in 0..args.samples {
            for (i, t, v) in g.step(step) {
                data[i].1.push((t, v));
            }
        }
        let xor: u64 = data
            .iter()
            .flat_map(|s| s.1.chunks(chunkenc::MAX_SAMPLES as usize))
            .map(|c| chunkenc::encode_all(c).len() as u64)
            .sum();

        // The store today, compacted by its own maintenance.
        let dir = work.join(format!("store-{}", shape.name()));
        let labels: Vec<Labels> = (0..args.series)
            .map(|i| Labels::new(shapes::series_labels(i)))
            .collect::<Result<_, _>>()?;
        let config = StorageConfig {
            page_bytes: args.page_bytes,
            ..StorageConfig::default()
        };
        {
            let store = Storage::open(&dir, &config)?;
            for step in 0..args.samples {
                let mut a = store.appender();
                for (i, s) in data.iter().enumerate() {
                    a.append(&labels[i], s.1[step].0, s.1[step].1)?;
                }
                let r = a.commit()?;
                if r.refused() > 0 {
                    bail!("the store refused samples: {r:?}");
                }
            }
            let report = store.maintain(kappie_loadtest::now_ms())?;
            if report.windows_compacted != 1 {
                bail!("expected one compacted window, got {report:?}");
            }
            store.flush()?;
        }
        let store_blocks = du(&dir.join("blocks"));
        let index = du(&dir.join("main"));

        // The window codec.
        let started = Instant::now();
        let blob = wincodec::encode(base, &data).len() as u64;
        let encode_s = started.elapsed().as_secs_f64();
        let path = work.join(format!("{}.kpw", shape.name()));
        let summary = winfile::write(&path, base, &data, args.page_bytes)?;
        let file = std::fs::metadata(&path)?.len();
        let f = winfile::open(&path)?;
        let started = Instant::now();
        for (id, s) in &data {
            let got = f.read_series(*id)?.context("series missing")?;
            let same = got.len() == s.len()
                && got
                    .iter()
                    .zip(s)
                    .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits());
            if !same {
                bail!("{}: series {id} did not round-trip", shape.name());
            }
        }
        let read_s = started.elapsed().as_secs_f64();
        // The same pages, each with a timestamp table of its own.
        let per_page = args.series.div_ceil(summary.pages.max(1) as usize);
        let own_tables: u64 = data
            .chunks(per_page)
            .map(|g| wincodec::encode(base, g).len() as u64 + 24)
            .sum::<u64>()
            + 64;
        eprintln!(
            "{}: {} pages, {} shared timestamp columns; encode {:.2} s ({:.1} M samples/s), \
             read_series of every series {:.2} s ({:.1} µs each); index (main/) {:.3} B/sample",
            shape.name(),
            summary.pages,
            summary.shared_columns,
            encode_s,
            total / encode_s / 1e6,
            read_s,
            read_s * 1e6 / args.series as f64,
            per(index)
        );
        rows.push(format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            shape.name(),
            per(xor),
            per(store_blocks),
            per(blob),
            per(own_tables),
            per(file),
            per(file + index),
        ));
        if !args.keep {
            std::fs::remove_dir_all(&dir)?;
            std::fs::remove_file(&path)?;
        }
    }
    println!(
        "| bytes/sample, {} series x {} samples, seed {} | XOR chunks of 120 | store's blocks/ \
         (du) | wincodec, one value | pages with a table each | window file | window file + \
         main/ |",
        args.series, args.samples, args.seed
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

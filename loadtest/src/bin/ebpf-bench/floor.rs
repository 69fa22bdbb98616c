//! The floor of the tc hook, measured live: reference programs (`ebpf/floor.bpf.c`: one that
//! does nothing, one that does only Kappie's map lookup and packet and byte adds) and Kappie's
//! own tc programs (this build's and, with `--compare-object`, another build's), each
//! attached alone on the same hook (tcx, first, ingress and egress) for one workload run,
//! in an order that rotates round by round, with `kernel.bpf_stats_enabled=1` throughout.
//! ns per run of each variant is its median over the rounds; every round's figure is kept.

use anyhow::{bail, Context};
use aya::maps::PerCpuArray;
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use kappie_ebpf::ForwardValue;
use kappie_testkit::Netns;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One set of tc programs (ingress, egress), loaded once and attached round by round.
pub struct Variant {
    pub label: String,
    obj: aya::Ebpf,
    programs: [&'static str; 2],
    /// The map Kappie's programs count into (`kappie_forward_slots`), for the count check.
    counts_into: Option<&'static str>,
    pin_dir: PathBuf,
}

/// The run statistics of a variant's ingress and egress programs (bpf_prog_info).
#[derive(Clone, Copy, Default)]
struct Runs([(u64, Duration); 2]);

impl Variant {
    /// The reference programs `kappie_floor_<kind>_{ingress,egress}`.
    pub fn floor(kind: &str, label: &str, pin_dir: &Path) -> anyhow::Result<Variant> {
        let programs = match kind {
            "empty" => ["kappie_floor_empty_ingress", "kappie_floor_empty_egress"],
            "count" => ["kappie_floor_count_ingress", "kappie_floor_count_egress"],
            k => bail!("no floor program {k}"),
        };
        Variant::load(label, kappie_ebpf::floor_object(), programs, None, pin_dir)
    }

    /// Kappie's `kappie_tc_{ingress,egress}` from a forward object (its maps pinned in a
    /// directory of their own, so two objects do not share them).
    pub fn kappie(label: &str, object: &[u8], pin_dir: &Path) -> anyhow::Result<Variant> {
        Variant::load(
            label,
            object,
            ["kappie_tc_ingress", "kappie_tc_egress"],
            Some("kappie_forward_slots"),
            pin_dir,
        )
    }

    fn load(
        label: &str,
        object: &[u8],
        programs: [&'static str; 2],
        counts_into: Option<&'static str>,
        pin_dir: &Path,
    ) -> anyhow::Result<Variant> {
        std::fs::create_dir_all(pin_dir).with_context(|| format!("mkdir {}", pin_dir.display()))?;
        let mut obj = aya::EbpfLoader::new()
            .map_pin_path(pin_dir)
            .load(object)
            .with_context(|| format!("load the object of {label}"))?;
        for name in programs {
            let p: &mut SchedClassifier = obj
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            p.load().with_context(|| format!("load {name}"))?;
        }
        Ok(Variant {
            label: label.to_owned(),
            obj,
            programs,
            counts_into,
            pin_dir: pin_dir.to_owned(),
        })
    }

    fn program(&mut self, i: usize) -> anyhow::Result<&mut SchedClassifier> {
        let name = self.programs[i];
        Ok(self
            .obj
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// Attaches ingress and egress to `iface` in `ns` with tcx, first on the hook (as the
    /// shipper does).
    fn attach(&mut self, ns: &Netns, iface: &str) -> anyhow::Result<[SchedClassifierLinkId; 2]> {
        let first = || TcAttachOptions::TcxOrder(LinkOrder::first());
        ns.enter(|| -> anyhow::Result<_> {
            let (ingress, egress) = (self.programs[0], self.programs[1]);
            let i = self
                .program(0)?
                .attach_with_options(iface, TcAttachType::Ingress, first())
                .with_context(|| format!("attach {ingress} to {iface} with tcx"))?;
            let e = self
                .program(1)?
                .attach_with_options(iface, TcAttachType::Egress, first())
                .with_context(|| format!("attach {egress} to {iface} with tcx"))?;
            Ok([i, e])
        })
    }

    fn detach(&mut self, ids: [SchedClassifierLinkId; 2]) -> anyhow::Result<()> {
        for (i, id) in ids.into_iter().enumerate() {
            self.program(i)?.detach(id)?;
        }
        Ok(())
    }

    fn runs(&mut self) -> anyhow::Result<Runs> {
        let mut r = Runs::default();
        for i in 0..2 {
            let info = self.program(i)?.info()?;
            r.0[i] = (info.run_count(), info.run_time());
        }
        Ok(r)
    }

    /// Packets Kappie's ingress program counted for interface index `ifindex` (summed over
    /// CPUs); None for the reference programs.
    fn ingress_packets(&self, ifindex: u32) -> anyhow::Result<Option<u64>> {
        let Some(name) = self.counts_into else {
            return Ok(None);
        };
        // An experimental object (--compare-object) with another map layout is not checked.
        let Ok(map) =
            PerCpuArray::<_, ForwardValue>::try_from(self.obj.map(name).context("no forward map")?)
        else {
            return Ok(None);
        };
        let v = map.get(&(ifindex * 2 + kappie_ebpf::DIR_INGRESS), 0)?;
        Ok(Some(v.iter().map(|c| c.packets).sum()))
    }
}

impl Drop for Variant {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// What one workload run did: packets the interface received (for the count check, when
/// nothing else crossed it) and a note for the round's log line.
pub struct Work {
    pub rx_packets: Option<u64>,
    pub note: String,
}

/// ns per run of one direction of one variant in one round, and its run count.
#[derive(Clone, Copy)]
struct Figure {
    ns: f64,
    runs: u64,
}

/// Runs `rounds` rounds; in each, every variant (in an order rotated by the round) is
/// attached alone to `iface` in `ns` for one run of `work`. Prints a table of medians and
/// the per-round figures; fails if a Kappie program's ingress count differs from the
/// interface's.
pub fn rounds(
    title: &str,
    variants: &mut [Variant],
    rounds: usize,
    ns: &Netns,
    iface: &str,
    ifindex: u32,
    mut work: impl FnMut() -> anyhow::Result<Work>,
) -> anyhow::Result<()> {
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enable kernel.bpf_stats_enabled")?;
    let result = (|| -> anyhow::Result<Vec<Vec<[Option<Figure>; 2]>>> {
        let mut figures = vec![Vec::new(); variants.len()];
        let n = variants.len();
        for round in 0..rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let v = &mut variants[i];
                let counted0 = v.ingress_packets(ifindex)?;
                let r0 = v.runs()?;
                let ids = v.attach(ns, iface)?;
                let w = work();
                v.detach(ids)?;
                let w = w?;
                let r1 = v.runs()?;
                let counted = match (counted0, v.ingress_packets(ifindex)?) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                };
                let fig: [Option<Figure>; 2] = std::array::from_fn(|d| {
                    let runs = r1.0[d].0 - r0.0[d].0;
                    let t = (r1.0[d].1 - r0.0[d].1).as_nanos() as f64;
                    (runs > 0).then(|| Figure {
                        ns: t / runs as f64,
                        runs,
                    })
                });
                let show = |f: Option<Figure>| {
                    f.map(|f| format!("{:.1} ns ({} runs)", f.ns, f.runs))
                        .unwrap_or_else(|| "-".into())
                };
                eprintln!(
                    "{title} round {round}, {}: ingress {}, egress {}; {}; load {}",
                    v.label,
                    show(fig[0]),
                    show(fig[1]),
                    w.note,
                    super::loadavg()
                );
                if let (Some(c), Some(rx)) = (counted, w.rx_packets) {
                    if c != rx {
                        bail!(
                            "{}: counted {c} ingress packets, the interface received {rx}",
                            v.label
                        );
                    }
                }
                figures[i].push(fig);
            }
        }
        Ok(figures)
    })();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let figures = result?;
    println!();
    println!(
        "| {title}: ns per run, median of {rounds} rounds (min-max; runs) | ingress | ingress above the empty program | egress | egress above the empty program |"
    );
    println!("|---|---|---|---|---|");
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    for (v, f) in variants.iter().zip(&figures) {
        let col = |d: usize| {
            let mut ns: Vec<f64> = f.iter().filter_map(|r| r[d]).map(|r| r.ns).collect();
            if ns.is_empty() {
                return "-".to_owned();
            }
            let runs: u64 = f.iter().filter_map(|r| r[d]).map(|r| r.runs).sum();
            ns.sort_by(f64::total_cmp);
            format!(
                "{:.1} ({:.1}-{:.1}; {runs})",
                ns[ns.len() / 2],
                ns[0],
                ns[ns.len() - 1]
            )
        };
        // Paired by round: this variant's figure less the empty program's of the same
        // round, whose conditions (load, caches) it shared most closely.
        let above = |d: usize| {
            let diffs: Vec<f64> = f
                .iter()
                .zip(&figures[0])
                .filter_map(|(a, e)| Some(a[d]?.ns - e[d]?.ns))
                .collect();
            median(diffs).map_or("-".to_owned(), |m| format!("{m:+.1}"))
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            v.label,
            col(0),
            above(0),
            col(1),
            above(1)
        );
    }
    Ok(())
}

/// The variants (the empty program first: the others are compared with it): the empty program, lookup and add only, Kappie's tc programs of this build
/// and of each other forward object given.
pub fn variants(tag: &str, compare: &[PathBuf]) -> anyhow::Result<Vec<Variant>> {
    let dir = |v: &str| {
        PathBuf::from(format!(
            "/sys/fs/bpf/kappie-floor-{}-{tag}-{v}",
            std::process::id()
        ))
    };
    let mut v = vec![
        Variant::floor("empty", "empty program", &dir("empty"))?,
        Variant::floor("count", "lookup + add only", &dir("count"))?,
        Variant::kappie(
            "kappie_tc (this build)",
            kappie_ebpf::forward_object(),
            &dir("kappie"),
        )?,
    ];
    for (i, path) in compare.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        v.push(Variant::kappie(
            &format!("kappie_tc ({})", path.display()),
            &bytes,
            &dir(&format!("compare{i}")),
        )?);
    }
    Ok(v)
}

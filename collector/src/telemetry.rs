//! The collector's self-metrics, typed: gathered once as families (`api::metrics::gather`),
//! rendered in the Prometheus text format for `/metrics`, and written into the collector's
//! own store every `--self-scrape-interval-seconds` with `job="kappie-collector"` and
//! `instance`, so dashboards and the console query them through the same PromQL API as the
//! node metrics (Prometheus does the same when it scrapes itself).

use kappie_storage::{Appender, Labels, Storage};
use std::fmt::Write;
use std::time::Duration;

/// The metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample of a family: `suffix` is `_bucket`, `_sum` or `_count` for histograms.
#[derive(Debug, Clone)]
pub struct Sample {
    pub suffix: &'static str,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family: its name, type, help text and samples.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &str, kind: Kind, help: &str) -> Family {
        Family {
            name: name.into(),
            kind,
            help: help.into(),
            samples: Vec::new(),
        }
    }

    /// Adds a sample with these labels.
    pub fn with(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.push("", labels, value);
        self
    }

    pub fn push(&mut self, suffix: &'static str, labels: &[(&str, &str)], value: f64) {
        self.samples.push(Sample {
            suffix,
            labels: labels
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        });
    }
}

/// A label value as the text format quotes it: `\`, `"` and newline escaped.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The families in the Prometheus text exposition format 0.0.4.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\n', " "));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            out.push_str(&f.name);
            out.push_str(s.suffix);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (n, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{n}=\"{}\"", escape_label_value(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(s.value));
        }
    }
    out
}

/// Writes one scrape of `families` at `t` (ms) into the store, each series labelled with
/// `extra` (job and instance) on top of its own labels.
pub fn write(
    store: &Storage,
    families: &[Family],
    extra: &[(&str, &str)],
    t: i64,
) -> Result<usize, kappie_storage::StorageError> {
    let mut app = store.appender();
    let mut n = 0;
    for f in families {
        for s in &f.samples {
            let name = format!("{}{}", f.name, s.suffix);
            let pairs = std::iter::once(("__name__".to_owned(), name))
                .chain(s.labels.iter().cloned())
                .chain(
                    extra
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
            let labels = Labels::new(pairs)?;
            app.append(&labels, t, s.value)?;
            n += 1;
        }
    }
    app.commit()?;
    Ok(n)
}

/// How the self-scrape runs.
#[derive(Debug, Clone)]
pub struct SelfScrape {
    pub interval: Duration,
    pub instance: String,
}

/// Scrapes the collector into its own store every `cfg.interval` until `stop` fires.
pub fn spawn(
    state: crate::api::ApiState,
    cfg: SelfScrape,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = stop.recv() => break,
                _ = tick.tick() => {}
            }
            let families = crate::api::metrics::gather(&state).await;
            let store = state.store.clone();
            let instance = cfg.instance.clone();
            let t = now_ms();
            let r = tokio::task::spawn_blocking(move || {
                write(
                    &store,
                    &families,
                    &[("job", "kappie-collector"), ("instance", &instance)],
                    t,
                )
            })
            .await;
            match r {
                Ok(Ok(n)) => {
                    warned = false;
                    tracing::debug!(samples = n, "self-scrape written");
                }
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot write the collector's own metrics into its store; /metrics still serves them");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::error!(error = %e, "self-scrape task failed"),
            }
        }
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let mut h = Family::new("q_seconds", Kind::Histogram, "Latency.");
        h.push("_bucket", &[("le", "0.1")], 3.0);
        h.push("_bucket", &[("le", "+Inf")], 4.0);
        h.push("_sum", &[], 0.5);
        h.push("_count", &[], 4.0);
        let fams = [
            Family::new("a_total", Kind::Counter, "Things.").with(&[("x", "a\"b\\c\nd")], 2.0),
            h,
        ];
        assert_eq!(
            render(&fams),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"a\\\"b\\\\c\\nd\"} 2\n\
             # HELP q_seconds Latency.\n# TYPE q_seconds histogram\n\
             q_seconds_bucket{le=\"0.1\"} 3\nq_seconds_bucket{le=\"+Inf\"} 4\n\
             q_seconds_sum 0.5\nq_seconds_count 4\n"
        );
    }
}

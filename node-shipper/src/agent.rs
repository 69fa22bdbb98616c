//! The collection loop: collect from every source each interval, turn counters into
//! deltas, queue the batch, persist, and push to the collector exactly once.

use crate::config::{Config, Dataplane};
use crate::dataplane::{self, Choice};
use crate::push::{Delivered, Identity, PushError, Pusher};
use crate::queue::{Batch, Queue};
use crate::series::{Kind, SeriesKey};
use crate::source::{Observation, Source};
#[cfg(target_os = "linux")]
use crate::sources::cilium::CiliumSource;
#[cfg(target_os = "linux")]
use crate::sources::ebpf::{default_route_interfaces, expand_interfaces, EbpfConfig, EbpfSource};
#[cfg(target_os = "linux")]
use crate::sources::{utility_sources, Roots};
use crate::state::{self, Baselines};
use crate::telemetry::Telemetry;
use anyhow::Context;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Baselines of series unseen for this long are forgotten.
const BASELINE_TTL_MS: i64 = 3600 * 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Turns one collection into a batch.
pub struct Delta {
    pub baselines: Baselines,
    node_name: String,
    cluster: String,
    last_gauges: HashSet<SeriesKey>,
}

impl Delta {
    pub fn new(baselines: Baselines, node_name: &str, cluster: &str) -> Self {
        Delta {
            baselines,
            node_name: node_name.into(),
            cluster: cluster.into(),
            last_gauges: HashSet::new(),
        }
    }

    pub fn key(&self, o: &Observation) -> SeriesKey {
        let mut labels: Vec<(String, String)> = o
            .labels
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect();
        labels.push(("node_name".into(), self.node_name.clone()));
        labels.push(("cluster".into(), self.cluster.clone()));
        SeriesKey::new(o.metric, labels)
    }

    /// Counters become increases over the baseline; gauges that disappeared since the
    /// last collection are marked stale.
    pub fn batch(&mut self, obs: &[Observation], now: i64) -> Batch {
        let mut b = Batch {
            sequence: None,
            timestamp_ms: now,
            counters: Vec::new(),
            gauges: Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut gauges = HashSet::new();
        for o in obs {
            let key = self.key(o);
            if !seen.insert(key.clone()) {
                tracing::debug!(
                    ?key,
                    "series reported twice in one collection; keeping the first"
                );
                continue;
            }
            match o.kind {
                Kind::Counter => {
                    let d = self.baselines.delta(&key, o.value, now);
                    b.counters.push((key, d));
                }
                Kind::Gauge => {
                    gauges.insert(key.clone());
                    b.gauges.push((key, Some(o.value)));
                }
            }
        }
        for gone in self.last_gauges.difference(&gauges) {
            b.gauges.push((gone.clone(), None));
        }
        self.last_gauges = gauges;
        self.baselines.prune(now, BASELINE_TTL_MS);
        b
    }
}

/// The shipper's moving parts.
struct Agent {
    delta: Delta,
    queue: Queue,
    next_seq: u64,
    pusher: Pusher,
    hello_done: bool,
    state_file: std::path::PathBuf,
    boot_id: String,
    /// The sources' checkpoints of the last collection, saved with the baselines.
    checkpoints: BTreeMap<String, String>,
    telemetry: Arc<Telemetry>,
}

impl Agent {
    /// Turns a collection into a batch and queues it: the baselines of counters a source
    /// found restarted are forgotten first, and the sources' checkpoints are taken with the
    /// baselines they belong to.
    fn queue_collection(&mut self, c: Collected) -> Vec<Box<dyn Source>> {
        for metric in &c.restarted {
            self.delta.baselines.forget_metric(metric);
        }
        let b = self.delta.batch(&c.observations, now_ms());
        self.queue.push(b);
        self.checkpoints.extend(c.checkpoints);
        c.sources
    }

    fn report_queue(&self) {
        self.telemetry
            .queue(self.queue.len(), self.queue.approx_bytes());
    }

    fn save(&self) -> Result<(), state::StateError> {
        state::save(
            &self.state_file,
            &self.boot_id,
            self.next_seq,
            &self.delta.baselines,
            &self.checkpoints,
            self.queue.batches().cloned(),
        )
    }

    /// Sends queued batches in order until the queue is empty or a send fails. A batch is
    /// numbered, and the number saved, before its first send.
    async fn send_all(&mut self) -> anyhow::Result<()> {
        if !self.hello_done {
            let last = match self.pusher.hello().await {
                Ok(last) => last,
                Err(e) => {
                    self.telemetry.push_failed();
                    return Err(e.into());
                }
            };
            let dropped = self.queue.drop_applied(last);
            self.report_queue();
            self.next_seq = self.next_seq.max(last + 1);
            self.save()?;
            tracing::info!(
                last_applied = last,
                dropped_applied = dropped,
                next_seq = self.next_seq,
                "session started with collector"
            );
            self.hello_done = true;
        }
        while let Some(front) = self.queue.front_mut() {
            if front.sequence.is_none() {
                front.sequence = Some(self.next_seq);
                self.next_seq += 1;
                self.save()?;
            }
            let front = self.queue.front_mut().expect("checked above").clone();
            match self.pusher.push(&front).await {
                Ok(d) => {
                    if d == Delivered::Duplicate {
                        tracing::info!(sequence = ?front.sequence, "collector had already applied this batch");
                    }
                    self.telemetry.push_acknowledged(front.sequence);
                    self.queue.pop_front();
                    self.report_queue();
                    self.save()?;
                }
                Err(PushError::Rejected(st)) => {
                    tracing::error!(sequence = ?front.sequence, code = ?st.code(), message = st.message(),
                        "collector rejected a batch; dropping it (its counts are lost)");
                    self.telemetry.push_rejected();
                    self.queue.pop_front();
                    self.report_queue();
                    self.save()?;
                }
                Err(e @ PushError::Retry(_)) => {
                    self.telemetry.push_failed();
                    if matches!(&e, PushError::Retry(st) if st.code() == tonic::Code::Unavailable) {
                        // A new connection may reach a restarted collector; say hello again
                        // in case its store was replaced.
                        self.hello_done = false;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

/// What one collection gave.
struct Collected {
    sources: Vec<Box<dyn Source>>,
    observations: Vec<Observation>,
    /// Metrics whose counters a source found restarted ([`Source::restarted_metrics`]).
    restarted: Vec<&'static str>,
    /// [`Source::checkpoint`] by source name.
    checkpoints: BTreeMap<String, String>,
}

/// Runs one collection on a blocking thread, timing each source.
async fn collect(
    mut sources: Vec<Box<dyn Source>>,
    telemetry: &Arc<Telemetry>,
) -> anyhow::Result<Collected> {
    let telemetry = telemetry.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut obs = Vec::new();
        let mut restarted = Vec::new();
        let mut checkpoints = BTreeMap::new();
        for s in sources.iter_mut() {
            let (t0, n0) = (std::time::Instant::now(), obs.len());
            match s.collect(&mut obs) {
                Ok(()) => telemetry.source_ok(s.name()),
                Err(e) => telemetry.source_failed(s.name(), &e),
            }
            restarted.extend(s.restarted_metrics());
            if let Some(c) = s.checkpoint() {
                checkpoints.insert(s.name().to_owned(), c);
            }
            telemetry.source_collected(s.name(), t0.elapsed(), obs.len() - n0);
        }
        telemetry.collected();
        tracing::debug!(
            observations = obs.len(),
            took_us = started.elapsed().as_micros() as u64,
            "collected"
        );
        Collected {
            sources,
            observations: obs,
            restarted,
            checkpoints,
        }
    })
    .await
    .context("collection thread panicked")
}

/// Starts the eBPF source. When it cannot start, or an interface asked for by name is
/// missing, or there is no interface to count forwards on: with `--ebpf-required` that is
/// the error; without, a warning, and the utility sources go on.
///
/// On a Cilium node (`cilium`) only the tc programs are loaded, for the TCP flag counters:
/// attached with tcx, first on the hook, and without reporting `kappie_forward_*` (Cilium's
/// numbers are the forward counts); the drop program is not loaded (Cilium's drop reasons
/// are the drop counts). Without an interface there is nothing to load then.
#[cfg(target_os = "linux")]
fn start_ebpf(config: &Config, cilium: bool) -> anyhow::Result<Option<EbpfSource>> {
    let patterns = if config.ebpf_interfaces.is_empty() {
        default_route_interfaces(&config.proc_root)
    } else {
        config.ebpf_interfaces.clone()
    };
    let interfaces = expand_interfaces(&patterns, &config.sys_root);
    let missing: Vec<&String> = patterns
        .iter()
        .filter(|p| !p.ends_with('*') && !interfaces.contains(p))
        .collect();
    let problem = if !missing.is_empty() {
        Some(format!(
            "interfaces {missing:?} of --ebpf-interfaces do not exist"
        ))
    } else if interfaces.is_empty() {
        Some(format!("no interface for the eBPF forward counters (none carries a default route, or --ebpf-interfaces {patterns:?} matched none)"))
    } else {
        None
    };
    if let Some(problem) = problem {
        if config.ebpf_required {
            anyhow::bail!("eBPF is required (--ebpf-required) but {problem}");
        }
        if interfaces.is_empty() && cilium {
            tracing::warn!("{problem}; no TCP flag counters");
            return Ok(None);
        } else if interfaces.is_empty() {
            tracing::warn!("{problem}; counting drops only");
        } else {
            tracing::warn!("{problem}; counting on {interfaces:?} only");
        }
    }
    let ebpf_config = EbpfConfig {
        drops_tracepoint: false,
        interfaces,
        pin_dir: config.ebpf_pin_dir.clone(),
        drops: !cilium,
        forward: !cilium,
        tcx_only: cilium,
    };
    let off = match cilium {
        true => "kappie_tcp_flag_counters is off",
        false => "kappie_forward_*, kappie_drop_* and kappie_tcp_flag_counters are off",
    };
    match EbpfSource::start(&ebpf_config) {
        Ok(s) => Ok(Some(s)),
        Err(e) if config.ebpf_required => Err(anyhow::anyhow!(
            "eBPF is required (--ebpf-required) but cannot start: {e}"
        )),
        Err(e) => {
            tracing::warn!(error = %e, "eBPF unavailable; {off}, the /proc and sysfs sources go on");
            Ok(None)
        }
    }
}

/// The sources of the Windows dataplane (HNS endpoint and VFP port statistics), less those
/// switched off.
#[cfg(windows)]
fn windows_sources(config: &Config) -> anyhow::Result<Vec<Box<dyn Source>>> {
    Ok(crate::sources::windows::windows_sources()
        .into_iter()
        .filter(|s| !config.disable_sources.iter().any(|d| d == s.name()))
        .collect())
}

/// Resolves `--dataplane` (probing the node for `auto`) and says once which and why.
async fn choose_dataplane(config: &Config, telemetry: &Telemetry) -> anyhow::Result<Choice> {
    let c = config.clone();
    let choice = tokio::task::spawn_blocking(move || dataplane::choose(&c))
        .await
        .context("dataplane detection panicked")??;
    tracing::info!(dataplane = choice.dataplane.name(), reason = choice.reason, detail = %choice.detail, "dataplane chosen");
    telemetry.dataplane(choice.dataplane.name(), choice.reason);
    Ok(choice)
}

/// The dataplane's sources (forward, drop and TCP flag counters) and what the eBPF source
/// attached, if it runs.
type DataplaneSources = (
    Vec<Box<dyn Source>>,
    Option<crate::sources::ebpf::EbpfPrograms>,
);

/// The dataplane's sources: forward, drop and TCP flag counters.
#[cfg_attr(not(target_os = "linux"), allow(unused_mut, unused_variables))]
fn dataplane_sources(config: &Config, choice: &Choice) -> anyhow::Result<DataplaneSources> {
    let enabled = |name: &str| !config.disable_sources.iter().any(|d| d == name);
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let mut programs = None;
    match choice.dataplane {
        #[cfg(not(target_os = "linux"))]
        Dataplane::Linux | Dataplane::Cilium => {
            anyhow::bail!(
                "the {} dataplane needs a Linux build",
                choice.dataplane.name()
            )
        }
        #[cfg(target_os = "linux")]
        Dataplane::Linux | Dataplane::Cilium => {
            let cilium = choice.dataplane == Dataplane::Cilium;
            if cilium && enabled("cilium") {
                sources.push(Box::new(CiliumSource::new(
                    &config.cilium_metrics_url,
                    &dataplane::bpffs_root(config),
                )));
            }
            if enabled("ebpf") {
                if let Some(s) = start_ebpf(config, cilium)? {
                    programs = Some(s.programs());
                    sources.push(Box::new(s));
                }
            }
        }
        #[cfg(windows)]
        Dataplane::Windows => sources.extend(windows_sources(config)?),
        #[cfg(not(windows))]
        Dataplane::Windows => anyhow::bail!("the Windows dataplane needs a Windows build"),
        Dataplane::Auto => unreachable!("dataplane::choose resolves auto"),
    }
    Ok((sources, programs))
}

/// Binds `--http-listen` (unless it is empty) and serves the shipper's own endpoints until
/// `stop` fires.
async fn start_http(
    config: &Config,
    telemetry: &Arc<Telemetry>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.http_listen.is_empty() {
        tracing::info!("--http-listen is empty: no /metrics, /-/healthy or /-/ready");
        return Ok(None);
    }
    let listener = crate::http::bind(&config.http_listen).await?;
    let addr = listener
        .local_addr()
        .context("address of the HTTP listener")?;
    tracing::info!(http_listen = %addr, "serving /metrics, /-/healthy and /-/ready");
    let mut stop = stop;
    Ok(Some(tokio::spawn(crate::http::serve(
        listener,
        crate::http::router(telemetry.clone()),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ))))
}

/// Runs the shipper until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let telemetry = Arc::new(Telemetry::new(
        config.interval,
        &config.node_name,
        &config.cluster,
    ));
    let (stop_http, stop_rx) = tokio::sync::watch::channel(false);
    let http = start_http(&config, &telemetry, stop_rx).await?;
    let result = run_loop(config, shutdown, &telemetry).await;
    telemetry.loop_stopped();
    let _ = stop_http.send(true);
    if let Some(h) = http {
        let _ = h.await;
    }
    result
}

async fn run_loop(
    config: Config,
    shutdown: impl Future<Output = ()>,
    telemetry: &Arc<Telemetry>,
) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    let roots = Roots {
        proc: config.proc_root.clone(),
        sys: config.sys_root.clone(),
    };
    #[cfg(target_os = "linux")]
    let mut sources: Vec<Box<dyn Source>> = utility_sources(&roots, config.top_remotes)
        .into_iter()
        .filter(|s| !config.disable_sources.iter().any(|d| d == s.name()))
        .collect();
    #[cfg(not(target_os = "linux"))]
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let choice = choose_dataplane(&config, telemetry).await?;
    let (dataplane, ebpf_programs) = dataplane_sources(&config, &choice)?;
    sources.extend(dataplane);
    if !config.disable_sources.iter().any(|d| d == "self") {
        // Last, so its figures cover this collection's other sources.
        sources.push(Box::new(crate::sources::selfmetrics::SelfMetrics::new(
            telemetry.clone(),
        )));
    }
    let names: Vec<&'static str> = sources.iter().map(|s| s.name()).collect();
    tracing::info!(sources = ?names, "sources enabled");
    telemetry.sources(&names, ebpf_programs);

    let boot_id =
        state::read_boot_id(&config.proc_root).context("cannot read the kernel boot id")?;
    if let Some(dir) = config
        .state_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
    }
    let loaded = state::load(&config.state_file)?;
    let unusable = matches!(loaded, state::Loaded::Unusable);
    let (baselines, next_seq, pending, checkpoints) = match loaded {
        state::Loaded::State(p) => {
            // A source's checkpoint judges the baselines it was saved with: after a reboot
            // there are none to judge.
            let checkpoints = match p.boot_id == boot_id {
                true => p.sources.clone(),
                false => BTreeMap::new(),
            };
            (
                p.baselines_for_boot(&boot_id),
                p.next_sequence.max(1),
                p.pending,
                checkpoints,
            )
        }
        _ => (Baselines::default(), 1, Vec::new(), BTreeMap::new()),
    };
    for s in sources.iter_mut() {
        if let Some(c) = checkpoints.get(s.name()) {
            s.restore(c);
        }
    }
    tracing::info!(state_file = %config.state_file.display(), pending = pending.len(), next_seq, "state loaded");
    let identity = Identity {
        shipper_id: config.shipper_id.clone(),
        node_name: config.node_name.clone(),
        cluster: config.cluster.clone(),
        session: rand::random::<u64>() | 1,
    };
    let ca = match &config.collector_ca_file {
        Some(p) => Some(
            std::fs::read(p)
                .with_context(|| format!("cannot read the collector CA file {}", p.display()))?,
        ),
        None => None,
    };
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let client = match (&config.client_cert_file, &config.client_key_file) {
        (Some(c), Some(k)) => Some((read(c, "client certificate")?, read(k, "client key")?)),
        (None, None) => None,
        _ => anyhow::bail!("--client-cert-file and --client-key-file are set together"),
    };
    let pusher = Pusher::new(
        &config.collector,
        identity,
        Duration::from_secs(30),
        ca.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .with_context(|| format!("invalid collector address {:?}", config.collector))?
    .with_token_file(config.collector_token_file.as_deref())?;
    let mut agent = Agent {
        delta: Delta::new(baselines, &config.node_name, &config.cluster),
        queue: Queue::new(config.queue_max_bytes, pending),
        next_seq,
        pusher,
        hello_done: false,
        state_file: config.state_file.clone(),
        boot_id,
        checkpoints,
        telemetry: telemetry.clone(),
    };
    agent.report_queue();
    let mut sources = sources;
    if unusable {
        // The collector may already hold totals up to our last push: sending counts since
        // boot again would count them twice. This collection becomes the baseline; what
        // happened between the last acknowledged push and now is lost instead.
        let c = collect(sources, telemetry).await?;
        for metric in &c.restarted {
            agent.delta.baselines.forget_metric(metric);
        }
        let _ = agent.delta.batch(&c.observations, now_ms());
        agent.checkpoints.extend(c.checkpoints);
        sources = c.sources;
        tracing::error!(
            "without a usable state file the counts between the last acknowledged push and now are lost (not counted twice)"
        );
    }
    let mut backoff = Backoff::new(config.max_backoff);
    let mut sources = Some(sources);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<Instant> = None;
    tokio::pin!(shutdown);
    telemetry.loop_started();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                let c = collect(sources.take().expect("returned after every collection"), telemetry).await?;
                sources = Some(agent.queue_collection(c));
                agent.report_queue();
                agent.save()?;
                retry_at.get_or_insert_with(Instant::now);
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                retry_at = None;
                match agent.send_all().await {
                    Ok(()) => backoff.reset(),
                    Err(e) => {
                        let asked = match e.downcast_ref::<PushError>() {
                            Some(PushError::Retry(st)) => crate::push::retry_after(st),
                            _ => None,
                        };
                        // A rate-limited push waits as long as the collector asked, and does
                        // not grow the backoff: the collector is up, only busy with us.
                        let wait = match asked {
                            Some(d) => d.mul_f64(1.0 + rand::random::<f64>() * 0.1),
                            None => backoff.next(),
                        };
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, queued = agent.queue.len(), "push failed; will retry");
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
        }
    }
    agent.save()?;
    for s in sources.take().into_iter().flatten() {
        s.shutdown();
    }
    tracing::info!(queued = agent.queue.len(), "shipper stopped; state saved");
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Capped exponential backoff with jitter.
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            current: Duration::from_millis(250),
            max,
        }
    }
    fn reset(&mut self) {
        self.current = Duration::from_millis(250);
    }
    fn next(&mut self) -> Duration {
        let base = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.4 + 0.8;
        base.mul_f64(jitter)
    }
}

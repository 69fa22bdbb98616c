//! gRPC ingest: applies node shipper batches exactly once.
//!
//! Per shipper the collector remembers the last sequence it applied (`seq/…`), the series
//! definitions of the shipper's current session (`def/…`) and, per counter series, the
//! running total (`tot/…`, written only when it changed). All three are written through the
//! storage [`Appender`] in the same atomic, fsynced write as the batch's samples, so a batch
//! is either wholly applied and remembered or not at all, and the acknowledgement is only
//! sent after that write (the store keeps them in its log and memory and writes them to sled
//! only before the log loses them, see `storage/docs/format.md`).
//! Key layouts are in `storage/docs/format.md`. The same commit also carries the
//! shipper's inventory record ([`crate::shippers`]).

use crate::shipper_auth::ShipperAuth;
use crate::shippers::{record_key, sequence_key as seq_key, Inventory};
use kappie_proto::ingest_server::Ingest;
use kappie_proto::{
    HelloRequest, HelloResponse, MetricType, PushRequest, PushResponse, PushStatus,
};
use kappie_storage::{Appender, Labels, MetaBytes, Storage, StorageError, STALE_NAN_BITS};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// gRPC metadata key set on the FAILED_PRECONDITION status that asks a shipper to send the
/// definitions of the listed references again.
pub const DEFINE_SERIES_METADATA: &str = "kappie-define-series";

/// Ingest limits.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_series_per_shipper: usize,
    pub max_future_skew_ms: i64,
    pub labels: crate::limits::LabelLimits,
    /// Calls applied at once in the blocking pool (`--ingest-max-concurrency`); the rest
    /// wait as parked tasks. Calls that waited in the pool for a lock each held a thread
    /// (cluster-sim N = 1,000 grew it to 512 threads once, issue 15), so they wait here.
    pub max_concurrency: usize,
}

/// The tonic service.
#[derive(Clone)]
pub struct IngestService {
    core: Arc<Core>,
    /// Calls let into the blocking pool ([`IngestLimits::max_concurrency`]); the rest wait
    /// here as parked tasks, first come first served.
    turn: Arc<tokio::sync::Semaphore>,
    auth: ShipperAuth,
    rate: Option<Arc<crate::limits::ShipperRateLimit>>,
}

/// A series definition of a session: only the encoded label set, one allocation shared
/// with the store's head, the counter-totals cache and the pending `def/` and `tot/`
/// entries (the decoded form was most of the collector's memory per series; the store
/// decodes it once, when it creates the series). The encoding is canonical, so two
/// definitions have the same labels exactly when their encodings are equal.
struct Def {
    kind: MetricType,
    enc: Arc<[u8]>,
}

impl Def {
    fn new(kind: MetricType, labels: &Labels) -> Def {
        Def {
            kind,
            enc: Arc::from(labels.encode()),
        }
    }
}

/// What the calls of all shippers share. Each shipper's calls run one at a time under its
/// own lock ([`Shipper`]), different shippers' side by side, so that their commits share
/// the store's log fsync (group commit); counter totals, which two shippers could share if
/// they define the same label set, are claimed per label set ([`Totals`]).
struct Core {
    store: Storage,
    limits: IngestLimits,
    /// Each shipper's state, behind its own lock.
    shippers: Mutex<HashMap<String, Arc<Mutex<Shipper>>>>,
    totals: Totals,
    /// What the API lists (its own lock).
    inventory: Arc<Inventory>,
}

/// One shipper's state: the definitions of its current session, once loaded.
#[derive(Default)]
struct Shipper {
    session: Option<(u64, HashMap<u32, Def>)>,
}

/// Counter totals by encoded label set: the `tot/` keys of every counter pushed since the
/// start, and which label sets a push is applying.
///
/// A push reads each of its counters' totals, adds its deltas and commits; two pushes that
/// did this for the same label set at once would both start from the same total and one
/// increase would be lost. So a push claims all its counters' label sets at once before it
/// reads them, and gives them back after its commit; a push that finds one of them claimed
/// waits until it is given back. Claiming all or nothing means no two pushes can hold part
/// of what each other needs. In practice label sets carry their node's name and no two
/// shippers share one, so nobody waits.
///
/// One table holds both, found by a hash computed once per label set and push, outside the
/// lock; a push's label sets are its session's definitions, the same allocations as the
/// table's keys, so equal pointers spare comparing the bytes. (Two maps, hashed four times
/// per counter and push, and totals that stood still read from the store each push, were
/// a quarter of the collector's CPU at the gRPC ceiling.)
#[derive(Default)]
struct Totals {
    state: Mutex<hashbrown::HashTable<Total>>,
    given_back: Condvar,
    hasher: foldhash::fast::RandomState,
}

/// A counter's label set, its stored total and whether a push holds it.
struct Total {
    set: Arc<[u8]>,
    total: f64,
    claimed: bool,
}

impl Total {
    fn is(&self, set: &Arc<[u8]>) -> bool {
        Arc::ptr_eq(&self.set, set) || self.set == *set
    }
}

impl Totals {
    fn lock(&self) -> MutexGuard<'_, hashbrown::HashTable<Total>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hash(&self, set: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(set)
    }

    /// Claims `sets` (distinct) for the caller, waiting while another push holds any of
    /// them, and returns their totals (from the table or `store`, absent meaning 0).
    fn claim<'a>(&'a self, store: &Storage, sets: &'a [Arc<[u8]>]) -> Result<Claim<'a>, Status> {
        let hashes: Vec<u64> = sets.iter().map(|s| self.hash(s)).collect();
        let mut st = self.lock();
        while sets
            .iter()
            .zip(&hashes)
            .any(|(s, &h)| st.find(h, |e| e.is(s)).is_some_and(|e| e.claimed))
        {
            st = self.given_back.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // Totals not seen since the start come from the store, before anything is claimed
        // (a failed read claims nothing).
        let mut missing = Vec::new();
        for (i, (s, &h)) in sets.iter().zip(&hashes).enumerate() {
            if st.find(h, |e| e.is(s)).is_none() {
                missing.push((i, stored_total(store, s)?));
            }
        }
        for (i, total) in missing {
            let set = sets[i].clone();
            let claimed = false;
            st.insert_unique(
                hashes[i],
                Total {
                    set,
                    total,
                    claimed,
                },
                |e| self.hash(&e.set),
            );
        }
        let mut values = Vec::with_capacity(sets.len());
        for (s, &h) in sets.iter().zip(&hashes) {
            let e = st.find_mut(h, |e| e.is(s)).expect("inserted above");
            e.claimed = true;
            values.push(e.total);
        }
        Ok(Claim {
            totals: self,
            sets,
            hashes,
            values,
        })
    }
}

/// Label sets claimed by one push, given back when dropped (committed or not).
struct Claim<'a> {
    totals: &'a Totals,
    sets: &'a [Arc<[u8]>],
    hashes: Vec<u64>,
    /// Their totals when claimed, in the order of `sets`.
    values: Vec<f64>,
}

impl Claim<'_> {
    /// After the commit: the new totals of the sets whose total changed, by their index
    /// in the claimed sets.
    fn committed(self, changed: impl IntoIterator<Item = (usize, f64)>) {
        let mut st = self.totals.lock();
        for (i, total) in changed {
            let s = &self.sets[i];
            if let Some(e) = st.find_mut(self.hashes[i], |e| e.is(s)) {
                e.total = total;
            }
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut st = self.totals.lock();
        for (s, &h) in self.sets.iter().zip(&self.hashes) {
            if let Some(e) = st.find_mut(h, |e| e.is(s)) {
                e.claimed = false;
            }
        }
        drop(st);
        self.totals.given_back.notify_all();
    }
}

fn stored_total(store: &Storage, enc: &[u8]) -> Result<f64, Status> {
    match store.meta(&tot_key(enc)).map_err(storage_status)? {
        None => Ok(0.0),
        Some(b) => Ok(f64::from_bits(u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| Status::data_loss("stored counter total is corrupt"))?,
        ))),
    }
}

impl IngestService {
    /// The service over `store`, keeping `inventory` (loaded from the same store) current;
    /// with `auth` on, shippers write only as the node their credentials name.
    pub fn new(
        store: Storage,
        limits: IngestLimits,
        inventory: Arc<Inventory>,
        auth: ShipperAuth,
    ) -> Self {
        IngestService {
            auth,
            rate: None,
            turn: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrency.max(1))),
            core: Arc::new(Core {
                store,
                limits,
                shippers: Mutex::new(HashMap::new()),
                totals: Totals::default(),
                inventory,
            }),
        }
    }

    /// Limits the samples per second each shipper may push (`None`: no limit).
    pub fn with_rate_limit(mut self, rate: Option<crate::limits::ShipperRateLimit>) -> Self {
        self.rate = rate.map(Arc::new);
        self
    }

    /// Runs `f` in the blocking pool with `shipper`'s state locked.
    async fn run<T: Send + 'static>(
        &self,
        shipper: String,
        f: impl FnOnce(&Core, &str, &mut Shipper) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        self.run_replying(shipper, move |core, shipper, state, _| {
            f(core, shipper, state)
        })
        .await
    }

    /// [`Self::run`] where `f` may answer before it returns, through its [`Reply`] (the
    /// caller gets the first answer; `f`'s result when there was none).
    async fn run_replying<T: Send + 'static>(
        &self,
        shipper: String,
        f: impl FnOnce(&Core, &str, &mut Shipper, &mut Reply<T>) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let core = self.core.clone();
        let turn = self
            .turn
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Status::internal(format!("ingest queue closed: {e}")))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let state = core
                .shippers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(shipper.clone())
                .or_default()
                .clone();
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            let mut reply = Reply(Some(tx));
            let r = f(&core, &shipper, &mut guard, &mut reply);
            reply.send(r);
        });
        rx.await
            .map_err(|_| Status::internal("ingest worker failed (see the collector's log)"))?
    }
}

/// Where a blocking ingest job sends its answer, once.
struct Reply<T>(Option<tokio::sync::oneshot::Sender<Result<T, Status>>>);

impl<T> Reply<T> {
    fn send(&mut self, r: Result<T, Status>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(r);
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let caller = self.auth.caller(&req).await?;
        caller.authorize(&req.get_ref().shipper_id, "shipper id")?;
        caller.authorize(&req.get_ref().node_name, "node name")?;
        let req = req.into_inner();
        validate_shipper_id(&req.shipper_id)?;
        let shipper = req.shipper_id.clone();
        let last = self
            .run(shipper, move |core, _, _| core.hello(&req))
            .await?;
        Ok(Response::new(HelloResponse {
            last_applied_sequence: last,
        }))
    }

    async fn push(&self, req: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let caller = self.auth.caller(&req).await?;
        caller.authorize(&req.get_ref().shipper_id, "shipper id")?;
        for d in &req.get_ref().definitions {
            let node = d
                .labels
                .iter()
                .find(|l| l.name == "node_name")
                .map_or("", |l| l.value.as_str());
            caller.authorize(node, "node_name label")?;
        }
        let req = req.into_inner();
        validate_shipper_id(&req.shipper_id)?;
        if let Some(rate) = &self.rate {
            let samples = req.deltas.len() + req.gauges.len();
            if let Err(wait) = rate.check(&req.shipper_id, samples) {
                let ms = (wait.as_millis() as u64).max(1);
                tracing::warn!(shipper = %req.shipper_id, sequence = req.sequence, samples,
                    retry_after_ms = ms, "push refused: the shipper is over its rate limit");
                let mut st = Status::resource_exhausted(format!(
                    "shipper {} sends more than {} samples per second (--max-samples-per-shipper-per-second); retry this batch in {ms} ms",
                    req.shipper_id, rate.per_second
                ));
                st.metadata_mut()
                    .insert(crate::limits::RETRY_AFTER_MS_METADATA, ms.into());
                return Err(st);
            }
        }
        let shipper = req.shipper_id.clone();
        let resp = self
            .run_replying(shipper, move |core, _, state, reply| {
                core.push(state, req, reply)
            })
            .await?;
        Ok(Response::new(resp))
    }
}

fn validate_shipper_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 253 {
        return Err(Status::invalid_argument(
            "shipper_id must be 1 to 253 bytes (the node name by default)",
        ));
    }
    Ok(())
}

fn storage_status(e: StorageError) -> Status {
    tracing::error!(error = %e, "store write failed");
    Status::unavailable(format!("store unavailable: {e}; retry later"))
}

fn def_prefix(shipper: &str) -> Vec<u8> {
    let mut k = b"def/".to_vec();
    k.extend_from_slice(&(shipper.len() as u16).to_be_bytes());
    k.extend_from_slice(shipper.as_bytes());
    k
}

fn def_key(shipper: &str, session: u64, r: u32) -> Vec<u8> {
    let mut k = def_prefix(shipper);
    k.extend_from_slice(&session.to_be_bytes());
    k.extend_from_slice(&r.to_be_bytes());
    k
}

const TOT_PREFIX: &[u8] = b"tot/";

fn tot_key(enc: &[u8]) -> Vec<u8> {
    [TOT_PREFIX, enc].concat()
}

/// `kind u8 ++ labels`, sharing the definition's labels.
fn encode_def(d: &Def) -> MetaBytes {
    MetaBytes::shared(&[d.kind as i32 as u8], &d.enc)
}

fn decode_def(b: &[u8]) -> Result<Def, Status> {
    let corrupt =
        |what: &str| Status::data_loss(format!("stored series definition is corrupt: {what}"));
    let (&kind, rest) = b.split_first().ok_or_else(|| corrupt("empty"))?;
    let kind = MetricType::try_from(kind as i32).map_err(|_| corrupt("metric type"))?;
    // Checked once here, so a corrupt stored set is refused at load, not when the store
    // would create its series.
    Labels::decode(rest).map_err(|e| corrupt(&e.to_string()))?;
    Ok(Def {
        kind,
        enc: Arc::from(rest),
    })
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_' || x == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Core {
    fn last_applied(&self, shipper: &str) -> Result<u64, Status> {
        match self.store.meta(&seq_key(shipper)).map_err(storage_status)? {
            None => Ok(0),
            Some(b) => {
                let a: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| Status::data_loss("stored sequence number is corrupt"))?;
                Ok(u64::from_be_bytes(a))
            }
        }
    }

    fn hello(&self, req: &HelloRequest) -> Result<u64, Status> {
        let max = self.limits.labels.max_value_bytes;
        for (what, v) in [
            ("node_name", &req.node_name),
            ("cluster", &req.cluster),
            ("version", &req.version),
        ] {
            if v.len() > max {
                return Err(Status::invalid_argument(format!(
                    "{what} of {} bytes, more than the limit of {max} (--max-label-value-bytes)",
                    v.len()
                )));
            }
        }
        let last = self.last_applied(&req.shipper_id)?;
        tracing::info!(shipper = %req.shipper_id, session = req.session, node = %req.node_name,
            version = %req.version, last_applied = last, "shipper session started");
        let record = self.inventory.hello(
            &req.shipper_id,
            req.session,
            &req.node_name,
            &req.cluster,
            &req.version,
            now_ms(),
        );
        // The inventory must not stop ingest: the next applied batch writes the record
        // again, and a store that cannot take this write refuses that batch anyway.
        let mut app = self.store.appender();
        app.set_meta(&record_key(&req.shipper_id), &record.encode());
        if let Err(e) = app.commit() {
            tracing::warn!(shipper = %req.shipper_id, error = %e,
                "cannot store the shipper's inventory record; it is written with its next batch");
        }
        Ok(last)
    }

    /// The definitions of `shipper`'s `session`, loaded from the store unless `state`
    /// holds them.
    fn session_defs<'s>(
        &self,
        state: &'s mut Shipper,
        shipper: &str,
        session: u64,
    ) -> Result<&'s mut HashMap<u32, Def>, Status> {
        let loaded = matches!(&state.session, Some((s, _)) if *s == session);
        if !loaded {
            let mut prefix = def_prefix(shipper);
            prefix.extend_from_slice(&session.to_be_bytes());
            let mut defs = HashMap::new();
            for (k, v) in self
                .store
                .meta_scan_prefix(&prefix)
                .map_err(storage_status)?
            {
                let r: [u8; 4] = k[k.len() - 4..]
                    .try_into()
                    .map_err(|_| Status::data_loss("stored definition key is corrupt"))?;
                defs.insert(u32::from_be_bytes(r), decode_def(&v)?);
            }
            state.session = Some((session, defs));
        }
        Ok(&mut state.session.as_mut().expect("set above").1)
    }

    /// Applies a batch; the answer goes to `reply` as soon as the commit is durable (its
    /// ingest state readable; queries started after it wait for its samples), while this
    /// thread goes on to apply it and stage the chunks it cut (see
    /// `StorageAppender::commit_then`).
    fn push(
        &self,
        state: &mut Shipper,
        req: PushRequest,
        reply: &mut Reply<PushResponse>,
    ) -> Result<PushResponse, Status> {
        if req.sequence == 0 {
            return Err(Status::invalid_argument("sequence must start at 1"));
        }
        let max_ts = now_ms() + self.limits.max_future_skew_ms;
        if req.timestamp_ms <= 0 || req.timestamp_ms > max_ts {
            return Err(Status::out_of_range(format!(
                "timestamp_ms {} is not between the epoch and {} (the collector's clock plus the allowed skew); check the node's clock",
                req.timestamp_ms, max_ts
            )));
        }
        let shipper = req.shipper_id.as_str();
        let last = self.last_applied(shipper)?;
        if req.sequence <= last {
            tracing::debug!(%shipper, sequence = req.sequence, last, "duplicate batch ignored");
            return Ok(PushResponse {
                status: PushStatus::Duplicate as i32,
                last_applied_sequence: last,
            });
        }
        let new_session = !matches!(&state.session, Some((s, _)) if *s == req.session);
        let defs = self.session_defs(state, shipper, req.session)?;
        let plan = plan_batch(
            &req,
            defs,
            self.limits.max_series_per_shipper,
            &self.limits.labels,
        )?;

        let mut app = self.store.appender();
        if new_session {
            // Definitions of the shipper's earlier sessions are never used again.
            for (k, _) in self
                .store
                .meta_scan_prefix(&def_prefix(shipper))
                .map_err(storage_status)?
            {
                let session_of_key = k.len().checked_sub(12).map(|i| &k[i..i + 8]);
                if session_of_key != Some(&req.session.to_be_bytes()[..]) {
                    app.remove_meta(&k);
                }
            }
        }
        for (r, def) in &plan.new_defs {
            app.set_meta_bytes(
                MetaBytes::new(&def_key(shipper, req.session, *r)),
                encode_def(def),
            );
        }
        app.reserve(plan.counters.len() + plan.gauges.len());
        let claim = self.totals.claim(&self.store, &plan.counter_sets)?;
        let mut changed = Vec::with_capacity(plan.counter_sets.len());
        for (i, ((enc, delta), before)) in plan
            .counter_sets
            .iter()
            .zip(&plan.counters)
            .zip(&claim.values)
            .enumerate()
        {
            let total = before + delta;
            app.append_shared(enc, req.timestamp_ms, total)
                .map_err(storage_status)?;
            // An unchanged total is already stored (or absent, meaning 0): many counters
            // stand still between pushes, and each write is log and sled bytes.
            if *delta != 0.0 {
                app.set_meta_bytes(
                    MetaBytes::shared(TOT_PREFIX, enc),
                    MetaBytes::new(&total.to_bits().to_be_bytes()),
                );
                changed.push((i, total));
            }
        }
        for (enc, v) in &plan.gauges {
            app.append_shared(enc, req.timestamp_ms, *v)
                .map_err(storage_status)?;
        }
        app.set_meta(&seq_key(shipper), &req.sequence.to_be_bytes());
        let applied_ms = now_ms();
        let record = self
            .inventory
            .record_after_push(shipper, req.session, applied_ms);
        app.set_meta(&record_key(shipper), &record.encode());
        let mut out = Err(Status::internal("the commit gave no outcome"));
        app.commit_then(|r| {
            out = r.map_err(storage_status).map(|report| {
                claim.committed(changed);
                let defs = &mut state.session.as_mut().expect("loaded above").1;
                defs.extend(plan.new_defs);
                self.inventory.applied(
                    shipper,
                    record,
                    req.sequence,
                    defs.len(),
                    report.appended as u64,
                    applied_ms,
                );
                PushResponse {
                    status: PushStatus::Applied as i32,
                    last_applied_sequence: req.sequence,
                }
            });
            reply.send(out.clone());
        });
        out
    }
}

/// What a valid batch writes: new definitions, counter increases and gauge values by
/// series.
struct Plan {
    new_defs: HashMap<u32, Def>,
    /// The counters' label sets, each once, and their summed increases, in the same order.
    counter_sets: Vec<Arc<[u8]>>,
    counters: Vec<f64>,
    gauges: Vec<(Arc<[u8]>, f64)>,
}

/// Validates a batch against the session's definitions without changing anything.
fn plan_batch(
    req: &PushRequest,
    defs: &HashMap<u32, Def>,
    max_series: usize,
    label_limits: &crate::limits::LabelLimits,
) -> Result<Plan, Status> {
    let mut new_defs: HashMap<u32, Def> = HashMap::new();
    for d in &req.definitions {
        let (kind, labels) = validate_definition(d)?;
        label_limits
            .check(&labels)
            .map_err(|e| Status::invalid_argument(format!("series {}: {e}", d.r#ref)))?;
        let def = Def::new(kind, &labels);
        match defs.get(&d.r#ref).or_else(|| new_defs.get(&d.r#ref)) {
            Some(old) if old.kind != def.kind || old.enc != def.enc => {
                return Err(Status::invalid_argument(format!(
                    "series {} is already defined differently in session {}",
                    d.r#ref, req.session
                )));
            }
            Some(_) => {}
            None => {
                new_defs.insert(d.r#ref, def);
            }
        }
    }
    if defs.len() + new_defs.len() > max_series {
        return Err(Status::resource_exhausted(format!(
            "shipper {} would have {} series, over the limit of {max_series} (--max-series-per-shipper)",
            req.shipper_id,
            defs.len() + new_defs.len()
        )));
    }
    let lookup = |r: u32| defs.get(&r).or_else(|| new_defs.get(&r));
    let mut unknown: Vec<u32> = req
        .deltas
        .iter()
        .map(|d| d.r#ref)
        .chain(req.gauges.iter().map(|g| g.r#ref))
        .filter(|r| lookup(*r).is_none())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let list = unknown
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut st = Status::failed_precondition(format!(
            "batch {} references series {list} that session {} has not defined; send their definitions again",
            req.sequence, req.session
        ));
        if let Ok(v) = list.parse() {
            st.metadata_mut().insert(DEFINE_SERIES_METADATA, v);
        }
        return Err(st);
    }
    // Deltas of one series summed (of one label set: two references may define the same
    // one), in the order the batch names the series.
    let mut counter_sets: Vec<Arc<[u8]>> = Vec::with_capacity(req.deltas.len());
    let mut counters: Vec<f64> = Vec::with_capacity(req.deltas.len());
    let mut slot: HashMap<&[u8], usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(req.deltas.len(), Default::default());
    for d in &req.deltas {
        let def = lookup(d.r#ref)
            .filter(|x| x.kind == MetricType::Counter)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "series {} is a gauge but got a counter delta",
                    d.r#ref
                ))
            })?;
        if !d.delta.is_finite() || d.delta < 0.0 {
            return Err(Status::invalid_argument(format!(
                "series {}: counter delta {} must be finite and not negative",
                d.r#ref, d.delta
            )));
        }
        match slot.entry(&def.enc[..]) {
            std::collections::hash_map::Entry::Occupied(e) => counters[*e.get()] += d.delta,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(counters.len());
                counter_sets.push(def.enc.clone());
                counters.push(d.delta);
            }
        }
    }
    let mut gauges = Vec::with_capacity(req.gauges.len());
    for g in &req.gauges {
        let def = lookup(g.r#ref)
            .filter(|x| x.kind == MetricType::Gauge)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "series {} is a counter but got a gauge value",
                    g.r#ref
                ))
            })?;
        let v = if g.stale {
            f64::from_bits(STALE_NAN_BITS)
        } else {
            g.value
        };
        gauges.push((def.enc.clone(), v));
    }
    Ok(Plan {
        new_defs,
        counter_sets,
        counters,
        gauges,
    })
}

fn validate_definition(d: &kappie_proto::SeriesDefinition) -> Result<(MetricType, Labels), Status> {
    let kind = MetricType::try_from(d.r#type)
        .ok()
        .filter(|k| *k != MetricType::Unspecified)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "series {}: metric type must be COUNTER or GAUGE",
                d.r#ref
            ))
        })?;
    if !valid_metric_name(&d.metric) {
        return Err(Status::invalid_argument(format!(
            "series {}: invalid metric name {:?}",
            d.r#ref, d.metric
        )));
    }
    if d.labels.iter().any(|l| l.name.starts_with("__")) {
        return Err(Status::invalid_argument(format!(
            "series {}: label names starting with __ are reserved",
            d.r#ref
        )));
    }
    let labels = Labels::new(
        std::iter::once(("__name__".to_owned(), d.metric.clone()))
            .chain(d.labels.iter().map(|l| (l.name.clone(), l.value.clone()))),
    )
    .map_err(|e| Status::invalid_argument(format!("series {}: {e}", d.r#ref)))?;
    Ok((kind, labels))
}

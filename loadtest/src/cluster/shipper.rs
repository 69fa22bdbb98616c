//! One simulated shipper: a collection schedule and a sender, speaking the real protocol
//! the way `node-shipper/src/{agent,push}.rs` does.
//!
//! - Hello once per session (a random session id per shipper, the node name as shipper id)
//!   and again after an UNAVAILABLE answer; batches the Hello says are applied leave the
//!   queue.
//! - A batch gets its sequence number right before its first send and keeps it (and its
//!   contents) until acknowledged: exactly once. DUPLICATE counts as acknowledged.
//! - The first batch of a session carries every series definition; FAILED_PRECONDITION
//!   with `kappie-define-series` sends the batch again with them, once.
//! - INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, PERMISSION_DENIED drop the batch
//!   (its counts are lost, as the real shipper loses them); any other error is retried
//!   after a capped exponential backoff (250 ms doubling to `max_backoff`, ×0.8–1.2).
//! - Unsent batches past `max_queued` are merged (deltas add, the newest gauge wins), as
//!   the real queue does past its byte budget.
//!
//! The schedule runs apart from the sender ([`generate`] and [`Sender::run`] are two
//! tasks joined by a channel), so a slow collector shows as lag and a growing queue, not
//! as a schedule that slips.

use super::node::{Layout, Node};
use super::record::{Ack, Failure, Recorder, Recovery};
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::{CounterDelta, GaugeValue, HelloRequest, PushRequest, PushStatus};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;

/// The collector's "define these series again" metadata key.
pub use kappie_node_shipper::push::DEFINE_SERIES_METADATA;

/// One collection's readings.
pub struct Batch {
    /// When the collection was due (the earliest, for merged batches).
    pub scheduled: Instant,
    pub timestamp_ms: i64,
    pub deltas: Vec<CounterDelta>,
    pub gauges: Vec<GaugeValue>,
    pub sequence: Option<u64>,
    /// Generated batches this one stands for (more than 1 after merging).
    pub count: u32,
}

impl Batch {
    fn samples(&self) -> usize {
        self.deltas.len() + self.gauges.len()
    }

    /// Adds `later` (every batch of a node carries the same series in the same order).
    fn absorb(&mut self, later: Batch) {
        for (d, l) in self.deltas.iter_mut().zip(&later.deltas) {
            debug_assert_eq!(d.r#ref, l.r#ref);
            d.delta += l.delta;
        }
        self.gauges = later.gauges;
        self.timestamp_ms = later.timestamp_ms;
        self.count += later.count;
    }
}

/// Runs node `node`'s collections every `interval` from `first` on until `stop`, sending
/// each batch to its sender; returns the node (its totals are what was sent).
pub async fn generate(
    mut node: Node,
    first: Instant,
    interval: Duration,
    tx: mpsc::UnboundedSender<Batch>,
    mut stop: watch::Receiver<bool>,
    rec: Arc<Recorder>,
) -> Node {
    let mut tick = tokio::time::interval_at(first, interval);
    // A late tick keeps its due time: lag counts from the schedule.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let n = node.series();
    loop {
        let due = tokio::select! {
            t = tick.tick() => t,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (mut deltas, mut gauges) = (Vec::with_capacity(n), Vec::new());
        node.step(interval.as_secs_f64(), &mut deltas, &mut gauges);
        let b = Batch {
            scheduled: due,
            timestamp_ms: crate::now_ms(),
            deltas,
            gauges,
            sequence: None,
            count: 1,
        };
        rec.generated(b.samples(), b.timestamp_ms);
        if tx.send(b).is_err() {
            break;
        }
    }
    node
}

/// Capped exponential backoff with jitter, as the real shipper's.
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(250);

    fn next(&mut self) -> Duration {
        let base = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(rand::random::<f64>() * 0.4 + 0.8)
    }
}

/// The sending half of a shipper.
pub struct Sender {
    pub index: u32,
    pub client: IngestClient<Channel>,
    pub layout: Arc<Layout>,
    pub session: u64,
    pub rx: mpsc::UnboundedReceiver<Batch>,
    pub rec: Arc<Recorder>,
    pub max_queued: usize,
    pub max_backoff: Duration,
}

struct State {
    queue: VecDeque<Batch>,
    next_seq: u64,
    hello_done: bool,
    /// The collector holds this session's definitions.
    confirmed: bool,
    /// Failed calls since the last success.
    failed: u32,
}

enum Outcome {
    Sent,
    Retry,
}

impl Sender {
    /// Sends until the schedule has ended and every batch is acknowledged.
    pub async fn run(mut self) {
        let mut st = State {
            queue: VecDeque::new(),
            next_seq: 1,
            hello_done: false,
            confirmed: false,
            failed: 0,
        };
        let mut backoff = Backoff {
            current: Backoff::START,
            max: self.max_backoff,
        };
        loop {
            while let Ok(b) = self.rx.try_recv() {
                self.enqueue(&mut st, b);
            }
            if st.queue.is_empty() {
                match self.rx.recv().await {
                    Some(b) => self.enqueue(&mut st, b),
                    None => return,
                }
                continue;
            }
            match self.send_front(&mut st).await {
                Outcome::Sent => backoff.current = Backoff::START,
                Outcome::Retry => tokio::time::sleep(backoff.next()).await,
            }
        }
    }

    fn enqueue(&self, st: &mut State, b: Batch) {
        let unsent = st.queue.iter().filter(|b| b.sequence.is_none()).count();
        match st.queue.back_mut() {
            Some(last) if unsent >= self.max_queued && last.sequence.is_none() => {
                last.absorb(b);
                self.rec
                    .coalesced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => st.queue.push_back(b),
        }
    }

    fn fail(&self, st: &mut State, hello: bool, code: Code) -> Outcome {
        st.failed += 1;
        self.rec.failed(Failure {
            shipper: self.index,
            at_ms: self.rec.now_ms(),
            hello,
            code,
        });
        if code == Code::Unavailable {
            // A new connection may reach a restarted collector: say hello again.
            st.hello_done = false;
        }
        Outcome::Retry
    }

    fn succeeded(&self, st: &mut State) {
        if st.failed > 0 {
            self.rec.recovered(Recovery {
                shipper: self.index,
                at_ms: self.rec.now_ms(),
                failed_calls: st.failed,
            });
            st.failed = 0;
        }
    }

    fn ack(&self, b: &Batch, latency: Option<Duration>, duplicate: bool) {
        let now = Instant::now();
        self.rec.acked(
            Ack {
                shipper: self.index,
                at_ms: self.rec.ms(now.into_std()),
                latency_us: latency.map(|l| l.as_micros() as u32),
                lag_ms: now.saturating_duration_since(b.scheduled).as_millis() as u32,
                samples: b.samples() as u32,
                duplicate,
            },
            b.count,
        );
    }

    async fn hello(&mut self, st: &mut State) -> Result<(), Outcome> {
        let req = HelloRequest {
            shipper_id: self.layout.node_name.clone(),
            session: self.session,
            node_name: self.layout.node_name.clone(),
            cluster: self.layout.cluster.clone(),
            version: concat!("cluster-sim/", env!("CARGO_PKG_VERSION")).into(),
        };
        let last = match self.client.hello(req).await {
            Ok(r) => r.into_inner().last_applied_sequence,
            Err(s) => return Err(self.fail(st, true, s.code())),
        };
        self.succeeded(st);
        self.rec.hello(self.index);
        while let Some(b) = st.queue.front() {
            match b.sequence {
                Some(s) if s <= last => {
                    let b = st.queue.pop_front().expect("front exists");
                    self.ack(&b, None, true);
                }
                _ => break,
            }
        }
        st.next_seq = st.next_seq.max(last + 1);
        st.hello_done = true;
        Ok(())
    }

    async fn send_front(&mut self, st: &mut State) -> Outcome {
        if !st.hello_done {
            if let Err(o) = self.hello(st).await {
                return o;
            }
        }
        let Some(front) = st.queue.front_mut() else {
            return Outcome::Sent;
        };
        if front.sequence.is_none() {
            front.sequence = Some(st.next_seq);
            st.next_seq += 1;
        }
        let seq = front.sequence.expect("numbered above");
        for _attempt in 0..2 {
            let front = st.queue.front().expect("checked above");
            let req = PushRequest {
                shipper_id: self.layout.node_name.clone(),
                session: self.session,
                sequence: seq,
                timestamp_ms: front.timestamp_ms,
                definitions: if st.confirmed {
                    Vec::new()
                } else {
                    (0..self.layout.slots.len())
                        .map(|i| self.layout.definition(i))
                        .collect()
                },
                deltas: front.deltas.clone(),
                gauges: front.gauges.clone(),
            };
            let sent = std::time::Instant::now();
            match self.client.push(req).await {
                Ok(r) => {
                    let latency = sent.elapsed();
                    let duplicate = r.into_inner().status == PushStatus::Duplicate as i32;
                    if !duplicate {
                        st.confirmed = true;
                    }
                    self.succeeded(st);
                    let b = st.queue.pop_front().expect("front exists");
                    self.ack(&b, Some(latency), duplicate);
                    return Outcome::Sent;
                }
                Err(s)
                    if s.code() == Code::FailedPrecondition
                        && s.metadata().get(DEFINE_SERIES_METADATA).is_some() =>
                {
                    self.rec.redefine();
                    st.confirmed = false;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::InvalidArgument
                            | Code::ResourceExhausted
                            | Code::Unimplemented
                            | Code::PermissionDenied
                    ) =>
                {
                    eprintln!(
                        "{}: batch {seq} refused for good ({:?}: {}); its counts are lost",
                        self.layout.node_name,
                        s.code(),
                        s.message()
                    );
                    let b = st.queue.pop_front().expect("front exists");
                    self.rec.rejected(
                        Failure {
                            shipper: self.index,
                            at_ms: self.rec.now_ms(),
                            hello: false,
                            code: s.code(),
                        },
                        b.count,
                    );
                    return Outcome::Sent;
                }
                Err(s) => return self.fail(st, false, s.code()),
            }
        }
        self.fail(st, false, Code::FailedPrecondition)
    }
}

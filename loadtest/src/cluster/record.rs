//! What the simulated shippers saw, recorded as they go and read by the report.
//!
//! Times are milliseconds since the run's start. One lock guards the event lists; at
//! 5,000 shippers every 10 s that is 500 pushes a second, far from contention.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// One acknowledged batch.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub shipper: u32,
    /// When the acknowledgement came.
    pub at_ms: u32,
    /// From the send of the request that was acknowledged to its answer; `None` when the
    /// batch was found applied by a Hello (its acknowledgement was lost).
    pub latency_us: Option<u32>,
    /// From the batch's scheduled collection time (the earliest, for merged batches) to
    /// its acknowledgement.
    pub lag_ms: u32,
    /// Samples the batch put in the store (counter deltas and gauge values).
    pub samples: u32,
    /// The collector answered DUPLICATE: an earlier send was applied, its answer lost.
    pub duplicate: bool,
}

/// A call that failed and will be retried, or a batch the collector refused for good.
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    pub shipper: u32,
    pub at_ms: u32,
    pub hello: bool,
    pub code: tonic::Code,
}

/// A shipper's first success (Hello or Push) after one or more failed calls.
#[derive(Clone, Copy, Debug)]
pub struct Recovery {
    pub shipper: u32,
    pub at_ms: u32,
    pub failed_calls: u32,
}

#[derive(Default)]
pub struct Events {
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
    pub recoveries: Vec<Recovery>,
    /// Successful Hellos (`(shipper, at_ms)`).
    pub hellos: Vec<(u32, u32)>,
    /// Batches refused for good (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, …): their counts
    /// are lost, as the real shipper loses them.
    pub rejected: Vec<Failure>,
    /// FAILED_PRECONDITION answers asking for the series definitions again.
    pub redefinitions: u64,
}

pub struct Recorder {
    pub start: Instant,
    pub events: Mutex<Events>,
    /// Batches generated and not yet acknowledged (queued or in flight).
    pub queued: AtomicI64,
    /// Samples generated so far.
    pub generated_samples: AtomicU64,
    /// Samples of acknowledged batches so far.
    pub acked_samples: AtomicU64,
    /// Batches merged into an unsent batch because a shipper's queue was over its budget.
    pub coalesced: AtomicU64,
    /// The newest batch timestamp generated (ms since the epoch): the verification
    /// evaluates its queries there, so every series' last sample is within one interval.
    pub newest_timestamp_ms: AtomicI64,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            events: Mutex::new(Events::default()),
            queued: AtomicI64::new(0),
            generated_samples: AtomicU64::new(0),
            acked_samples: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            newest_timestamp_ms: AtomicI64::new(0),
        }
    }

    pub fn ms(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.start).as_millis() as u32
    }

    pub fn now_ms(&self) -> u32 {
        self.ms(Instant::now())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Events) -> T) -> T {
        f(&mut self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn generated(&self, samples: usize, timestamp_ms: i64) {
        self.queued.fetch_add(1, Relaxed);
        self.newest_timestamp_ms.fetch_max(timestamp_ms, Relaxed);
        self.generated_samples.fetch_add(samples as u64, Relaxed);
    }

    /// A batch standing for `batches` generated ones was acknowledged.
    pub fn acked(&self, a: Ack, batches: u32) {
        self.queued.fetch_sub(batches as i64, Relaxed);
        self.acked_samples.fetch_add(a.samples as u64, Relaxed);
        self.with(|e| e.acks.push(a));
    }

    pub fn failed(&self, f: Failure) {
        self.with(|e| e.failures.push(f));
    }

    pub fn recovered(&self, r: Recovery) {
        self.with(|e| e.recoveries.push(r));
    }

    pub fn hello(&self, shipper: u32) {
        let at = self.now_ms();
        self.with(|e| e.hellos.push((shipper, at)));
    }

    pub fn rejected(&self, f: Failure, batches: u32) {
        self.queued.fetch_sub(batches as i64, Relaxed);
        self.with(|e| e.rejected.push(f));
    }

    pub fn redefine(&self) {
        self.with(|e| e.redefinitions += 1);
    }
}

//! The commit pipeline, so that concurrent commits overlap instead of queueing behind one
//! lock. A commit is validated under the store's write lock (ids; strictly increasing time
//! per series) and takes the next sequence there; the rest runs outside that lock:
//!
//! 1. the committing thread builds and compresses its log record (in parallel with others);
//! 2. frames are written to the log in sequence order, so replay meets the records in the
//!    order they were validated;
//! 3. group commit: one fdatasync makes every frame written before it durable, and a commit
//!    waits until its own frame is; whoever finds no fsync running starts one;
//! 4. once its record is durable a commit's ingest state becomes readable and its outcome
//!    is handed over (the client can be answered); then commits are applied to the head in
//!    sequence order, so readers never see what a crash can take back; under the head's
//!    read lock and each series' own lock, so that the next commits' validation, the
//!    handlers' lookups and queries go on meanwhile (a query may see a commit in some
//!    series and not yet in others, as it could before between two series). A read first
//!    waits until every commit durable when it starts is applied ([`Pipeline::settle`]),
//!    so what was acknowledged before a read is in it;
//! 5. the chunks a commit cut from the head are encoded for staging (in parallel with
//!    others; until then readers find them in the head, `Head::unstaged`), then written
//!    to staging in sequence order, so each series' chunks reach staging in time order.
//!
//! Validating commit N+1 while N is still on its way needs N's samples: [`InFlight`], guarded
//! by the write lock, holds the last accepted sample of each series of commits not yet
//! applied, and the series they create.
//!
//! A commit that fails after taking its sequence (its log write or fsync failed) fails every
//! later commit of the pipeline too, since they were validated against it; the next holder of
//! the write lock waits until the pipeline is empty and forgets the in-flight state.

use crate::head::HeadMap;
use crate::{wal, SeriesId, StorageError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What the commits not yet applied to the head have validated, guarded by the write lock.
/// Every entry is at least as new as the head's state of its series (validation is serial).
#[derive(Default)]
pub(crate) struct InFlight {
    /// Series -> last accepted (time, value bits) and the sequence of its commit.
    pub last: HeadMap<SeriesId, (i64, u64, u64)>,
    /// Series created by commits not yet applied: encoded labels -> (id, sequence).
    pub created: HashMap<Arc<[u8]>, (SeriesId, u64)>,
    /// Entries past which the applied ones are dropped.
    prune_at: usize,
}

impl InFlight {
    /// Drops every entry of commits before `applied_before` (the head has them now).
    pub fn prune(&mut self, applied_before: u64, next_seq: u64) {
        if applied_before >= next_seq {
            self.last.clear();
            self.created.clear();
            return;
        }
        if self.last.len() + self.created.len() > self.prune_at {
            self.last.retain(|_, e| e.2 >= applied_before);
            self.created.retain(|_, e| e.1 >= applied_before);
            self.prune_at = 2 * (self.last.len() + self.created.len()) + 4096;
        }
    }

    pub fn clear(&mut self) {
        self.last.clear();
        self.created.clear();
    }
}

/// The turns of the ordered stages (see the module doc). Each stage has its own condition
/// variable, so that a stage's progress wakes only the commits waiting for that stage (one
/// for all woke every waiting commit at each step: ~13 context switches per commit at
/// the remote-write ceiling, docs/BENCHMARKS.md).
pub(crate) struct Pipeline {
    stages: Mutex<Stages>,
    /// `next_write` moved.
    written: Condvar,
    /// An fsync ended (or failed).
    synced: Condvar,
    /// `next_apply` moved.
    applied: Condvar,
    /// `next_stage` moved.
    staged: Condvar,
    /// Sequence through which every log record is fsynced; readers of the log stop there.
    pub durable: Arc<AtomicU64>,
}

#[derive(Default)]
struct Stages {
    /// The commit whose frame goes to the log next (every earlier one wrote or failed).
    next_write: u64,
    /// The commit applied next.
    next_apply: u64,
    /// The commit whose cut chunks are staged next (never after `next_apply`).
    next_stage: u64,
    /// Every commit before this sequence is durable.
    synced_before: u64,
    /// A frame was written since the running or last fsync started.
    dirty: bool,
    /// An fsync is running (outside this lock).
    syncing: bool,
    /// Commits from this sequence on fail (an earlier log write or fsync failed), and why.
    failed: Option<(u64, String)>,
    /// A durable commit was not applied (it panicked): memory lacks what the log has, so
    /// the failure is never forgotten (opening the store again replays the log).
    broken: bool,
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline {
            stages: Mutex::new(Stages::default()),
            written: Condvar::new(),
            synced: Condvar::new(),
            applied: Condvar::new(),
            staged: Condvar::new(),
            durable: Arc::new(AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stages> {
        self.stages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(cv: &Condvar, g: MutexGuard<'a, Stages>) -> MutexGuard<'a, Stages> {
        cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    /// After replay: the next commit has sequence `next`; everything before is durable.
    pub fn reset(&self, next: u64) {
        let mut s = self.lock();
        *s = Stages {
            next_write: next,
            next_apply: next,
            next_stage: next,
            synced_before: next,
            ..Stages::default()
        };
        self.durable.store(next.saturating_sub(1), Ordering::SeqCst);
    }

    /// Waits until every commit durable now is applied (or gave up its turn). Commits are
    /// acknowledged once durable, before they are applied: a read that starts with this
    /// sees every commit acknowledged before it. The wait is at most the applies in
    /// flight (one or two commits' worth at the remote-write ceiling).
    pub fn settle(&self) {
        let mut s = self.lock();
        let target = s.synced_before;
        while s.next_apply < target {
            s = Self::wait(&self.applied, s);
        }
    }

    /// The first commit not yet applied.
    pub fn applied_before(&self) -> u64 {
        self.lock().next_apply
    }

    /// Whether a commit failed in a way that fails those after it (see the module doc).
    pub fn failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    /// Waits until every commit before `next_seq` is applied and staged or failed, and
    /// forgets the failure. The caller holds the write lock, so no commit takes a sequence
    /// meanwhile.
    pub fn drain(&self, next_seq: u64) {
        let mut s = self.lock();
        while s.next_stage < next_seq {
            s = Self::wait(&self.staged, s);
        }
        if !s.broken {
            s.failed = None;
        }
    }

    /// The turn of the commit that just took sequence `seq` (under the write lock): from
    /// now on the commits after it wait for it to pass each stage or to give up its turns.
    pub fn turn(&self, seq: u64) -> Turn<'_> {
        Turn {
            p: self,
            seq,
            written: false,
            durable: false,
            applied: false,
            staged: false,
        }
    }

    fn write(
        &self,
        seq: u64,
        wal: &Mutex<wal::Wal>,
        frame: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let mut s = self.lock();
        while s.next_write != seq {
            s = Self::wait(&self.written, s);
        }
        if let Some((from, why)) = &s.failed {
            if seq >= *from {
                let why = why.clone();
                s.next_write += 1;
                drop(s);
                self.written.notify_all();
                return Err(StorageError::Aborted(why));
            }
        }
        drop(s);
        let r = match frame {
            Some(f) => wal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_frame(seq, f),
            None => Ok(()),
        };
        let mut s = self.lock();
        match &r {
            Ok(()) => s.dirty |= frame.is_some(),
            Err(e) => fail(&mut s, seq, e),
        }
        s.next_write += 1;
        drop(s);
        self.written.notify_all();
        r
    }

    /// Waits until commit `seq`'s frame is fsynced, fsyncing itself when no one is.
    fn wait_durable(&self, seq: u64, wal: &Mutex<wal::Wal>) -> Result<(), StorageError> {
        let mut s = self.lock();
        loop {
            if s.synced_before > seq {
                return Ok(());
            }
            if let Some((from, why)) = &s.failed {
                if seq >= *from {
                    return Err(StorageError::Aborted(why.clone()));
                }
            }
            if s.syncing {
                s = Self::wait(&self.synced, s);
                continue;
            }
            // Lead an fsync covering every frame written so far.
            let target = s.next_write;
            let dirty = std::mem::take(&mut s.dirty);
            s.syncing = true;
            drop(s);
            let r = if dirty { sync(wal) } else { Ok(()) };
            s = self.lock();
            s.syncing = false;
            match &r {
                Ok(()) => {
                    s.synced_before = s.synced_before.max(target);
                    self.durable
                        .fetch_max(target.saturating_sub(1), Ordering::SeqCst);
                }
                Err(e) => {
                    let from = s.synced_before;
                    fail(&mut s, from, e);
                }
            }
            self.synced.notify_all();
            r?;
        }
    }

    fn advance_apply(&self) {
        self.lock().next_apply += 1;
        self.applied.notify_all();
    }

    fn wait_stage(&self, seq: u64) {
        let mut s = self.lock();
        while s.next_stage != seq {
            s = Self::wait(&self.staged, s);
        }
    }

    fn advance_stage(&self) {
        self.lock().next_stage += 1;
        self.staged.notify_all();
    }
}

/// Fsyncs the log's current file outside the log's lock (frames in a segment left behind
/// were fsynced when it was left, see `Wal::write_frame`).
fn sync(wal: &Mutex<wal::Wal>) -> Result<(), StorageError> {
    let lock = || wal.lock().unwrap_or_else(|e| e.into_inner());
    let handle = lock().sync_handle()?;
    match handle.map(|f| f.sync_data()) {
        Some(Err(e)) => Err(lock().sync_failed(e)),
        _ => Ok(()),
    }
}

/// Commits from `seq` on fail with `e` (the earliest failure wins).
fn fail(s: &mut Stages, seq: u64, e: &StorageError) {
    let from = s.failed.as_ref().map_or(seq, |f| f.0.min(seq));
    let why = match &s.failed {
        Some((_, why)) => why.clone(),
        None => format!("commit {seq}: {e}"),
    };
    s.failed = Some((from, why));
}

/// A commit's place in the stages, given up in order when it leaves them early (an error
/// or a panic), so that the commits after it are not stuck.
pub(crate) struct Turn<'a> {
    p: &'a Pipeline,
    seq: u64,
    written: bool,
    durable: bool,
    applied: bool,
    staged: bool,
}

impl Turn<'_> {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The stages after validation: `frame` (`None`: the commit changes nothing in the
    /// log) written in order and made durable, then `durable` (the commit's ingest state
    /// made readable), whose outcome goes to `decided`, then `apply` in order; what it
    /// leaves to stage goes through `prepare` (in parallel with other commits), then
    /// `stage` in order. `durable` may run out of sequence order (commits made durable by
    /// the same fsync).
    #[allow(clippy::too_many_arguments)]
    pub fn run<T, C, D>(
        self,
        wal: &Mutex<wal::Wal>,
        frame: Option<Vec<u8>>,
        durable: impl FnOnce() -> T,
        apply: impl FnOnce() -> Result<C, StorageError>,
        decided: impl FnOnce(Result<T, StorageError>),
        prepare: impl FnOnce(C) -> D,
        stage: impl FnOnce(D),
    ) {
        let mut decided = Some(decided);
        let mut tell = |r| {
            if let Some(f) = decided.take() {
                f(r)
            }
        };
        if let Err(e) = self.run_stages(wal, frame, durable, apply, &mut tell, prepare, stage) {
            tell(Err(e));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_stages<T, C, D>(
        mut self,
        wal: &Mutex<wal::Wal>,
        frame: Option<Vec<u8>>,
        on_durable: impl FnOnce() -> T,
        apply: impl FnOnce() -> Result<C, StorageError>,
        decided: &mut impl FnMut(Result<T, StorageError>),
        prepare: impl FnOnce(C) -> D,
        stage: impl FnOnce(D),
    ) -> Result<(), StorageError> {
        let (p, seq) = (self.p, self.seq);
        let wrote = p.write(seq, wal, frame.as_deref());
        self.written = true;
        let durable = wrote.and_then(|()| p.wait_durable(seq, wal));
        self.durable = durable.is_ok();
        if durable.is_ok() {
            // Acknowledged now: a read waits for the apply below (`Pipeline::settle`), and
            // if the apply fails the log still has the commit (reopening replays it).
            decided(Ok(on_durable()));
        }
        let mut s = p.lock();
        while s.next_apply != seq {
            s = Pipeline::wait(&p.applied, s);
        }
        if let Some((from, why)) = &s.failed {
            // Only a commit before this one that was not applied after its record was
            // durable fails a durable one here (the pipeline is broken).
            if self.durable && seq >= *from {
                return Err(StorageError::Aborted(why.clone()));
            }
        }
        drop(s);
        durable?;
        let r = apply();
        self.applied = true;
        p.advance_apply();
        // On an error the drop gives up the staging turn.
        let d = prepare(r?);
        p.wait_stage(seq);
        stage(d);
        self.staged = true;
        p.advance_stage();
        Ok(())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.written && self.applied && self.staged {
            return;
        }
        let mut s = self.p.lock();
        if !self.applied {
            let e = StorageError::Aborted("a commit was abandoned".into());
            fail(&mut s, self.seq, &e);
            s.broken |= self.durable;
        }
        if !self.written {
            while s.next_write != self.seq {
                s = Pipeline::wait(&self.p.written, s);
            }
            s.next_write += 1;
            self.p.written.notify_all();
        }
        if !self.applied {
            while s.next_apply != self.seq {
                s = Pipeline::wait(&self.p.applied, s);
            }
            s.next_apply += 1;
            self.p.applied.notify_all();
        }
        // A commit that stages nothing (it failed, or staging panicked) leaves its chunks,
        // if any, in `Head::unstaged`, where the next staging writes them.
        if !self.staged {
            while s.next_stage != self.seq {
                s = Pipeline::wait(&self.p.staged, s);
            }
            s.next_stage += 1;
            self.p.staged.notify_all();
        }
    }
}

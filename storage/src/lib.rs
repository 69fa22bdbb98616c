//! Kappie's embedded time-series store.
//!
//! This crate owns everything the collector persists: series and their label sets, samples,
//! and the small pieces of ingest state (per-shipper sequence numbers, counter totals,
//! session definitions) that must be written in the *same* atomic, durable write as the
//! samples they describe. It exposes two seams that the rest of Kappie uses and that the
//! full engine (Gorilla chunks, inverted index, WAL, retention) will sit behind:
//! an [`Appender`] that commits or rolls back a batch atomically, and a [`Querier`] that
//! selects series by label matchers and a time range.
//!
//! Prometheus's `tsdb` is the model: chunk encoding ([`chunkenc`]), the inverted index
//! ([`index`]), write-ahead records ([`wal`]), the engine with its in-memory head (`db`),
//! reads (`query`) and retention (`retention`). Byte layouts: `storage/docs/format.md`.

mod appender;
mod blocks;
mod chunk;
mod compact;
mod db;
mod encoding;
mod error;
mod head;
mod index;
mod labels;
mod meta_bytes;
mod pending;
mod pipeline;
mod querier;
mod retention;
mod series_table;
mod staging;
pub mod wal;
pub mod wincodec;
pub mod winfile;

pub use appender::StorageAppender;
pub use db::{CommitReport, MetaEntry, Storage, StorageConfig, StorageStats};
pub use encoding::chunkenc;
pub(crate) use encoding::{codec, dense, keys};
pub use error::StorageError;
pub use labels::{
    check_sorted_names, encode_pairs, valid_label_name, Label, Labels, MatchOp, Matcher,
};
pub use meta_bytes::MetaBytes;
pub use querier::{ChunkSeries, RawChunk};
pub use retention::MaintenanceReport;

/// Prometheus's staleness marker: the NaN bit pattern Prometheus writes when a series
/// disappears. Queries skip samples with exactly these bits.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is Prometheus's staleness marker (an ordinary NaN is not).
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Dense id of a series inside one store.
pub type SeriesId = u64;

/// One sample: milliseconds since the Unix epoch and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

/// A series with the samples of the selected time range, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// Writes samples and ingest state as one atomic unit.
///
/// Nothing is visible to queriers or survives a crash until [`Appender::commit`] returns
/// `Ok`; after that everything is durable (fsynced). Dropping an appender without
/// committing rolls it back.
pub trait Appender {
    /// Queues one sample of the series with these labels (which must include `__name__`).
    /// Order is checked at commit: per series, time must increase (see [`CommitReport`]).
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<(), StorageError>;
    /// Queues a write of an ingest-state key (see [`Storage::meta`]) in the same atomic unit.
    fn set_meta(&mut self, key: &[u8], value: &[u8]);
    /// Queues the removal of an ingest-state key in the same atomic unit.
    fn remove_meta(&mut self, key: &[u8]);
    /// Makes everything queued durable and visible, atomically, and says which samples it
    /// refused (out of order, conflicting duplicates, too old); those are not written, the
    /// rest of the append is.
    fn commit(self) -> Result<CommitReport, StorageError>;
}

/// Reads series by label matchers.
pub trait Querier {
    /// Every series matching all `matchers`, with its samples in `[mint, maxt]` (inclusive,
    /// milliseconds). Series with no sample in the range are left out. Series come sorted by
    /// their label sets.
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, StorageError>;
}

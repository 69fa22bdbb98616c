//! `POST /api/v1/write`: Prometheus remote write 1.0 (snappy-compressed protobuf
//! `WriteRequest`). Samples are stored as they come: absolute values, not deltas.
//!
//! The whole request is checked (snappy, protobuf, label sets) before anything is written;
//! a bad request gets 400 with the reason and changes nothing. Samples the store refuses
//! (out of order, conflicting duplicates, too old) are counted and reported with 400, as
//! Prometheus does, so senders do not retry them; the others in the request are kept.

mod wire;

use super::{ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kappie_storage::{check_sorted_names, encode_pairs};
pub use wire::{WireError, WriteRequestRef};

pub(super) async fn remote_write(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let batch = decode_write_request(&body, st.limits.max_remote_write_bytes, &st.limits.labels)?;
    let store = st.store.clone();
    // The answer goes out as soon as the commit is durable (a query started after it waits
    // until the commit is applied); the worker then applies it and stages the chunks it
    // cut (see `StorageAppender::commit_then`).
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let mut app = store.appender();
        app.reserve(batch.samples.len());
        match app.append_runs(batch.series()) {
            Ok(()) => app.commit_then(|r| {
                let _ = tx.send(r);
            }),
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    let report = rx
        .await
        .map_err(|_| ApiError::internal("write worker failed (see the collector's log)"))?
        .map_err(|e| match e {
            kappie_storage::StorageError::InvalidLabels(_) => ApiError::bad_data(e.to_string()),
            e => {
                tracing::error!(error = %e, "remote write: store write failed");
                ApiError::unavailable(format!(
                    "the store could not take the write: {e}; retry later"
                ))
            }
        })?;
    if report.refused() > 0 {
        return Err(ApiError::bad_data(format!(
            "{} samples refused ({} out of order, {} duplicate timestamp with another value, {} older than retention); {} stored",
            report.refused(),
            report.out_of_order,
            report.duplicate_timestamp,
            report.too_old,
            report.appended
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A checked remote write request: every series' label set in the store's encoding
/// (`Labels::encode`), sorted and checked as `Labels::new` checks it, and its samples.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// The label sets, one after another.
    enc: Vec<u8>,
    /// `(time ms, value)` of every series, in order.
    pub samples: Vec<(i64, f64)>,
    /// Per series: end of its label set in `enc`, end of its samples in `samples`.
    ends: Vec<(usize, usize)>,
}

impl WriteBatch {
    /// The series in request order: encoded label set and samples.
    pub fn series(&self) -> impl Iterator<Item = (&[u8], &[(i64, f64)])> {
        runs(&self.enc, &self.samples, &self.ends)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Slices of two flattened vectors, one pair per entry of `ends` (the end of each slice in
/// `a` and in `b`): the series of a request as a decoder keeps them.
fn runs<'x, A, B>(
    a: &'x [A],
    b: &'x [B],
    ends: &'x [(usize, usize)],
) -> impl Iterator<Item = (&'x [A], &'x [B])> {
    let mut start = (0, 0);
    ends.iter().map(move |&(ea, eb)| {
        let out = (&a[start.0..ea], &b[start.1..eb]);
        start = (ea, eb);
        out
    })
}

/// The snappy block `body` decompressed, if it is no larger than `max` bytes.
pub fn decompress(body: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    let len = snap::raw::decompress_len(body).map_err(|e| {
        ApiError::bad_data(format!(
            "snappy decode error: {e}; remote write bodies are snappy block-compressed"
        ))
    })?;
    if len > max {
        return Err(ApiError::bad_data(format!(
            "decompressed body of {len} bytes is over the limit of {max} (--max-remote-write-bytes)"
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| ApiError::bad_data(format!("snappy decode error: {e}")))
}

/// Decodes and checks a remote write body (snappy block, then `prometheus.WriteRequest`,
/// then every label set) without writing anything; `max` bounds the decompressed size.
/// Public so that the `remote_write` fuzz target and its regression tests drive exactly
/// the code the handler runs on untrusted bodies.
///
/// The whole body is decoded before any label set is checked, so a body that is not a
/// `WriteRequest` is reported as such whatever its labels; label sets are then checked in
/// request order, as `Labels::new` checks them, without building one.
pub fn decode_write_request(
    body: &[u8],
    max: usize,
    label_limits: &crate::limits::LabelLimits,
) -> Result<WriteBatch, ApiError> {
    let raw = decompress(body, max)?;
    let req = WriteRequestRef::decode(&raw).map_err(|e| {
        ApiError::bad_data(format!(
            "protobuf decode error: {e}; expected prometheus.WriteRequest"
        ))
    })?;
    let label_bytes: usize = req
        .series()
        .flat_map(|(l, _)| l)
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum();
    let mut enc = Vec::with_capacity(label_bytes);
    let mut ends = Vec::with_capacity(req.len());
    // One series' labels: empty values dropped (Prometheus treats them as absent), sorted.
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut samples_end = 0;
    for (i, (labels, samples)) in req.series().enumerate() {
        pairs.clear();
        pairs.extend(labels.iter().filter(|l| !l.1.is_empty()));
        if !pairs.is_sorted() {
            // Equal pairs are identical, so an unstable sort orders as a stable one.
            pairs.sort_unstable();
        }
        check_sorted_names(pairs.iter().map(|l| l.0))
            .map_err(|e| ApiError::bad_data(format!("series {i}: {e}")))?;
        if pairs.binary_search_by(|l| l.0.cmp("__name__")).is_err() {
            return Err(ApiError::bad_data(format!(
                "series {i} has no __name__ label"
            )));
        }
        label_limits
            .check_pairs(&pairs)
            .map_err(|e| ApiError::bad_data(format!("series {i}: {e}")))?;
        encode_pairs(pairs.iter().copied(), &mut enc);
        samples_end += samples.len();
        ends.push((enc.len(), samples_end));
    }
    let WriteRequestRef { samples, .. } = req;
    Ok(WriteBatch { enc, samples, ends })
}

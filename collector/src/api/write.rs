//! `POST /api/v1/write`: Prometheus remote write 1.0 (snappy-compressed protobuf
//! `WriteRequest`). Samples are stored as they come: absolute values, not deltas.
//!
//! The whole request is checked (snappy, protobuf, label sets) before anything is written;
//! a bad request gets 400 with the reason and changes nothing. Samples the store refuses
//! (out of order, conflicting duplicates, too old) are counted and reported with 400, as
//! Prometheus does, so senders do not retry them; the others in the request are kept.

use super::{ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kappie_proto::prometheus::WriteRequest;
use kappie_storage::{Appender, Labels};
use prost::Message;

pub(super) async fn remote_write(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let series = decode_write_request(&body, st.limits.max_remote_write_bytes, &st.limits.labels)?;
    let store = st.store.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut app = store.appender();
        app.reserve(series.iter().map(|s| s.1.len()).sum());
        for (labels, samples) in &series {
            // Encoded once per series, not per sample.
            let enc: std::sync::Arc<[u8]> = std::sync::Arc::from(labels.encode());
            for &(t, v) in samples {
                app.append_encoded(&enc, labels, t, v)?;
            }
        }
        app.commit()
    })
    .await
    .map_err(|e| ApiError::internal(format!("write worker failed: {e}")))?
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

/// The series of a remote write request: label set and samples `(t ms, value)`.
pub type WriteSeries = Vec<(Labels, Vec<(i64, f64)>)>;

/// Decodes and checks a remote write body (snappy block, then `prometheus.WriteRequest`,
/// then every label set) without writing anything; `max` bounds the decompressed size.
/// Public so that the `remote_write` fuzz target and its regression tests drive exactly
/// the code the handler runs on untrusted bodies.
pub fn decode_write_request(
    body: &[u8],
    max: usize,
    label_limits: &crate::limits::LabelLimits,
) -> Result<WriteSeries, ApiError> {
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
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| ApiError::bad_data(format!("snappy decode error: {e}")))?;
    let req = WriteRequest::decode(raw.as_slice()).map_err(|e| {
        ApiError::bad_data(format!(
            "protobuf decode error: {e}; expected prometheus.WriteRequest"
        ))
    })?;

    let mut series = Vec::with_capacity(req.timeseries.len());
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        let labels = Labels::new(ts.labels.into_iter().map(|l| (l.name, l.value)))
            .map_err(|e| ApiError::bad_data(format!("series {i}: {e}")))?;
        if labels.get("__name__").is_none() {
            return Err(ApiError::bad_data(format!(
                "series {i} has no __name__ label"
            )));
        }
        label_limits
            .check(&labels)
            .map_err(|e| ApiError::bad_data(format!("series {i}: {e}")))?;
        series.push((
            labels,
            ts.samples
                .into_iter()
                .map(|s| (s.timestamp, s.value))
                .collect::<Vec<_>>(),
        ));
    }
    Ok(series)
}

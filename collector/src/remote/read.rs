//! `POST /api/v1/read`: Prometheus remote read. The request is a snappy-compressed
//! `ReadRequest` with one or more queries (label matchers of all four types and a time
//! range). Kappie answers in the first type of `accepted_response_types` it offers:
//!
//! - `SAMPLES`: one snappy-compressed `ReadResponse` with raw samples (staleness markers
//!   included, as Prometheus sends them), refused with 400 past `--remote-read-max-samples`;
//! - `STREAMED_XOR_CHUNKS`: `application/x-streamed-protobuf;
//!   proto=prometheus.ChunkedReadResponse`, a stream of frames `uvarint(len) |
//!   crc32c(data) u32 BE | data`, each a `ChunkedReadResponse` holding chunks of one series
//!   and at most about `--remote-read-max-frame-bytes`; series sorted by labels; the chunks
//!   are the store's own XOR chunks (they may hold samples just outside the range; readers
//!   filter, as with Prometheus).
//!
//! Errors are plain-text bodies with 400 (bad request) or 500, as Prometheus's
//! `http.Error`. At most `--remote-read-concurrency` reads run at once; others wait.

use crate::api::ApiState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kappie_proto::prometheus as pb;
use kappie_storage::{MatchOp, Matcher, Storage};
use prost::Message;

/// A remote read error: status and a plain-text message.
struct ReadError(StatusCode, String);

impl IntoResponse for ReadError {
    fn into_response(self) -> Response {
        (
            self.0,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            format!("{}\n", self.1),
        )
            .into_response()
    }
}

fn bad(msg: impl Into<String>) -> ReadError {
    ReadError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(msg: impl Into<String>) -> ReadError {
    ReadError(StatusCode::INTERNAL_SERVER_ERROR, msg.into())
}

/// The response types Kappie offers, parsed from their names.
pub fn parse_response_types(names: &[String]) -> Result<Vec<i32>, String> {
    names
        .iter()
        .map(|n| match n.to_ascii_uppercase().as_str() {
            "SAMPLES" => Ok(pb::read_request::ResponseType::Samples as i32),
            "STREAMED_XOR_CHUNKS" => Ok(pb::read_request::ResponseType::StreamedXorChunks as i32),
            other => Err(format!(
                "unknown remote read response type {other:?}: use SAMPLES or STREAMED_XOR_CHUNKS"
            )),
        })
        .collect()
}

fn type_name(t: i32) -> String {
    pb::read_request::ResponseType::try_from(t)
        .map(|t| t.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("{t}"))
}

/// The first accepted type Kappie offers; no accepted types means SAMPLES (old clients).
fn negotiate(accepted: &[i32], offered: &[i32]) -> Result<i32, ReadError> {
    if accepted.is_empty() {
        return Ok(pb::read_request::ResponseType::Samples as i32);
    }
    accepted
        .iter()
        .copied()
        .find(|t| offered.contains(t))
        .ok_or_else(|| {
            bad(format!(
                "server does not support any of the requested response types: {:?}; supported: {:?}",
                accepted.iter().map(|t| type_name(*t)).collect::<Vec<_>>(),
                offered.iter().map(|t| type_name(*t)).collect::<Vec<_>>()
            ))
        })
}

fn matchers(q: &pb::Query) -> Result<Vec<Matcher>, ReadError> {
    q.matchers
        .iter()
        .map(|m| {
            let op = match pb::label_matcher::Type::try_from(m.r#type) {
                Ok(pb::label_matcher::Type::Eq) => MatchOp::Equal,
                Ok(pb::label_matcher::Type::Neq) => MatchOp::NotEqual,
                Ok(pb::label_matcher::Type::Re) => MatchOp::Regex,
                Ok(pb::label_matcher::Type::Nre) => MatchOp::NotRegex,
                Err(_) => return Err(bad(format!("unknown matcher type {}", m.r#type))),
            };
            Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

fn labels_pb(l: &kappie_storage::Labels) -> Vec<pb::Label> {
    l.iter()
        .map(|x| pb::Label {
            name: x.name.clone(),
            value: x.value.clone(),
        })
        .collect()
}

pub async fn remote_read(State(st): State<ApiState>, body: Bytes) -> Response {
    match read(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn read(st: ApiState, body: Bytes) -> Result<Response, ReadError> {
    let limits = st.limits.remote_read.clone();
    let permit = st
        .remote_read_gate
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| internal(e.to_string()))?;
    let len = snap::raw::decompress_len(&body).map_err(|e| bad(format!("snappy: {e}")))?;
    if len > limits.max_request_bytes {
        return Err(bad(format!(
            "decompressed request of {len} bytes is over the limit of {}",
            limits.max_request_bytes
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .map_err(|e| bad(format!("snappy: {e}")))?;
    let req = pb::ReadRequest::decode(raw.as_slice())
        .map_err(|e| bad(format!("protobuf: {e}; expected prometheus.ReadRequest")))?;
    let queries = req
        .queries
        .iter()
        .map(|q| Ok((matchers(q)?, q.start_timestamp_ms, q.end_timestamp_ms)))
        .collect::<Result<Vec<_>, ReadError>>()?;
    let kind = negotiate(&req.accepted_response_types, &limits.response_types)?;
    tracing::debug!(accepted = ?req.accepted_response_types, chosen = kind, queries = queries.len(), "remote read");
    let counter = if kind == pb::read_request::ResponseType::Samples as i32 {
        &st.query_stats.remote_read_samples
    } else {
        &st.query_stats.remote_read_streamed
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let store = st.store.clone();
    if kind == pb::read_request::ResponseType::Samples as i32 {
        let body = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            samples(&store, &queries, limits.max_samples)
        })
        .await
        .map_err(|e| internal(e.to_string()))??;
        return Ok((
            [
                (header::CONTENT_TYPE, "application/x-protobuf"),
                (header::CONTENT_ENCODING, "snappy"),
            ],
            body,
        )
            .into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if let Err(e) = stream_chunks(&store, &queries, limits.max_frame_bytes, &tx) {
            tracing::warn!(error = %e, "remote read stream ended early");
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse",
        )],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

type Query = (Vec<Matcher>, i64, i64);

fn samples(store: &Storage, queries: &[Query], max_samples: usize) -> Result<Vec<u8>, ReadError> {
    use kappie_storage::Querier;
    let mut resp = pb::ReadResponse::default();
    let mut total = 0usize;
    for (ms, start, end) in queries {
        let series = store
            .select(ms, *start, *end)
            .map_err(|e| internal(e.to_string()))?;
        let mut result = pb::QueryResult::default();
        for s in series {
            total += s.samples.len();
            if total > max_samples {
                return Err(bad(format!("exceeded sample limit ({max_samples})")));
            }
            result.timeseries.push(pb::TimeSeries {
                labels: labels_pb(&s.labels),
                samples: s
                    .samples
                    .iter()
                    .map(|x| pb::Sample {
                        value: x.v,
                        timestamp: x.t,
                    })
                    .collect(),
            });
        }
        resp.results.push(result);
    }
    snap::raw::Encoder::new()
        .compress_vec(&resp.encode_to_vec())
        .map_err(|e| internal(e.to_string()))
}

/// One frame: `uvarint(len) | crc32c(data) BE | data`.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 14);
    let mut n = data.len() as u64;
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(&crc32c::crc32c(data).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn stream_chunks(
    store: &Storage,
    queries: &[Query],
    max_frame_bytes: usize,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    let send = |resp: &pb::ChunkedReadResponse| -> Result<(), String> {
        tx.blocking_send(Ok(Bytes::from(frame(&resp.encode_to_vec()))))
            .map_err(|_| "client went away".to_owned())
    };
    for (i, (ms, start, end)) in queries.iter().enumerate() {
        let series = store
            .select_chunks(ms, *start, *end)
            .map_err(|e| e.to_string())?;
        for s in series {
            let labels = labels_pb(&s.labels);
            let labels_size: usize = labels.iter().map(|l| l.name.len() + l.value.len()).sum();
            let mut chunks = Vec::new();
            let mut size = labels_size;
            for c in s.chunks {
                size += c.bytes.len() + 24;
                chunks.push(pb::Chunk {
                    min_time_ms: c.mint,
                    max_time_ms: c.maxt,
                    r#type: pb::chunk::Encoding::Xor as i32,
                    data: c.bytes,
                });
                if size >= max_frame_bytes {
                    send(&pb::ChunkedReadResponse {
                        chunked_series: vec![pb::ChunkedSeries {
                            labels: labels.clone(),
                            chunks: std::mem::take(&mut chunks),
                        }],
                        query_index: i as i64,
                    })?;
                    size = labels_size;
                }
            }
            if !chunks.is_empty() {
                send(&pb::ChunkedReadResponse {
                    chunked_series: vec![pb::ChunkedSeries { labels, chunks }],
                    query_index: i as i64,
                })?;
            }
        }
    }
    Ok(())
}

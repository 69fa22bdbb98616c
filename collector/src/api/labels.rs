//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`, `/api/v1/metadata`
//! and `/api/v1/status/buildinfo`, with Prometheus's parameters (`match[]` repeated,
//! `start`, `end`, `limit`) from the query string or a form-encoded POST body.

use super::{blocking, labels_json, one, params, success, time, ApiError, ApiState};
use crate::promql;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use kappie_storage::{Labels, Matcher};
use serde_json::json;
use std::collections::BTreeSet;

fn time_range(p: &[(String, String)]) -> Result<(i64, i64), ApiError> {
    let get = |name: &str, default: i64| match one(p, name) {
        None => Ok(default),
        Some(s) => time::parse_time(s)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"{name}\": {e}"))),
    };
    let (start, end) = (get("start", i64::MIN)?, get("end", i64::MAX)?);
    if end < start {
        return Err(ApiError::bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    Ok((start, end))
}

fn limit(p: &[(String, String)]) -> Result<Option<usize>, ApiError> {
    match one(p, "limit") {
        None => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(ApiError::bad_data(format!(
                "invalid parameter \"limit\": cannot parse {s:?} to a number"
            ))),
        },
    }
}

/// Every `match[]`, each as its `or` branches.
fn selectors(p: &[(String, String)], max_tokens: usize) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let mut out = Vec::new();
    for (_, v) in p.iter().filter(|(k, _)| k == "match[]") {
        out.extend(
            promql::series_selector(v, max_tokens)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter \"match[]\": {e}")))?,
        );
    }
    Ok(out)
}

fn storage(e: kappie_storage::StorageError) -> ApiError {
    ApiError::internal(e.to_string())
}

pub(super) async fn series(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = params(q, &body);
    if !p.iter().any(|(k, _)| k == "match[]") {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let found: Vec<Labels> = union_of(&st, &p, |s, m, a, b| s.series(m, a, b)).await?;
    Ok(success(json!(found
        .iter()
        .map(labels_json)
        .collect::<Vec<_>>())))
}

/// Union over the `match[]` selectors (or over everything without one) of what `read`
/// returns for a matcher set, sorted, cut at `limit`.
async fn union_of<T: Ord + Send + 'static>(
    st: &ApiState,
    p: &[(String, String)],
    read: impl Fn(
            &kappie_storage::Storage,
            &[Matcher],
            i64,
            i64,
        ) -> Result<Vec<T>, kappie_storage::StorageError>
        + Send
        + 'static,
) -> Result<Vec<T>, ApiError> {
    let (start, end) = time_range(p)?;
    let limit = limit(p)?.unwrap_or(usize::MAX);
    let store = st.store.clone();
    let (p, max_tokens) = (p.to_vec(), st.limits.query.max_tokens);
    blocking(move || {
        // Parsed off the runtime's threads: a selector may be any query, up to the limit.
        let mut sets = selectors(&p, max_tokens)?;
        if sets.is_empty() {
            sets.push(Vec::new());
        }
        let mut all = BTreeSet::new();
        for set in &sets {
            all.extend(read(&store, set, start, end).map_err(storage)?);
        }
        Ok(all.into_iter().take(limit).collect())
    })
    .await
}

pub(super) async fn label_names(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = params(q, &body);
    let names = union_of(&st, &p, |s, m, a, b| s.label_names(m, a, b)).await?;
    Ok(success(json!(names)))
}

pub(super) async fn label_values(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    if !kappie_storage::valid_label_name(&name) {
        return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
    }
    let p = params(q, &[]);
    let values = union_of(&st, &p, move |s, m, a, b| s.label_values(&name, m, a, b)).await?;
    Ok(success(json!(values)))
}

/// Type and help of every metric SPEC §1 defines.
pub const METADATA: &[(&str, &str, &str)] = &[
    (
        "kappie_forward_count",
        "counter",
        "Packets forwarded on the node's host interfaces, by direction.",
    ),
    (
        "kappie_forward_bytes",
        "counter",
        "Bytes forwarded on the node's host interfaces, by direction.",
    ),
    (
        "kappie_drop_count",
        "counter",
        "Packets the kernel dropped, by drop reason and direction.",
    ),
    (
        "kappie_drop_bytes",
        "counter",
        "Bytes the kernel dropped, by drop reason and direction.",
    ),
    ("kappie_tcp_state", "gauge", "TCP sockets by state."),
    (
        "kappie_tcp_connection_remote",
        "gauge",
        "TCP sockets by remote address and port (top N, rest as address=\"other\").",
    ),
    (
        "kappie_tcp_connection_stats",
        "counter",
        "TCP counters of /proc/net/netstat TcpExt and /proc/net/snmp Tcp, by statistic name.",
    ),
    (
        "kappie_tcp_flag_counters",
        "counter",
        "TCP segments carrying each header flag, by flag and direction.",
    ),
    (
        "kappie_ip_connection_stats",
        "counter",
        "IP counters of /proc/net/snmp Ip and /proc/net/netstat IpExt, by statistic name.",
    ),
    (
        "kappie_udp_connection_stats",
        "counter",
        "UDP counters of /proc/net/snmp Udp and /proc/net/snmp6 Udp6, by statistic name.",
    ),
    ("kappie_udp_active_sockets", "gauge", "Open UDP sockets."),
    (
        "kappie_interface_stats",
        "counter",
        "Interface counters of /sys/class/net/*/statistics, by interface and statistic name.",
    ),
];

pub(super) async fn metadata(RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let p = params(q, &[]);
    let limit = limit(&p)?;
    let metric = one(&p, "metric");
    let mut data = serde_json::Map::new();
    for (name, kind, help) in METADATA
        .iter()
        .filter(|(n, _, _)| metric.is_none_or(|m| m == *n))
    {
        if limit.is_some_and(|l| data.len() >= l) {
            break;
        }
        data.insert(
            (*name).into(),
            json!([{"type": kind, "help": help, "unit": ""}]),
        );
    }
    Ok(success(serde_json::Value::Object(data)))
}

/// Prometheus-compatible build information. `version` is the Prometheus API version Kappie
/// answers like (Grafana picks features by it); Kappie's own version is in `kappieVersion`.
pub(super) async fn buildinfo() -> Response {
    success(json!({
        "version": "2.42.0",
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "kappieVersion": env!("CARGO_PKG_VERSION"),
    }))
}

/// `/api/v1/rules`, `/api/v1/alerts` and `/api/v1/query_exemplars`: Kappie evaluates no
/// rules and stores no exemplars, and says so in Prometheus's shapes, so Grafana's alerting
/// and exemplar views show "none" instead of an error.
pub(super) async fn rules() -> Response {
    success(json!({"groups": []}))
}

pub(super) async fn alerts() -> Response {
    success(json!({"alerts": []}))
}

pub(super) async fn query_exemplars() -> Response {
    success(json!([]))
}

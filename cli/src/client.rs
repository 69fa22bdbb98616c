//! The collector's HTTP API as this CLI uses it: Prometheus's query endpoints and the
//! shipper inventory, their JSON shapes, and every way a request can fail, each with the
//! exit code it ends the program with.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

/// What the port-forward users of the README run; said whenever the collector is not there.
pub const PORT_FORWARD_HINT: &str =
    "Is `kubectl -n kappie port-forward svc/kappie-collector 9090` running?";

/// Largest answer read, so a runaway query cannot take all memory (the collector bounds the
/// series it returns too).
const MAX_BODY_BYTES: u64 = 512 << 20;

/// Why a command failed. [`Error::exit_code`] maps each to the exit codes `--help` lists.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or input files, found before anything was sent.
    #[error("{0}")]
    Usage(String),
    /// No HTTP answer at all: connection refused, DNS, TLS, timeout.
    #[error("cannot reach the collector at {url}: {reason}. {PORT_FORWARD_HINT}")]
    Unreachable { url: String, reason: String },
    /// 401/403: the API wants credentials, or other ones.
    #[error("{}", unauthorized_message(url, *status, *sent_credentials))]
    Unauthorized {
        url: String,
        status: u16,
        sent_credentials: bool,
    },
    /// The API refused the query (Prometheus's `bad_data`, `execution`: 400 and 422).
    #[error("{error_type}: {error}")]
    BadQuery { error_type: String, error: String },
    /// Any other HTTP error.
    #[error("the collector at {url} answered HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    /// An answer that is not the JSON the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    /// The terminal (for `watch`).
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

fn unauthorized_message(url: &str, status: u16, sent_credentials: bool) -> String {
    if sent_credentials {
        format!(
            "the collector at {url} refused the credentials (HTTP {status}): check the \
             --token-file / KAPPIE_TOKEN or --user / KAPPIE_USER you passed"
        )
    } else {
        format!(
            "the collector at {url} requires authentication (HTTP {status}): pass \
             --token-file FILE (or KAPPIE_TOKEN) or --user USER:PASSWORD (or KAPPIE_USER)"
        )
    }
}

impl Error {
    /// 1 for what the user can fix in the command line or query, 2 for the server or the
    /// way to it (see `main.rs`'s exit code list).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::BadQuery { .. } | Error::Terminal(_) => 1,
            Error::Unreachable { .. }
            | Error::Unauthorized { .. }
            | Error::Http { .. }
            | Error::Decode { .. } => 2,
        }
    }
}

/// How requests authenticate, as the collector's `--http-auth-token-file` and
/// `--http-auth-users-file` expect.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    Bearer(String),
    Basic { user: String, password: String },
}

impl std::fmt::Debug for Auth {
    // Never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(***)"),
            Auth::Basic { user, .. } => write!(f, "Basic({user}:***)"),
        }
    }
}

impl Auth {
    /// `--user USER:PASSWORD`.
    pub fn basic(user_password: &str) -> Result<Auth, Error> {
        match user_password.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Auth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err(Error::Usage(
                "--user (KAPPIE_USER) must be USER:PASSWORD".to_owned(),
            )),
        }
    }

    /// A token as a token file holds it (surrounding white space and newline dropped).
    pub fn bearer(text: &str, source: &str) -> Result<Auth, Error> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::Usage(format!("{source}: the token is empty")));
        }
        Ok(Auth::Bearer(t.to_owned()))
    }

    fn header(&self) -> String {
        use base64::Engine;
        match self {
            Auth::Bearer(t) => format!("Bearer {t}"),
            Auth::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
        }
    }
}

/// A collector's API at one base URL.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    auth: Option<Auth>,
}

/// One sample or point: time in seconds and the value as the API writes it (`"1.5"`,
/// `"NaN"`, `"+Inf"`), kept as text so JSON output stays exact.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Point(pub f64, pub String);

impl Point {
    pub fn value(&self) -> f64 {
        parse_value(&self.1)
    }
}

/// A sample value as Prometheus formats it.
pub fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sample {
    pub metric: Labels,
    pub value: Point,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Series {
    pub metric: Labels,
    pub values: Vec<Point>,
}

/// The `data` of a query answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub enum QueryData {
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
    Scalar(Point),
    String(Point),
}

/// One entry of `GET /api/v1/kappie/shippers` (collector/src/api/shippers.rs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shipper {
    pub shipper_id: String,
    pub node_name: String,
    pub cluster: String,
    #[serde(default)]
    pub version: String,
    pub last_sequence: u64,
    pub last_push_age_seconds: Option<f64>,
    pub series: u64,
    pub samples_last_minute: u64,
}

/// Prometheus's envelope: `data` on success, `errorType` and `error` otherwise.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Value,
    #[serde(rename = "errorType", default)]
    error_type: String,
    #[serde(default)]
    error: String,
}

impl Client {
    /// A client of the API at `server` (`http://host:port`, a trailing `/` is dropped).
    pub fn new(server: &str, auth: Option<Auth>) -> Result<Client, Error> {
        let base = server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!(
                "--server {server:?}: expected a URL such as http://localhost:9090"
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("kappie/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            base: base.to_owned(),
            agent,
            auth,
        })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// `/api/v1/query` at `time` (unix seconds; the server's now when `None`); the raw `data`.
    pub fn query(&self, query: &str, time: Option<f64>) -> Result<Value, Error> {
        let mut form = vec![("query", query.to_owned())];
        if let Some(t) = time {
            form.push(("time", format_time_param(t)));
        }
        self.post_form("/api/v1/query", &form)
    }

    /// `/api/v1/query_range` from `start` to `end` every `step` seconds; the raw `data`.
    pub fn query_range(
        &self,
        query: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Value, Error> {
        self.post_form(
            "/api/v1/query_range",
            &[
                ("query", query.to_owned()),
                ("start", format_time_param(start)),
                ("end", format_time_param(end)),
                ("step", format_time_param(step)),
            ],
        )
    }

    /// An instant query whose answer must be a vector (what the top views ask).
    pub fn query_vector(&self, query: &str) -> Result<Vec<Sample>, Error> {
        match self.decode::<QueryData>("/api/v1/query", self.query(query, None)?)? {
            QueryData::Vector(v) => Ok(v),
            other => Err(Error::Decode {
                url: self.url("/api/v1/query"),
                reason: format!("expected a vector for {query}, got {other:?}"),
            }),
        }
    }

    /// The shipper inventory's `data`, as JSON (entries kept whole for `-o json`).
    pub fn shippers(&self) -> Result<Vec<Value>, Error> {
        let path = "/api/v1/kappie/shippers";
        let url = self.url(path);
        let resp = self.send(&url, self.request("GET", &url).call())?;
        self.decode(path, resp)
    }

    /// Parses `data` as `T`.
    pub fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        data: Value,
    ) -> Result<T, Error> {
        serde_json::from_value(data).map_err(|e| Error::Decode {
            url: self.url(path),
            reason: e.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let req = self.agent.request(method, url);
        match &self.auth {
            Some(a) => req.set("Authorization", &a.header()),
            None => req,
        }
    }

    fn post_form(&self, path: &str, form: &[(&str, String)]) -> Result<Value, Error> {
        let url = self.url(path);
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sent = self.request("POST", &url).send_form(&pairs);
        self.send(&url, sent)
    }

    /// The `data` of a successful answer, or the error the answer (or its absence) means.
    fn send(&self, url: &str, result: Result<ureq::Response, ureq::Error>) -> Result<Value, Error> {
        let (status, resp) = match result {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(ureq::Error::Transport(t)) => {
                return Err(Error::Unreachable {
                    url: self.base.clone(),
                    reason: transport_reason(&t),
                })
            }
        };
        let mut body = String::new();
        resp.into_reader()
            .take(MAX_BODY_BYTES)
            .read_to_string(&mut body)
            .map_err(|e| Error::Unreachable {
                url: self.base.clone(),
                reason: format!("reading the answer: {e}"),
            })?;
        if status == 401 || status == 403 {
            return Err(Error::Unauthorized {
                url: self.base.clone(),
                status,
                sent_credentials: self.auth.is_some(),
            });
        }
        let envelope: Option<Envelope> = serde_json::from_str(&body).ok();
        match envelope {
            Some(e) if status < 300 && e.status == "success" => Ok(e.data),
            Some(e) if e.status == "error" && (status == 400 || status == 422) => {
                Err(Error::BadQuery {
                    error_type: e.error_type,
                    error: e.error,
                })
            }
            Some(e) if e.status == "error" => Err(Error::Http {
                url: url.to_owned(),
                status,
                message: format!("{}: {}", e.error_type, e.error),
            }),
            _ if status >= 300 => Err(Error::Http {
                url: url.to_owned(),
                status,
                message: snippet(&body),
            }),
            _ => Err(Error::Decode {
                url: url.to_owned(),
                reason: format!("not the Prometheus JSON envelope: {}", snippet(&body)),
            }),
        }
    }
}

/// A time or step as the API reads it: seconds with at most millisecond precision.
fn format_time_param(t: f64) -> String {
    let s = format!("{t:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"), which
/// says more than ureq's wrapper text.
fn transport_reason(t: &ureq::Transport) -> String {
    let mut reason = t.to_string();
    let mut source = std::error::Error::source(t);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}

/// The start of a body for an error message, on one line.
fn snippet(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let t = one_line.trim();
    if t.is_empty() {
        "(empty body)".to_owned()
    } else {
        t.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_data_of_each_result_type_parses() {
        let v: QueryData = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1700000000.5,"2"]}]}"#,
        )
        .unwrap();
        let QueryData::Vector(s) = v else {
            panic!("{v:?}")
        };
        assert_eq!(s[0].metric["a"], "b");
        assert_eq!(s[0].value, Point(1_700_000_000.5, "2".into()));
        let m: QueryData = serde_json::from_str(
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"NaN"]]}]}"#,
        )
        .unwrap();
        assert!(
            matches!(&m, QueryData::Matrix(s) if s[0].values.len() == 2),
            "{m:?}"
        );
        let sc: QueryData =
            serde_json::from_str(r#"{"resultType":"scalar","result":[1,"+Inf"]}"#).unwrap();
        assert_eq!(sc, QueryData::Scalar(Point(1.0, "+Inf".into())));
        let st: QueryData =
            serde_json::from_str(r#"{"resultType":"string","result":[1,"x"]}"#).unwrap();
        assert_eq!(st, QueryData::String(Point(1.0, "x".into())));
    }

    #[test]
    fn prometheus_value_text_parses() {
        assert_eq!(parse_value("1.5"), 1.5);
        assert_eq!(parse_value("+Inf"), f64::INFINITY);
        assert_eq!(parse_value("-Inf"), f64::NEG_INFINITY);
        assert!(parse_value("NaN").is_nan());
        assert_eq!(parse_value("1e+06"), 1e6);
    }

    #[test]
    fn basic_auth_needs_a_user_and_a_colon() {
        assert_eq!(
            Auth::basic("ann:s3:cret").unwrap(),
            Auth::Basic {
                user: "ann".into(),
                password: "s3:cret".into()
            }
        );
        assert!(Auth::basic("ann").is_err());
        assert!(Auth::basic(":pw").is_err());
        assert_eq!(Auth::basic("ann:pw").unwrap().header(), "Basic YW5uOnB3");
        assert_eq!(Auth::bearer(" tok\n", "f").unwrap().header(), "Bearer tok");
        assert!(Auth::bearer("\n", "f").is_err());
        assert_eq!(
            format!("{:?}", Auth::basic("ann:pw").unwrap()),
            "Basic(ann:***)"
        );
    }

    #[test]
    fn time_parameters_keep_milliseconds() {
        assert_eq!(format_time_param(1_700_000_000.0), "1700000000");
        assert_eq!(format_time_param(1_700_000_000.25), "1700000000.25");
        assert_eq!(format_time_param(60.0), "60");
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let unreachable = Error::Unreachable {
            url: "http://localhost:9090".into(),
            reason: "Connection refused".into(),
        };
        assert_eq!(unreachable.exit_code(), 2);
        assert!(unreachable
            .to_string()
            .contains("kubectl -n kappie port-forward"));
        let bad = Error::BadQuery {
            error_type: "bad_data".into(),
            error: "parse error".into(),
        };
        assert_eq!(bad.exit_code(), 1);
        let unauthorized = Error::Unauthorized {
            url: "u".into(),
            status: 401,
            sent_credentials: false,
        };
        assert_eq!(unauthorized.exit_code(), 2);
        assert!(unauthorized.to_string().contains("--token-file"));
        assert!(unauthorized.to_string().contains("--user"));
    }
}

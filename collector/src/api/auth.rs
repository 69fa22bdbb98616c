//! Authentication of the HTTP API (issue 16), as Prometheus's web config does it: a bearer
//! token (`--http-auth-token-file`) and/or basic auth users with bcrypt-hashed passwords
//! (`--http-auth-users-file`, lines `user:$2y$...`, as `htpasswd -nB` writes them). Both
//! files are read again when they change (a rotated Kubernetes Secret). Off when neither is
//! set; the health endpoints are never behind it.

use crate::watched::Watched;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// Most verified `user:password` pairs remembered (bcrypt takes tens of milliseconds a
/// check; Grafana sends the same credentials with every request).
const VERIFIED_CACHE: usize = 1024;

/// The one file of a credential, parsed by `parse` (errors name the file).
fn read_one<T>(paths: &[PathBuf], parse: fn(&str) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let path = &paths[0];
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn read_token(paths: &[PathBuf]) -> anyhow::Result<String> {
    read_one(paths, parse_token)
}

fn read_users(paths: &[PathBuf]) -> anyhow::Result<HashMap<String, String>> {
    read_one(paths, parse_users)
}

fn parse_token(text: &str) -> anyhow::Result<String> {
    let t = text.trim();
    if t.is_empty() {
        anyhow::bail!("the token file is empty");
    }
    Ok(t.to_owned())
}

fn parse_users(text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("line {}: expected user:bcrypt-hash", i + 1))?;
        if !hash.starts_with("$2") {
            anyhow::bail!(
                "line {}: the password of {user:?} is not a bcrypt hash (htpasswd -nB {user})",
                i + 1
            );
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    if users.is_empty() {
        anyhow::bail!("no users in the users file");
    }
    Ok(users)
}

struct Credentials {
    token: Option<Watched<String>>,
    users: Option<Watched<HashMap<String, String>>>,
    /// `user:password` pairs bcrypt accepted, for the users file as it is now.
    verified: HashSet<String>,
}

/// The HTTP API's credentials.
pub struct HttpAuth(Mutex<Credentials>);

impl HttpAuth {
    /// `None` when neither file is given (no authentication). The files are read now, so a
    /// bad one stops the start with its reason.
    pub fn new(
        token_file: Option<&Path>,
        users_file: Option<&Path>,
    ) -> anyhow::Result<Option<Arc<HttpAuth>>> {
        if token_file.is_none() && users_file.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(HttpAuth(Mutex::new(Credentials {
            token: token_file
                .map(|p| Watched::load(vec![p.to_owned()], read_token))
                .transpose()?,
            users: users_file
                .map(|p| Watched::load(vec![p.to_owned()], read_users))
                .transpose()?,
            verified: HashSet::new(),
        })))))
    }

    /// The `WWW-Authenticate` challenge of a 401: `Basic` when users are configured, so a
    /// browser (the web console) asks for a user name and password; `Bearer` with only a
    /// token, which a browser cannot ask for (the console shows a form instead of a useless
    /// password prompt).
    fn challenge(&self) -> HeaderValue {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        HeaderValue::from_static(if c.users.is_some() {
            "Basic realm=\"kappie\""
        } else {
            "Bearer realm=\"kappie\""
        })
    }

    fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(given) = value.strip_prefix("Bearer ") {
            return match &mut c.token {
                Some(t) => {
                    t.refresh("HTTP API token");
                    bool::from(given.trim().as_bytes().ct_eq(t.get().as_bytes()))
                }
                None => false,
            };
        }
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        use base64::Engine;
        let Some(pair) = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return false;
        };
        let Some((user, password)) = pair.split_once(':') else {
            return false;
        };
        let Some(users) = &mut c.users else {
            return false;
        };
        if users.refresh("HTTP API users") {
            c.verified.clear();
        }
        if c.verified.contains(&pair) {
            return true;
        }
        let Some(hash) = c.users.as_ref().and_then(|u| u.get().get(user)).cloned() else {
            return false;
        };
        // bcrypt is slow on purpose; the lock is held meanwhile, which also slows guessing.
        let ok = bcrypt::verify(password, &hash).unwrap_or(false);
        if ok {
            if c.verified.len() >= VERIFIED_CACHE {
                c.verified.clear();
            }
            c.verified.insert(pair);
        }
        ok
    }
}

/// Middleware: lets a request through only with valid credentials; 401 otherwise, with
/// Prometheus's error JSON.
pub(super) async fn require(
    State(auth): State<Arc<HttpAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).cloned();
    let allowed = {
        let auth = auth.clone();
        tokio::task::spawn_blocking(move || auth.allows(header.as_ref()))
            .await
            .unwrap_or(false)
    };
    if allowed {
        return next.run(req).await;
    }
    let mut resp = super::ApiError {
        status: StatusCode::UNAUTHORIZED,
        error_type: "unauthorized",
        message: "authentication required: a bearer token or basic auth credentials \
                  (--http-auth-token-file, --http-auth-users-file)"
            .into(),
    }
    .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, auth.challenge());
    resp
}

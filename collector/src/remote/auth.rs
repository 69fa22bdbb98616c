//! Credentials for remote write destinations: a bearer token read from a file (read again
//! when the file changes), basic auth (encoded by reqwest), and OAuth2 access tokens from Microsoft Entra ID by
//! client credentials or from a managed identity endpoint, cached and refreshed at 80 % of
//! their lifetime. Every token endpoint is configurable, so tests point them at loopback.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// How a destination authenticates (`[remote_write.auth]`, `type = ...`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    #[default]
    None,
    /// `Authorization: Bearer <file contents>`; the file is read again when it changes.
    Bearer { token_file: PathBuf },
    /// `Authorization: Basic ...`; the password inline or from a file.
    Basic {
        username: String,
        password: Option<String>,
        password_file: Option<PathBuf>,
    },
    /// Microsoft Entra ID client credentials (an app registration with a secret).
    EntraClientCredentials {
        tenant_id: String,
        client_id: String,
        client_secret: Option<String>,
        client_secret_file: Option<PathBuf>,
        /// Azure Monitor's: `https://monitor.azure.com/.default`.
        #[serde(default = "default_scope")]
        scope: String,
        /// Default `https://login.microsoftonline.com/<tenant_id>/oauth2/v2.0/token`.
        token_url: Option<String>,
    },
    /// An Azure managed identity (IMDS); `client_id` picks a user-assigned identity.
    ManagedIdentity {
        client_id: Option<String>,
        /// Azure Monitor's: `https://monitor.azure.com/`.
        #[serde(default = "default_resource")]
        resource: String,
        /// Default `http://169.254.169.254/metadata/identity/oauth2/token`.
        endpoint: Option<String>,
    },
    /// Microsoft Entra Workload Identity (AKS): a client-credentials request whose client
    /// assertion is the Kubernetes service account token the workload identity webhook
    /// projects into the pod. Every field defaults to the variable the webhook sets
    /// (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`,
    /// `AZURE_AUTHORITY_HOST`). The token file is read again for every token request (the
    /// kubelet rotates it).
    WorkloadIdentity {
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
        /// Default `AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com/`.
        authority_host: Option<String>,
        #[serde(default = "default_scope")]
        scope: String,
        /// Default `<authority_host><tenant_id>/oauth2/v2.0/token`.
        token_url: Option<String>,
    },
}

fn default_scope() -> String {
    "https://monitor.azure.com/.default".into()
}

fn default_resource() -> String {
    "https://monitor.azure.com/".into()
}

/// A cached access token and when to fetch the next one.
struct Cached {
    token: String,
    refresh_at: Instant,
}

enum Kind {
    None,
    Bearer {
        file: PathBuf,
        cached: std::sync::Mutex<Option<(SystemTime, String)>>,
    },
    Basic {
        username: String,
        password: String,
    },
    OAuth {
        request: TokenRequest,
        cached: tokio::sync::Mutex<Option<Cached>>,
    },
}

enum TokenRequest {
    Entra {
        url: String,
        form: Vec<(String, String)>,
    },
    Imds {
        url: String,
    },
    /// Client credentials with a client assertion read from `assertion_file` each time.
    Federated {
        url: String,
        form: Vec<(String, String)>,
        assertion_file: PathBuf,
    },
}

/// A setting, else the environment variable the workload identity webhook sets.
fn setting_or_env(v: &Option<String>, var: &str, what: &str) -> Result<String, String> {
    match v {
        Some(s) => Ok(s.clone()),
        None => std::env::var(var).map_err(|_| {
            format!("workload_identity needs {what}: set it, or {var} (the workload identity webhook sets it when the pod has the label azure.workload.identity/use=true)")
        }),
    }
}

/// Produces the `Authorization` header value for each request.
pub struct Auth {
    kind: Kind,
    client: reqwest::Client,
}

fn read_secret(path: &PathBuf, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {what} from {}: {e}", path.display()))
}

fn inline_or_file(
    inline: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
) -> Result<String, String> {
    match (inline, file) {
        (Some(s), None) => Ok(s.clone()),
        (None, Some(f)) => read_secret(f, what),
        _ => Err(format!("give exactly one of {what} and {what}_file")),
    }
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Result<Auth, String> {
        let kind = match cfg {
            AuthConfig::None => Kind::None,
            AuthConfig::Bearer { token_file } => Kind::Bearer {
                file: token_file.clone(),
                cached: std::sync::Mutex::new(None),
            },
            AuthConfig::Basic {
                username,
                password,
                password_file,
            } => Kind::Basic {
                username: username.clone(),
                password: inline_or_file(password, password_file, "password")?,
            },
            AuthConfig::EntraClientCredentials {
                tenant_id,
                client_id,
                client_secret,
                client_secret_file,
                scope,
                token_url,
            } => {
                let secret = inline_or_file(client_secret, client_secret_file, "client_secret")?;
                Kind::OAuth {
                    request: TokenRequest::Entra {
                        url: token_url.clone().unwrap_or_else(|| {
                            format!(
                                "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token"
                            )
                        }),
                        form: vec![
                            ("grant_type".into(), "client_credentials".into()),
                            ("client_id".into(), client_id.clone()),
                            ("client_secret".into(), secret),
                            ("scope".into(), scope.clone()),
                        ],
                    },
                    cached: tokio::sync::Mutex::new(None),
                }
            }
            AuthConfig::ManagedIdentity {
                client_id,
                resource,
                endpoint,
            } => {
                let base = endpoint.clone().unwrap_or_else(|| {
                    "http://169.254.169.254/metadata/identity/oauth2/token".into()
                });
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("api-version", "2018-02-01");
                q.append_pair("resource", resource);
                if let Some(id) = client_id {
                    q.append_pair("client_id", id);
                }
                Kind::OAuth {
                    request: TokenRequest::Imds {
                        url: format!("{base}?{}", q.finish()),
                    },
                    cached: tokio::sync::Mutex::new(None),
                }
            }
            AuthConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
                authority_host,
                scope,
                token_url,
            } => {
                let tenant = setting_or_env(tenant_id, "AZURE_TENANT_ID", "tenant_id")?;
                let client = setting_or_env(client_id, "AZURE_CLIENT_ID", "client_id")?;
                let file = match token_file {
                    Some(f) => f.clone(),
                    None => PathBuf::from(setting_or_env(
                        &None,
                        "AZURE_FEDERATED_TOKEN_FILE",
                        "token_file",
                    )?),
                };
                let url = match token_url {
                    Some(u) => u.clone(),
                    None => {
                        let host = authority_host
                            .clone()
                            .or_else(|| std::env::var("AZURE_AUTHORITY_HOST").ok())
                            .unwrap_or_else(|| "https://login.microsoftonline.com/".into());
                        format!("{}/{tenant}/oauth2/v2.0/token", host.trim_end_matches('/'))
                    }
                };
                Kind::OAuth {
                    request: TokenRequest::Federated {
                        url,
                        form: vec![
                            ("grant_type".into(), "client_credentials".into()),
                            ("client_id".into(), client),
                            ("scope".into(), scope.clone()),
                            (
                                "client_assertion_type".into(),
                                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                            ),
                        ],
                        assertion_file: file,
                    },
                    cached: tokio::sync::Mutex::new(None),
                }
            }
        };
        Ok(Auth {
            kind,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| e.to_string())?,
        })
    }

    /// Adds the credentials to a request.
    pub async fn apply(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, String> {
        Ok(match (&self.kind, self.header().await?) {
            (Kind::Basic { username, password }, _) => req.basic_auth(username, Some(password)),
            (_, Some(h)) => req.header(reqwest::header::AUTHORIZATION, h),
            (_, None) => req,
        })
    }

    /// The `Authorization` header value of token credentials, if any.
    async fn header(&self) -> Result<Option<String>, String> {
        match &self.kind {
            Kind::None | Kind::Basic { .. } => Ok(None),
            Kind::Bearer { file, cached } => {
                let mtime = std::fs::metadata(file)
                    .and_then(|m| m.modified())
                    .map_err(|e| format!("cannot read token file {}: {e}", file.display()))?;
                let mut c = cached.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((m, t)) = c.as_ref() {
                    if *m == mtime {
                        return Ok(Some(format!("Bearer {t}")));
                    }
                }
                let t = read_secret(file, "bearer token")?;
                *c = Some((mtime, t.clone()));
                Ok(Some(format!("Bearer {t}")))
            }
            Kind::OAuth { request, cached } => {
                let mut c = cached.lock().await;
                if let Some(t) = c.as_ref() {
                    if Instant::now() < t.refresh_at {
                        return Ok(Some(format!("Bearer {}", t.token)));
                    }
                }
                let fresh = self.fetch(request).await?;
                let header = format!("Bearer {}", fresh.token);
                *c = Some(fresh);
                Ok(Some(header))
            }
        }
    }

    async fn fetch(&self, req: &TokenRequest) -> Result<Cached, String> {
        let resp = match req {
            TokenRequest::Entra { url, form } => self.client.post(url).form(form).send().await,
            TokenRequest::Imds { url } => {
                self.client.get(url).header("Metadata", "true").send().await
            }
            TokenRequest::Federated {
                url,
                form,
                assertion_file,
            } => {
                let assertion = read_secret(assertion_file, "federated token")?;
                let mut form = form.clone();
                form.push(("client_assertion".into(), assertion));
                self.client.post(url).form(&form).send().await
            }
        }
        .map_err(|e| format!("token endpoint unreachable: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("token endpoint answered {status} without JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "token endpoint answered {status}: {}",
                body.get("error_description")
                    .or_else(|| body.get("error"))
                    .unwrap_or(&body)
            ));
        }
        let token = body["access_token"]
            .as_str()
            .ok_or("token response has no access_token")?
            .to_owned();
        // Entra sends a number, IMDS a string.
        let expires_in = match &body["expires_in"] {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(300.0)
        .max(1.0);
        Ok(Cached {
            token,
            refresh_at: Instant::now() + Duration::from_secs_f64(expires_in * 0.8),
        })
    }
}

//! The token issuer's public keys, as a JWK set: read from a file (read again when it
//! changes), or fetched from a URL — in Kubernetes the API server's `/openid/v1/jwks` —
//! at start, every few minutes, and at once (at most every [`REFETCH_AT_MOST_EVERY`]) when a
//! token names a key the set lacks, so a rotated signing key is picked up within a call.

use crate::watched::Watched;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a URL's key set is fetched again.
pub const REFETCH_EVERY: Duration = Duration::from_secs(300);
/// A token with an unknown key id fetches the set again, but not more often than this.
pub const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// Public keys by key id, each with the algorithms it may verify.
pub struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl KeySet {
    /// The signature keys of a JWK set (`{"keys": [...]}`); keys for encryption, of other
    /// types (HMAC secrets among them) and curves are left out. An error when none is left.
    pub fn parse(json: &[u8]) -> anyhow::Result<KeySet> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(json)
            .map_err(|e| anyhow::anyhow!("not a JWK set ({{\"keys\": [...]}}): {e}"))?;
        let mut keys = Vec::new();
        for (i, v) in set.keys.into_iter().enumerate() {
            match key(v) {
                Ok(k) => keys.push(k),
                Err(why) => tracing::debug!(index = i, why, "JWK set entry not used"),
            }
        }
        if keys.is_empty() {
            anyhow::bail!("the JWK set has no RSA or P-256/P-384 EC signature key");
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that may have signed a token whose header says `kid` and `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(move |k| k.algorithms.contains(&alg))
            .map(|k| &k.key)
    }
}

const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn key(v: serde_json::Value) -> Result<Key, &'static str> {
    let jwk: Jwk = serde_json::from_value(v).map_err(|_| "not a JWK")?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key");
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("unsupported curve"),
        },
        _ => return Err("unsupported key type"),
    };
    // A key that names its algorithm verifies that one only.
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(a) => {
            let a = Algorithm::try_from(a).map_err(|_| "unsupported algorithm")?;
            if !by_type.contains(&a) {
                return Err("algorithm does not fit the key type");
            }
            vec![a]
        }
    };
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: DecodingKey::from_jwk(&jwk).map_err(|_| "unusable key parameters")?,
    })
}

/// Where the keys come from.
pub enum Keys {
    File(Mutex<Watched<Arc<KeySet>>>),
    Url(Arc<Fetched>),
}

fn read_file(paths: &[PathBuf]) -> anyhow::Result<Arc<KeySet>> {
    let p = &paths[0];
    let bytes =
        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
    Ok(Arc::new(
        KeySet::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
    ))
}

impl Keys {
    /// The key set in `path` (a bad file stops the start with its reason).
    pub fn file(path: PathBuf) -> anyhow::Result<Keys> {
        Ok(Keys::File(Mutex::new(Watched::load(
            vec![path],
            read_file,
        )?)))
    }

    /// The current set; `Err` with the reason while a URL's set has never been fetched.
    pub fn current(&self) -> Result<Arc<KeySet>, String> {
        match self {
            Keys::File(w) => {
                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                w.refresh("shipper token JWK set");
                Ok(w.get().clone())
            }
            Keys::Url(f) => f.current(),
        }
    }

    /// A token named a key the set lacks: a URL's set is fetched again (rate-limited);
    /// true when that gave a new set. A file's set is read again when the file changes.
    pub async fn key_missing(&self) -> bool {
        match self {
            Keys::File(_) => false,
            Keys::Url(f) => f.fetch_if_due(REFETCH_AT_MOST_EVERY).await,
        }
    }
}

/// How to fetch the set from a URL.
#[derive(Debug, Clone)]
pub struct UrlSource {
    pub url: String,
    /// PEM CA bundle to trust instead of the built-in roots (the API server's CA).
    pub ca_file: Option<PathBuf>,
    /// File with a bearer token for the request (the collector's own ServiceAccount token);
    /// read at each fetch, as the kubelet rotates it.
    pub bearer_file: Option<PathBuf>,
    /// Also read the tokens' issuer from the OpenID discovery document on the same host
    /// (`/.well-known/openid-configuration`, as the API server serves it).
    pub discover_issuer: bool,
}

/// A key set fetched from a URL, and what the last fetch said.
pub struct Fetched {
    source: UrlSource,
    state: Mutex<FetchState>,
    /// Held while fetching, so concurrent calls that miss a key fetch once; when the last
    /// fetch on demand started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

struct FetchState {
    keys: Option<Arc<KeySet>>,
    issuer: Option<String>,
    last_error: Option<String>,
}

impl Fetched {
    pub fn new(source: UrlSource) -> Arc<Fetched> {
        Arc::new(Fetched {
            source,
            state: Mutex::new(FetchState {
                keys: None,
                issuer: None,
                last_error: None,
            }),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.source.url
    }

    /// The issuer the discovery document named (with `discover_issuer`, once fetched).
    pub fn issuer(&self) -> Option<String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.issuer.clone()
    }

    fn current(&self) -> Result<Arc<KeySet>, String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.keys.clone().ok_or_else(|| {
            format!(
                "the token issuer's keys are not loaded yet from {}{}",
                self.source.url,
                st.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )
        })
    }

    /// Fetches the set on demand (a token named a key the set lacks), unless the last
    /// such fetch started less than `min_gap` ago; true when a new set was stored.
    pub async fn fetch_if_due(&self, min_gap: Duration) -> bool {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < min_gap) {
            return false;
        }
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    /// Fetches the set now; true when a new set was stored. Callers hold `fetching`.
    async fn fetch_and_store(&self) -> bool {
        let result = self.fetch().await;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok((keys, issuer)) => {
                tracing::info!(url = %self.source.url, keys = keys.len(), ?issuer, "shipper token keys fetched");
                st.keys = Some(Arc::new(keys));
                if issuer.is_some() {
                    st.issuer = issuer;
                }
                st.last_error = None;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the shipper token keys; keeping the ones we have");
                st.last_error = Some(e);
                false
            }
        }
    }

    /// The key set, and the issuer when it is to be discovered.
    async fn fetch(&self) -> Result<(KeySet, Option<String>), String> {
        let issuer = if self.source.discover_issuer {
            let mut url = reqwest::Url::parse(&self.source.url)
                .map_err(|e| format!("{}: {e}", self.source.url))?;
            url.set_path("/.well-known/openid-configuration");
            url.set_query(None);
            #[derive(serde::Deserialize)]
            struct Discovery {
                issuer: String,
            }
            let body = get(&self.source, url.as_str()).await?;
            let d: Discovery = serde_json::from_slice(&body)
                .map_err(|e| format!("{url}: not an OpenID discovery document: {e}"))?;
            Some(d.issuer)
        } else {
            None
        };
        let body = get(&self.source, &self.source.url).await?;
        let keys = KeySet::parse(&body).map_err(|e| format!("{}: {e}", self.source.url))?;
        Ok((keys, issuer))
    }

    /// Fetches the set now and then every [`REFETCH_EVERY`] (every few seconds, backing off,
    /// while it has never been fetched) until `stop`.
    pub async fn refresh_until(self: Arc<Self>, mut stop: tokio::sync::broadcast::Receiver<()>) {
        let mut retry = Duration::from_secs(1);
        loop {
            let fetched = {
                let _one_at_a_time = self.fetching.lock().await;
                self.fetch_and_store().await
            };
            let wait = if fetched || self.current().is_ok() {
                REFETCH_EVERY
            } else {
                retry = (retry * 2).min(Duration::from_secs(60));
                retry
            };
            tokio::select! {
                _ = stop.recv() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The body of `GET url` with the source's CA and bearer token.
pub async fn get(source: &UrlSource, url: &str) -> Result<Vec<u8>, String> {
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("kappie-collector/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &source.ca_file {
        b = b.tls_built_in_root_certs(false);
        for c in reqwest::Certificate::from_pem_bundle(&read(ca)?)
            .map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?
        {
            b = b.add_root_certificate(c);
        }
    }
    let client = b.build().map_err(|e| e.to_string())?;
    let mut req = client.get(url).header("accept", "application/json");
    if let Some(f) = &source.bearer_file {
        let token =
            String::from_utf8(read(f)?).map_err(|_| format!("{} is not text", f.display()))?;
        req = req.bearer_auth(token.trim());
    }
    let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 => " (the bearer token was refused: --shipper-token-bearer-file)",
            403 => " (not allowed: bind the ClusterRole system:service-account-issuer-discovery to the collector's ServiceAccount)",
            _ => "",
        };
        return Err(format!("GET {url}: {status}{hint}"));
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("GET {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the API server serves (`kubectl get --raw /openid/v1/jwks`), with an HMAC
    /// secret and an encryption key added: those two are never used.
    #[test]
    fn only_signature_keys_of_known_types_are_kept() {
        let n = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";
        let set = format!(
            r#"{{"keys":[
              {{"use":"sig","kty":"RSA","kid":"k1","alg":"RS256","n":"{n}","e":"AQAB"}},
              {{"kty":"oct","kid":"h","k":"c2VjcmV0"}},
              {{"use":"enc","kty":"RSA","kid":"e","n":"{n}","e":"AQAB"}}
            ]}}"#
        );
        let keys = KeySet::parse(set.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.candidates(Some("k1"), Algorithm::RS256).count(), 1);
        assert_eq!(keys.candidates(Some("k1"), Algorithm::PS256).count(), 0);
        assert_eq!(keys.candidates(Some("h"), Algorithm::HS256).count(), 0);
        assert_eq!(keys.candidates(None, Algorithm::RS256).count(), 1);
        assert!(KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(KeySet::parse(b"[]").is_err());
    }
}

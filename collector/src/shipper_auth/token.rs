//! Shipper ServiceAccount tokens: a JWT the kubelet projects into the shipper pod (audience
//! `kappie`), sent as `authorization: Bearer ...` on every call. Valid when its signature
//! verifies with one of the issuer's keys, it is within exp/nbf (with [`LEEWAY_SECONDS`]), its
//! `iss` and `aud` are the expected ones and its `sub` is an allowed ServiceAccount; it then
//! vouches for the node in its `kubernetes.io.node.name` claim, which the API server puts in
//! tokens bound to a pod since Kubernetes 1.30 (ServiceAccountTokenPodNodeInfo; docs/security.md).

use super::jwks::{KeySet, Keys};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, Header, Validation};
use serde::Deserialize;
use tonic::Status;

/// Clock difference allowed when checking exp and nbf.
pub const LEEWAY_SECONDS: u64 = 30;

const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// What a token must say.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Expected `iss`; `None`: the one the key URL's discovery document names.
    pub issuer: Option<String>,
    /// Expected in `aud`.
    pub audience: String,
    /// Allowed `sub` values (`system:serviceaccount:<namespace>:<name>`).
    pub subjects: Vec<String>,
}

/// Verifies shipper tokens.
pub struct Verifier {
    keys: Keys,
    policy: TokenPolicy,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    node: Option<NameRef>,
}

#[derive(Deserialize)]
struct NameRef {
    name: String,
}

fn refused(why: impl std::fmt::Display) -> Status {
    Status::unauthenticated(format!("ServiceAccount token refused: {why}"))
}

/// What checking a token against one key set gave.
enum Checked {
    Valid(Claims),
    /// No key of the set has the token's key id and algorithm.
    NoKey,
    Invalid(Status),
}

impl Verifier {
    pub fn new(keys: Keys, policy: TokenPolicy) -> Verifier {
        super::ring_jwt::install();
        Verifier { keys, policy }
    }

    /// The node a valid `token` vouches for; UNAUTHENTICATED saying why not (never echoing
    /// the token), UNAVAILABLE while the issuer's keys are not loaded.
    pub async fn node_of(&self, token: &str) -> Result<String, Status> {
        let header = decode_header(token).map_err(|_| refused("it is not a JWT"))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(refused(format!(
                "it is signed with {:?}; accepted are RS256/384/512, PS256/384/512, ES256, ES384",
                header.alg
            )));
        }
        let issuer = match (&self.policy.issuer, &self.keys) {
            (Some(i), _) => i.clone(),
            (None, Keys::Url(f)) => f.issuer().ok_or_else(|| {
                Status::unavailable(format!(
                    "the token issuer is not known yet (read from the discovery document beside {})",
                    f.url()
                ))
            })?,
            (None, Keys::File(_)) => return Err(Status::internal("no token issuer configured")),
        };
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECONDS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&issuer]);
        v.set_audience(&[&self.policy.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

        let keys = self.keys.current().map_err(Status::unavailable)?;
        let mut checked = self.check(&keys, token, &header, &v, &issuer);
        if matches!(checked, Checked::NoKey) && self.keys.key_missing().await {
            let keys = self.keys.current().map_err(Status::unavailable)?;
            checked = self.check(&keys, token, &header, &v, &issuer);
        }
        let claims = match checked {
            Checked::Valid(c) => c,
            Checked::NoKey => {
                return Err(refused(format!(
                    "no key of the issuer has id {:?} for {:?}",
                    header.kid.as_deref().unwrap_or(""),
                    header.alg
                )))
            }
            Checked::Invalid(st) => return Err(st),
        };
        if !self.policy.subjects.contains(&claims.sub) {
            return Err(refused(format!(
                "subject {:?} is not an allowed shipper ServiceAccount (--shipper-token-subject)",
                claims.sub
            )));
        }
        match claims.kubernetes.and_then(|k| k.node).map(|n| n.name) {
            Some(node) if !node.is_empty() => Ok(node),
            _ => Err(refused(
                "it has no kubernetes.io.node.name claim (a projected token of a pod, Kubernetes 1.30 or later)",
            )),
        }
    }

    fn check(
        &self,
        keys: &KeySet,
        token: &str,
        header: &Header,
        v: &Validation,
        issuer: &str,
    ) -> Checked {
        let mut any = false;
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            any = true;
            let e = match decode::<Claims>(token, key, v) {
                Ok(t) => return Checked::Valid(t.claims),
                Err(e) => e,
            };
            let why = match e.kind() {
                // Another key of the same id may verify it.
                ErrorKind::InvalidSignature => continue,
                ErrorKind::ExpiredSignature => "it has expired".to_owned(),
                ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidIssuer => format!(
                    "its issuer is {}, not {issuer:?} (--shipper-token-issuer)",
                    claim(token, "iss")
                ),
                ErrorKind::InvalidAudience => format!(
                    "its audience is {}, not {:?} (--shipper-token-audience)",
                    claim(token, "aud"),
                    self.policy.audience
                ),
                ErrorKind::MissingRequiredClaim(c) => format!("it has no {c} claim"),
                _ => format!("it is malformed ({e})"),
            };
            return Checked::Invalid(refused(why));
        }
        if any {
            Checked::Invalid(refused(
                "its signature does not verify with the issuer's keys",
            ))
        } else {
            Checked::NoKey
        }
    }
}

/// A claim of a token whose signature was verified, as JSON, for messages.
fn claim(token: &str, name: &str) -> String {
    jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
        .map(|c| c[name].to_string())
        .unwrap_or_else(|_| "unreadable".into())
}

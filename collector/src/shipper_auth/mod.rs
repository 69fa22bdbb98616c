//! Who a shipper is, and which node it may write as (issue 16). The one place that decides:
//! a shipper proves its node with a client certificate naming it (`--tls-client-ca-file`),
//! a ServiceAccount token whose `kubernetes.io.node.name` claim names it
//! (`--shipper-token-jwks-file` / `--shipper-token-jwks-url`), or both (then both must name the
//! same node). A call without a required credential, or with an invalid one, is
//! UNAUTHENTICATED; a call that writes as another node than its credentials name is
//! PERMISSION_DENIED, logged and counted in [`REFUSED_UNAUTHORIZED`].

pub mod jwks;
pub mod ring_jwt;
pub mod token;

use rustls_pki_types::CertificateDer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tonic::{Request, Status};

/// Calls refused because the shipper wrote as a node its credentials do not name.
pub static REFUSED_UNAUTHORIZED: AtomicU64 = AtomicU64::new(0);

/// Which credentials the gRPC port requires.
#[derive(Clone, Default)]
pub struct ShipperAuth {
    /// A client certificate (the TLS handshake verified it against the client CA).
    pub client_certificates: bool,
    /// A ServiceAccount token.
    pub tokens: Option<Arc<token::Verifier>>,
}

/// The node a credential names, for messages.
enum Named {
    Certificate(CertificateDer<'static>),
    Token(String),
}

/// The verified credentials of one call.
pub struct Caller {
    named: Vec<Named>,
}

impl ShipperAuth {
    /// Whether shippers must authenticate at all.
    pub fn is_on(&self) -> bool {
        self.client_certificates || self.tokens.is_some()
    }

    /// The verified credentials of `req`: each that is required must be there and valid.
    pub async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let mut named = Vec::new();
        if self.client_certificates {
            let cert = req
                .peer_certs()
                .and_then(|c| c.first().cloned())
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "a client certificate is required (--tls-client-ca-file)",
                    )
                })?;
            named.push(Named::Certificate(cert));
        }
        if let Some(v) = &self.tokens {
            let token = bearer(req)?;
            let node = v.node_of(token).await.inspect_err(|st| {
                tracing::warn!(code = ?st.code(), reason = st.message(), "shipper call not authenticated");
            })?;
            named.push(Named::Token(node));
        }
        Ok(Caller { named })
    }
}

/// The token of the `authorization: Bearer ...` metadata.
fn bearer<T>(req: &Request<T>) -> Result<&str, Status> {
    let missing = || {
        Status::unauthenticated(
            "a ServiceAccount token is required (authorization: Bearer; the shipper's --collector-token-file)",
        )
    };
    let value = req.metadata().get("authorization").ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

impl Caller {
    /// `Ok` when every credential of the call names `node` (always, with authentication
    /// off); else PERMISSION_DENIED, logged and counted. `what` says where `node` came from.
    pub fn authorize(&self, node: &str, what: &str) -> Result<(), Status> {
        for n in &self.named {
            let (ok, credential) = match n {
                Named::Certificate(c) => (
                    crate::tls::names_node(c, node),
                    "your client certificate names".to_owned(),
                ),
                Named::Token(t) => (
                    t == node,
                    format!("your ServiceAccount token names ({t:?})"),
                ),
            };
            if !ok {
                REFUSED_UNAUTHORIZED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node,
                    what,
                    "refused: the shipper's credentials do not name this node"
                );
                return Err(Status::permission_denied(format!(
                    "{what} {node:?} is not the node {credential}"
                )));
            }
        }
        Ok(())
    }
}

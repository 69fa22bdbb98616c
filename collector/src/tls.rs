//! TLS for the collector's HTTP and gRPC ports (issue 16): rustls with the certificate and
//! key read from PEM files and read again when either file changes (cert-manager rotates
//! them in place), checked at each handshake. A rotation that cannot be read keeps the old
//! certificate and says so.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The certificate in use and the files' modification times it was read at.
struct Loaded {
    seen: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

/// A server certificate read from files, reread when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    loaded: Mutex<LoadedDebug>,
}

/// `Loaded` with a `Debug` rustls asks of resolvers.
struct LoadedDebug(Loaded);

impl std::fmt::Debug for LoadedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("certificate")
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn read(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| {
            anyhow::anyhow!("cannot read certificates from {}: {e}", cert_file.display())
        })?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        anyhow::anyhow!("cannot read a private key from {}: {e}", key_file.display())
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl ReloadingCert {
    /// Reads the files now (a bad file stops the start with its reason).
    pub fn new(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<ReloadingCert>> {
        let seen = (modified(cert_file), modified(key_file));
        let key = read(cert_file, key_file)?;
        Ok(Arc::new(ReloadingCert {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            loaded: Mutex::new(LoadedDebug(Loaded { seen, key })),
        }))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut l = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let now = (modified(&self.cert_file), modified(&self.key_file));
        if now != l.0.seen {
            l.0.seen = now;
            match read(&self.cert_file, &self.key_file) {
                Ok(key) => {
                    l.0.key = key;
                    tracing::info!(cert = %self.cert_file.display(), "TLS certificate read again");
                }
                // A half-written rotation: the next handshake after the files change again
                // tries anew.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the changed TLS certificate; keeping the old one")
                }
            }
        }
        l.0.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS acceptor offering `alpn` (e.g. `h2`, `http/1.1`) with the certificate of `cert`;
/// with `client_ca` (a PEM file), clients must present a certificate that CA signed.
pub fn acceptor(
    cert: Arc<ReloadingCert>,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Whether `cert` (a client certificate the handshake already verified) names `node`: a
/// DNS subject alternative name equal to it (Kubernetes node names are DNS names).
pub fn names_node(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(node) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|c| c.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

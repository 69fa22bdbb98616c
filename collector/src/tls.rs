//! TLS for the collector's HTTP and gRPC ports (issue 16): rustls with the certificate and
//! key read from PEM files and read again when either file changes (cert-manager rotates
//! them in place), checked at each handshake. A rotation that cannot be read keeps the old
//! certificate and says so.

use crate::watched::Watched;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A server certificate read from its certificate and key files, reread when they change.
pub struct ReloadingCert(Mutex<Watched<Arc<CertifiedKey>>>);

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingCert")
    }
}

/// The certified key of `[certificate file, key file]`.
fn read(paths: &[PathBuf]) -> anyhow::Result<Arc<CertifiedKey>> {
    let (cert_file, key_file) = (&paths[0], &paths[1]);
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
        let paths = vec![cert_file.to_owned(), key_file.to_owned()];
        Ok(Arc::new(ReloadingCert(Mutex::new(Watched::load(
            paths, read,
        )?))))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.refresh("TLS certificate");
        w.get().clone()
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

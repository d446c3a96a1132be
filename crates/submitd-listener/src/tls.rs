//! The TLS side of a listener: certificate and key from PEM files, TLS 1.2
//! and 1.3 only, forward-secret AEAD suites only (all that rustls offers),
//! the server's suite order preferred, and the certificate reloadable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built. The text names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("{path}: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (for instance, key and certificate differ).
    #[error("{0}")]
    Config(String),
}

fn load(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: format!("{e} (expected a PEM private key)"),
    })?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not fit together: {e}",
            cert.display(),
            key.display()
        ))
    })
}

/// The certificate in force, replaceable while sessions run: a reload reads
/// the files again, and a bad new pair keeps the old one.
#[derive(Debug)]
pub struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Reads the certificate and key files again (on SIGHUP). On any error
    /// the certificate in force stays, and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The end-entity certificate in force.
    pub fn current(&self) -> CertificateDer<'static> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .cert
            .first()
            .cloned()
            .unwrap_or_else(|| CertificateDer::from(Vec::new()))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// Builds the server TLS configuration from a PEM certificate chain and
/// key; the returned handle reloads them.
pub fn server_tls_config(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadableCert>), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certified = load(cert, key, &provider)?;
    let resolver = Arc::new(ReloadableCert {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        provider: Arc::clone(&provider),
        current: RwLock::new(Arc::new(certified)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.ignore_client_order = true;
    Ok((Arc::new(config), resolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_takes_a_good_pair_and_keeps_the_old_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ca = submitd_testkit::TestCa::new();
        let (a_cert, a_key) = ca.issue_pem(&["a.example"]);
        std::fs::write(&cert, &a_cert).unwrap();
        std::fs::write(&key, &a_key).unwrap();
        let (_, resolver) = server_tls_config(&cert, &key).unwrap();
        let a = resolver.current();

        std::fs::write(&cert, "not a certificate").unwrap();
        let error = resolver.reload().unwrap_err();
        assert!(error.to_string().contains("cert.pem"), "{error}");
        assert_eq!(
            resolver.current(),
            a,
            "a bad file keeps the old certificate"
        );

        let (b_cert, b_key) = ca.issue_pem(&["b.example"]);
        std::fs::write(&cert, &b_cert).unwrap();
        let error = resolver.reload().unwrap_err();
        assert!(error.to_string().contains("do not fit together"), "{error}");
        assert_eq!(
            resolver.current(),
            a,
            "a key that does not fit keeps the old certificate"
        );

        std::fs::write(&key, &b_key).unwrap();
        resolver.reload().unwrap();
        assert_ne!(resolver.current(), a);
    }
}

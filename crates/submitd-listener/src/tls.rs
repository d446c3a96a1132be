//! The TLS side of a listener: certificates and keys from PEM files, TLS
//! 1.2 and 1.3 only, forward-secret AEAD suites only (all that rustls
//! offers), the server's suite order preferred, several certificates chosen
//! by the name the client asks for (SNI), and every one reloadable while
//! sessions run.

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

/// A DER blob that is not an X.509 certificate.
#[derive(Debug, thiserror::Error)]
#[error("not an X.509 certificate: {0}")]
pub struct CertificateError(String);

/// Where one certificate chain and its key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificatePaths {
    /// The PEM chain, end-entity certificate first.
    pub certificate: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
}

/// What a certificate says about itself, for `submitd check` and SNI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    /// DNS names it is valid for (subjectAltName, or the subject's CN when
    /// it has none), lower case; wildcards as `*.example.org`.
    pub names: Vec<String>,
    /// Not valid before, seconds since the Unix epoch.
    pub not_before: i64,
    /// Not valid after, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertificateFacts {
    /// Reads the facts from a DER certificate.
    pub fn read(der: &[u8]) -> Result<Self, CertificateError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertificateError(e.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(str::to_ascii_lowercase),
            );
        }
        Ok(Self {
            names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Whether the certificate is valid for `host` (exact, or one label
    /// under a wildcard; case-blind, a trailing dot ignored).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|name| match name.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *name == host,
        })
    }
}

struct Loaded {
    key: Arc<CertifiedKey>,
    facts: CertificateFacts,
}

fn load(
    paths: &CertificatePaths,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Loaded, TlsError> {
    let (cert, key) = (&paths.certificate, &paths.key);
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    let Some(end_entity) = chain.first() else {
        return Err(cert_error("no PEM certificate in the file".into()));
    };
    let facts = CertificateFacts::read(end_entity).map_err(|e| cert_error(e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: format!("{e} (expected a PEM private key)"),
    })?;
    let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not fit together: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        facts,
    })
}

struct Entry {
    paths: CertificatePaths,
    current: RwLock<Arc<Loaded>>,
}

/// The certificates in force, replaceable while sessions run. The first is
/// the default (no SNI, or a name no certificate covers); the others are
/// chosen by SNI. A reload reads every file again, and a pair that is bad
/// now keeps its old certificate.
pub struct Certificates {
    entries: Vec<Entry>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.paths))
            .finish()
    }
}

impl Certificates {
    /// Reads every certificate and key again (on SIGHUP). Each pair that
    /// fails keeps the certificate it had; the errors say which and why.
    pub fn reload(&self) -> Vec<TlsError> {
        let mut errors = Vec::new();
        for entry in &self.entries {
            match load(&entry.paths, &self.provider) {
                Ok(fresh) => {
                    *entry.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh)
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    fn loaded(&self, index: usize) -> Option<Arc<Loaded>> {
        let entry = self.entries.get(index)?;
        Some(Arc::clone(
            &entry.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    /// The end-entity certificate in force for the pair at `index`.
    pub fn current(&self, index: usize) -> Option<CertificateDer<'static>> {
        self.loaded(index)?.key.cert.first().cloned()
    }

    /// The facts of each certificate in force, with its files.
    pub fn facts(&self) -> Vec<(CertificatePaths, CertificateFacts)> {
        (0..self.entries.len())
            .filter_map(|i| Some((self.entries[i].paths.clone(), self.loaded(i)?.facts.clone())))
            .collect()
    }

    /// The certificate for a client that asked for `name` (or nothing).
    fn choose(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            for i in 0..self.entries.len() {
                if let Some(loaded) = self.loaded(i) {
                    if loaded.facts.covers(name) {
                        return Some(Arc::clone(&loaded.key));
                    }
                }
            }
        }
        self.loaded(0).map(|l| Arc::clone(&l.key))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// Builds the server TLS configuration from one or more PEM certificate
/// chains and keys (the first is the default); the returned handle
/// reloads them and tells what they are.
pub fn server_tls_config(
    pairs: &[CertificatePaths],
) -> Result<(Arc<rustls::ServerConfig>, Arc<Certificates>), TlsError> {
    if pairs.is_empty() {
        return Err(TlsError::Config("no certificate configured".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut entries = Vec::with_capacity(pairs.len());
    for paths in pairs {
        let loaded = load(paths, &provider)?;
        entries.push(Entry {
            paths: paths.clone(),
            current: RwLock::new(Arc::new(loaded)),
        });
    }
    let certificates = Arc::new(Certificates {
        entries,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&certificates) as Arc<dyn ResolvesServerCert>);
    config.ignore_client_order = true;
    // Resumption: a phone or laptop that connects for every message skips
    // the certificate and signature on its next handshake. TLS 1.3 tickets
    // (and TLS 1.2 tickets) are sealed with keys that live only in memory
    // and rotate every 6 hours (rustls's `Ticketer`); TLS 1.2 clients
    // without tickets resume from a bounded session-id cache. TLS 1.3
    // resumption here always runs a fresh key exchange (psk_dhe_ke), so it
    // keeps forward secrecy; 0-RTT early data stays off (replayable).
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    config.max_early_data_size = 0;
    Ok((Arc::new(config), certificates))
}

/// TLS 1.2 sessions remembered by id (about 200 octets each).
const SESSION_CACHE: usize = 4096;

/// The one-pair case: a certificate and its key.
pub fn single_certificate(cert: &Path, key: &Path) -> Vec<CertificatePaths> {
    vec![CertificatePaths {
        certificate: cert.to_path_buf(),
        key: key.to_path_buf(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, stem: &str, pem: &(String, String)) -> CertificatePaths {
        let paths = CertificatePaths {
            certificate: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&paths.certificate, &pem.0).unwrap();
        std::fs::write(&paths.key, &pem.1).unwrap();
        paths
    }

    #[test]
    fn reload_takes_a_good_pair_and_keeps_the_old_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = submitd_testkit::TestCa::new();
        let paths = write_pair(dir.path(), "a", &ca.issue_pem(&["a.example"]));
        let (_, certs) = server_tls_config(std::slice::from_ref(&paths)).unwrap();
        let a = certs.current(0).unwrap();

        std::fs::write(&paths.certificate, "not a certificate").unwrap();
        let errors = certs.reload();
        assert!(errors[0].to_string().contains("a.crt"), "{errors:?}");
        assert_eq!(
            certs.current(0).unwrap(),
            a,
            "a bad file keeps the old certificate"
        );

        let (b_cert, b_key) = ca.issue_pem(&["b.example"]);
        std::fs::write(&paths.certificate, &b_cert).unwrap();
        let errors = certs.reload();
        assert!(
            errors[0].to_string().contains("do not fit together"),
            "{errors:?}"
        );
        assert_eq!(
            certs.current(0).unwrap(),
            a,
            "a key that does not fit keeps the old certificate"
        );

        std::fs::write(&paths.key, &b_key).unwrap();
        assert!(certs.reload().is_empty());
        assert_ne!(certs.current(0).unwrap(), a);
        assert_eq!(certs.facts()[0].1.names, ["b.example"]);
    }

    #[test]
    fn sni_chooses_the_certificate_that_covers_the_name_else_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let ca = submitd_testkit::TestCa::new();
        let pairs = [
            write_pair(dir.path(), "default", &ca.issue_pem(&["mail.example.org"])),
            write_pair(dir.path(), "other", &ca.issue_pem(&["*.example.net"])),
        ];
        let (_, certs) = server_tls_config(&pairs).unwrap();
        let default = certs.current(0).unwrap();
        let other = certs.current(1).unwrap();
        let chosen = |name: Option<&str>| certs.choose(name).unwrap().cert[0].clone();
        assert_eq!(chosen(None), default);
        assert_eq!(chosen(Some("mail.example.org")), default);
        assert_eq!(chosen(Some("SMTP.Example.NET")), other);
        assert_eq!(chosen(Some("a.b.example.net")), default, "one label only");
        assert_eq!(chosen(Some("example.net")), default);
        assert_eq!(chosen(Some("unknown.test")), default);
    }

    #[test]
    fn facts_name_the_validity_and_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = submitd_testkit::TestCa::new();
        let paths = write_pair(dir.path(), "a", &ca.issue_pem(&["a.example", "b.example"]));
        let (_, certs) = server_tls_config(&[paths]).unwrap();
        let (_, facts) = &certs.facts()[0];
        assert_eq!(facts.names, ["a.example", "b.example"]);
        assert!(facts.not_before < facts.not_after);
        assert!(facts.covers("B.example."));
        assert!(!facts.covers("c.example"));
    }

    #[test]
    fn no_pair_is_an_error() {
        assert!(server_tls_config(&[]).is_err());
    }
}

//! The one HTTP client: ureq over rustls (aws-lc-rs, the provider the rest
//! of submitd uses), HTTPS only, no redirects, a deadline on the whole
//! request and a bound on every response body. Calls block; async callers
//! run them on the blocking pool (token requests are rare: one per token
//! lifetime per route).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// The largest token or error response read (a token is a few KB).
pub(crate) const TOKEN_RESPONSE_LIMIT: u64 = 64 * 1024;

/// What an identity provider answered: status and body.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The body, at most the limit asked for.
    pub(crate) body: String,
}

/// Why the HTTP client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("{}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// No CA file given and the system has no roots.
    #[error("no system CA certificates found; install ca-certificates or set ca_file")]
    NoSystemRoots,
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an `https://` address.
    #[error("{url}: only https:// addresses are used")]
    NotHttps {
        /// The address.
        url: String,
    },
    /// No answer within the deadline.
    #[error("{url}: no answer within {}s", timeout.as_secs())]
    Timeout {
        /// The address.
        url: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The answer was larger than the bound.
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// The address.
        url: String,
        /// The bound.
        limit: u64,
    },
    /// Connecting, TLS (an unverified certificate among them) or HTTP failed.
    #[error("{url}: {reason}")]
    Failed {
        /// The address.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// An HTTPS client for one identity provider's endpoints.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    timeout: Duration,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Http {
    /// A client trusting `ca_file` (PEM) if given, else the system's
    /// roots; every request has `timeout` in all.
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, HttpSetupError> {
        let roots: Vec<Certificate<'static>> = match ca_file {
            Some(path) => {
                use rustls_pki_types::pem::PemObject;
                let bad = |reason: String| HttpSetupError::CaFile {
                    path: path.to_path_buf(),
                    reason,
                };
                let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
                    rustls_pki_types::CertificateDer::pem_file_iter(path)
                        .map_err(|e| bad(e.to_string()))?
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no certificate in the file".into()));
                }
                certs
                    .iter()
                    .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                    .collect()
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    return Err(HttpSetupError::NoSystemRoots);
                }
                found
                    .certs
                    .iter()
                    .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                    .collect()
            }
        };
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("submitd/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            agent: config.into(),
            timeout,
        })
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`), asking for JSON.
    pub(crate) fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        limit: u64,
    ) -> Result<HttpResponse, HttpError> {
        self.check(url)?;
        let sent = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .send_form(form.iter().copied());
        self.read(url, sent, limit)
    }

    /// GETs a JSON document.
    pub(crate) fn get(&self, url: &str, limit: u64) -> Result<HttpResponse, HttpError> {
        self.check(url)?;
        let sent = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .call();
        self.read(url, sent, limit)
    }

    fn check(&self, url: &str) -> Result<(), HttpError> {
        if url.len() < 9 || !url[..8].eq_ignore_ascii_case("https://") {
            return Err(HttpError::NotHttps { url: url.into() });
        }
        Ok(())
    }

    fn read(
        &self,
        url: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<HttpResponse, HttpError> {
        let mut response = sent.map_err(|e| self.error(url, e, limit))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| self.error(url, e, limit))?;
        Ok(HttpResponse { status, body })
    }

    fn error(&self, url: &str, error: ureq::Error, limit: u64) -> HttpError {
        match error {
            ureq::Error::Timeout(_) => HttpError::Timeout {
                url: url.into(),
                timeout: self.timeout,
            },
            ureq::Error::BodyExceedsLimit(_) => HttpError::TooLarge {
                url: url.into(),
                limit,
            },
            other => HttpError::Failed {
                url: url.into(),
                reason: other.to_string(),
            },
        }
    }
}

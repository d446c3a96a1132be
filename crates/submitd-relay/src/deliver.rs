//! Talking to the upstream smarthost: TCP, TLS with the certificate
//! verified against the system's roots or a configured CA file and the
//! upstream's name checked, and the project's client machine driving SMTP.
//! One [`Connection`] carries several messages.
//!
//! TLS is never optional. With [`ClientTls::StartTls`] the upgrade is
//! required; the client machine drops whatever the server sent after its
//! 220, and this module starts the handshake on the bare TCP stream.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName};
use submitd_smtp::{
    ClientConfig, ClientCredentials, ClientOutput, ClientSession, ClientTimeouts, ClientTls,
    Envelope, MessageOutcome, Secret,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// One upstream smarthost.
#[derive(Clone)]
pub struct Upstream {
    /// Host name: connected to, and checked against the certificate.
    pub host: String,
    /// Port (465 for implicit TLS, 587 for STARTTLS).
    pub port: u16,
    /// Implicit TLS or required STARTTLS.
    pub tls: ClientTls,
    /// User name and password, if the upstream wants AUTH.
    pub credentials: Option<(String, Arc<Vec<u8>>)>,
    /// The TLS client configuration (roots, versions).
    pub tls_config: Arc<rustls::ClientConfig>,
    /// How long connecting and the TLS handshake may take.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// TLS settings for upstream connections: TLS 1.2 and 1.3 with rustls'
/// safe defaults, trusting `ca_file` (PEM) if given, else the system roots.
pub fn client_tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate in the file", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found; install ca-certificates or set a CA file"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads an upstream password from `path`: the first line, without its
/// line end. The file must be readable by its owner only (mode 0600 or
/// stricter): a password others can read is refused, with the fix named.
pub fn read_password_file(path: &Path) -> Result<Arc<Vec<u8>>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: readable by others (mode {mode:o}); run `chmod 600 {}` and make the service user its owner",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let password = first.strip_suffix(b"\r").unwrap_or(first).to_vec();
    if password.is_empty() {
        return Err(format!(
            "{}: the first line is empty; write the upstream password on it",
            path.display()
        ));
    }
    Ok(Arc::new(password))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

/// An open, ready session with an upstream.
pub struct Connection {
    session: ClientSession,
    stream: Stream,
    upstream: Upstream,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("upstream", &self.upstream)
            .finish()
    }
}

/// Why a connection failed. `transient` says whether trying later may help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{upstream}: {reason}")]
pub struct ConnectionError {
    /// `host:port`.
    pub upstream: String,
    /// What happened, for the log and the bounce.
    pub reason: String,
    /// Retrying later may help.
    pub transient: bool,
}

impl Connection {
    /// Connects, runs TLS and EHLO/AUTH until the upstream is ready.
    pub async fn open(upstream: &Upstream, helo_name: &str) -> Result<Self, ConnectionError> {
        let fail = |reason: String| ConnectionError {
            upstream: format!("{}:{}", upstream.host, upstream.port),
            reason,
            transient: true,
        };
        let tcp = tokio::time::timeout(
            upstream.connect_timeout,
            TcpStream::connect((upstream.host.as_str(), upstream.port)),
        )
        .await
        .map_err(|_| fail("connection timed out".into()))?
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
        // Commands are written whole (see `run`); Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        let config = ClientConfig {
            hostname: helo_name.to_owned(),
            tls: upstream.tls,
            credentials: upstream
                .credentials
                .as_ref()
                .map(|(user, password)| ClientCredentials {
                    username: user.clone(),
                    password: Secret::new(password.to_vec()),
                }),
            timeouts: ClientTimeouts::default(),
        };
        let mut connection = Self {
            session: ClientSession::new(config, Instant::now()),
            stream: Stream::Plain(tcp),
            upstream: upstream.clone(),
        };
        if upstream.tls == ClientTls::Implicit {
            connection.start_tls().await.map_err(fail)?;
        }
        let step = connection
            .run()
            .await
            .map_err(|(reason, transient)| ConnectionError {
                transient,
                ..fail(reason)
            })?;
        match step {
            Step::Ready => Ok(connection),
            Step::Outcome(_) => Err(fail("unexpected outcome before a message".into())),
        }
    }

    /// Relays one message; the outcome has one reply per recipient.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<MessageOutcome, ConnectionError> {
        let upstream = format!("{}:{}", self.upstream.host, self.upstream.port);
        self.session
            .send_message(Instant::now(), envelope, data)
            .map_err(|e| ConnectionError {
                upstream: upstream.clone(),
                reason: e.to_string(),
                transient: true,
            })?;
        loop {
            match self.run().await {
                Ok(Step::Outcome(outcome)) => {
                    // Wait for Ready (after RSET if one was needed).
                    match self.run().await {
                        Ok(Step::Ready) => return Ok(outcome),
                        Ok(Step::Outcome(_)) => continue,
                        Err((reason, _)) => {
                            // The outcome stands; the connection is done.
                            tracing::debug!(target: "submitd::relay", %reason, "upstream session ended after a message");
                            self.stream = Stream::Gone;
                            return Ok(outcome);
                        }
                    }
                }
                Ok(Step::Ready) => continue,
                Err((reason, transient)) => {
                    return Err(ConnectionError {
                        upstream,
                        reason,
                        transient,
                    })
                }
            }
        }
    }

    /// Whether the connection can take another message.
    pub fn is_usable(&self) -> bool {
        !matches!(self.stream, Stream::Gone) && !self.session.is_closed()
    }

    /// Ends the session politely.
    pub async fn quit(mut self) {
        if self.session.quit(Instant::now()).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), self.run()).await;
        }
    }

    async fn start_tls(&mut self) -> Result<(), String> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err("TLS asked for twice".into());
        };
        let name = ServerName::try_from(self.upstream.host.clone())
            .map_err(|e| format!("{} is not a valid TLS server name: {e}", self.upstream.host))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.upstream.tls_config));
        let tls = tokio::time::timeout(self.upstream.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Drives the machine until it is ready or has an outcome. Errors carry
    /// whether a retry may help.
    async fn run(&mut self) -> Result<Step, (String, bool)> {
        let mut buf = vec![0u8; 16 * 1024];
        // What the machine has to send, written in one go before anything
        // else happens: a pipelined MAIL/RCPT/DATA group is one TLS record.
        let mut unsent: Vec<u8> = Vec::new();
        loop {
            while let Some(output) = self.session.poll_output() {
                if !matches!(output, ClientOutput::Send(_)) && !unsent.is_empty() {
                    self.write(&std::mem::take(&mut unsent))
                        .await
                        .map_err(|e| (format!("write failed: {e}"), true))?;
                }
                match output {
                    ClientOutput::Send(bytes) => unsent.extend_from_slice(&bytes),
                    ClientOutput::StartTls => {
                        self.start_tls().await.map_err(|e| (e, true))?;
                        self.session
                            .tls_established(Instant::now())
                            .map_err(|e| (e.to_string(), true))?;
                    }
                    ClientOutput::Ready => return Ok(Step::Ready),
                    ClientOutput::Outcome(outcome) => return Ok(Step::Outcome(outcome)),
                    ClientOutput::Failed(error) => {
                        // Configuration faults are retried too (see retry.rs).
                        return Err((error.to_string(), true));
                    }
                    ClientOutput::Close => {
                        self.stream = Stream::Gone;
                        return Err(("upstream session closed".into(), true));
                    }
                }
            }
            if !unsent.is_empty() {
                self.write(&std::mem::take(&mut unsent))
                    .await
                    .map_err(|e| (format!("write failed: {e}"), true))?;
            }
            let wait = self
                .session
                .poll_timeout()
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(600));
            match tokio::time::timeout(wait, self.read(&mut buf)).await {
                Err(_) => self.session.handle_timeout(Instant::now()),
                Ok(Ok(0)) => {
                    self.stream = Stream::Gone;
                    return Err(("upstream closed the connection".into(), true));
                }
                Ok(Ok(n)) => self.session.handle_input(Instant::now(), &buf[..n]),
                Ok(Err(e)) => {
                    self.stream = Stream::Gone;
                    return Err((format!("read failed: {e}"), true));
                }
            }
        }
    }
}

enum Step {
    Ready,
    Outcome(MessageOutcome),
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn password_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upstream.pass");
        std::fs::write(&path, "s3cret pass\r\nignored\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_password_file(&path).unwrap_err();
        assert!(
            error.contains("chmod 600") && error.contains("upstream.pass"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_password_file(&path).unwrap().as_slice(),
            b"s3cret pass"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(read_password_file(&path).unwrap_err().contains("empty"));
        assert!(read_password_file(&dir.path().join("missing")).is_err());
    }
}

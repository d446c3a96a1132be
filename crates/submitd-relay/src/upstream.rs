//! Talking to the upstream smarthost: TCP, TLS with the certificate
//! verified against the system's roots or a configured CA file and the
//! upstream's name checked, and the project's client machine driving SMTP.
//! One [`Connection`] carries several messages.
//!
//! TLS is never optional. With [`Transport::StartTls`] the upgrade is
//! required; the client machine drops whatever the server sent after its
//! 220, and this module starts the handshake on the bare TCP stream.
//! Every failure is a [`DeliveryError`] naming the upstream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName};
use submitd_oauth2::TokenSource;
use submitd_smtp::{
    ClientConfig, ClientCredentials, ClientOutput, ClientSession, ClientTimeouts, Envelope,
    Mechanism, MessageOutcome, Secret, SessionError, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use tokio_util::sync::CancellationToken;

use crate::error::{DeliveryError, TlsFailure};
use crate::spool::{Content, CONTENT_PIECE};

/// One upstream smarthost.
#[derive(Clone)]
pub struct Upstream {
    /// Host name: connected to, and checked against the certificate.
    pub host: String,
    /// Port (465 for implicit TLS, 587 for STARTTLS).
    pub port: u16,
    /// [`Transport::ImplicitTls`] or (required) [`Transport::StartTls`].
    pub tls: Transport,
    /// How submitd logs in, if it does.
    pub auth: UpstreamAuth,
    /// The AUTH mechanisms allowed, in order (empty: those that fit the
    /// secret). Pinned, a weaker mechanism is never used.
    pub mechanisms: Vec<Mechanism>,
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
            .field("auth", &self.auth)
            .finish()
    }
}

/// How submitd logs in to an upstream.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// No AUTH (an upstream that trusts the address).
    None,
    /// A user name and password (PLAIN, LOGIN).
    Password {
        /// The user name.
        user: String,
        /// The password, read from its 0600 file.
        password: Arc<Vec<u8>>,
    },
    /// A user name and an OAuth2 access token (XOAUTH2, OAUTHBEARER),
    /// from the upstream's token source.
    Token {
        /// The mailbox the token acts for.
        user: String,
        /// Where tokens come from.
        tokens: Arc<TokenSource>,
    },
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Password { user, .. } => write!(f, "Password({user})"),
            Self::Token { user, tokens } => write!(f, "Token({user}, {tokens:?})"),
        }
    }
}

/// Why an upstream's TLS settings or password file cannot be used. The
/// text names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A CA file that is not PEM certificates.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader or rustls said.
        reason: String,
    },
    /// A CA file with no certificate in it.
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No CA file configured and no system roots found.
    #[error("no system CA certificates found; install ca-certificates or set a CA file")]
    NoSystemRoots,
    /// A password file others may read.
    #[error("{}: readable by others (mode {mode:o}); run `chmod 600 {}` and make the service user its owner", path.display(), path.display())]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A password file whose first line is empty.
    #[error("{}: the first line is empty; write the upstream password on it", path.display())]
    EmptyPassword {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// TLS settings for upstream connections: TLS 1.2 and 1.3 with rustls'
/// safe defaults, trusting `ca_file` (PEM) if given, else the system roots.
pub fn client_tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let pem = |reason: String| SetupError::Pem {
                path: path.to_path_buf(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| pem(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| pem(e.to_string()))?;
            if certs.is_empty() {
                return Err(SetupError::NoCertificate {
                    path: path.to_path_buf(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| pem(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(SetupError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads an upstream password from `path`: the first line, without its
/// line end. The file must be readable by its owner only (mode 0600 or
/// stricter): a password others can read is refused, with the fix named.
pub fn read_password_file(path: &Path) -> Result<Arc<Vec<u8>>, SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| SetupError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SetupError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read(path).map_err(read)?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let password = first.strip_suffix(b"\r").unwrap_or(first).to_vec();
    if password.is_empty() {
        return Err(SetupError::EmptyPassword {
            path: path.to_path_buf(),
        });
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
    /// `host:port`, for every error.
    name: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl Upstream {
    /// `host:port`, as errors and log lines name it.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Connection {
    /// Connects, runs TLS and EHLO/AUTH until the upstream is ready.
    pub async fn open(upstream: &Upstream, helo_name: &str) -> Result<Self, DeliveryError> {
        let name = upstream.name();
        let tcp = tokio::time::timeout(
            upstream.connect_timeout,
            TcpStream::connect((upstream.host.as_str(), upstream.port)),
        )
        .await
        .map_err(|_| DeliveryError::ConnectTimeout {
            upstream: name.clone(),
        })?
        .map_err(|source| DeliveryError::Connect {
            upstream: name.clone(),
            source,
        })?;
        // Commands are written whole (see `run`); Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        let (credentials, token) = match &upstream.auth {
            UpstreamAuth::None => (None, None),
            UpstreamAuth::Password { user, password } => (
                Some(ClientCredentials::password(
                    user.clone(),
                    Secret::new(password.to_vec()),
                )),
                None,
            ),
            UpstreamAuth::Token { user, tokens } => {
                let token = tokens.token().await.map_err(|error| DeliveryError::Token {
                    upstream: name.clone(),
                    error,
                })?;
                (
                    Some(ClientCredentials::bearer(
                        user.clone(),
                        Secret::new(token.as_bytes().to_vec()),
                    )),
                    Some((Arc::clone(tokens), token)),
                )
            }
        };
        let config = ClientConfig {
            hostname: helo_name.to_owned(),
            transport: upstream.tls,
            credentials: credentials.map(|c| c.pinned(&upstream.mechanisms)),
            timeouts: ClientTimeouts::default(),
        };
        let mut connection = Self {
            session: ClientSession::new(config, Instant::now()),
            stream: Stream::Plain(tcp),
            upstream: upstream.clone(),
            name,
        };
        if upstream.tls == Transport::ImplicitTls {
            connection.start_tls().await?;
        }
        let ready = connection.run().await;
        if let (
            Err(DeliveryError::Session {
                error: SessionError::TokenRefused { .. },
                ..
            }),
            Some((tokens, token)),
        ) = (&ready, &token)
        {
            // Revoked or expired early: the next attempt asks for another.
            tokens.refused(token).await;
        }
        match ready? {
            Step::Ready => Ok(connection),
            // The machine reports outcomes and asks for content only for a
            // message it was given.
            Step::Outcome(_) | Step::SendContent => Err(connection.closed()),
        }
    }

    /// Relays one message given whole; the outcome has one reply per
    /// recipient.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<MessageOutcome, DeliveryError> {
        if self
            .session
            .send_message(Instant::now(), envelope, data)
            .is_err()
        {
            // Not ready: the session ended after the last message.
            return Err(self.closed());
        }
        self.outcome(None).await
    }

    /// Drops the connection; the transfer in progress is abandoned.
    fn abandoned(&mut self) -> DeliveryError {
        self.stream = Stream::Gone;
        DeliveryError::Abandoned {
            upstream: self.name.clone(),
        }
    }

    /// Relays one queued message read from the spool in pieces as it is
    /// sent (memory per delivery: one piece, not the message). A message
    /// whose file turns out damaged is abandoned before its end of data
    /// (the connection is dropped, so the upstream discards it) and
    /// reported as [`DeliveryError::Content`].
    ///
    /// Once `abandon` is cancelled, a transfer that has not sent its end
    /// of data drops the connection instead ([`DeliveryError::Abandoned`]).
    pub async fn send_content(
        &mut self,
        envelope: &Envelope,
        content: Content,
        eight_bit: bool,
        abandon: &CancellationToken,
    ) -> Result<MessageOutcome, DeliveryError> {
        let size = content.size();
        if self
            .session
            .send_message_streamed(Instant::now(), envelope, size, eight_bit)
            .is_err()
        {
            return Err(self.closed());
        }
        self.outcome(Some((content, abandon))).await
    }

    /// Drives the message given to the machine to its outcome, streaming
    /// `content` when the machine asks for it.
    async fn outcome(
        &mut self,
        mut content: Option<(Content, &CancellationToken)>,
    ) -> Result<MessageOutcome, DeliveryError> {
        loop {
            match self.run().await? {
                Step::Outcome(outcome) => {
                    // Wait for Ready (after RSET if one was needed).
                    match self.run().await {
                        Ok(Step::Ready) => return Ok(outcome),
                        Ok(Step::Outcome(_) | Step::SendContent) => continue,
                        Err(error) => {
                            // The outcome stands; the connection is done.
                            tracing::debug!(target: "submitd::relay", %error, "upstream session ended after a message");
                            self.stream = Stream::Gone;
                            return Ok(outcome);
                        }
                    }
                }
                Step::SendContent => match content.take() {
                    Some((content, abandon)) => self.stream_content(content, abandon).await?,
                    None => return Err(self.closed()),
                },
                Step::Ready => continue,
            }
        }
    }

    /// Reads `content` on the blocking pool a piece at a time and writes
    /// each piece, dot-stuffed by the machine, before reading the next.
    async fn stream_content(
        &mut self,
        mut content: Content,
        abandon: &CancellationToken,
    ) -> Result<(), DeliveryError> {
        let mut buf = Vec::with_capacity(CONTENT_PIECE);
        loop {
            if abandon.is_cancelled() {
                return Err(self.abandoned());
            }
            // A small message came whole with the header's read, and the
            // end needs none: only a read of the file goes to the blocking
            // pool.
            let more = if content.next_reads_file() {
                let read = tokio::task::spawn_blocking(move || {
                    let more = content.next_piece(&mut buf);
                    (content, buf, more)
                })
                .await;
                let Ok((returned, piece, more)) = read else {
                    self.stream = Stream::Gone;
                    return Err(DeliveryError::Content(
                        crate::spool::SpoolError::WriteStopped,
                    ));
                };
                (content, buf) = (returned, piece);
                more
            } else {
                content.next_piece(&mut buf)
            };
            let accepted = match more {
                Ok(true) => self.session.send_content(&buf),
                Ok(false) => {
                    self.session
                        .end_content(Instant::now())
                        .map_err(|_| self.closed())?;
                    return Ok(());
                }
                Err(e) => {
                    // No end of data: dropping the connection makes the
                    // upstream discard what it has of the message.
                    self.stream = Stream::Gone;
                    return Err(DeliveryError::Content(e));
                }
            };
            if accepted.is_err() {
                return Err(self.closed());
            }
            let mut out = Vec::new();
            while let Some(output) = self.session.poll_output() {
                match output {
                    ClientOutput::Send(bytes) => out.extend_from_slice(&bytes),
                    ClientOutput::Failed(error) => {
                        self.stream = Stream::Gone;
                        return Err(DeliveryError::Session {
                            upstream: self.name.clone(),
                            error,
                        });
                    }
                    _ => return Err(self.closed()),
                }
            }
            tokio::select! {
                written = self.write(&out) => written?,
                () = abandon.cancelled() => return Err(self.abandoned()),
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

    fn closed(&mut self) -> DeliveryError {
        self.stream = Stream::Gone;
        DeliveryError::Closed {
            upstream: self.name.clone(),
        }
    }

    fn tls_error(&self, failure: TlsFailure) -> DeliveryError {
        DeliveryError::Tls {
            upstream: self.name.clone(),
            failure,
        }
    }

    async fn start_tls(&mut self) -> Result<(), DeliveryError> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            // The machine asks once; a second request is a closed session.
            return Err(self.closed());
        };
        let name = ServerName::try_from(self.upstream.host.clone()).map_err(|e| {
            self.tls_error(TlsFailure::InvalidName {
                host: self.upstream.host.clone(),
                reason: e.to_string(),
            })
        })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.upstream.tls_config));
        let tls = tokio::time::timeout(self.upstream.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| self.tls_error(TlsFailure::Timeout))?
            .map_err(|e| self.tls_error(TlsFailure::Handshake(e)))?;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), DeliveryError> {
        let written = match &mut self.stream {
            Stream::Plain(s) => write_flush(s, bytes).await,
            Stream::Tls(s) => write_flush(s.as_mut(), bytes).await,
            Stream::Gone => return Err(self.closed()),
        };
        written.map_err(|source| self.io_error("write", source))
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, DeliveryError> {
        let read = match &mut self.stream {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => return Err(self.closed()),
        };
        match read {
            Ok(0) => Err(self.closed()),
            Ok(n) => Ok(n),
            Err(source) => Err(self.io_error("read", source)),
        }
    }

    fn io_error(&mut self, doing: &'static str, source: std::io::Error) -> DeliveryError {
        self.stream = Stream::Gone;
        DeliveryError::Io {
            upstream: self.name.clone(),
            doing,
            source,
        }
    }

    /// Drives the machine until it is ready or has an outcome.
    async fn run(&mut self) -> Result<Step, DeliveryError> {
        let mut buf = vec![0u8; 16 * 1024];
        // What the machine has to send, written in one go before anything
        // else happens: a pipelined MAIL/RCPT/DATA group is one TLS record.
        let mut unsent: Vec<u8> = Vec::new();
        loop {
            while let Some(output) = self.session.poll_output() {
                if !matches!(output, ClientOutput::Send(_)) && !unsent.is_empty() {
                    self.write(&std::mem::take(&mut unsent)).await?;
                }
                match output {
                    ClientOutput::Send(bytes) => unsent.extend_from_slice(&bytes),
                    ClientOutput::StartTls => {
                        self.start_tls().await?;
                        if self.session.tls_established(Instant::now()).is_err() {
                            return Err(self.closed());
                        }
                    }
                    ClientOutput::Ready => return Ok(Step::Ready),
                    ClientOutput::SendContent => return Ok(Step::SendContent),
                    ClientOutput::Outcome(outcome) => return Ok(Step::Outcome(outcome)),
                    ClientOutput::Failed(error) => {
                        return Err(DeliveryError::Session {
                            upstream: self.name.clone(),
                            error,
                        });
                    }
                    ClientOutput::Close => return Err(self.closed()),
                }
            }
            if !unsent.is_empty() {
                self.write(&std::mem::take(&mut unsent)).await?;
            }
            let wait = self
                .session
                .poll_timeout()
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(600));
            match tokio::time::timeout(wait, self.read(&mut buf)).await {
                Err(_) => self.session.handle_timeout(Instant::now()),
                Ok(read) => {
                    let n = read?;
                    self.session.handle_input(Instant::now(), &buf[..n]);
                }
            }
        }
    }
}

/// Writes all of `bytes` and flushes (TLS holds records until flushed).
async fn write_flush<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

enum Step {
    Ready,
    Outcome(MessageOutcome),
    SendContent,
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
        let error = read_password_file(&path).unwrap_err().to_string();
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
        assert!(read_password_file(&path)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(read_password_file(&dir.path().join("missing")).is_err());
    }
}

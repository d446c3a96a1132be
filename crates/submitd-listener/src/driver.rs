//! One connection, pumped: bytes from the stream into the server machine,
//! the machine's replies back out, its TLS requests run with rustls, and
//! its questions handed to [`Answers`]. Generic over the stream
//! (`AsyncRead + AsyncWrite + Unpin`), so a TCP socket, a unix socket and
//! an in-memory `tokio::io::duplex` pipe all run the same code; TLS wraps
//! whichever it is. Every protocol decision is the machine's, every
//! answer its owner's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use submitd_smtp::{Output, Reply, ServerConfig, ServerSession, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::answers::{Answers, Client, Services};
use crate::limits::Unauthenticated;

/// The pause before each read while the daemon's memory is above its
/// budget.
const PRESSURE_PAUSE: Duration = Duration::from_millis(200);

/// A byte stream a session runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for S {}

enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    Gone,
}

impl<S: Io> Stream<S> {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(bytes).await,
            Self::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Self::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Closes the stream politely (TLS close_notify, then FIN).
    async fn close(&mut self) {
        let _ = match self {
            Self::Plain(s) => s.shutdown().await,
            Self::Tls(s) => s.shutdown().await,
            Self::Gone => Ok(()),
        };
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Tls(s) => s.read(buf).await,
            Self::Gone => Ok(0),
        }
    }

    /// Runs the server side of the TLS handshake on a plain stream.
    async fn upgrade(
        &mut self,
        tls: &TlsAcceptor,
        timeout: Duration,
        client: &str,
    ) -> Result<(), String> {
        let Self::Plain(plain) = std::mem::replace(self, Self::Gone) else {
            return Err("TLS asked for twice".into());
        };
        let accepted = tokio::time::timeout(timeout, tls.accept(plain))
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let connection = accepted.get_ref().1;
        let version = connection
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let suite = connection
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("?");
        let sni = connection.server_name().unwrap_or("-");
        tracing::info!(target: "submitd::session", client = %client, version, suite, sni, "TLS established");
        *self = Self::Tls(Box::new(accepted));
        Ok(())
    }
}

/// Serves one network connection to its end: implicit TLS first when the
/// listener says so, then the machine. `unauthenticated` is the session's
/// place among connections that have not logged in (`None`: unbounded).
/// Errors are logged, never returned: one client's trouble is no one
/// else's.
pub async fn serve_connection<S: Io>(
    stream: S,
    peer: SocketAddr,
    smtp: Arc<ServerConfig>,
    tls: TlsAcceptor,
    services: Arc<Services>,
    unauthenticated: Option<Unauthenticated>,
    shutdown: CancellationToken,
) {
    let client = peer.to_string();
    let mut stream = Stream::Plain(stream);
    if smtp.transport == Transport::ImplicitTls {
        let timeout = services.handshake_timeout();
        let evicted = unauthenticated.as_ref().map(|u| u.evicted().clone());
        let handshake = stream.upgrade(&tls, timeout, &client);
        let upgraded = tokio::select! {
            upgraded = handshake => upgraded,
            () = cancelled(evicted) => Err("closed for a newer connection (too many waiting to log in)".into()),
        };
        if let Err(reason) = upgraded {
            tracing::info!(target: "submitd::session", client = %peer, %reason, "TLS handshake failed");
            return;
        }
    }
    let answers = Answers::new(services, Client::Network(peer.ip()), unauthenticated);
    let session = ServerSession::new(smtp, Instant::now());
    let mut driver = Driver::new(session, stream, client, Some(tls), answers, shutdown);
    driver.run().await;
    driver.summary();
}

/// Answers a connection that may not have a session with `reply` (a
/// 421) and closes it: after the TLS handshake on an implicit-TLS
/// listener (so the client can read it), in the clear otherwise (RFC 5321
/// §3.1 allows a 421 greeting). The whole exchange is bounded by
/// `timeout`.
pub(crate) async fn refuse_connection<S: Io>(
    stream: S,
    client: &str,
    transport: Transport,
    tls: TlsAcceptor,
    reply: Reply,
    timeout: Duration,
) {
    let refuse = async {
        let mut stream = Stream::Plain(stream);
        if transport == Transport::ImplicitTls
            && stream.upgrade(&tls, timeout, client).await.is_err()
        {
            return;
        }
        if stream.write(&reply.to_bytes()).await.is_ok() {
            stream.close().await;
        }
    };
    let _ = tokio::time::timeout(timeout, refuse).await;
}

/// Waits for `token` to be cancelled; forever without one.
async fn cancelled(token: Option<CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Serves one connection on the local socket from the local user `user`
/// (named by the socket's peer credentials), whose mail may come from
/// `user@domain` unless the credential file says more.
pub async fn serve_local_connection<S: Io>(
    stream: S,
    user: String,
    domain: String,
    smtp: Arc<ServerConfig>,
    services: Arc<Services>,
    shutdown: CancellationToken,
) {
    let mut session = ServerSession::new(smtp, Instant::now());
    if session.authenticate_local(user.clone()).is_err() {
        tracing::error!(target: "submitd::session", "a local session on a network transport; closed");
        return;
    }
    tracing::info!(target: "submitd::auth", client = "local", %user, "local user");
    let answers = Answers::new(services, Client::Local { domain }, None);
    let client = format!("local:{user}");
    let mut driver = Driver::new(
        session,
        Stream::Plain(stream),
        client,
        None,
        answers,
        shutdown,
    );
    driver.run().await;
    driver.summary();
}

struct Driver<S> {
    session: ServerSession,
    stream: Stream<S>,
    /// The client as log lines name it.
    client: String,
    /// For STARTTLS; `None` on the local socket.
    tls: Option<TlsAcceptor>,
    answers: Answers,
    shutdown: CancellationToken,
    shutdown_seen: bool,
    started: Instant,
    /// The listener's mode, for the metrics.
    listener: &'static str,
    /// Why the session ended, when the server ended it.
    ended: Option<String>,
    /// Replies not yet written: all the replies to one read go out in one
    /// write (one TLS record, one TCP segment), as RFC 2920 allows, so a
    /// pipelined transaction never waits on Nagle and delayed ACKs.
    unsent: Vec<u8>,
}

impl<S: Io> Driver<S> {
    fn new(
        session: ServerSession,
        stream: Stream<S>,
        client: String,
        tls: Option<TlsAcceptor>,
        answers: Answers,
        shutdown: CancellationToken,
    ) -> Self {
        let listener = match session.transport() {
            Transport::ImplicitTls => "implicit",
            Transport::StartTls => "starttls",
            Transport::Local => "local",
            Transport::Plaintext => "plaintext",
        };
        submitd_metrics::metrics().session_began(listener);
        Self {
            listener,
            session,
            stream,
            client,
            tls,
            answers,
            shutdown,
            shutdown_seen: false,
            started: Instant::now(),
            ended: None,
            unsent: Vec::new(),
        }
    }

    /// The one summary line of a session.
    fn summary(self) {
        let tls = match &self.stream {
            Stream::Tls(s) => s
                .get_ref()
                .1
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS"),
            _ => "none",
        };
        submitd_metrics::metrics().session_ended(self.listener, tls);
        let user = self.session.auth_user().unwrap_or("-").to_owned();
        let ended = self
            .ended
            .unwrap_or_else(|| "client closed the connection".into());
        tracing::info!(
            target: "submitd::session",
            client = %self.client,
            %user,
            messages = self.answers.messages,
            seconds = self.started.elapsed().as_secs(),
            ended = %ended,
            "session ended"
        );
    }

    /// Writes the replies held back, if any; false when the client is gone.
    async fn flush(&mut self) -> bool {
        if self.unsent.is_empty() {
            return true;
        }
        let bytes = std::mem::take(&mut self.unsent);
        self.stream.write(&bytes).await.is_ok()
    }

    async fn run(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(output) = self.session.poll_output() {
                if !self.act(output).await {
                    self.flush().await;
                    return;
                }
            }
            if !self.flush().await || self.session.is_closed() {
                return;
            }
            let wait = self
                .session
                .poll_timeout()
                .map_or(Duration::from_secs(60), |at| {
                    at.saturating_duration_since(Instant::now())
                });
            if !self.session.wants_input() {
                // Only while a question is open, which `act` answers at once.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            if self.answers.memory_pressure() {
                // Memory above its budget: read more slowly, and TCP pushes
                // back on the client (bounded well inside the machine's
                // deadlines, so no client is cut off for it).
                tokio::time::sleep(PRESSURE_PAUSE).await;
            }
            let eviction = self.answers.eviction();
            let read = tokio::select! {
                // On shutdown the machine ends the session with 421 at the
                // next point between commands (a message in flight first).
                () = self.shutdown.cancelled(), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    self.session.shutdown();
                    continue;
                }
                // Not logged in, and the place is needed for a newer
                // connection: 421 and close.
                () = cancelled(eviction) => {
                    if self.session.evict() {
                        tracing::info!(target: "submitd::session", client = %self.client, "closed to make room: too many connections waiting to log in");
                    }
                    self.answers.unauthenticated_gone();
                    continue;
                }
                read = tokio::time::timeout(wait, self.stream.read(&mut buf)) => read,
            };
            match read {
                Err(_) => self.session.handle_timeout(Instant::now()),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => self.session.handle_input(Instant::now(), &buf[..n]),
            }
        }
    }

    /// Acts on one output; false when the connection is done.
    async fn act(&mut self, output: Output) -> bool {
        let answered = match output {
            Output::Send(bytes) => {
                self.unsent.extend_from_slice(&bytes);
                return true;
            }
            Output::StartTls { discarded } => return self.start_tls(discarded).await,
            Output::AuthStart {
                mechanism,
                initial_response,
            } => {
                let answer = self
                    .answers
                    .auth_start(&mechanism, initial_response.as_ref())
                    .await;
                self.session.answer_auth(answer)
            }
            Output::AuthResponse(response) => {
                let answer = self.answers.auth_response(&response).await;
                self.session.answer_auth(answer)
            }
            Output::AuthCancelled => {
                self.answers.auth_cancelled();
                Ok(())
            }
            Output::CheckSender(mail_from) => {
                let verdict = self
                    .answers
                    .sender(self.session.auth_user(), &mail_from)
                    .await;
                self.session.answer_sender(verdict)
            }
            Output::CheckRecipient(_) => {
                // Any recipient: the upstream decides (no open relay, since
                // only authenticated users get this far).
                self.session.answer_recipient(submitd_smtp::Verdict::Accept)
            }
            Output::MessageStart(message) => {
                self.answers.message_start(&message);
                Ok(())
            }
            Output::MessageData(piece) => {
                self.answers.message_data(&piece).await;
                Ok(())
            }
            Output::MessageAborted => {
                self.answers.message_aborted();
                Ok(())
            }
            Output::StoreMessage => {
                let login = self.session.auth_user().map(str::to_owned);
                let result = self.answers.store(login.as_deref()).await;
                self.session.answer_store(result)
            }
            Output::Close(reason) => {
                self.ended = Some(format!("{reason:?}"));
                return false;
            }
        };
        if let Err(e) = answered {
            tracing::error!(target: "submitd::session", client = %self.client, error = %e, "session driver out of step");
            return false;
        }
        true
    }

    /// The 220 to STARTTLS goes out in the clear, then the handshake.
    async fn start_tls(&mut self, discarded: usize) -> bool {
        if !self.flush().await {
            return false;
        }
        if discarded > 0 {
            tracing::warn!(target: "submitd::session", client = %self.client, discarded, "octets after STARTTLS dropped (injection attempt or broken client)");
        }
        let Some(tls) = self.tls.clone() else {
            return false;
        };
        let timeout = self.answers.handshake_timeout();
        if let Err(reason) = self.stream.upgrade(&tls, timeout, &self.client).await {
            self.ended = Some(format!("STARTTLS handshake failed: {reason}"));
            return false;
        }
        if let Err(e) = self.session.tls_established() {
            tracing::error!(target: "submitd::session", client = %self.client, error = %e, "session driver out of step");
            return false;
        }
        true
    }
}

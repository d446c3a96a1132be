//! One client connection: TLS (implicit, or STARTTLS when the machine asks
//! for it), the server machine driven over the socket, and its questions
//! answered by the auth and relay crates. Thin by design: every protocol
//! decision is the machine's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use submitd_auth::{
    check_envelope_sender, check_header_senders, failure_line, Admission, Authenticator,
    CheckOutcome, CredentialStore, Mechanism, RateLimiter, SaslExchange, SaslStep, SendingLimits,
    Throttle,
};
use submitd_relay::{prepare, unix_now, QueueId, Relay, Spool, StoredEnvelope, TraceInfo};
use submitd_smtp::{
    AuthAnswer, EnhancedCode, Message, Output, Reply, ServerConfig, ServerSession, Transport,
    Verdict,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// What every connection's questions are answered with.
#[derive(Debug)]
pub struct Services {
    /// This server's name (Received).
    pub hostname: String,
    /// Users and passwords.
    pub credentials: Arc<CredentialStore>,
    /// Checks passwords: the credential file's hashes, or Dovecot.
    pub authenticator: Arc<Authenticator>,
    /// Failed-login counters.
    pub throttle: Arc<Mutex<Throttle>>,
    /// Per-user sending counters.
    pub rate: Arc<RateLimiter>,
    /// Limits for users whose line sets none.
    pub default_limits: SendingLimits,
    /// The queue.
    pub spool: Spool,
    /// Woken after each accepted message.
    pub relay: Relay,
    /// Leave the client's name and address out of the Received header.
    pub privacy: bool,
    /// How long the TLS handshake may take.
    pub handshake_timeout: Duration,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(tokio::net::UnixStream),
    Gone,
}

impl Stream {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(bytes).await,
            Self::Unix(s) => s.write_all(bytes).await,
            Self::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Self::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Unix(s) => s.read(buf).await,
            Self::Tls(s) => s.read(buf).await,
            Self::Gone => Ok(0),
        }
    }
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: impl AsRef<str>) -> Reply {
    Reply::new(
        code,
        EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2),
        text,
    )
}

/// Serves one connection to its end. Errors are logged, never returned:
/// one client's trouble is no one else's.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    smtp: Arc<ServerConfig>,
    tls: TlsAcceptor,
    services: Arc<Services>,
    unauthenticated: crate::Unauthenticated,
    shutdown: CancellationToken,
) {
    // Replies are written whole (see `Driver::unsent`); Nagle would only
    // hold them back.
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    if smtp.transport == Transport::ImplicitTls {
        match upgrade(&mut stream, &tls, services.handshake_timeout, peer).await {
            Ok(()) => {}
            Err(reason) => {
                tracing::info!(target: "submitd::session", client = %peer, %reason, "TLS handshake failed");
                return;
            }
        }
    }
    let session = ServerSession::new(smtp, Instant::now());
    let mut driver = Driver::new(session, stream, peer, Some(tls), services, shutdown);
    driver.unauthenticated = Some(unauthenticated);
    driver.run().await;
    driver.summary(&peer.to_string());
}

/// Serves one connection on the local socket from the local user `user`
/// (named by the socket's peer credentials), whose mail may come from
/// `user@domain` unless the credential file says more.
pub async fn handle_local(
    unix: tokio::net::UnixStream,
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
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut driver = Driver::new(session, Stream::Unix(unix), peer, None, services, shutdown);
    driver.local_domain = Some(domain);
    driver.run().await;
    driver.summary(&format!("local:{user}"));
}

async fn upgrade(
    stream: &mut Stream,
    tls: &TlsAcceptor,
    timeout: Duration,
    peer: SocketAddr,
) -> Result<(), String> {
    let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Gone) else {
        return Err("TLS asked for twice".into());
    };
    let accepted = tokio::time::timeout(timeout, tls.accept(tcp))
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
    tracing::info!(target: "submitd::session", client = %peer, version, suite, sni, "TLS established");
    *stream = Stream::Tls(Box::new(accepted));
    Ok(())
}

struct Driver {
    session: ServerSession,
    stream: Stream,
    peer: SocketAddr,
    /// For STARTTLS; `None` on the local socket.
    tls: Option<TlsAcceptor>,
    /// On the local socket: the domain of the local users' addresses.
    local_domain: Option<String>,
    services: Arc<Services>,
    sasl: Option<(Mechanism, SaslExchange)>,
    /// Held until the session logs in.
    unauthenticated: Option<crate::Unauthenticated>,
    shutdown: CancellationToken,
    shutdown_seen: bool,
    started: Instant,
    /// Messages queued in this session.
    messages: usize,
    /// Why the session ended, when the server ended it.
    ended: Option<String>,
    /// Replies not yet written: all the replies to one read go out in one
    /// write (one TLS record, one TCP segment), as RFC 2920 allows, so a
    /// pipelined transaction never waits on Nagle and delayed ACKs.
    unsent: Vec<u8>,
}

impl Driver {
    fn new(
        session: ServerSession,
        stream: Stream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        services: Arc<Services>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            session,
            stream,
            peer,
            tls,
            local_domain: None,
            services,
            sasl: None,
            unauthenticated: None,
            shutdown,
            shutdown_seen: false,
            started: Instant::now(),
            messages: 0,
            ended: None,
            unsent: Vec::new(),
        }
    }

    /// The one summary line of a session.
    fn summary(self, client: &str) {
        let user = self.session.auth_user().unwrap_or("-").to_owned();
        let ended = self
            .ended
            .unwrap_or_else(|| "client closed the connection".into());
        tracing::info!(
            target: "submitd::session",
            client = %client,
            %user,
            messages = self.messages,
            seconds = self.started.elapsed().as_secs(),
            ended = %ended,
            "session ended"
        );
    }

    /// Whose sender policy applies to `name` in this session.
    fn policy_user<'a>(
        &self,
        users: &'a submitd_auth::Users,
        name: &str,
    ) -> Option<std::borrow::Cow<'a, submitd_auth::User>> {
        match &self.local_domain {
            None => self.services.authenticator.policy_user(users, name),
            Some(domain) => Some(submitd_auth::local_policy_user(users, name, domain)),
        }
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
            let read = tokio::select! {
                // On shutdown the machine ends the session with 421 at the
                // next point between commands (a message in flight first).
                () = self.shutdown.cancelled(), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    self.session.shutdown();
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
            Output::StartTls { discarded } => {
                // The 220 goes out in the clear, before the handshake.
                if !self.flush().await {
                    return false;
                }
                if discarded > 0 {
                    tracing::warn!(target: "submitd::session", client = %self.peer, discarded, "octets after STARTTLS dropped (injection attempt or broken client)");
                }
                let Some(tls) = self.tls.clone() else {
                    return false;
                };
                if let Err(reason) = upgrade(
                    &mut self.stream,
                    &tls,
                    self.services.handshake_timeout,
                    self.peer,
                )
                .await
                {
                    self.ended = Some(format!("STARTTLS handshake failed: {reason}"));
                    return false;
                }
                self.session.tls_established()
            }
            Output::AuthStart {
                mechanism,
                initial_response,
            } => {
                let Some(mechanism) = Mechanism::from_name(&mechanism) else {
                    return self.session.answer_auth(AuthAnswer::Failure).is_ok();
                };
                let (exchange, step) =
                    SaslExchange::start(mechanism, initial_response.as_ref().map(|s| s.expose()));
                self.sasl = Some((mechanism, exchange));
                let answer = self.auth_step(step).await;
                self.session.answer_auth(answer)
            }
            Output::AuthResponse(response) => {
                let step = match self.sasl.as_mut() {
                    Some((_, exchange)) => exchange.respond(response.expose()),
                    None => SaslStep::Failed(submitd_auth::SaslError::Malformed),
                };
                let answer = self.auth_step(step).await;
                self.session.answer_auth(answer)
            }
            Output::AuthCancelled => {
                self.sasl = None;
                Ok(())
            }
            Output::CheckSender(mail_from) => {
                let verdict = self.check_sender(&mail_from);
                self.session.answer_sender(verdict)
            }
            Output::CheckRecipient(_) => self.session.answer_recipient(Verdict::Accept),
            Output::StoreMessage(message) => {
                let result = self.store(*message).await;
                self.messages += usize::from(result.is_ok());
                self.session.answer_store(result)
            }
            Output::Close(reason) => {
                self.ended = Some(format!("{reason:?}"));
                return false;
            }
        };
        if let Err(e) = answered {
            tracing::error!(target: "submitd::session", client = %self.peer, error = %e, "session driver out of step");
            return false;
        }
        true
    }

    async fn auth_step(&mut self, step: SaslStep) -> AuthAnswer {
        let mechanism = self.sasl.as_ref().map_or("?", |(m, _)| m.name());
        let ip = self.peer.ip();
        match step {
            SaslStep::Challenge(challenge) => AuthAnswer::Challenge(challenge.to_vec()),
            SaslStep::Failed(_) => self.failed(ip, "", mechanism).await,
            SaslStep::Done(credentials) => {
                self.sasl = None;
                let admission = self
                    .services
                    .throttle
                    .lock()
                    .map(|t| t.admit(ip, Instant::now()))
                    .unwrap_or(Admission::Allowed);
                if let Admission::Blocked { .. } = admission {
                    tracing::warn!(target: "submitd::auth", "{} blocked=true", failure_line(ip, &credentials.username, mechanism));
                    return AuthAnswer::TempFailure;
                }
                let users = self.services.credentials.users();
                match self
                    .services
                    .authenticator
                    .check(&users, &credentials.username, &credentials.password, ip)
                    .await
                {
                    CheckOutcome::Authenticated { user, app_password } => {
                        tracing::info!(target: "submitd::auth", client = %ip, %user, app_password = app_password.as_deref().unwrap_or("-"), "authenticated");
                        self.unauthenticated = None;
                        AuthAnswer::Success { user }
                    }
                    CheckOutcome::Rejected => {
                        self.failed(ip, &credentials.username, mechanism).await
                    }
                    CheckOutcome::Unavailable => AuthAnswer::TempFailure,
                }
            }
        }
    }

    /// A failed login: counted, logged in the fail2ban format, and answered
    /// after the throttle's delay.
    async fn failed(
        &mut self,
        ip: std::net::IpAddr,
        username: &str,
        mechanism: &str,
    ) -> AuthAnswer {
        self.sasl = None;
        let delay = self
            .services
            .throttle
            .lock()
            .map(|mut t| t.failure(ip, username, Instant::now()))
            .unwrap_or_default();
        tracing::warn!(target: "submitd::auth", "{}", failure_line(ip, username, mechanism));
        tokio::time::sleep(delay).await;
        AuthAnswer::Failure
    }

    fn check_sender(&self, mail_from: &submitd_smtp::MailFrom) -> Verdict {
        let users = self.services.credentials.users();
        let Some(user) = self
            .session
            .auth_user()
            .and_then(|name| self.policy_user(&users, name))
        else {
            return Verdict::Reject(reply(451, (4, 7, 1), "Your account changed; log in again"));
        };
        let sender = mail_from
            .reverse_path
            .as_ref()
            .map(|m| (m.local_part(), m.domain()));
        if let Err(refused) = check_envelope_sender(&user, sender) {
            tracing::warn!(target: "submitd::policy", client = %self.peer, user = %user.name, "{refused}");
            return Verdict::Reject(reply(550, (5, 7, 1), refused.to_string()));
        }
        let limits = user.limits.or(self.services.default_limits);
        if let Err(exceeded) = self.services.rate.check(&user.name, limits, Instant::now()) {
            return Verdict::Reject(reply(
                450,
                (4, 7, 1),
                format!("Sending limit reached: {exceeded}; try later"),
            ));
        }
        Verdict::Accept
    }

    async fn store(&self, message: Message) -> Result<String, Reply> {
        let users = self.services.credentials.users();
        let Some(user) = message
            .auth_user
            .as_deref()
            .and_then(|name| self.policy_user(&users, name))
        else {
            return Err(reply(451, (4, 7, 1), "Your account changed; log in again"));
        };
        let id = QueueId::generate();
        let client_name = message.client_name.to_string();
        let single = match message.recipients.as_slice() {
            [only] => Some(only.forward_path.to_string()),
            _ => None,
        };
        let trace = TraceInfo {
            hostname: &self.services.hostname,
            client: (!self.services.privacy && self.local_domain.is_none())
                .then_some((client_name.as_str(), self.peer.ip())),
            protocol: message.protocol(),
            queue_id: &id,
            single_recipient: single.as_deref(),
            now: SystemTime::now(),
        };
        let prepared = prepare(&message.data, &trace).map_err(|e| e.reply())?;
        fn as_refs(a: &(String, String)) -> (&str, &str) {
            (a.0.as_str(), a.1.as_str())
        }
        let from: Vec<(&str, &str)> = prepared.senders.from.iter().map(as_refs).collect();
        if let Err(refused) =
            check_header_senders(&user, &from, prepared.senders.sender.as_ref().map(as_refs))
        {
            tracing::warn!(target: "submitd::policy", client = %self.peer, user = %user.name, "{refused}");
            return Err(reply(550, (5, 7, 1), refused.to_string()));
        }
        let recipients = message.recipients.len();
        let size = prepared.data.len();
        let sender = message
            .mail_from
            .reverse_path
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let envelope = StoredEnvelope {
            mail_from: message.mail_from,
            recipients: message.recipients,
            user: Some(user.name.clone()),
            received: unix_now(),
        };
        match self
            .services
            .spool
            .store(id, envelope, Arc::new(prepared.data))
            .await
        {
            Ok(id) => {
                self.services.rate.record(
                    &user.name,
                    u32::try_from(recipients).unwrap_or(u32::MAX),
                    Instant::now(),
                );
                self.services.relay.enqueue(id.clone());
                tracing::info!(target: "submitd::message", queue_id = %id, user = %user.name, from = %sender, recipients, size, outcome = "queued", "message accepted");
                Ok(id.to_string())
            }
            Err(e) => {
                tracing::error!(target: "submitd::message", user = %user.name, error = %e, "message could not be queued");
                Err(reply(
                    451,
                    (4, 3, 0),
                    "Cannot queue the message now; try again later",
                ))
            }
        }
    }
}

//! The answers to one session's questions, each from the crate that owns
//! it: logins from `submitd-auth`'s [`LoginGate`], senders and limits from
//! its [`SenderPolicy`], storing from `submitd-relay`'s [`Intake`]. This
//! module only carries the question to its owner and turns the owner's
//! typed answer into what the machine takes (an [`AuthAnswer`], a
//! [`Verdict`], a reply); it decides nothing itself.
//!
//! ```text
//! AuthStart / AuthResponse ─▶ SaslExchange ─▶ LoginGate::login ─▶ AuthAnswer
//! CheckSender ─▶ Intake::admit (room in the queue?) ─▶ SenderPolicy::resolve
//!               + check_envelope ─▶ Verdict
//! MessageStart ─▶ SenderPolicy::resolve ─▶ Intake::begin ─▶ Draft
//! MessageData ─▶ Draft::write (streams to the spool; awaited, so a slow
//!                disk stops the reading from the client)
//! MessageAborted ─▶ the Draft dropped (nothing stays in the spool)
//! StoreMessage ─▶ Draft::finish ─▶ SenderPolicy::check_header
//!                ─▶ PreparedMessage::commit ─▶ SenderPolicy::record ─▶ "queued as <id>"
//! ```

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use submitd_auth::{
    Account, LoginGate, LoginOutcome, Mechanism, SaslError, SaslExchange, SaslStep, SenderPolicy,
    SenderRefusal,
};
use submitd_relay::{Draft, Intake, Origin};
use submitd_smtp::{AuthAnswer, MailFrom, Message, Reply, Secret, Verdict};

use tokio_util::sync::CancellationToken;

use crate::limits::{KnownNetworks, Unauthenticated};

/// What every connection's questions are answered with; one per daemon.
#[derive(Debug)]
pub struct Services {
    gate: LoginGate,
    policy: SenderPolicy,
    intake: Intake,
    handshake_timeout: Duration,
    /// Networks that logged in lately (for the unauthenticated bound).
    known: KnownNetworks,
    /// Set while the daemon's memory is above its budget.
    memory_pressure: Arc<AtomicBool>,
}

impl Services {
    /// Logins go through `gate`, senders through `policy`, messages into
    /// `intake`; a TLS handshake may take `handshake_timeout`.
    pub fn new(
        gate: LoginGate,
        policy: SenderPolicy,
        intake: Intake,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            gate,
            policy,
            intake,
            handshake_timeout,
            known: KnownNetworks::default(),
            memory_pressure: Arc::default(),
        }
    }

    /// Sessions read more slowly while `flag` is set (the daemon's memory
    /// is above its budget): TCP pushes back on the clients, and none of
    /// them gets an error.
    pub fn with_memory_pressure(mut self, flag: Arc<AtomicBool>) -> Self {
        self.memory_pressure = flag;
        self
    }

    /// Whether the daemon's memory is above its budget now.
    pub(crate) fn memory_pressure(&self) -> bool {
        self.memory_pressure.load(Ordering::Acquire)
    }

    /// Whether `ip`'s network logged in successfully lately.
    pub(crate) fn known_network(&self, ip: IpAddr) -> bool {
        self.known.is_known(ip, Instant::now())
    }

    /// How long a TLS handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

/// The SMTP reply for a refused sender: 451 when the account is gone (log
/// in again), 550 5.7.1 for an address that is not the user's, 450 for a
/// sending limit (try later).
/// One word for the metrics.
fn refusal_reason(refusal: &SenderRefusal) -> &'static str {
    match refusal {
        SenderRefusal::AccountGone => "account",
        SenderRefusal::NotAllowed(_) => "sender_not_allowed",
        SenderRefusal::Limit(_) => "sending_limit",
    }
}

fn refusal_reply(refusal: &SenderRefusal) -> Reply {
    match refusal {
        SenderRefusal::AccountGone => {
            Reply::new(451, (4, 7, 1), "Your account changed; log in again")
        }
        SenderRefusal::NotAllowed(e) => Reply::new(550, (5, 7, 1), e.to_string()),
        SenderRefusal::Limit(e) => Reply::new(
            450,
            (4, 7, 1),
            format!("Sending limit reached: {e}; try later"),
        ),
    }
}

/// Where the session's client is.
#[derive(Clone, Debug)]
pub(crate) enum Client {
    /// A network client at this address.
    Network(IpAddr),
    /// A local user on the unix socket; addresses are `user@domain`.
    Local {
        /// The local domain.
        domain: String,
    },
}

/// One session's answering state.
#[derive(Debug)]
pub(crate) struct Answers {
    services: Arc<Services>,
    client: Client,
    sasl: Option<(Mechanism, SaslExchange)>,
    /// Held until the session logs in.
    unauthenticated: Option<Unauthenticated>,
    /// The message being received: its draft in the queue, or the reply
    /// that will refuse it.
    message: Option<Result<Draft, Reply>>,
    /// Messages queued in this session.
    pub(crate) messages: usize,
}

impl Answers {
    pub(crate) fn new(
        services: Arc<Services>,
        client: Client,
        unauthenticated: Option<Unauthenticated>,
    ) -> Self {
        Self {
            services,
            client,
            sasl: None,
            unauthenticated,
            message: None,
            messages: 0,
        }
    }

    /// How long a TLS handshake may take.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.services.handshake_timeout
    }

    /// Whether the daemon's memory is above its budget now.
    pub(crate) fn memory_pressure(&self) -> bool {
        self.services.memory_pressure()
    }

    /// The session's place among the unauthenticated is gone (evicted).
    pub(crate) fn unauthenticated_gone(&mut self) {
        self.unauthenticated = None;
    }

    /// Cancelled if this session, not yet logged in, must give its place
    /// to a newer connection; `None` once logged in (or unbounded).
    pub(crate) fn eviction(&self) -> Option<CancellationToken> {
        self.unauthenticated.as_ref().map(|u| u.evicted().clone())
    }

    /// The client as log lines name it.
    fn client_text(&self) -> String {
        match &self.client {
            Client::Network(ip) => ip.to_string(),
            Client::Local { .. } => "local".into(),
        }
    }

    fn account(&self, user: &str) -> Account {
        match &self.client {
            Client::Network(_) => Account::Login(user.to_owned()),
            Client::Local { domain } => Account::Local {
                name: user.to_owned(),
                domain: domain.clone(),
            },
        }
    }

    /// Answers [`submitd_smtp::Output::AuthStart`].
    pub(crate) async fn auth_start(
        &mut self,
        mechanism: &str,
        initial_response: Option<&Secret>,
    ) -> AuthAnswer {
        let Some(mechanism) = Mechanism::from_name(mechanism) else {
            return AuthAnswer::Failure;
        };
        let (exchange, step) = SaslExchange::start(mechanism, initial_response.map(Secret::expose));
        self.sasl = Some((mechanism, exchange));
        self.auth_step(step).await
    }

    /// Answers [`submitd_smtp::Output::AuthResponse`].
    pub(crate) async fn auth_response(&mut self, response: &Secret) -> AuthAnswer {
        let step = match self.sasl.as_mut() {
            Some((_, exchange)) => exchange.respond(response.expose()),
            None => SaslStep::Failed(SaslError::Malformed),
        };
        self.auth_step(step).await
    }

    /// [`submitd_smtp::Output::AuthCancelled`]: the exchange is dropped.
    pub(crate) fn auth_cancelled(&mut self) {
        self.sasl = None;
    }

    async fn auth_step(&mut self, step: SaslStep) -> AuthAnswer {
        let Client::Network(ip) = self.client else {
            // The machine offers no AUTH on the local socket.
            return AuthAnswer::Failure;
        };
        let mechanism = self.sasl.as_ref().map(|(m, _)| *m);
        let outcome = match step {
            SaslStep::Challenge(challenge) => return AuthAnswer::Challenge(challenge.to_vec()),
            // The dummy answer to the error challenge: the refusal was
            // counted when the token was.
            SaslStep::Failed(SaslError::TokenRefused) => LoginOutcome::Rejected,
            SaslStep::Failed(_) => self.services.gate.malformed(ip, mechanism).await,
            SaslStep::Done(credentials) => {
                let mechanism = mechanism.unwrap_or(Mechanism::Plain);
                self.services.gate.login(&credentials, ip, mechanism).await
            }
            SaslStep::Token(credentials) => {
                let mechanism = mechanism.unwrap_or(Mechanism::OAuthBearer);
                let outcome = self
                    .services
                    .gate
                    .login_token(&credentials, ip, mechanism)
                    .await;
                if outcome == LoginOutcome::Rejected {
                    // RFC 7628 §3.2.3: the error challenge; the client's
                    // dummy answer then gets the 535.
                    if let Some((_, exchange)) = self.sasl.as_mut() {
                        exchange.token_refused();
                        return AuthAnswer::Challenge(self.services.gate.token_error_challenge());
                    }
                }
                outcome
            }
        };
        self.sasl = None;
        match outcome {
            LoginOutcome::Authenticated { user } => {
                // Logged in: the place among the unauthenticated is free,
                // and the network is known to be a user's.
                self.unauthenticated = None;
                self.services.known.logged_in(ip, Instant::now());
                AuthAnswer::Success { user }
            }
            LoginOutcome::Rejected => AuthAnswer::Failure,
            LoginOutcome::TryLater => AuthAnswer::TempFailure,
        }
    }

    /// Answers [`submitd_smtp::Output::CheckSender`] for the session's
    /// user `user`.
    pub(crate) async fn sender(&self, user: Option<&str>, mail_from: &MailFrom) -> Verdict {
        // No room in the queue: refused before anything else is read.
        if let Err(e) = self.services.intake.admit(mail_from.params.size) {
            submitd_metrics::metrics().message_refused(e.reason());
            return Verdict::Reject(e.reply());
        }
        let policy = &self.services.policy;
        let user = user
            .ok_or(SenderRefusal::AccountGone)
            .map(|name| self.account(name))
            .and_then(|account| policy.resolve(&account));
        let checked = match user {
            Ok(user) => policy
                .check_envelope(&user, mail_from.sender(), Instant::now())
                .await
                .inspect_err(|refused| self.log_refusal(&user.name, refused)),
            Err(refused) => Err(refused),
        };
        match checked {
            Ok(()) => Verdict::Accept,
            Err(refused) => {
                submitd_metrics::metrics().message_refused(refusal_reason(&refused));
                Verdict::Reject(refusal_reply(&refused))
            }
        }
    }

    fn log_refusal(&self, user: &str, refused: &SenderRefusal) {
        if let SenderRefusal::NotAllowed(e) = refused {
            tracing::warn!(target: "submitd::policy", client = %self.client_text(), %user, "{e}");
        }
    }

    /// [`submitd_smtp::Output::MessageStart`]: a draft in the queue for
    /// the session's user, or the refusal to give at the end.
    pub(crate) fn message_start(&mut self, message: &Message) {
        let policy = &self.services.policy;
        let user = message
            .auth_user
            .as_deref()
            .map(|name| self.account(name))
            .ok_or(SenderRefusal::AccountGone)
            .and_then(|account| policy.resolve(&account));
        self.message = Some(match user {
            Ok(user) => {
                let origin = Origin {
                    user: &user.name,
                    client: match self.client {
                        Client::Network(ip) => Some(ip),
                        Client::Local { .. } => None,
                    },
                };
                Ok(self.services.intake.begin(message, origin))
            }
            Err(refused) => Err(refusal_reply(&refused)),
        });
    }

    /// [`submitd_smtp::Output::MessageData`]: the next piece, written on.
    pub(crate) async fn message_data(&mut self, piece: &[u8]) {
        if let Some(Ok(draft)) = self.message.as_mut() {
            draft.write(piece).await;
        }
    }

    /// [`submitd_smtp::Output::MessageAborted`]: the draft is dropped, and
    /// with it whatever the spool held of it.
    pub(crate) fn message_aborted(&mut self) {
        self.message = None;
    }

    /// Answers [`submitd_smtp::Output::StoreMessage`] for the session's
    /// user `login`: the queue id once the message is durable, or the
    /// reply that refuses it.
    pub(crate) async fn store(&mut self, login: Option<&str>) -> Result<String, Reply> {
        let stored = self.store_message(login).await;
        if let Err((reason, _)) = &stored {
            submitd_metrics::metrics().message_refused(reason);
        }
        stored.map_err(|(_, reply)| reply)
    }

    /// [`Answers::store`], with one word for why a message was refused.
    async fn store_message(
        &mut self,
        login: Option<&str>,
    ) -> Result<String, (&'static str, Reply)> {
        let draft = match self.message.take() {
            Some(Ok(draft)) => draft,
            Some(Err(reply)) => return Err(("account", reply)),
            None => {
                let reply = Reply::new(451, (4, 3, 0), "Local error in processing");
                return Err(("spool", reply));
            }
        };
        let prepared = draft.finish().map_err(|e| (e.reason(), e.reply()))?;
        let policy = &self.services.policy;
        // Resolved again: the account may have changed while the message
        // arrived (a reload), and the header check needs the user.
        let user = login
            .map(|name| self.account(name))
            .ok_or(SenderRefusal::AccountGone)
            .and_then(|account| policy.resolve(&account))
            .map_err(|refused| (refusal_reason(&refused), refusal_reply(&refused)))?;
        let senders = prepared.senders();
        if let Err(refused) = policy.check_header(&user, &senders.from, senders.sender.as_ref()) {
            self.log_refusal(&user.name, &refused);
            return Err((refusal_reason(&refused), refusal_reply(&refused)));
        }
        let accepted = prepared
            .commit()
            .await
            .map_err(|e| (e.reason(), e.reply()))?;
        policy.record(&user, accepted.recipients, Instant::now());
        submitd_metrics::metrics().message_accepted(
            &user.name,
            accepted.recipients,
            accepted.size as u64,
        );
        self.messages += 1;
        Ok(accepted.id.to_string())
    }
}

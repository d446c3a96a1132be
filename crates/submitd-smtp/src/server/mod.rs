//! The server side of one SMTP submission session, as a sans-IO machine.
//!
//! See the crate documentation for the overview. This module holds the
//! public surface (configuration, outputs, answers) and the input loop;
//! `verbs.rs` holds what each command does.

mod verbs;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::address::{ClientName, Mailbox};
use crate::data::{BodyReceiver, Progress};
use crate::limits::Limits;
use crate::params::{MailParams, RcptParams};
use crate::reply::{EnhancedCode, Reply};

/// While the machine waits for an answer, input beyond this many buffered
/// octets makes [`ServerSession::wants_input`] false, so the caller stops
/// reading and TCP pushes back on the client.
const PIPELINE_HIGH_WATER: usize = 64 * 1024;

/// How the connection reached the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TLS was established before the first SMTP byte (port 465, RFC 8314).
    ImplicitTls,
    /// Plain TCP that may be upgraded with STARTTLS (port 587, RFC 3207).
    StartTls,
    /// Plain TCP with no way to TLS. Only EHLO, HELO, NOOP, RSET and QUIT
    /// work; nothing can be submitted.
    Plaintext,
    /// A local socket of this machine whose peer the caller has identified
    /// (a unix socket and the peer's uid): no TLS is needed or offered, nor
    /// AUTH; the caller names the user with
    /// [`ServerSession::authenticate_local`] before feeding input.
    Local,
}

/// What every session of one listener shares.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The name the server gives in its greeting and replies.
    pub hostname: String,
    /// How connections reach this listener.
    pub transport: Transport,
    /// SASL mechanisms offered inside TLS, in upper case (`PLAIN`, `LOGIN`).
    pub auth_mechanisms: Vec<String>,
    /// The session limits.
    pub limits: Limits,
}

impl ServerConfig {
    /// A configuration with default limits and PLAIN and LOGIN offered.
    pub fn new(hostname: impl Into<String>, transport: Transport) -> Self {
        Self {
            hostname: hostname.into(),
            transport,
            auth_mechanisms: vec!["PLAIN".into(), "LOGIN".into()],
            limits: Limits::default(),
        }
    }
}

/// Bytes that must never be logged or kept: AUTH payloads. Zeroed on drop;
/// `Debug` shows nothing of them.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes, for the mechanism that needs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The envelope sender and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailFrom {
    /// The sender; `None` for the null reverse-path `<>`.
    pub reverse_path: Option<Mailbox>,
    /// ESMTP parameters.
    pub params: MailParams,
}

impl MailFrom {
    /// Parses what follows `MAIL FROM:` on the wire (`<path> [params]`),
    /// as the spool stores it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, params) = crate::address::parse_path(text).map_err(|e| e.to_string())?;
        let reverse_path = match path {
            crate::address::PathValue::Null => None,
            crate::address::PathValue::Mailbox(m) => Some(m),
            crate::address::PathValue::Postmaster(_) => {
                return Err("the sender has no @domain".into())
            }
        };
        if !params.is_empty() && !params.starts_with(' ') {
            return Err("text after the address".into());
        }
        let params = crate::params::parse_mail_params(params).map_err(|e| e.to_string())?;
        Ok(Self {
            reverse_path,
            params,
        })
    }
}

/// The wire form after `MAIL FROM:`: `<address>` and the parameters.
impl fmt::Display for MailFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reverse_path {
            Some(m) => write!(f, "<{m}>")?,
            None => f.write_str("<>")?,
        }
        crate::params::write_mail_params(&self.params, f)
    }
}

impl RcptTo {
    /// Parses what follows `RCPT TO:` on the wire (`<path> [params]`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, params) = crate::address::parse_path(text).map_err(|e| e.to_string())?;
        let forward_path = match path {
            crate::address::PathValue::Null => return Err("<> is not a recipient".into()),
            crate::address::PathValue::Mailbox(m) => ForwardPath::Mailbox(m),
            crate::address::PathValue::Postmaster(p) => ForwardPath::Postmaster(p),
        };
        if !params.is_empty() && !params.starts_with(' ') {
            return Err("text after the address".into());
        }
        let params = crate::params::parse_rcpt_params(params).map_err(|e| e.to_string())?;
        Ok(Self {
            forward_path,
            params,
        })
    }
}

/// The wire form after `RCPT TO:`.
impl fmt::Display for RcptTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.forward_path)?;
        crate::params::write_rcpt_params(&self.params, f)
    }
}

/// A recipient address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` with no domain (RFC 5321 §4.1.1.3), as written.
    Postmaster(String),
    /// An ordinary mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmaster(p) => f.write_str(p),
            Self::Mailbox(m) => m.fmt(f),
        }
    }
}

/// One recipient and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptTo {
    /// The recipient.
    pub forward_path: ForwardPath,
    /// ESMTP parameters.
    pub params: RcptParams,
}

/// A complete message with its envelope, ready to be stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub mail_from: MailFrom,
    /// The accepted recipients, in order.
    pub recipients: Vec<RcptTo>,
    /// The content exactly as sent, dot-unstuffed, lines ended by CRLF.
    pub data: Vec<u8>,
    /// The name the client gave in EHLO.
    pub client_name: ClientName,
    /// Who authenticated, as the credential check named them.
    pub auth_user: Option<String>,
    /// Whether the session was inside TLS.
    pub tls: bool,
    /// Whether the content came by BDAT rather than DATA.
    pub chunked: bool,
}

impl Message {
    /// The `with` protocol name for the Received header (RFC 3848, and
    /// RFC 6531 §3.7.3 for UTF8SMTP).
    pub fn protocol(&self) -> &'static str {
        match (
            self.mail_from.params.smtputf8,
            self.tls,
            self.auth_user.is_some(),
        ) {
            (false, false, false) => "ESMTP",
            (false, true, false) => "ESMTPS",
            (false, false, true) => "ESMTPA",
            (false, true, true) => "ESMTPSA",
            (true, false, false) => "UTF8SMTP",
            (true, true, false) => "UTF8SMTPS",
            (true, false, true) => "UTF8SMTPA",
            (true, true, true) => "UTF8SMTPSA",
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("mail_from", &self.mail_from)
            .field("recipients", &self.recipients)
            .field("data_len", &self.data.len())
            .field("client_name", &self.client_name)
            .field("auth_user", &self.auth_user)
            .field("tls", &self.tls)
            .field("chunked", &self.chunked)
            .finish()
    }
}

/// Why the machine closed the session; for the caller's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent QUIT.
    Quit,
    /// Nothing arrived within the idle timeout.
    IdleTimeout,
    /// The session lasted longer than allowed.
    SessionTimeLimit,
    /// Too many errors.
    TooManyErrors,
    /// A bare CR or LF in a command or in message content.
    BareLineEnd,
    /// An HTTP request or header: a cross-protocol attempt.
    CrossProtocol,
    /// Binary data where a command should start (a TLS ClientHello sent to
    /// a plain port, for instance).
    BinaryInput,
    /// A BDAT command whose size could not be read, so its chunk could not
    /// be skipped.
    BdatSyntax,
    /// The server is shutting down.
    Shutdown,
}

/// What the machine asks of its caller, in order.
///
/// The caller drains [`ServerSession::poll_output`] after every input and
/// every answer, writes each `Send` in order, and acts on the rest.
#[derive(Debug)]
pub enum Output {
    /// Bytes to write to the client. Consecutive replies are coalesced, so a
    /// pipelined group of commands is answered in one write.
    Send(Vec<u8>),
    /// Write everything sent so far, then run the TLS handshake and call
    /// [`ServerSession::tls_established`]. `discarded` octets that followed
    /// the STARTTLS line were thrown away unread (RFC 3207 §4.2); log them.
    StartTls {
        /// Octets dropped from the plaintext buffer.
        discarded: usize,
    },
    /// An AUTH exchange starts: give the mechanism the initial response (if
    /// any) and answer with [`ServerSession::answer_auth`].
    AuthStart {
        /// The mechanism name, in upper case, one of those configured.
        mechanism: String,
        /// The decoded initial response; `Some` and empty for `=`.
        initial_response: Option<Secret>,
    },
    /// The client's next response in the AUTH exchange; answer with
    /// [`ServerSession::answer_auth`].
    AuthResponse(Secret),
    /// The client cancelled the exchange (`*`) or sent invalid base64: drop
    /// the mechanism's state. Needs no answer.
    AuthCancelled,
    /// May the authenticated user send as this sender? Answer with
    /// [`ServerSession::answer_sender`].
    CheckSender(MailFrom),
    /// May this recipient be added? Answer with
    /// [`ServerSession::answer_recipient`].
    CheckRecipient(RcptTo),
    /// Store this message durably, then answer with
    /// [`ServerSession::answer_store`]. The client is told nothing until then.
    StoreMessage(Box<Message>),
    /// Write everything sent so far and close the connection.
    Close(CloseReason),
}

/// The caller's answer to an AUTH step.
#[derive(Debug)]
pub enum AuthAnswer {
    /// Send this challenge (raw bytes; the machine base64-encodes them) and
    /// read the client's response.
    Challenge(Vec<u8>),
    /// The credentials are good; `user` is who is now authenticated.
    Success {
        /// The authenticated identity.
        user: String,
    },
    /// Wrong credentials or unknown user (one answer for both): 535 5.7.8.
    Failure,
    /// The check could not be made now (backend down, throttled): 454 4.7.0.
    TempFailure,
}

/// The caller's answer to a sender or recipient check.
#[derive(Debug)]
pub enum Verdict {
    /// Accept it.
    Accept,
    /// Refuse it with this reply.
    Reject(Reply),
}

/// An answer given when the machine had not asked for it; a bug in the
/// caller, reported instead of acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The machine is not waiting for this kind of answer.
    #[error("the session is not waiting for this answer")]
    NotAsked,
}

/// The transaction between MAIL and the end of the message.
#[derive(Debug)]
struct Transaction {
    mail_from: MailFrom,
    recipients: Vec<RcptTo>,
    /// Content received by BDAT so far; `Some` once the first chunk came.
    chunks: Option<BodyReceiver>,
    /// A BDAT chunk failed; only RSET (or a LAST chunk) ends this state.
    chunk_failed: bool,
}

/// A BDAT chunk being read.
#[derive(Debug)]
struct Chunk {
    size: u64,
    remaining: u64,
    last: bool,
    /// Read and drop the chunk, then send this reply.
    refusal: Option<Reply>,
}

/// The question the machine waits on.
#[derive(Debug)]
enum Pending {
    Auth,
    Sender(MailFrom),
    Recipient(RcptTo),
    Store,
}

#[derive(Debug)]
enum State {
    /// Reading a command line.
    Command,
    /// Reading a line of an AUTH exchange.
    AuthContinuation,
    /// Throwing away the rest of an over-long line.
    SkipLine,
    /// Reading DATA content.
    Data(BodyReceiver),
    /// Reading a BDAT chunk.
    Chunk(Chunk),
    /// Waiting for the caller's answer.
    Waiting(Pending),
    /// Waiting for the caller's TLS handshake.
    StartTlsPending,
    /// Done; all input is ignored.
    Closed,
}

/// One SMTP server session. See the crate documentation.
pub struct ServerSession {
    config: Arc<ServerConfig>,
    input: Vec<u8>,
    pos: usize,
    outputs: VecDeque<Output>,
    state: State,
    tls: bool,
    client_name: Option<ClientName>,
    extended: bool,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    started: Instant,
    last_input: Instant,
    shutting_down: bool,
}

/// Shows the session's state but never buffered input or message content:
/// the buffer may hold a pipelined AUTH response.
impl fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Command => "Command",
            State::AuthContinuation => "AuthContinuation",
            State::SkipLine => "SkipLine",
            State::Data(_) => "Data",
            State::Chunk(_) => "Chunk",
            State::Waiting(Pending::Auth) => "Waiting(Auth)",
            State::Waiting(Pending::Sender(_)) => "Waiting(Sender)",
            State::Waiting(Pending::Recipient(_)) => "Waiting(Recipient)",
            State::Waiting(Pending::Store) => "Waiting(Store)",
            State::StartTlsPending => "StartTlsPending",
            State::Closed => "Closed",
        };
        f.debug_struct("ServerSession")
            .field("state", &state)
            .field("tls", &self.tls)
            .field("client_name", &self.client_name)
            .field("auth_user", &self.auth_user)
            .field("in_transaction", &self.tx.is_some())
            .field("buffered_octets", &(self.input.len() - self.pos))
            .field("errors", &self.errors)
            .finish()
    }
}

impl ServerSession {
    /// A new session on a connection accepted at `now`. The greeting is the
    /// first output.
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Self {
        let tls = config.transport == Transport::ImplicitTls;
        let mut session = Self {
            config,
            input: Vec::new(),
            pos: 0,
            outputs: VecDeque::new(),
            state: State::Command,
            tls,
            client_name: None,
            extended: false,
            auth_user: None,
            tx: None,
            errors: 0,
            started: now,
            last_input: now,
            shutting_down: false,
        };
        let greeting = Reply::bare(220, format!("{} ESMTP ready", session.config.hostname));
        session.reply(greeting);
        session
    }

    /// Feeds octets read from the client at `now`. Call whenever a read
    /// returns data, then drain [`Self::poll_output`].
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        match self.state {
            // After STARTTLS nothing more of the plaintext stream is read.
            State::Closed | State::StartTlsPending => return,
            _ => {}
        }
        if !bytes.is_empty() {
            self.last_input = now;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// Tells the machine the time is `now`. Call when [`Self::poll_timeout`]
    /// has passed; it may close the session with 421.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.waiting_for_client() {
            return;
        }
        let host = self.config.hostname.clone();
        if now >= self.started + self.config.limits.session_duration {
            self.reply(Reply::new(
                421,
                EnhancedCode::new(4, 4, 2),
                format!("{host} Session time limit reached, closing connection"),
            ));
            self.close(CloseReason::SessionTimeLimit);
        } else if now >= self.last_input + self.config.limits.idle_timeout {
            self.reply(Reply::new(
                421,
                EnhancedCode::new(4, 4, 2),
                format!("{host} Timeout waiting for input, closing connection"),
            ));
            self.close(CloseReason::IdleTimeout);
        }
    }

    /// When [`Self::handle_timeout`] should next be called, if at all. Only
    /// time spent waiting for the client counts; time the caller spends
    /// answering a question does not.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting_for_client().then(|| {
            let limits = &self.config.limits;
            (self.started + limits.session_duration).min(self.last_input + limits.idle_timeout)
        })
    }

    /// The next output, in order; `None` when there is nothing more to do
    /// until the next input or answer.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether the caller should read more from the client now. False once
    /// closed, during the STARTTLS handshake, and while enough pipelined
    /// input waits behind an unanswered question.
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Closed | State::StartTlsPending => false,
            State::Waiting(_) => self.input.len() - self.pos < PIPELINE_HIGH_WATER,
            _ => true,
        }
    }

    /// The server is stopping: the session ends with 421 at the next point
    /// between commands. A message being received or stored is finished
    /// and answered first, so nothing acknowledged is cut off and nothing
    /// half-received is kept.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        self.process();
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the session is inside TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Names the user of a [`Transport::Local`] session, whom the caller
    /// identified by the socket's peer credentials. Refused on any other
    /// transport: there only AUTH logs in.
    pub fn authenticate_local(&mut self, user: impl Into<String>) -> Result<(), AnswerError> {
        if self.config.transport != Transport::Local {
            return Err(AnswerError::NotAsked);
        }
        self.auth_user = Some(user.into());
        Ok(())
    }

    /// Who authenticated in this session, if anyone.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// The name the client gave in EHLO or HELO.
    pub fn client_name(&self) -> Option<&ClientName> {
        self.client_name.as_ref()
    }

    /// Call when the TLS handshake asked for by [`Output::StartTls`] has
    /// finished. The session starts over inside TLS: the client must send
    /// EHLO again, and nothing said before counts (RFC 3207 §4.2).
    pub fn tls_established(&mut self) -> Result<(), AnswerError> {
        if !matches!(self.state, State::StartTlsPending) {
            return Err(AnswerError::NotAsked);
        }
        self.tls = true;
        self.client_name = None;
        self.extended = false;
        self.auth_user = None;
        self.tx = None;
        // STARTTLS already dropped the plaintext buffer; clearing again here
        // keeps the rule true even if that step is ever changed.
        self.input.clear();
        self.pos = 0;
        self.state = State::Command;
        Ok(())
    }

    /// Answers [`Output::AuthStart`] or [`Output::AuthResponse`].
    pub fn answer_auth(&mut self, answer: AuthAnswer) -> Result<(), AnswerError> {
        if !matches!(self.state, State::Waiting(Pending::Auth)) {
            return Err(AnswerError::NotAsked);
        }
        self.state = State::Command;
        match answer {
            AuthAnswer::Challenge(challenge) => {
                self.state = State::AuthContinuation;
                let text = base64::engine::general_purpose::STANDARD.encode(challenge);
                self.reply(Reply::continuation(text));
            }
            AuthAnswer::Success { user } => {
                self.auth_user = Some(user);
                self.reply(ok(235, (2, 7, 0), "Authentication successful"));
            }
            AuthAnswer::Failure => self.error(Reply::new(
                535,
                EnhancedCode::new(5, 7, 8),
                "Authentication credentials invalid",
            )),
            AuthAnswer::TempFailure => self.reply(Reply::new(
                454,
                EnhancedCode::new(4, 7, 0),
                "Temporary authentication failure, try again later",
            )),
        }
        self.process();
        Ok(())
    }

    /// Answers [`Output::CheckSender`].
    pub fn answer_sender(&mut self, verdict: Verdict) -> Result<(), AnswerError> {
        let State::Waiting(Pending::Sender(_)) = self.state else {
            return Err(AnswerError::NotAsked);
        };
        let State::Waiting(Pending::Sender(mail_from)) =
            std::mem::replace(&mut self.state, State::Command)
        else {
            return Err(AnswerError::NotAsked);
        };
        match verdict {
            Verdict::Accept => {
                let text = match &mail_from.reverse_path {
                    Some(m) => format!("Sender <{m}> OK"),
                    None => "Sender <> OK".to_owned(),
                };
                self.tx = Some(Transaction {
                    mail_from,
                    recipients: Vec::new(),
                    chunks: None,
                    chunk_failed: false,
                });
                self.reply(ok(250, (2, 1, 0), text));
            }
            Verdict::Reject(reply) => self.reply(reply),
        }
        self.process();
        Ok(())
    }

    /// Answers [`Output::CheckRecipient`].
    pub fn answer_recipient(&mut self, verdict: Verdict) -> Result<(), AnswerError> {
        let State::Waiting(Pending::Recipient(_)) = self.state else {
            return Err(AnswerError::NotAsked);
        };
        let State::Waiting(Pending::Recipient(rcpt)) =
            std::mem::replace(&mut self.state, State::Command)
        else {
            return Err(AnswerError::NotAsked);
        };
        match (verdict, self.tx.as_mut()) {
            (Verdict::Accept, Some(tx)) => {
                let text = format!("Recipient <{}> OK", rcpt.forward_path);
                tx.recipients.push(rcpt);
                self.reply(ok(250, (2, 1, 5), text));
            }
            (Verdict::Reject(reply), _) => self.reply(reply),
            // Unreachable: RCPT is only asked about inside a transaction.
            (Verdict::Accept, None) => self.reply(Reply::new(
                451,
                EnhancedCode::new(4, 3, 0),
                "Local error in processing",
            )),
        }
        self.process();
        Ok(())
    }

    /// Answers [`Output::StoreMessage`]: the queue id once the message is
    /// durable, or the reply that refuses it.
    pub fn answer_store(&mut self, result: Result<String, Reply>) -> Result<(), AnswerError> {
        if !matches!(self.state, State::Waiting(Pending::Store)) {
            return Err(AnswerError::NotAsked);
        }
        self.state = State::Command;
        match result {
            Ok(queue_id) => self.reply(ok(250, (2, 0, 0), format!("Ok: queued as {queue_id}"))),
            Err(reply) => self.reply(reply),
        }
        self.process();
        Ok(())
    }

    fn waiting_for_client(&self) -> bool {
        matches!(
            self.state,
            State::Command
                | State::AuthContinuation
                | State::SkipLine
                | State::Data(_)
                | State::Chunk(_)
        )
    }

    /// Queues a reply, coalescing with a `Send` already queued.
    fn reply(&mut self, reply: Reply) {
        if let Some(Output::Send(buf)) = self.outputs.back_mut() {
            reply.write_to(buf);
        } else {
            self.outputs.push_back(Output::Send(reply.to_bytes()));
        }
    }

    /// Queues a reply to a client error and closes after too many.
    fn error(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.config.limits.errors && !self.is_closed() {
            let host = self.config.hostname.clone();
            self.reply(Reply::new(
                421,
                EnhancedCode::new(4, 7, 0),
                format!("{host} Too many errors, closing connection"),
            ));
            self.close(CloseReason::TooManyErrors);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.input = Vec::new();
        self.pos = 0;
        self.tx = None;
        self.outputs.push_back(Output::Close(reason));
    }

    /// Runs the machine over buffered input until it needs more input or an
    /// answer.
    fn process(&mut self) {
        loop {
            if self.shutting_down
                && matches!(
                    self.state,
                    State::Command | State::SkipLine | State::AuthContinuation
                )
            {
                if matches!(self.state, State::AuthContinuation) {
                    self.outputs.push_back(Output::AuthCancelled);
                }
                let host = self.config.hostname.clone();
                self.reply(Reply::new(
                    421,
                    EnhancedCode::new(4, 3, 2),
                    format!("{host} Service shutting down, try again later"),
                ));
                self.close(CloseReason::Shutdown);
                return;
            }
            let progressed = match self.state {
                State::Command | State::AuthContinuation | State::SkipLine => self.step_line(),
                State::Data(_) => self.step_data(),
                State::Chunk(_) => self.step_chunk(),
                State::Waiting(_) | State::StartTlsPending | State::Closed => false,
            };
            if !progressed {
                break;
            }
        }
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
    }

    fn max_read_line(&self) -> usize {
        let limits = &self.config.limits;
        match self.state {
            State::AuthContinuation => limits.auth_line,
            _ => limits
                .auth_line
                .max(limits.command_line + limits.extension_allowance),
        }
    }

    /// Takes one line. Returns whether the machine made progress.
    fn step_line(&mut self) -> bool {
        let buf = &self.input[self.pos..];
        let Some(&first) = buf.first() else {
            return false;
        };
        if matches!(self.state, State::Command) && is_binary(first) {
            self.reply(Reply::new(
                500,
                EnhancedCode::new(5, 5, 2),
                "Binary data where a command was expected; closing connection",
            ));
            self.close(CloseReason::BinaryInput);
            return false;
        }
        let max = self.max_read_line();
        let Some(lf) = memchr::memchr(b'\n', buf) else {
            if buf.len() > max {
                if !matches!(self.state, State::SkipLine) {
                    self.refuse_long_line(State::SkipLine);
                }
                self.pos = self.input.len();
            }
            return false;
        };
        let line_end = self.pos + lf + 1;
        if matches!(self.state, State::SkipLine) {
            self.pos = line_end;
            self.state = State::Command;
            return true;
        }
        if lf + 1 > max {
            self.pos = line_end;
            self.refuse_long_line(State::Command);
            return true;
        }
        let crlf = lf > 0 && buf[lf - 1] == b'\r';
        if !crlf || buf[..lf - 1].contains(&b'\r') {
            self.reply(Reply::new(
                500,
                EnhancedCode::new(5, 5, 2),
                "Bare CR or LF in command line; closing connection",
            ));
            self.close(CloseReason::BareLineEnd);
            return false;
        }
        let line = buf[..lf - 1].to_vec();
        self.pos = line_end;
        match self.state {
            State::AuthContinuation => self.auth_continuation(&line),
            _ => self.command(&line),
        }
        true
    }

    /// Refuses an over-long line; an AUTH exchange it was part of ends.
    fn refuse_long_line(&mut self, next: State) {
        if matches!(self.state, State::AuthContinuation) {
            self.outputs.push_back(Output::AuthCancelled);
        }
        self.state = next;
        self.error(line_too_long());
    }

    fn step_data(&mut self) -> bool {
        let State::Data(receiver) = &mut self.state else {
            return false;
        };
        let buf = &self.input[self.pos..];
        if buf.is_empty() {
            return false;
        }
        match receiver.feed_data(buf) {
            Progress::NeedMore => {
                self.pos = self.input.len();
                false
            }
            Progress::End(n) => {
                self.pos += n;
                if let State::Data(receiver) = std::mem::replace(&mut self.state, State::Command) {
                    self.finish_body(receiver, false);
                }
                true
            }
            Progress::BareLineEnd => {
                self.refuse_bare_line_end();
                false
            }
        }
    }

    fn step_chunk(&mut self) -> bool {
        let State::Chunk(chunk) = &mut self.state else {
            return false;
        };
        let available = (self.input.len() - self.pos) as u64;
        let take = chunk.remaining.min(available);
        if take == 0 && chunk.remaining > 0 {
            return false;
        }
        // `take` is at most the buffered length, so it fits in usize.
        let end = self.pos + take as usize;
        chunk.remaining -= take;
        let done = chunk.remaining == 0;
        if chunk.refusal.is_none() {
            if let Some(receiver) = self.tx.as_mut().and_then(|tx| tx.chunks.as_mut()) {
                if receiver.feed_chunk(&self.input[self.pos..end]).is_err() {
                    self.refuse_bare_line_end();
                    return false;
                }
            }
        }
        self.pos = end;
        if done {
            if let State::Chunk(chunk) = std::mem::replace(&mut self.state, State::Command) {
                self.finish_chunk(chunk);
            }
        }
        done
    }

    fn refuse_bare_line_end(&mut self) {
        self.reply(Reply::new(
            554,
            EnhancedCode::new(5, 5, 2),
            "Message refused: bare CR or LF in message data (RFC 5321 §2.3.8); closing connection",
        ));
        self.close(CloseReason::BareLineEnd);
    }

    /// The DATA or final BDAT content is complete: refuse it or ask for it
    /// to be stored.
    fn finish_body(&mut self, receiver: BodyReceiver, chunked: bool) {
        use crate::data::BodyFault;
        match receiver.fault() {
            Some(BodyFault::TooBig) => {
                self.tx = None;
                let max = self.config.limits.message_size;
                self.reply(Reply::new(
                    552,
                    EnhancedCode::new(5, 3, 4),
                    format!("Message size exceeds fixed maximum message size of {max} octets"),
                ));
            }
            Some(BodyFault::LineTooLong) => {
                self.tx = None;
                let max = self.config.limits.data_line;
                self.reply(Reply::new(
                    554,
                    EnhancedCode::new(5, 6, 0),
                    format!(
                        "Message refused: a line is longer than {max} octets (RFC 5321 §4.5.3.1.6)"
                    ),
                ));
            }
            None => {
                let (Some(tx), Some(client_name)) = (self.tx.take(), self.client_name.clone())
                else {
                    self.reply(Reply::new(
                        451,
                        EnhancedCode::new(4, 3, 0),
                        "Local error in processing",
                    ));
                    return;
                };
                let message = Message {
                    mail_from: tx.mail_from,
                    recipients: tx.recipients,
                    data: receiver.into_data(),
                    client_name,
                    auth_user: self.auth_user.clone(),
                    tls: self.tls,
                    chunked,
                };
                self.state = State::Waiting(Pending::Store);
                self.outputs
                    .push_back(Output::StoreMessage(Box::new(message)));
            }
        }
    }

    /// A BDAT chunk has been read in full.
    fn finish_chunk(&mut self, chunk: Chunk) {
        if let Some(refusal) = chunk.refusal {
            if chunk.last && self.tx.as_ref().is_some_and(|tx| tx.chunk_failed) {
                self.tx = None;
            }
            self.error(refusal);
            return;
        }
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let Some(receiver) = tx.chunks.as_mut() else {
            return;
        };
        if !chunk.last {
            if receiver.fault() == Some(crate::data::BodyFault::TooBig) {
                tx.chunk_failed = true;
                let max = self.config.limits.message_size;
                self.reply(Reply::new(
                    552,
                    EnhancedCode::new(5, 3, 4),
                    format!("Message size exceeds fixed maximum message size of {max} octets"),
                ));
            } else {
                let text = format!("{} octets received", chunk.size);
                self.reply(ok(250, (2, 0, 0), text));
            }
            return;
        }
        if receiver.finish_chunks().is_err() {
            self.refuse_bare_line_end();
            return;
        }
        if let Some(receiver) = tx.chunks.take() {
            self.finish_body(receiver, true);
        }
    }
}

/// A reply with its enhanced code given as a tuple.
fn ok(code: u16, (class, subject, detail): (u8, u16, u16), text: impl AsRef<str>) -> Reply {
    Reply::new(code, EnhancedCode::new(class, subject, detail), text)
}

fn line_too_long() -> Reply {
    Reply::new(500, EnhancedCode::new(5, 5, 2), "Line too long")
}

/// A first octet no SMTP command or empty line starts with.
fn is_binary(b: u8) -> bool {
    (b < 0x20 && b != b'\r' && b != b'\n' && b != b'\t') || b >= 0x7f
}

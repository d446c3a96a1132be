//! The server side of one SMTP submission session, as a sans-IO machine.
//!
//! See the crate documentation for the overview. This module holds the
//! public surface (configuration, outputs, answers), the session's state
//! and the input loop; each command lives in the file of its verb, with
//! the `answer_*` that completes it:
//!
//! | file | commands | answers |
//! | --- | --- | --- |
//! | `reader.rs` | line reading, dispatch, NOOP RSET QUIT VRFY HELP | |
//! | `ehlo.rs` | EHLO, HELO | |
//! | `starttls.rs` | STARTTLS | [`ServerSession::tls_established`] |
//! | `auth.rs` | AUTH and its continuation lines | [`ServerSession::answer_auth`] |
//! | `mail.rs` | MAIL | [`ServerSession::answer_sender`] |
//! | `rcpt.rs` | RCPT | [`ServerSession::answer_recipient`] |
//! | `data.rs` | DATA and its content | [`ServerSession::answer_store`] |
//! | `chunking.rs` | BDAT and its chunks | (the store answer, as DATA) |
//!
//! Order of checks for a command that needs them: TLS first (530), then
//! EHLO (503), then authentication (530), then the transaction sequence
//! (503/554), then syntax (501/555), then limits.

mod auth;
mod chunking;
mod data;
mod ehlo;
mod mail;
mod rcpt;
mod reader;
mod starttls;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::address::ClientName;
use crate::body::BodyReceiver;
use crate::envelope::{MailFrom, Message, RcptTo};
use crate::limits::Limits;
use crate::reply::Reply;
use crate::secret::Secret;
use crate::transport::Transport;

use chunking::Chunk;

/// While the machine waits for an answer, input beyond this many buffered
/// octets makes [`ServerSession::wants_input`] false, so the caller stops
/// reading and TCP pushes back on the client.
const PIPELINE_HIGH_WATER: usize = 64 * 1024;

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
    /// A BDAT chunk larger than the whole message may be: it is neither
    /// read nor skipped.
    ChunkTooBig,
    /// A command line took longer than the command deadline, or message
    /// content arrived slower than the minimum rate (slowloris).
    TooSlow,
    /// The session had not logged in and its place was needed for a newer
    /// connection ([`ServerSession::evict`]).
    Evicted,
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
    /// A message's content begins (after the 354 to DATA, or with the
    /// first accepted BDAT chunk): its envelope and the session facts the
    /// trace header needs. Its content follows as `MessageData`, then
    /// exactly one `StoreMessage` or `MessageAborted`. Needs no answer.
    MessageStart(Box<Message>),
    /// The next piece of the content of the message begun by the last
    /// `MessageStart`: dot-unstuffed, every line ended by CRLF, in order.
    /// The machine keeps none of it (memory does not grow with the
    /// message); the caller appends it where the message is being stored.
    /// Needs no answer.
    MessageData(Vec<u8>),
    /// The message begun is refused or cut off (too big, a line too long,
    /// a bare line end, RSET, the session ending): drop what was passed
    /// on. Needs no answer; the client gets its reply from the machine.
    MessageAborted,
    /// The content of the message begun is complete: store it durably,
    /// then answer with [`ServerSession::answer_store`]. The client is told
    /// nothing until then.
    StoreMessage,
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
    /// A `MessageStart` went out and neither `StoreMessage` nor
    /// `MessageAborted` has yet.
    message_open: bool,
    errors: u32,
    started: Instant,
    last_input: Instant,
    /// The time of the last input or timeout, for clocks that start in
    /// the middle of processing.
    now: Instant,
    /// When the line being read began (its first octet arrived).
    line_started: Option<Instant>,
    /// When the DATA content or BDAT chunk being read began, and octets
    /// of it read since.
    content_clock: Option<(Instant, u64)>,
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
            message_open: false,
            errors: 0,
            started: now,
            last_input: now,
            now,
            line_started: None,
            content_clock: None,
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
        self.now = now;
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// Starts the line clock when a line is left half-read, stops it when
    /// none is.
    fn track_line(&mut self, now: Instant) {
        let mid_line = match self.state {
            State::SkipLine => true,
            State::Command | State::AuthContinuation => self.input.len() > self.pos,
            _ => false,
        };
        if !mid_line {
            self.line_started = None;
        } else if self.line_started.is_none() {
            self.line_started = Some(now);
        }
    }

    /// Starts the content clock (DATA content or a BDAT chunk begins).
    fn start_content_clock(&mut self) {
        self.content_clock = Some((self.now, 0));
    }

    /// Counts `octets` of content read.
    fn content_read(&mut self, octets: usize) {
        if let Some((_, read)) = self.content_clock.as_mut() {
            *read = read.saturating_add(octets as u64);
        }
    }

    /// When the line or the content being read must be complete.
    fn slow_deadline(&self) -> Option<Instant> {
        let limits = &self.config.limits;
        match self.state {
            State::Data(_) | State::Chunk(_) => self.content_clock.map(|(started, read)| {
                let rate = limits.min_data_rate.max(1);
                started + limits.command_deadline + Duration::from_secs(read / rate)
            }),
            _ => self.line_started.map(|at| at + limits.command_deadline),
        }
    }

    /// Tells the machine the time is `now`. Call when [`Self::poll_timeout`]
    /// has passed; it may close the session with 421.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.waiting_for_client() {
            return;
        }
        self.now = now;
        let timeout = (4, 4, 2);
        if now >= self.started + self.config.limits.session_duration {
            let text = "Session time limit reached, closing connection";
            self.close_421(timeout, text, CloseReason::SessionTimeLimit);
        } else if now >= self.last_input + self.config.limits.idle_timeout {
            let text = "Timeout waiting for input, closing connection";
            self.close_421(timeout, text, CloseReason::IdleTimeout);
        } else if self.slow_deadline().is_some_and(|at| now >= at) {
            let text = if matches!(self.state, State::Data(_) | State::Chunk(_)) {
                "Message content arriving too slowly, closing connection"
            } else {
                "Command not received in time, closing connection"
            };
            self.close_421(timeout, text, CloseReason::TooSlow);
        }
    }

    /// When [`Self::handle_timeout`] should next be called, if at all. Only
    /// time spent waiting for the client counts; time the caller spends
    /// answering a question does not.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting_for_client().then(|| {
            let limits = &self.config.limits;
            let deadline =
                (self.started + limits.session_duration).min(self.last_input + limits.idle_timeout);
            self.slow_deadline()
                .map_or(deadline, |slow| slow.min(deadline))
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

    /// The caller needs this session's place for a newer connection (the
    /// bound on sessions that have not logged in is full and this one is
    /// the oldest): `421 4.7.0` and close, at once. Only a session that
    /// has not authenticated can be evicted (it has no message in flight);
    /// returns whether this one was.
    pub fn evict(&mut self) -> bool {
        // Not while a question is open (the caller is answering it) nor
        // once logged in.
        if self.auth_user.is_some() || !self.waiting_for_client() {
            return false;
        }
        let text = "Too many connections waiting to log in; closing the oldest";
        self.close_421((4, 7, 0), text, CloseReason::Evicted);
        true
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

    /// How the listener this session came in on starts TLS.
    pub fn transport(&self) -> Transport {
        self.config.transport
    }

    /// Who authenticated in this session, if anyone.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// The name the client gave in EHLO or HELO.
    pub fn client_name(&self) -> Option<&ClientName> {
        self.client_name.as_ref()
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
            let text = "Too many errors, closing connection";
            self.close_421((4, 7, 0), text, CloseReason::TooManyErrors);
        }
    }

    /// 552 5.3.4 for content (or a declared SIZE) over the limit.
    fn too_big(&self) -> Reply {
        let max = self.config.limits.message_size;
        Reply::new(
            552,
            (5, 3, 4),
            format!("Message size exceeds fixed maximum message size of {max} octets"),
        )
    }

    /// `421 <code> <hostname> <text>`, then close.
    fn close_421(&mut self, code: (u8, u16, u16), text: &str, reason: CloseReason) {
        let reply = Reply::new(421, code, format!("{} {text}", self.config.hostname));
        self.reply(reply);
        self.close(reason);
    }

    /// Ends the session: an AUTH exchange in progress is cancelled (the
    /// caller drops its mechanism), a message begun is aborted.
    fn close(&mut self, reason: CloseReason) {
        if matches!(self.state, State::AuthContinuation) {
            self.outputs.push_back(Output::AuthCancelled);
        }
        self.state = State::Closed;
        self.input = Vec::new();
        self.pos = 0;
        self.end_transaction();
        self.outputs.push_back(Output::Close(reason));
    }

    /// Ends the transaction without storing: a message begun is aborted.
    fn end_transaction(&mut self) {
        self.tx = None;
        self.abort_message();
    }

    /// Tells the caller to drop the message begun, if one is.
    fn abort_message(&mut self) {
        if std::mem::take(&mut self.message_open) {
            self.outputs.push_back(Output::MessageAborted);
        }
    }

    /// Begins a message of the current transaction: the caller opens
    /// where its content goes. False (and nothing begun) without one.
    fn start_message(&mut self, chunked: bool) -> bool {
        let (Some(tx), Some(client_name)) = (self.tx.as_ref(), self.client_name.clone()) else {
            return false;
        };
        let message = Message {
            mail_from: tx.mail_from.clone(),
            recipients: tx.recipients.clone(),
            client_name,
            auth_user: self.auth_user.clone(),
            tls: self.tls,
            chunked,
        };
        self.message_open = true;
        self.outputs
            .push_back(Output::MessageStart(Box::new(message)));
        true
    }

    /// Passes on content a receiver read (`BodyReceiver::take`); aborts
    /// the message once the receiver found a fault (`faulted`): the rest
    /// is only read, never passed on.
    fn pass_on(&mut self, data: Vec<u8>, faulted: bool) {
        if faulted {
            self.abort_message();
        } else if !data.is_empty() && self.message_open {
            self.outputs.push_back(Output::MessageData(data));
        }
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
                let text = "Service shutting down, try again later";
                self.close_421((4, 3, 2), text, CloseReason::Shutdown);
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
        self.track_line(self.now);
    }
}

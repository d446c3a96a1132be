//! The client side of SMTP, for relaying to the upstream smarthost, as a
//! sans-IO machine like the server.
//!
//! ```text
//!   new(now) ─▶ Greeting ─220─▶ EHLO ─250─┬─(StartTls, not yet TLS)─▶ STARTTLS ─220─▶ StartTls output
//!                                         │                       tls_established(now) ─▶ EHLO again
//!                                         └─▶ AUTH (if credentials) ─235─▶ Ready
//!                                               PLAIN | LOGIN with a password,
//!                                               XOAUTH2 | OAUTHBEARER with a bearer token
//!   send_message(now, envelope, data) ─▶ MAIL, RCPT…, DATA (pipelined when offered)
//!        ─▶ Outcome(per-recipient replies) ─▶ Ready … quit(now) ─▶ QUIT ─▶ Close
//!   send_message_streamed(now, envelope, size, eight_bit) ─▶ MAIL, RCPT…, DATA
//!        ─▶ SendContent ─▶ send_content(piece)… ─▶ end_content(now) ─▶ Outcome ─▶ Ready
//! ```
//!
//! The caller's loop, as with the server machine: after creating the
//! session and after every input, timeout or call, drain
//! [`ClientSession::poll_output`] and act on each output in order (write
//! `Send` bytes, run the handshake on `StartTls`, hand over a message on
//! `Ready`); read from the upstream until [`ClientSession::poll_timeout`]
//! and feed what arrives to [`ClientSession::handle_input`], or call
//! [`ClientSession::handle_timeout`] when the deadline passes.
//!
//! TLS is never optional: a `StartTls` upstream that does not offer
//! STARTTLS fails the session, and whatever the server sent after its 220
//! to STARTTLS is dropped unread. ESMTP parameters (SIZE, BODY, SMTPUTF8,
//! DSN) are passed on only when the upstream offers them; a message that
//! needs SMTPUTF8 or 8BITMIME from an upstream without it fails
//! permanently with a reply that says so, and is never altered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::body::{dot_stuff, DotStuffer};
use crate::envelope::{Envelope, ForwardPath, RcptTo};
use crate::params::{BodyType, Ret};
use crate::reply::Reply;
use crate::reply_parser::{ReplyError, ReplyParser};
use crate::secret::Secret;
use crate::transport::Transport;

/// A SASL mechanism the client can use with an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (RFC 4616): user and password in one response.
    Plain,
    /// LOGIN: user, then password, each after a 334.
    Login,
    /// XOAUTH2 (Google's and Microsoft's): user and an OAuth2 bearer token.
    XOAuth2,
    /// OAUTHBEARER (RFC 7628): the standard form of the same.
    OAuthBearer,
}

impl Mechanism {
    /// Every mechanism, in the client's order of preference within a kind.
    pub const ALL: [Self; 4] = [Self::Plain, Self::Login, Self::XOAuth2, Self::OAuthBearer];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::XOAuth2 => "XOAUTH2",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism of that name (any case).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// What the mechanism carries.
    pub fn kind(self) -> SecretKind {
        match self {
            Self::Plain | Self::Login => SecretKind::Password,
            Self::XOAuth2 | Self::OAuthBearer => SecretKind::BearerToken,
        }
    }
}

/// What a client's secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A password (PLAIN, LOGIN).
    Password,
    /// An OAuth2 access token (XOAUTH2, OAUTHBEARER).
    BearerToken,
}

/// Credentials for the upstream.
#[derive(Debug)]
pub struct ClientCredentials {
    /// The user name (for a token, the mailbox it acts for).
    pub username: String,
    /// The password or the access token.
    pub secret: Secret,
    /// Which it is.
    pub kind: SecretKind,
    /// The mechanisms the client may use, in order of preference; the
    /// first the upstream offers is taken, and none other. A list pinned
    /// by the operator makes a downgrade (to LOGIN, say) impossible.
    pub mechanisms: Vec<Mechanism>,
}

impl ClientCredentials {
    /// A user name and password: PLAIN, else LOGIN.
    pub fn password(username: String, password: Secret) -> Self {
        Self {
            username,
            secret: password,
            kind: SecretKind::Password,
            mechanisms: vec![Mechanism::Plain, Mechanism::Login],
        }
    }

    /// A user name and an OAuth2 access token: XOAUTH2 (what Microsoft 365
    /// and Google take), else OAUTHBEARER.
    pub fn bearer(username: String, token: Secret) -> Self {
        Self {
            username,
            secret: token,
            kind: SecretKind::BearerToken,
            mechanisms: vec![Mechanism::XOAuth2, Mechanism::OAuthBearer],
        }
    }

    /// Only these mechanisms, in this order (those that do not carry this
    /// kind of secret are dropped; the configuration refuses them first).
    pub fn pinned(mut self, mechanisms: &[Mechanism]) -> Self {
        if !mechanisms.is_empty() {
            self.mechanisms = mechanisms
                .iter()
                .copied()
                .filter(|m| m.kind() == self.kind)
                .collect();
        }
        self
    }
}

/// How long to wait for each reply (RFC 5321 §4.5.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// For the greeting and replies to EHLO, STARTTLS, AUTH, MAIL, RCPT,
    /// RSET, QUIT (5 minutes).
    pub command: Duration,
    /// For the reply to DATA (2 minutes).
    pub data_start: Duration,
    /// For the reply after the end of data (10 minutes).
    pub data_end: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            command: Duration::from_secs(300),
            data_start: Duration::from_secs(120),
            data_end: Duration::from_secs(600),
        }
    }
}

/// The client's settings.
#[derive(Debug)]
pub struct ClientConfig {
    /// The name to give in EHLO.
    pub hostname: String,
    /// Implicit TLS or required STARTTLS to an upstream; `Local` for the
    /// daemon's own unix socket (`submitd sendmail`: no TLS, no AUTH).
    /// `Plaintext` fails the session at once: an upstream is never spoken
    /// to in the clear.
    pub transport: Transport,
    /// Credentials, if the upstream needs them.
    pub credentials: Option<ClientCredentials>,
    /// Reply timeouts.
    pub timeouts: ClientTimeouts,
}

/// What the upstream offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE, with its limit (0: no fixed limit).
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eight_bit_mime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// DSN.
    pub dsn: bool,
    /// CHUNKING.
    pub chunking: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// AUTH mechanisms, upper case.
    pub auth: Vec<String>,
}

impl Extensions {
    fn parse(reply: &Reply) -> Self {
        let mut ext = Self::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "DSN" => ext.dsn = true,
                "CHUNKING" => ext.chunking = true,
                "STARTTLS" => ext.starttls = true,
                "AUTH" => ext.auth.extend(words.map(str::to_ascii_uppercase)),
                // Old servers: "AUTH=PLAIN LOGIN".
                k if k.starts_with("AUTH=") => {
                    ext.auth.push(k[5..].to_owned());
                    ext.auth.extend(words.map(str::to_ascii_uppercase));
                }
                _ => {}
            }
        }
        ext
    }
}

/// Why the session with the upstream failed. After this the machine emits
/// [`ClientOutput::Close`]; a message in flight was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The greeting was not 220.
    #[error("upstream greeting refused: {0}")]
    Greeting(Reply),
    /// EHLO was refused.
    #[error("upstream refused EHLO: {0}")]
    Ehlo(Reply),
    /// STARTTLS is required but the upstream does not offer it.
    #[error("upstream does not offer STARTTLS, and TLS is required")]
    StartTlsNotOffered,
    /// STARTTLS was refused.
    #[error("upstream refused STARTTLS: {0}")]
    StartTls(Reply),
    /// The transport is `Plaintext`: the client does not talk without TLS.
    #[error("refusing to talk SMTP to an upstream without TLS")]
    PlaintextRefused,
    /// Credentials are set but the upstream offers none of the mechanisms
    /// the client may use with them.
    #[error("upstream offers no AUTH mechanism submitd may use here (wanted {wanted}; offered {offered})")]
    AuthNotOffered {
        /// The client's mechanisms, space-separated.
        wanted: String,
        /// The upstream's, space-separated (`none` if none).
        offered: String,
    },
    /// The upstream refused the credentials.
    #[error("upstream refused the credentials: {0}")]
    Auth(Reply),
    /// The upstream refused the bearer token (XOAUTH2, OAUTHBEARER): its
    /// final reply, and what its error challenge said (RFC 7628 §3.2.2),
    /// printable characters only.
    #[error("upstream refused the access token: {reply}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    TokenRefused {
        /// The final reply.
        reply: Reply,
        /// The error challenge, decoded.
        detail: String,
    },
    /// A reply could not be read.
    #[error("upstream protocol error: {0}")]
    Protocol(#[from] ReplyError),
    /// A reply that makes no sense in the state (such as 421 while idle).
    #[error("upstream closed the session: {0}")]
    Unexpected(Reply),
    /// No reply in time.
    #[error("upstream did not reply in time ({0})")]
    Timeout(&'static str),
}

impl SessionError {
    /// Whether retrying later may help (false for 5xx refusals of EHLO,
    /// AUTH and STARTTLS, and for a missing extension: configuration
    /// problems that need a person).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Greeting(r)
            | Self::Ehlo(r)
            | Self::StartTls(r)
            | Self::Auth(r)
            | Self::TokenRefused { reply: r, .. }
            | Self::Unexpected(r) => !r.is_permanent(),
            Self::StartTlsNotOffered | Self::AuthNotOffered { .. } | Self::PlaintextRefused => {
                false
            }
            Self::Protocol(_) | Self::Timeout(_) => true,
        }
    }
}

/// What happened to one message: the final reply for each recipient, in
/// the envelope's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageOutcome {
    /// One reply per recipient: the data reply when delivered, else the
    /// reply that refused it (MAIL, RCPT or DATA).
    pub recipients: Vec<Reply>,
}

impl MessageOutcome {
    /// Whether recipient `i` was delivered.
    pub fn delivered(&self, i: usize) -> bool {
        self.recipients.get(i).is_some_and(Reply::is_positive)
    }
}

/// What the client machine asks of its caller.
#[derive(Debug)]
pub enum ClientOutput {
    /// Bytes to write to the upstream.
    Send(Vec<u8>),
    /// Write what was sent, run the TLS handshake (verifying the upstream's
    /// certificate), then call [`ClientSession::tls_established`].
    StartTls,
    /// Ready for [`ClientSession::send_message`] or [`ClientSession::quit`].
    Ready,
    /// The upstream took DATA for a message given to
    /// [`ClientSession::send_message_streamed`]: pass its content with
    /// [`ClientSession::send_content`] (each call's bytes come out as
    /// `Send`), then call [`ClientSession::end_content`]. The content is
    /// dot-stuffed by the machine; the caller hands it over as stored.
    SendContent,
    /// The outcome of the message given to `send_message`.
    Outcome(MessageOutcome),
    /// The session failed.
    Failed(SessionError),
    /// Close the connection.
    Close,
}

/// A call made in the wrong state; a caller bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Not ready for this call.
    #[error("the client session is not ready for this")]
    NotReady,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
}

#[derive(Debug)]
struct Transaction {
    recipients: usize,
    in_flight: VecDeque<Expect>,
    unsent: VecDeque<(Vec<u8>, Expect)>,
    /// The dot-stuffed content when given whole; `None` when the caller
    /// streams it.
    body: Option<Vec<u8>>,
    /// Stuffing the streamed content, between `SendContent` and
    /// `end_content`.
    streaming: Option<DotStuffer>,
    /// The content and its end marker went out.
    content_sent: bool,
    mail: Option<Reply>,
    rcpt: Vec<Option<Reply>>,
    data: Option<Reply>,
}

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo,
    StartTls,
    TlsPending,
    AuthPlain {
        retried: bool,
    },
    AuthLoginStart,
    AuthLoginUser,
    AuthLoginPassword,
    /// XOAUTH2 or OAUTHBEARER sent; `challenge` holds the error challenge
    /// once the server sent one (the next reply is the final refusal).
    AuthToken {
        challenge: Option<String>,
    },
    Ready,
    Transaction(Box<Transaction>),
    Rset,
    Quit,
    Closed,
}

/// One SMTP session with an upstream.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    tls: bool,
    extensions: Extensions,
    input: Vec<u8>,
    parser: ReplyParser,
    outputs: VecDeque<ClientOutput>,
    deadline: Option<(Instant, &'static str)>,
    mechanism: Option<Mechanism>,
}

/// The text of an error challenge: base64 of a JSON object whose fields
/// (`status`, `scope`, ...) say why; kept short and printable, as it is
/// the upstream's and goes to the log.
fn challenge_text(reply: &Reply) -> String {
    let encoded = reply.lines().first().map(String::as_str).unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .unwrap_or_else(|_| encoded.as_bytes().to_vec());
    decoded
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                ' '
            }
        })
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl ClientSession {
    /// A session on a connection opened at `now` (inside TLS already for
    /// [`Transport::ImplicitTls`]). Call once the connection is open; it
    /// waits for the greeting, so the first output comes after input.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let tls = config.transport == Transport::ImplicitTls;
        let plaintext = config.transport == Transport::Plaintext;
        let deadline = Some((now + config.timeouts.command, "greeting"));
        let mut session = Self {
            config,
            state: State::Greeting,
            tls,
            extensions: Extensions::default(),
            input: Vec::new(),
            parser: ReplyParser::default(),
            outputs: VecDeque::new(),
            deadline,
            mechanism: None,
        };
        if plaintext {
            // Nothing is sent, not even QUIT.
            session.state = State::Closed;
            session.deadline = None;
            session
                .outputs
                .push_back(ClientOutput::Failed(SessionError::PlaintextRefused));
            session.outputs.push_back(ClientOutput::Close);
        }
        session
    }

    /// What the upstream offered (after EHLO; inside TLS once TLS is up).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Feeds octets read from the upstream at `now`. Call whenever a read
    /// returns data, then drain [`Self::poll_output`]. Octets that arrive
    /// during a STARTTLS handshake or after the end are ignored.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if matches!(self.state, State::Closed | State::TlsPending) {
            // During the handshake nothing may be read as SMTP: a reply
            // sent with the 220 is an injection (RFC 3207 §4.2).
            return;
        }
        self.input.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            match self.parser.parse(&self.input[used..]) {
                Ok(Some((reply, n))) => {
                    used += n;
                    self.on_reply(now, reply);
                    if matches!(self.state, State::Closed | State::TlsPending) {
                        self.input.clear();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(SessionError::Protocol(e));
                    return;
                }
            }
        }
        self.input.drain(..used);
    }

    /// Tells the machine the time is `now`. Call when
    /// [`Self::poll_timeout`] has passed without input; it fails the
    /// session if the reply it waits for is late.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((deadline, what)) = self.deadline {
            if now >= deadline && !matches!(self.state, State::Closed) {
                self.fail(SessionError::Timeout(what));
            }
        }
    }

    /// When [`Self::handle_timeout`] should next be called: the deadline of
    /// the reply waited for; `None` while nothing is (ready, or closed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.map(|(at, _)| at)
    }

    /// The next output, in order; `None` when there is nothing to do until
    /// the next input, timeout or call. Drain it after each of those.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// Whether the session has ended (after [`ClientOutput::Close`]).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Call when the handshake asked for by [`ClientOutput::StartTls`] is
    /// done; EHLO is sent again inside TLS.
    pub fn tls_established(&mut self, now: Instant) -> Result<(), ClientError> {
        if !matches!(self.state, State::TlsPending) {
            return Err(ClientError::NotReady);
        }
        self.tls = true;
        self.extensions = Extensions::default();
        self.input.clear();
        self.send_command(
            now,
            format!("EHLO {}\r\n", self.config.hostname).into_bytes(),
            State::Ehlo,
        );
        Ok(())
    }

    /// Relays one message given whole. Call only after
    /// [`ClientOutput::Ready`]; the answer is one [`ClientOutput::Outcome`],
    /// then `Ready` again.
    pub fn send_message(
        &mut self,
        now: Instant,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let mut body = Vec::new();
        dot_stuff(data, &mut body);
        self.begin_message(
            now,
            envelope,
            data.len() as u64,
            !data.is_ascii(),
            Some(body),
        )
    }

    /// Relays one message whose content the caller streams: `size` octets,
    /// `eight_bit` if any is not ASCII. Call only after
    /// [`ClientOutput::Ready`]. When the upstream takes DATA the machine
    /// asks for the content with [`ClientOutput::SendContent`]; the answer
    /// is then one [`ClientOutput::Outcome`] and `Ready` again, as for
    /// [`Self::send_message`]. If the upstream refuses every recipient
    /// first, no content is asked for.
    pub fn send_message_streamed(
        &mut self,
        now: Instant,
        envelope: &Envelope,
        size: u64,
        eight_bit: bool,
    ) -> Result<(), ClientError> {
        self.begin_message(now, envelope, size, eight_bit, None)
    }

    /// The next piece of content, after [`ClientOutput::SendContent`]:
    /// dot-stuffed, it comes out as `Send`. Pieces may split lines
    /// anywhere.
    pub fn send_content(&mut self, piece: &[u8]) -> Result<(), ClientError> {
        let State::Transaction(tx) = &mut self.state else {
            return Err(ClientError::NotReady);
        };
        let Some(stuffer) = tx.streaming.as_mut() else {
            return Err(ClientError::NotReady);
        };
        let mut out = Vec::new();
        stuffer.stuff(piece, &mut out);
        self.send(out);
        Ok(())
    }

    /// The content is complete: the end marker goes out, and the machine
    /// waits for the upstream's reply (up to the end-of-data timeout from
    /// `now`).
    pub fn end_content(&mut self, now: Instant) -> Result<(), ClientError> {
        let State::Transaction(tx) = &mut self.state else {
            return Err(ClientError::NotReady);
        };
        let Some(stuffer) = tx.streaming.take() else {
            return Err(ClientError::NotReady);
        };
        let mut out = Vec::new();
        stuffer.finish(&mut out);
        tx.in_flight.push_back(Expect::DataEnd);
        tx.content_sent = true;
        self.deadline = Some((now + self.config.timeouts.data_end, "end of data"));
        self.send(out);
        Ok(())
    }

    fn begin_message(
        &mut self,
        now: Instant,
        envelope: &Envelope,
        size: u64,
        eight_bit_content: bool,
        body: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        if !matches!(self.state, State::Ready) {
            return Err(ClientError::NotReady);
        }
        let ext = &self.extensions;
        let recipients = envelope.recipients.len();
        let needs_utf8 = envelope.mail_from.params.smtputf8
            || envelope
                .mail_from
                .reverse_path
                .as_ref()
                .is_some_and(|m| !m.is_ascii())
            || envelope
                .recipients
                .iter()
                .any(|r| matches!(&r.forward_path, ForwardPath::Mailbox(m) if !m.is_ascii()));
        let eight_bit =
            eight_bit_content || envelope.mail_from.params.body == Some(BodyType::EightBitMime);
        let refusal = if recipients == 0 {
            Some(Reply::new(554, (5, 5, 1), "no recipients"))
        } else if needs_utf8 && !ext.smtputf8 {
            Some(Reply::new(
                554,
                (5, 6, 7),
                "the message needs SMTPUTF8 and the upstream does not offer it",
            ))
        } else if eight_bit && !ext.eight_bit_mime && !ext.smtputf8 {
            Some(Reply::new(
                554,
                (5, 6, 3),
                "the message has 8-bit content and the upstream does not offer 8BITMIME",
            ))
        } else if ext.size.is_some_and(|max| max > 0 && size > max) {
            Some(Reply::new(
                552,
                (5, 3, 4),
                "the message is larger than the upstream accepts (its SIZE limit)",
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            self.outputs
                .push_back(ClientOutput::Outcome(MessageOutcome {
                    recipients: vec![reply; recipients],
                }));
            self.outputs.push_back(ClientOutput::Ready);
            return Ok(());
        }

        let mut commands: VecDeque<(Vec<u8>, Expect)> = VecDeque::new();
        commands.push_back((
            self.mail_command(envelope, size, eight_bit, needs_utf8),
            Expect::Mail,
        ));
        for (i, rcpt) in envelope.recipients.iter().enumerate() {
            commands.push_back((self.rcpt_command(rcpt), Expect::Rcpt(i)));
        }
        commands.push_back((b"DATA\r\n".to_vec(), Expect::Data));
        let tx = Transaction {
            recipients,
            in_flight: VecDeque::new(),
            unsent: commands,
            body,
            streaming: None,
            content_sent: false,
            mail: None,
            rcpt: vec![None; recipients],
            data: None,
        };
        self.state = State::Transaction(Box::new(tx));
        self.send_next(now);
        Ok(())
    }

    /// Ends the session politely. Call only when ready (after
    /// [`ClientOutput::Ready`]); `Close` follows the server's reply.
    pub fn quit(&mut self, now: Instant) -> Result<(), ClientError> {
        if !matches!(self.state, State::Ready) {
            return Err(ClientError::NotReady);
        }
        self.send_command(now, b"QUIT\r\n".to_vec(), State::Quit);
        Ok(())
    }

    fn mail_command(&self, envelope: &Envelope, size: u64, eight_bit: bool, utf8: bool) -> Vec<u8> {
        let ext = &self.extensions;
        let params = &envelope.mail_from.params;
        let mut line = match &envelope.mail_from.reverse_path {
            Some(m) => format!("MAIL FROM:<{m}>"),
            None => "MAIL FROM:<>".to_owned(),
        };
        if ext.size.is_some() {
            line.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && ext.eight_bit_mime {
            line.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            line.push_str(" SMTPUTF8");
        }
        if ext.dsn {
            match params.ret {
                Some(Ret::Full) => line.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => line.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &params.envid {
                line.push_str(&format!(" ENVID={envid}"));
            }
        }
        line.push_str("\r\n");
        line.into_bytes()
    }

    fn rcpt_command(&self, rcpt: &RcptTo) -> Vec<u8> {
        // RCPT's only parameters are DSN's (NOTIFY, ORCPT).
        let line = if self.extensions.dsn {
            format!("RCPT TO:{rcpt}\r\n")
        } else {
            format!("RCPT TO:<{}>\r\n", rcpt.forward_path)
        };
        line.into_bytes()
    }

    fn send(&mut self, bytes: Vec<u8>) {
        if let Some(ClientOutput::Send(buf)) = self.outputs.back_mut() {
            buf.extend_from_slice(&bytes);
        } else {
            self.outputs.push_back(ClientOutput::Send(bytes));
        }
    }

    fn send_command(&mut self, now: Instant, line: Vec<u8>, next: State) {
        self.send(line);
        self.state = next;
        self.deadline = Some((now + self.config.timeouts.command, "command"));
    }

    fn ready(&mut self) {
        self.state = State::Ready;
        self.deadline = None;
        self.outputs.push_back(ClientOutput::Ready);
    }

    fn fail(&mut self, error: SessionError) {
        if !matches!(self.state, State::Closed | State::TlsPending | State::Quit) {
            // Tell the server we are going; nothing waits for its answer.
            self.send(b"QUIT\r\n".to_vec());
        }
        self.state = State::Closed;
        self.deadline = None;
        self.outputs.push_back(ClientOutput::Failed(error));
        self.outputs.push_back(ClientOutput::Close);
    }

    /// Sends the next commands of the transaction: all of them with
    /// PIPELINING (DATA last in the group, RFC 2920), else one at a time.
    fn send_next(&mut self, now: Instant) {
        let pipelining = self.extensions.pipelining;
        let timeouts = self.config.timeouts;
        let State::Transaction(tx) = &mut self.state else {
            return;
        };
        let mut out = Vec::new();
        let mut last = None;
        while let Some((bytes, expect)) = tx.unsent.pop_front() {
            out.extend_from_slice(&bytes);
            tx.in_flight.push_back(expect);
            last = Some(expect);
            if !pipelining {
                break;
            }
        }
        let timeout = match last {
            Some(Expect::Data) if tx.in_flight.len() == 1 => (timeouts.data_start, "DATA"),
            _ => (timeouts.command, "command"),
        };
        if !out.is_empty() {
            self.deadline = Some((now + timeout.0, timeout.1));
            self.send(out);
        }
    }

    fn on_reply(&mut self, now: Instant, reply: Reply) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Greeting if reply.code() == 220 => {
                self.send_command(
                    now,
                    format!("EHLO {}\r\n", self.config.hostname).into_bytes(),
                    State::Ehlo,
                );
            }
            State::Greeting => self.fail(SessionError::Greeting(reply)),
            State::Ehlo if reply.code() == 250 => {
                self.extensions = Extensions::parse(&reply);
                if self.config.transport == Transport::Local {
                    // The daemon's own socket: the peer's uid is the login.
                    self.ready();
                } else if !self.tls {
                    if self.extensions.starttls {
                        self.send_command(now, b"STARTTLS\r\n".to_vec(), State::StartTls);
                    } else {
                        self.fail(SessionError::StartTlsNotOffered);
                    }
                } else {
                    self.start_auth(now);
                }
            }
            State::Ehlo => self.fail(SessionError::Ehlo(reply)),
            State::StartTls if reply.code() == 220 => {
                self.state = State::TlsPending;
                self.deadline = None;
                self.outputs.push_back(ClientOutput::StartTls);
            }
            State::StartTls => self.fail(SessionError::StartTls(reply)),
            State::AuthPlain { .. } | State::AuthLoginPassword | State::AuthToken { .. }
                if reply.code() == 235 =>
            {
                self.ready()
            }
            State::AuthToken { challenge: None } if reply.code() == 334 => {
                // The error challenge (RFC 7628 §3.2.2): answer with the
                // dummy response so the server sends its final reply.
                let detail = challenge_text(&reply);
                let dummy = match self.mechanism {
                    Some(Mechanism::OAuthBearer) => "AQ==\r\n",
                    _ => "\r\n",
                };
                self.send_command(
                    now,
                    dummy.as_bytes().to_vec(),
                    State::AuthToken {
                        challenge: Some(detail),
                    },
                );
            }
            State::AuthToken { challenge } => {
                self.fail(SessionError::TokenRefused {
                    reply,
                    detail: challenge.unwrap_or_default(),
                });
            }
            State::AuthPlain { retried: false } if reply.code() == 334 => {
                // The server ignored the initial response: send it again.
                let line = format!("{}\r\n", self.plain_response());
                self.send_command(now, line.into_bytes(), State::AuthPlain { retried: true });
            }
            State::AuthLoginStart if reply.code() == 334 => {
                let user = self
                    .config
                    .credentials
                    .as_ref()
                    .map(|c| b64(c.username.as_bytes()))
                    .unwrap_or_default();
                self.send_command(
                    now,
                    format!("{user}\r\n").into_bytes(),
                    State::AuthLoginUser,
                );
            }
            State::AuthLoginUser if reply.code() == 334 => {
                let password = self
                    .config
                    .credentials
                    .as_ref()
                    .map(|c| b64(c.secret.expose()))
                    .unwrap_or_default();
                self.send_command(
                    now,
                    format!("{password}\r\n").into_bytes(),
                    State::AuthLoginPassword,
                );
            }
            State::AuthPlain { .. }
            | State::AuthLoginStart
            | State::AuthLoginUser
            | State::AuthLoginPassword => {
                self.fail(SessionError::Auth(reply));
            }
            State::Transaction(tx) => self.on_transaction_reply(now, tx, reply),
            State::Rset if reply.is_positive() => self.ready(),
            State::Quit => {
                self.deadline = None;
                self.outputs.push_back(ClientOutput::Close);
            }
            State::Ready | State::Rset | State::TlsPending | State::Closed => {
                self.fail(SessionError::Unexpected(reply))
            }
        }
    }

    fn plain_response(&self) -> String {
        let Some(credentials) = &self.config.credentials else {
            return String::new();
        };
        let mut raw = zeroize::Zeroizing::new(Vec::new());
        raw.push(0);
        raw.extend_from_slice(credentials.username.as_bytes());
        raw.push(0);
        raw.extend_from_slice(credentials.secret.expose());
        b64(&raw)
    }

    /// The initial response of XOAUTH2 or OAUTHBEARER (RFC 7628 §3.1).
    fn token_response(&self, mechanism: Mechanism) -> String {
        let Some(credentials) = &self.config.credentials else {
            return String::new();
        };
        let mut raw = zeroize::Zeroizing::new(Vec::new());
        match mechanism {
            Mechanism::OAuthBearer => {
                // gs2 header: no channel binding, the authorization
                // identity; a comma or '=' in it is escaped (RFC 5801).
                raw.extend_from_slice(b"n,a=");
                for &b in credentials.username.as_bytes() {
                    match b {
                        b',' => raw.extend_from_slice(b"=2C"),
                        b'=' => raw.extend_from_slice(b"=3D"),
                        _ => raw.push(b),
                    }
                }
                raw.extend_from_slice(b",\x01");
            }
            _ => {
                raw.extend_from_slice(b"user=");
                raw.extend_from_slice(credentials.username.as_bytes());
                raw.push(1);
            }
        }
        raw.extend_from_slice(b"auth=Bearer ");
        raw.extend_from_slice(credentials.secret.expose());
        raw.extend_from_slice(b"\x01\x01");
        b64(&raw)
    }

    fn start_auth(&mut self, now: Instant) {
        let Some(credentials) = &self.config.credentials else {
            return self.ready();
        };
        let offered = &self.extensions.auth;
        let Some(mechanism) = credentials
            .mechanisms
            .iter()
            .copied()
            .find(|m| offered.iter().any(|a| a == m.name()))
        else {
            let names: Vec<&str> = credentials.mechanisms.iter().map(|m| m.name()).collect();
            let offered = if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(" ")
            };
            return self.fail(SessionError::AuthNotOffered {
                wanted: names.join(" "),
                offered,
            });
        };
        self.mechanism = Some(mechanism);
        match mechanism {
            Mechanism::Plain => {
                let line = format!("AUTH PLAIN {}\r\n", self.plain_response());
                self.send_command(now, line.into_bytes(), State::AuthPlain { retried: false });
            }
            Mechanism::Login => {
                self.send_command(now, b"AUTH LOGIN\r\n".to_vec(), State::AuthLoginStart);
            }
            Mechanism::XOAuth2 | Mechanism::OAuthBearer => {
                let line = format!(
                    "AUTH {} {}\r\n",
                    mechanism.name(),
                    self.token_response(mechanism)
                );
                self.send_command(now, line.into_bytes(), State::AuthToken { challenge: None });
            }
        }
    }

    /// The mechanism AUTH used, once it started.
    pub fn mechanism(&self) -> Option<Mechanism> {
        self.mechanism
    }

    fn on_transaction_reply(&mut self, now: Instant, mut tx: Box<Transaction>, reply: Reply) {
        let Some(expect) = tx.in_flight.pop_front() else {
            return self.fail(SessionError::Unexpected(reply));
        };
        let accepted = |tx: &Transaction| tx.rcpt.iter().flatten().any(Reply::is_positive);
        match expect {
            Expect::Mail => {
                let failed = !reply.is_positive();
                tx.mail = Some(reply);
                if failed {
                    // Nothing more of this transaction is worth sending.
                    tx.unsent.clear();
                }
            }
            Expect::Rcpt(i) => {
                if let Some(slot) = tx.rcpt.get_mut(i) {
                    *slot = Some(reply);
                }
                let was_last = i + 1 == tx.recipients;
                if was_last && !accepted(&tx) {
                    tx.unsent.clear();
                }
            }
            Expect::Data if reply.code() == 354 => {
                let mail_ok = tx.mail.as_ref().is_some_and(Reply::is_positive);
                self.deadline = Some((now + self.config.timeouts.data_end, "end of data"));
                let body = if !(mail_ok && accepted(&tx)) {
                    // RFC 2920 §3.1: 354 with no recipient: send only the end.
                    b".\r\n".to_vec()
                } else if let Some(body) = tx.body.take() {
                    tx.content_sent = true;
                    body
                } else {
                    // The caller streams the content, then ends it.
                    tx.streaming = Some(DotStuffer::default());
                    self.state = State::Transaction(tx);
                    self.outputs.push_back(ClientOutput::SendContent);
                    return;
                };
                tx.in_flight.push_back(Expect::DataEnd);
                self.send(body);
                self.state = State::Transaction(tx);
                return;
            }
            Expect::Data | Expect::DataEnd => tx.data = Some(reply),
        }
        if !tx.in_flight.is_empty() {
            self.state = State::Transaction(tx);
            return;
        }
        if !tx.unsent.is_empty() {
            self.state = State::Transaction(tx);
            return self.send_next(now);
        }
        self.finish(now, *tx);
    }

    fn finish(&mut self, now: Instant, tx: Transaction) {
        let not_completed = || Reply::new(451, (4, 4, 0), "the transaction was not completed");
        let mail_ok = tx.mail.as_ref().is_some_and(Reply::is_positive);
        let recipients = tx
            .rcpt
            .iter()
            .map(|rcpt| match (&tx.mail, rcpt, &tx.data) {
                (Some(mail), _, _) if !mail.is_positive() => mail.clone(),
                (_, Some(rcpt), _) if !rcpt.is_positive() => rcpt.clone(),
                (_, Some(_), Some(data)) => data.clone(),
                _ => not_completed(),
            })
            .collect();
        let complete = tx.data.as_ref().is_some_and(|d| d.code() != 354);
        let data_ended = tx.data.is_some() && tx.content_sent;
        self.outputs
            .push_back(ClientOutput::Outcome(MessageOutcome { recipients }));
        // A transaction left open (MAIL taken, then nothing delivered before
        // the end of data) is closed with RSET before the next one.
        if mail_ok && !(complete && data_ended) {
            self.send_command(now, b"RSET\r\n".to_vec(), State::Rset);
        } else {
            self.ready();
        }
    }
}

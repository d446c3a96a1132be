//! A scripted peer for the server machine: it answers every question the
//! way a small fixed world would, and records what the machine said. The
//! transcript and property tests, the fuzz target and the benchmark all
//! drive the machine through it. Built only with the `testing` feature.
//!
//! The world: user `alice` with password `secret` (PLAIN and LOGIN; the
//! LOGIN prompts are `Username:` and `Password:` as real servers send them),
//! user `tempfail` whose check cannot be made now; senders whose local part
//! starts with `spoof` are refused, recipients whose local part starts with
//! `unknown` are refused; a message containing `X-Store: fail` cannot be
//! stored now (451), one containing `X-Store: reject` is refused (554);
//! every other message gets queue id `Q1`, `Q2`, ...
//!
//! It also holds the machine to its message protocol: `MessageData` only
//! between a `MessageStart` and its `StoreMessage` or `MessageAborted`,
//! never two messages open at once. A breach panics, so every test that
//! drives the machine checks it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    AuthAnswer, CloseReason, EnhancedCode, ForwardPath, Message, Output, Reply, ServerConfig,
    ServerSession, Verdict,
};

/// Something the machine did besides sending bytes, as the tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// STARTTLS accepted; this many octets after it were dropped.
    StartTls {
        /// Octets dropped.
        discarded: usize,
    },
    /// A message was handed over for storage and stored under this id.
    Stored {
        /// The queue id given.
        queue_id: String,
        /// The message.
        message: Box<StoredMessage>,
    },
    /// A message begun was dropped by the machine before it was complete.
    Aborted,
    /// The session closed.
    Close(CloseReason),
}

/// A message as the scripted world stored it: the envelope the machine
/// gave at `MessageStart` and the content gathered from its
/// `MessageData` pieces.
#[derive(Clone, Debug, Eq)]
pub struct StoredMessage {
    /// Envelope and session facts.
    pub message: Message,
    /// The content, all pieces in order.
    pub data: Vec<u8>,
    /// How many `MessageData` pieces it came in (not compared: it follows
    /// how the input was split into reads, which changes nothing stored).
    pub pieces: usize,
}

impl PartialEq for StoredMessage {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.data == other.data
    }
}

impl Deref for StoredMessage {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.message
    }
}

/// Where a LOGIN or PLAIN exchange stands.
#[derive(Debug)]
enum AuthState {
    Idle,
    Plain,
    LoginUser,
    LoginPassword(String),
}

/// Output of the machine, in order: each sent line (without CRLF) or event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// One reply line as sent, without its CRLF.
    Line(String),
    /// An event.
    Event(Event),
}

/// Drives a [`ServerSession`] and answers its questions.
#[derive(Debug)]
pub struct Driver {
    /// The machine.
    pub session: ServerSession,
    /// The current time as the machine knows it.
    pub now: Instant,
    /// Everything that came out so far.
    pub items: Vec<Item>,
    /// Complete TLS handshakes by itself when asked (true by default).
    pub auto_tls: bool,
    /// Answer this many coming stores with 451 4.3.0, whatever they hold.
    pub fail_next_stores: u32,
    auth: AuthState,
    stored: u64,
    partial: Vec<u8>,
    /// The message begun and not yet stored or aborted.
    open: Option<StoredMessage>,
    /// The largest `MessageData` piece seen.
    pub largest_piece: usize,
}

impl Driver {
    /// A driver over a new session with this configuration.
    pub fn new(config: ServerConfig) -> Self {
        let now = Instant::now();
        let mut driver = Self {
            session: ServerSession::new(Arc::new(config), now),
            now,
            items: Vec::new(),
            auto_tls: true,
            fail_next_stores: 0,
            auth: AuthState::Idle,
            stored: 0,
            partial: Vec::new(),
            open: None,
            largest_piece: 0,
        };
        driver.drain();
        driver
    }

    /// Feeds client octets and answers whatever the machine asks.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.session.handle_input(self.now, bytes);
        self.drain();
    }

    /// Moves the clock on and lets the machine act on it.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.session.handle_timeout(self.now);
        self.drain();
    }

    /// Takes the items recorded so far.
    pub fn take_items(&mut self) -> Vec<Item> {
        std::mem::take(&mut self.items)
    }

    /// All messages stored so far, in order.
    pub fn stored_messages(&self) -> impl Iterator<Item = &StoredMessage> {
        self.items.iter().filter_map(|item| match item {
            Item::Event(Event::Stored { message, .. }) => Some(&**message),
            _ => None,
        })
    }

    /// Answers every question until the machine has nothing more to say.
    pub fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            let answered = match output {
                Output::Send(bytes) => {
                    self.record_bytes(&bytes);
                    Ok(())
                }
                Output::StartTls { discarded } => {
                    self.items.push(Item::Event(Event::StartTls { discarded }));
                    if self.auto_tls {
                        self.session.tls_established()
                    } else {
                        Ok(())
                    }
                }
                Output::AuthStart {
                    mechanism,
                    initial_response,
                } => {
                    let answer = match (mechanism.as_str(), initial_response) {
                        ("PLAIN", None) => {
                            self.auth = AuthState::Plain;
                            AuthAnswer::Challenge(Vec::new())
                        }
                        ("PLAIN", Some(response)) => self.check_plain(response.expose()),
                        ("LOGIN", None) => {
                            self.auth = AuthState::LoginUser;
                            AuthAnswer::Challenge(b"Username:".to_vec())
                        }
                        ("LOGIN", Some(user)) => self.login_user(user.expose()),
                        _ => AuthAnswer::Failure,
                    };
                    self.session.answer_auth(answer)
                }
                Output::AuthResponse(response) => {
                    let answer = match std::mem::replace(&mut self.auth, AuthState::Idle) {
                        AuthState::Plain => self.check_plain(response.expose()),
                        AuthState::LoginUser => self.login_user(response.expose()),
                        AuthState::LoginPassword(user) => check_password(&user, response.expose()),
                        AuthState::Idle => AuthAnswer::Failure,
                    };
                    self.session.answer_auth(answer)
                }
                Output::AuthCancelled => {
                    self.auth = AuthState::Idle;
                    Ok(())
                }
                Output::CheckSender(mail_from) => {
                    let spoof = mail_from
                        .reverse_path
                        .as_ref()
                        .is_some_and(|m| m.local_part().starts_with("spoof"));
                    self.session.answer_sender(if spoof {
                        Verdict::Reject(Reply::new(
                            550,
                            EnhancedCode::new(5, 7, 1),
                            "Sender address rejected: not owned by the authenticated user",
                        ))
                    } else {
                        Verdict::Accept
                    })
                }
                Output::CheckRecipient(rcpt) => {
                    let unknown = matches!(&rcpt.forward_path,
                        ForwardPath::Mailbox(m) if m.local_part().starts_with("unknown"));
                    self.session.answer_recipient(if unknown {
                        Verdict::Reject(Reply::new(
                            550,
                            EnhancedCode::new(5, 1, 1),
                            "Recipient address rejected",
                        ))
                    } else {
                        Verdict::Accept
                    })
                }
                Output::MessageStart(message) => {
                    assert!(self.open.is_none(), "a message began inside another");
                    self.open = Some(StoredMessage {
                        message: *message,
                        data: Vec::new(),
                        pieces: 0,
                    });
                    Ok(())
                }
                Output::MessageData(piece) => {
                    let Some(open) = self.open.as_mut() else {
                        panic!("message data outside a message");
                    };
                    assert!(!piece.is_empty(), "an empty MessageData piece");
                    self.largest_piece = self.largest_piece.max(piece.len());
                    open.data.extend_from_slice(&piece);
                    open.pieces += 1;
                    Ok(())
                }
                Output::MessageAborted => {
                    assert!(self.open.take().is_some(), "abort without a message");
                    self.items.push(Item::Event(Event::Aborted));
                    Ok(())
                }
                Output::StoreMessage => {
                    let Some(message) = self.open.take() else {
                        panic!("StoreMessage without a message");
                    };
                    if contains(&message.data, b"X-Store: reject") {
                        self.session.answer_store(Err(Reply::new(
                            554,
                            EnhancedCode::new(5, 6, 0),
                            "Message content rejected",
                        )))
                    } else if self.fail_next_stores > 0 || contains(&message.data, b"X-Store: fail")
                    {
                        self.fail_next_stores = self.fail_next_stores.saturating_sub(1);
                        self.session.answer_store(Err(Reply::new(
                            451,
                            EnhancedCode::new(4, 3, 0),
                            "Cannot store the message now",
                        )))
                    } else {
                        self.stored += 1;
                        let queue_id = format!("Q{}", self.stored);
                        self.items.push(Item::Event(Event::Stored {
                            queue_id: queue_id.clone(),
                            message: Box::new(message),
                        }));
                        self.session.answer_store(Ok(queue_id))
                    }
                }
                Output::Close(reason) => {
                    assert!(self.open.is_none(), "closed with a message still open");
                    self.items.push(Item::Event(Event::Close(reason)));
                    Ok(())
                }
            };
            // The driver only answers what was asked; a refusal is a bug in
            // the machine's questions, which the tests must see.
            if let Err(e) = answered {
                panic!("machine refused an answer to its own question: {e}");
            }
        }
    }

    fn record_bytes(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = self.partial.drain(..end + 2).take(end).collect();
            assert!(
                !line.contains(&b'\r') && !line.contains(&b'\n'),
                "bare CR or LF in a reply: {line:?}"
            );
            self.items
                .push(Item::Line(String::from_utf8_lossy(&line).into_owned()));
        }
    }

    fn check_plain(&mut self, response: &[u8]) -> AuthAnswer {
        self.auth = AuthState::Idle;
        let mut parts = response.split(|&b| b == 0);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(authz), Some(user), Some(password), None)
                if authz.is_empty() || authz == user =>
            {
                match std::str::from_utf8(user) {
                    Ok(user) => check_password(user, password),
                    Err(_) => AuthAnswer::Failure,
                }
            }
            _ => AuthAnswer::Failure,
        }
    }

    fn login_user(&mut self, user: &[u8]) -> AuthAnswer {
        match std::str::from_utf8(user) {
            Ok(user) => {
                self.auth = AuthState::LoginPassword(user.to_owned());
                AuthAnswer::Challenge(b"Password:".to_vec())
            }
            Err(_) => {
                self.auth = AuthState::Idle;
                AuthAnswer::Failure
            }
        }
    }
}

fn check_password(user: &str, password: &[u8]) -> AuthAnswer {
    match (user, password) {
        ("alice", b"secret") => AuthAnswer::Success {
            user: "alice".into(),
        },
        ("tempfail", _) => AuthAnswer::TempFailure,
        _ => AuthAnswer::Failure,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

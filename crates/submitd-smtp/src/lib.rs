//! The SMTP wire language of submitd, as pure state machines.
//!
//! This crate owns everything submitd says and hears on an SMTP connection:
//! command and reply grammar, ESMTP parameters, line and size limits, DATA
//! dot-stuffing, BDAT, PIPELINING, the STARTTLS boundary and the AUTH
//! continuation exchange. It owns no sockets, no TLS, no files and no clock:
//! the caller does all I/O and passes the time in. That is what lets the same
//! machine run in the daemon, in transcript and property tests, and under the
//! fuzzer, with no mocks.
//!
//! # The server session
//!
//! ```text
//!            handle_input(now, bytes)      handle_timeout(now)
//!                      │                          │
//!                      ▼                          ▼
//!   ┌──────────────────────────────────────────────────────────┐
//!   │ ServerSession                                            │
//!   │  input buffer ─▶ line / DATA / BDAT reader ─▶ verb logic │
//!   │  states: Command, AuthContinuation, SkipLine, Data,      │
//!   │          Chunk, Waiting(question), StartTlsPending, Closed│
//!   └──────────────────────────────────────────────────────────┘
//!        │ poll_output()                          ▲ answers
//!        ▼                                        │
//!   Send(bytes)        ──▶ write to the client    │
//!   StartTls{discarded}──▶ handshake, then ── tls_established()
//!   AuthStart/Response ──▶ SASL mechanism ──── answer_auth()
//!   AuthCancelled      ──▶ drop mechanism state
//!   CheckSender        ──▶ sender policy ───── answer_sender()
//!   CheckRecipient     ──▶ recipient policy ── answer_recipient()
//!   StoreMessage       ──▶ spool + fsync ───── answer_store()
//!   Close(reason)      ──▶ flush, close, log
//! ```
//!
//! Inputs are bytes as read, in any split, and the time. Outputs come out in
//! the order the client must see them. When the machine asks a question it
//! stops reading input until the answer comes, so replies to pipelined
//! commands (RFC 2920) keep their order whatever the reads looked like; the
//! one place where the split matters is deliberate: octets that arrived
//! after a STARTTLS line are dropped, never executed inside TLS.
//!
//! Bad input from the client is answered inside the machine with a reply
//! and an RFC 3463 enhanced code, never with a Rust error or a panic. Rust
//! errors ([`AnswerError`]) are only for a caller that answers a question
//! that was not asked.
//!
//! What the machine enforces on its own: TLS before anything but
//! EHLO/HELO/STARTTLS/NOOP/RSET/QUIT, EHLO before AUTH, AUTH before
//! MAIL/RCPT/DATA/BDAT, a fresh EHLO after STARTTLS, `CRLF.CRLF` as the only
//! end of data, no bare CR or LF anywhere (the session is closed), and every
//! bound in [`Limits`].
//!
//! # The client session
//!
//! [`ClientSession`] is the same kind of machine for the other direction:
//! relaying to the upstream smarthost. Fed the server's bytes and the time,
//! it emits bytes to send, "start TLS now", "ready for a message", and for
//! each message a final reply per recipient. It is tested against
//! [`ServerSession`] in memory, with no socket.
//!
//! Dependencies: `base64` for AUTH payloads, `memchr` for fast line and
//! DATA scanning, `thiserror` for typed errors, `zeroize` so AUTH payloads
//! do not linger in memory.

mod address;
mod body;
mod client;
mod envelope;
mod limits;
mod params;
mod reply;
mod reply_parser;
mod secret;
mod server;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;

pub use address::{AddressError, AddressLiteral, ClientName, Mailbox};
pub use body::{dot_stuff, DotStuffer};
pub use client::{
    ClientConfig, ClientCredentials, ClientError, ClientOutput, ClientSession, ClientTimeouts,
    Extensions, Mechanism, MessageOutcome, SecretKind, SessionError,
};
pub use envelope::{Envelope, ForwardPath, MailFrom, Message, PathError, RcptTo};
pub use limits::Limits;
pub use params::{decode_xtext, BodyType, MailParams, Notify, Orcpt, ParamError, RcptParams, Ret};
pub use reply::{EnhancedCode, Reply};
pub use reply_parser::ReplyError;
pub use secret::Secret;
pub use server::{
    AnswerError, AuthAnswer, CloseReason, Output, ServerConfig, ServerSession, Verdict,
};
pub use transport::Transport;

//! STARTTLS (RFC 3207): the boundary between plaintext and TLS. Whatever
//! the client sent after the STARTTLS line is dropped unread, and the
//! session starts over inside TLS (the 2021 "NO STARTTLS" injections).

use super::{AnswerError, Output, ServerSession, State};
use crate::reply::Reply;
use crate::transport::Transport;

impl ServerSession {
    pub(super) fn starttls(&mut self, arg: &str) {
        if self.tls {
            return self.error(Reply::new(503, (5, 5, 1), "TLS already active"));
        }
        if self.config.transport != Transport::StartTls {
            return self.error(Reply::new(502, (5, 5, 1), "STARTTLS not offered here"));
        }
        if !arg.is_empty() {
            return self.error(Reply::new(501, (5, 5, 4), "Syntax: STARTTLS"));
        }
        if self.client_name.is_none() {
            return self.error(Reply::new(503, (5, 5, 1), "Send EHLO first"));
        }
        self.reply(Reply::new(220, (2, 0, 0), "Ready to start TLS"));
        // Whatever came after the STARTTLS line was sent in plaintext and
        // must not be executed inside TLS (RFC 3207 §4.2; NO STARTTLS, 2021).
        let discarded = self.input.len() - self.pos;
        self.pos = self.input.len();
        self.state = State::StartTlsPending;
        self.outputs.push_back(Output::StartTls { discarded });
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
        self.end_transaction();
        // STARTTLS already dropped the plaintext buffer; clearing again here
        // keeps the rule true even if that step is ever changed.
        self.input.clear();
        self.pos = 0;
        self.state = State::Command;
        Ok(())
    }
}

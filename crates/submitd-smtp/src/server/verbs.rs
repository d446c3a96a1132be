//! What each command does. Order of checks for a command that needs them:
//! TLS first (530), then EHLO (503), then authentication (530), then the
//! transaction sequence (503/554), then syntax (501/555), then limits.

use base64::Engine as _;

use super::{
    ok, Chunk, ForwardPath, MailFrom, Output, Pending, RcptTo, Secret, ServerSession, State,
    Transport,
};
use crate::address::{parse_client_name, parse_path, PathValue};
use crate::data::BodyReceiver;
use crate::params::{parse_mail_params, parse_rcpt_params, ParamError};
use crate::reply::Reply;

/// Verbs of HTTP and its relatives: a browser or proxy pointed at the SMTP
/// port (cross-protocol attacks such as ALPACA).
const HTTP_VERBS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];

fn reply(code: u16, (class, subject, detail): (u8, u16, u16), text: impl AsRef<str>) -> Reply {
    ok(code, (class, subject, detail), text)
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    // Accept responses with or without padding: clients differ.
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

impl ServerSession {
    /// One complete command line, without its CRLF.
    pub(super) fn command(&mut self, line: &[u8]) {
        let Ok(text) = std::str::from_utf8(line) else {
            self.error(reply(500, (5, 5, 2), "Command line is not valid UTF-8"));
            return;
        };
        let text = text.trim_end_matches(' ');
        let (verb, arg) = match text.split_once(' ') {
            Some((verb, arg)) => (verb, arg.trim_start_matches(' ')),
            None => (text, ""),
        };
        let verb = verb.to_ascii_uppercase();
        if verb.ends_with(':') || HTTP_VERBS.contains(&verb.as_str()) {
            self.reply(reply(
                554,
                (5, 7, 0),
                "This is an SMTP server; other protocols are refused. Closing connection",
            ));
            self.close(super::CloseReason::CrossProtocol);
            return;
        }
        let limits = &self.config.limits;
        let max = match verb.as_str() {
            "AUTH" => limits.auth_line,
            "MAIL" | "RCPT" => limits.command_line + limits.extension_allowance,
            _ => limits.command_line,
        };
        if line.len() + 2 > max {
            self.error(super::line_too_long());
            return;
        }
        match verb.as_str() {
            "EHLO" => return self.hello(arg, true),
            "HELO" => return self.hello(arg, false),
            "STARTTLS" => return self.starttls(arg),
            "NOOP" => return self.reply(reply(250, (2, 0, 0), "Ok")),
            "RSET" => return self.rset(arg),
            "QUIT" => return self.quit(arg),
            // BDAT must read its chunk whatever the verdict.
            "BDAT" => return self.bdat(arg),
            "EXPN" | "ETRN" | "ATRN" | "TURN" => {
                return self.error(reply(502, (5, 5, 1), "Command not implemented"));
            }
            "AUTH" | "MAIL" | "RCPT" | "DATA" | "VRFY" | "HELP" => {}
            _ => return self.error(reply(500, (5, 5, 2), "Command not recognized")),
        }
        if let Some(refusal) = self.tls_refusal() {
            return self.error(refusal);
        }
        match verb.as_str() {
            "AUTH" => self.auth(arg),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => self.data(arg),
            "VRFY" if arg.is_empty() => self.error(reply(501, (5, 5, 4), "Syntax: VRFY address")),
            "VRFY" => self.reply(reply(
                252,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            _ => self.reply(reply(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            )),
        }
    }

    /// Outside TLS nothing but EHLO, HELO, STARTTLS, NOOP, RSET and QUIT.
    fn tls_refusal(&self) -> Option<Reply> {
        if self.tls || self.config.transport == Transport::Local {
            return None;
        }
        let text = match self.config.transport {
            Transport::StartTls => "Must issue a STARTTLS command first",
            _ => "TLS required: connect to the implicit TLS port",
        };
        Some(reply(530, (5, 7, 0), text))
    }

    /// The sequence checks shared by MAIL, RCPT, DATA and BDAT.
    fn session_refusal(&self) -> Option<Reply> {
        if self.client_name.is_none() {
            Some(reply(503, (5, 5, 1), "Send EHLO first"))
        } else if self.auth_user.is_none() {
            Some(reply(530, (5, 7, 0), "Authentication required"))
        } else {
            None
        }
    }

    fn hello(&mut self, arg: &str, extended: bool) {
        let verb = if extended { "EHLO" } else { "HELO" };
        if arg.is_empty() {
            return self.error(reply(501, (5, 5, 4), format!("Syntax: {verb} hostname")));
        }
        let name = match parse_client_name(arg) {
            Ok(name) => name,
            Err(e) => {
                return self.error(reply(
                    501,
                    (5, 5, 4),
                    format!("Invalid {verb} argument: {e}"),
                ))
            }
        };
        self.client_name = Some(name);
        self.extended = extended;
        self.tx = None;
        let host = &self.config.hostname;
        // EHLO response lines are keywords: no enhanced codes (RFC 2034 §3).
        let mut response = Reply::bare(250, host);
        if extended {
            let local = self.config.transport == Transport::Local;
            if self.tls || local {
                let size = self.config.limits.message_size;
                for keyword in [
                    "PIPELINING",
                    &format!("SIZE {size}"),
                    "8BITMIME",
                    "SMTPUTF8",
                    "ENHANCEDSTATUSCODES",
                    "CHUNKING",
                    "DSN",
                ] {
                    response = response.with_line(keyword);
                }
                if !local && !self.config.auth_mechanisms.is_empty() {
                    let mechanisms = self.config.auth_mechanisms.join(" ");
                    response = response.with_line(format!("AUTH {mechanisms}"));
                }
            } else {
                // Before TLS only what is needed to reach it (RFC 3207 §4.2:
                // nothing learnt now may be trusted later).
                response = response.with_line("ENHANCEDSTATUSCODES");
                if self.config.transport == Transport::StartTls {
                    response = response.with_line("STARTTLS");
                }
            }
        }
        self.reply(response);
    }

    fn starttls(&mut self, arg: &str) {
        if self.tls {
            return self.error(reply(503, (5, 5, 1), "TLS already active"));
        }
        if self.config.transport != Transport::StartTls {
            return self.error(reply(502, (5, 5, 1), "STARTTLS not offered here"));
        }
        if !arg.is_empty() {
            return self.error(reply(501, (5, 5, 4), "Syntax: STARTTLS"));
        }
        if self.client_name.is_none() {
            return self.error(reply(503, (5, 5, 1), "Send EHLO first"));
        }
        self.reply(reply(220, (2, 0, 0), "Ready to start TLS"));
        // Whatever came after the STARTTLS line was sent in plaintext and
        // must not be executed inside TLS (RFC 3207 §4.2; NO STARTTLS, 2021).
        let discarded = self.input.len() - self.pos;
        self.pos = self.input.len();
        self.state = State::StartTlsPending;
        self.outputs.push_back(Output::StartTls { discarded });
    }

    fn rset(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error(reply(501, (5, 5, 4), "Syntax: RSET"));
        }
        self.tx = None;
        self.reply(reply(250, (2, 0, 0), "Ok"));
    }

    fn quit(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error(reply(501, (5, 5, 4), "Syntax: QUIT"));
        }
        let host = self.config.hostname.clone();
        self.reply(reply(221, (2, 0, 0), format!("{host} closing connection")));
        self.close(super::CloseReason::Quit);
    }

    fn auth(&mut self, arg: &str) {
        if self.config.transport == Transport::Local {
            // The socket's peer credentials say who this is.
            return self.error(reply(
                503,
                (5, 5, 1),
                "Already authenticated by the local socket",
            ));
        }
        if self.client_name.is_none() || !self.extended {
            return self.error(reply(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.auth_user.is_some() {
            return self.error(reply(503, (5, 5, 1), "Already authenticated"));
        }
        // No transaction check is needed: MAIL needs AUTH first, so during a
        // transaction the client is already authenticated.
        let mut words = arg.split(' ').filter(|w| !w.is_empty());
        let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next()) else {
            return self.error(reply(
                501,
                (5, 5, 4),
                "Syntax: AUTH mechanism [initial-response]",
            ));
        };
        let mechanism = mechanism.to_ascii_uppercase();
        if !self.config.auth_mechanisms.contains(&mechanism) {
            return self.error(reply(
                504,
                (5, 5, 4),
                "Unrecognized authentication mechanism",
            ));
        }
        let initial_response = match initial {
            None => None,
            Some("=") => Some(Secret::new(Vec::new())),
            Some(text) => match base64_engine().decode(text) {
                Ok(bytes) => Some(Secret::new(bytes)),
                Err(_) => {
                    return self.error(reply(501, (5, 5, 2), "Invalid base64 in initial response"))
                }
            },
        };
        self.state = State::Waiting(Pending::Auth);
        self.outputs.push_back(Output::AuthStart {
            mechanism,
            initial_response,
        });
    }

    /// A line sent in answer to a 334 challenge.
    pub(super) fn auth_continuation(&mut self, line: &[u8]) {
        if line == b"*" {
            self.state = State::Command;
            self.outputs.push_back(Output::AuthCancelled);
            return self.reply(reply(501, (5, 0, 0), "Authentication cancelled"));
        }
        match base64_engine().decode(line) {
            Ok(bytes) => {
                self.state = State::Waiting(Pending::Auth);
                self.outputs
                    .push_back(Output::AuthResponse(Secret::new(bytes)));
            }
            Err(_) => {
                self.state = State::Command;
                self.outputs.push_back(Output::AuthCancelled);
                self.error(reply(501, (5, 5, 2), "Invalid base64 in response"));
            }
        }
    }

    fn mail(&mut self, arg: &str) {
        if let Some(refusal) = self.session_refusal() {
            return self.error(refusal);
        }
        if self.tx.is_some() {
            return self.error(reply(
                503,
                (5, 5, 1),
                "Sender already given; send RSET to start over",
            ));
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.error(reply(
                501,
                (5, 5, 4),
                "Syntax: MAIL FROM:<address> [parameters]",
            ));
        };
        let (path, params) = match parse_path(rest.trim_start_matches(' ')) {
            Ok((_, params)) if !params.is_empty() && !params.starts_with(' ') => {
                return self.error(reply(501, (5, 1, 7), "Bad sender address syntax"));
            }
            Ok((PathValue::Postmaster(_), _)) => {
                return self.error(reply(
                    501,
                    (5, 1, 7),
                    "Bad sender address syntax: the address has no @domain",
                ));
            }
            Ok((PathValue::Null, params)) => (None, params),
            Ok((PathValue::Mailbox(m), params)) => (Some(m), params),
            Err(e) => {
                return self.error(reply(
                    501,
                    (5, 1, 7),
                    format!("Bad sender address syntax: {e}"),
                ))
            }
        };
        let params = match parse_mail_params(params) {
            Ok(params) => params,
            Err(e) => return self.param_error(e),
        };
        if path.as_ref().is_some_and(|m| !m.is_ascii()) && !params.smtputf8 {
            return self.error(reply(
                553,
                (5, 6, 7),
                "Non-ASCII sender address requires the SMTPUTF8 parameter",
            ));
        }
        let max = self.config.limits.message_size;
        if params.size.is_some_and(|size| size > max) {
            return self.reply(reply(
                552,
                (5, 3, 4),
                format!("Message size exceeds fixed maximum message size of {max} octets"),
            ));
        }
        let mail_from = MailFrom {
            reverse_path: path,
            params,
        };
        self.state = State::Waiting(Pending::Sender(mail_from.clone()));
        self.outputs.push_back(Output::CheckSender(mail_from));
    }

    fn rcpt(&mut self, arg: &str) {
        if let Some(refusal) = self.session_refusal() {
            return self.error(refusal);
        }
        let Some(tx) = self.tx.as_ref() else {
            return self.error(reply(503, (5, 5, 1), "Need MAIL before RCPT"));
        };
        if tx.chunks.is_some() {
            return self.error(reply(503, (5, 5, 1), "RCPT not allowed after BDAT"));
        }
        let smtputf8 = tx.mail_from.params.smtputf8;
        let recipients = tx.recipients.len();
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.error(reply(
                501,
                (5, 5, 4),
                "Syntax: RCPT TO:<address> [parameters]",
            ));
        };
        let (path, params) = match parse_path(rest.trim_start_matches(' ')) {
            Ok((_, params)) if !params.is_empty() && !params.starts_with(' ') => {
                return self.error(reply(501, (5, 1, 3), "Bad recipient address syntax"));
            }
            Ok((PathValue::Null, _)) => {
                return self.error(reply(
                    501,
                    (5, 1, 3),
                    "Bad recipient address syntax: <> is not a recipient",
                ));
            }
            Ok((PathValue::Postmaster(p), params)) => (ForwardPath::Postmaster(p), params),
            Ok((PathValue::Mailbox(m), params)) => (ForwardPath::Mailbox(m), params),
            Err(e) => {
                return self.error(reply(
                    501,
                    (5, 1, 3),
                    format!("Bad recipient address syntax: {e}"),
                ))
            }
        };
        let params = match parse_rcpt_params(params) {
            Ok(params) => params,
            Err(e) => return self.param_error(e),
        };
        if matches!(&path, ForwardPath::Mailbox(m) if !m.is_ascii()) && !smtputf8 {
            return self.error(reply(
                553,
                (5, 6, 7),
                "Non-ASCII recipient address requires SMTPUTF8 on MAIL",
            ));
        }
        if recipients >= self.config.limits.recipients {
            return self.reply(reply(452, (4, 5, 3), "Too many recipients"));
        }
        let rcpt = RcptTo {
            forward_path: path,
            params,
        };
        self.state = State::Waiting(Pending::Recipient(rcpt.clone()));
        self.outputs.push_back(Output::CheckRecipient(rcpt));
    }

    fn param_error(&mut self, error: ParamError) {
        let code = match error {
            ParamError::Unknown(_) => 555,
            _ => 501,
        };
        self.error(reply(code, (5, 5, 4), error.to_string()));
    }

    /// Why a DATA or BDAT may not start in the current transaction.
    fn body_refusal(&self) -> Option<Reply> {
        let Some(tx) = self.tx.as_ref() else {
            return Some(reply(503, (5, 5, 1), "Need MAIL before message content"));
        };
        if tx.recipients.is_empty() {
            Some(reply(554, (5, 5, 1), "No valid recipients"))
        } else {
            None
        }
    }

    fn data(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error(reply(501, (5, 5, 4), "Syntax: DATA"));
        }
        if let Some(refusal) = self.session_refusal().or_else(|| self.body_refusal()) {
            return self.error(refusal);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.chunks.is_some()) {
            return self.error(reply(503, (5, 5, 1), "DATA not allowed after BDAT"));
        }
        let limits = &self.config.limits;
        self.state = State::Data(BodyReceiver::new(limits.message_size, limits.data_line));
        self.reply(Reply::bare(354, "End data with <CR><LF>.<CR><LF>"));
    }

    fn bdat(&mut self, arg: &str) {
        let mut words = arg.split(' ').filter(|w| !w.is_empty());
        let size = words
            .next()
            .filter(|w| (1..=19).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse::<u64>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            // Without a size the chunk cannot be skipped: its bytes would be
            // read as commands. Close instead.
            self.reply(reply(
                501,
                (5, 5, 4),
                "Syntax: BDAT size [LAST]; closing connection",
            ));
            return self.close(super::CloseReason::BdatSyntax);
        };
        let refusal = self
            .tls_refusal()
            .or_else(|| self.session_refusal())
            .or_else(|| self.body_refusal())
            .or_else(|| {
                self.tx.as_ref().filter(|tx| tx.chunk_failed).map(|_| {
                    reply(
                        503,
                        (5, 5, 1),
                        "An earlier chunk failed; send RSET to start over",
                    )
                })
            });
        if refusal.is_none() {
            let limits = &self.config.limits;
            if let Some(tx) = self.tx.as_mut() {
                tx.chunks.get_or_insert_with(|| {
                    BodyReceiver::new(limits.message_size, limits.data_line)
                });
            }
        }
        self.state = State::Chunk(Chunk {
            size,
            remaining: size,
            last,
            refusal,
        });
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

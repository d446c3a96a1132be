//! Reading the client's input a line at a time, dispatching each command
//! to its verb, and the verbs too small for a file of their own (NOOP,
//! RSET, QUIT, VRFY, HELP).

use super::{CloseReason, Output, ServerSession, State};
use crate::reply::Reply;
use crate::transport::Transport;

/// Verbs of HTTP and its relatives: a browser or proxy pointed at the SMTP
/// port (cross-protocol attacks such as ALPACA).
const HTTP_VERBS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];

impl ServerSession {
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
    pub(super) fn step_line(&mut self) -> bool {
        let buf = &self.input[self.pos..];
        let Some(&first) = buf.first() else {
            return false;
        };
        if matches!(self.state, State::Command) && is_binary(first) {
            self.reply(Reply::new(
                500,
                (5, 5, 2),
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
                (5, 5, 2),
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

    pub(super) fn refuse_bare_line_end(&mut self) {
        self.reply(Reply::new(
            554,
            (5, 5, 2),
            "Message refused: bare CR or LF in message data (RFC 5321 §2.3.8); closing connection",
        ));
        self.close(CloseReason::BareLineEnd);
    }

    /// One complete command line, without its CRLF.
    pub(super) fn command(&mut self, line: &[u8]) {
        let Ok(text) = std::str::from_utf8(line) else {
            self.error(Reply::new(
                500,
                (5, 5, 2),
                "Command line is not valid UTF-8",
            ));
            return;
        };
        let text = text.trim_end_matches(' ');
        let (verb, arg) = match text.split_once(' ') {
            Some((verb, arg)) => (verb, arg.trim_start_matches(' ')),
            None => (text, ""),
        };
        let verb = verb.to_ascii_uppercase();
        if verb.ends_with(':') || HTTP_VERBS.contains(&verb.as_str()) {
            self.reply(Reply::new(
                554,
                (5, 7, 0),
                "This is an SMTP server; other protocols are refused. Closing connection",
            ));
            self.close(CloseReason::CrossProtocol);
            return;
        }
        let limits = &self.config.limits;
        let max = match verb.as_str() {
            "AUTH" => limits.auth_line,
            "MAIL" | "RCPT" => limits.command_line + limits.extension_allowance,
            _ => limits.command_line,
        };
        if line.len() + 2 > max {
            self.error(line_too_long());
            return;
        }
        match verb.as_str() {
            "EHLO" => return self.hello(arg, true),
            "HELO" => return self.hello(arg, false),
            "STARTTLS" => return self.starttls(arg),
            "NOOP" => return self.reply(Reply::new(250, (2, 0, 0), "Ok")),
            "RSET" => return self.rset(arg),
            "QUIT" => return self.quit(arg),
            // BDAT must read its chunk whatever the verdict.
            "BDAT" => return self.bdat(arg),
            "EXPN" | "ETRN" | "ATRN" | "TURN" => {
                return self.error(Reply::new(502, (5, 5, 1), "Command not implemented"));
            }
            "AUTH" | "MAIL" | "RCPT" | "DATA" | "VRFY" | "HELP" => {}
            _ => return self.error(Reply::new(500, (5, 5, 2), "Command not recognized")),
        }
        if let Some(refusal) = self.tls_refusal() {
            return self.error(refusal);
        }
        match verb.as_str() {
            "AUTH" => self.auth(arg),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => self.data(arg),
            "VRFY" if arg.is_empty() => {
                self.error(Reply::new(501, (5, 5, 4), "Syntax: VRFY address"))
            }
            "VRFY" => self.reply(Reply::new(
                252,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            _ => self.reply(Reply::new(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            )),
        }
    }

    /// Outside TLS nothing but EHLO, HELO, STARTTLS, NOOP, RSET and QUIT.
    pub(super) fn tls_refusal(&self) -> Option<Reply> {
        if self.tls || self.config.transport == Transport::Local {
            return None;
        }
        let text = match self.config.transport {
            Transport::StartTls => "Must issue a STARTTLS command first",
            _ => "TLS required: connect to the implicit TLS port",
        };
        Some(Reply::new(530, (5, 7, 0), text))
    }

    /// The sequence checks shared by MAIL, RCPT, DATA and BDAT.
    pub(super) fn session_refusal(&self) -> Option<Reply> {
        if self.client_name.is_none() {
            Some(Reply::new(503, (5, 5, 1), "Send EHLO first"))
        } else if self.auth_user.is_none() {
            Some(Reply::new(530, (5, 7, 0), "Authentication required"))
        } else {
            None
        }
    }

    fn rset(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error(Reply::new(501, (5, 5, 4), "Syntax: RSET"));
        }
        self.end_transaction();
        self.reply(Reply::new(250, (2, 0, 0), "Ok"));
    }

    fn quit(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error(Reply::new(501, (5, 5, 4), "Syntax: QUIT"));
        }
        let host = self.config.hostname.clone();
        self.reply(Reply::new(
            221,
            (2, 0, 0),
            format!("{host} closing connection"),
        ));
        self.close(CloseReason::Quit);
    }
}

pub(super) fn line_too_long() -> Reply {
    Reply::new(500, (5, 5, 2), "Line too long")
}

/// A first octet no SMTP command or empty line starts with.
fn is_binary(b: u8) -> bool {
    (b < 0x20 && b != b'\r' && b != b'\n' && b != b'\t') || b >= 0x7f
}

/// `text` without `prefix`, compared without regard to ASCII case.
pub(super) fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

//! MAIL FROM: the envelope sender starts a transaction, once the caller
//! has said the authenticated user may send as it.

use super::reader::strip_prefix_ci;
use super::{AnswerError, Output, Pending, ServerSession, State, Transaction, Verdict};
use crate::envelope::{MailFrom, PathError};
use crate::params::ParamError;
use crate::reply::Reply;

impl ServerSession {
    pub(super) fn mail(&mut self, arg: &str) {
        if let Some(refusal) = self.session_refusal() {
            return self.error(refusal);
        }
        if self.tx.is_some() {
            return self.error(Reply::new(
                503,
                (5, 5, 1),
                "Sender already given; send RSET to start over",
            ));
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.error(Reply::new(
                501,
                (5, 5, 4),
                "Syntax: MAIL FROM:<address> [parameters]",
            ));
        };
        let mail_from = match MailFrom::parse(rest.trim_start_matches(' ')) {
            Ok(mail_from) => mail_from,
            Err(e) => return self.path_error("sender", (5, 1, 7), e),
        };
        let (path, params) = (&mail_from.reverse_path, &mail_from.params);
        if path.as_ref().is_some_and(|m| !m.is_ascii()) && !params.smtputf8 {
            return self.error(Reply::new(
                553,
                (5, 6, 7),
                "Non-ASCII sender address requires the SMTPUTF8 parameter",
            ));
        }
        let max = self.config.limits.message_size;
        if params.size.is_some_and(|size| size > max) {
            return self.reply(self.too_big());
        }
        self.state = State::Waiting(Pending::Sender(mail_from.clone()));
        self.outputs.push_back(Output::CheckSender(mail_from));
    }

    /// Refuses a MAIL or RCPT path: 501 with `enhanced` (5.1.7 for the
    /// sender, 5.1.3 for a recipient) for the address, 555 5.5.4 for an
    /// unknown parameter and 501 5.5.4 for a bad one.
    pub(super) fn path_error(&mut self, role: &str, enhanced: (u8, u16, u16), error: PathError) {
        let reply = match error {
            PathError::Param(e @ ParamError::Unknown(_)) => {
                Reply::new(555, (5, 5, 4), e.to_string())
            }
            PathError::Param(e) => Reply::new(501, (5, 5, 4), e.to_string()),
            PathError::TrailingText => {
                Reply::new(501, enhanced, format!("Bad {role} address syntax"))
            }
            e => Reply::new(501, enhanced, format!("Bad {role} address syntax: {e}")),
        };
        self.error(reply);
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
                self.reply(Reply::new(250, (2, 1, 0), text));
            }
            Verdict::Reject(reply) => self.reply(reply),
        }
        self.process();
        Ok(())
    }
}

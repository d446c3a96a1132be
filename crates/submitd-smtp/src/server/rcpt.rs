//! RCPT TO: one recipient, added once the caller accepts it, up to the
//! recipient limit.

use super::reader::strip_prefix_ci;
use super::{AnswerError, Output, Pending, ServerSession, State, Verdict};
use crate::envelope::RcptTo;
use crate::reply::Reply;

impl ServerSession {
    pub(super) fn rcpt(&mut self, arg: &str) {
        if let Some(refusal) = self.session_refusal() {
            return self.error(refusal);
        }
        let Some(tx) = self.tx.as_ref() else {
            return self.error(Reply::new(503, (5, 5, 1), "Need MAIL before RCPT"));
        };
        if tx.chunks.is_some() {
            return self.error(Reply::new(503, (5, 5, 1), "RCPT not allowed after BDAT"));
        }
        let smtputf8 = tx.mail_from.params.smtputf8;
        let recipients = tx.recipients.len();
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.error(Reply::new(
                501,
                (5, 5, 4),
                "Syntax: RCPT TO:<address> [parameters]",
            ));
        };
        let rcpt = match RcptTo::parse(rest.trim_start_matches(' ')) {
            Ok(rcpt) => rcpt,
            Err(e) => return self.path_error("recipient", (5, 1, 3), e),
        };
        if !rcpt.forward_path.is_ascii() && !smtputf8 {
            return self.error(Reply::new(
                553,
                (5, 6, 7),
                "Non-ASCII recipient address requires SMTPUTF8 on MAIL",
            ));
        }
        if recipients >= self.config.limits.recipients {
            // Counted as an error: a client that goes on adding recipients
            // past the limit is closed, not answered 452 forever.
            return self.error(Reply::new(452, (4, 5, 3), "Too many recipients"));
        }
        self.state = State::Waiting(Pending::Recipient(rcpt.clone()));
        self.outputs.push_back(Output::CheckRecipient(rcpt));
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
                self.reply(Reply::new(250, (2, 1, 5), text));
            }
            (Verdict::Reject(reply), _) => self.reply(reply),
            // Unreachable: RCPT is only asked about inside a transaction.
            (Verdict::Accept, None) => {
                self.reply(Reply::new(451, (4, 3, 0), "Local error in processing"))
            }
        }
        self.process();
        Ok(())
    }
}

//! DATA (RFC 5321 §4.1.1.4): the content, dot-stuffed, ended by
//! `CRLF.CRLF` only; then the question that stores it, and the reply that
//! says it is stored. BDAT's last chunk ends here too.

use super::{AnswerError, Output, Pending, ServerSession, State};
use crate::body::{BodyFault, BodyReceiver, Progress};
use crate::reply::Reply;

impl ServerSession {
    /// Why a DATA or BDAT may not start in the current transaction.
    pub(super) fn body_refusal(&self) -> Option<Reply> {
        let Some(tx) = self.tx.as_ref() else {
            return Some(Reply::new(
                503,
                (5, 5, 1),
                "Need MAIL before message content",
            ));
        };
        if tx.recipients.is_empty() {
            Some(Reply::new(554, (5, 5, 1), "No valid recipients"))
        } else {
            None
        }
    }

    pub(super) fn data(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error(Reply::new(501, (5, 5, 4), "Syntax: DATA"));
        }
        if let Some(refusal) = self.session_refusal().or_else(|| self.body_refusal()) {
            return self.error(refusal);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.chunks.is_some()) {
            return self.error(Reply::new(503, (5, 5, 1), "DATA not allowed after BDAT"));
        }
        if !self.start_message(false) {
            return self.reply(Reply::new(451, (4, 3, 0), "Local error in processing"));
        }
        let limits = &self.config.limits;
        self.state = State::Data(BodyReceiver::new(limits.message_size, limits.data_line));
        self.start_content_clock();
        self.reply(Reply::bare(354, "End data with <CR><LF>.<CR><LF>"));
    }

    pub(super) fn step_data(&mut self) -> bool {
        let State::Data(receiver) = &mut self.state else {
            return false;
        };
        let buf = &self.input[self.pos..];
        if buf.is_empty() {
            return false;
        }
        let progress = receiver.feed_data(buf);
        let (data, faulted) = (receiver.take(), receiver.fault().is_some());
        let consumed = match progress {
            Progress::End(n) => n,
            _ => buf.len(),
        };
        self.pass_on(data, faulted);
        self.content_read(consumed);
        match progress {
            Progress::NeedMore => {
                self.pos = self.input.len();
                false
            }
            Progress::End(n) => {
                self.pos += n;
                if let State::Data(receiver) = std::mem::replace(&mut self.state, State::Command) {
                    self.finish_body(&receiver);
                }
                true
            }
            Progress::BareLineEnd => {
                self.refuse_bare_line_end();
                false
            }
        }
    }

    /// The DATA or final BDAT content is complete (and was passed on):
    /// refuse it or ask for it to be stored.
    pub(super) fn finish_body(&mut self, receiver: &BodyReceiver) {
        match receiver.fault() {
            Some(BodyFault::TooBig) => {
                self.end_transaction();
                self.reply(self.too_big());
            }
            Some(BodyFault::LineTooLong) => {
                self.end_transaction();
                let max = self.config.limits.data_line;
                self.reply(Reply::new(
                    554,
                    (5, 6, 0),
                    format!(
                        "Message refused: a line is longer than {max} octets (RFC 5321 §4.5.3.1.6)"
                    ),
                ));
            }
            None if !self.message_open => {
                self.end_transaction();
                self.reply(Reply::new(451, (4, 3, 0), "Local error in processing"));
            }
            None => {
                self.tx = None;
                self.message_open = false;
                self.state = State::Waiting(Pending::Store);
                self.outputs.push_back(Output::StoreMessage);
            }
        }
    }

    /// Answers [`Output::StoreMessage`]: the queue id once the message is
    /// durable, or the reply that refuses it.
    pub fn answer_store(&mut self, result: Result<String, Reply>) -> Result<(), AnswerError> {
        if !matches!(self.state, State::Waiting(Pending::Store)) {
            return Err(AnswerError::NotAsked);
        }
        self.state = State::Command;
        match result {
            Ok(queue_id) => self.reply(Reply::new(
                250,
                (2, 0, 0),
                format!("Ok: queued as {queue_id}"),
            )),
            Err(reply) => self.reply(reply),
        }
        self.process();
        Ok(())
    }
}

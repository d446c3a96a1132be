//! BDAT (RFC 3030 CHUNKING): content in chunks of a stated size, no dot
//! transparency and no end marker. A chunk is always read to its end, even
//! when refused, since its octets must never be read as commands.

use super::{CloseReason, ServerSession, State};
use crate::body::{BodyFault, BodyReceiver};
use crate::reply::Reply;

/// A BDAT chunk being read.
#[derive(Debug)]
pub(super) struct Chunk {
    size: u64,
    remaining: u64,
    last: bool,
    /// Read and drop the chunk, then send this reply.
    refusal: Option<Reply>,
}

impl ServerSession {
    pub(super) fn bdat(&mut self, arg: &str) {
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
            self.reply(Reply::new(
                501,
                (5, 5, 4),
                "Syntax: BDAT size [LAST]; closing connection",
            ));
            return self.close(CloseReason::BdatSyntax);
        };
        if size > self.config.limits.message_size {
            // Reading a chunk that can never be taken would let one command
            // hold the session for as long as its size says; its octets
            // cannot be read as commands either. Refuse it and close.
            self.reply(self.too_big());
            return self.close(CloseReason::ChunkTooBig);
        }
        let mut refusal = self
            .tls_refusal()
            .or_else(|| self.session_refusal())
            .or_else(|| self.body_refusal())
            .or_else(|| {
                self.tx.as_ref().filter(|tx| tx.chunk_failed).map(|_| {
                    Reply::new(
                        503,
                        (5, 5, 1),
                        "An earlier chunk failed; send RSET to start over",
                    )
                })
            });
        let first = self.tx.as_ref().is_some_and(|tx| tx.chunks.is_none());
        if refusal.is_none() && first {
            if self.start_message(true) {
                let limits = &self.config.limits;
                if let Some(tx) = self.tx.as_mut() {
                    tx.chunks = Some(BodyReceiver::new(limits.message_size, limits.data_line));
                }
            } else {
                refusal = Some(Reply::new(451, (4, 3, 0), "Local error in processing"));
            }
        }
        self.state = State::Chunk(Chunk {
            size,
            remaining: size,
            last,
            refusal,
        });
        self.start_content_clock();
    }

    pub(super) fn step_chunk(&mut self) -> bool {
        let State::Chunk(chunk) = &mut self.state else {
            return false;
        };
        let available = (self.input.len() - self.pos) as u64;
        let take = chunk.remaining.min(available);
        if take == 0 && chunk.remaining > 0 {
            return false;
        }
        // `take` is at most the buffered length, so it fits in usize.
        let end = self.pos + take as usize;
        chunk.remaining -= take;
        let done = chunk.remaining == 0;
        if chunk.refusal.is_none() {
            if let Some(receiver) = self.tx.as_mut().and_then(|tx| tx.chunks.as_mut()) {
                if receiver.feed_chunk(&self.input[self.pos..end]).is_err() {
                    self.refuse_bare_line_end();
                    return false;
                }
                let (data, faulted) = (receiver.take(), receiver.fault().is_some());
                self.pass_on(data, faulted);
            }
        }
        self.pos = end;
        self.content_read(take as usize);
        if done {
            if let State::Chunk(chunk) = std::mem::replace(&mut self.state, State::Command) {
                self.finish_chunk(chunk);
            }
        }
        done
    }

    /// A BDAT chunk has been read in full.
    fn finish_chunk(&mut self, chunk: Chunk) {
        if let Some(refusal) = chunk.refusal {
            if chunk.last && self.tx.as_ref().is_some_and(|tx| tx.chunk_failed) {
                self.end_transaction();
            }
            self.error(refusal);
            return;
        }
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let Some(receiver) = tx.chunks.as_mut() else {
            return;
        };
        if !chunk.last {
            if receiver.fault() == Some(BodyFault::TooBig) {
                tx.chunk_failed = true;
                self.reply(self.too_big());
            } else {
                let text = format!("{} octets received", chunk.size);
                self.reply(Reply::new(250, (2, 0, 0), text));
            }
            return;
        }
        if receiver.finish_chunks().is_err() {
            self.refuse_bare_line_end();
            return;
        }
        if let Some(receiver) = tx.chunks.take() {
            self.finish_body(&receiver);
        }
    }
}

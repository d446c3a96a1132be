//! Message content on the wire: DATA with dot-stuffing (RFC 5321 §4.5.2)
//! and BDAT chunks (RFC 3030), both held to one rule: every line ends in
//! CRLF. A bare LF or bare CR is never read as a line end, so no
//! `\n.\n`-style sequence can end a message early (SMTP smuggling, 2023).
//!
//! [`BodyReceiver`] works on arbitrary splits of the input: its state (a CR
//! still waiting for its LF, a leading dot still waiting for what follows)
//! crosses calls and BDAT chunks. It never holds the message: what it read
//! since the last [`BodyReceiver::take`] is handed on (as the machine's
//! `MessageData` output) and forgotten, so a session's memory does not
//! grow with the size of the message.

/// How a DATA body ended, or why it could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// All input consumed; the end has not been seen yet.
    NeedMore,
    /// `CRLF.CRLF` seen after the given number of input octets.
    End(usize),
    /// A LF without CR, or a CR without LF.
    BareLineEnd,
}

/// What was wrong with a complete body, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// More octets than the size limit.
    TooBig,
    /// A line longer than the data line limit.
    LineTooLong,
}

/// Reads message content, checking line ends, line length and size, and
/// passes it on in pieces.
#[derive(Debug)]
pub(crate) struct BodyReceiver {
    /// Content read since the last `take`; nothing once a fault was seen.
    pending: Vec<u8>,
    size: u64,
    max_size: u64,
    max_line: usize,
    /// Octets of the current line so far, stuffed dot included.
    line_len: usize,
    fault: Option<BodyFault>,
    /// The last octet was a CR whose LF has not arrived yet.
    pending_cr: bool,
    /// Nothing of the current line has been seen yet.
    at_line_start: bool,
    /// The current line so far is a single (stuffed or final) dot.
    dot_only: bool,
}

impl BodyReceiver {
    pub(crate) fn new(max_size: u64, max_line: usize) -> Self {
        Self {
            pending: Vec::new(),
            size: 0,
            max_size,
            max_line,
            line_len: 0,
            fault: None,
            pending_cr: false,
            at_line_start: true,
            dot_only: false,
        }
    }

    /// Octets received so far (after unstuffing).
    #[cfg(test)]
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The first fault seen, if any.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        self.fault
    }

    /// The content read since the last call, dot-unstuffed. Empty once a
    /// fault was seen: a refused message is read to its end but nothing
    /// more of it is passed on.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    fn set_fault(&mut self, fault: BodyFault) {
        if self.fault.is_none() {
            self.fault = Some(fault);
        }
        self.pending = Vec::new();
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.max_size {
            self.set_fault(BodyFault::TooBig);
        } else if self.fault.is_none() {
            self.pending.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self) {
        if self.line_len + 2 > self.max_line {
            self.set_fault(BodyFault::LineTooLong);
        }
        self.keep(b"\r\n");
        self.line_len = 0;
        self.at_line_start = true;
        self.dot_only = false;
    }

    /// Feeds DATA content (dot-stuffed, ended by `CRLF.CRLF`).
    pub(crate) fn feed_data(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while i < input.len() {
            if self.pending_cr {
                if input[i] != b'\n' {
                    return Progress::BareLineEnd;
                }
                self.pending_cr = false;
                i += 1;
                if self.dot_only {
                    return Progress::End(i);
                }
                self.end_line();
                continue;
            }
            if self.at_line_start && input[i] == b'.' {
                // A leading dot is transparency (removed) or the end marker.
                self.at_line_start = false;
                self.dot_only = true;
                self.line_len = 1;
                i += 1;
                continue;
            }
            i = self.take_segment(input, i);
            if i == usize::MAX {
                return Progress::BareLineEnd;
            }
        }
        Progress::NeedMore
    }

    /// Feeds one BDAT chunk (no dot transparency, no end marker).
    pub(crate) fn feed_chunk(&mut self, input: &[u8]) -> Result<(), ()> {
        let mut i = 0;
        while i < input.len() {
            if self.pending_cr {
                if input[i] != b'\n' {
                    return Err(());
                }
                self.pending_cr = false;
                i += 1;
                self.end_line();
                continue;
            }
            i = self.take_segment(input, i);
            if i == usize::MAX {
                return Err(());
            }
        }
        Ok(())
    }

    /// Called after the last BDAT chunk: a CR at the very end is bare.
    pub(crate) fn finish_chunks(&mut self) -> Result<(), ()> {
        if self.pending_cr {
            return Err(());
        }
        // An unterminated last line will get its CRLF when relayed.
        if self.line_len > 0 && self.line_len + 2 > self.max_line {
            self.set_fault(BodyFault::LineTooLong);
        }
        Ok(())
    }

    /// Takes line content from `input[start..]` up to the next CR or LF.
    /// Returns the next index, or `usize::MAX` on a bare LF.
    fn take_segment(&mut self, input: &[u8], start: usize) -> usize {
        let rest = &input[start..];
        let (content, next) = match memchr::memchr2(b'\r', b'\n', rest) {
            Some(j) if rest[j] == b'\n' => return usize::MAX,
            Some(j) => {
                self.pending_cr = true;
                (&rest[..j], start + j + 1)
            }
            None => (rest, input.len()),
        };
        if !content.is_empty() {
            self.at_line_start = false;
            self.dot_only = false;
            self.line_len = self.line_len.saturating_add(content.len());
            self.keep(content);
        }
        next
    }
}

/// Dot-stuffs message content for DATA in pieces of any split (RFC 5321
/// §4.5.2): a dot that starts a line is doubled, whichever piece the line
/// began in. The end marker follows [`DotStuffer::finish`].
#[derive(Clone, Copy, Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The content so far is empty or ends in CRLF.
    ends_with_crlf: bool,
    /// The last octet was a CR.
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self {
            at_line_start: true,
            ends_with_crlf: true,
            after_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends `piece`, dot-stuffed, to `out`.
    pub fn stuff(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = piece.last() else {
            return;
        };
        out.reserve(piece.len() + piece.len() / 64 + 1);
        let mut start = 0;
        for (i, &b) in piece.iter().enumerate() {
            if self.at_line_start && b == b'.' {
                out.extend_from_slice(&piece[start..i]);
                out.push(b'.');
                start = i;
            }
            self.at_line_start = b == b'\n';
        }
        out.extend_from_slice(&piece[start..]);
        let cr_before_last = match piece.len() {
            1 => self.after_cr,
            n => piece[n - 2] == b'\r',
        };
        self.ends_with_crlf = last == b'\n' && cr_before_last;
        self.after_cr = last == b'\r';
    }

    /// Appends the end of data: a CRLF first if the content did not end
    /// with one (so the marker stands on a line of its own), then `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.ends_with_crlf {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Writes `message` dot-stuffed for DATA, followed by the end marker. A
/// message that does not end in CRLF gets one, so the marker stands on a
/// line of its own.
pub fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    let mut stuffer = DotStuffer::default();
    stuffer.stuff(message, out);
    stuffer.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(input: &[u8]) -> (Progress, Vec<u8>) {
        let mut r = BodyReceiver::new(1 << 20, 1000);
        let p = r.feed_data(input);
        (p, r.take())
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        for (input, progress, data) in [
            (&b".\r\n"[..], Progress::End(3), &b""[..]),
            (b"a\r\n.\r\n", Progress::End(6), b"a\r\n"),
            (b"a\r\n..b\r\n.\r\nMAIL", Progress::End(11), b"a\r\n.b\r\n"),
            (b"a\r\n.b\r\n.\r\n", Progress::End(10), b"a\r\nb\r\n"),
            (b"a\r\n. \r\n", Progress::NeedMore, b"a\r\n \r\n"),
            (b"a\r\n.", Progress::NeedMore, b"a\r\n"),
            (b"a\r\n.\r", Progress::NeedMore, b"a\r\n"),
        ] {
            assert_eq!(receive(input), (progress, data.to_vec()), "{input:?}");
        }
    }

    #[test]
    fn smuggling_sequences_are_bare_line_ends() {
        for input in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\r\n.\r\n",
            b"a\r\n.\r.\r\n",
        ] {
            assert_eq!(receive(input).0, Progress::BareLineEnd, "{input:?}");
        }
    }

    #[test]
    fn state_survives_any_split() {
        let input = b"x\r\n..y\r\nz\r\n.\r\nQUIT\r\n";
        let whole = receive(input);
        for split in 0..input.len() {
            let mut r = BodyReceiver::new(1 << 20, 1000);
            let (p, mut data) = match r.feed_data(&input[..split]) {
                Progress::NeedMore => {
                    let mut data = r.take();
                    let p = match r.feed_data(&input[split..]) {
                        Progress::End(n) => Progress::End(split + n),
                        other => other,
                    };
                    (p, std::mem::take(&mut data))
                }
                other => (other, Vec::new()),
            };
            data.extend(r.take());
            assert_eq!((p, data), whole, "split at {split}");
        }
    }

    #[test]
    fn faults_are_recorded_and_reading_goes_on() {
        let mut r = BodyReceiver::new(4, 1000);
        assert_eq!(r.feed_data(b"12345\r\n.\r\n"), Progress::End(10));
        assert_eq!(r.fault(), Some(BodyFault::TooBig));
        assert_eq!(r.size(), 7);
        assert!(
            r.take().is_empty(),
            "nothing of a refused message is passed on"
        );

        // What was passed on before the fault is all there is.
        let mut r = BodyReceiver::new(8, 1000);
        assert_eq!(r.feed_data(b"1234\r\n"), Progress::NeedMore);
        assert_eq!(r.take(), b"1234\r\n");
        assert_eq!(r.feed_data(b"5678\r\n.\r\n"), Progress::End(9));
        assert_eq!(r.fault(), Some(BodyFault::TooBig));
        assert!(r.take().is_empty());

        let mut r = BodyReceiver::new(100, 5);
        assert_eq!(r.feed_data(b"..2\r\n.\r\n"), Progress::End(8));
        assert_eq!(r.fault(), None, "a 5-octet line with its stuffed dot");
        let mut r = BodyReceiver::new(100, 5);
        assert_eq!(r.feed_data(b"..23\r\n.\r\n"), Progress::End(9));
        assert_eq!(r.fault(), Some(BodyFault::LineTooLong));
    }

    #[test]
    fn chunks_keep_cr_state_across_boundaries() {
        let mut r = BodyReceiver::new(100, 1000);
        assert_eq!(r.feed_chunk(b"a\r"), Ok(()));
        assert_eq!(r.feed_chunk(b"\n.b\r\n"), Ok(()));
        assert_eq!(r.finish_chunks(), Ok(()));
        assert_eq!(r.take(), b"a\r\n.b\r\n");

        let mut r = BodyReceiver::new(100, 1000);
        assert_eq!(r.feed_chunk(b"a\r"), Ok(()));
        assert_eq!(r.finish_chunks(), Err(()));
        let mut r = BodyReceiver::new(100, 1000);
        assert_eq!(r.feed_chunk(b"a\nb"), Err(()));
    }

    #[test]
    fn dot_stuffing() {
        for (message, wire) in [
            (&b""[..], &b".\r\n"[..]),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".a\r\n.\r\n", b"..a\r\n..\r\n.\r\n"),
            (b"no end", b"no end\r\n.\r\n"),
            (b"x\r\n..", b"x\r\n...\r\n.\r\n"),
            (b"a\r", b"a\r\r\n.\r\n"),
            (b"\n.", b"\n..\r\n.\r\n"),
        ] {
            let mut out = Vec::new();
            dot_stuff(message, &mut out);
            assert_eq!(out, wire, "{message:?}");
            // The same in pieces, at every split.
            for split in 0..=message.len() {
                for second in split..=message.len() {
                    let mut stuffer = DotStuffer::default();
                    let mut out = Vec::new();
                    stuffer.stuff(&message[..split], &mut out);
                    stuffer.stuff(&message[split..second], &mut out);
                    stuffer.stuff(&message[second..], &mut out);
                    stuffer.finish(&mut out);
                    assert_eq!(out, wire, "{message:?} split {split}/{second}");
                }
            }
        }
    }
}

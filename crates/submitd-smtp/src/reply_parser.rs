//! Reading replies from a server (RFC 5321 §4.2): multi-line replies,
//! enhanced codes (RFC 3463, RFC 2034), bounded in line length and count.

use crate::reply::{EnhancedCode, Reply};

/// Longest reply line accepted, with CRLF. RFC 5321 asks for 512; real
/// servers send longer EHLO and error lines, so allow some room.
const MAX_LINE: usize = 4096;
/// Most lines in one reply (a long EHLO has about twenty).
const MAX_LINES: usize = 200;

/// A reply that cannot be read: the session with that server is over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line without a three-digit code from 200 to 599 and a separator.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// Lines of one reply with different codes.
    #[error("reply lines disagree on the code")]
    MixedCodes,
    /// A line longer than the limit or more lines than the limit.
    #[error("reply too long")]
    TooLong,
    /// A line ended by a bare LF.
    #[error("reply line not ended by CRLF")]
    BareLineEnd,
}

/// Collects reply lines into replies.
#[derive(Debug, Default)]
pub(crate) struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
    enhanced: Option<EnhancedCode>,
}

impl ReplyParser {
    /// Reads one complete reply from the start of `input`; returns it with
    /// the octets used, or `Ok(None)` if more input is needed.
    pub(crate) fn parse(&mut self, input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            if lf + 1 > MAX_LINE {
                return Err(ReplyError::TooLong);
            }
            if lf == 0 || rest[lf - 1] != b'\r' {
                return Err(ReplyError::BareLineEnd);
            }
            let line = String::from_utf8_lossy(&rest[..lf - 1]).into_owned();
            used += lf + 1;
            let bytes = line.as_bytes();
            let code = (bytes.len() >= 3 && bytes[..3].iter().all(u8::is_ascii_digit))
                .then(|| line[..3].parse::<u16>().ok())
                .flatten()
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| ReplyError::Malformed(line.clone()))?;
            let last = match bytes.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(ReplyError::Malformed(line)),
            };
            if *self.code.get_or_insert(code) != code {
                return Err(ReplyError::MixedCodes);
            }
            let text = line.get(4..).unwrap_or("");
            let (enhanced, text) = split_enhanced(code, text);
            if self.lines.is_empty() {
                self.enhanced = enhanced;
            }
            self.lines.push(text.to_owned());
            if self.lines.len() > MAX_LINES {
                return Err(ReplyError::TooLong);
            }
            if last {
                let reply =
                    Reply::received(code, self.enhanced.take(), std::mem::take(&mut self.lines));
                self.code = None;
                return Ok(Some((reply, used)));
            }
        }
    }
}

/// Splits a leading `class.subject.detail` whose class matches the code.
fn split_enhanced(code: u16, text: &str) -> (Option<EnhancedCode>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = first.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, text);
    };
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !(digits(class, 1) && digits(subject, 3) && digits(detail, 3)) {
        return (None, text);
    }
    let (Ok(class), Ok(subject), Ok(detail)) =
        (class.parse::<u8>(), subject.parse(), detail.parse())
    else {
        return (None, text);
    };
    if u16::from(class) != code / 100 {
        return (None, text);
    }
    (Some(EnhancedCode::new(class, subject, detail)), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::default();
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((reply, used)) = parser.parse(&input[at..])? {
            out.push(reply);
            at += used;
        }
        Ok(out)
    }

    #[test]
    fn replies() {
        let replies = parse_all(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n550 5.7.1 no\r\n354 go\r\n221 2.0.0\r\n").unwrap();
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0].lines(), ["mx.example", "PIPELINING", "SIZE 100"]);
        assert_eq!(replies[0].enhanced(), None);
        assert_eq!(replies[1].enhanced(), Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(replies[1].lines(), ["no"]);
        assert_eq!(replies[2].lines(), ["go"]);
        assert_eq!(replies[3].enhanced(), Some(EnhancedCode::new(2, 0, 0)));
        assert_eq!(replies[3].lines(), [""]);
        // A code with no text at all.
        assert_eq!(parse_all(b"250\r\n").unwrap()[0].lines(), [""]);
        // An enhanced code of the wrong class stays text.
        assert_eq!(
            parse_all(b"550 2.0.0 odd\r\n").unwrap()[0].lines(),
            ["2.0.0 odd"]
        );
    }

    #[test]
    fn incomplete_and_errors() {
        let mut parser = ReplyParser::default();
        assert_eq!(parser.parse(b"250-a\r\n250 b"), Ok(None));
        for (input, error) in [
            (&b"25 x\r\n"[..], ReplyError::Malformed("25 x".into())),
            (b"hello\r\n", ReplyError::Malformed("hello".into())),
            (b"250x\r\n", ReplyError::Malformed("250x".into())),
            (b"199 x\r\n", ReplyError::Malformed("199 x".into())),
            (b"250-a\r\n251 b\r\n", ReplyError::MixedCodes),
            (b"250 a\n", ReplyError::BareLineEnd),
        ] {
            assert_eq!(parse_all(input), Err(error), "{input:?}");
        }
        assert_eq!(parse_all(&[b'2'; 5000]), Err(ReplyError::TooLong));
        let many: Vec<u8> = b"250-x\r\n".repeat(300);
        assert_eq!(parse_all(&many), Err(ReplyError::TooLong));
    }
}

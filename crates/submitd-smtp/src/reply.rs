//! SMTP replies (RFC 5321 §4.2) carrying RFC 3463 enhanced status codes.
//!
//! A [`Reply`] can only hold what is safe to put on the wire: a code from
//! 200 to 599, an enhanced code whose class matches the code's first digit,
//! and text with no CR, LF or other control characters. Whoever builds a
//! reply (this crate, or the daemon answering a question with its own
//! refusal) cannot smuggle a line break into the reply stream.

use std::fmt;

/// Longest text of one reply line, in octets. RFC 5321 §4.5.3.1.5 bounds a
/// reply line at 512 octets with its code and CRLF.
const MAX_TEXT: usize = 480;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedCode {
    /// A code from its three parts. The class is corrected to the reply's
    /// class when the code is attached to a [`Reply`].
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// The class: 2 success, 4 persistent transient failure, 5 permanent.
    pub const fn class(self) -> u8 {
        self.class
    }

    /// The subject (1 addressing, 2 mailbox, 3 mail system, 4 network,
    /// 5 protocol, 6 content, 7 security).
    pub const fn subject(self) -> u16 {
        self.subject
    }

    /// The detail within the subject.
    pub const fn detail(self) -> u16 {
        self.detail
    }
}

/// `(class, subject, detail)`, so replies read as `Reply::new(550, (5, 7, 1), "...")`.
impl From<(u8, u16, u16)> for EnhancedCode {
    fn from((class, subject, detail): (u8, u16, u16)) -> Self {
        Self::new(class, subject, detail)
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status code and
/// one or more lines of text for people.
///
/// Enhanced codes are left out only where RFC 2034 and practice leave them
/// out: the 220 greeting, 334 (its text is base64) and 354.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// A reply with an enhanced status code, given as an [`EnhancedCode`]
    /// or as `(class, subject, detail)`: `Reply::new(550, (5, 7, 1), "...")`.
    /// This is the one way the crate and its callers spell a reply.
    ///
    /// A code outside 200..=599 becomes 451 4.3.0 (a local fault, retried by
    /// the client) rather than an invalid reply on the wire; the enhanced
    /// code's class is set to the reply code's class.
    pub fn new(code: u16, enhanced: impl Into<EnhancedCode>, text: impl AsRef<str>) -> Self {
        let enhanced = enhanced.into();
        let (code, enhanced) = if (200..=599).contains(&code) {
            (code, enhanced)
        } else {
            (451, EnhancedCode::new(4, 3, 0))
        };
        let class = (code / 100) as u8;
        let enhanced = EnhancedCode::new(class, enhanced.subject, enhanced.detail);
        Self {
            code,
            enhanced: Some(enhanced),
            lines: vec![sanitize(text.as_ref())],
        }
    }

    /// A reply without an enhanced code (220 greeting, 334, 354).
    pub(crate) fn bare(code: u16, text: impl AsRef<str>) -> Self {
        Self {
            code,
            enhanced: None,
            lines: vec![sanitize(text.as_ref())],
        }
    }

    /// A 334 continuation carrying base64 text, sent as is (may be empty).
    pub(crate) fn continuation(base64_text: String) -> Self {
        Self {
            code: 334,
            enhanced: None,
            lines: vec![base64_text],
        }
    }

    /// A reply as received from a server: its code, the enhanced code if
    /// the text started with one, and the text lines.
    pub(crate) fn received(code: u16, enhanced: Option<EnhancedCode>, lines: Vec<String>) -> Self {
        Self {
            code,
            enhanced,
            lines,
        }
    }

    /// Adds a line to a multi-line reply.
    pub fn with_line(mut self, text: impl AsRef<str>) -> Self {
        self.lines.push(sanitize(text.as_ref()));
        self
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text lines, without code or line ends.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: the client may try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: the client must not retry the same thing.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form, every line ended by CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let start = out.len();
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if let Some(enhanced) = self.enhanced {
                out.extend_from_slice(enhanced.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            // "334 " with an empty challenge keeps its space (RFC 4954 §4).
            if out.len() - start == 3 {
                out.push(b' ');
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Replaces control characters (CR and LF above all) with spaces and bounds
/// the length, cutting at a character boundary.
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        let cases: Vec<(Reply, &str)> = vec![
            (
                Reply::new(250, EnhancedCode::new(2, 0, 0), "Ok"),
                "250 2.0.0 Ok\r\n",
            ),
            (
                Reply::new(250, EnhancedCode::new(2, 0, 0), "a").with_line("b"),
                "250-2.0.0 a\r\n250 2.0.0 b\r\n",
            ),
            (Reply::bare(354, "go ahead"), "354 go ahead\r\n"),
            (Reply::continuation(String::new()), "334 \r\n"),
            (
                Reply::continuation("VXNlcm5hbWU6".into()),
                "334 VXNlcm5hbWU6\r\n",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(String::from_utf8(reply.to_bytes()).unwrap(), wire);
        }
    }

    #[test]
    fn line_breaks_in_text_cannot_reach_the_wire() {
        let reply = Reply::new(550, EnhancedCode::new(5, 7, 1), "no\r\n250 2.0.0 forged");
        let wire = reply.to_bytes();
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(wire.ends_with(b"\r\n"));
        assert!(!wire[..wire.len() - 2].contains(&b'\r'));
    }

    #[test]
    fn invalid_codes_and_classes_are_corrected() {
        let reply = Reply::new(999, EnhancedCode::new(2, 0, 0), "x");
        assert_eq!(reply.code(), 451);
        assert_eq!(reply.enhanced(), Some(EnhancedCode::new(4, 3, 0)));
        let reply = Reply::new(550, EnhancedCode::new(2, 7, 1), "x");
        assert_eq!(reply.enhanced(), Some(EnhancedCode::new(5, 7, 1)));
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let reply = Reply::new(550, EnhancedCode::new(5, 0, 0), "é".repeat(1000));
        let line = &reply.lines()[0];
        assert!(line.len() <= MAX_TEXT);
        assert!(reply.to_bytes().len() <= 512);
    }
}

//! Making a submitted message fit for transfer (RFC 6409 §8), without
//! rewriting what the client sent: header lines are only ever *added* in
//! front, and the client's bytes follow unchanged.
//!
//! * The header/body boundary and the From:/Sender: fields are found by
//!   this module's own strict reading of RFC 5322 §2.2 and §3.6: a field
//!   name is printable ASCII without `:`, optionally followed by white space
//!   (the obsolete `From :` form still counts as From, so it cannot slip
//!   past the sender check while mail programs honour it). A line that is
//!   neither a field nor a continuation, such as `Fr om: ceo@example.org`,
//!   refuses the message: mail-parser 0.11 would read that line as From.
//! * Exactly one From: is required, at most one Sender:. Their addresses are
//!   parsed by mail-parser (display names, comments, quoting, groups) from
//!   the field this module found, and handed to the sender policy.
//! * Added: a Received trace field (RFC 5321 §4.4; the client's name and
//!   address can be left out for privacy), and Message-ID and Date when
//!   missing.

use std::time::{SystemTime, UNIX_EPOCH};

use mail_parser::MessageParser;

use crate::spool::QueueId;

/// Why a message is refused. The daemon sends the reply the variant names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// A header line that is neither a field nor a continuation (550 5.6.0).
    #[error("header line {line} is not a valid header field; a blank line must separate header and body")]
    MalformedHeader {
        /// The line number, from 1.
        line: usize,
    },
    /// No From: field (550 5.6.0).
    #[error("the message has no From: header")]
    NoFrom,
    /// More than one From: field (550 5.7.1).
    #[error("the message has more than one From: header")]
    SeveralFrom,
    /// More than one Sender: field (550 5.7.1).
    #[error("the message has more than one Sender: header")]
    SeveralSender,
    /// A From: or Sender: field without a usable address (550 5.6.0).
    #[error("the {0}: header has no valid address")]
    NoAddress(&'static str),
    /// The header section is longer than the limit (552 5.3.4).
    #[error("the message header is larger than {0} octets")]
    HeaderTooBig(usize),
    /// The header has more fields than the limit (552 5.3.4).
    #[error("the message header has more than {0} fields")]
    TooManyFields(usize),
}

/// Bounds on a message's header section: it is held in memory while it is
/// read and checked, so its size is what a session's memory grows with
/// (the body goes straight to the spool). Postfix's `header_size_limit`
/// is 100 KB for one field; these bound the whole section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Largest header section, in octets up to and with its blank line.
    pub size: usize,
    /// Most header fields.
    pub fields: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            size: 256 * 1024,
            fields: 1000,
        }
    }
}

impl PrepareError {
    /// The SMTP reply for this refusal: code, enhanced code and text.
    pub fn reply(&self) -> submitd_smtp::Reply {
        let (code, detail) = match self {
            Self::SeveralFrom | Self::SeveralSender => (550, (7, 1)),
            Self::HeaderTooBig(_) | Self::TooManyFields(_) => (552, (3, 4)),
            _ => (550, (6, 0)),
        };
        submitd_smtp::Reply::new(
            code,
            submitd_smtp::EnhancedCode::new(5, detail.0, detail.1),
            self.to_string(),
        )
    }
}

/// An address as `(local part, domain)`.
pub type Address = (String, String);

/// The header's author fields, for the sender policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSenders {
    /// Every address of From:.
    pub from: Vec<Address>,
    /// The address of Sender:, if present.
    pub sender: Option<Address>,
}

/// What the trace header may say about the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceInfo<'a> {
    /// This server's name.
    pub hostname: &'a str,
    /// The client's EHLO name and IP address; `None` leaves both out
    /// (`privacy = true` in the config: users ask for it to keep their home
    /// address out of every message they send).
    pub client: Option<(&'a str, std::net::IpAddr)>,
    /// The `with` protocol (ESMTPSA, ...).
    pub protocol: &'a str,
    /// The queue id.
    pub queue_id: &'a QueueId,
    /// The only recipient, named in `for`; `None` with several recipients
    /// so that Bcc recipients are not revealed.
    pub single_recipient: Option<&'a str>,
    /// Now.
    pub now: SystemTime,
}

/// A message ready for the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The added header lines followed by the client's bytes unchanged.
    pub data: Vec<u8>,
    /// How many octets at the start were added.
    pub added: usize,
    /// From:/Sender: addresses for the sender policy.
    pub senders: HeaderSenders,
}

/// One header field: its name and the raw value (after the colon, with
/// continuation lines and their line ends).
struct Field<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// Reads the header section strictly; returns its fields (at most
/// `max_fields` of them). Linear in the header's length.
fn header_fields(data: &[u8], max_fields: usize) -> Result<Vec<Field<'_>>, PrepareError> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut at = 0;
    let mut line_no = 0;
    while at < data.len() {
        line_no += 1;
        let end = memchr_crlf(&data[at..]).map_or(data.len(), |i| at + i + 2);
        let line = &data[at..end];
        let content = line.strip_suffix(b"\r\n").unwrap_or(line);
        if content.is_empty() {
            break; // the blank line: the body follows
        }
        if content[0] == b' ' || content[0] == b'\t' {
            let Some(last) = fields.last_mut() else {
                return Err(PrepareError::MalformedHeader { line: line_no });
            };
            // Extend the previous field's value over this continuation line.
            let start = last.value.as_ptr() as usize - data.as_ptr() as usize;
            last.value = &data[start..end];
        } else {
            let name_len = content
                .iter()
                .position(|&b| !(33..=126).contains(&b) || b == b':')
                .unwrap_or(content.len());
            let after_name = &content[name_len..];
            let colon = after_name.iter().position(|&b| b != b' ' && b != b'\t');
            match colon {
                Some(i) if name_len > 0 && after_name[i] == b':' => {
                    if fields.len() == max_fields {
                        return Err(PrepareError::TooManyFields(max_fields));
                    }
                    let value_start = at + name_len + i + 1;
                    fields.push(Field {
                        name: &content[..name_len],
                        value: &data[value_start..end],
                    });
                }
                _ => return Err(PrepareError::MalformedHeader { line: line_no }),
            }
        }
        at = end;
    }
    Ok(fields)
}

fn memchr_crlf(bytes: &[u8]) -> Option<usize> {
    memchr::memmem::find(bytes, b"\r\n")
}

/// Where the header section of `data` ends: the offset just past its blank
/// line, if `data` holds one. A message that starts with a blank line has
/// an empty header.
pub fn header_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(data, b"\r\n\r\n").map(|i| i + 4)
}

/// Parses the addresses of one From: or Sender: value with mail-parser.
fn addresses(value: &[u8]) -> Vec<Address> {
    let mut raw = b"From:".to_vec();
    raw.extend_from_slice(value);
    raw.extend_from_slice(b"\r\n");
    let Some(message) = MessageParser::default().parse(&raw) else {
        return Vec::new();
    };
    let Some(from) = message.from() else {
        return Vec::new();
    };
    from.iter()
        .filter_map(|addr| addr.address())
        .filter_map(|a| a.rsplit_once('@'))
        .filter(|(local, domain)| !local.is_empty() && !domain.is_empty())
        .map(|(local, domain)| (local.to_owned(), domain.to_owned()))
        .collect()
}

/// What the header check found: the lines to add in front of the
/// message, and the author fields for the sender policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// Received, and Message-ID and Date when missing, in wire form.
    pub added: String,
    /// From:/Sender: addresses.
    pub senders: HeaderSenders,
}

/// Checks the header and builds the message to spool (the message whole
/// in memory: the daemon streams instead, with [`inspect`]).
pub fn prepare(data: &[u8], trace: &TraceInfo<'_>) -> Result<Prepared, PrepareError> {
    let inspected = inspect(data, trace, HeaderLimits::default().fields)?;
    let added = inspected.added;
    let mut out = Vec::with_capacity(added.len() + data.len());
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(data);
    Ok(Prepared {
        data: out,
        added: added.len(),
        senders: inspected.senders,
    })
}

/// Checks the header section at the start of `data` (a message, or only
/// its header) and says what to add in front of it; reads nothing past
/// the header's blank line and copies nothing.
pub fn inspect(
    data: &[u8],
    trace: &TraceInfo<'_>,
    max_fields: usize,
) -> Result<Inspected, PrepareError> {
    let fields = header_fields(data, max_fields)?;
    let named = |name: &'static str| {
        fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut from = named("From");
    let from_value = from.next().ok_or(PrepareError::NoFrom)?.value;
    if from.next().is_some() {
        return Err(PrepareError::SeveralFrom);
    }
    let mut senders = named("Sender");
    let sender_value = senders.next().map(|f| f.value);
    if senders.next().is_some() {
        return Err(PrepareError::SeveralSender);
    }
    let from = addresses(from_value);
    if from.is_empty() {
        return Err(PrepareError::NoAddress("From"));
    }
    let sender = match sender_value {
        Some(value) => Some(
            addresses(value)
                .into_iter()
                .next()
                .ok_or(PrepareError::NoAddress("Sender"))?,
        ),
        None => None,
    };

    let date = rfc5322_date(trace.now);
    let mut added = received(trace, &date);
    if named("Message-ID").next().is_none() {
        added.push_str(&format!(
            "Message-ID: <{}.{}@{}>\r\n",
            trace.queue_id,
            random_hex(),
            trace.hostname
        ));
    }
    if named("Date").next().is_none() {
        added.push_str(&format!("Date: {date}\r\n"));
    }
    Ok(Inspected {
        added,
        senders: HeaderSenders { from, sender },
    })
}

fn received(trace: &TraceInfo<'_>, date: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_control() && *c != '(' && *c != ')')
            .collect()
    };
    let mut out = String::from("Received: ");
    if let Some((name, ip)) = trace.client {
        let literal = match ip {
            std::net::IpAddr::V4(v4) => format!("[{v4}]"),
            std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        };
        out.push_str(&format!("from {} ({literal})\r\n\t", clean(name)));
    }
    out.push_str(&format!(
        "by {} (submitd) with {} id {}",
        trace.hostname, trace.protocol, trace.queue_id
    ));
    if let Some(rcpt) = trace.single_recipient {
        out.push_str(&format!("\r\n\tfor <{}>", clean(rcpt)));
    }
    out.push_str(&format!(";\r\n\t{date}\r\n"));
    out
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = std::process::id()
            .to_le_bytes()
            .repeat(2)
            .try_into()
            .unwrap_or([0; 8]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Sun, 22 Nov 2026 10:00:00 +0000` (RFC 5322 §3.3), in UTC.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn trace<'a>(
        id: &'a QueueId,
        client: Option<(&'a str, std::net::IpAddr)>,
        rcpt: Option<&'a str>,
    ) -> TraceInfo<'a> {
        TraceInfo {
            hostname: "mx.test",
            client,
            protocol: "ESMTPSA",
            queue_id: id,
            single_recipient: rcpt,
            now: UNIX_EPOCH + Duration::from_secs(1_795_341_600),
        }
    }

    fn senders(data: &[u8]) -> Result<HeaderSenders, PrepareError> {
        let id = QueueId::parse("0123456789abcdef01").unwrap();
        prepare(data, &trace(&id, None, None)).map(|p| p.senders)
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(1_795_341_600)),
            "Sun, 22 Nov 2026 10:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    #[test]
    fn bytes_stay_exact_and_only_lines_are_added() {
        let id = QueueId::parse("0123456789abcdef01").unwrap();
        let original =
            b"From: Alice <alice@example.org>\r\nSubject: hi\r\n\r\nbody \xe2\x82\xac\r\n.\r\n";
        let ip = "203.0.113.7".parse().unwrap();
        let p = prepare(
            original,
            &trace(&id, Some(("laptop.lan", ip)), Some("bob@example.net")),
        )
        .unwrap();
        assert_eq!(&p.data[p.added..], &original[..]);
        let added = std::str::from_utf8(&p.data[..p.added]).unwrap();
        assert_eq!(
            added.split("Message-ID:").next().unwrap(),
            "Received: from laptop.lan ([203.0.113.7])\r\n\tby mx.test (submitd) with ESMTPSA id 0123456789abcdef01\r\n\tfor <bob@example.net>;\r\n\tSun, 22 Nov 2026 10:00:00 +0000\r\n"
        );
        assert!(added.contains("Message-ID: <0123456789abcdef01."));
        assert!(added.ends_with("Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n"));
        assert_eq!(
            p.senders.from,
            vec![("alice".to_owned(), "example.org".to_owned())]
        );
    }

    #[test]
    fn privacy_and_existing_fields() {
        let id = QueueId::parse("0123456789abcdef01").unwrap();
        let original = b"From: a@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <x@y>\r\n\r\n";
        let p = prepare(original, &trace(&id, None, None)).unwrap();
        let added = std::str::from_utf8(&p.data[..p.added]).unwrap();
        assert_eq!(added, "Received: by mx.test (submitd) with ESMTPSA id 0123456789abcdef01;\r\n\tSun, 22 Nov 2026 10:00:00 +0000\r\n");
        assert!(!added.contains("203.0.113"));
    }

    #[test]
    fn from_and_sender_are_found_strictly() {
        let ok = |data: &[u8]| senders(data).unwrap();
        let pair = |l: &str, d: &str| (l.to_owned(), d.to_owned());
        assert_eq!(
            ok(b"from: \"Doe, Jane\" <jane@example.org>\r\n\r\n").from,
            vec![pair("jane", "example.org")]
        );
        assert_eq!(
            ok(b"From: a@example.org, B <b@example.net>\r\n\r\n").from,
            vec![pair("a", "example.org"), pair("b", "example.net")]
        );
        assert_eq!(
            ok(b"From:\r\n  folded@example.org\r\n\r\n").from,
            vec![pair("folded", "example.org")]
        );
        assert_eq!(
            ok(b"From : obsolete@example.org\r\n\r\n").from,
            vec![pair("obsolete", "example.org")]
        );
        let both = ok(b"From: a@example.org\r\nSender: s@example.org\r\n\r\n");
        assert_eq!(both.sender, Some(pair("s", "example.org")));
        // A header-only message (no body) is fine.
        assert_eq!(
            ok(b"From: a@example.org\r\n").from,
            vec![pair("a", "example.org")]
        );
        // Body lines that look like fields are not fields.
        assert_eq!(
            ok(b"From: a@example.org\r\n\r\nFrom: ceo@example.org\r\n")
                .from
                .len(),
            1
        );
    }

    #[test]
    fn malformed_or_ambiguous_headers_are_refused() {
        for (data, error) in [
            (
                &b"Fr om: ceo@example.org\r\nFrom: a@example.org\r\n\r\n"[..],
                PrepareError::MalformedHeader { line: 1 },
            ),
            (
                b"From: a@example.org\r\nno colon here\r\n\r\n",
                PrepareError::MalformedHeader { line: 2 },
            ),
            (
                b" continuation first\r\nFrom: a@example.org\r\n\r\n",
                PrepareError::MalformedHeader { line: 1 },
            ),
            (
                b"Subject: x\r\n\r\nFrom: a@example.org\r\n",
                PrepareError::NoFrom,
            ),
            (
                b"From: a@example.org\r\nFROM: ceo@example.org\r\n\r\n",
                PrepareError::SeveralFrom,
            ),
            (
                b"From: a@example.org\r\nSender: x@example.org\r\nsender: y@example.org\r\n\r\n",
                PrepareError::SeveralSender,
            ),
            (
                b"From: undisclosed-recipients:;\r\n\r\n",
                PrepareError::NoAddress("From"),
            ),
            (
                b"From: a@example.org\r\nSender: nobody\r\n\r\n",
                PrepareError::NoAddress("Sender"),
            ),
        ] {
            assert_eq!(
                senders(data),
                Err(error.clone()),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        assert_eq!(
            PrepareError::SeveralFrom.reply().to_string(),
            "550 5.7.1 the message has more than one From: header\r\n"
        );
        assert_eq!(PrepareError::NoFrom.reply().code(), 550);
    }
}

//! The on-disk form of queued messages and their delivery state. Both are
//! text headers in SMTP wire form, read back by the envelope parser of
//! `submitd-smtp`, so a path that was valid on the wire is valid on disk.
//!
//! ```text
//! msg/<id>:   submitd-spool 1           state/<id>: submitd-state 1
//!             (submitd-input 1 while the content is still arriving)
//!             id: <id>                              attempts: 2
//!             received: <unix seconds>              next-try: <unix seconds>
//!             user: alice | -                       rcpt: 0 delivered 250 2.0.0 ok
//!             mail-from: <a@b> SIZE=10              rcpt: 1 pending 451 4.3.0 later
//!             rcpt: <c@d> NOTIFY=FAILURE
//!             body: 7bit | 8bit         (absent in files of older versions)
//!             size: 00000000000000001234
//!             crc32: 89abcdef
//!             (blank line)
//!             the message bytes
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use submitd_smtp::{MailFrom, RcptTo};

use super::{io_error, QueueId, SpoolError};

const MAGIC: &str = "submitd-spool 1";
/// The first line of a message still being received: the same length as
/// [`MAGIC`], so the commit rewrites the header in place.
const INPUT_MAGIC: &str = "submitd-input 1";
const STATE_MAGIC: &str = "submitd-state 1";
/// Largest header accepted when reading a spool file back.
const MAX_HEADER: usize = 1024 * 1024;

/// The envelope and facts kept with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Sender and MAIL parameters.
    pub mail_from: MailFrom,
    /// Recipients and their parameters, in order.
    pub recipients: Vec<RcptTo>,
    /// Who submitted it, if anyone authenticated.
    pub user: Option<String>,
    /// When it was accepted, in seconds since the epoch.
    pub received: u64,
}

/// Where one recipient stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientState {
    /// Still to be delivered; the last temporary failure, if any.
    Pending(Option<String>),
    /// Delivered; the upstream's reply.
    Delivered(String),
    /// Failed for good; the reason (the upstream's reply or expiry).
    Failed(String),
}

/// The delivery state of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryState {
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, in seconds since the epoch.
    pub next_try: u64,
    /// One entry per recipient, in envelope order.
    pub recipients: Vec<RecipientState>,
}

impl DeliveryState {
    /// The state of a message nothing has been tried for.
    pub fn new(recipients: usize, now: u64) -> Self {
        Self {
            attempts: 0,
            next_try: now,
            recipients: vec![RecipientState::Pending(None); recipients],
        }
    }

    /// Whether no recipient is pending any more.
    pub fn is_finished(&self) -> bool {
        !self
            .recipients
            .iter()
            .any(|r| matches!(r, RecipientState::Pending(_)))
    }

    pub(super) fn render(&self) -> String {
        let mut out = format!(
            "{STATE_MAGIC}\nattempts: {}\nnext-try: {}\n",
            self.attempts, self.next_try
        );
        for (i, r) in self.recipients.iter().enumerate() {
            let (word, text) = match r {
                RecipientState::Pending(text) => ("pending", text.as_deref().unwrap_or("")),
                RecipientState::Delivered(text) => ("delivered", text.as_str()),
                RecipientState::Failed(text) => ("failed", text.as_str()),
            };
            out.push_str(&format!("rcpt: {i} {word} {}\n", one_line(text)));
        }
        out
    }

    pub(super) fn parse(text: &str, recipients: usize) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(STATE_MAGIC) {
            return Err("not a submitd state file".into());
        }
        let mut state = Self::new(recipients, 0);
        for line in lines {
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| format!("bad line {line:?}"))?;
            match key {
                "attempts" => state.attempts = value.parse().map_err(|_| "bad attempts")?,
                "next-try" => state.next_try = value.parse().map_err(|_| "bad next-try")?,
                "rcpt" => {
                    let mut parts = value.splitn(3, ' ');
                    let index: usize = parts
                        .next()
                        .and_then(|i| i.parse().ok())
                        .ok_or("bad rcpt index")?;
                    let word = parts.next().unwrap_or("");
                    let text = parts.next().unwrap_or("").to_owned();
                    let slot = state
                        .recipients
                        .get_mut(index)
                        .ok_or("rcpt index out of range")?;
                    *slot = match word {
                        "pending" if text.is_empty() => RecipientState::Pending(None),
                        "pending" => RecipientState::Pending(Some(text)),
                        "delivered" => RecipientState::Delivered(text),
                        "failed" => RecipientState::Failed(text),
                        _ => return Err(format!("bad rcpt state {word:?}")),
                    };
                }
                _ => return Err(format!("unknown key {key:?}")),
            }
        }
        Ok(state)
    }
}

/// Text on one header line: line breaks and other controls become spaces.
pub(super) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A spool file's header: the envelope and what the content must match.
struct Header {
    envelope: StoredEnvelope,
    size: usize,
    crc: u32,
    /// Whether any octet of the content is not ASCII; `None` in files
    /// written before submitd recorded it.
    eight_bit: Option<bool>,
}

/// Parses the header at the start of `bytes`; returns it with the offset
/// of the content.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(Header, usize), SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let end = bytes
        .windows(2)
        .take(MAX_HEADER)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| corrupt("no end of header".into()))?;
    let header =
        std::str::from_utf8(&bytes[..end]).map_err(|_| corrupt("header is not UTF-8".into()))?;
    let mut lines = header.lines();
    match lines.next() {
        Some(MAGIC) => {}
        Some(INPUT_MAGIC) => {
            return Err(SpoolError::Receiving {
                path: path.to_owned(),
            })
        }
        _ => return Err(corrupt("not a submitd spool file".into())),
    }
    let (mut received, mut user, mut mail_from, mut size, mut crc) = (None, None, None, None, None);
    let mut eight_bit = None;
    let mut recipients = Vec::new();
    for line in lines {
        let (key, value) = line
            .split_once(": ")
            .ok_or_else(|| corrupt(format!("bad header line {line:?}")))?;
        match key {
            "id" => {}
            "received" => received = value.parse::<u64>().ok(),
            "user" => user = Some((value != "-").then(|| value.to_owned())),
            "mail-from" => {
                mail_from =
                    Some(MailFrom::parse(value).map_err(|e| corrupt(format!("mail-from: {e}")))?)
            }
            "rcpt" => {
                recipients.push(RcptTo::parse(value).map_err(|e| corrupt(format!("rcpt: {e}")))?)
            }
            "body" => eight_bit = Some(value == "8bit"),
            "size" => size = value.parse::<usize>().ok(),
            "crc32" => crc = u32::from_str_radix(value, 16).ok(),
            _ => return Err(corrupt(format!("unknown header {key:?}"))),
        }
    }
    let (Some(received), Some(user), Some(mail_from), Some(size), Some(crc)) =
        (received, user, mail_from, size, crc)
    else {
        return Err(corrupt("header incomplete".into()));
    };
    if recipients.is_empty() {
        return Err(corrupt("no recipients".into()));
    }
    let envelope = StoredEnvelope {
        mail_from,
        recipients,
        user,
        received,
    };
    Ok((
        Header {
            envelope,
            size,
            crc,
            eight_bit,
        },
        end + 2,
    ))
}

pub(super) fn read_message(
    path: &Path,
    file: File,
) -> Result<(StoredEnvelope, Vec<u8>), SpoolError> {
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut bytes = Vec::new();
    let mut file = file;
    file.read_to_end(&mut bytes).map_err(io_error(path))?;
    let (header, start) = parse_header(path, &bytes)?;
    let data = bytes.split_off(start);
    if data.len() != header.size {
        return Err(corrupt(format!(
            "message is {} octets, header says {}",
            data.len(),
            header.size
        )));
    }
    if crc32fast::hash(&data) != header.crc {
        return Err(corrupt("message does not match its checksum".into()));
    }
    Ok((header.envelope, data))
}

/// Reads a spool file up to the end of its header (and whatever of the
/// content came with the same read, up to `read_size`): the header, where
/// the content starts, the bytes read, and the file's length.
fn read_header(
    path: &Path,
    file: &mut File,
    read_size: usize,
) -> Result<(Header, usize, Vec<u8>, u64), SpoolError> {
    let length = file.metadata().map_err(io_error(path))?.len();
    // One read takes a small message whole with its header.
    let first = usize::try_from(length)
        .unwrap_or(usize::MAX)
        .clamp(1, read_size);
    let mut bytes = Vec::with_capacity(first);
    let mut chunk = vec![0u8; first];
    loop {
        let n = file.read(&mut chunk).map_err(io_error(path))?;
        let searched = bytes.len().saturating_sub(1);
        bytes.extend_from_slice(&chunk[..n]);
        let found = bytes[searched..].windows(2).any(|w| w == b"\n\n");
        if found || n == 0 || bytes.len() > MAX_HEADER {
            let (header, start) = parse_header(path, &bytes)?;
            if length != (start + header.size) as u64 {
                return Err(SpoolError::Corrupt {
                    path: path.to_owned(),
                    reason: format!(
                        "message is {} octets, header says {}",
                        length.saturating_sub(start as u64),
                        header.size
                    ),
                });
            }
            return Ok((header, start, bytes, length));
        }
    }
}

/// What the header and the file's length tell of a queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peeked {
    /// The envelope.
    pub envelope: StoredEnvelope,
    /// The content's size in octets (the file's length agrees).
    pub size: u64,
}

/// Reads only the header of a spool file (the envelope) and checks the
/// file's length against it; the content is not read.
pub(super) fn read_envelope(path: &Path, file: File) -> Result<Peeked, SpoolError> {
    let mut file = file;
    read_header(path, &mut file, 4096).map(|(h, _, _, _)| Peeked {
        size: h.size as u64,
        envelope: h.envelope,
    })
}

/// Octets of content read at a time when a message is sent in pieces.
pub const CONTENT_PIECE: usize = 64 * 1024;

/// A queued message opened to be sent in pieces, with the checks a whole
/// read makes: the size against the file's length before anything is
/// handed out (a truncated file is never half-sent), the checksum after
/// the last piece (a damaged one is reported before the caller ends the
/// message, so it can abandon the transfer instead of completing it).
/// Reads block: call them on the blocking pool.
#[derive(Debug)]
pub struct Content {
    path: PathBuf,
    file: File,
    envelope: StoredEnvelope,
    size: u64,
    crc: u32,
    eight_bit: Option<bool>,
    /// Content read along with the header, handed out first.
    first: Vec<u8>,
    read: u64,
    hasher: crc32fast::Hasher,
}

pub(super) fn open_content(path: PathBuf, file: File) -> Result<Content, SpoolError> {
    let mut file = file;
    let (header, start, mut bytes, _) = read_header(&path, &mut file, CONTENT_PIECE)?;
    let size = header.size as u64;
    let first = bytes.split_off(start);
    Ok(Content {
        path,
        file,
        envelope: header.envelope,
        size,
        crc: header.crc,
        eight_bit: header.eight_bit,
        first,
        read: 0,
        hasher: crc32fast::Hasher::new(),
    })
}

impl Content {
    /// The message's envelope.
    pub fn envelope(&self) -> &StoredEnvelope {
        &self.envelope
    }

    /// The content's size in octets.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether any octet of the content is not ASCII, as recorded when it
    /// was queued; `None` for files of older versions (see
    /// [`Content::scan_eight_bit`]).
    pub fn eight_bit(&self) -> Option<bool> {
        self.eight_bit
    }

    /// Reads the content once to find whether it has 8-bit octets (files
    /// of older versions, which did not record it), and starts over.
    pub fn scan_eight_bit(&mut self) -> Result<bool, SpoolError> {
        let mut buf = Vec::with_capacity(CONTENT_PIECE);
        let mut eight_bit = false;
        while self.next_piece(&mut buf)? {
            eight_bit |= !buf.is_ascii();
        }
        let file = File::open(&self.path).map_err(io_error(&self.path))?;
        let reopened = open_content(self.path.clone(), file)?;
        *self = reopened;
        self.eight_bit = Some(eight_bit);
        Ok(eight_bit)
    }

    /// Whether the next [`Content::next_piece`] reads the file (and so
    /// blocks); the first piece often came with the header, and the end
    /// needs no read.
    pub fn next_reads_file(&self) -> bool {
        self.first.is_empty() && self.read < self.size
    }

    /// Puts the next piece of content into `buf` (replacing what it held):
    /// `Ok(true)` with a piece, `Ok(false)` at the end once the content
    /// matched its checksum, an error if it did not or cannot be read.
    pub fn next_piece(&mut self, buf: &mut Vec<u8>) -> Result<bool, SpoolError> {
        buf.clear();
        if !self.first.is_empty() {
            std::mem::swap(buf, &mut self.first);
        } else if self.read < self.size {
            buf.resize(CONTENT_PIECE, 0);
            let n = self.file.read(buf).map_err(io_error(&self.path))?;
            buf.truncate(n);
            if n == 0 {
                return Err(SpoolError::Corrupt {
                    path: self.path.clone(),
                    reason: "message ends before its size".into(),
                });
            }
        } else {
            if self.read != self.size || self.hasher.clone().finalize() != self.crc {
                return Err(SpoolError::Corrupt {
                    path: self.path.clone(),
                    reason: "message does not match its checksum".into(),
                });
            }
            return Ok(false);
        }
        // Never past the size the header gives, even if the file grew.
        let allowed = usize::try_from(self.size - self.read).unwrap_or(usize::MAX);
        buf.truncate(allowed);
        self.read += buf.len() as u64;
        self.hasher.update(buf);
        Ok(true)
    }
}

/// The header of a new message file: the envelope, the content's size and
/// checksum, and the blank line the content follows. Size and checksum
/// have fixed widths, so the header's length does not depend on them: a
/// message streamed to the spool is written behind a header with zeros,
/// which is rewritten in place once the content is complete. (Readers
/// take the zero-padded size as any other number.)
pub(super) fn render_header(
    id: &QueueId,
    envelope: &StoredEnvelope,
    size: u64,
    crc: u32,
    eight_bit: bool,
    complete: bool,
) -> String {
    let magic = if complete { MAGIC } else { INPUT_MAGIC };
    let mut header = format!("{magic}\nid: {id}\nreceived: {}\n", envelope.received);
    header.push_str(&format!(
        "user: {}\n",
        envelope.user.as_deref().map_or("-".into(), one_line)
    ));
    header.push_str(&format!("mail-from: {}\n", envelope.mail_from));
    for rcpt in &envelope.recipients {
        header.push_str(&format!("rcpt: {rcpt}\n"));
    }
    let body = if eight_bit { "8bit" } else { "7bit" };
    header.push_str(&format!(
        "body: {body}\nsize: {size:020}\ncrc32: {crc:08x}\n\n"
    ));
    header
}

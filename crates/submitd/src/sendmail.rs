//! `submitd sendmail` (also when run as `sendmail`): the machine's own
//! cron jobs and scripts hand a message over on standard input, as to
//! Postfix's or Sendmail's `sendmail`; it goes to the running daemon over
//! its local socket (`[local] socket`), which knows the caller by the
//! socket's peer credentials, so no password is needed and a user can
//! send only as themselves (`user@[local] domain`, or what the credential
//! file gives that user).
//!
//! Like sendmail: `-t` takes the recipients from To:, Cc: and Bcc: (and
//! removes Bcc:), `-f` sets the envelope sender, `-i`/`-oi` lets a line
//! with a single dot be content; without it such a line ends the input.
//! `-F`, `-B` and other `-o` options are accepted and ignored. Bare local
//! names (`root`, as cron writes them) are qualified with the local
//! domain, in the envelope and in From:, To: and Cc:, as Postfix does with
//! `myorigin`.
//!
//! Exit status: 0 queued, 75 (EX_TEMPFAIL) for a temporary refusal or no
//! daemon, 69 (EX_UNAVAILABLE) for a permanent refusal, 64 (EX_USAGE) for
//! no recipients.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// What the command line asked for.
#[derive(Debug, Default)]
pub(crate) struct Request {
    /// Recipients from the headers too (`-t`).
    pub(crate) from_headers: bool,
    /// The envelope sender (`-f`).
    pub(crate) sender: Option<String>,
    /// A lone dot is content (`-i`, `-oi`).
    pub(crate) ignore_dots: bool,
    /// Recipients on the command line.
    pub(crate) recipients: Vec<String>,
}

/// Why sending failed, with the exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: u8,
    pub(crate) message: String,
}

fn temp(message: impl Into<String>) -> Failure {
    Failure {
        status: 75,
        message: message.into(),
    }
}

/// `name` with `@domain` if it has no domain.
fn qualify(name: &str, domain: &str) -> String {
    if name.contains('@') {
        name.to_owned()
    } else {
        format!("{name}@{domain}")
    }
}

/// Qualifies bare local names in an address-list header value: `root`,
/// `root (Cron Daemon)`; anything with `@`, `<` or quotes stays as is.
fn qualify_header(value: &str, domain: &str) -> String {
    value
        .split(',')
        .map(|part| {
            let trimmed = part.trim();
            if trimmed.is_empty() || trimmed.contains(['@', '<', '"', ':', ';']) {
                return part.to_owned();
            }
            let end = trimmed
                .find(|c: char| c.is_whitespace() || c == '(')
                .unwrap_or(trimmed.len());
            let lead = &part[..part.len() - part.trim_start().len()];
            format!(
                "{lead}{}{}",
                qualify(&trimmed[..end], domain),
                &trimmed[end..]
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Addresses in an address-list header value (`a@b, Name <c@d>`).
fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut current = String::new();
    for c in value.chars().chain(std::iter::once(',')) {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                let part = current.trim();
                let address = match (part.rfind('<'), part.rfind('>')) {
                    (Some(a), Some(b)) if a < b => part[a + 1..b].trim().to_owned(),
                    _ => part
                        .split(|c: char| c.is_whitespace() || c == '(')
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                };
                if !address.is_empty() {
                    out.push(address);
                }
                current.clear();
                continue;
            }
            _ => {}
        }
        if depth <= 0 || c == ')' {
            current.push(c);
        }
    }
    out
}

/// Turns standard input into a message for SMTP: CRLF line ends, the input
/// ended at a lone dot unless `ignore_dots`, bare names qualified, Bcc:
/// removed (its addresses returned with To: and Cc:'s when `collect`).
pub(crate) fn prepare(
    input: &[u8],
    ignore_dots: bool,
    domain: &str,
    collect: bool,
) -> (Vec<u8>, Vec<String>) {
    let text = String::from_utf8_lossy(input);
    let mut lines: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !ignore_dots && line == "." {
            break;
        }
        lines.push(line);
    }
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let body_start = lines
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(lines.len());
    // Unfold header fields: (name, whole field text with folds).
    let mut fields: Vec<(String, Vec<String>)> = Vec::new();
    for line in &lines[..body_start] {
        if line.starts_with([' ', '\t']) {
            if let Some((_, folded)) = fields.last_mut() {
                folded.push((*line).to_owned());
                continue;
            }
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        fields.push((name, vec![(*line).to_owned()]));
    }
    let mut recipients = Vec::new();
    let mut out = String::new();
    for (name, folded) in &fields {
        let joined = folded.join(" ");
        let value = joined.split_once(':').map(|(_, v)| v).unwrap_or("");
        if collect && matches!(name.as_str(), "to" | "cc" | "bcc") {
            recipients.extend(addresses(value).iter().map(|a| qualify(a, domain)));
        }
        if name == "bcc" {
            continue;
        }
        if matches!(name.as_str(), "from" | "to" | "cc" | "reply-to" | "sender") {
            let field = joined.split_once(':').map(|(n, _)| n).unwrap_or(name);
            out.push_str(&format!("{field}:{}\r\n", qualify_header(value, domain)));
        } else {
            for line in folded {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
    }
    for line in &lines[body_start..] {
        out.push_str(line);
        out.push_str("\r\n");
    }
    (out.into_bytes(), recipients)
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn reply(&mut self) -> Result<(u16, String), Failure> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| temp(format!("reading from submitd: {e}")))?;
            if n == 0 {
                return Err(temp("submitd closed the connection"));
            }
            all.push_str(&line);
            let bytes = line.as_bytes();
            if bytes.len() >= 4 && bytes[3] == b' ' {
                let code = line[..3]
                    .parse()
                    .map_err(|_| temp(format!("not SMTP: {line:?}")))?;
                return Ok((code, all.trim_end().to_owned()));
            }
        }
    }

    fn command(&mut self, line: &str, expect: u16) -> Result<(), Failure> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| temp(format!("writing to submitd: {e}")))?;
        self.expect(expect)
    }

    fn expect(&mut self, expect: u16) -> Result<(), Failure> {
        let (code, text) = self.reply()?;
        if code / 100 == expect / 100 {
            return Ok(());
        }
        Err(Failure {
            status: if code >= 500 { 69 } else { 75 },
            message: text,
        })
    }
}

/// Sends as the calling user through `socket`; `user` is the caller's
/// login name (for the default sender).
pub(crate) fn send(
    request: &Request,
    input: &[u8],
    socket: &std::path::Path,
    domain: &str,
    user: &str,
) -> Result<(), Failure> {
    let (data, from_headers) = prepare(input, request.ignore_dots, domain, request.from_headers);
    let mut recipients: Vec<String> = request
        .recipients
        .iter()
        .map(|r| qualify(r, domain))
        .collect();
    recipients.extend(from_headers);
    if recipients.is_empty() {
        return Err(Failure {
            status: 64,
            message: "no recipients: name them, or use -t to take them from To:, Cc: and Bcc:"
                .into(),
        });
    }
    let sender = request
        .sender
        .as_deref()
        .map(|s| qualify(s, domain))
        .unwrap_or_else(|| format!("{user}@{domain}"));
    let stream = UnixStream::connect(socket).map_err(|e| {
        temp(format!(
            "cannot reach submitd at {}: {e} (is it running, with [local] socket set?)",
            socket.display()
        ))
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let writer = stream.try_clone().map_err(|e| temp(e.to_string()))?;
    let mut client = Client {
        reader: BufReader::new(stream),
        writer,
    };
    client.expect(220)?;
    client.command("EHLO localhost", 250)?;
    client.command(&format!("MAIL FROM:<{sender}>"), 250)?;
    for rcpt in &recipients {
        client.command(&format!("RCPT TO:<{rcpt}>"), 250)?;
    }
    client.command("DATA", 354)?;
    let mut stuffed = Vec::with_capacity(data.len() + 64);
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    stuffed.extend_from_slice(b".\r\n");
    client
        .writer
        .write_all(&stuffed)
        .map_err(|e| temp(format!("writing to submitd: {e}")))?;
    client.expect(250)?;
    let _ = client.command("QUIT", 221);
    Ok(())
}

/// Reads all of standard input.
pub(crate) fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| temp(format!("reading the message: {e}")))?;
    Ok(input)
}

/// The calling user's login name.
pub(crate) fn caller() -> String {
    crate::check::effective_uid()
        .and_then(submitd_listener::user_name)
        .unwrap_or_else(|| "nobody".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_style_input_is_qualified_and_line_ends_fixed() {
        let input = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@box> backup\nX-Cron-Env: <SHELL=/bin/sh>\n\nline 1\n.dot\n";
        let (data, rcpts) = prepare(input, true, "example.org", false);
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "From: root@example.org (Cron Daemon)\r\nTo: root@example.org\r\nSubject: Cron <root@box> backup\r\nX-Cron-Env: <SHELL=/bin/sh>\r\n\r\nline 1\r\n.dot\r\n"
        );
        assert!(rcpts.is_empty());
    }

    #[test]
    fn dash_t_takes_to_cc_bcc_and_drops_bcc() {
        let input = b"From: a@example.org\r\nTo: Bob <bob@example.net>, carol@example.net\r\nCc: \"D, E\" <de@example.net>\r\nBcc: secret@example.net,\r\n  other\r\nSubject: s\r\n\r\nbody\r\n";
        let (data, rcpts) = prepare(input, true, "example.org", true);
        assert_eq!(
            rcpts,
            [
                "bob@example.net",
                "carol@example.net",
                "de@example.net",
                "secret@example.net",
                "other@example.org"
            ]
        );
        let text = String::from_utf8(data).unwrap();
        assert!(!text.contains("Bcc") && !text.contains("secret"), "{text}");
        assert!(text.ends_with("Subject: s\r\n\r\nbody\r\n"), "{text}");
    }

    #[test]
    fn a_lone_dot_ends_input_unless_i() {
        let (data, _) = prepare(b"Subject: x\n\na\n.\nafter\n", false, "d", false);
        assert_eq!(data, b"Subject: x\r\n\r\na\r\n");
        let (data, _) = prepare(b"Subject: x\n\na\n.\nafter\n", true, "d", false);
        assert_eq!(data, b"Subject: x\r\n\r\na\r\n.\r\nafter\r\n");
    }
}

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
//! The conversation with the daemon is the project's own client machine
//! (`submitd_smtp::ClientSession`, the one the relay uses) over the unix
//! socket, in its `Local` mode: no TLS, no AUTH.
//!
//! Exit status: 0 queued, 75 (EX_TEMPFAIL) for a temporary refusal or no
//! daemon, 69 (EX_UNAVAILABLE) for a permanent refusal, 64 (EX_USAGE) for
//! no recipients.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use submitd_smtp::{
    ClientConfig, ClientOutput, ClientSession, ClientTimeouts, Envelope, MailFrom, MessageOutcome,
    PathError, RcptTo, Transport,
};

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
    let envelope = envelope(&sender, &recipients)?;
    let stream = UnixStream::connect(socket).map_err(|e| {
        temp(format!(
            "cannot reach submitd at {}: {e} (is it running, with [local] socket set?)",
            socket.display()
        ))
    })?;
    let outcome = exchange(stream, &envelope, &data)?;
    // The first refusal decides the exit status, as sendmail's does.
    match outcome.recipients.iter().find(|reply| !reply.is_positive()) {
        None => Ok(()),
        Some(reply) => Err(Failure {
            status: if reply.is_permanent() { 69 } else { 75 },
            message: reply.to_string().trim_end().to_owned(),
        }),
    }
}

/// The envelope in wire form; an address the parser refuses is a usage
/// error the person can fix.
fn envelope(sender: &str, recipients: &[String]) -> Result<Envelope, Failure> {
    let bad = |what: &str, address: &str, e: PathError| Failure {
        status: 64,
        message: format!("{what} <{address}>: {e}"),
    };
    Ok(Envelope {
        mail_from: MailFrom::parse(&format!("<{sender}>")).map_err(|e| bad("sender", sender, e))?,
        recipients: recipients
            .iter()
            .map(|r| RcptTo::parse(&format!("<{r}>")).map_err(|e| bad("recipient", r, e)))
            .collect::<Result<_, _>>()?,
    })
}

/// One message over the local socket, driven by the project's client
/// machine (the same that relays to the upstream): EHLO, MAIL, RCPT,
/// DATA (pipelined), QUIT. Returns the reply for each recipient.
fn exchange(
    mut stream: UnixStream,
    envelope: &Envelope,
    data: &[u8],
) -> Result<MessageOutcome, Failure> {
    let config = ClientConfig {
        hostname: "localhost".into(),
        transport: Transport::Local,
        credentials: None,
        timeouts: ClientTimeouts::default(),
    };
    let mut session = ClientSession::new(config, Instant::now());
    let mut outcome = None;
    let mut sent = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                ClientOutput::Send(bytes) => stream
                    .write_all(&bytes)
                    .map_err(|e| temp(format!("writing to submitd: {e}")))?,
                ClientOutput::Ready if !sent => {
                    sent = true;
                    session
                        .send_message(Instant::now(), envelope, data)
                        .map_err(|e| temp(e.to_string()))?;
                }
                ClientOutput::Ready => {
                    session
                        .quit(Instant::now())
                        .map_err(|e| temp(e.to_string()))?;
                }
                ClientOutput::Outcome(o) => outcome = Some(o),
                ClientOutput::Failed(e) => {
                    return Err(Failure {
                        status: if e.is_transient() { 75 } else { 69 },
                        message: e.to_string().trim_end().to_owned(),
                    })
                }
                // Only a streamed message asks for its content; this one
                // went whole.
                ClientOutput::StartTls | ClientOutput::SendContent | ClientOutput::Close => {
                    return outcome.ok_or_else(|| temp("submitd closed the connection"));
                }
            }
        }
        let wait = session
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(300))
            .max(Duration::from_millis(1));
        let _ = stream.set_read_timeout(Some(wait));
        match stream.read(&mut buf) {
            Ok(0) => return outcome.ok_or_else(|| temp("submitd closed the connection")),
            Ok(n) => session.handle_input(Instant::now(), &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                session.handle_timeout(Instant::now());
            }
            Err(e) => return Err(temp(format!("reading from submitd: {e}"))),
        }
    }
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
    submitd_auth::os_user::current_name().unwrap_or_else(|| "nobody".into())
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

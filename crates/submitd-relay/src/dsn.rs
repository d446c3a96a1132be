//! Delivery status notifications (bounces): RFC 3464 multipart/report
//! messages to the original sender listing the recipients that failed for
//! good and what the upstream said.
//!
//! Never to `<>`: a bounce is itself sent from `<>`, and a message from
//! `<>` that fails gets no bounce (RFC 5321 §4.5.5), so bounces cannot
//! loop. Recipients that asked for no failure notice (`NOTIFY=NEVER`, or
//! NOTIFY without FAILURE, RFC 3461 §4.1) are left out; if none is left,
//! there is no bounce.

use std::time::SystemTime;

use submitd_smtp::{MailFrom, MailParams, Mailbox, Notify, RcptTo, Ret};

use crate::prepare::rfc5322_date;
use crate::spool::{QueueId, RecipientState, StoredEnvelope};

/// Largest original message returned whole; above it, headers only.
const MAX_RETURNED: usize = 1024 * 1024;

/// A bounce ready to be queued: its envelope and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounce {
    /// From `<>` to the original sender.
    pub envelope: StoredEnvelope,
    /// The multipart/report message.
    pub data: Vec<u8>,
}

/// Builds the bounce for `failed` recipients of a message, if one is due.
pub fn bounce(
    hostname: &str,
    id: &QueueId,
    original: &StoredEnvelope,
    original_data: &[u8],
    states: &[RecipientState],
    failed: &[usize],
    now: SystemTime,
) -> Option<Bounce> {
    let sender = original.mail_from.reverse_path.as_ref()?;
    let wants_notice = |rcpt: &RcptTo| match rcpt.params.notify {
        None => true,
        Some(Notify::Never) => false,
        Some(Notify::On { failure, .. }) => failure,
    };
    let listed: Vec<(&RcptTo, &str)> = failed
        .iter()
        .filter_map(|&i| {
            let rcpt = original.recipients.get(i)?;
            let RecipientState::Failed(reason) = states.get(i)? else {
                return None;
            };
            wants_notice(rcpt).then_some((rcpt, reason.as_str()))
        })
        .collect();
    if listed.is_empty() {
        return None;
    }

    let boundary = format!("{id}/{hostname}");
    let mut data = notice(hostname, id, sender, &boundary, &listed, now).into_bytes();
    data.extend_from_slice(report(hostname, id, original, &boundary, &listed).as_bytes());
    returned(original, original_data, &boundary, &mut data);
    let to = RcptTo::parse(&format!("<{sender}>")).ok()?;
    let envelope = StoredEnvelope {
        mail_from: MailFrom {
            reverse_path: None,
            params: MailParams {
                smtputf8: original.mail_from.params.smtputf8,
                ..MailParams::default()
            },
        },
        recipients: vec![to],
        user: None,
        received: now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    Some(Bounce { envelope, data })
}

/// The text for people: who the mail system is, and each failed
/// recipient with the reason (the bounce's header and first part).
fn notice(
    hostname: &str,
    id: &QueueId,
    sender: &Mailbox,
    boundary: &str,
    listed: &[(&RcptTo, &str)],
    now: SystemTime,
) -> String {
    let date = rfc5322_date(now);
    let mut text = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.bounce@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to the following recipients.\r\n\
         The mail system's reason is given for each.\r\n\r\n"
    );
    for (rcpt, reason) in listed {
        text.push_str(&format!("<{}>: {}\r\n", rcpt.forward_path, reason));
    }
    text
}

/// The machine-readable part (RFC 3464 message/delivery-status).
fn report(
    hostname: &str,
    id: &QueueId,
    original: &StoredEnvelope,
    boundary: &str,
    listed: &[(&RcptTo, &str)],
) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {hostname}\r\nX-Submitd-Queue-ID: {id}\r\n"
    ));
    if let Some(envid) = &original.mail_from.params.envid {
        text.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    text.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(original.received))
    ));
    for (rcpt, reason) in listed {
        text.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\n",
            rcpt.forward_path
        ));
        if let Some(orcpt) = &rcpt.params.orcpt {
            text.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                orcpt.addr_type, orcpt.addr
            ));
        }
        text.push_str(&format!(
            "Action: failed\r\nStatus: {}\r\n",
            status_of(reason)
        ));
        if reason.len() >= 3 && reason.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
            text.push_str(&format!("Diagnostic-Code: smtp; {reason}\r\n"));
        }
    }
    text
}

/// The original message, whole or its header only (RET=HDRS, or too big),
/// and the closing boundary.
fn returned(original: &StoredEnvelope, original_data: &[u8], boundary: &str, data: &mut Vec<u8>) {
    let headers_only =
        original.mail_from.params.ret == Some(Ret::Hdrs) || original_data.len() > MAX_RETURNED;
    if headers_only {
        let end = original_data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(original_data.len(), |i| i + 2);
        data.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        data.extend_from_slice(&original_data[..end]);
    } else {
        data.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        data.extend_from_slice(original_data);
    }
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
}

/// The RFC 3463 status of a failure reason: the enhanced code in the
/// upstream's reply if it has one, else 5.0.0 (4.4.7 for an expired
/// message).
fn status_of(reason: &str) -> String {
    if reason.starts_with("gave up after") {
        return "4.4.7".into();
    }
    reason
        .split_whitespace()
        .nth(1)
        .filter(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or_else(|| "5.0.0".to_owned(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn original(from: &str, rcpts: &[&str], params: &str) -> StoredEnvelope {
        StoredEnvelope {
            mail_from: MailFrom::parse(&format!("{from}{params}")).unwrap(),
            recipients: rcpts.iter().map(|r| RcptTo::parse(r).unwrap()).collect(),
            user: Some("alice".into()),
            received: 1_795_300_000,
        }
    }

    const DATA: &[u8] = b"From: alice@example.org\r\nSubject: hello\r\n\r\nthe body\r\n";

    #[test]
    fn lists_failed_recipients_with_the_upstream_words() {
        let id = QueueId::parse("00112233445566778899").unwrap();
        let env = original(
            "<alice@example.org>",
            &[
                "<bob@example.net>",
                "<carol@example.net> ORCPT=rfc822;carol+40example.net",
                "<dave@example.net>",
            ],
            " ENVID=abc",
        );
        let states = vec![
            RecipientState::Failed("550 5.1.1 <bob@example.net>: no such user".into()),
            RecipientState::Failed("gave up after 5 days; last error: 451 4.3.0 later".into()),
            RecipientState::Delivered("250 ok".into()),
        ];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_341_600);
        let b = bounce("mx.test", &id, &env, DATA, &states, &[0, 1], now).unwrap();
        assert_eq!(
            b.envelope.mail_from.reverse_path, None,
            "bounces come from <>"
        );
        assert_eq!(b.envelope.recipients[0].to_string(), "<alice@example.org>");
        let text = String::from_utf8(b.data).unwrap();
        for expected in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Auto-Submitted: auto-replied",
            "<bob@example.net>: 550 5.1.1 <bob@example.net>: no such user",
            "Original-Envelope-Id: abc",
            "Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1",
            "Final-Recipient: rfc822; carol@example.net\r\nOriginal-Recipient: rfc822; carol+40example.net\r\nAction: failed\r\nStatus: 4.4.7",
            "Content-Type: message/rfc822\r\n\r\nFrom: alice@example.org\r\nSubject: hello\r\n\r\nthe body\r\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("dave@example.net"));
        assert!(text.ends_with("\r\n--00112233445566778899/mx.test--\r\n"));
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "bare LF in bounce"
        );
    }

    #[test]
    fn no_bounce_to_null_or_to_those_who_asked_for_none() {
        let id = QueueId::parse("00112233445566778899").unwrap();
        let failed = vec![RecipientState::Failed("550 no".into())];
        let now = SystemTime::UNIX_EPOCH;
        let null = original("<>", &["<bob@example.net>"], "");
        assert_eq!(
            bounce("mx.test", &id, &null, DATA, &failed, &[0], now),
            None
        );
        let never = original(
            "<alice@example.org>",
            &["<bob@example.net> NOTIFY=NEVER"],
            "",
        );
        assert_eq!(
            bounce("mx.test", &id, &never, DATA, &failed, &[0], now),
            None
        );
        let success_only = original(
            "<alice@example.org>",
            &["<bob@example.net> NOTIFY=SUCCESS"],
            "",
        );
        assert_eq!(
            bounce("mx.test", &id, &success_only, DATA, &failed, &[0], now),
            None
        );
    }

    #[test]
    fn ret_hdrs_returns_headers_only() {
        let id = QueueId::parse("00112233445566778899").unwrap();
        let env = original("<alice@example.org>", &["<bob@example.net>"], " RET=HDRS");
        let failed = vec![RecipientState::Failed("554 5.7.1 spam".into())];
        let b = bounce(
            "mx.test",
            &id,
            &env,
            DATA,
            &failed,
            &[0],
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let text = String::from_utf8(b.data).unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.org\r\nSubject: hello\r\n"));
        assert!(!text.contains("the body"));
    }
}

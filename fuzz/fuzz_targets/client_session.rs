//! Fuzzes the SMTP client machine with arbitrary upstream byte streams.
//!
//! Input: one byte of options (bits 0-1 the transport: implicit TLS,
//! STARTTLS, the local socket, plaintext; bit 2 credentials, bit 3 a
//! bearer token for them rather than a password; the rest the first
//! read's size), then what the "upstream" says, fed in reads of varying size. The
//! machine must never panic, never send a line without CRLF, and say
//! nothing after Close.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use submitd_smtp::{
    ClientConfig, ClientCredentials, ClientOutput, ClientSession, ClientTimeouts, Transport,
    Envelope, ForwardPath, MailFrom, MailParams, Mailbox, RcptParams, RcptTo, Secret,
};

fuzz_target!(|data: &[u8]| {
    let [options, stream @ ..] = data else {
        return;
    };
    let Ok(from) = Mailbox::parse("alice@example.org") else {
        return;
    };
    let Ok(to) = Mailbox::parse("bob@example.net") else {
        return;
    };
    let envelope = Envelope {
        mail_from: MailFrom {
            reverse_path: Some(from),
            params: MailParams::default(),
        },
        recipients: vec![
            RcptTo {
                forward_path: ForwardPath::Mailbox(to.clone()),
                params: RcptParams::default(),
            },
            RcptTo {
                forward_path: ForwardPath::Mailbox(to),
                params: RcptParams::default(),
            },
        ],
    };
    let config = ClientConfig {
        hostname: "fuzz.test".into(),
        transport: match options & 3 {
            0 => Transport::ImplicitTls,
            1 => Transport::StartTls,
            2 => Transport::Local,
            _ => Transport::Plaintext,
        },
        credentials: (options & 4 != 0).then(|| {
            if options & 8 != 0 {
                ClientCredentials::bearer("u@example.org".into(), Secret::new(b"tok".to_vec()))
            } else {
                ClientCredentials::password("u".into(), Secret::new(b"p".to_vec()))
            }
        }),
        timeouts: ClientTimeouts::default(),
    };
    let mut now = Instant::now();
    let mut client = ClientSession::new(config, now);
    let mut closed = false;
    let mut messages = 0;
    let mut rest = stream;
    let mut step = usize::from(*options >> 3) + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        client.handle_input(now, &rest[..n]);
        rest = &rest[n..];
        step = step % 61 + 3;
        while let Some(output) = client.poll_output() {
            assert!(!closed, "output after Close: {output:?}");
            match output {
                ClientOutput::Send(bytes) => {
                    assert!(bytes.ends_with(b"\r\n"), "unterminated command");
                }
                ClientOutput::StartTls => {
                    let _ = client.tls_established(now);
                }
                ClientOutput::Ready if messages < 3 => {
                    messages += 1;
                    let _ = client.send_message(now, &envelope, b"Subject: x\r\n\r\n.body\r\n");
                }
                ClientOutput::Ready if messages == 3 => {
                    messages += 1;
                    let _ = client.quit(now);
                }
                ClientOutput::Close => closed = true,
                _ => {}
            }
        }
    }
    now += Duration::from_secs(3600);
    client.handle_timeout(now);
    while let Some(output) = client.poll_output() {
        assert!(!closed, "output after Close: {output:?}");
        if matches!(output, ClientOutput::Close) {
            closed = true;
        }
    }
});

//! The client machine against the server machine, in memory, and against
//! scripted servers for what our own server never does.

use std::time::{Duration, Instant};

use submitd_smtp::testing::{Driver, Item};
use submitd_smtp::{
    ClientConfig, ClientCredentials, ClientOutput, ClientSession, ClientTimeouts, Envelope,
    ForwardPath, MailFrom, MailParams, Mechanism, MessageOutcome, Notify, Orcpt, RcptParams,
    RcptTo, Ret, Secret, ServerConfig, SessionError, Transport,
};

fn config(tls: Transport, user: &str, password: &str) -> ClientConfig {
    ClientConfig {
        hostname: "relay.test".into(),
        transport: tls,
        credentials: Some(ClientCredentials::password(
            user.into(),
            Secret::new(password.as_bytes().to_vec()),
        )),
        timeouts: ClientTimeouts::default(),
    }
}

fn mailbox_rcpt(address: &str) -> RcptTo {
    RcptTo {
        forward_path: ForwardPath::Mailbox(mailbox(address)),
        params: RcptParams::default(),
    }
}

fn mailbox(address: &str) -> submitd_smtp::Mailbox {
    submitd_smtp::Mailbox::parse(address).unwrap()
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope {
        mail_from: MailFrom {
            reverse_path: Some(mailbox(from)),
            params: MailParams::default(),
        },
        recipients: to.iter().map(|a| mailbox_rcpt(a)).collect(),
    }
}

/// A client and a server machine wired back to back.
struct Pair {
    client: ClientSession,
    server: Driver,
    now: Instant,
    seen: usize,
    sent: Vec<u8>,
    readies: usize,
    outcomes: Vec<MessageOutcome>,
    failures: Vec<SessionError>,
    starttls: usize,
    closed: bool,
    /// Content to hand over in pieces of `piece` octets when asked.
    content: Option<(Vec<u8>, usize)>,
    asked_for_content: usize,
}

impl Pair {
    fn new(server: ServerConfig, client: ClientConfig) -> Self {
        let now = Instant::now();
        let mut pair = Self {
            client: ClientSession::new(client, now),
            server: Driver::new(server),
            now,
            seen: 0,
            sent: Vec::new(),
            readies: 0,
            outcomes: Vec::new(),
            failures: Vec::new(),
            starttls: 0,
            closed: false,
            content: None,
            asked_for_content: 0,
        };
        pair.pump();
        pair
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            let mut to_client = Vec::new();
            for item in &self.server.items[self.seen..] {
                if let Item::Line(line) = item {
                    to_client.extend_from_slice(line.as_bytes());
                    to_client.extend_from_slice(b"\r\n");
                }
            }
            self.seen = self.server.items.len();
            if !to_client.is_empty() {
                self.client.handle_input(self.now, &to_client);
                progressed = true;
            }
            while let Some(output) = self.client.poll_output() {
                progressed = true;
                match output {
                    ClientOutput::Send(bytes) => {
                        self.sent.extend_from_slice(&bytes);
                        self.server.feed(&bytes);
                    }
                    ClientOutput::StartTls => {
                        self.starttls += 1;
                        self.client.tls_established(self.now).unwrap();
                    }
                    ClientOutput::Ready => self.readies += 1,
                    ClientOutput::SendContent => {
                        self.asked_for_content += 1;
                        let (content, piece) = self.content.take().unwrap();
                        for part in content.chunks(piece) {
                            self.client.send_content(part).unwrap();
                        }
                        self.client.end_content(self.now).unwrap();
                    }
                    ClientOutput::Outcome(outcome) => self.outcomes.push(outcome),
                    ClientOutput::Failed(error) => self.failures.push(error),
                    ClientOutput::Close => self.closed = true,
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn send(&mut self, envelope: &Envelope, data: &[u8]) {
        self.client.send_message(self.now, envelope, data).unwrap();
        self.pump();
    }

    fn send_streamed(&mut self, envelope: &Envelope, data: &[u8], piece: usize) {
        self.content = Some((data.to_vec(), piece));
        let eight_bit = !data.is_ascii();
        self.client
            .send_message_streamed(self.now, envelope, data.len() as u64, eight_bit)
            .unwrap();
        self.pump();
    }
}

fn implicit_server() -> ServerConfig {
    ServerConfig::new("upstream.test", Transport::ImplicitTls)
}

const MESSAGE: &[u8] = "From: alice@example.org\r\nSubject: caf\u{e9}\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n8-bit: \u{20ac}\r\nlast\r\n".as_bytes();

#[test]
fn relays_byte_exact_with_per_recipient_outcomes_and_reuses_the_connection() {
    let mut pair = Pair::new(
        implicit_server(),
        config(Transport::ImplicitTls, "alice", "secret"),
    );
    assert_eq!(pair.readies, 1, "{:?}", pair.failures);
    assert!(pair.client.extensions().pipelining);
    let env = envelope(
        "alice@example.org",
        &[
            "bob@example.net",
            "unknown@example.net",
            "carol@example.net",
        ],
    );
    pair.send(&env, MESSAGE);
    let outcome = &pair.outcomes[0];
    assert!(outcome.delivered(0) && !outcome.delivered(1) && outcome.delivered(2));
    assert_eq!(outcome.recipients[1].code(), 550);
    assert!(outcome.recipients[0].lines()[0].starts_with("Ok: queued as Q1"));
    let stored: Vec<_> = pair.server.stored_messages().cloned().collect();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].data == MESSAGE, "content changed in transit");
    assert_eq!(stored[0].recipients.len(), 2);
    assert_eq!(
        stored[0].mail_from.params.body,
        Some(submitd_smtp::BodyType::EightBitMime)
    );
    assert_eq!(stored[0].mail_from.params.size, Some(MESSAGE.len() as u64));
    // PIPELINING: MAIL, the RCPTs and DATA went out in one write.
    assert!(String::from_utf8_lossy(&pair.sent)
        .contains("RCPT TO:<unknown@example.net>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n"));

    // The same connection carries a second message, then QUIT.
    pair.send(
        &envelope("alice@example.org", &["dave@example.net"]),
        b"Subject: 2\r\n\r\nx\r\n",
    );
    assert!(pair.outcomes[1].delivered(0));
    assert_eq!(pair.server.stored_messages().count(), 2);
    pair.client.quit(pair.now).unwrap();
    pair.pump();
    assert!(pair.closed && pair.failures.is_empty());
}

#[test]
fn dsn_parameters_pass_through_when_offered() {
    let mut pair = Pair::new(
        implicit_server(),
        config(Transport::ImplicitTls, "alice", "secret"),
    );
    let mut env = envelope("alice@example.org", &["bob@example.net"]);
    env.mail_from.params.ret = Some(Ret::Hdrs);
    env.mail_from.params.envid = Some("QQ+2B1".into());
    env.recipients[0].params = RcptParams {
        notify: Some(Notify::On {
            success: true,
            failure: true,
            delay: false,
        }),
        orcpt: Some(Orcpt {
            addr_type: "rfc822".into(),
            addr: "bob+40example.net".into(),
        }),
    };
    pair.send(&env, b"x\r\n");
    let stored = pair.server.stored_messages().next().unwrap().clone();
    assert_eq!(stored.mail_from.params.ret, Some(Ret::Hdrs));
    assert_eq!(stored.mail_from.params.envid.as_deref(), Some("QQ+2B1"));
    assert_eq!(stored.recipients[0].params, env.recipients[0].params);
}

#[test]
fn required_starttls_is_done_before_auth() {
    let server = ServerConfig::new("upstream.test", Transport::StartTls);
    let mut pair = Pair::new(server, config(Transport::StartTls, "alice", "secret"));
    assert_eq!(pair.starttls, 1);
    assert_eq!(pair.readies, 1, "{:?}", pair.failures);
    let sent = String::from_utf8_lossy(&pair.sent).into_owned();
    let tls_at = sent.find("STARTTLS").unwrap();
    assert!(sent.find("AUTH").unwrap() > tls_at);
    pair.send(
        &envelope("alice@example.org", &["bob@example.net"]),
        b"x\r\n",
    );
    assert!(pair.outcomes[0].delivered(0));
}

#[test]
fn no_starttls_means_no_auth_and_no_mail() {
    let server = ServerConfig::new("upstream.test", Transport::Plaintext);
    let pair = Pair::new(server, config(Transport::StartTls, "alice", "secret"));
    assert_eq!(pair.failures, vec![SessionError::StartTlsNotOffered]);
    assert!(!pair.failures[0].is_transient());
    assert!(pair.closed);
    let sent = String::from_utf8_lossy(&pair.sent).into_owned();
    assert!(!sent.contains("AUTH") && !sent.contains("MAIL"), "{sent}");
}

#[test]
fn login_is_used_when_plain_is_not_offered() {
    let mut server = implicit_server();
    server.auth_mechanisms = vec!["LOGIN".into()];
    let pair = Pair::new(server, config(Transport::ImplicitTls, "alice", "secret"));
    assert_eq!(pair.readies, 1, "{:?}", pair.failures);
    assert!(String::from_utf8_lossy(&pair.sent).contains("AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n"));
}

#[test]
fn refused_credentials_fail_the_session() {
    let pair = Pair::new(
        implicit_server(),
        config(Transport::ImplicitTls, "alice", "wrong"),
    );
    assert!(matches!(&pair.failures[..], [SessionError::Auth(r)] if r.code() == 535));
    assert!(!pair.failures[0].is_transient());
    let pair = Pair::new(
        implicit_server(),
        config(Transport::ImplicitTls, "tempfail", "x"),
    );
    assert!(pair.failures[0].is_transient());
}

#[test]
fn refused_sender_or_all_recipients() {
    let mut pair = Pair::new(
        implicit_server(),
        config(Transport::ImplicitTls, "alice", "secret"),
    );
    pair.send(
        &envelope(
            "spoof@example.org",
            &["bob@example.net", "carol@example.net"],
        ),
        b"x\r\n",
    );
    let outcome = &pair.outcomes[0];
    assert!(outcome
        .recipients
        .iter()
        .all(|r| r.code() == 550 && r.lines()[0].starts_with("Sender")));
    pair.send(
        &envelope(
            "alice@example.org",
            &["unknown1@example.net", "unknown2@example.net"],
        ),
        b"x\r\n",
    );
    assert!(pair.outcomes[1].recipients.iter().all(|r| r.code() == 550));
    // Ready again after each, and nothing was stored.
    assert_eq!(pair.readies, 3);
    assert_eq!(pair.server.stored_messages().count(), 0);
    pair.send(
        &envelope("alice@example.org", &["bob@example.net"]),
        b"x\r\n",
    );
    assert!(pair.outcomes[2].delivered(0));
}

/// A scripted upstream: replies given as text, client bytes collected.
struct Scripted {
    client: ClientSession,
    now: Instant,
    sent: String,
    outputs: Vec<String>,
}

impl Scripted {
    fn new(tls: Transport) -> Self {
        Self::with(config(tls, "u", "p"))
    }

    fn with(mut config: ClientConfig) -> Self {
        let now = Instant::now();
        config.timeouts = ClientTimeouts::default();
        Self {
            client: ClientSession::new(config, now),
            now,
            sent: String::new(),
            outputs: Vec::new(),
        }
    }

    fn server(&mut self, text: &str) {
        self.client.handle_input(self.now, text.as_bytes());
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                ClientOutput::Send(b) => self.sent.push_str(&String::from_utf8_lossy(&b)),
                other => self.outputs.push(format!("{other:?}")),
            }
        }
    }

    fn take_sent(&mut self) -> String {
        std::mem::take(&mut self.sent)
    }
}

const EHLO_MINIMAL: &str = "250-up.test\r\n250 AUTH PLAIN\r\n";

#[test]
fn without_pipelining_commands_go_one_at_a_time() {
    let mut s = Scripted::new(Transport::ImplicitTls);
    s.server("220 up.test\r\n");
    assert_eq!(s.take_sent(), "EHLO relay.test\r\n");
    s.server(EHLO_MINIMAL);
    assert_eq!(s.take_sent(), "AUTH PLAIN AHUAcA==\r\n");
    s.server("235 ok\r\n");
    let env = envelope(
        "alice@example.org",
        &["bob@example.net", "carol@example.net"],
    );
    s.client.send_message(s.now, &env, b"hi\r\n").unwrap();
    s.drain();
    assert_eq!(s.take_sent(), "MAIL FROM:<alice@example.org>\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.take_sent(), "RCPT TO:<bob@example.net>\r\n");
    s.server("250 ok\r\n");
    assert_eq!(s.take_sent(), "RCPT TO:<carol@example.net>\r\n");
    s.server("451 4.3.0 try later\r\n");
    assert_eq!(s.take_sent(), "DATA\r\n");
    s.server("354 go\r\n");
    assert_eq!(s.take_sent(), "hi\r\n.\r\n");
    s.server("250 2.0.0 queued\r\n");
    assert!(
        s.outputs
            .iter()
            .any(|o| o.contains("Outcome") && o.contains("451")),
        "{:?}",
        s.outputs
    );
    assert_eq!(s.outputs.last().map(String::as_str), Some("Ready"));
}

#[test]
fn what_the_upstream_lacks_fails_permanently_and_nothing_is_altered() {
    for (ehlo, body, utf8, expected) in [
        (
            "250-up\r\n250 AUTH PLAIN\r\n",
            "caf\u{e9}\r\n",
            false,
            "554 5.6.3",
        ),
        (
            "250-up\r\n250-8BITMIME\r\n250 AUTH PLAIN\r\n",
            "x\r\n",
            true,
            "554 5.6.7",
        ),
        (
            "250-up\r\n250-SIZE 10\r\n250 AUTH PLAIN\r\n",
            "0123456789abc\r\n",
            false,
            "552 5.3.4",
        ),
    ] {
        let mut s = Scripted::new(Transport::ImplicitTls);
        s.server("220 up\r\n");
        s.server(ehlo);
        s.server("235 ok\r\n");
        s.take_sent();
        let mut env = envelope("alice@example.org", &["bob@example.net"]);
        env.mail_from.params.smtputf8 = utf8;
        s.client.send_message(s.now, &env, body.as_bytes()).unwrap();
        s.drain();
        assert_eq!(s.take_sent(), "", "nothing sent for {expected}");
        let outcome = s.outputs.iter().find(|o| o.contains("Outcome")).unwrap();
        let code: Vec<&str> = expected.split(' ').collect();
        assert!(outcome.contains(&format!("code: {}", code[0])), "{outcome}");
        assert_eq!(s.outputs.last().map(String::as_str), Some("Ready"));
    }
}

#[test]
fn replies_sent_with_the_starttls_220_are_discarded() {
    let mut s = Scripted::new(Transport::StartTls);
    s.server("220 up\r\n");
    s.server("250-up\r\n250 STARTTLS\r\n");
    assert_eq!(s.take_sent(), "EHLO relay.test\r\nSTARTTLS\r\n");
    // An attacker in the path appends a forged EHLO reply without STARTTLS
    // and with a fake AUTH, in the same packet as the 220.
    s.server("220 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n");
    assert_eq!(s.outputs, vec!["StartTls"]);
    s.server("250 more injected\r\n");
    s.client.tls_established(s.now).unwrap();
    s.drain();
    assert_eq!(
        s.take_sent(),
        "EHLO relay.test\r\n",
        "nothing injected was acted on"
    );
    s.server(EHLO_MINIMAL);
    assert_eq!(s.take_sent(), "AUTH PLAIN AHUAcA==\r\n");
}

#[test]
fn broken_or_late_upstreams_end_the_session() {
    for (script, error) in [
        ("554 5.7.1 go away\r\n", "Greeting"),
        ("220 up\r\n500 what\r\n", "Ehlo"),
        ("220 up\r\nHTTP/1.1 400 Bad Request\r\n", "Protocol"),
        ("220 up\r\n250-up\r\n250 SIZE 5\r\n", "AuthNotOffered"),
        ("220 up\r\n250 up\n", "Protocol"),
    ] {
        let mut s = Scripted::new(Transport::ImplicitTls);
        s.server(script);
        assert!(
            s.outputs.iter().any(|o| o.contains(error)),
            "{script:?}: {:?}",
            s.outputs
        );
        assert_eq!(s.outputs.last().map(String::as_str), Some("Close"));
        assert!(s.client.is_closed());
    }
    let mut s = Scripted::new(Transport::ImplicitTls);
    s.server("220 up\r\n");
    s.server(EHLO_MINIMAL);
    s.server("235 ok\r\n");
    s.client
        .send_message(s.now, &envelope("a@b.example", &["c@d.example"]), b"x\r\n")
        .unwrap();
    s.drain();
    let deadline = s.client.poll_timeout().unwrap();
    assert_eq!(deadline, s.now + Duration::from_secs(300));
    s.client.handle_timeout(deadline - Duration::from_secs(1));
    s.drain();
    assert!(!s.client.is_closed());
    s.client.handle_timeout(deadline);
    s.drain();
    assert!(
        s.outputs.iter().any(|o| o.contains("Timeout")),
        "{:?}",
        s.outputs
    );
    // While idle, a 421 from the upstream ends the session.
    let mut s = Scripted::new(Transport::ImplicitTls);
    s.server("220 up\r\n");
    s.server(EHLO_MINIMAL);
    s.server("235 ok\r\n421 4.4.2 bye\r\n");
    assert!(
        s.outputs.iter().any(|o| o.contains("Unexpected")),
        "{:?}",
        s.outputs
    );
}

#[test]
fn postmaster_and_null_sender() {
    let mut pair = Pair::new(
        implicit_server(),
        config(Transport::ImplicitTls, "alice", "secret"),
    );
    let env = Envelope {
        mail_from: MailFrom {
            reverse_path: None,
            params: MailParams::default(),
        },
        recipients: vec![RcptTo {
            forward_path: ForwardPath::Postmaster("Postmaster".into()),
            params: RcptParams::default(),
        }],
    };
    pair.send(&env, b"Subject: bounce\r\n\r\nx\r\n");
    assert!(pair.outcomes[0].delivered(0), "{:?}", pair.outcomes);
    let stored = pair.server.stored_messages().next().unwrap();
    assert_eq!(stored.mail_from.reverse_path, None);
}

/// A message streamed in pieces of any size arrives as the same message
/// given whole: byte-exact, stuffed across piece boundaries, with SIZE and
/// BODY from what the caller said. With every recipient refused, the
/// content is never asked for.
#[test]
fn streamed_content_arrives_as_the_whole_message_would() {
    for piece in [1, 2, 3, 7, 64, MESSAGE.len()] {
        let mut pair = Pair::new(
            implicit_server(),
            config(Transport::ImplicitTls, "alice", "secret"),
        );
        let env = envelope("alice@example.org", &["bob@example.net"]);
        pair.send_streamed(&env, MESSAGE, piece);
        assert_eq!(pair.asked_for_content, 1);
        assert!(pair.outcomes[0].delivered(0), "{:?}", pair.outcomes);
        let stored: Vec<_> = pair.server.stored_messages().cloned().collect();
        assert!(
            stored[0].data == MESSAGE,
            "content changed, pieces of {piece}"
        );
        assert_eq!(stored[0].mail_from.params.size, Some(MESSAGE.len() as u64));
        assert_eq!(
            stored[0].mail_from.params.body,
            Some(submitd_smtp::BodyType::EightBitMime)
        );
        // The connection goes on to the next message.
        pair.send_streamed(&env, b"Subject: two\r\n\r\nno end of line", 5);
        assert_eq!(pair.outcomes.len(), 2);
        assert_eq!(
            pair.server.stored_messages().nth(1).unwrap().data,
            b"Subject: two\r\n\r\nno end of line\r\n"
        );
    }
    let mut pair = Pair::new(
        implicit_server(),
        config(Transport::ImplicitTls, "alice", "secret"),
    );
    let env = envelope("alice@example.org", &["unknown@example.net"]);
    pair.send_streamed(&env, MESSAGE, 10);
    assert_eq!(pair.asked_for_content, 0);
    assert_eq!(pair.outcomes[0].recipients[0].code(), 550);
    assert_eq!(pair.readies, 2, "ready for the next message");
}

fn token_config(mechanisms: &[Mechanism]) -> ClientConfig {
    ClientConfig {
        hostname: "relay.test".into(),
        transport: Transport::ImplicitTls,
        credentials: Some(
            ClientCredentials::bearer("relay@example.org".into(), Secret::new(b"tok3n".to_vec()))
                .pinned(mechanisms),
        ),
        timeouts: ClientTimeouts::default(),
    }
}

fn b64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap()
}

#[test]
fn bearer_tokens_go_as_xoauth2_first_then_oauthbearer() {
    // XOAUTH2 offered (Microsoft 365, Google): the token goes in its
    // initial response, beside the user.
    let mut s = Scripted::with(token_config(&[]));
    s.server("220 up\r\n");
    s.take_sent();
    s.server("250-up\r\n250 AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER\r\n");
    let sent = s.take_sent();
    let payload = sent.strip_prefix("AUTH XOAUTH2 ").unwrap();
    assert_eq!(
        b64_decode(payload),
        b"user=relay@example.org\x01auth=Bearer tok3n\x01\x01"
    );
    s.server("235 2.7.0 ok\r\n");
    assert_eq!(s.outputs, vec!["Ready"]);
    assert_eq!(s.client.mechanism(), Some(Mechanism::XOAuth2));

    // Only OAUTHBEARER offered: RFC 7628's gs2 header names the user.
    let mut s = Scripted::with(token_config(&[]));
    s.server("220 up\r\n");
    s.take_sent();
    s.server("250-up\r\n250 AUTH OAUTHBEARER PLAIN\r\n");
    let sent = s.take_sent();
    let payload = sent.strip_prefix("AUTH OAUTHBEARER ").unwrap();
    assert_eq!(
        b64_decode(payload),
        b"n,a=relay@example.org,\x01auth=Bearer tok3n\x01\x01"
    );
}

#[test]
fn a_refused_token_is_answered_with_the_dummy_response_and_reported() {
    for (mechanism, dummy) in [
        (Mechanism::XOAuth2, "\r\n"),
        (Mechanism::OAuthBearer, "AQ==\r\n"),
    ] {
        let mut s = Scripted::with(token_config(&[mechanism]));
        s.server("220 up\r\n250-up\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n");
        s.take_sent();
        // {"status":"invalid_token","scope":"smtp"} and a control byte.
        use base64::Engine as _;
        let challenge = base64::engine::general_purpose::STANDARD
            .encode(b"{\"status\":\"invalid_token\",\x07\"scope\":\"smtp\"}");
        s.server(&format!("334 {challenge}\r\n"));
        assert_eq!(s.take_sent(), dummy, "{mechanism:?}");
        s.server("535 5.7.8 Authentication credentials invalid\r\n");
        let failed = s
            .outputs
            .iter()
            .find(|o| o.contains("TokenRefused"))
            .unwrap();
        assert!(
            failed.contains("invalid_token") && !failed.contains('\x07'),
            "{failed}"
        );
        assert_eq!(s.outputs.last().map(String::as_str), Some("Close"));
    }
}

#[test]
fn a_pinned_mechanism_list_allows_no_downgrade() {
    // Pinned to XOAUTH2; the upstream (or someone in the path before TLS)
    // offers only PLAIN and OAUTHBEARER: no AUTH is sent at all.
    let mut s = Scripted::with(token_config(&[Mechanism::XOAuth2]));
    s.server("220 up\r\n");
    s.take_sent();
    s.server("250-up\r\n250 AUTH PLAIN OAUTHBEARER\r\n");
    assert!(!s.take_sent().contains("AUTH"));
    let failed = s
        .outputs
        .iter()
        .find(|o| o.contains("AuthNotOffered"))
        .unwrap();
    assert!(
        failed.contains("XOAUTH2") && failed.contains("PLAIN OAUTHBEARER"),
        "{failed}"
    );
    // A password pinned to PLAIN does not fall back to LOGIN.
    let mut config = config(Transport::ImplicitTls, "u", "p");
    config.credentials = config.credentials.map(|c| c.pinned(&[Mechanism::Plain]));
    let mut s = Scripted::with(config);
    s.server("220 up\r\n250-up\r\n250 AUTH LOGIN\r\n");
    assert!(s.outputs.iter().any(|o| o.contains("AuthNotOffered")));
    assert!(!s.take_sent().contains("AUTH LOGIN"));
}

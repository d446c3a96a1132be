//! The listener in memory: sessions over `tokio::io::duplex` with real TLS
//! (a test CA, rustls on both ends), real owners of every answer (a
//! credential file with an argon2id hash, the login gate and its
//! throttle, the sender policy, the intake and a spool in a temporary
//! folder), and no socket. One test per answer path; each fails if the
//! listener stops asking the owner. (The unauthenticated place given back
//! at login is tested over TCP in `smtplib.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use submitd_auth::hash_password;
use submitd_relay::{Maildir, QueueId, Spool};
use submitd_smtp::{ServerConfig, Transport};
use submitd_testkit::TestCa;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use submitd_listener::{
    serve_connection, serve_local_connection, server_tls_config, CertificatePaths, Services,
};

/// One listener's world in a temporary folder.
struct World {
    _dir: tempfile::TempDir,
    ca: TestCa,
    acceptor: TlsAcceptor,
    services: Arc<Services>,
    spool: Spool,
    spool_dir: std::path::PathBuf,
}

/// `alice` (password `pw`, sends as alice@example.org, at most two
/// messages an hour); failures delayed 10 ms, a network blocked after
/// `block_after` of them.
fn world(block_after: u32) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue_pem(&["localhost"]);
    let paths = CertificatePaths {
        certificate: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&paths.certificate, cert).unwrap();
    std::fs::write(&paths.key, key).unwrap();
    let (tls, _) = server_tls_config(&[paths]).unwrap();
    let users = dir.path().join("users");
    let hash = hash_password(b"pw").unwrap();
    std::fs::write(
        &users,
        format!("alice {hash} send-as=alice@example.org max-messages=2/h\n"),
    )
    .unwrap();
    let spool_dir = dir.path().join("spool");
    let (spool, _) = Spool::open(&spool_dir).unwrap();
    let maildir = Maildir::open(dir.path().join("Maildir")).unwrap();
    let (services, _) = support::services(&users, spool.clone(), maildir, block_after);
    World {
        _dir: dir,
        ca,
        acceptor: TlsAcceptor::from(tls),
        services,
        spool,
        spool_dir,
    }
}

const PEER: &str = "192.0.2.7:41000";

/// A line-at-a-time SMTP client for the tests: sends a line, returns the
/// whole reply (lines joined by `\n`).
struct Chat<S>(BufReader<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Chat<S> {
    async fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            assert!(
                self.0.read_line(&mut line).await.unwrap() > 0,
                "closed after {all:?}"
            );
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            all.push(line);
            if last {
                return all.join("\n");
            }
        }
    }

    async fn send(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// Logs in as `user` with AUTH PLAIN.
    async fn login(&mut self, user: &str, password: &str) -> String {
        let blob =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!("AUTH PLAIN {blob}")).await
    }

    /// MAIL from `from`, RCPT to bob, DATA: each must be taken.
    async fn envelope(&mut self, from: &str) {
        assert!(self
            .send(&format!("MAIL FROM:<{from}>"))
            .await
            .starts_with("250"));
        assert!(self
            .send("RCPT TO:<bob@example.net>")
            .await
            .starts_with("250"));
        assert!(self.send("DATA").await.starts_with("354"));
    }

    /// A whole transaction; returns the reply to the end of data.
    async fn message(&mut self, from: &str, header_from: &str) -> String {
        self.envelope(from).await;
        self.send(&format!(
            "From: {header_from}\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n."
        ))
        .await
    }
}

/// The client's half of a TLS session to the world's listener.
async fn tls_client(
    ca: &TestCa,
    io: DuplexStream,
) -> Chat<tokio_rustls::client::TlsStream<DuplexStream>> {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca.client_config())
        .connect(name, io)
        .await
        .unwrap();
    Chat(BufReader::new(tls))
}

impl World {
    /// A session on an implicit-TLS listener, logged in to EHLO.
    async fn implicit(&self) -> Chat<tokio_rustls::client::TlsStream<DuplexStream>> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let smtp = Arc::new(ServerConfig::new("mx.test", Transport::ImplicitTls));
        let peer: SocketAddr = PEER.parse().unwrap();
        tokio::spawn(serve_connection(
            server,
            peer,
            smtp,
            self.acceptor.clone(),
            Arc::clone(&self.services),
            None,
            CancellationToken::new(),
        ));
        let mut chat = tls_client(&self.ca, client).await;
        assert!(chat.reply().await.starts_with("220 mx.test"));
        assert!(chat
            .send("EHLO client.example")
            .await
            .contains("AUTH PLAIN LOGIN"));
        chat
    }

    fn queued(&self) -> Vec<QueueId> {
        self.spool.list().unwrap()
    }
}

#[tokio::test]
async fn login_ok_wrong_password_and_unknown_user() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "wrong").await.starts_with("535 5.7.8"));
    assert!(chat.login("mallory", "pw").await.starts_with("535 5.7.8"));
    assert!(chat.login("alice", "pw").await.starts_with("235 2.7.0"));
    // LOGIN too, over a continuation exchange.
    let mut chat = world.implicit().await;
    assert!(chat.send("AUTH LOGIN").await.starts_with("334 "));
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert!(chat.send(&b64("alice")).await.starts_with("334 "));
    assert!(chat.send(&b64("pw")).await.starts_with("235"));
}

#[tokio::test]
async fn a_throttled_network_gets_454_even_with_the_right_password() {
    let world = world(2);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "wrong").await.starts_with("535"));
    // A malformed PLAIN message counts as a failure too.
    let empty = base64::engine::general_purpose::STANDARD.encode("no nul bytes");
    assert!(chat
        .send(&format!("AUTH PLAIN {empty}"))
        .await
        .starts_with("535"));
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("454 4.7.0"));
}

#[tokio::test]
async fn a_sender_that_is_not_the_users_is_refused_and_limits_hold() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    let refused = chat.send("MAIL FROM:<ceo@example.org>").await;
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    assert!(
        refused.contains("<ceo@example.org> is not allowed"),
        "{refused}"
    );
    // Two messages an hour: the third MAIL waits.
    for _ in 0..2 {
        let stored = chat.message("alice@example.org", "alice@example.org").await;
        assert!(stored.starts_with("250 2.0.0 Ok: queued as "), "{stored}");
    }
    let limited = chat.send("MAIL FROM:<alice@example.org>").await;
    assert!(
        limited.starts_with("450 4.7.1 Sending limit reached"),
        "{limited}"
    );
}

#[tokio::test]
async fn a_stored_message_is_in_the_spool_under_the_id_the_client_was_told() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    let stored = chat
        .message("alice@example.org", "Alice <alice@example.org>")
        .await;
    let id = stored.rsplit(' ').next().unwrap();
    assert_eq!(world.queued(), vec![QueueId::parse(id).unwrap()]);
    let (envelope, data) = world.spool.load(&world.queued()[0]).unwrap();
    assert_eq!(envelope.user.as_deref(), Some("alice"));
    let text = String::from_utf8(data).unwrap();
    assert!(
        text.starts_with("Received: from client.example ([192.0.2.7])"),
        "{text}"
    );
    assert!(text.contains(&format!("id {id}")), "{text}");
}

#[tokio::test]
async fn refused_messages_are_not_stored() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    let spoofed = chat
        .message("alice@example.org", "CEO <ceo@example.org>")
        .await;
    assert!(
        spoofed.starts_with("550 5.7.1 From address <ceo@example.org>"),
        "{spoofed}"
    );
    let malformed = chat
        .message("alice@example.org", "a@example.org\r\nFr om: x")
        .await;
    assert!(malformed.starts_with("550 5.6.0"), "{malformed}");
    assert!(world.queued().is_empty());
}

#[tokio::test]
async fn a_spool_that_cannot_write_answers_451_and_the_session_goes_on() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    // The folder new messages are written in is gone (a broken disk
    // looks the same to the client). The spool holds its folders open, so
    // this lasts until a restart; the session goes on all the same.
    std::fs::remove_dir_all(world.spool_dir.join("msg")).unwrap();
    let failed = chat.message("alice@example.org", "alice@example.org").await;
    assert!(failed.starts_with("451 4.3.0 Cannot queue"), "{failed}");
    assert!(chat.send("NOOP").await.starts_with("250"));
    let again = chat.message("alice@example.org", "alice@example.org").await;
    assert!(again.starts_with("451 4.3.0"), "{again}");
}

#[tokio::test]
async fn starttls_then_login_over_the_same_pipe() {
    let world = world(10);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let smtp = Arc::new(ServerConfig::new("mx.test", Transport::StartTls));
    tokio::spawn(serve_connection(
        server,
        PEER.parse().unwrap(),
        smtp,
        world.acceptor.clone(),
        Arc::clone(&world.services),
        None,
        CancellationToken::new(),
    ));
    let mut plain = Chat(BufReader::new(client));
    assert!(plain.reply().await.starts_with("220"));
    let ehlo = plain.send("EHLO laptop.example").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(
        plain.login("alice", "pw").await.starts_with("530"),
        "no AUTH in clear"
    );
    assert!(plain.send("STARTTLS").await.starts_with("220"));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(world.ca.client_config())
        .connect(name, plain.0.into_inner())
        .await
        .unwrap();
    let mut chat = Chat(BufReader::new(tls));
    assert!(chat
        .send("EHLO laptop.example")
        .await
        .contains("AUTH PLAIN"));
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    assert!(chat
        .message("alice@example.org", "alice@example.org")
        .await
        .starts_with("250"));
}

#[tokio::test]
async fn a_local_user_sends_as_itself_only() {
    let world = world(10);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let smtp = Arc::new(ServerConfig::new("mx.test", Transport::Local));
    tokio::spawn(serve_local_connection(
        server,
        "root".into(),
        "example.org".into(),
        smtp,
        Arc::clone(&world.services),
        CancellationToken::new(),
    ));
    let mut chat = Chat(BufReader::new(client));
    assert!(chat.reply().await.starts_with("220"));
    assert!(chat.send("EHLO localhost").await.starts_with("250"));
    assert!(chat
        .send("MAIL FROM:<alice@example.org>")
        .await
        .starts_with("550 5.7.1"));
    let stored = chat.message("root@example.org", "root@example.org").await;
    assert!(stored.starts_with("250"), "{stored}");
    let (envelope, data) = world.spool.load(&world.queued()[0]).unwrap();
    assert_eq!(envelope.user.as_deref(), Some("root"));
    let text = String::from_utf8(data).unwrap();
    assert!(
        !text.contains("192.0.2.7") && !text.contains("from localhost"),
        "{text}"
    );
}

impl<S: AsyncRead + AsyncWrite + Unpin> Chat<S> {
    /// MAIL, RCPT and DATA, then `content` as is (already dot-stuffed and
    /// ended); returns the reply to the end of data.
    async fn raw_message(&mut self, content: &[u8]) -> String {
        self.raw_data(content).await;
        self.reply().await
    }

    /// MAIL, RCPT and DATA, then `content` as is, without waiting for any
    /// reply after it.
    async fn raw_data(&mut self, content: &[u8]) {
        self.envelope("alice@example.org").await;
        self.0.get_mut().write_all(content).await.unwrap();
        self.0.get_mut().flush().await.unwrap();
    }
}

impl World {
    /// Files in the spool's `tmp/`: messages being written, or left
    /// behind.
    /// Files in the queue that are messages still being received.
    fn in_tmp(&self) -> usize {
        std::fs::read_dir(self.spool_dir.join("msg"))
            .unwrap()
            .filter(|e| {
                let path = e.as_ref().unwrap().path();
                let mut first = [0u8; 15];
                std::fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut first))
                    .is_ok_and(|()| &first == b"submitd-input 1")
            })
            .count()
    }
}

/// A message many times the intake's write size goes to the spool in
/// pieces and arrives there byte for byte behind the trace fields.
#[tokio::test]
async fn a_large_message_is_streamed_to_the_spool_byte_exact() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    let mut message = b"From: alice@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let mut n = 0u64;
    while message.len() < 3 << 20 {
        message.extend_from_slice(
            format!("line {n:08} of a big attachment, base64-ish\r\n").as_bytes(),
        );
        n += 1;
    }
    message.extend_from_slice(b".starts with a dot\r\n");
    let mut wire = message.clone();
    let at = wire.len() - b".starts with a dot\r\n".len();
    wire.insert(at, b'.');
    wire.extend_from_slice(b".\r\n");
    let stored = chat.raw_message(&wire).await;
    assert!(stored.starts_with("250 2.0.0 Ok: queued as "), "{stored}");
    let (_, data) = world.spool.load(&world.queued()[0]).unwrap();
    assert!(data.starts_with(b"Received: from client.example"));
    assert!(
        data.ends_with(&message),
        "content changed on the way to the spool"
    );
    assert_eq!(world.in_tmp(), 0);
}

/// A header over the intake's bound is refused with 552 5.3.4 once the
/// client has sent it all; nothing of it stays in the spool, and the
/// session goes on.
#[tokio::test]
async fn an_oversized_header_is_refused_and_leaves_nothing() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    let mut wire = b"From: alice@example.org\r\n".to_vec();
    while wire.len() < 300 * 1024 {
        wire.extend_from_slice(b"a:\r\n");
    }
    wire.extend_from_slice(b"\r\nbody\r\n.\r\n");
    let refused = chat.raw_message(&wire).await;
    assert!(refused.starts_with("552 5.3.4"), "{refused}");
    assert!(refused.contains("header"), "{refused}");
    // Many fields within the size bound: refused for their number.
    let mut wire = b"From: alice@example.org\r\n".to_vec();
    for _ in 0..5000 {
        wire.extend_from_slice(b"a:\r\n");
    }
    wire.extend_from_slice(b"\r\nbody\r\n.\r\n");
    let refused = chat.raw_message(&wire).await;
    assert!(refused.starts_with("552 5.3.4"), "{refused}");
    assert!(refused.contains("fields"), "{refused}");
    assert!(world.queued().is_empty());
    assert_eq!(world.in_tmp(), 0);
    let stored = chat.message("alice@example.org", "alice@example.org").await;
    assert!(stored.starts_with("250"), "{stored}");
}

/// A client that goes away in the middle of a large message leaves no
/// file behind once the session has ended.
#[tokio::test]
async fn a_message_cut_off_mid_data_leaves_nothing_in_the_spool() {
    let world = world(10);
    let mut chat = world.implicit().await;
    assert!(chat.login("alice", "pw").await.starts_with("235"));
    let mut part = b"From: alice@example.org\r\n\r\n".to_vec();
    while part.len() < 1 << 20 {
        part.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    chat.raw_data(&part).await;
    // Written in part: the spool holds a file for it now.
    for _ in 0..200 {
        if world.in_tmp() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        world.in_tmp(),
        1,
        "the body goes to the spool as it arrives"
    );
    drop(chat);
    for _ in 0..200 {
        if world.in_tmp() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(world.in_tmp(), 0, "a message not taken leaves no file");
    assert!(world.queued().is_empty());
}

//! The security promises, black box, against the real binary on loopback
//! relaying to aiosmtpd (a third-party smarthost, which shows what really
//! leaves submitd): STARTTLS command injection as the NO STARTTLS research
//! tests it, state reset after STARTTLS, SMTP smuggling, no open relay on
//! either port, no AUTH before TLS, unknown user and wrong password alike
//! in reply and time, brute force blocked, cross-protocol and garbage
//! input survived. TLS versions and suites: `clients.rs` (openssl) and
//! `scripts/tls-scan` (nmap, testssl.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{start_upstream, Daemon, Upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PASSWORD: &str = "correct horse";
/// Users u0..u{USERS}, each with PASSWORD, for one failed login each.
const USERS: usize = 12;

struct World {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    upstream: Upstream,
    daemon: Daemon,
    implicit: u16,
    starttls: u16,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::certificates(d, &["submitd", "upstream"]);
    let upstream = start_upstream(d, &d.join("upstream.crt"), &d.join("upstream.key"));
    let hash = submitd_auth::hash_password(PASSWORD.as_bytes()).unwrap();
    let mut users = format!("alice {hash} send-as=alice@example.org\n");
    for i in 0..USERS {
        users.push_str(&format!("u{i} {hash} send-as=u{i}@example.org\n"));
    }
    std::fs::write(d.join("users"), users).unwrap();
    common::password_file(&d.join("upstream.pass"), "secret");
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        format!(
            r#"hostname = "localhost"
[[listen]]
address = "127.0.0.1:0"
mode = "implicit"
[[listen]]
address = "127.0.0.1:0"
mode = "starttls"
[tls]
certificate = "submitd.crt"
key = "submitd.key"
[auth]
users = "users"
# No delay, so that the timing compared below is argon2's alone and the
# block after 10 failures comes quickly; the count is the same as ever.
failure_delay = "0s"
[queue]
directory = "queue"
[[relay.upstream]]
host = "localhost"
port = {}
tls = "implicit"
username = "alice"
password_file = "upstream.pass"
ca_file = "ca.pem"
[limits]
connections_per_client = 100
"#,
            upstream.port
        ),
    )
    .unwrap();
    let daemon = common::start(Daemon::command(&config));
    let (implicit, starttls) = (daemon.implicit.unwrap(), daemon.starttls.unwrap());
    World {
        ca: d.join("ca.pem"),
        _dir: dir,
        upstream,
        daemon,
        implicit,
        starttls,
    }
}

/// A raw client: bytes exactly as written, replies read whole.
struct Raw<S> {
    stream: S,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(port: u16, source: Option<IpAddr>) -> Raw<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let stream = socket
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await
        .unwrap();
    Raw { stream }
}

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl Raw<TcpStream> {
    async fn tls(self, ca: &Path) -> Raw<Tls> {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls_config(ca))
            .connect(name, self.stream)
            .await
            .unwrap();
        Raw { stream }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// One whole reply (all its lines); empty if the server closed.
    async fn reply(&mut self) -> String {
        let mut said = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut byte)).await {
                Ok(Ok(1)) => said.push(byte[0]),
                Ok(_) => break,
                Err(_) => panic!(
                    "no reply in 20 s after {:?}",
                    String::from_utf8_lossy(&said)
                ),
            }
            if said.ends_with(b"\r\n") {
                let text = String::from_utf8_lossy(&said).into_owned();
                let last = text.trim_end().rsplit("\r\n").next().unwrap_or_default();
                if last.as_bytes().get(3) == Some(&b' ') {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&said).into_owned()
    }

    async fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Whether the server stays silent for `wait`.
    async fn silent_for(&mut self, wait: Duration) -> Result<(), String> {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(wait, self.stream.read(&mut buf)).await {
            Err(_) => Ok(()),
            Ok(Ok(0)) => Err("closed".into()),
            Ok(Ok(n)) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    /// Whether the server closes the connection within `wait` (reading and
    /// dropping whatever it says first).
    async fn closes_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// An implicit-TLS session, greeted, EHLO'd and logged in as `user`.
async fn logged_in(w: &World, user: &str) -> Raw<Tls> {
    let mut s = connect(w.implicit, None).await.tls(&w.ca).await;
    assert!(s.reply().await.starts_with("220 "));
    assert!(s.command("EHLO client.example").await.starts_with("250"));
    let plain = base64_plain(user, PASSWORD);
    let reply = s.command(&format!("AUTH PLAIN {plain}")).await;
    assert!(reply.starts_with("235 "), "{reply}");
    s
}

fn base64_plain(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("\0{user}\0{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sends one clean message through `s` and waits for it at the upstream:
/// everything sent before it has been relayed or refused by then.
async fn marker(w: &World, s: &mut Raw<Tls>, tag: &str) {
    assert!(s
        .command("MAIL FROM:<alice@example.org>")
        .await
        .starts_with("250"));
    assert!(s
        .command("RCPT TO:<bob@example.net>")
        .await
        .starts_with("250"));
    assert!(s.command("DATA").await.starts_with("354"));
    s.send(
        format!("From: alice@example.org\r\nSubject: marker {tag}\r\n\r\nok\r\n.\r\n").as_bytes(),
    )
    .await;
    let reply = s.reply().await;
    assert!(reply.starts_with("250 "), "{reply}");
    let needle = format!("Subject: marker {tag}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w
        .upstream
        .messages()
        .iter()
        .any(|m| String::from_utf8_lossy(m).contains(&needle))
    {
        assert!(Instant::now() < deadline, "marker {tag} not relayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_injection_is_ignored_and_state_is_reset() {
    let w = world();
    for injected in [
        "EHLO inj\r\n",
        "MAIL FROM:<alice@example.org>\r\n",
        &format!("AUTH PLAIN {}\r\n", base64_plain("alice", PASSWORD)),
        "NOOP\r\n",
    ] {
        let mut s = connect(w.starttls, None).await;
        assert!(s.reply().await.starts_with("220 "));
        assert!(s.command("EHLO before.example").await.contains("STARTTLS"));
        // The injection: STARTTLS and a command in one write.
        s.send(format!("STARTTLS\r\n{injected}").as_bytes()).await;
        let ready = s.reply().await;
        assert!(ready.starts_with("220 "), "{injected:?}: {ready}");
        let mut s = s.tls(&w.ca).await;
        // Inside TLS the server says nothing until the client speaks.
        assert_eq!(
            s.silent_for(Duration::from_secs(1)).await,
            Ok(()),
            "{injected:?} was answered inside TLS"
        );
        // State reset: no transaction without a new EHLO.
        let mail = s.command("MAIL FROM:<alice@example.org>").await;
        assert!(mail.starts_with("503 5.5.1"), "{injected:?}: {mail}");
        let ehlo = s.command("EHLO after.example").await;
        assert!(
            ehlo.contains("AUTH") && !ehlo.contains("STARTTLS"),
            "{ehlo}"
        );
        // The injected AUTH did not log anyone in.
        let mail = s.command("MAIL FROM:<alice@example.org>").await;
        assert!(mail.starts_with("530 5.7.0"), "{injected:?}: {mail}");
        // A second STARTTLS is refused.
        let again = s.command("STARTTLS").await;
        assert!(
            again.starts_with("503") || again.starts_with("454"),
            "{again}"
        );
    }
    assert_eq!(
        w.daemon.wait_count(
            &["octets after STARTTLS dropped"],
            4,
            Duration::from_secs(5)
        ),
        4,
        "each injection is logged"
    );
}

/// The smuggling forms of 2023, each followed by a second transaction in
/// the same write: never a second message, never a stray CR or LF sent on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_end_of_data_never_makes_a_second_message() {
    let w = world();
    for (i, end) in ["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n"]
        .iter()
        .enumerate()
    {
        let mut s = logged_in(&w, "alice").await;
        assert!(s
            .command("MAIL FROM:<alice@example.org>")
            .await
            .starts_with("250"));
        assert!(s
            .command("RCPT TO:<bob@example.net>")
            .await
            .starts_with("250"));
        assert!(s.command("DATA").await.starts_with("354"));
        s.send(
            format!(
                "From: alice@example.org\r\nSubject: first {i}\r\n\r\nbody{end}\
                 MAIL FROM:<alice@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n\
                 From: alice@example.org\r\nSubject: smuggled {i}\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n"
            )
            .as_bytes(),
        )
        .await;
        // Whatever the server answers, the connection ends.
        let _ = s.closes_within(Duration::from_secs(10)).await;
        let mut clean = logged_in(&w, "alice").await;
        marker(&w, &mut clean, &i.to_string()).await;
    }
    for message in w.upstream.messages() {
        let text = String::from_utf8_lossy(&message);
        assert!(!text.contains("smuggled"), "smuggled through:\n{text}");
        assert!(!text.contains("victim"), "{text}");
        for (k, &b) in message.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(message.get(k + 1), Some(&b'\n'), "bare CR sent on"),
                b'\n' => assert!(k > 0 && message[k - 1] == b'\r', "bare LF sent on"),
                _ => {}
            }
        }
    }
    for env in std::fs::read_dir(&w.upstream.out).unwrap() {
        let path = env.unwrap().path();
        if path.extension().is_some_and(|x| x == "env") {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(!text.contains("victim"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_open_relay_and_no_auth_in_cleartext() {
    let w = world();
    // 465: TLS, but no login: no transaction.
    let mut s = connect(w.implicit, None).await.tls(&w.ca).await;
    assert!(s.reply().await.starts_with("220 "));
    assert!(s.command("EHLO c").await.contains("AUTH PLAIN LOGIN"));
    let mail = s.command("MAIL FROM:<alice@example.org>").await;
    assert!(mail.starts_with("530 5.7.0"), "{mail}");
    let rcpt = s.command("RCPT TO:<victim@example.net>").await;
    assert!(rcpt.starts_with("503") || rcpt.starts_with("530"), "{rcpt}");
    // 587 in the clear: no AUTH offered or taken, no transaction.
    let mut p = connect(w.starttls, None).await;
    assert!(p.reply().await.starts_with("220 "));
    let ehlo = p.command("EHLO c").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    for line in [
        format!("AUTH PLAIN {}", base64_plain("alice", PASSWORD)),
        "AUTH LOGIN".to_owned(),
        "MAIL FROM:<alice@example.org>".to_owned(),
        "RCPT TO:<victim@example.net>".to_owned(),
    ] {
        let reply = p.command(&line).await;
        assert!(reply.starts_with("530 5.7.0"), "{line}: {reply}");
    }
    // 587 after STARTTLS, still no login: no transaction.
    assert!(p.command("STARTTLS").await.starts_with("220 "));
    let mut t = p.tls(&w.ca).await;
    assert!(t.command("EHLO c").await.contains("AUTH"));
    let mail = t.command("MAIL FROM:<alice@example.org>").await;
    assert!(mail.starts_with("530 5.7.0"), "{mail}");
    // Logged in, alice may not send as someone else.
    let mut a = logged_in(&w, "alice").await;
    let spoof = a.command("MAIL FROM:<ceo@example.org>").await;
    assert!(spoof.starts_with("550 5.7.1"), "{spoof}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Wrong password and unknown user: the same reply, and the same time
/// (one argon2 check each). Each attempt comes from its own address and
/// names its own user, so no throttle count differs between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    let w = world();
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    let mut replies = std::collections::BTreeSet::new();
    for i in 0..USERS {
        for (user, times) in [
            (format!("u{i}"), &mut wrong),
            (format!("nobody{i}"), &mut unknown),
        ] {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1 + (times.len() % 2) as u8,
                10 + i as u8,
            ));
            let mut s = connect(w.implicit, Some(source)).await.tls(&w.ca).await;
            assert!(s.reply().await.starts_with("220 "));
            assert!(s.command("EHLO c").await.starts_with("250"));
            let line = format!("AUTH PLAIN {}\r\n", base64_plain(&user, "not the password"));
            let start = Instant::now();
            s.send(line.as_bytes()).await;
            let reply = s.reply().await;
            times.push(start.elapsed());
            replies.insert(reply);
        }
    }
    assert_eq!(replies.len(), 1, "replies differ: {replies:?}");
    assert!(
        replies.iter().all(|r| r.starts_with("535 5.7.8")),
        "{replies:?}"
    );
    let (w_med, u_med) = (median(wrong), median(unknown));
    let ratio = w_med.as_secs_f64() / u_med.as_secs_f64();
    eprintln!("median wrong password {w_med:?}, unknown user {u_med:?}, ratio {ratio:.2}");
    // Skipping argon2 for unknown users would make the ratio about 20.
    assert!(
        (0.5..2.0).contains(&ratio),
        "timing differs: {w_med:?} vs {u_med:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_from_one_network_is_blocked() {
    let w = world();
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
    for i in 0..10 {
        let mut s = connect(w.implicit, Some(attacker)).await.tls(&w.ca).await;
        assert!(s.reply().await.starts_with("220 "));
        s.command("EHLO c").await;
        let reply = s
            .command(&format!(
                "AUTH PLAIN {}",
                base64_plain("alice", &format!("guess{i}"))
            ))
            .await;
        assert!(reply.starts_with("535 "), "{i}: {reply}");
    }
    // Blocked now: even the right password is not checked.
    let mut s = connect(w.implicit, Some(attacker)).await.tls(&w.ca).await;
    assert!(s.reply().await.starts_with("220 "));
    s.command("EHLO c").await;
    let reply = s
        .command(&format!("AUTH PLAIN {}", base64_plain("alice", PASSWORD)))
        .await;
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    assert!(w.daemon.wait_log("blocked=true", Duration::from_secs(5)));
    // Another network is not affected.
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1));
    let mut s = connect(w.implicit, Some(other)).await.tls(&w.ca).await;
    assert!(s.reply().await.starts_with("220 "));
    s.command("EHLO c").await;
    let reply = s
        .command(&format!("AUTH PLAIN {}", base64_plain("alice", PASSWORD)))
        .await;
    assert!(reply.starts_with("235 "), "{reply}");
}

/// One AUTH PLAIN from `source` in a fresh session; the reply.
async fn try_login(w: &World, source: IpAddr, user: &str, password: &str) -> String {
    let mut s = connect(w.implicit, Some(source)).await.tls(&w.ca).await;
    assert!(s.reply().await.starts_with("220 "));
    s.command("EHLO c").await;
    s.command(&format!("AUTH PLAIN {}", base64_plain(user, password)))
        .await
}

/// Behind one address (an office, a school): one user's stale password
/// blocks that user from there, not the neighbours; guessing many names
/// from an address blocks the address, and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_spares_the_neighbours_and_blocks_sprayers() {
    let w = world();
    let office = IpAddr::V4(Ipv4Addr::new(127, 0, 4, 1));
    for i in 0..12 {
        let reply = try_login(&w, office, "u0", &format!("stale{i}")).await;
        assert!(
            reply.starts_with("535 ") || reply.starts_with("454 "),
            "{reply}"
        );
    }
    let reply = try_login(&w, office, "u1", PASSWORD).await;
    assert!(reply.starts_with("235 "), "a neighbour: {reply}");
    let reply = try_login(&w, office, "u0", PASSWORD).await;
    assert!(reply.starts_with("454 4.7.0"), "the stale one: {reply}");

    let sprayer = IpAddr::V4(Ipv4Addr::new(127, 0, 5, 1));
    for i in 0..20 {
        let reply = try_login(&w, sprayer, &format!("name{i}"), "guess").await;
        assert!(
            reply.starts_with("535 ") || reply.starts_with("454 "),
            "{reply}"
        );
    }
    let reply = try_login(&w, sprayer, "u2", PASSWORD).await;
    assert!(
        reply.starts_with("454 4.7.0"),
        "the sprayer's address: {reply}"
    );
    let reply = try_login(&w, office, "u2", PASSWORD).await;
    assert!(reply.starts_with("235 "), "another address: {reply}");
}

/// An emptied users file on SIGHUP is refused: the users in force keep
/// working, and the failures nobody caused never block anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_users_file_is_refused_on_reload() {
    let w = world();
    let users = w._dir.path().join("users");
    let before = std::fs::read_to_string(&users).unwrap();
    std::fs::write(&users, "").unwrap();
    common::signal(w.daemon.child.id(), "HUP");
    assert!(w.daemon.wait_log(
        "reload refused: it would leave 0 of",
        Duration::from_secs(10)
    ));
    let client = IpAddr::V4(Ipv4Addr::new(127, 0, 6, 1));
    for _ in 0..15 {
        let reply = try_login(&w, client, "alice", PASSWORD).await;
        assert!(reply.starts_with("235 "), "{reply}");
    }
    std::fs::write(&users, before).unwrap();
}

/// A login verified lately skips argon2, but never outlives its password:
/// a wrong password after a success is still refused, and after a
/// password change and SIGHUP the old password fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_login_never_outlives_its_password() {
    let w = world();
    let client = IpAddr::V4(Ipv4Addr::new(127, 0, 7, 1));
    let cached_reaches = |w: &World, n: usize| {
        w.daemon
            .wait_count(&["cached=true"], n, Duration::from_secs(5))
    };
    for _ in 0..3 {
        let reply = try_login(&w, client, "alice", PASSWORD).await;
        assert!(reply.starts_with("235 "), "{reply}");
    }
    assert_eq!(
        cached_reaches(&w, 2),
        2,
        "the second and third login skip argon2"
    );
    let reply = try_login(&w, client, "alice", "not it").await;
    assert!(
        reply.starts_with("535 5.7.8"),
        "a failure is never cached: {reply}"
    );

    let users = w._dir.path().join("users");
    let before = std::fs::read_to_string(&users).unwrap();
    let new = submitd_auth::hash_password(b"new horse").unwrap();
    let mut text: Vec<String> = before.lines().map(str::to_owned).collect();
    text[0] = format!("alice {new} send-as=alice@example.org");
    std::fs::write(&users, text.join("\n") + "\n").unwrap();
    common::signal(w.daemon.child.id(), "HUP");
    assert!(w
        .daemon
        .wait_log("credential file reloaded", Duration::from_secs(10)));
    let reply = try_login(&w, client, "alice", PASSWORD).await;
    assert!(reply.starts_with("535 "), "the old password: {reply}");
    let reply = try_login(&w, client, "alice", "new horse").await;
    assert!(reply.starts_with("235 "), "the new one: {reply}");
    // The new password's login is logged (not as a hit) before the count.
    w.daemon
        .wait_count(&["authenticated", "user=alice"], 4, Duration::from_secs(5));
    assert_eq!(
        cached_reaches(&w, 2),
        2,
        "nothing from before the change was a hit"
    );
}

/// Deterministic junk (xorshift), so a failure can be replayed.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_protocol_and_garbage_never_take_the_server_down() {
    let w = world();
    let http = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: x\r\n\r\n";
    // HTTP to the STARTTLS port in the clear: closed.
    let mut s = connect(w.starttls, None).await;
    assert!(s.reply().await.starts_with("220 "));
    s.send(http).await;
    assert!(
        s.closes_within(Duration::from_secs(5)).await,
        "HTTP in the clear"
    );
    // HTTP to the implicit-TLS port (no handshake): closed.
    let mut s = connect(w.implicit, None).await;
    s.send(http).await;
    assert!(
        s.closes_within(Duration::from_secs(5)).await,
        "HTTP before TLS"
    );
    // HTTP inside TLS: closed.
    let mut s = connect(w.implicit, None).await.tls(&w.ca).await;
    assert!(s.reply().await.starts_with("220 "));
    s.send(http).await;
    assert!(
        s.closes_within(Duration::from_secs(5)).await,
        "HTTP inside TLS"
    );
    // Garbage before the handshake, in the clear, and inside TLS.
    for seed in 1..=8u64 {
        let bytes = junk(seed, 4096 * seed as usize);
        let mut a = connect(w.implicit, None).await;
        a.send(&bytes).await;
        assert!(
            a.closes_within(Duration::from_secs(10)).await,
            "seed {seed} before TLS"
        );
        let mut b = connect(w.starttls, None).await;
        b.reply().await;
        let _ = b.stream.write_all(&bytes).await;
        assert!(
            b.closes_within(Duration::from_secs(10)).await,
            "seed {seed} in the clear"
        );
        let mut c = connect(w.implicit, None).await.tls(&w.ca).await;
        c.reply().await;
        let _ = c.stream.write_all(&bytes).await;
        let _ = c.stream.flush().await;
        assert!(
            c.closes_within(Duration::from_secs(20)).await,
            "seed {seed} inside TLS"
        );
    }
    // Still serving, and a message still goes through.
    let mut s = logged_in(&w, "alice").await;
    marker(&w, &mut s, "after garbage").await;
    let mut daemon = w.daemon;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the server is up"
    );
    let log = daemon.log.lock().unwrap().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

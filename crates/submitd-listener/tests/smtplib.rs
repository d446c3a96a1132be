//! End to end through the listener with Python's smtplib over real TLS on
//! loopback: implicit TLS and STARTTLS, AUTH PLAIN and LOGIN, a wrong
//! password, spoofed envelope and header senders, AUTH not offered before
//! TLS; then the relay delivers what was accepted into a Maildir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use submitd_auth::hash_password;
use submitd_listener::{serve, server_tls_config, CertificatePaths, ConnectionLimits, Services};
use submitd_relay::{Maildir, Relay, Spool};
use submitd_smtp::{ServerConfig, Transport};
use submitd_testkit::TestCa;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = r#"
import smtplib, ssl, sys
ca, implicit, starttls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
msg = "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\n.dot line\r\nbody\r\n"

with smtplib.SMTP_SSL("localhost", implicit, context=ctx, local_hostname="client.example") as s:
    s.ehlo()
    print("auth-offered", s.has_extn("auth"))
    try:
        s.login("alice", "wrong")
        print("wrong-password accepted")
    except smtplib.SMTPAuthenticationError as e:
        print("wrong-password", e.smtp_code)
    s.login("alice", "pw")
    s.sendmail("alice@example.org", ["bob@example.net"], msg)
    print("sent-implicit")
    try:
        s.sendmail("alice@example.org", ["bob@example.net"], msg.replace("Alice <alice@", "CEO <ceo@"))
        print("spoofed-header accepted")
    except smtplib.SMTPDataError as e:
        print("spoofed-header", e.smtp_code)
    try:
        s.sendmail("ceo@example.org", ["bob@example.net"], msg)
        print("spoofed-envelope accepted")
    except smtplib.SMTPSenderRefused as e:
        print("spoofed-envelope", e.smtp_code)

with smtplib.SMTP("localhost", starttls, local_hostname="laptop.example") as s:
    s.ehlo()
    print("auth-before-tls", s.has_extn("auth"))
    try:
        s.docmd("AUTH", "PLAIN AGFsaWNlAHB3")
        code = s.docmd("AUTH", "PLAIN AGFsaWNlAHB3")[0]
        print("auth-plaintext", code)
    except smtplib.SMTPException as e:
        print("auth-plaintext error", e)
    s.starttls(context=ctx)
    s.ehlo()
    s.user, s.password = "alice", "pw"
    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    print("login", code)
    s.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], msg)
    print("sent-starttls")
"#;

/// A listener's world in `dir`: a test CA, a certificate for `localhost`
/// (and one for `*.example.net`, chosen by SNI), the user `alice` with
/// password `pw`, a spool and a Maildir relay.
struct World {
    ca: TestCa,
    ca_file: std::path::PathBuf,
    tls: Arc<rustls::ServerConfig>,
    services: Arc<Services>,
    relay: Relay,
    maildir: Maildir,
}

fn world(dir: &std::path::Path) -> World {
    let ca = TestCa::new();
    let mut pairs = Vec::new();
    for (stem, name) in [("localhost", "localhost"), ("other", "*.example.net")] {
        let (cert_pem, key_pem) = ca.issue_pem(&[name]);
        let paths = CertificatePaths {
            certificate: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&paths.certificate, cert_pem).unwrap();
        std::fs::write(&paths.key, key_pem).unwrap();
        pairs.push(paths);
    }
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let users = dir.join("users");
    std::fs::write(
        &users,
        format!(
            "alice {} send-as=alice@example.org\n",
            hash_password(b"pw").unwrap()
        ),
    )
    .unwrap();

    let (spool, _) = Spool::open(&dir.join("spool")).unwrap();
    let maildir = Maildir::open(dir.join("Maildir")).unwrap();
    let (services, relay) = support::services(&users, spool, maildir.clone(), 10);
    let (tls, _certs) = server_tls_config(&pairs).unwrap();
    World {
        ca,
        ca_file,
        tls,
        services,
        relay,
        maildir,
    }
}

/// A TLS client (rustls) trusting only `ca`, asking for `name` by SNI.
async fn tls_connect(
    ca: &TestCa,
    port: u16,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(ca.client_config())
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_submits_over_implicit_tls_and_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let World {
        ca,
        ca_file,
        tls,
        services,
        relay,
        maildir,
    } = world(dir.path());
    let shutdown = CancellationToken::new();
    let mut ports = Vec::new();
    for transport in [Transport::ImplicitTls, Transport::StartTls] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        let smtp = Arc::new(ServerConfig::new("mx.test", transport));
        tokio::spawn(serve(
            listener,
            smtp,
            Arc::clone(&tls),
            Arc::clone(&services),
            ConnectionLimits {
                total: 100,
                per_client: 3,
                unauthenticated: 100,
                rate: 0,
            },
            None,
            shutdown.clone(),
        ));
    }

    let (implicit_port, starttls_port) = (ports[0], ports[1]);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&ca_file)
            .arg(ports[0].to_string())
            .arg(ports[1].to_string())
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "auth-offered True",
            "wrong-password 535",
            "sent-implicit",
            "spoofed-header 550",
            "spoofed-envelope 550",
            "auth-before-tls False",
            "auth-plaintext 530",
            "login 235",
            "sent-starttls",
        ],
        "{stderr}"
    );

    // The relay delivers what was accepted, byte-exact after the added lines.
    let figures = relay.run_once().await;
    assert_eq!(figures.delivered, 3, "{figures:?}");
    let mut delivered: Vec<String> = std::fs::read_dir(maildir.root().join("new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    delivered.sort();
    assert_eq!(delivered.len(), 2);
    for text in &delivered {
        assert!(text.ends_with("From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\n.dot line\r\nbody\r\n"), "{text}");
        assert!(text.contains("with ESMTPSA id "), "{text}");
    }
    assert!(delivered
        .iter()
        .any(|t| t.contains("Received: from client.example ([127.0.0.1])")));
    assert!(delivered
        .iter()
        .any(|t| t.contains("Received: from laptop.example ([127.0.0.1])")));

    // One address may hold 3 connections here; a fourth reads why it is
    // refused (a mail client then says "try later", not a network error).
    let mut held = Vec::new();
    let mut buf = vec![0u8; 512];
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", starttls_port))
            .await
            .unwrap();
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"220 "));
        held.push(tcp);
    }
    let mut fourth = tokio::net::TcpStream::connect(("127.0.0.1", starttls_port))
        .await
        .unwrap();
    let mut refused = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut refused))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&refused),
        "421 4.7.0 mx.test Too many connections from your address, try again later\r\n",
        "the fourth connection from one address is refused, and told so"
    );
    drop(held);
    // Once they close, the address may connect again.
    let mut greeted = false;
    for _ in 0..50 {
        let mut again = tokio::net::TcpStream::connect(("127.0.0.1", starttls_port))
            .await
            .unwrap();
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), again.read(&mut buf)).await
        {
            if buf[..n].starts_with(b"220 ") {
                greeted = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(greeted, "the per-client count was not released");

    // Shutdown: a connected, idle client is told 421 and the session ends.
    let mut tls = tls_connect(&ca, implicit_port, "localhost").await.unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    shutdown.cancel();
    let mut said = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        said.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        String::from_utf8_lossy(&said),
        "421 4.3.2 mx.test Service shutting down, try again later\r\n"
    );
}
/// Reads one reply (all its lines) from `stream`.
async fn read_reply(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut said = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("a reply in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        said.push(byte[0]);
        // The last line of a reply has a space after the code.
        if said.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&said);
            let last = text.trim_end().rsplit("\r\n").next().unwrap_or("");
            if last.len() >= 4 && last.as_bytes()[3] == b' ' {
                break;
            }
        }
    }
    String::from_utf8_lossy(&said).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_bounded_and_sni_chooses_the_certificate() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let (port, shutdown) = implicit_listener(&w, 2).await;

    // SNI: asking for a name under *.example.net gets that certificate
    // (the handshake verifies it), any other name the default.
    let mut other = tls_connect(&w.ca, port, "smtp.example.net").await.unwrap();
    assert!(read_reply(&mut other).await.starts_with("220 "));
    let mut first = tls_connect(&w.ca, port, "localhost").await.unwrap();
    assert!(read_reply(&mut first).await.starts_with("220 "));
    assert_ne!(
        other.get_ref().1.peer_certificates().unwrap()[0],
        first.get_ref().1.peer_certificates().unwrap()[0]
    );

    // Two unauthenticated sessions are open: a third is refused, inside
    // TLS, with a 421 it can read, and closed.
    let mut third = tls_connect(&w.ca, port, "localhost").await.unwrap();
    let said = read_reply(&mut third).await;
    assert_eq!(
        said, "421 4.7.0 mx.test Too many connections waiting to log in, try again later\r\n",
        "a third unauthenticated connection was served"
    );
    let mut rest = [0u8; 16];
    let after = tokio::time::timeout(Duration::from_secs(5), third.read(&mut rest)).await;
    assert!(matches!(after, Ok(Ok(0) | Err(_))), "closed after the 421");

    // Once one of them logs in, its place is free for another client.
    first.write_all(b"EHLO me\r\n").await.unwrap();
    assert!(read_reply(&mut first).await.starts_with("250"));
    first
        .write_all(b"AUTH PLAIN AGFsaWNlAHB3\r\n")
        .await
        .unwrap();
    assert!(read_reply(&mut first).await.starts_with("235 "));
    let mut fourth = tls_connect(&w.ca, port, "localhost").await.unwrap();
    assert!(read_reply(&mut fourth).await.starts_with("220 "));
    // And a session that ends gives its place back too.
    drop(other);
    let mut greeted = false;
    for _ in 0..50 {
        if let Ok(mut s) = tls_connect(&w.ca, port, "localhost").await {
            let mut buf = [0u8; 4];
            if let Ok(Ok(4)) =
                tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
            {
                greeted = &buf == b"220 ";
                if greeted {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(greeted, "a closed session kept its unauthenticated place");
    shutdown.cancel();
}

/// Connections that stall (a TLS handshake never finished, a command
/// trickled) fill the unauthenticated bound; once they have had their few
/// seconds, a new client takes the place of the oldest, which is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_give_way_to_new_clients() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let (port, shutdown) = implicit_listener(&w, 2).await;
    // Two connections that send half a ClientHello and stall.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(3300)).await;
    // A real client gets in, twice, each time in the place of a stalled one.
    for _ in 0..2 {
        let mut client = tls_connect(&w.ca, port, "localhost").await.unwrap();
        assert!(read_reply(&mut client).await.starts_with("220 "));
    }
    for mut tcp in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the stalled one is closed"
        );
    }
    shutdown.cancel();
}

/// An implicit-TLS listener of `w` on a free port with room for
/// `unauthenticated` sessions that have not logged in (and no other bound
/// in the way); its port and the token that stops it.
async fn implicit_listener(w: &World, unauthenticated: usize) -> (u16, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        Arc::new(ServerConfig::new("mx.test", Transport::ImplicitTls)),
        Arc::clone(&w.tls),
        Arc::clone(&w.services),
        ConnectionLimits {
            total: 100,
            per_client: 100,
            unauthenticated,
            rate: 0,
        },
        None,
        shutdown.clone(),
    ));
    (port, shutdown)
}

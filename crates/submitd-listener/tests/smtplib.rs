//! End to end through the listener with Python's smtplib over real TLS on
//! loopback: implicit TLS and STARTTLS, AUTH PLAIN and LOGIN, a wrong
//! password, spoofed envelope and header senders, AUTH not offered before
//! TLS; then the relay delivers what was accepted into a Maildir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use submitd_auth::{
    hash_password, CredentialStore, PasswordChecker, RateLimiter, SendingLimits, Throttle,
    ThrottleConfig,
};
use submitd_listener::{serve, server_tls_config, ConnectionLimits, Services};
use submitd_relay::{Maildir, Relay, RelayConfig, RetryPolicy, Route, Spool};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_submits_over_implicit_tls_and_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert_pem, key_pem) = ca.issue_pem(&["localhost"]);
    let (cert, key, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!(
            "alice {} send-as=alice@example.org\n",
            hash_password(b"pw").unwrap()
        ),
    )
    .unwrap();

    let (credentials, errors) = CredentialStore::open(&users).unwrap();
    assert!(errors.is_empty());
    let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
    let maildir = Maildir::open(dir.path().join("Maildir")).unwrap();
    let relay = Relay::new(
        spool.clone(),
        RelayConfig {
            hostname: "mx.test".into(),
            route: Route::Maildir(maildir.clone()),
            policy: RetryPolicy::default(),
        },
    );
    let services = Arc::new(Services {
        hostname: "mx.test".into(),
        credentials: Arc::new(credentials),
        checker: Arc::new(PasswordChecker::new(2).unwrap()),
        throttle: Arc::new(Mutex::new(Throttle::new(ThrottleConfig {
            base_delay: Duration::from_millis(10),
            ..ThrottleConfig::default()
        }))),
        rate: Arc::new(RateLimiter::new()),
        default_limits: SendingLimits::defaults(),
        spool: spool.clone(),
        relay: relay.clone(),
        privacy: false,
        handshake_timeout: Duration::from_secs(5),
    });
    let (tls, _certs) = server_tls_config(&cert, &key).unwrap();
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
            },
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

    // One address may hold 3 connections here; a fourth is closed at once.
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
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the fourth connection from one address is refused");
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
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", implicit_port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
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

//! The whole path with programs the project did not write: the real
//! `submitd` binary on loopback, mail submitted by swaks, msmtp, curl,
//! lettre and Python's smtplib, each over 465-style implicit TLS and over
//! 587-style STARTTLS, every certificate verified against a test CA; then
//! relayed by submitd over implicit TLS with AUTH to aiosmtpd (a
//! third-party SMTP server), where each message must arrive byte for byte
//! as sent, after the one Received line submitd adds. `openssl s_client`
//! checks the TLS versions and suites offered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require, start_upstream, Daemon};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";

/// The message each client sends: a dot at the start of lines (stuffing),
/// 8-bit text, a 900-octet line, all headers present so that submitd adds
/// only its Received line.
fn message(client: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <alice@example.org>\r\n\
         To: bob@example.net\r\n\
         Subject: sent with {client}\r\n\
         Message-ID: <{client}@client.test>\r\n\
         Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         .a line that starts with a dot\r\n\
         ..and one with two\r\n\
         caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e\r\n"
    )
    .into_bytes();
    m.extend(std::iter::repeat_n(b'x', 900));
    m.extend_from_slice(b"\r\n.\r\nend\r\n");
    m
}

fn run(name: &str, command: &mut Command, stdin: Option<&[u8]>) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write_message(dir: &Path, client: &str) -> PathBuf {
    let path = dir.join(format!("{client}.eml"));
    std::fs::write(&path, message(client)).unwrap();
    path
}

fn swaks(dir: &Path, ca: &Path, port: u16, implicit: bool) -> String {
    require("swaks", "apt-get install swaks");
    let client = format!("swaks-{}", if implicit { "465" } else { "587" });
    // swaks sends CRLF . CRLF after the data whatever it ends with: give
    // it the message without its last CRLF, so the wire has it exactly.
    let file = dir.join(format!("{client}.eml"));
    let bytes = message(&client);
    std::fs::write(&file, &bytes[..bytes.len() - 2]).unwrap();
    let mut command = Command::new("swaks");
    command
        .args(["--server", "localhost", "--port", &port.to_string()])
        .arg(if implicit {
            "--tls-on-connect"
        } else {
            "--tls"
        })
        .arg("--tls-verify")
        .arg("--tls-ca-path")
        .arg(ca)
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
        ])
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .arg("--data")
        .arg(format!("@{}", file.display()));
    run(&client, &mut command, None);
    client
}

fn msmtp(_dir: &Path, ca: &Path, port: u16, implicit: bool) -> String {
    require("msmtp", "apt-get install msmtp");
    let client = format!("msmtp-{}", if implicit { "465" } else { "587" });
    let mut command = Command::new("msmtp");
    command
        .arg("--file=/dev/null")
        .args(["--host=localhost", &format!("--port={port}"), "--tls=on"])
        .arg(format!(
            "--tls-starttls={}",
            if implicit { "off" } else { "on" }
        ))
        .arg(format!("--tls-trust-file={}", ca.display()))
        .args(["--auth=login", &format!("--user={USER}")])
        .arg(format!("--passwordeval=echo '{PASSWORD}'"))
        .args(["--from=alice@example.org", "bob@example.net"]);
    run(&client, &mut command, Some(&message(&client)));
    client
}

fn curl(dir: &Path, ca: &Path, port: u16, implicit: bool) -> String {
    require("curl", "apt-get install curl");
    let client = format!("curl-{}", if implicit { "465" } else { "587" });
    let file = write_message(dir, &client);
    let scheme = if implicit { "smtps" } else { "smtp" };
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--ssl-reqd"])
        .arg("--cacert")
        .arg(ca)
        .arg("--url")
        .arg(format!("{scheme}://localhost:{port}"))
        .args(["--user", &format!("{USER}:{PASSWORD}")])
        .args(["--mail-from", "alice@example.org"])
        .args(["--mail-rcpt", "bob@example.net"])
        .arg("--upload-file")
        .arg(&file);
    run(&client, &mut command, None);
    client
}

fn smtplib(_dir: &Path, ca: &Path, port: u16, implicit: bool) -> String {
    let client = format!("smtplib-{}", if implicit { "465" } else { "587" });
    let script = r#"
import smtplib, ssl, sys
ca, port, implicit, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
message = sys.stdin.buffer.read()
if implicit:
    s = smtplib.SMTP_SSL("localhost", port, context=ctx)
else:
    s = smtplib.SMTP("localhost", port)
    s.starttls(context=ctx)
s.login(user, password)
s.sendmail("alice@example.org", ["bob@example.net"], message)
s.quit()
"#;
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(script)
        .arg(ca)
        .arg(port.to_string())
        .arg(if implicit { "1" } else { "0" })
        .args([USER, PASSWORD]);
    run(&client, &mut command, Some(&message(&client)));
    client
}

fn lettre(_dir: &Path, ca: &Path, port: u16, implicit: bool) -> String {
    use lettre::address::Envelope;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::Transport;
    let client = format!("lettre-{}", if implicit { "465" } else { "587" });
    let root = Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(root)
        .build_rustls()
        .unwrap();
    let transport = lettre::SmtpTransport::builder_dangerous("localhost")
        .port(port)
        .tls(if implicit {
            Tls::Wrapper(tls)
        } else {
            Tls::Required(tls)
        })
        .credentials(Credentials::new(USER.into(), PASSWORD.into()))
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let envelope = Envelope::new(
        Some("alice@example.org".parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    // Like swaks, lettre ends DATA with CRLF . CRLF after the bytes given.
    let bytes = message(&client);
    transport
        .send_raw(&envelope, &bytes[..bytes.len() - 2])
        .unwrap_or_else(|e| panic!("{client}: {e}"));
    client
}

/// `openssl s_client` to `port`, verifying the certificate for
/// "localhost" against `ca`, with `args` after.
fn s_client_command(port: u16, ca: &Path, args: &[&std::ffi::OsStr]) -> Command {
    require("openssl", "apt-get install openssl");
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca)
        .args(args);
    command
}

fn both_outputs(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What `openssl s_client` makes of one handshake.
fn s_client(port: u16, ca: &Path, args: &[&str]) -> (bool, String) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let output = s_client_command(port, ca, &args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (output.status.success(), both_outputs(&output))
}

/// One `openssl s_client` handshake held open for a second (TLS 1.3
/// tickets come after the handshake), saving or resuming a session.
fn s_client_session(port: u16, ca: &Path, session: (&str, &Path), args: &[&str]) -> String {
    let mut all = vec![std::ffi::OsStr::new(session.0), session.1.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    let mut child = s_client_command(port, ca, &all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    drop(child.stdin.take());
    both_outputs(&child.wait_with_output().unwrap())
}

/// A second handshake resumes the first one's session: TLS 1.3 tickets,
/// TLS 1.2 tickets, TLS 1.2 session ids, on both listeners.
fn resumption_checks(ca: &Path, implicit: u16, starttls: u16) {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.pem");
    let cases: [(u16, &[&str], &str); 4] = [
        (implicit, &["-tls1_3"], "TLSv1.3"),
        (implicit, &["-tls1_2"], "TLSv1.2"),
        (implicit, &["-tls1_2", "-no_ticket"], "TLSv1.2"),
        (starttls, &["-starttls", "smtp"], "TLSv1.3"),
    ];
    for (port, args, version) in cases {
        let _ = std::fs::remove_file(&session);
        let first = s_client_session(port, ca, ("-sess_out", &session), args);
        assert!(
            first.contains(&format!("New, {version}")),
            "{args:?}: {first}"
        );
        let second = s_client_session(port, ca, ("-sess_in", &session), args);
        assert!(
            second.contains(&format!("Reused, {version}")),
            "{args:?} did not resume: {second}"
        );
    }
}

fn tls_checks(ca: &Path, implicit: u16, starttls: u16) {
    // Old versions: the client is let down to security level 0 so that it
    // really offers them, and the server must refuse.
    for version in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(implicit, ca, &[version, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "{version} was accepted:\n{text}");
        // Refused by the server (an alert), not by the client itself.
        assert!(
            text.contains("SSL alert number") && text.contains("Cipher is (NONE)"),
            "{version} not refused by the server:\n{text}"
        );
    }
    // TLS 1.2 without forward secrecy, or with CBC: no shared suite.
    for suite in ["AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA", "AES256-SHA"] {
        let (ok, text) = s_client(implicit, ca, &["-tls1_2", "-cipher", suite]);
        assert!(!ok, "TLS 1.2 suite {suite} was accepted:\n{text}");
    }
    let (ok, text) = s_client(implicit, ca, &["-tls1_2"]);
    assert!(
        ok && text.contains("New, TLSv1.2, Cipher is ECDHE-"),
        "{text}"
    );
    assert!(text.contains("GCM") || text.contains("CHACHA20"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let (ok, text) = s_client(implicit, ca, &["-tls1_3"]);
    assert!(
        ok && text.contains("New, TLSv1.3, Cipher is TLS_"),
        "{text}"
    );
    let (ok, text) = s_client(starttls, ca, &["-starttls", "smtp"]);
    assert!(ok && text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[test]
fn third_party_clients_submit_and_a_third_party_upstream_receives_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::certificates(d, &["submitd", "upstream"]);
    let ca_file = d.join("ca.pem");
    let upstream = start_upstream(d, &d.join("upstream.crt"), &d.join("upstream.key"));
    let hash = submitd_auth::hash_password(PASSWORD.as_bytes()).unwrap();
    std::fs::write(
        d.join("users"),
        format!("{USER} {hash} send-as=alice@example.org\n"),
    )
    .unwrap();
    common::password_file(&d.join("upstream.pass"), "secret");
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
hostname = "localhost"
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
[queue]
directory = "queue"
[[relay.upstream]]
host = "localhost"
port = {}
tls = "implicit"
username = "alice"
password_file = "upstream.pass"
ca_file = "ca.pem"
"#,
            upstream.port
        ),
    )
    .unwrap();

    // `check --connect` logs in to the real upstream first.
    let output = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["check", "--connect", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("connected, certificate verified, AUTH accepted for alice"),
        "{said}"
    );

    let daemon = common::start(Daemon::command(&config));
    let (implicit, starttls) = (daemon.implicit.unwrap(), daemon.starttls.unwrap());

    tls_checks(&ca_file, implicit, starttls);
    resumption_checks(&ca_file, implicit, starttls);

    type Client = fn(&Path, &Path, u16, bool) -> String;
    let clients: [Client; 5] = [swaks, msmtp, curl, smtplib, lettre];
    let mut sent = Vec::new();
    for client in clients {
        sent.push(client(d, &ca_file, implicit, true));
        sent.push(client(d, &ca_file, starttls, false));
    }

    // Every message arrives upstream, as sent after one added Received.
    let deadline = Instant::now() + Duration::from_secs(60);
    let arrived = loop {
        let files: Vec<PathBuf> = std::fs::read_dir(&upstream.out)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        if files.len() >= sent.len() {
            break files;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} arrived upstream:\n{}",
            files.len(),
            sent.len(),
            daemon.log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(arrived.len(), sent.len(), "no message arrives twice");
    for client in &sent {
        let original = message(client);
        let marker = format!("Message-ID: <{client}@client.test>");
        let found = arrived
            .iter()
            .find(|p| {
                std::fs::read(p)
                    .unwrap()
                    .windows(marker.len())
                    .any(|w| w == marker.as_bytes())
            })
            .unwrap_or_else(|| panic!("{client}: not upstream"));
        let bytes = std::fs::read(found).unwrap();
        assert!(
            bytes.ends_with(&original),
            "{client}: changed on the way:\n{}",
            String::from_utf8_lossy(&bytes)
        );
        let added = String::from_utf8_lossy(&bytes[..bytes.len() - original.len()]).into_owned();
        assert!(
            added.starts_with("Received: from ") && added.ends_with("\r\n"),
            "{client}: {added}"
        );
        assert_eq!(
            added.matches("Received:").count(),
            1,
            "{client}: only a Received line is added: {added}"
        );
        assert!(
            added.contains("by localhost (submitd)"),
            "{client}: {added}"
        );
        assert!(added.contains("with ESMTPSA id "), "{client}: {added}");
        let envelope: String = std::fs::read_to_string(found.with_extension("env")).unwrap();
        assert!(
            envelope.contains(r#""mail_from": "alice@example.org""#)
                && envelope.contains(r#""rcpt_tos": ["bob@example.net"]"#)
                && envelope.contains(r#""authenticated": true"#),
            "{client}: {envelope}"
        );
    }

    // Each message has one summary line when queued and one when done.
    for line in ["message accepted", "message delivered"] {
        let count = daemon.wait_count(&[line, "user=alice"], sent.len(), Duration::from_secs(10));
        assert_eq!(count, sent.len(), "log lines {line:?}");
    }
    // No password, in any form, in the log.
    let log = daemon.log.lock().unwrap().join("\n");
    for secret in [
        PASSWORD,
        "secret",
        "Y29ycmVjdCBob3JzZQ",
        "AGFsaWNlAGNvcnJlY3Q",
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log");
    }
    assert!(daemon.stop(), "clean stop on SIGTERM");
    // The queue is empty: everything was delivered and removed.
    let left: Vec<_> = std::fs::read_dir(d.join("queue/msg")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

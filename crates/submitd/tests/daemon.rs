//! The real `submitd` binary on loopback: first run of a demo config
//! (certificate and user created), a message sent with Python's smtplib
//! over implicit TLS verified against the demo certificate, delivered into
//! the Maildir, and a clean stop on SIGTERM, with sd_notify READY and
//! STOPPING sent to a stand-in for systemd's socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
hostname = "localhost"
demo = true
[[listen]]
address = "127.0.0.1:0"
mode = "implicit"
[[listen]]
address = "127.0.0.1:0"
mode = "starttls"
[tls]
certificate = "demo/cert.pem"
key = "demo/key.pem"
[auth]
users = "demo/users"
[queue]
directory = "demo/queue"
[relay]
maildir = "demo/Maildir"
"#;

#[test]
fn demo_config_runs_accepts_delivers_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("submitd.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // Stand in for systemd's notify socket.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut password = None;
    let mut implicit = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(rest) = line.split("with password \"").nth(1) {
            password = rest.split('"').next().map(str::to_owned);
        }
        if line.contains("listening") && line.contains("mode=Implicit") {
            implicit = line
                .split("address=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .map(str::to_owned);
        }
        if line.ends_with(" ready") {
            break;
        }
    }
    let (password, implicit) = (
        password.expect("demo password printed"),
        implicit.expect("listening line"),
    );
    let mut datagram = [0u8; 256];
    let n = notify.recv(&mut datagram).unwrap();
    assert_eq!(&datagram[..n], b"READY=1\n", "sd_notify READY");
    let port = implicit.rsplit(':').next().unwrap();
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
with smtplib.SMTP_SSL("localhost", int(sys.argv[2]), context=ctx) as s:
    s.login("demo", sys.argv[3])
    s.sendmail("demo@example.org", ["you@example.net"], "From: demo@example.org\r\nSubject: e2e\r\n\r\nbody\r\n")
print("sent")
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path().join("demo/cert.pem"))
        .arg(port)
        .arg(&password)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Delivered into the Maildir shortly after the 250 (the relay is woken).
    let new = dir.path().join("demo/Maildir/new");
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        let files: Vec<_> = std::fs::read_dir(&new)
            .map(|d| d.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if let Some(file) = files.first() {
            break std::fs::read_to_string(file.path()).unwrap();
        }
        assert!(Instant::now() < deadline, "not delivered in time");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        delivered.ends_with("From: demo@example.org\r\nSubject: e2e\r\n\r\nbody\r\n"),
        "{delivered}"
    );
    assert!(delivered.contains("with ESMTPSA id "));

    // SIGTERM: a clean stop.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(35);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let n = notify.recv(&mut datagram).unwrap();
    assert_eq!(&datagram[..n], b"STOPPING=1\n", "sd_notify STOPPING");
    // The demo wrote exactly one user.
    let users = std::fs::read_to_string(dir.path().join("demo/users")).unwrap();
    assert_eq!(users.lines().filter(|l| l.starts_with("demo ")).count(), 1);
}

#[test]
fn config_errors_name_the_file_and_key_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        CONFIG.replace("mode = \"implicit\"", "mode = \"ssl\""),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("unknown variant `ssl`"),
        "{stderr}"
    );
}

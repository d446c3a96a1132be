//! The real `submitd` binary on loopback: first run of a demo config
//! (certificate and user created), a message sent with Python's smtplib
//! over implicit TLS verified against the demo certificate, delivered into
//! the Maildir, and a clean stop on SIGTERM, with sd_notify READY and
//! STOPPING sent to a stand-in for systemd's socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
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
    let mut command = common::Daemon::command(&config);
    command.env("NOTIFY_SOCKET", &notify_path);
    let daemon = common::start(command);
    let password = daemon
        .said
        .iter()
        .find_map(|line| line.split("with password \"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("demo password printed")
        .to_owned();
    let port = daemon
        .implicit
        .expect("an implicit-TLS listener")
        .to_string();
    let mut datagram = [0u8; 256];
    let n = notify.recv(&mut datagram).unwrap();
    assert_eq!(&datagram[..n], b"READY=1\n", "sd_notify READY");
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
        .arg(&port)
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
    assert!(daemon.stop(), "a clean stop on SIGTERM");
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

/// Two free loopback ports (bound, learned, released).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// Socket activation with systemd's own tool: `systemd-socket-activate`
/// binds the ports and passes them, as submitd.socket does; submitd takes
/// them by address (no bind of its own) and serves the first client, who
/// connected before submitd even ran.
#[test]
fn socket_activation_takes_the_passed_sockets_by_address() {
    common::require("systemd-socket-activate", "apt-get install systemd");
    let dir = tempfile::tempdir().unwrap();
    let (implicit, starttls) = free_ports();
    let config = dir.path().join("submitd.toml");
    let text = CONFIG
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{implicit}"), 1)
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{starttls}"), 1);
    std::fs::write(&config, &text).unwrap();
    let mut command = Command::new("systemd-socket-activate");
    command
        .args(["-l", &format!("127.0.0.1:{implicit}")])
        .args(["-l", &format!("127.0.0.1:{starttls}")])
        .arg(env!("CARGO_BIN_EXE_submitd"))
        .args(["serve", "--config"])
        .arg(&config);
    // The first client connects while only systemd's stand-in listens: it
    // is greeted once submitd has started and taken the socket.
    let client = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
code, _ = s.ehlo("early.example")
print(code, s.has_extn("starttls"))
s.quit()
"#;
        loop {
            let output = Command::new("python3")
                .args(["-c", script, &starttls.to_string()])
                .output()
                .unwrap();
            if output.status.success() || Instant::now() > deadline {
                return String::from_utf8_lossy(&output.stdout).trim().to_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let daemon = common::start(command);
    assert_eq!(client.join().unwrap(), "250 True");
    assert_eq!(daemon.implicit, Some(implicit));
    assert_eq!(daemon.starttls, Some(starttls));
    let log = daemon.log.lock().unwrap().join("\n");
    assert_eq!(
        log.matches("using the socket passed by systemd").count(),
        2,
        "{log}"
    );
    assert!(daemon.stop());

    // A passed socket that the config does not name is refused at start.
    let (other, _) = free_ports();
    let one = text.replacen(
        &format!("[[listen]]\naddress = \"127.0.0.1:{starttls}\"\nmode = \"starttls\"\n"),
        "",
        1,
    );
    assert_ne!(one, text);
    std::fs::write(&config, one).unwrap();
    let child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{implicit}")])
        .args(["-l", &format!("127.0.0.1:{other}")])
        .arg(env!("CARGO_BIN_EXE_submitd"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Activation happens on the first connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", other)).is_err() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate not listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "systemd passed a socket on 127.0.0.1:{other}, but no [[listen]] has address"
        )),
        "{stderr}"
    );
}

/// The SHA-256 fingerprint of the certificate served on `port`, by
/// `openssl s_client`.
fn served_fingerprint(port: u16, ca: &std::path::Path) -> String {
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            ca.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&served.stdout).trim().to_owned()
}

/// SIGHUP reads the certificate again: new connections get the new one,
/// a session open across the reload goes on and delivers, and a broken
/// new certificate keeps the one in force (and the log says why).
#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions() {
    common::require("openssl", "apt-get install openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = submitd_testkit::TestCa::new();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    let write_pair = |(cert, key): (String, String)| {
        std::fs::write(d.join("cert.pem"), cert).unwrap();
        std::fs::write(d.join("key.pem"), key).unwrap();
    };
    write_pair(ca.issue_pem(&["localhost"]));
    let hash = submitd_auth::hash_password(b"pw").unwrap();
    std::fs::write(
        d.join("users"),
        format!("alice {hash} send-as=alice@example.org\n"),
    )
    .unwrap();
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        "hostname = \"localhost\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"implicit\"\n\
         [tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nusers = \"users\"\n\
         [queue]\ndirectory = \"queue\"\n[relay]\nmaildir = \"Maildir\"\n",
    )
    .unwrap();
    let daemon = common::start(common::Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    let before = served_fingerprint(port, &d.join("ca.pem"));
    assert!(before.contains("Fingerprint="), "{before}");

    // A session that logs in before the reload and sends after it.
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = smtplib.SMTP_SSL("localhost", int(sys.argv[2]), context=ctx)
s.login("alice", "pw")
print("ready", flush=True)
sys.stdin.readline()
s.sendmail("alice@example.org", ["bob@example.net"], "From: alice@example.org\r\nSubject: across\r\n\r\nbody\r\n")
s.quit()
print("sent", flush=True)
"#;
    let mut session = Command::new("python3")
        .args(["-c", script])
        .arg(d.join("ca.pem"))
        .arg(port.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(session.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    write_pair(ca.issue_pem(&["localhost"]));
    common::signal(daemon.child.id(), "HUP");
    assert!(daemon.wait_log("certificates reloaded", Duration::from_secs(10)));
    let after = served_fingerprint(port, &d.join("ca.pem"));
    assert!(
        after.contains("Fingerprint=") && after != before,
        "{before} / {after}"
    );

    // The old session goes on.
    use std::io::Write;
    session.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "sent");
    assert!(session.wait().unwrap().success());

    // A broken certificate keeps the one in force.
    std::fs::write(d.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    common::signal(daemon.child.id(), "HUP");
    assert!(daemon.wait_log("the old one stays", Duration::from_secs(10)));
    assert_eq!(served_fingerprint(port, &d.join("ca.pem")), after);
    assert!(daemon.stop());
}

#[test]
fn json_logs_carry_the_same_fields() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::certificates(d, &["submitd"]);
    common::alice(d);
    let config = common::config(
        d,
        "queue",
        "[relay]\nmaildir = \"Maildir\"\n[log]\nformat = \"json\"\n",
    );
    let mut child = common::Daemon::command(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let next = |lines: &mut Vec<serde_json::Value>| {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line");
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(value.get(field).is_some(), "no {field}: {line}");
        }
        lines.push(value.clone());
        value
    };
    let mut port = None;
    loop {
        let value = next(&mut lines);
        if value["message"] == "listening" && value["mode"] == "implicit" {
            let address = value["address"].as_str().unwrap();
            port = address.rsplit(':').next().unwrap().parse::<u16>().ok();
        }
        if value["message"] == "ready" {
            break;
        }
    }
    let port = port.expect("a listening line with address and mode");
    let script = "import smtplib, ssl, sys\n\
        s = smtplib.SMTP_SSL('localhost', int(sys.argv[1]), context=ssl.create_default_context(cafile=sys.argv[2]), timeout=30)\n\
        try:\n  s.login('alice', 'wrong')\n\
        except smtplib.SMTPAuthenticationError as e:\n  print(e.smtp_code)\n";
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .arg(d.join("ca.pem"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "535");
    // The fail2ban line, whole, as the message; a session line with its
    // fields as fields.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut failure, mut session) = (false, false);
    while !(failure && session) {
        assert!(Instant::now() < deadline, "lines missing: {lines:?}");
        let value = next(&mut lines);
        failure |= value["message"]
            == "authentication failed: client=127.0.0.1 user=\"alice\" mechanism=PLAIN";
        session |= value["message"] == "session ended" && value["client"].is_string();
    }
    common::signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

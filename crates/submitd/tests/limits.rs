//! Connection limits against the real daemon, as an office behind one NAT
//! address meets them: with the default config, as many sessions from one
//! address as the per-client default allows all log in and deliver, and
//! each connection past it reads `421 4.7.0` (inside TLS) instead of a
//! bare reset. The client is Python's smtplib.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use submitd_listener::ConnectionLimits;

/// Opens HELD sessions (logged in), then EXTRA more, each of which must
/// be refused with 421 at connect; then every held session sends one
/// message. Prints one line per outcome.
const SCRIPT: &str = r#"
import smtplib, ssl, sys
port, ca, held_count, extra = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
held = []
for i in range(held_count):
    s = smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=30)
    s.login("alice", "pw")
    held.append(s)
print("held", len(held))
for i in range(extra):
    try:
        s = smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=30)
        print("served")
        s.quit()
    except smtplib.SMTPConnectError as e:
        print("refused", e.smtp_code, e.smtp_error.decode())
sent = 0
for i, s in enumerate(held):
    s.sendmail("alice@example.org", ["bob@example.net"],
               "From: alice@example.org\r\nSubject: %d\r\n\r\nhello\r\n" % i)
    s.quit()
    sent += 1
print("sent", sent)
"#;

#[test]
fn one_address_gets_its_share_and_the_rest_read_421() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Default limits: no [limits] section at all.
    let daemon = common::start_maildir(d);
    let port = daemon.implicit.unwrap();
    let per_client = ConnectionLimits::default().per_client;
    assert!(per_client >= 60, "an office of 60 fits the default");
    let extra = 21;
    let output = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(port.to_string())
        .arg(d.join("ca.pem"))
        .arg(per_client.to_string())
        .arg(extra.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("held {per_client}"));
    let refusals = &lines[1..=extra];
    for line in refusals {
        assert_eq!(
            *line,
            "refused 421 4.7.0 localhost Too many connections from your address, try again later"
        );
    }
    assert_eq!(lines[extra + 1], format!("sent {per_client}"));
    // Every message delivered; every refusal logged.
    let delivered = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let count = || {
        std::fs::read_dir(d.join("Maildir/new"))
            .map(|e| e.count())
            .unwrap_or(0)
    };
    while count() < per_client && std::time::Instant::now() < delivered {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(count(), per_client);
    // Logged, at most a line a second, each with the count since the last.
    let logged = || -> u64 {
        daemon
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("connection refused") && l.contains("from one client"))
            .filter_map(|l| {
                l.split("refused=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let flushed = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while logged() < extra as u64 && std::time::Instant::now() < flushed {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(logged(), extra as u64);
    assert!(daemon.stop());
}

//! Slow clients against the real daemon with its default limits: 100
//! connections that never finish the TLS handshake and 100 that trickle a
//! command after it, from 5 addresses, reconnecting whenever they are
//! closed (`scripts/slowloris.py`, briefly). A legitimate client must
//! still log in and send within a few seconds, every time: from an
//! address that logged in before and from one that never did. The larger
//! run (1,000 connections from 100 addresses) and its figures are in
//! `docs/security.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn a_legitimate_client_gets_through_slow_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let daemon = common::start_maildir(d);
    let port = daemon.implicit.unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slowloris.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(d.join("ca.pem"))
        .args(["alice", "pw"])
        .args([
            "--handshakes",
            "100",
            "--tricklers",
            "100",
            "--addresses",
            "5",
        ])
        .args(["--seconds", "20", "--legit", "5", "--fresh", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    for summary in ["known: 5 ok, 0 failed", "fresh: 5 ok, 0 failed"] {
        assert!(stdout.lines().any(|l| l.starts_with(summary)), "{stdout}");
    }
    for line in stdout.lines().filter(|l| l.contains(" ok ")) {
        let seconds: f64 = line[9..].trim_end_matches(" s").parse().unwrap();
        assert!(
            seconds < 5.0,
            "a legitimate session took {seconds} s: {line}"
        );
    }
    assert!(daemon.stop());
}

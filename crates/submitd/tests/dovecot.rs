//! Users and passwords from a real Dovecot (`dovecot-core`, started by the
//! test with a passwd-file passdb, hashes as `doveadm pw` makes them): the
//! same users log in to submitd unchanged, with the credential file giving
//! only sender policy; a wrong password or unknown user is 535; a stopped
//! Dovecot or a socket that never answers is 454 4.7.0, never a login and
//! never a crash; `check` probes the socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{doveadm_hash, require, start_dovecot, Daemon};

/// Logs in over implicit TLS with smtplib and tries to send as `from`;
/// prints the AUTH code, then the MAIL code (or "-").
fn attempt(d: &Path, port: u16, user: &str, password: &str, from: &str) -> String {
    let script = r#"
import smtplib, ssl, sys
ca, port, user, password, sender = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP_SSL("localhost", int(port), context=ctx, timeout=30) as s:
    s.ehlo()
    code, text = s.docmd("AUTH", "PLAIN " + __import__("base64").b64encode(("\0%s\0%s" % (user, password)).encode()).decode())
    if code != 235:
        print(code, text.decode().split(" ")[0])
        sys.exit(0)
    code, _ = s.docmd("MAIL", "FROM:<%s>" % sender)
    print(235, code)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(d.join("ca.pem"))
        .arg(port.to_string())
        .args([user, password, from])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn dovecot_users_log_in_unchanged_and_a_dead_dovecot_is_a_temporary_failure() {
    require("dovecot", "apt-get install dovecot-core");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = submitd_testkit::TestCa::new();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    let (cert, key) = ca.issue_pem(&["localhost"]);
    std::fs::write(d.join("cert.pem"), cert).unwrap();
    std::fs::write(d.join("key.pem"), key).unwrap();
    // Dovecot's users, as an existing setup has them.
    std::fs::write(
        d.join("passwd"),
        format!(
            "carol@example.org:{}\ndave:{}\n",
            doveadm_hash("SHA512-CRYPT", "carol's password"),
            doveadm_hash("ARGON2ID", "dave's password"),
        ),
    )
    .unwrap();
    // Policy only: dave (a bare login) may send as @example.net.
    std::fs::write(d.join("users"), "dave - send-as=@example.net\n").unwrap();
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"localhost\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"implicit\"\n\
             [tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n\
             [auth]\nusers = \"users\"\nbackend = \"dovecot\"\ndovecot_socket = \"{}\"\n\
             dovecot_timeout = \"10s\"\nfailure_delay = \"0s\"\n\
             [queue]\ndirectory = \"queue\"\n[relay]\nmaildir = \"Maildir\"\n",
            d.join("auth-client").display()
        ),
    )
    .unwrap();
    let dovecot = start_dovecot(d);

    let check = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("Dovecot answers on") && said.contains("offers PLAIN"),
        "{said}"
    );

    let daemon = common::start(Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    // Dovecot's users and hashes, unchanged.
    assert_eq!(
        attempt(
            d,
            port,
            "carol@example.org",
            "carol's password",
            "carol@example.org"
        ),
        "235 250"
    );
    assert_eq!(
        attempt(d, port, "dave", "dave's password", "dave@example.net"),
        "235 250"
    );
    // Policy: carol may send as her login only; dave as his file's domain.
    assert_eq!(
        attempt(
            d,
            port,
            "carol@example.org",
            "carol's password",
            "ceo@example.org"
        ),
        "235 550"
    );
    assert_eq!(
        attempt(d, port, "dave", "dave's password", "dave@example.org"),
        "235 550"
    );
    // Wrong password and unknown user: the same 535.
    let wrong = attempt(d, port, "carol@example.org", "wrong", "carol@example.org");
    assert_eq!(
        wrong,
        "535 5.7.8",
        "{}",
        daemon.log.lock().unwrap().join("\n")
    );
    assert_eq!(
        attempt(d, port, "nobody@example.org", "wrong", "nobody@example.org"),
        "535 5.7.8"
    );

    // Dovecot stops: a temporary failure, and submitd carries on.
    drop(dovecot);
    assert_eq!(
        attempt(
            d,
            port,
            "carol@example.org",
            "carol's password",
            "carol@example.org"
        ),
        "454 4.7.0"
    );
    // A socket that accepts and never answers: bounded by dovecot_timeout.
    let _ = std::fs::remove_file(d.join("auth-client"));
    let mute = std::os::unix::net::UnixListener::bind(d.join("auth-client")).unwrap();
    let start = Instant::now();
    assert_eq!(
        attempt(
            d,
            port,
            "carol@example.org",
            "carol's password",
            "carol@example.org"
        ),
        "454 4.7.0"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    drop(mute);
    // Dovecot back: logins work again.
    let _dovecot = start_dovecot(d);
    assert_eq!(
        attempt(
            d,
            port,
            "carol@example.org",
            "carol's password",
            "carol@example.org"
        ),
        "235 250"
    );
    assert!(daemon.wait_log("Dovecot auth unavailable", Duration::from_secs(1)));
    assert!(daemon.stop());
}

//! User management as a provisioning script drives it, with no terminal:
//! `--password-stdin` for `user add`, `user passwd` and `hash-password`,
//! `user app-password --quiet`, `user list --json`; the password the
//! script gave is the one the running daemon then takes (Python's
//! smtplib logs in with it). A terminal on standard input (a pty) is
//! refused, since the password would echo there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// `submitd -c CONFIG ARGS` with `stdin` on standard input.
fn submitd(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_submitd"));
    command.arg("--config").arg(config).args(args);
    common::run_with_input(command, stdin)
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn users_json(config: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&submitd(config, &["user", "list", "--json"], ""))).unwrap()
}

/// Logs in as `user` with `password` on the daemon's implicit port;
/// prints the reply code.
fn login(port: u16, ca: &Path, user: &str, password: &str) -> String {
    let script = "import smtplib, ssl, sys\n\
        s = smtplib.SMTP_SSL('localhost', int(sys.argv[1]), context=ssl.create_default_context(cafile=sys.argv[2]), timeout=30)\n\
        try:\n  print(s.login(sys.argv[3], sys.argv[4])[0])\n\
        except smtplib.SMTPAuthenticationError as e:\n  print(e.smtp_code)\n";
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .arg(ca)
        .args([user, password])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn scripts_manage_users_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::certificates(d, &["submitd"]);
    std::fs::write(d.join("users"), "").unwrap();
    let config = common::config(d, "queue", "[relay]\nmaildir = \"Maildir\"\n");

    // Added from a pipe (CRLF or LF), listed as JSON.
    ok(&submitd(
        &config,
        &[
            "user",
            "add",
            "alice",
            "--send-as",
            "alice@example.org",
            "--send-as",
            "@example.net",
            "--password-stdin",
        ],
        "first secret\r\n",
    ));
    ok(&submitd(
        &config,
        &["user", "add", "bob", "--password-stdin"],
        "bob's secret\n",
    ));
    let list = users_json(&config);
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["password"], true);
    assert_eq!(
        list[0]["send_as"],
        serde_json::json!(["alice@example.org", "@example.net"])
    );
    assert_eq!(list[1]["name"], "bob");

    // An app password printed alone with --quiet, with a sentence without.
    let quiet = ok(&submitd(
        &config,
        &["user", "app-password", "alice", "phone", "--quiet"],
        "",
    ));
    let app_password = quiet.trim().to_owned();
    assert_eq!(quiet.lines().count(), 1);
    assert!(
        app_password.len() >= 16 && !app_password.contains(' '),
        "{quiet}"
    );
    let told = ok(&submitd(
        &config,
        &["user", "app-password", "alice", "laptop"],
        "",
    ));
    assert!(
        told.starts_with("app password for alice on \"laptop\""),
        "{told}"
    );
    assert_eq!(
        users_json(&config)[0]["app_passwords"],
        serde_json::json!(["phone", "laptop"])
    );

    // The password changed from a pipe.
    ok(&submitd(
        &config,
        &["user", "passwd", "alice", "--password-stdin"],
        "second secret\n",
    ));

    // hash-password from a pipe gives a hash the daemon takes.
    let hash = ok(&submitd(
        &config,
        &["hash-password", "--password-stdin"],
        "carol's secret\n",
    ));
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let mut users = std::fs::read_to_string(d.join("users")).unwrap();
    users.push_str(&format!("carol {hash} send-as=carol@example.org\n"));
    std::fs::write(d.join("users"), users).unwrap();

    // Refusals: an empty first line; no user.
    let empty = submitd(
        &config,
        &["user", "passwd", "alice", "--password-stdin"],
        "\nmore\n",
    );
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr)
        .contains("the first line of standard input is empty"));
    let nobody = submitd(
        &config,
        &["user", "passwd", "nobody", "--password-stdin"],
        "x\n",
    );
    assert!(!nobody.status.success());

    // The daemon takes exactly what the scripts set.
    let daemon = common::start(common::Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    let ca = d.join("ca.pem");
    assert_eq!(login(port, &ca, "alice", "second secret"), "235");
    assert_eq!(login(port, &ca, "alice", "first secret"), "535");
    assert_eq!(login(port, &ca, "alice", &app_password), "235");
    assert_eq!(login(port, &ca, "bob", "bob's secret"), "235");
    assert_eq!(login(port, &ca, "carol", "carol's secret"), "235");
    assert!(daemon.stop());
}

#[test]
fn a_terminal_on_standard_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("users"), "").unwrap();
    let config = common::config(d, "queue", "[relay]\nmaildir = \"Maildir\"\n");
    // A pty as standard input, as when someone types the command.
    let script = "import os, pty, sys\n\
        pid, fd = pty.fork()\n\
        if pid == 0:\n  os.execv(sys.argv[1], sys.argv[1:])\n\
        out = b''\n\
        while True:\n  \
          try:\n    chunk = os.read(fd, 4096)\n  \
          except OSError:\n    break\n  \
          if not chunk:\n    break\n  \
          out += chunk\n\
        _, status = os.waitpid(pid, 0)\n\
        print(os.waitstatus_to_exitcode(status))\n\
        print(out.decode())\n";
    let out = Command::new("python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_submitd"), "--config"])
        .arg(&config)
        .args(["user", "add", "alice", "--password-stdin"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("2\n"), "{said}");
    assert!(said.contains("standard input is a terminal"), "{said}");
    assert_eq!(std::fs::read_to_string(d.join("users")).unwrap(), "");
}

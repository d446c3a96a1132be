//! `submitd sendmail` for the machine's own cron jobs and scripts, against
//! the real daemon's local socket: cron's own way of calling it, `-t`,
//! `-f`, a `sendmail` symlink; each local user known by the socket's peer
//! credentials (root, and nobody by `setpriv`), sending only as what the
//! policy gives them; a stopped daemon is a temporary failure (75).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{require, Daemon};

fn sendmail(program: &Path, config: &Path, as_nobody: bool, args: &[&str], input: &str) -> Output {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    if program.file_name().is_some_and(|n| n != "sendmail") {
        command.arg("sendmail");
    }
    command.arg("--config").arg(config).args(args);
    common::run_with_input(command, input)
}

fn delivered(maildir: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let files: Vec<String> = std::fs::read_dir(maildir.join("new"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if files.len() >= count || Instant::now() > deadline {
            return files;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn local_users_send_as_themselves_through_the_local_socket() {
    require("setpriv", "apt-get install util-linux");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // nobody must reach the config and the socket, as on a real system.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = submitd_testkit::TestCa::new();
    let (cert, key) = ca.issue_pem(&["localhost"]);
    std::fs::write(d.join("cert.pem"), cert).unwrap();
    std::fs::write(d.join("key.pem"), key).unwrap();
    std::fs::write(d.join("users"), "nobody - send-as=alerts@example.net\n").unwrap();
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mail.example.org\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"implicit\"\n\
             [tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nusers = \"users\"\n\
             [queue]\ndirectory = \"queue\"\n[relay]\nmaildir = \"Maildir\"\n\
             [local]\nsocket = \"{}\"\ndomain = \"example.org\"\n",
            d.join("submit.sock").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let submitd = Path::new(env!("CARGO_BIN_EXE_submitd"));

    // No daemon yet: a temporary failure, said plainly.
    let down = sendmail(submitd, &config, false, &["root"], "Subject: x\n\nx\n");
    assert_eq!(
        down.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach submitd"));

    let daemon = common::start(Daemon::command(&config));
    // Exactly as Debian's cron calls it.
    let cron = sendmail(
        submitd,
        &config,
        false,
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@box> backup\n\nbackup done\n.\nstill the body\n",
    );
    assert!(
        cron.status.success(),
        "{}",
        String::from_utf8_lossy(&cron.stderr)
    );
    let mail = delivered(&d.join("Maildir"), 1);
    let text = &mail[0];
    assert!(
        text.starts_with("Return-Path: <root@example.org>"),
        "{text}"
    );
    assert!(
        text.contains("From: root@example.org (Cron Daemon)\r\nTo: root@example.org\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("backup done\r\n.\r\nstill the body\r\n"),
        "{text}"
    );
    assert!(
        text.contains("with ESMTPA id ") && !text.contains("127.0.0.1"),
        "{text}"
    );

    // -t and a `sendmail` symlink; Bcc: goes, its recipient gets it.
    let link = d.join("sendmail");
    std::os::unix::fs::symlink(submitd, &link).unwrap();
    let t = sendmail(
        &link,
        &config,
        false,
        &["-t"],
        "From: root\nTo: ops@example.net\nBcc: boss@example.net\nSubject: t\n\nhi\n",
    );
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let mail = delivered(&d.join("Maildir"), 2);
    let t_mail = mail.iter().find(|m| m.contains("Subject: t\r\n")).unwrap();
    assert!(!t_mail.contains("boss"), "Bcc removed: {t_mail}");
    assert!(daemon.wait_log("recipients=2", Duration::from_secs(5)));

    // root may not send as someone else.
    let spoof = sendmail(
        submitd,
        &config,
        false,
        &["-f", "ceo@example.org", "x@example.net"],
        "Subject: s\n\ns\n",
    );
    assert_eq!(spoof.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&spoof.stderr).contains("550 5.7.1"));

    // nobody is nobody: only what the credential file gives them.
    let alert = sendmail(
        submitd,
        &config,
        true,
        &["-f", "alerts@example.net", "ops@example.net"],
        "From: alerts@example.net\nSubject: a\n\ndisk\n",
    );
    assert!(
        alert.status.success(),
        "{}",
        String::from_utf8_lossy(&alert.stderr)
    );
    let plain = sendmail(
        submitd,
        &config,
        true,
        &["ops@example.net"],
        "Subject: n\n\nn\n",
    );
    assert_eq!(
        plain.status.code(),
        Some(69),
        "nobody@example.org is not in nobody's send-as"
    );
    let as_root = sendmail(
        submitd,
        &config,
        true,
        &["-f", "root@example.org", "ops@example.net"],
        "Subject: r\n\nr\n",
    );
    assert_eq!(as_root.status.code(), Some(69));
    let mail = delivered(&d.join("Maildir"), 3);
    assert_eq!(mail.len(), 3);
    assert!(mail
        .iter()
        .any(|m| m.starts_with("Return-Path: <alerts@example.net>")));
    assert!(daemon.wait_log("user=nobody", Duration::from_secs(5)));
    assert!(daemon.stop());
    assert!(
        !d.join("submit.sock").exists(),
        "the socket is removed on stop"
    );
}

//! `submitd import-postfix` on real Postfix configs (`tests/postfix/`):
//! Debian 12's default main.cf and master.cf with the submission stanza
//! Debian ships commented out, and a self-hoster's setup on top (Dovecot
//! SASL, a smarthost on 465 with an account, sender login maps, a Gmail
//! account for one sender). The second one's output, with only the paths
//! of this machine put in (certificate, ports, Dovecot's socket, the
//! smarthosts' addresses), runs a daemon that logs in Dovecot's users and
//! delivers each sender through the smarthost Postfix used for them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{doveadm_hash, require, start_dovecot, start_upstream_as, Daemon};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/postfix")
        .join(name)
}

fn import(from: &Path, out: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["import-postfix", "--postfix-dir"])
        .arg(from)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    said
}

#[test]
fn debian_default_with_its_submission_stanza() {
    let dir = tempfile::tempdir().unwrap();
    let said = import(&sample("debian-default"), dir.path());
    let config = std::fs::read_to_string(dir.path().join("submitd.toml")).unwrap();
    assert!(
        config.contains("address = \"[::]:587\"\nmode = \"starttls\""),
        "{config}"
    );
    assert!(config.contains("hostname = \"debian\""));
    assert!(
        !config.contains(":25\""),
        "port 25 is not carried: {config}"
    );
    for expected in [
        "master.cf smtp: port 25 is the MX service",
        "smtpd_sasl_type: cyrus: passwords cannot be read",
        "relayhost: empty",
        "snakeoil",
        "smtpd_recipient_restrictions=permit_sasl_authenticated,reject: submitd relays for authenticated users only",
        "mynetworks = 127.0.0.0/8",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }
    // A second run does not overwrite without --force.
    let again = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["import-postfix", "--postfix-dir"])
        .arg(sample("debian-default"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists; remove it or pass --force"));
    // The config is valid: `check` finds no config error (only the
    // certificate Debian points at, which this machine need not have).
    let check = Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["check", "--config"])
        .arg(dir.path().join("submitd.toml"))
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&check.stdout);
    assert!(
        checked.contains("ok: config"),
        "{checked}{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_self_hosters_setup_imports_and_runs() {
    require("dovecot", "apt-get install dovecot-core");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("submitd");
    let said = import(&sample("smarthost"), &out);
    for expected in [
        "[auth] backend = \"dovecot\", dovecot_socket = \"/var/spool/postfix/private/auth\"",
        "send-as= for 2 user(s)",
        "[[relay.upstream]] for [smtp.provider.example]:465",
        "[[relay.sender_upstream]] for 1 relay host(s)",
        "message_size = \"52428800\"",
        "[limits] connections_per_client = 10",
        "[queue] lifetime = \"3d\"",
        "smtpd_milters = inet:localhost:8891: milters are not supported",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }
    let written = std::fs::read_to_string(out.join("submitd.toml")).unwrap();
    assert!(
        written.contains("lifetime = \"3d\"") && written.contains("connections_per_client = 10"),
        "{written}"
    );
    let users = std::fs::read_to_string(out.join("users")).unwrap();
    assert!(
        users.contains("carol@example.org - send-as=@example.net,carol@example.org"),
        "{users}"
    );
    assert!(
        users.contains("dave - send-as=@example.net,dave@gmail.com"),
        "{users}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("upstream-1.pass"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // This machine's side: certificates, Dovecot, the two smarthosts.
    common::certificates(d, &["submitd", "up"]);
    std::fs::write(
        d.join("passwd"),
        format!(
            "carol@example.org:{}\ndave:{}\n",
            doveadm_hash("SHA512-CRYPT", "carol pw"),
            doveadm_hash("SHA512-CRYPT", "dave pw")
        ),
    )
    .unwrap();
    let _dovecot = start_dovecot(d);
    let (up_cert, up_key) = (d.join("up.crt"), d.join("up.key"));
    std::fs::create_dir_all(d.join("provider")).unwrap();
    std::fs::create_dir_all(d.join("gmail")).unwrap();
    // Each requires the account the Postfix maps gave for it.
    let provider = start_upstream_as(
        &d.join("provider"),
        &up_cert,
        &up_key,
        0,
        ("alice", "secret"),
    );
    let gmail = start_upstream_as(
        &d.join("gmail"),
        &up_cert,
        &up_key,
        0,
        ("dave@gmail.com", "app-specific-password"),
    );
    let config = std::fs::read_to_string(out.join("submitd.toml"))
        .unwrap()
        .replace("[::]:587", "127.0.0.1:0")
        .replace("[::]:465", "127.0.0.1:0")
        .replace(
            "/etc/ssl/certs/ssl-cert-snakeoil.pem",
            &d.join("submitd.crt").display().to_string(),
        )
        .replace(
            "/etc/ssl/private/ssl-cert-snakeoil.key",
            &d.join("submitd.key").display().to_string(),
        )
        .replace(
            "/var/spool/postfix/private/auth",
            &d.join("auth-client").display().to_string(),
        )
        .replace(
            "/var/lib/submitd/queue",
            &d.join("queue").display().to_string(),
        )
        .replace(
            "host = \"smtp.provider.example\"\nport = 465",
            &format!(
                "host = \"localhost\"\nport = {}\nca_file = {:?}",
                provider.port,
                d.join("ca.pem")
            ),
        )
        .replace(
            "host = \"smtp.gmail.com\"\nport = 465",
            &format!(
                "host = \"localhost\"\nport = {}\nca_file = {:?}",
                gmail.port,
                d.join("ca.pem")
            ),
        );
    std::fs::write(out.join("submitd.toml"), &config).unwrap();
    let daemon = common::start(Daemon::command(&out.join("submitd.toml")));
    let port = daemon.implicit.unwrap();

    let send = |user: &str, password: &str, from: &str| -> String {
        let script = r#"
import smtplib, ssl, sys
ca, port, user, password, sender = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP_SSL("localhost", int(port), context=ctx, timeout=30) as s:
    s.login(user, password)
    try:
        s.sendmail(sender, ["friend@example.com"], "From: %s\r\nSubject: imported\r\n\r\nhi\r\n" % sender)
        print("sent")
    except smtplib.SMTPSenderRefused as e:
        print(e.smtp_code)
"#;
        let o = Command::new("python3")
            .args(["-c", script])
            .arg(d.join("ca.pem"))
            .arg(port.to_string())
            .args([user, password, from])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(
        send("carol@example.org", "carol pw", "carol@example.org"),
        "sent"
    );
    assert_eq!(
        send("carol@example.org", "carol pw", "news@example.net"),
        "sent"
    );
    assert_eq!(send("dave", "dave pw", "dave@gmail.com"), "sent");
    assert_eq!(send("dave", "dave pw", "carol@example.org"), "550");

    let deadline = Instant::now() + Duration::from_secs(30);
    while provider.messages().len() < 2 || gmail.messages().is_empty() {
        assert!(
            Instant::now() < deadline,
            "provider {} gmail {}\n{}",
            provider.messages().len(),
            gmail.messages().len(),
            daemon.log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let from = |m: &Vec<u8>| {
        String::from_utf8_lossy(m)
            .lines()
            .find_map(|l| l.strip_prefix("From: ").map(str::to_owned))
            .unwrap_or_default()
    };
    let mut provider_from: Vec<String> = provider.messages().iter().map(from).collect();
    provider_from.sort();
    assert_eq!(provider_from, ["carol@example.org", "news@example.net"]);
    let gmail_from: Vec<String> = gmail.messages().iter().map(from).collect();
    assert_eq!(gmail_from, ["dave@gmail.com"]);
    assert!(daemon.stop());
}

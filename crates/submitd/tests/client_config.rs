//! `submitd client-config`, each output read by a real parser: the
//! autoconfig file by Python's XML parser, the SRV lines by BIND's
//! `named-checkzone` inside a zone, the Apple profile by Python's
//! `plistlib`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

fn client_config(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_submitd"))
        .arg("--config")
        .arg(config)
        .arg("client-config")
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Runs Python `code` with `input` on standard input; its output.
fn python(code: &str, input: &str) -> String {
    let mut command = Command::new("python3");
    command.args(["-c", code]);
    let out = common::run_with_input(command, input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_output_is_read_by_a_real_parser() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        "hostname = \"mail.example.org\"\n\
         [[listen]]\naddress = \"[::]:465\"\nmode = \"implicit\"\n\
         [[listen]]\naddress = \"[::]:587\"\nmode = \"starttls\"\n\
         [tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nusers = \"users\"\n\
         [queue]\ndirectory = \"queue\"\n[relay]\nmaildir = \"Maildir\"\n",
    )
    .unwrap();

    // Autoconfig: both outgoing servers, implicit TLS first.
    let autoconfig = text(&client_config(&config, &["--only", "autoconfig"]));
    let servers = python(
        "import sys, xml.etree.ElementTree as ET\n\
         root = ET.fromstring(sys.stdin.read())\n\
         provider = root.find('emailProvider')\n\
         print(provider.get('id'), provider.findtext('domain'))\n\
         for s in provider.findall('outgoingServer'):\n  \
           print(s.get('type'), s.findtext('hostname'), s.findtext('port'), s.findtext('socketType'), s.findtext('authentication'), s.findtext('username'))\n",
        &autoconfig,
    );
    assert_eq!(
        servers.lines().collect::<Vec<_>>(),
        [
            "example.org example.org",
            "smtp mail.example.org 465 SSL password-cleartext %EMAILLOCALPART%",
            "smtp mail.example.org 587 STARTTLS password-cleartext %EMAILLOCALPART%",
        ]
    );

    // SRV: a zone with them passes named-checkzone; submissions first.
    let checkzone = common::require("named-checkzone", "apt-get install bind9-utils");
    let srv = text(&client_config(&config, &["--only", "srv"]));
    let zone = format!(
        "$TTL 3600\n\
         @ IN SOA ns1.example.org. hostmaster.example.org. 1 3600 600 86400 300\n\
         @ IN NS ns1.example.org.\n\
         ns1 IN A 192.0.2.1\n\
         mail IN A 192.0.2.25\n\
         {srv}"
    );
    std::fs::write(d.join("example.org.zone"), &zone).unwrap();
    let checked = Command::new(checkzone)
        .args(["-D", "example.org"])
        .arg(d.join("example.org.zone"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{dump}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let records: Vec<&str> = dump.lines().filter(|l| l.contains("SRV")).collect();
    assert_eq!(records.len(), 2, "{dump}");
    assert!(
        records
            .iter()
            .any(|r| r.starts_with("_submissions._tcp.example.org.")
                && r.ends_with("SRV\t0 1 465 mail.example.org.")),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.starts_with("_submission._tcp.example.org.")
                && r.ends_with("SRV\t10 1 587 mail.example.org.")),
        "{records:?}"
    );

    // The Apple profile: a plist with one mail payload.
    let apple = text(&client_config(
        &config,
        &["--only", "apple", "--imap-host", "imap.example.org"],
    ));
    let payload = python(
        "import sys, plistlib\n\
         p = plistlib.loads(sys.stdin.buffer.read())\n\
         m = p['PayloadContent'][0]\n\
         print(p['PayloadType'], p['PayloadIdentifier'], m['PayloadType'])\n\
         print(m['OutgoingMailServerHostName'], m['OutgoingMailServerPortNumber'], m['OutgoingMailServerUseSSL'], m['OutgoingMailServerAuthentication'])\n\
         print(m['IncomingMailServerHostName'], m['IncomingMailServerPortNumber'])\n\
         print(len(p['PayloadUUID']), p['PayloadUUID'] != m['PayloadUUID'])\n",
        &apple,
    );
    assert_eq!(
        payload.lines().collect::<Vec<_>>(),
        [
            "Configuration org.example.submitd com.apple.mail.managed",
            "mail.example.org 465 True EmailAuthPassword",
            "imap.example.org 993",
            "36 True",
        ]
    );

    // All three at once, headed; a bad domain is a clear error.
    let all = text(&client_config(&config, &[]));
    assert_eq!(all.matches("==> ").count(), 3);
    let bad = client_config(&config, &["--domain", "exa mple.org"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("is not a domain name; give the mail domain with --domain"));
}

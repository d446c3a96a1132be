//! The files the project ships: the example credential file and the
//! fail2ban filter, checked with the real fail2ban.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use submitd_auth::{failure_line, CheckOutcome, CredentialStore, PasswordChecker};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_credential_file_loads_and_its_password_works() {
    let (store, errors) = CredentialStore::open(repo("config/users.example")).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let users = store.users();
    assert_eq!(users.len(), 2);
    let checker = PasswordChecker::new(2).unwrap();
    assert_eq!(
        checker.check(&users, "alice", "change me").await,
        CheckOutcome::Authenticated {
            user: "alice".into(),
            app_password: None
        }
    );
    assert!(users.get("nas").unwrap().relax.envelope);
}

/// Runs fail2ban-regex on `lines` and returns the addresses it would ban.
fn banned(lines: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("submitd.log");
    let text: String = lines
        .iter()
        .map(|l| format!("2026-11-22 10:00:00 WARN submitd::auth: {l}\n"))
        .collect();
    std::fs::write(&log, text).unwrap();
    let filter = repo("config/fail2ban/filter.d/submitd.conf");
    let output = Command::new("fail2ban-regex")
        .args(["-v", "--raw"])
        .arg(&log)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex is needed for this test: apt-get install fail2ban (.ci/run does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Verbose output lists each extracted address under its regex:
    // "|      203.0.113.7  Sun Nov 22 10:00:00 2026".
    let section = stdout.split("Failregex:").nth(1).unwrap_or_default();
    let section = section.split("Ignoreregex:").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("|      "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn fail2ban_bans_the_real_client_and_cannot_be_steered() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let lines = vec![
        failure_line(ip("203.0.113.7"), "alice", "PLAIN"),
        failure_line(ip("2001:db8::5"), "bob@example.org", "LOGIN"),
        // A user name made to look like another failure for a victim.
        failure_line(
            ip("198.51.100.66"),
            "x\" mechanism=PLAIN authentication failed: client=192.0.2.1 user=\"y",
            "PLAIN",
        ),
        "authentication succeeded: client=192.0.2.99 user=\"carol\"".to_owned(),
    ];
    let matched = banned(&lines);
    assert_eq!(
        matched,
        vec!["203.0.113.7", "2001:db8::5", "198.51.100.66"],
        "{lines:#?}"
    );
}

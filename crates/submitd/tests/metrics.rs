//! Prometheus metrics against the real daemon and a real Prometheus:
//! clients (Python's smtplib) log in, fail to log in, send and are refused;
//! the endpoint's text passes `promtool check metrics` and says what
//! happened; a real `prometheus` scrapes it, loads the shipped alert rules
//! and answers every query of the shipped Grafana dashboard; the alert
//! rules pass `promtool check rules` and their unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

const CLIENT: &str = r#"
import smtplib, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
def session(user, password, sender):
    s = smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=30)
    try:
        s.login(user, password)
        s.sendmail(sender, ["bob@example.net"], "From: %s\r\nSubject: m\r\n\r\nhello\r\n" % sender)
        print("sent")
    except (smtplib.SMTPAuthenticationError, smtplib.SMTPSenderRefused) as e:
        print("refused", e.smtp_code)
    s.quit()
session("alice", "pw", "alice@example.org")
session("alice", "wrong", "alice@example.org")
session("alice", "pw", "ceo@example.org")
"#;

fn get(url: &str, accept: Option<&str>) -> String {
    let mut curl = Command::new("curl");
    curl.args(["-sf", "--max-time", "10", url]);
    if let Some(accept) = accept {
        curl.args(["-H", &format!("Accept: {accept}")]);
    }
    let out = curl.output().unwrap();
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample `line_start` (name and labels as written).
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &Path, target: u16, port: u16) -> Prometheus {
    let binary = common::require("prometheus", "apt-get install prometheus");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/prometheus/alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: submitd\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Prometheus(child)
}

/// Asks Prometheus `query` until the answer contains `expected` (bounded).
fn wait_query(port: u16, query: &str, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let query_arg = format!("query={query}");
    loop {
        let answer = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-G",
                &url,
                "--data-urlencode",
                &query_arg,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if answer.contains(expected) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus: {query} never gave {expected}: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_endpoint_says_what_happened_and_prometheus_scrapes_it() {
    let promtool = common::require("promtool", "apt-get install prometheus");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::certificates(d, &["submitd"]);
    common::alice(d);
    let metrics_port = common::free_port();
    let config = common::config(
        d,
        "queue",
        &format!(
            "[relay]\nmaildir = \"Maildir\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\nper_user = true\n"
        ),
    );
    let daemon = common::start(Daemon::command(&config));
    let port = daemon.implicit.unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(port.to_string())
        .arg(d.join("ca.pem"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["sent", "refused 535", "refused 550"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.wait_log("message delivered", Duration::from_secs(30)));

    // The classic text format, checked by promtool, with the figures.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = get(&url, None);
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for (series, expected) in [
        ("submitd_messages_accepted_total", 1.0),
        ("submitd_recipients_total", 1.0),
        ("submitd_user_messages_total{user=\"alice\"}", 1.0),
        (
            "submitd_messages_refused_total{reason=\"sender_not_allowed\"}",
            1.0,
        ),
        (
            "submitd_deliveries_total{route=\"default\",outcome=\"delivered\"}",
            1.0,
        ),
        ("submitd_spool_write_seconds_count", 1.0),
        ("submitd_delivery_latency_seconds_count", 1.0),
        ("submitd_queue_messages", 0.0),
        ("submitd_sessions_open{listener=\"implicit\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(expected), "{series} in\n{text}");
    }
    // smtplib tries PLAIN, then LOGIN, with a wrong password.
    let failed = sample(
        &text,
        "submitd_logins_total{mechanism=\"PLAIN\",outcome=\"failed\"}",
    );
    assert_eq!(failed, Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "submitd_logins_total{mechanism=\"PLAIN\",outcome=\"ok\"}"
        ),
        Some(2.0)
    );
    let sessions = sample(
        &text,
        "submitd_sessions_total{listener=\"implicit\",tls=\"TLSv1_3\"}",
    );
    assert_eq!(sessions, Some(3.0), "{text}");
    assert!(sample(&text, "submitd_message_bytes_total").unwrap() > 50.0);
    // OpenMetrics for scrapers that ask for it.
    let open = get(&url, Some("application/openmetrics-text; version=1.0.0"));
    assert!(open.ends_with("# EOF\n"));

    // A real Prometheus scrapes it, with the shipped rules loaded.
    let prometheus_port = common::free_port();
    let _prometheus = start_prometheus(d, metrics_port, prometheus_port);
    wait_query(prometheus_port, "up{job=\"submitd\"}", "\"1\"]");
    wait_query(prometheus_port, "submitd_messages_accepted_total", "\"1\"]");
    let rules = get(
        &format!("http://127.0.0.1:{prometheus_port}/api/v1/rules"),
        None,
    );
    for alert in [
        "SubmitdDown",
        "SubmitdQueueGrowing",
        "SubmitdOldestMessageOld",
        "SubmitdUpstreamFailing",
        "SubmitdLoginFailureSpike",
        "SubmitdUserSendingBurst",
    ] {
        assert!(rules.contains(alert), "{alert} not loaded: {rules}");
    }
    assert!(!rules.contains("\"health\":\"err\""), "{rules}");
    // Every query of the shipped Grafana dashboard is one Prometheus takes.
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/grafana/submitd.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*");
            wait_query(prometheus_port, &expr, "\"status\":\"success\"");
            queries += 1;
        }
    }
    assert!(queries >= 10);
    assert!(daemon.stop());
}

#[test]
fn the_shipped_alert_rules_check_and_pass_their_tests() {
    let promtool = common::require("promtool", "apt-get install prometheus");
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&folder)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

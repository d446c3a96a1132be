//! Two instances behind HAProxy: a real `haproxy` in TCP mode on loopback
//! in front of two submitd instances, sending PROXY protocol v2 to their
//! implicit-TLS listeners (round robin) and v1 to a STARTTLS listener.
//! Clients (Python's smtplib) connect from several 127.0.0.x source
//! addresses.
//!
//! * The address HAProxy names in the header must reach the log, the
//!   Received header, the connection limit and the login throttle, and a
//!   connection to a PROXY listener from an untrusted address, or without
//!   a header, must be closed and logged.
//! * With a real `redis-server` behind both, sending limits and login
//!   blocks hold across the instances; Redis killed, each instance counts
//!   alone (logins and sending go on, a warning says so); Redis back,
//!   limits are shared again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

/// The client side, one mode per call:
/// `send SRC PORT CA implicit|starttls USER PASSWORD N`: N messages, one
///   session each; prints `sent` or the refusal per message.
/// `hold SRC PORT CA N EXTRA`: holds N logged-in sessions, then opens
///   EXTRA more and prints how each was answered.
const CLIENT: &str = r#"
import smtplib, ssl, sys
mode, src, port, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
def connect(kind):
    if kind == "implicit":
        return smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=30, source_address=(src, 0))
    s = smtplib.SMTP("localhost", port, timeout=30, source_address=(src, 0))
    s.starttls(context=ctx)
    return s
if mode == "send":
    kind, user, password, n = sys.argv[5], sys.argv[6], sys.argv[7], int(sys.argv[8])
    for i in range(n):
        s = None
        try:
            s = connect(kind)
            s.login(user, password)
            sender = "%s@example.org" % user
            s.sendmail(sender, ["bob@example.net"],
                       "From: %s\r\nSubject: via %s %d\r\n\r\nhello\r\n" % (sender, src, i))
            print("sent")
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPResponseException) as e:
            print("refused", e.smtp_code, e.smtp_error.decode())
        if s is not None:
            try:
                s.quit()
            except smtplib.SMTPException:
                s.close()
elif mode == "hold":
    n, extra = int(sys.argv[5]), int(sys.argv[6])
    held = []
    for i in range(n):
        s = connect("implicit")
        s.login("alice", "pw")
        held.append(s)
    print("held", len(held))
    for i in range(extra):
        try:
            s = connect("implicit")
            print("served")
            s.quit()
        except smtplib.SMTPConnectError as e:
            print("refused", e.smtp_code, e.smtp_error.decode())
    for s in held:
        s.quit()
"#;

fn client(args: &[&str]) -> Vec<String> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "client {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// One submitd instance with a PROXY implicit-TLS listener and a PROXY
/// STARTTLS listener, both trusting 127.0.0.1 (HAProxy's source here).
struct Instance {
    daemon: Daemon,
    implicit: u16,
    starttls: u16,
    dir: PathBuf,
}

fn instance(root: &Path, name: &str, extra: &str) -> Instance {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root.join("submitd.crt"), dir.join("submitd.crt")).unwrap();
    std::fs::copy(root.join("submitd.key"), dir.join("submitd.key")).unwrap();
    std::fs::copy(root.join("users"), dir.join("users")).unwrap();
    let (implicit, starttls) = (common::free_port(), common::free_port());
    let config = dir.join("submitd.toml");
    std::fs::write(
        &config,
        format!(
            r#"hostname = "localhost"
[[listen]]
address = "127.0.0.1:{implicit}"
mode = "implicit"
proxy_protocol = true
trusted_proxies = ["127.0.0.1"]
[[listen]]
address = "127.0.0.1:{starttls}"
mode = "starttls"
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]
[tls]
certificate = "submitd.crt"
key = "submitd.key"
[auth]
users = "users"
failure_delay = "0s"
[queue]
directory = "queue"
[relay]
maildir = "Maildir"
[limits]
connections_per_client = 3
# Not the subject here (its burst is twice the per-client bound).
connection_rate = 1000
{extra}"#
        ),
    )
    .unwrap();
    Instance {
        daemon: common::start(Daemon::command(&config)),
        implicit,
        starttls,
        dir,
    }
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy on `implicit` (round robin over both instances' implicit-TLS
/// listeners, PROXY v2) and `starttls` (the first instance's STARTTLS
/// listener, PROXY v1).
fn haproxy(dir: &Path, a: &Instance, b: &Instance, implicit: u16, starttls: u16) -> Haproxy {
    let haproxy = common::require("haproxy", "apt-get install haproxy");
    // The shipped file, its addresses made loopback ones (its 587 front on
    // a port of its own), and a PROXY v1 front to the first STARTTLS
    // listener appended.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/haproxy/haproxy.cfg");
    let mut text = std::fs::read_to_string(shipped).unwrap();
    let starttls_v2 = common::free_port();
    for (from, to) in [
        ("bind :465".to_owned(), format!("bind 127.0.0.1:{implicit}")),
        (
            "bind :587".to_owned(),
            format!("bind 127.0.0.1:{starttls_v2}"),
        ),
        (
            "10.0.0.11:465 send-proxy-v2 check port 587".to_owned(),
            format!(
                "127.0.0.1:{} send-proxy-v2 check port {}",
                a.implicit, a.starttls
            ),
        ),
        (
            "10.0.0.12:465 send-proxy-v2 check port 587".to_owned(),
            format!(
                "127.0.0.1:{} send-proxy-v2 check port {}",
                b.implicit, b.starttls
            ),
        ),
        (
            "10.0.0.11:587".to_owned(),
            format!("127.0.0.1:{}", a.starttls),
        ),
        (
            "10.0.0.12:587".to_owned(),
            format!("127.0.0.1:{}", b.starttls),
        ),
    ] {
        assert!(
            text.contains(&from),
            "the shipped haproxy.cfg has no {from:?}"
        );
        text = text.replace(&from, &to);
    }
    text.push_str(&format!(
        "\nfrontend submission_v1\n    bind 127.0.0.1:{starttls}\n    default_backend submission_v1\n\
         backend submission_v1\n    server mx1 127.0.0.1:{} send-proxy\n",
        a.starttls
    ));
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, text).unwrap();
    let check = Command::new(&haproxy)
        .args(["-c", "-f"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(&haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let haproxy = Haproxy(child);
    wait_port(implicit, "haproxy");
    wait_port(starttls, "haproxy");
    haproxy
}

/// Waits (bounded) until something listens on loopback `port`.
fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delivered(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("Maildir/new")) else {
        return Vec::new();
    };
    entries
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

fn wait_delivered(dir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(dir).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    delivered(dir)
}

#[test]
fn behind_haproxy_the_client_address_is_the_client() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    common::certificates(r, &["submitd"]);
    common::alice(r);
    let (a, b) = (instance(r, "a", ""), instance(r, "b", ""));
    let (front_implicit, front_starttls) = (common::free_port(), common::free_port());
    let _haproxy = haproxy(r, &a, &b, front_implicit, front_starttls);
    let ca = r.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let port = front_implicit.to_string();
    let send = |source: &str, port: u16, kind: &str, user: &str, password: &str, n: usize| {
        client(&[
            "send",
            source,
            &port.to_string(),
            ca,
            kind,
            user,
            password,
            &n.to_string(),
        ])
    };

    // Two messages over v2 (one to each instance) and one over v1 with
    // STARTTLS, each from its own source address: logged and written in
    // Received as that address, not HAProxy's.
    let sent = send("127.0.0.21", front_implicit, "implicit", "alice", "pw", 2);
    assert_eq!(sent, ["sent", "sent"]);
    let sent = send("127.0.0.22", front_starttls, "starttls", "alice", "pw", 1);
    assert_eq!(sent, ["sent"]);
    let (in_a, in_b) = (wait_delivered(&a.dir, 2), wait_delivered(&b.dir, 1));
    assert_eq!(
        (in_a.len(), in_b.len()),
        (2, 1),
        "round robin: 1 + 1 over v2, 1 over v1 to a"
    );
    let received = |m: &String| {
        m.lines()
            .find(|l| l.starts_with("Received:"))
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        in_b.iter().all(|m| received(m).contains("[127.0.0.21]")),
        "{in_b:?}"
    );
    assert_eq!(
        in_a.iter()
            .filter(|m| received(m).contains("[127.0.0.21]"))
            .count(),
        1,
        "{in_a:?}"
    );
    assert_eq!(
        in_a.iter()
            .filter(|m| received(m).contains("[127.0.0.22]"))
            .count(),
        1,
        "{in_a:?}"
    );
    for (instance, sources) in [
        (&a, &["127.0.0.21", "127.0.0.22"][..]),
        (&b, &["127.0.0.21"][..]),
    ] {
        for source in sources {
            assert!(
                instance
                    .daemon
                    .wait_log(&format!("client={source}:"), Duration::from_secs(5)),
                "{source} not in the log"
            );
        }
    }

    // The connection limit counts the client's address: 3 per client per
    // instance, so 6 held from one address fill both; the 7th reads 421,
    // another address is served.
    let held = client(&["hold", "127.0.0.23", &port, ca, "6", "1"]);
    assert_eq!(held[0], "held 6");
    assert_eq!(
        held[1],
        "refused 421 4.7.0 localhost Too many connections from your address, try again later"
    );
    let sent = send("127.0.0.24", front_implicit, "implicit", "alice", "pw", 1);
    assert_eq!(sent, ["sent"]);

    // The throttle counts the client's address: 10 sessions with a wrong
    // password for alice from .25 (5 at each instance; smtplib tries
    // PLAIN, then LOGIN, so 10 failures at each) block that pair on both;
    // alice from .26 still logs in. fail2ban's line names .25.
    let wrong = send(
        "127.0.0.25",
        front_implicit,
        "implicit",
        "alice",
        "wrong",
        10,
    );
    assert_eq!(wrong.len(), 10);
    assert!(
        wrong.iter().all(|l| l.starts_with("refused 535")),
        "{wrong:?}"
    );
    let blocked = send("127.0.0.25", front_implicit, "implicit", "alice", "pw", 2);
    assert!(
        blocked.iter().all(|l| l.starts_with("refused 454")),
        "{blocked:?}"
    );
    let sent = send("127.0.0.26", front_implicit, "implicit", "alice", "pw", 2);
    assert_eq!(sent, ["sent", "sent"]);
    for instance in [&a, &b] {
        assert!(instance.daemon.wait_log(
            "authentication failed: client=127.0.0.25 user=\"alice\"",
            Duration::from_secs(5)
        ));
    }

    // Straight to a PROXY listener: from an address that is not a trusted
    // proxy, closed at once; from the proxy's address without a header (a
    // client's TLS hello first), closed as well. Both logged.
    for (source, reason) in [
        ("127.0.0.27", "not a trusted proxy"),
        ("127.0.0.1", "no PROXY header"),
    ] {
        let output = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import smtplib, ssl\n\
                 ctx = ssl.create_default_context(cafile={ca:?})\n\
                 try:\n  smtplib.SMTP_SSL('localhost', {port}, context=ctx, timeout=10, source_address=({source:?}, 0))\n  print('served')\n\
                 except (ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected) as e:\n  print('closed')\n",
                port = a.implicit
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "closed",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            a.daemon.wait_log(reason, Duration::from_secs(5)),
            "{reason} not logged"
        );
    }
    // A header that stalls halfway is closed after the header timeout.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", a.starttls)).unwrap();
    std::io::Write::write_all(&mut stalled, b"PROXY TCP4 192.0.2.").unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stalled, &mut rest);
    let waited = started.elapsed();
    assert!(rest.is_empty(), "no greeting before the header");
    assert!(
        waited >= submitd_listener::proxy::HEADER_TIMEOUT - Duration::from_millis(500)
            && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    assert!(a
        .daemon
        .wait_log("PROXY header too slow", Duration::from_secs(5)));
    assert!(a.daemon.stop());
    assert!(b.daemon.stop());
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `redis-server` on `port`, in memory only (as a restarted Redis without
/// persistence, it starts empty).
fn start_redis(port: u16) -> Redis {
    let binary = common::require("redis-server", "apt-get install redis-server");
    let child = Command::new(binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let redis = Redis(child);
    wait_port(port, "redis-server");
    redis
}

#[test]
fn two_instances_share_limits_in_redis_and_go_on_without_it() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    common::certificates(r, &["submitd"]);
    common::alice(r);
    // carol may send 4 messages an hour, in all.
    let hash = submitd_auth::hash_password(b"pw").unwrap();
    let users = std::fs::read_to_string(r.join("users")).unwrap()
        + &format!("carol {hash} send-as=carol@example.org max-messages=4/h\ndave {hash} send-as=dave@example.org\n");
    std::fs::write(r.join("users"), users).unwrap();
    let redis_port = common::free_port();
    let redis = start_redis(redis_port);
    let cluster =
        format!("[cluster]\nredis = \"redis://127.0.0.1:{redis_port}/0\"\ntimeout = \"300ms\"\n");
    let (a, b) = (instance(r, "a", &cluster), instance(r, "b", &cluster));
    let (front, front_starttls) = (common::free_port(), common::free_port());
    let _haproxy = haproxy(r, &a, &b, front, front_starttls);
    let ca = r.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let send = |source: &str, user: &str, password: &str, n: usize| {
        client(&[
            "send",
            source,
            &front.to_string(),
            ca,
            "implicit",
            user,
            password,
            &n.to_string(),
        ])
    };
    let refused_454 = |lines: &[String]| lines.iter().all(|l| l.starts_with("refused 454"));

    // Four messages over both instances, then the fifth and sixth (one at
    // each) refused: without Redis each would have taken four.
    assert_eq!(send("127.0.0.30", "carol", "pw", 4), ["sent"; 4]);
    let over = send("127.0.0.30", "carol", "pw", 2);
    assert!(
        over.iter()
            .all(|l| l.starts_with("refused 450 4.7.1 Sending limit reached")),
        "{over:?}"
    );
    for instance in [&a, &b] {
        assert!(instance
            .daemon
            .wait_log("shared=true", Duration::from_secs(5)));
    }

    // Ten user names failing from one address, five at each instance
    // (fewer than the 10 that block a network on one instance alone):
    // the network is blocked on both; another address is not.
    for i in 0..10 {
        let wrong = send("127.0.0.31", &format!("nobody{i}"), "wrong", 1);
        // The tenth name's first failure blocks the network: smtplib's
        // second mechanism then reads 454.
        let blocked_now = i == 9 && wrong[0].starts_with("refused 454");
        assert!(
            wrong[0].starts_with("refused 535") || blocked_now,
            "{i}: {wrong:?}"
        );
    }
    assert!(refused_454(&send("127.0.0.31", "carol", "pw", 2)));
    // 10 failures of dave from one address (5 sessions, PLAIN then LOGIN
    // each; 5 at each instance): the pair is blocked on both.
    let wrong = send("127.0.0.33", "dave", "wrong", 5);
    assert!(
        wrong.iter().all(|l| l.starts_with("refused 535")),
        "{wrong:?}"
    );
    assert!(refused_454(&send("127.0.0.33", "dave", "pw", 2)));
    assert_eq!(send("127.0.0.32", "dave", "pw", 2), ["sent", "sent"]);

    // Redis gone: nobody is refused for it. Each instance counts alone:
    // dave's shared block is not seen, carol (2 counted at each instance)
    // may send again up to her limit at each.
    drop(redis);
    assert_eq!(send("127.0.0.33", "dave", "pw", 2), ["sent", "sent"]);
    assert_eq!(send("127.0.0.30", "carol", "pw", 2), ["sent", "sent"]);
    for instance in [&a, &b] {
        assert!(instance
            .daemon
            .wait_log("Redis out of reach", Duration::from_secs(5)));
    }

    // Redis back (empty): after the retry pause, limits are shared again.
    let _redis = start_redis(redis_port);
    std::thread::sleep(submitd_cluster::RETRY_AFTER + Duration::from_millis(500));
    assert_eq!(send("127.0.0.34", "alice", "pw", 2), ["sent", "sent"]);
    for instance in [&a, &b] {
        assert!(instance
            .daemon
            .wait_log("Redis reachable again", Duration::from_secs(10)));
    }
    let wrong = send("127.0.0.35", "dave", "wrong", 5);
    assert!(
        wrong.iter().all(|l| l.starts_with("refused 535")),
        "{wrong:?}"
    );
    assert!(refused_454(&send("127.0.0.35", "dave", "pw", 2)));
    // HAProxy's health checks (a PROXY v2 LOCAL header, then the greeting
    // on 587) are sessions from HAProxy's own address, never refusals.
    for instance in [&a, &b] {
        assert!(instance
            .daemon
            .wait_log("client=127.0.0.1:", Duration::from_secs(15)));
        let log = instance.daemon.log.lock().unwrap();
        assert!(
            !log.iter()
                .any(|l| l.contains("PROXY") && l.contains("refused")),
            "{log:?}"
        );
    }
    assert!(a.daemon.stop());
    assert!(b.daemon.stop());
}

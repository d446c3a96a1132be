//! Chaos against the real daemon: lettre clients keep submitting while
//! submitd is killed with SIGKILL and restarted, again and again, and the
//! upstream (aiosmtpd) is killed for a while and brought back. At the end
//! every message that got a 250 must be at the upstream; duplicates (a
//! kill between the upstream's 250 and the removal from the queue) are
//! counted and reported, never a loss.
//!
//! Bounded: CHAOS_KILLS kills (default 5) about CHAOS_INTERVAL_MS apart
//! (default 700); `scripts/chaos` runs a longer one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env_or, free_port, start_upstream_on, Daemon};

#[test]
fn kill_9_under_load_and_a_dead_upstream_lose_nothing() {
    let kills = env_or("CHAOS_KILLS", 5);
    let interval = Duration::from_millis(env_or("CHAOS_INTERVAL_MS", 700));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::certificates(d, &["submitd", "upstream"]);
    let (up_cert, up_key) = (d.join("upstream.crt"), d.join("upstream.key"));
    let mut upstream = Some(start_upstream_on(d, &up_cert, &up_key, 0));
    let up_port = upstream.as_ref().unwrap().port;
    let hash = submitd_auth::hash_password(b"pw").unwrap();
    std::fs::write(
        d.join("users"),
        format!("alice {hash} send-as=alice@example.org max-messages=1000000/h,1000000/d max-recipients=1000000/h,1000000/d\n"),
    )
    .unwrap();
    common::password_file(&d.join("upstream.pass"), "secret");
    let port = free_port();
    let config = d.join("submitd.toml");
    std::fs::write(
        &config,
        format!(
            r#"hostname = "localhost"
[[listen]]
address = "127.0.0.1:{port}"
mode = "implicit"
[tls]
certificate = "submitd.crt"
key = "submitd.key"
[auth]
users = "users"
[queue]
directory = "queue"
[relay]
idle_connection = "1s"
[[relay.upstream]]
host = "localhost"
port = {up_port}
tls = "implicit"
username = "alice"
password_file = "upstream.pass"
ca_file = "ca.pem"
[limits]
connections_per_client = 100
"#
        ),
    )
    .unwrap();
    let mut daemon = Some(common::start(Daemon::command(&config)));
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let ca_pem = std::fs::read(d.join("ca.pem")).unwrap();
    let clients: Vec<_> = (0..4)
        .map(|worker| {
            let (acked, stop, ca_pem) = (Arc::clone(&acked), Arc::clone(&stop), ca_pem.clone());
            std::thread::spawn(move || send_until_stopped(worker, port, &ca_pem, &acked, &stop))
        })
        .collect();

    for k in 0..kills {
        std::thread::sleep(interval);
        // SIGKILL: no shutdown, no flush, whatever was in flight.
        let mut d_ = daemon.take().unwrap();
        d_.child.kill().unwrap();
        d_.child.wait().unwrap();
        drop(d_);
        if k == kills / 2 {
            // The upstream dies too, and stays away while submitd restarts.
            upstream.take().unwrap().kill();
        }
        daemon = Some(common::start(Daemon::command(&config)));
        if k == kills / 2 + 1 || (k == kills - 1 && upstream.is_none()) {
            upstream = Some(start_upstream_on(d, &up_cert, &up_key, up_port));
        }
    }
    std::thread::sleep(interval);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    if upstream.is_none() {
        upstream = Some(start_upstream_on(d, &up_cert, &up_key, up_port));
    }
    let upstream = upstream.unwrap();
    // The relay retries with backoff once the upstream is back; `queue
    // flush` makes every message due now, and the restart below reads the
    // queue at once (a running daemon rescans it every minute).
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 20,
        "the load ran: {} acknowledged",
        acked.len()
    );
    let flush = std::process::Command::new(env!("CARGO_BIN_EXE_submitd"))
        .args(["queue", "flush", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        flush.status.success(),
        "{}",
        String::from_utf8_lossy(&flush.stderr)
    );
    // A restart picks the flushed queue up at once.
    let mut d_ = daemon.take().unwrap();
    d_.child.kill().unwrap();
    d_.child.wait().unwrap();
    drop(d_);
    let daemon = common::start(Daemon::command(&config));

    let deadline = Instant::now() + Duration::from_secs(120);
    let (counts, missing) = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in upstream.messages() {
            let text = String::from_utf8_lossy(&m).into_owned();
            if let Some(id) = text
                .split("Message-ID: <")
                .nth(1)
                .and_then(|r| r.split('>').next())
            {
                *counts.entry(id.to_owned()).or_default() += 1;
            }
        }
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (counts, missing.into_iter().cloned().collect::<Vec<_>>());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let unacked_arrived = counts.keys().filter(|id| !acked.contains(*id)).count();
    eprintln!(
        "chaos: {kills} kills; {} acknowledged, {} arrived ({} duplicates), {} arrived without a 250 seen by the client, {} lost",
        acked.len(),
        counts.len(),
        duplicates,
        unacked_arrived,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {missing:?}\n{}",
        daemon.log.lock().unwrap().join("\n")
    );
    assert!(daemon.stop());
}

/// One client thread: submits with lettre until told to stop; records the
/// Message-ID of every message that got a 250.
fn send_until_stopped(
    worker: usize,
    port: u16,
    ca_pem: &[u8],
    acked: &Mutex<BTreeSet<String>>,
    stop: &AtomicBool,
) {
    use lettre::address::Envelope;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::Transport;
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(ca_pem).unwrap())
        .build_rustls()
        .unwrap();
    let transport = lettre::SmtpTransport::builder_dangerous("localhost")
        .port(port)
        .tls(Tls::Wrapper(tls))
        .credentials(Credentials::new("alice".into(), "pw".into()))
        .timeout(Some(Duration::from_secs(5)))
        .build();
    let envelope = Envelope::new(
        Some("alice@example.org".parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("w{worker}-{n}@chaos.test");
        let message = format!(
            "From: alice@example.org\r\nMessage-ID: <{id}>\r\nSubject: chaos\r\n\r\n{}",
            format!("{}\r\n", "x".repeat(76)).repeat(26)
        );
        match transport.send_raw(&envelope, message.as_bytes()) {
            Ok(_) => {
                acked.lock().unwrap().insert(id);
            }
            // Down or restarting: the client tries the next one a bit later.
            Err(e) => {
                if n < 3 {
                    eprintln!("worker {worker}: {e}");
                }
                std::thread::sleep(Duration::from_millis(50))
            }
        }
    }
}

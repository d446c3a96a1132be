//! kill -9 while accepting and while delivering: after restarts, every
//! acknowledged message is delivered, none is lost; duplicates are counted.
//!
//! The child processes are this test binary run again with
//! `SUBMITD_CHAOS_CHILD` set, entering the ignored `chaos_child` test:
//! "accept" stores numbered messages and prints `ACK n` after each store
//! returns (the moment the daemon would send 250); "deliver" runs delivery
//! passes to the fake smarthost until the queue is empty. The parent kills
//! them with SIGKILL at random moments. Bounded: 5 accept rounds of at most
//! 300 messages, at most 40 delivery rounds, 60 seconds in all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use submitd_relay::{
    client_tls_config, QueueId, Relay, RelayConfig, RetryPolicy, Route, Spool, StoredEnvelope,
    Upstream, UpstreamAuth,
};
use submitd_smtp::{MailFrom, RcptTo, Transport};
use submitd_testkit::{FakeSmarthost, Fault, TestCa};

const CHILD: &str = "SUBMITD_CHAOS_CHILD";

fn seq_of(data: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(data);
    let line = text.lines().find(|l| l.starts_with("X-Chaos-Seq: "))?;
    line["X-Chaos-Seq: ".len()..].trim().parse().ok()
}

fn spawn_child(mode: &str, spool: &Path, extra: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "chaos_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, mode)
        .env("SUBMITD_CHAOS_SPOOL", spool)
        .stdout(Stdio::piped())
        .stderr(if std::env::var("SUBMITD_CHAOS_DEBUG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (key, value) in extra {
        command.env(key, value);
    }
    command.spawn().unwrap()
}

fn random_millis(low: u64, high: u64) -> Duration {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    Duration::from_millis(low + u64::from_le_bytes(b) % (high - low))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_accepting_and_delivering_loses_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let spool_path = dir.path().join("spool");

    // Accepting, killed at random moments.
    let mut acked = BTreeSet::new();
    for round in 0..5u64 {
        let mut child = spawn_child(
            "accept",
            &spool_path,
            &[("SUBMITD_CHAOS_BASE", (round * 1000).to_string())],
        );
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("ACK ").and_then(|n| n.parse::<u64>().ok()))
                .collect::<Vec<u64>>()
        });
        tokio::time::sleep(random_millis(40, 250)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked.extend(reader.join().unwrap());
    }
    assert!(
        acked.len() > 10,
        "the children acknowledged too little to test: {}",
        acked.len()
    );

    // Recovery: every acknowledged message is queued and intact.
    let (spool, recovery) = Spool::open(&spool_path).unwrap();
    let mut queued = BTreeSet::new();
    for id in &recovery.queued {
        queued.insert(seq_of(&spool.load(id).unwrap().1).unwrap());
    }
    let missing: Vec<_> = acked.difference(&queued).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not queued after kill -9: {missing:?}"
    );
    eprintln!(
        "accept: {} acknowledged, {} queued, {} partial writes set aside, {} corrupt",
        acked.len(),
        queued.len(),
        recovery.partial,
        recovery.corrupt
    );
    assert_eq!(recovery.corrupt, 0);
    drop(spool);

    // Delivering, killed at random moments, until the queue is empty.
    let ca = TestCa::new();
    let fake = FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let extra = [
        ("SUBMITD_CHAOS_PORT", fake.addr.port().to_string()),
        ("SUBMITD_CHAOS_CA", ca_file.display().to_string()),
    ];
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut child = spawn_child("deliver", &spool_path, &extra);
        let last = rounds >= 40 || started.elapsed() > Duration::from_secs(45);
        if last {
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            child.wait().unwrap();
        } else {
            tokio::time::sleep(random_millis(30, 200)).await;
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let (spool, _) = Spool::open(&spool_path).unwrap();
        if spool.list().unwrap().is_empty() || last {
            break;
        }
    }

    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    for message in fake.messages() {
        *received.entry(seq_of(&message.data).unwrap()).or_default() += 1;
    }
    let lost: Vec<_> = acked.iter().filter(|s| !received.contains_key(s)).collect();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    eprintln!(
        "deliver: {rounds} rounds, {} distinct messages arrived, {duplicates} duplicates, {} lost",
        received.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged and never delivered: {lost:?}"
    );
    let (spool, _) = Spool::open(&spool_path).unwrap();
    assert!(spool.list().unwrap().is_empty(), "queue not drained");
}

/// The child processes' entry point; does nothing unless run by the test
/// above.
#[test]
#[ignore = "entry point of the chaos test's child processes"]
fn chaos_child() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let spool_path = std::env::var("SUBMITD_CHAOS_SPOOL").unwrap();
    let (spool, _) = Spool::open(Path::new(&spool_path)).unwrap();
    match mode.as_str() {
        "accept" => {
            let base: u64 = std::env::var("SUBMITD_CHAOS_BASE")
                .unwrap()
                .parse()
                .unwrap();
            let envelope = StoredEnvelope {
                mail_from: MailFrom::parse("<alice@example.org>").unwrap(),
                recipients: vec![RcptTo::parse("<bob@example.net>").unwrap()],
                user: Some("alice".into()),
                received: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            };
            for n in base..base + 300 {
                let body = format!("{}\r\n", "x".repeat(76)).repeat(26);
                let data = format!("From: alice@example.org\r\nX-Chaos-Seq: {n}\r\n\r\n{body}");
                spool
                    .store_blocking(QueueId::generate(), &envelope, data.as_bytes())
                    .unwrap();
                println!("ACK {n}");
            }
        }
        "deliver" => {
            let port: u16 = std::env::var("SUBMITD_CHAOS_PORT")
                .unwrap()
                .parse()
                .unwrap();
            let ca = std::env::var("SUBMITD_CHAOS_CA").unwrap();
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let upstream = Upstream {
                    host: "localhost".into(),
                    port,
                    tls: Transport::ImplicitTls,
                    auth: UpstreamAuth::Password {
                        user: "alice".into(),
                        password: Arc::new(b"secret".to_vec()),
                    },
                    mechanisms: Vec::new(),
                    tls_config: client_tls_config(Some(Path::new(&ca))).unwrap(),
                    connect_timeout: Duration::from_secs(5),
                };
                let relay = Relay::new(
                    spool.clone(),
                    RelayConfig::new(
                        "mx.test",
                        Route::Upstreams(vec![upstream.clone()]),
                        RetryPolicy {
                            first_backoff: Duration::ZERO,
                            ..RetryPolicy::default()
                        },
                    ),
                );
                for _ in 0..100 {
                    let figures = relay.run_once().await;
                    eprintln!("child pass: {figures:?}");
                    if spool.list().unwrap().is_empty() {
                        break;
                    }
                }
            });
        }
        other => panic!("unknown child mode {other}"),
    }
}

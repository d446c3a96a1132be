//! The shared store against a real `redis-server` started on loopback:
//! counts and blocks shared by two handles (two instances), sending usage
//! summed over both, a clear after a users change, and Redis killed (every
//! call says `None`, quickly) and started again (the same handles work
//! again after the retry pause).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use submitd_cluster::{Cluster, ClusterConfig, LoginRules, SharedFailures, RETRY_AFTER};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(port: u16) -> Redis {
    start_redis_with(port, &["--port", &port.to_string()])
}

/// `redis-server` on loopback, in memory only, with `args` (the port and
/// any TLS settings); waits until `port` listens.
fn start_redis_with(port: u16, args: &[&str]) -> Redis {
    let child = Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("this test starts `redis-server`: install it (`apt-get install redis-server`), or run `bash .ci/run`, which does ({e})"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Redis(child)
}

fn cluster(port: u16) -> Cluster {
    Cluster::new(ClusterConfig {
        url: format!("redis://127.0.0.1:{port}/0"),
        prefix: "test".into(),
        timeout: Duration::from_millis(500),
        ca_file: None,
    })
    .unwrap()
}

const RULES: LoginRules = LoginRules {
    block_after: 10,
    spray_after: 10,
    block_for: Duration::from_secs(900),
    window: Duration::from_secs(3600),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_counts_blocks_and_usage() {
    let port = free_port();
    let redis = start_redis(port);
    let (a, b) = (cluster(port), cluster(port));

    // Ten failures of one pair, alternating instances: blocked on both;
    // the pair's count starts afresh; another user from there is not.
    for i in 1..=10u32 {
        let instance = if i % 2 == 0 { &a } else { &b };
        let counted = instance
            .login_failed("192.0.2.7", "Bob", RULES)
            .await
            .unwrap();
        let expected_pair = if i == 10 { 0 } else { i };
        assert_eq!(
            counted,
            SharedFailures {
                pair: expected_pair,
                user: i
            }
        );
    }
    assert_eq!(a.login_blocked("192.0.2.7", "bob").await, Some(true));
    assert_eq!(b.login_blocked("192.0.2.7", "BOB").await, Some(true));
    assert_eq!(a.login_blocked("192.0.2.7", "carol").await, Some(false));
    assert_eq!(a.login_blocked("192.0.2.8", "bob").await, Some(false));

    // Ten distinct names from one IPv6 /64: the network is blocked for
    // everyone on both instances; other networks are not.
    for i in 0..10 {
        let instance = if i % 2 == 0 { &a } else { &b };
        instance
            .login_failed("2001:db8::", &format!("user{i}"), RULES)
            .await
            .unwrap();
    }
    assert_eq!(b.login_blocked("2001:db8::", "anyone").await, Some(true));
    assert_eq!(b.login_blocked("2001:db8:1::", "anyone").await, Some(false));

    // A users change clears every count and block.
    a.clear_logins().await.unwrap();
    assert_eq!(b.login_blocked("192.0.2.7", "bob").await, Some(false));
    assert_eq!(b.login_blocked("2001:db8::", "anyone").await, Some(false));

    // Sending usage: recorded on both, summed.
    a.record("alice", 3).await.unwrap();
    b.record("Alice", 2).await.unwrap();
    let usage = a.usage("alice").await.unwrap();
    assert_eq!(
        (
            usage.messages_hour,
            usage.messages_day,
            usage.recipients_hour,
            usage.recipients_day
        ),
        (2, 2, 5, 5)
    );

    // Redis gone: None, quickly, and a rest before the next try.
    drop(redis);
    let started = Instant::now();
    assert_eq!(a.usage("alice").await, None);
    assert_eq!(a.login_blocked("192.0.2.7", "bob").await, None);
    assert_eq!(a.login_failed("192.0.2.7", "bob", RULES).await, None);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Back (empty, as a restarted Redis without persistence is): the
    // same handles work again once the pause is over.
    let _redis = start_redis(port);
    tokio::time::sleep(RETRY_AFTER + Duration::from_millis(200)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(usage) = a.usage("alice").await {
            assert_eq!(usage.messages_hour, 0);
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.record("alice", 1).await.unwrap();
    assert_eq!(a.usage("alice").await.unwrap().messages_hour, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_servers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = submitd_testkit::TestCa::new();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    let (cert, key) = ca.issue_pem(&["localhost"]);
    std::fs::write(d.join("redis.crt"), cert).unwrap();
    std::fs::write(d.join("redis.key"), key).unwrap();
    let port = free_port();
    let path = |name: &str| d.join(name).display().to_string();
    let _redis = start_redis_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("redis.crt"),
            "--tls-key-file",
            &path("redis.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let config = |ca_file: Option<std::path::PathBuf>| ClusterConfig {
        url: format!("rediss://localhost:{port}/0"),
        prefix: "tls".into(),
        timeout: Duration::from_secs(2),
        ca_file,
    };
    // With the CA that signed it: TLS, verified, and it works.
    let trusted = Cluster::new(config(Some(d.join("ca.pem")))).unwrap();
    trusted.record("alice", 2).await.unwrap();
    assert_eq!(trusted.usage("alice").await.unwrap().recipients_hour, 2);
    // Against the system's roots the test CA is unknown: refused, so the
    // store says nothing (and never talks to an unverified server).
    let untrusted = Cluster::new(config(None)).unwrap();
    assert_eq!(untrusted.usage("alice").await, None);
    // Plain redis:// to the TLS port gets nothing either.
    let plain = Cluster::new(ClusterConfig {
        url: format!("redis://localhost:{port}/0"),
        ..config(None)
    })
    .unwrap();
    assert_eq!(plain.usage("alice").await, None);
    assert!(matches!(
        Cluster::new(ClusterConfig {
            url: format!("redis://localhost:{port}/0"),
            ..config(Some(d.join("ca.pem")))
        }),
        Err(submitd_cluster::ClusterError::CaWithoutTls { .. })
    ));
}

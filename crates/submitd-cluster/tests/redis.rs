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
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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

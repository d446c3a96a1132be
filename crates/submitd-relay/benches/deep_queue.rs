//! Does a deep queue slow delivery down? The relay runs (its workers and
//! scans, as in the daemon) over a queue that already holds DEPTH deferred
//! messages (an upstream was down for a while: each has a state file and
//! a next try an hour away), and delivers NEW new messages of 10 KiB to
//! the fake smarthost over loopback TLS. Printed per depth: messages a
//! second, the process's CPU per message, and how long one of the
//! minute's scans takes.
//!
//!     cargo bench -p submitd-relay --bench deep_queue
//!     DEEP_QUEUE_DEPTHS=100,100000 DEEP_QUEUE_NEW=5000 cargo bench -p submitd-relay --bench deep_queue
//!
//! Setting up 100,000 messages writes and fsyncs 200,000 files (about a
//! minute here, 400 MB in the target folder, removed at the end).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{body, envelope, relay_to_fake, runtime_and_fake};
use submitd_relay::{DeliveryState, QueueId, Relay, Spool};
use submitd_testkit::FakeSmarthost;
use tokio_util::sync::CancellationToken;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// User + system CPU of this process (USER_HZ is 100 on Linux).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Stores `count` messages deferred for an hour, from 16 threads.
fn fill(spool: &Spool, count: usize, body: &[u8]) {
    let later = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(u64::MAX);
    std::thread::scope(|scope| {
        for t in 0..16 {
            scope.spawn(move || {
                for _ in (t..count).step_by(16) {
                    let id = spool
                        .store_blocking(QueueId::generate(), &envelope(), body)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let mut state = DeliveryState::new(1, later);
                    state.attempts = 1;
                    spool
                        .save_state(&id, &state)
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            });
        }
    });
}

/// Stores `count` new messages, hands them to the relay and waits until
/// the fake smarthost has them all.
fn deliver(spool: &Spool, relay: &Relay, fake: &FakeSmarthost, count: usize, body: &[u8]) {
    fake.clear_messages();
    for _ in 0..count {
        let id = spool
            .store_blocking(QueueId::generate(), &envelope(), body)
            .unwrap_or_else(|e| panic!("{e}"));
        relay.enqueue(id);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while fake.message_count() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(fake.message_count(), count, "every new message delivered");
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench too; only a
    // real `cargo bench` (which passes --bench) measures.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let depths = env_list("DEEP_QUEUE_DEPTHS", "100,100000");
    let new = env_list("DEEP_QUEUE_NEW", "5000")
        .first()
        .copied()
        .unwrap_or(5000);
    let (runtime, ca, fake) = runtime_and_fake();
    let body = body();
    println!("| queued (deferred) | new messages | delivered msg/s | CPU per message | a minute's scan | the scan at start |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for depth in depths {
        let dir =
            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap_or_else(|e| panic!("{e}"));
        let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap_or_else(|e| panic!("{e}"));
        fill(&spool, depth, b"From: a@example.org\r\n\r\nqueued\r\n");
        let relay = relay_to_fake(&spool, fake.addr.port(), &ca_file);
        let stop = CancellationToken::new();
        let start_scan = Instant::now();
        let running = runtime.spawn(relay.clone().run(stop.clone()));
        // The start's full scan (every header and state file) is done
        // before anything is timed.
        while relay.queued() < depth {
            std::thread::sleep(Duration::from_millis(10));
        }
        let start_scan = start_scan.elapsed();
        // Warm up (connections, caches): a few hundred, untimed.
        deliver(&spool, &relay, &fake, 500, body.as_bytes());
        fake.clear_messages();
        let (started, cpu_before) = (Instant::now(), cpu());
        deliver(&spool, &relay, &fake, new, body.as_bytes());
        let (elapsed, used) = (started.elapsed(), cpu().saturating_sub(cpu_before));
        let scan = Instant::now();
        relay.rescan();
        let scan = scan.elapsed();
        stop.cancel();
        runtime.block_on(running).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "| {depth} | {new} | {:.0} | {} µs | {:.1} ms | {:.0} ms |",
            new as f64 / elapsed.as_secs_f64(),
            (used / u32::try_from(new).unwrap_or(u32::MAX)).as_micros(),
            scan.as_secs_f64() * 1000.0,
            start_scan.as_secs_f64() * 1000.0
        );
    }
}

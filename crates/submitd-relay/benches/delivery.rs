//! Delivery throughput to the fake smarthost over loopback TLS, with the
//! connection reused for every message of a pass: spool read, client
//! machine, TLS, the fake's server machine, state and removal.

mod common;

use std::time::{Duration, Instant};

use common::{body, envelope, relay_to_fake, runtime_and_fake};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use submitd_relay::{QueueId, Spool};

const BATCH: u64 = 50;

fn bench(c: &mut Criterion) {
    let (runtime, ca, fake) = runtime_and_fake();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap_or_else(|e| panic!("{e}"));
    let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap_or_else(|e| panic!("{e}"));
    let relay = relay_to_fake(&spool, fake.addr.port(), &ca_file);
    let envelope = envelope();
    let body = body();

    let mut group = c.benchmark_group("delivery_10KiB_reused_connection");
    group.throughput(Throughput::Elements(BATCH));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("pass_of_50", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..BATCH {
                    spool
                        .store_blocking(QueueId::generate(), &envelope, body.as_bytes())
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                let start = Instant::now();
                let figures = runtime.block_on(relay.run_once());
                total += start.elapsed();
                assert_eq!(figures.delivered as u64, BATCH);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

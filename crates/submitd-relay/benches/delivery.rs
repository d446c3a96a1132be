//! Delivery throughput to the fake smarthost over loopback TLS, with the
//! connection reused for every message of a pass: spool read, client
//! machine, TLS, the fake's server machine, state and removal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use submitd_relay::{
    client_tls_config, QueueId, Relay, RelayConfig, RetryPolicy, Route, Spool, StoredEnvelope,
    Upstream,
};
use submitd_smtp::{MailFrom, RcptTo, Transport};
use submitd_testkit::{FakeSmarthost, Fault, TestCa};

const BATCH: u64 = 50;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
    let ca = TestCa::new();
    let fake = runtime.block_on(FakeSmarthost::start(
        &ca,
        &["localhost"],
        Transport::ImplicitTls,
        Fault::None,
    ));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap_or_else(|e| panic!("{e}"));
    let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap_or_else(|e| panic!("{e}"));
    let upstream = Upstream {
        host: "localhost".into(),
        port: fake.addr.port(),
        tls: Transport::ImplicitTls,
        credentials: Some(("alice".into(), Arc::new(b"secret".to_vec()))),
        tls_config: client_tls_config(Some(&ca_file)).unwrap_or_else(|e| panic!("{e}")),
        connect_timeout: Duration::from_secs(5),
    };
    let relay = Relay::new(
        spool.clone(),
        RelayConfig::new(
            "mx.test",
            Route::Upstreams(vec![upstream]),
            RetryPolicy::default(),
        ),
    );
    let envelope = StoredEnvelope {
        mail_from: MailFrom::parse("<alice@example.org>").unwrap_or_else(|e| panic!("{e}")),
        recipients: vec![RcptTo::parse("<bob@example.net>").unwrap_or_else(|e| panic!("{e}"))],
        user: Some("alice".into()),
        received: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let body = format!(
        "From: alice@example.org\r\nSubject: bench\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(76)).repeat(128)
    );

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

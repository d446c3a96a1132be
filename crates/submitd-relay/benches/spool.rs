//! Spool accepts per second with fsync at several concurrencies: the cost of the durability rule (250 only after
//! the file and its directory entry are on disk). The spool lives under
//! cargo's target folder, on the same file system as real use would be
//! (not tmpfs, where fsync costs nothing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use submitd_relay::{Spool, StoredEnvelope};
use submitd_smtp::{MailFrom, RcptTo};

fn envelope() -> StoredEnvelope {
    StoredEnvelope {
        mail_from: MailFrom::parse("<alice@example.org> SIZE=10240")
            .unwrap_or_else(|e| panic!("{e}")),
        recipients: vec![RcptTo::parse("<bob@example.net>").unwrap_or_else(|e| panic!("{e}"))],
        user: Some("alice".into()),
        received: 1_800_000_000,
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let data = Arc::new(vec![b'x'; 10 * 1024]);
    let mut group = c.benchmark_group("spool_store_10KiB");
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    {
        for concurrency in [1usize, 16, 64] {
            let dir =
                tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap_or_else(|e| panic!("{e}"));
            let (spool, _) = Spool::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let name = format!("fsync_each_concurrency_{concurrency}");
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        let mut done = 0u64;
                        while done < iters {
                            let batch = (concurrency as u64).min(iters - done);
                            let mut tasks = tokio::task::JoinSet::new();
                            for _ in 0..batch {
                                let (spool, data) = (spool.clone(), Arc::clone(&data));
                                tasks.spawn(async move {
                                    spool
                                        .store(submitd_relay::QueueId::generate(), envelope(), data)
                                        .await
                                });
                            }
                            while let Some(r) = tasks.join_next().await {
                                if let Ok(Err(e)) | Err(e) =
                                    r.map_err(|e| submitd_relay::SpoolError::Corrupt {
                                        path: "join".into(),
                                        reason: e.to_string(),
                                    })
                                {
                                    panic!("{e}");
                                }
                            }
                            done += batch;
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

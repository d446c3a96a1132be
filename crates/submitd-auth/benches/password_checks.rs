//! Password checks: the time an unknown user and a wrong password cost
//! (they must be the same), and checks per second at a given concurrency
//! on the blocking pool.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use submitd_auth::{hash_password, CheckOutcome, PasswordChecker, Users};

fn users() -> Users {
    let hash = hash_password(b"right password").unwrap_or_default();
    let (users, _) = Users::parse(Path::new("bench"), &format!("alice {hash}\n"));
    users
}

/// Runs `iters` checks with `concurrency` in flight; returns the wall time.
fn run(
    runtime: &tokio::runtime::Runtime,
    checker: &Arc<PasswordChecker>,
    users: &Arc<Users>,
    login: &'static str,
    iters: u64,
    concurrency: u64,
) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        let mut done = 0;
        while done < iters {
            let batch = concurrency.min(iters - done);
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let (checker, users) = (Arc::clone(checker), Arc::clone(users));
                tasks.spawn(async move {
                    let outcome = checker.check(&users, login, "wrong password").await;
                    assert_eq!(outcome, CheckOutcome::Rejected);
                });
            }
            while tasks.join_next().await.is_some() {}
            done += batch;
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let users = Arc::new(users());

    let mut group = c.benchmark_group("password_check");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    let checker = Arc::new(PasswordChecker::new(1).unwrap_or_else(|e| panic!("{e}")));
    for (name, login) in [("unknown_user", "mallory"), ("wrong_password", "alice")] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| run(&runtime, &checker, &users, login, iters, 1))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("password_checks_per_second");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    for concurrency in [1u64, 2, 4] {
        let checker =
            Arc::new(PasswordChecker::new(concurrency as usize).unwrap_or_else(|e| panic!("{e}")));
        group.bench_function(format!("concurrency_{concurrency}"), |b| {
            b.iter_custom(|iters| run(&runtime, &checker, &users, "alice", iters, concurrency))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The whole-path benchmark, in one run so its figures are ratios of one
//! machine's state: fake smarthosts (in this process, over TLS) are the
//! sinks, one keeping messages in memory, one writing and fsyncing each
//! before its 250 as a real MTA does; the real `submitd` binary relays to
//! the durable one; the load goes straight to each sink (the physical
//! limits here) and through submitd (TLS, AUTH, policy, prepare, fsynced
//! spool, relay, TLS again), at each concurrency. Then half load, fresh connections, handshakes and
//! argon2 alone, and the memory of idle sessions. Writes `results.md` and
//! `throughput.svg`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use submitd_smtp::Transport;
use submitd_testkit::{FakeSmarthost, Fault, TestCa};

use crate::load::{self, Report, Spec, Target};
use crate::{idle, plot};

/// What to measure.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The submitd binary.
    pub(crate) submitd: PathBuf,
    /// Concurrencies of the sweep.
    pub(crate) concurrency: Vec<usize>,
    /// Messages per run.
    pub(crate) messages: usize,
    /// Octets per message.
    pub(crate) size: usize,
    /// Idle sessions to hold for the memory figure (0: skip).
    pub(crate) idle_sessions: usize,
    /// Bound on each run.
    pub(crate) time_limit: Duration,
    /// Where results.md and throughput.svg go.
    pub(crate) out: PathBuf,
    /// submitd's `[relay] connections`.
    pub(crate) relay_connections: usize,
}

/// One point of the sweep.
#[derive(Clone, Debug)]
pub(crate) struct Point {
    /// Clients at once.
    pub(crate) concurrency: usize,
    /// Straight to the memory sink.
    pub(crate) direct_memory: Report,
    /// Straight to the durable sink.
    pub(crate) direct: Report,
    /// Through submitd; `elapsed` runs to the last arrival at the sink.
    pub(crate) whole: Report,
}

/// A running submitd, killed when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_submitd(binary: &Path, config: &Path) -> Result<Daemon, String> {
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,submitd=info")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release -p submitd)",
                binary.display()
            )
        })?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Keep draining so the daemon never blocks on its log.
                continue;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut port = None;
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if line.contains("listening") {
            port = line
                .split("address=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok());
        }
        if line.ends_with(" ready") {
            let port = port.ok_or("no listening line")?;
            return Ok(Daemon { child, port });
        }
    }
    let _ = child.kill();
    Err("submitd did not get ready within 30 s".into())
}

struct World {
    _dir: tempfile::TempDir,
    /// Durable: submitd relays here.
    sink: FakeSmarthost,
    memory_sink: FakeSmarthost,
    daemon: Daemon,
    direct: Target,
    direct_memory: Target,
    through: Target,
}

async fn world(plan: &Plan) -> Result<World, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let ca = TestCa::new();
    let memory_sink =
        FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await;
    let sink_dir = d.join("sink");
    std::fs::create_dir_all(&sink_dir).map_err(|e| e.to_string())?;
    let sink =
        FakeSmarthost::start_durable(&ca, &["localhost"], Transport::ImplicitTls, sink_dir).await;
    let write = |name: &str, text: &str| {
        std::fs::write(d.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("ca.pem", &ca.pem())?;
    let (cert, key) = ca.issue_pem(&["localhost"]);
    write("cert.pem", &cert)?;
    write("key.pem", &key)?;
    let hash = submitd_auth::hash_password(b"load password").map_err(|e| e.to_string())?;
    write(
        "users",
        &format!(
            "load {hash} send-as=load@example.org max-messages=100000000/h,100000000/d max-recipients=100000000/h,100000000/d\n"
        ),
    )?;
    write("upstream.pass", "secret\n")?;
    std::fs::set_permissions(
        d.join("upstream.pass"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;
    let many = plan.idle_sessions.max(1000) + 100;
    write(
        "submitd.toml",
        &format!(
            r#"hostname = "localhost"
[[listen]]
address = "127.0.0.1:0"
mode = "implicit"
[tls]
certificate = "cert.pem"
key = "key.pem"
[auth]
users = "users"
[queue]
directory = "queue"
[relay]
connections = {relay}
[[relay.upstream]]
host = "localhost"
port = {port}
tls = "implicit"
username = "alice"
password_file = "upstream.pass"
ca_file = "ca.pem"
[limits]
connections = {many}
connections_per_client = {many}
unauthenticated_connections = {many}
"#,
            port = sink.addr.port(),
            relay = plan.relay_connections
        ),
    )?;
    let daemon = start_submitd(&plan.submitd, &d.join("submitd.toml"))?;
    let base = Target {
        host: "localhost".into(),
        port: 0,
        tls: Transport::ImplicitTls,
        ca_file: Some(d.join("ca.pem")),
        user: String::new(),
        password: String::new(),
        from: "load@example.org".into(),
        to: "rcpt@example.net".into(),
    };
    let direct = Target {
        port: sink.addr.port(),
        user: "alice".into(),
        password: "secret".into(),
        ..base.clone()
    };
    let direct_memory = Target {
        port: memory_sink.addr.port(),
        ..direct.clone()
    };
    let through = Target {
        port: daemon.port,
        user: "load".into(),
        password: "load password".into(),
        ..base
    };
    Ok(World {
        _dir: dir,
        sink,
        memory_sink,
        daemon,
        direct,
        direct_memory,
        through,
    })
}

/// Runs load through submitd and waits for every accepted message to
/// arrive at the sink; `elapsed` becomes the time to the last arrival.
async fn through(w: &World, spec: Spec, limit: Duration) -> Result<Report, String> {
    w.sink.clear_messages();
    let start = Instant::now();
    let mut report = load::run(&w.through, spec).await?;
    let deadline = Instant::now() + limit;
    while w.sink.message_count() < report.sent {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} accepted messages reached the sink in time",
                w.sink.message_count(),
                report.sent
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    report.elapsed = start.elapsed();
    w.sink.clear_messages();
    Ok(report)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The runs after the concurrency sweep: half load, fresh connections,
/// handshakes, argon2 and idle sessions.
struct Extras {
    half_rate: f64,
    half: Report,
    fresh: Report,
    handshakes: f64,
    argon2: f64,
    idle_line: String,
}

/// The best points of the sweep.
struct Best<'a> {
    whole: &'a Point,
    direct: f64,
    memory: f64,
}

/// Runs the plan; returns the markdown it also writes to `out`.
pub(crate) async fn run(plan: &Plan) -> Result<String, String> {
    std::fs::create_dir_all(&plan.out).map_err(|e| format!("{}: {e}", plan.out.display()))?;
    let w = world(plan).await?;
    let pid = w.daemon.child.id();
    let rss_start = idle::rss_kib(pid);
    warm(&w, plan).await?;
    let points = sweep(&w, plan).await?;
    let best = best(&points)?;
    let extras = extras(&w, plan, pid, &best).await?;
    let mut md = markdown(plan, &points, &best, &extras);
    if let (Some(start), Some(now)) = (rss_start, idle::rss_kib(pid)) {
        md.push_str(&format!(
            "| daemon RSS | {start} KiB at start, {now} KiB at the end | /proc/PID/status VmRSS |\n"
        ));
    }
    std::fs::write(plan.out.join("results.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(plan.out.join("throughput.svg"), plot::svg(&points))
        .map_err(|e| e.to_string())?;
    Ok(md)
}

/// The load of one run at `concurrency`.
fn spec(plan: &Plan, concurrency: usize) -> Spec {
    Spec {
        concurrency,
        messages: plan.messages,
        size: plan.size,
        fresh: false,
        rate: None,
        time_limit: plan.time_limit,
    }
}

/// Warms both paths (TLS session caches, page cache, the relay's
/// connection) so the first point is not a cold start.
async fn warm(w: &World, plan: &Plan) -> Result<(), String> {
    let few = Spec {
        messages: 50,
        ..spec(plan, 2)
    };
    load::run(&w.direct, few).await?;
    through(w, few, plan.time_limit).await?;
    Ok(())
}

/// Direct (memory and durable sink) and whole path at each concurrency.
async fn sweep(w: &World, plan: &Plan) -> Result<Vec<Point>, String> {
    let spec = |c| spec(plan, c);
    let mut points = Vec::new();
    for &c in &plan.concurrency {
        let direct_memory = load::run(&w.direct_memory, spec(c)).await?;
        w.memory_sink.clear_messages();
        let direct = load::run(&w.direct, spec(c)).await?;
        w.sink.clear_messages();
        let whole = through(w, spec(c), plan.time_limit * 2).await?;
        eprintln!(
            "c={c}: direct to memory {:.0}/s; direct to durable {:.0}/s p99 {} ms; whole path {:.0}/s p99 {} ms",
            direct_memory.rate(),
            direct.rate(),
            ms(direct.percentile(0.99)),
            whole.rate(),
            ms(whole.percentile(0.99))
        );
        for r in [&direct_memory, &direct, &whole] {
            if let Some(e) = &r.first_error {
                return Err(format!("c={c}: {} errors, first: {e}", r.errors));
            }
        }
        points.push(Point {
            concurrency: c,
            direct_memory,
            direct,
            whole,
        });
    }
    Ok(points)
}

fn best(points: &[Point]) -> Result<Best<'_>, String> {
    let whole = points
        .iter()
        .max_by(|a, b| a.whole.rate().total_cmp(&b.whole.rate()))
        .ok_or("no concurrency given")?;
    let fold = |rate: fn(&Point) -> f64| points.iter().map(rate).fold(0.0f64, f64::max);
    Ok(Best {
        whole,
        direct: fold(|p| p.direct.rate()),
        memory: fold(|p| p.direct_memory.rate()),
    })
}

async fn extras(w: &World, plan: &Plan, pid: u32, best: &Best<'_>) -> Result<Extras, String> {
    let spec = |c| spec(plan, c);
    let best = best.whole;
    // Half load: paced at half the best whole-path rate.
    let half_rate = best.whole.rate() / 2.0;
    let half = through(
        w,
        Spec {
            rate: Some(half_rate),
            messages: ((half_rate * 10.0) as usize).clamp(100, plan.messages * 2),
            ..spec(best.concurrency)
        },
        plan.time_limit * 2,
    )
    .await?;

    // Fresh connections: TLS and AUTH (argon2) for every message.
    let fresh = through(
        w,
        Spec {
            fresh: true,
            messages: 200.min(plan.messages),
            ..spec(4)
        },
        plan.time_limit * 2,
    )
    .await?;
    let handshakes = load::handshakes(&w.through, 4, 400).await?;
    let argon2 = argon2_rate(200).await?;

    // Idle sessions.
    let idle_line = if plan.idle_sessions > 0 {
        let before = idle::rss_kib(pid).unwrap_or(0);
        let (sessions, error) =
            idle::open(&w.through, plan.idle_sessions, 50, plan.time_limit).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = idle::rss_kib(pid).unwrap_or(0);
        let n = sessions.len().max(1);
        let per = after.saturating_sub(before) as f64 / n as f64;
        drop(sessions);
        let error = error
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default();
        format!(
            "| memory per idle TLS session | {per:.1} KiB | RSS {before} KiB before, {after} KiB with {} sessions open{error} |\n",
            n
        )
    } else {
        String::new()
    };

    Ok(Extras {
        half_rate,
        half,
        fresh,
        handshakes,
        argon2,
        idle_line,
    })
}

fn markdown(plan: &Plan, points: &[Point], best: &Best<'_>, extras: &Extras) -> String {
    let Extras {
        half_rate,
        half,
        fresh,
        handshakes,
        argon2,
        idle_line,
    } = extras;
    let (best_direct, best_memory, best) = (best.direct, best.memory, best.whole);
    let mut md = String::new();
    md.push_str(&format!(
        "Messages of {} octets, {} per run, one recipient; loopback TLS 1.3 both ways; submitd relays over {} connections.\n\n",
        plan.size, plan.messages, plan.relay_connections
    ));
    md.push_str("| concurrency | direct, memory sink msg/s | direct, durable sink msg/s | whole path msg/s | of which submitted msg/s | whole / durable direct | whole MB/s | submit p50 ms | submit p99 ms | durable direct p99 ms |\n");
    md.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for p in points {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {} | {} | {} |\n",
            p.concurrency,
            p.direct_memory.rate(),
            p.direct.rate(),
            p.whole.rate(),
            p.whole.submit_rate(),
            p.whole.rate() / p.direct.rate().max(1e-9),
            p.whole.megabytes_per_second(),
            ms(p.whole.percentile(0.5)),
            ms(p.whole.percentile(0.99)),
            ms(p.direct.percentile(0.99)),
        ));
    }
    md.push_str("\n| figure | value | how |\n| --- | ---: | --- |\n");
    md.push_str(&format!(
        "| whole path, best, as a fraction of the durable direct limit | {:.2} | {:.0} msg/s (c={}) / {:.0} msg/s (best direct to the durable sink) |\n",
        best.whole.rate() / best_direct.max(1e-9),
        best.whole.rate(),
        best.concurrency,
        best_direct
    ));
    md.push_str(&format!(
        "| whole path, best, as a fraction of the memory-sink limit | {:.2} | {:.0} msg/s / {:.0} msg/s (best direct, no disk at the sink) |\n",
        best.whole.rate() / best_memory.max(1e-9),
        best.whole.rate(),
        best_memory
    ));
    md.push_str(&format!(
        "| p99 submission latency at half load | {} ms | paced at {:.0} msg/s, c={}; p50 {} ms |\n",
        ms(half.percentile(0.99)),
        half_rate,
        best.concurrency,
        ms(half.percentile(0.5))
    ));
    md.push_str(&format!(
        "| fresh-connection submissions | {:.1} /s | a new TLS connection and AUTH per message, c=4 |\n",
        fresh.rate()
    ));
    md.push_str(&format!(
        "| TLS handshakes alone | {handshakes:.0} /s | connect, TLS 1.3, greeting, c=4 |\n"
    ));
    md.push_str(&format!(
        "| argon2id checks alone | {argon2:.1} /s | the daemon's parameters, 2 at once |\n"
    ));
    md.push_str(idle_line);
    md
}

/// argon2id verifications per second with the daemon's checker and
/// parameters, two at once (this machine's cores).
async fn argon2_rate(count: usize) -> Result<f64, String> {
    let hash = submitd_auth::hash_password(b"pw").map_err(|e| e.to_string())?;
    let (users, _) = submitd_auth::Users::parse(Path::new("bench"), &format!("u {hash}\n"));
    let users = Arc::new(users);
    let checker = Arc::new(submitd_auth::PasswordChecker::new(2).map_err(|e| e.to_string())?);
    let start = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (users, checker) = (Arc::clone(&users), Arc::clone(&checker));
            tokio::spawn(async move { checker.check(&users, "u", "wrong").await })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

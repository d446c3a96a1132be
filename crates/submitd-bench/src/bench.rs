//! The whole-path benchmark, in one run so its figures are ratios of one
//! machine's state: fake smarthosts (in this process, over TLS, on a
//! runtime of their own whose threads are named `sink`) are the sinks, one
//! keeping messages in memory, one writing and fsyncing each before its
//! 250 as a real MTA does; the real `submitd` binary relays to one of them
//! (`--relay-to`, the memory sink by default, as issue 13 measures); the
//! load goes straight to each sink (the physical limits here) and through
//! submitd (TLS, AUTH, policy, prepare, fsynced spool, relay, TLS again),
//! at each concurrency. For each whole-path run: the messages delivered by
//! the time the clients finished against those accepted (is the relay
//! keeping up?), and the CPU per message of submitd, of the sink and of
//! the load clients (from /proc: submitd's process, this process's
//! threads by name). Then half load, fresh connections (TLS and AUTH per
//! message: cold, with the verified-login cache warm, and with TLS
//! resumption too), handshakes and argon2 alone, and the memory of idle
//! sessions. Writes `results.md` and `throughput.svg`.

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
    /// The sink submitd relays to.
    pub(crate) relay_to: SinkKind,
    /// Logins of the fresh-connection runs.
    pub(crate) fresh_logins: usize,
}

/// Which fake smarthost submitd relays to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SinkKind {
    /// Keeps messages in memory: the limit is TLS and SMTP alone.
    Memory,
    /// Writes and fsyncs each message before its 250.
    Durable,
}

impl SinkKind {
    /// Of a pair of things, one for each sink, the one for this sink.
    fn pick<T>(self, memory: T, durable: T) -> T {
        match self {
            Self::Memory => memory,
            Self::Durable => durable,
        }
    }
}

/// CPU time of one run, per message.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuPerMessage {
    /// The submitd process.
    pub(crate) submitd: Duration,
    /// The sinks' threads.
    pub(crate) sink: Duration,
    /// The load clients' threads (everything else in this process).
    pub(crate) load: Duration,
}

/// CPU times so far: submitd's process, and each thread of this process
/// with its role (the sinks' threads are named `sink`).
#[derive(Clone, Debug, Default)]
struct CpuSample {
    submitd: Duration,
    /// By thread id: whether it is a sink thread, and its CPU time.
    threads: std::collections::HashMap<String, (bool, Duration)>,
}

/// utime + stime from a /proc `stat` line (fields 14 and 15, after the
/// command name in parentheses), in USER_HZ ticks (100 a second on Linux).
fn stat_cpu(stat: &str) -> Option<(String, Duration)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((comm, Duration::from_millis(ticks * 10)))
}

fn cpu_sample(submitd: u32) -> CpuSample {
    let mut sample = CpuSample::default();
    if let Some((_, t)) = std::fs::read_to_string(format!("/proc/{submitd}/stat"))
        .ok()
        .as_deref()
        .and_then(stat_cpu)
    {
        sample.submitd = t;
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if let Some((comm, t)) = stat_cpu(&stat) {
                let tid = task.file_name().to_string_lossy().into_owned();
                sample.threads.insert(tid, (comm.starts_with("sink"), t));
            }
        }
    }
    sample
}

impl CpuSample {
    /// Per message since `before`. A thread of this process that ended
    /// meanwhile (an idle blocking-pool thread) takes its time with it, so
    /// the sink's and the clients' figures can be a little low; a thread
    /// that started meanwhile counts whole.
    fn per_message(&self, before: &Self, messages: usize) -> CpuPerMessage {
        let n = u32::try_from(messages.max(1)).unwrap_or(u32::MAX);
        let (mut sink, mut load) = (Duration::ZERO, Duration::ZERO);
        for (tid, (is_sink, t)) in &self.threads {
            let was = before.threads.get(tid).map_or(Duration::ZERO, |(_, t)| *t);
            let used = t.saturating_sub(was);
            if *is_sink {
                sink += used;
            } else {
                load += used;
            }
        }
        CpuPerMessage {
            submitd: self.submitd.saturating_sub(before.submitd) / n,
            sink: sink / n,
            load: load / n,
        }
    }
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
    /// Of the whole path: messages at the sink when the clients finished,
    /// as a share of those accepted.
    pub(crate) delivered_share: f64,
    /// CPU per message of the whole path, by process.
    pub(crate) cpu: CpuPerMessage,
    /// CPU per message of the direct run to the same sink.
    pub(crate) direct_cpu: CpuPerMessage,
}

/// A running submitd, killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_submitd(binary: &Path, config: &Path) -> Result<Daemon, String> {
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

/// The sinks' runtime, shut down without waiting when dropped (a runtime
/// may not be dropped from inside another one otherwise).
pub(crate) struct SinkRuntime(pub(crate) Option<tokio::runtime::Runtime>);

impl Drop for SinkRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct World {
    _dir: tempfile::TempDir,
    durable_sink: FakeSmarthost,
    memory_sink: FakeSmarthost,
    relay_to: SinkKind,
    daemon: Daemon,
    direct: Target,
    direct_memory: Target,
    through: Target,
    _sinks: SinkRuntime,
}

impl World {
    /// The sink submitd relays to.
    fn sink(&self) -> &FakeSmarthost {
        self.relay_to.pick(&self.memory_sink, &self.durable_sink)
    }

    /// The direct path to the sink submitd relays to.
    fn direct_to_sink(&self) -> &Target {
        self.relay_to.pick(&self.direct_memory, &self.direct)
    }
}

async fn world(plan: &Plan) -> Result<World, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let ca = Arc::new(TestCa::new());
    let sinks = sink_runtime()?;
    let sink_dir = d.join("sink");
    std::fs::create_dir_all(&sink_dir).map_err(|e| e.to_string())?;
    let (memory_sink, sink) = {
        let ca = Arc::clone(&ca);
        sinks
            .spawn(async move {
                let memory =
                    FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None)
                        .await;
                let durable = FakeSmarthost::start_durable(
                    &ca,
                    &["localhost"],
                    Transport::ImplicitTls,
                    sink_dir,
                )
                .await;
                (memory, durable)
            })
            .await
            .map_err(|e| format!("sinks: {e}"))?
    };
    let sinks = SinkRuntime(Some(sinks));
    let sink_port = plan
        .relay_to
        .pick(memory_sink.addr.port(), sink.addr.port());
    write_files(d, plan, &ca, sink_port)?;
    let daemon = start_submitd(&plan.submitd, &d.join("submitd.toml"))?;
    let direct = direct_target(d, sink.addr.port());
    let direct_memory = direct_target(d, memory_sink.addr.port());
    let through = load_target(d, daemon.port);
    Ok(World {
        _dir: dir,
        durable_sink: sink,
        memory_sink,
        relay_to: plan.relay_to,
        daemon,
        direct,
        direct_memory,
        through,
        _sinks: sinks,
    })
}

/// The runtime the in-process sinks run on, apart from the load's, its
/// threads named `sink` (their CPU is counted by that name).
pub(crate) fn sink_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sink")
        .enable_all()
        .build()
        .map_err(|e| format!("sink runtime: {e}"))
}

/// The load through a submitd on `port`: user `load`, the test CA in `d`.
pub(crate) fn load_target(d: &Path, port: u16) -> Target {
    Target {
        host: "localhost".into(),
        port,
        tls: Transport::ImplicitTls,
        ca_file: Some(d.join("ca.pem")),
        user: "load".into(),
        password: "load password".into(),
        from: "load@example.org".into(),
        to: "rcpt@example.net".into(),
    }
}

/// The load straight to a sink on `port`, as submitd logs in to it.
pub(crate) fn direct_target(d: &Path, port: u16) -> Target {
    Target {
        user: "alice".into(),
        password: "secret".into(),
        ..load_target(d, port)
    }
}

/// What every submitd of a benchmark reads, in `d`: the test certificate
/// and CA, the users `load` and each of `devices`, unlimited, and the
/// sinks' password.
pub(crate) fn write_credentials(d: &Path, ca: &TestCa, devices: usize) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        std::fs::write(d.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("ca.pem", &ca.pem())?;
    let (cert, key) = ca.issue_pem(&["localhost"]);
    write("cert.pem", &cert)?;
    write("key.pem", &key)?;
    let hash = submitd_auth::hash_password(b"load password").map_err(|e| e.to_string())?;
    let limits = "send-as=load@example.org max-messages=100000000/h,100000000/d max-recipients=100000000/h,100000000/d";
    let mut users = format!("load {hash} {limits}\n");
    // The fresh-connection runs' devices: load0, load1, …
    for i in 0..devices {
        users.push_str(&format!("load{i} {hash} {limits}\n"));
    }
    write("users", &users)?;
    write("upstream.pass", "secret\n")?;
    std::fs::set_permissions(
        d.join("upstream.pass"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| e.to_string())
}

/// A benchmark submitd's config: one implicit-TLS listener on `address`
/// (with `listen_extra` lines), its queue in `queue`, relaying over
/// `relay_connections` to the sink on `sink_port`, `connections` at once
/// from anywhere; then `extra` sections.
pub(crate) fn daemon_config(
    address: &str,
    listen_extra: &str,
    queue: &str,
    (sink_port, relay_connections): (u16, usize),
    connections: usize,
    extra: &str,
) -> String {
    format!(
        r#"hostname = "localhost"
[[listen]]
address = "{address}"
mode = "implicit"
{listen_extra}
[tls]
certificate = "cert.pem"
key = "key.pem"
[auth]
users = "users"
[queue]
directory = "{queue}"
[relay]
connections = {relay_connections}
[[relay.upstream]]
host = "localhost"
port = {sink_port}
tls = "implicit"
username = "alice"
password_file = "upstream.pass"
ca_file = "ca.pem"
[limits]
connections = {connections}
connections_per_client = {connections}
unauthenticated_connections = {connections}
{extra}"#
    )
}

/// The daemon's files in `d`: test certificate, users (load, load0, …),
/// the upstream password and `submitd.toml` relaying to `sink_port`.
fn write_files(d: &Path, plan: &Plan, ca: &TestCa, sink_port: u16) -> Result<(), String> {
    write_credentials(d, ca, plan.fresh_logins)?;
    let many = plan.idle_sessions.max(1000) + 100;
    let config = daemon_config(
        "127.0.0.1:0",
        "",
        "queue",
        (sink_port, plan.relay_connections),
        many,
        "",
    );
    std::fs::write(d.join("submitd.toml"), config).map_err(|e| format!("submitd.toml: {e}"))
}

/// A whole-path run: the report (`elapsed` to the last arrival at the
/// sink), the share delivered by the time the clients finished, and the
/// CPU per message.
struct Through {
    report: Report,
    delivered_share: f64,
    cpu: CpuPerMessage,
}

/// Runs load through submitd and waits for every accepted message to
/// arrive at the sink; `elapsed` becomes the time to the last arrival.
async fn through(w: &World, spec: Spec, limit: Duration) -> Result<Through, String> {
    let sink = w.sink();
    sink.clear_messages();
    let cpu_before = cpu_sample(w.daemon.child.id());
    let start = Instant::now();
    let mut report = load::run(&w.through, spec).await?;
    let delivered_by_end = sink.message_count();
    let deadline = Instant::now() + limit;
    while sink.message_count() < report.sent {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} accepted messages reached the sink in time",
                sink.message_count(),
                report.sent
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    report.elapsed = start.elapsed();
    let cpu = cpu_sample(w.daemon.child.id()).per_message(&cpu_before, report.sent);
    sink.clear_messages();
    Ok(Through {
        delivered_share: delivered_by_end as f64 / report.sent.max(1) as f64,
        report,
        cpu,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The runs after the concurrency sweep: half load, fresh connections,
/// handshakes, argon2 and idle sessions.
struct Extras {
    half_rate: f64,
    half: Report,
    /// Fresh connections: every login new to the cache, no resumption.
    fresh_cold: Report,
    /// The same logins again: the cache warm, still no resumption.
    fresh_warm: Report,
    /// Warm cache and TLS resumption: a returning device.
    fresh_resumed: Report,
    fresh_cpu: [CpuPerMessage; 3],
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
        resume: true,
        user_pool: 0,
    }
}

/// Warms both paths (TLS session caches, page cache, the relay's
/// connection) so the first point is not a cold start.
async fn warm(w: &World, plan: &Plan) -> Result<(), String> {
    let few = Spec {
        messages: 50,
        ..spec(plan, 2)
    };
    load::run(w.direct_to_sink(), few).await?;
    w.sink().clear_messages();
    through(w, few, plan.time_limit).await?;
    Ok(())
}

/// Direct (memory and durable sink) and whole path at each concurrency.
async fn sweep(w: &World, plan: &Plan) -> Result<Vec<Point>, String> {
    let spec = |c| spec(plan, c);
    let mut points = Vec::new();
    let pid = w.daemon.child.id();
    for &c in &plan.concurrency {
        let before = cpu_sample(pid);
        let direct_memory = load::run(&w.direct_memory, spec(c)).await?;
        let memory_cpu = cpu_sample(pid).per_message(&before, direct_memory.sent);
        w.memory_sink.clear_messages();
        let before = cpu_sample(pid);
        let direct = load::run(&w.direct, spec(c)).await?;
        let durable_cpu = cpu_sample(pid).per_message(&before, direct.sent);
        w.durable_sink.clear_messages();
        let Through {
            report: whole,
            delivered_share,
            cpu,
        } = through(w, spec(c), plan.time_limit * 2).await?;
        let direct_cpu = w.relay_to.pick(memory_cpu, durable_cpu);
        eprintln!(
            "c={c}: direct to memory {:.0}/s; direct to durable {:.0}/s p99 {} ms; whole path {:.0}/s (accepted {:.0}/s, {:.2} delivered by the end) p99 {} ms; CPU/msg submitd {} us, sink {} us, clients {} us",
            direct_memory.rate(),
            direct.rate(),
            ms(direct.percentile(0.99)),
            whole.rate(),
            whole.submit_rate(),
            delivered_share,
            ms(whole.percentile(0.99)),
            cpu.submitd.as_micros(),
            cpu.sink.as_micros(),
            cpu.load.as_micros(),
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
            delivered_share,
            cpu,
            direct_cpu,
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
            // max then min, not clamp: a run of fewer than 50 messages must not panic.
            messages: ((half_rate * 10.0) as usize)
                .max(100)
                .min(plan.messages * 2),
            ..spec(best.concurrency)
        },
        plan.time_limit * 2,
    )
    .await?
    .report;

    // Fresh connections: TLS and AUTH for every message, 16 at once, each
    // login a different device. Cold: new to the cache (one argon2 run
    // each) and no TLS resumption; warm: the same logins again; resumed:
    // warm and resuming the TLS session.
    let logins = plan.fresh_logins.max(1);
    let fresh = |resume: bool| Spec {
        fresh: true,
        messages: logins,
        user_pool: logins,
        resume,
        ..spec(16)
    };
    let cold = through(w, fresh(false), plan.time_limit * 2).await?;
    let warm = through(w, fresh(false), plan.time_limit * 2).await?;
    let resumed = through(w, fresh(true), plan.time_limit * 2).await?;
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
        fresh_cpu: [cold.cpu, warm.cpu, resumed.cpu],
        fresh_cold: cold.report,
        fresh_warm: warm.report,
        fresh_resumed: resumed.report,
        handshakes,
        argon2,
        idle_line,
    })
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

fn markdown(plan: &Plan, points: &[Point], best: &Best<'_>, extras: &Extras) -> String {
    let Extras {
        half_rate,
        half,
        fresh_cold,
        fresh_warm,
        fresh_resumed,
        fresh_cpu,
        handshakes,
        argon2,
        idle_line,
    } = extras;
    let sink = plan.relay_to.pick("the memory sink", "the durable sink");
    let mut md = String::new();
    md.push_str(&format!(
        "Messages of {} octets, {} per run, one recipient; loopback TLS 1.3 both ways; submitd relays to {sink} over {} connections. CPU per message: submitd's process, the sinks' threads and the load clients' threads (/proc, 10 ms ticks), divided by the messages of the run.\n\n",
        plan.size, plan.messages, plan.relay_connections
    ));
    md.push_str("| clients | direct to the sink msg/s | whole path msg/s | whole / direct | accepted msg/s | delivered / accepted when the clients finished | submit p50 ms | submit p99 ms | CPU µs/msg: submitd | sink | clients | sink + clients, direct | direct, other sink msg/s |\n");
    md.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for p in points {
        let (memory, durable) = (p.direct_memory.rate(), p.direct.rate());
        let (direct, other) = plan.relay_to.pick((memory, durable), (durable, memory));
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            p.concurrency,
            direct,
            p.whole.rate(),
            p.whole.rate() / direct.max(1e-9),
            p.whole.submit_rate(),
            p.delivered_share,
            ms(p.whole.percentile(0.5)),
            ms(p.whole.percentile(0.99)),
            us(p.cpu.submitd),
            us(p.cpu.sink),
            us(p.cpu.load),
            us(p.direct_cpu.sink + p.direct_cpu.load),
            other,
        ));
    }
    let best_direct = plan.relay_to.pick(best.memory, best.direct);
    let best = best.whole;
    md.push_str("\n| figure | value | how |\n| --- | ---: | --- |\n");
    md.push_str(&format!(
        "| whole path, best, / direct to the same sink, best | {:.2} | {:.0} msg/s (c={}) / {:.0} msg/s |\n",
        best.whole.rate() / best_direct.max(1e-9),
        best.whole.rate(),
        best.concurrency,
        best_direct
    ));
    md.push_str(&format!(
        "| p99 submission latency at half load | {} ms | paced at {:.0} msg/s, c={}; p50 {} ms |\n",
        ms(half.percentile(0.99)),
        half_rate,
        best.concurrency,
        ms(half.percentile(0.5))
    ));
    let fresh_rows = [
        ("fresh connection + AUTH per message, cold (each login new to the cache, full TLS handshake)", fresh_cold, fresh_cpu[0]),
        ("the same logins again, cache warm, full TLS handshake", fresh_warm, fresh_cpu[1]),
        ("the same, cache warm and TLS resumed", fresh_resumed, fresh_cpu[2]),
    ];
    for (name, report, cpu) in fresh_rows {
        md.push_str(&format!(
            "| {name} | {:.1} /s | c=16, {} logins; submitd {} µs CPU each; p99 {} ms |\n",
            report.rate(),
            report.sent,
            us(cpu.submitd),
            ms(report.percentile(0.99)),
        ));
    }
    md.push_str(&format!(
        "| warm / cold fresh-login rate | {:.1} (resumed: {:.1}) | |\n",
        fresh_warm.rate() / fresh_cold.rate().max(1e-9),
        fresh_resumed.rate() / fresh_cold.rate().max(1e-9),
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

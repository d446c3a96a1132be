//! The cluster scenario: what sharing limits costs. In one run, on
//! loopback: a fake smarthost (memory sink) in this process, a real
//! `redis-server`, a real `haproxy` (PROXY v2, round robin) in front of
//! two pairs of submitd instances (one pair with local limits, one with
//! `[cluster]`), and one submitd alone with local limits. Rounds
//! alternate the four paths (straight to the sink, one instance, the pair,
//! the pair with Redis), each with reused connections, then with a fresh
//! connection (TLS and AUTH) per message; the report gives medians, the
//! Redis pair's ratios to the single instance and to the local pair (the
//! cost of Redis alone), and Redis's round trips and commands per message
//! from its own `INFO commandstats`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use submitd_relay::RelayConfig;
use submitd_smtp::Transport;
use submitd_testkit::{FakeSmarthost, Fault, TestCa};

use crate::bench::{
    daemon_config, direct_target, load_target, sink_runtime, start_submitd, write_credentials,
    Daemon, SinkRuntime,
};
use crate::load::{self, Spec, Target};

/// What to measure.
#[derive(Clone, Debug)]
pub(crate) struct ClusterPlan {
    /// The submitd binary.
    pub(crate) submitd: PathBuf,
    /// Clients at once.
    pub(crate) concurrency: usize,
    /// Messages per run (reused connections).
    pub(crate) messages: usize,
    /// Messages per run with a fresh connection each.
    pub(crate) fresh_messages: usize,
    /// Rounds of the three paths.
    pub(crate) rounds: usize,
    /// Octets per message.
    pub(crate) size: usize,
    /// Bound on each run.
    pub(crate) time_limit: Duration,
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn wait_port(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn spawn(program: &str, args: &[String]) -> Result<Killed, String> {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Killed)
        .map_err(|e| format!("{program}: {e} (apt-get install redis-server haproxy)"))
}

/// Redis's counts so far: round trips (scripts run, scripts loaded) and
/// commands in all (the commands inside scripts count there too). INFO
/// itself is left out.
fn redis_commands(port: u16) -> Result<(u64, u64), String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut trips, mut all) = (0, 0);
    for line in text.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = rest
            .split("calls=")
            .nth(1)
            .and_then(|c| c.split(',').next())
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0);
        if name == "info" {
            continue;
        }
        all += calls;
        if name == "evalsha" || name == "eval" || name.starts_with("script") {
            trips += calls;
        }
    }
    Ok((trips, all))
}

struct Setup {
    _dir: tempfile::TempDir,
    _redis: Killed,
    _haproxy: Killed,
    _single: Daemon,
    _instances: Vec<Daemon>,
    _sink: FakeSmarthost,
    _sinks: SinkRuntime,
    redis_port: u16,
    direct: Target,
    single: Target,
    /// Two instances behind HAProxy, limits counted by each.
    pair: Target,
    /// The same with Redis.
    cluster: Target,
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
}

async fn setup(plan: &ClusterPlan) -> Result<Setup, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let ca = Arc::new(TestCa::new());
    let sinks = sink_runtime()?;
    let sink = {
        let ca = Arc::clone(&ca);
        sinks
            .spawn(async move {
                FakeSmarthost::start(&ca, &["localhost"], Transport::ImplicitTls, Fault::None).await
            })
            .await
            .map_err(|e| format!("sink: {e}"))?
    };
    let sinks = SinkRuntime(Some(sinks));
    write_credentials(d, &ca, 0)?;

    let redis_port = free_port()?;
    let redis = spawn(
        "redis-server",
        &[
            "--port".into(),
            redis_port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
    )?;
    wait_port(redis_port, "redis-server")?;

    // The load tool is not the flood the connection rate guards against.
    let config = |queue: &str, address: &str, listen_extra: &str, extra: &str| {
        let relay = (sink.addr.port(), RelayConfig::DEFAULT_CONNECTIONS);
        daemon_config(
            address,
            listen_extra,
            queue,
            relay,
            2000,
            &format!("connection_rate = 0\n{extra}"),
        )
    };
    write(d, "single.toml", &config("single", "127.0.0.1:0", "", ""))?;
    let proxied = "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]";
    let shared = format!("[cluster]\nredis = \"redis://127.0.0.1:{redis_port}/0\"\n");
    let single = start_submitd(&plan.submitd, &d.join("single.toml"))?;
    // Four instances: a pair with local limits, a pair with Redis.
    let mut instances = Vec::new();
    let mut ports = Vec::new();
    for (name, extra) in [("a", ""), ("b", ""), ("c", &shared), ("d", &shared)] {
        let port = free_port()?;
        write(
            d,
            &format!("{name}.toml"),
            &config(name, &format!("127.0.0.1:{port}"), proxied, extra),
        )?;
        instances.push(start_submitd(
            &plan.submitd,
            &d.join(format!("{name}.toml")),
        )?);
        ports.push(port);
    }
    let (front_pair, front_cluster) = (free_port()?, free_port()?);
    write(
        d,
        "haproxy.cfg",
        &format!(
            "global\n  maxconn 8192\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend pair\n  bind 127.0.0.1:{front_pair}\n  default_backend pair\n\
             backend pair\n  balance roundrobin\n  server a 127.0.0.1:{} send-proxy-v2\n  server b 127.0.0.1:{} send-proxy-v2\n\
             frontend cluster\n  bind 127.0.0.1:{front_cluster}\n  default_backend cluster\n\
             backend cluster\n  balance roundrobin\n  server c 127.0.0.1:{} send-proxy-v2\n  server d 127.0.0.1:{} send-proxy-v2\n",
            ports[0], ports[1], ports[2], ports[3]
        ),
    )?;
    let haproxy = spawn(
        "haproxy",
        &[
            "-db".into(),
            "-f".into(),
            d.join("haproxy.cfg").display().to_string(),
        ],
    )?;
    wait_port(front_pair, "haproxy")?;
    wait_port(front_cluster, "haproxy")?;

    Ok(Setup {
        direct: direct_target(d, sink.addr.port()),
        single: load_target(d, single.port),
        pair: load_target(d, front_pair),
        cluster: load_target(d, front_cluster),
        _dir: dir,
        _redis: redis,
        _haproxy: haproxy,
        _single: single,
        _instances: instances,
        _sink: sink,
        _sinks: sinks,
        redis_port,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the scenario; returns the report (Markdown).
pub(crate) async fn run(plan: &ClusterPlan) -> Result<String, String> {
    let setup = setup(plan).await?;
    let mut md = format!(
        "# Cluster: HAProxy + 2 instances + Redis against one instance\n\n\
         {} rounds; {} messages of {} octets at concurrency {} over reused connections, \
         {} with a fresh connection (TLS + AUTH) each; medians.\n\n\
         | path | reused msg/s | fresh msg/s |\n| --- | ---: | ---: |\n",
        plan.rounds, plan.messages, plan.size, plan.concurrency, plan.fresh_messages
    );
    const PATHS: [&str; 4] = [
        "straight to the sink",
        "one instance, local limits",
        "HAProxy + 2 instances, local limits",
        "HAProxy + 2 instances + Redis",
    ];
    let targets = [&setup.direct, &setup.single, &setup.pair, &setup.cluster];
    let mut rates: [[Vec<f64>; 2]; 4] = Default::default();
    // Per round: cluster / single, Redis pair / local pair.
    let mut ratios: [[Vec<f64>; 2]; 2] = Default::default();
    let (mut redis_trips, mut redis_commands_run, mut cluster_messages) = (0u64, 0u64, 0u64);
    for _ in 0..plan.rounds {
        for (f, fresh) in [false, true].into_iter().enumerate() {
            let spec = Spec {
                concurrency: plan.concurrency,
                messages: if fresh {
                    plan.fresh_messages
                } else {
                    plan.messages
                },
                size: plan.size,
                fresh,
                rate: None,
                time_limit: plan.time_limit,
                resume: true,
                user_pool: 0,
            };
            let mut round = [0.0; 4];
            for (p, target) in targets.into_iter().enumerate() {
                let before = redis_commands(setup.redis_port)?;
                let report = load::run(target, spec).await?;
                if report.errors > 0 {
                    return Err(format!(
                        "{} errors on {}: {}",
                        report.errors,
                        PATHS[p],
                        report.first_error.unwrap_or_default()
                    ));
                }
                if p == 3 && !fresh {
                    let after = redis_commands(setup.redis_port)?;
                    redis_trips += after.0 - before.0;
                    redis_commands_run += after.1 - before.1;
                    cluster_messages += report.sent as u64;
                }
                round[p] = report.rate();
                rates[p][f].push(report.rate());
            }
            ratios[0][f].push(round[3] / round[1].max(1e-9));
            ratios[1][f].push(round[3] / round[2].max(1e-9));
        }
    }
    for (p, name) in PATHS.iter().enumerate() {
        md.push_str(&format!(
            "| {name} | {:.0} | {:.0} |\n",
            median(rates[p][0].clone()),
            median(rates[p][1].clone())
        ));
    }
    md.push_str(&format!(
        "\nMedians of per-round ratios (reused, fresh):\n\
         - with Redis / one instance: {:.2}, {:.2}\n\
         - with Redis / the same pair with local limits (the cost of Redis): {:.2}, {:.2}\n\n\
         Redis per message through the cluster (reused connections): {:.2} round trips, \
         {:.2} commands counting those inside scripts\n",
        median(ratios[0][0].clone()),
        median(ratios[0][1].clone()),
        median(ratios[1][0].clone()),
        median(ratios[1][1].clone()),
        redis_trips as f64 / cluster_messages.max(1) as f64,
        redis_commands_run as f64 / cluster_messages.max(1) as f64
    ));
    Ok(md)
}

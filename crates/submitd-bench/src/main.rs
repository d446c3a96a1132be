//! `submitd-load`: submitd's own load tool (not published).
//!
//! * `send` — concurrent TLS clients that log in and send messages of a
//!   given size to any submission server, over reused connections or a
//!   fresh one per message, as fast as they go or paced to a rate;
//!   reports messages/s, MB/s and latency percentiles.
//! * `idle` — holds many greeted TLS sessions open from several loopback
//!   source addresses, for the memory a session costs.
//! * `bench` — the whole-path benchmark in one run: a fake smarthost in
//!   this process as the sink, the real submitd relaying to it, load
//!   straight to the sink (the physical limit) and through submitd at each
//!   concurrency; half load, fresh connections, TLS handshakes and argon2
//!   alone, idle memory; writes results.md and throughput.svg.
//! * `cluster` — what shared limits cost: two instances with Redis behind
//!   HAProxy against one instance with local limits, in one run.
//!
//! Every run is bounded by a message count and a time limit, and every
//! address it sends to is the one given (loopback in all of submitd's
//! own uses).
//!
//! Dependencies: `clap` for the command line, `humantime` for durations,
//! `submitd-relay`'s upstream client (the project's client machine over
//! TLS) to send, `rustls`/`tokio-rustls` for idle sessions,
//! `submitd-testkit` for the test CA and the fake smarthost,
//! `submitd-auth` to hash the load user's password and time argon2,
//! `tempfile` for the benchmark's throwaway folder.

mod bench;
mod cluster;
mod idle;
mod load;
mod plot;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use submitd_smtp::Transport;

#[derive(Parser)]
#[command(
    name = "submitd-load",
    about = "submitd's load tool (loopback benchmarks)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Tls {
    Implicit,
    Starttls,
}

#[derive(Args)]
struct TargetArgs {
    /// Host name to connect to and to verify the certificate for.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Port.
    #[arg(long)]
    port: u16,
    /// Implicit TLS (465) or STARTTLS (587).
    #[arg(long, value_enum, default_value = "implicit")]
    tls: Tls,
    /// CA file to verify the server with (default: the system's roots).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Login.
    #[arg(long, default_value = "")]
    user: String,
    /// File whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Envelope sender.
    #[arg(long, default_value = "load@example.org")]
    from: String,
    /// Envelope recipient.
    #[arg(long, default_value = "rcpt@example.net")]
    to: String,
}

#[derive(Subcommand)]
enum Command {
    /// Send messages and report throughput and latency.
    Send {
        #[command(flatten)]
        target: TargetArgs,
        /// Clients at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Messages in all.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Octets per message ("10K", "1M" or a number).
        #[arg(long, default_value = "10K", value_parser = parse_size)]
        size: usize,
        /// A new connection (TLS and AUTH) for every message.
        #[arg(long)]
        fresh: bool,
        /// Messages per second in all (default: as fast as it goes).
        #[arg(long)]
        rate: Option<f64>,
        /// Stop after this long whatever is left ("60s").
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        time_limit: Duration,
        /// No TLS session resumption: every fresh connection a full handshake.
        #[arg(long)]
        no_resume: bool,
        /// Log in as USER0 … USER{N-1} in turn (many devices).
        #[arg(long, default_value_t = 0)]
        user_pool: usize,
    },
    /// Hold idle TLS sessions open.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        /// Sessions to open.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Loopback source addresses to spread them over (127.0.0.1 up).
        #[arg(long, default_value_t = 50)]
        sources: usize,
        /// How long to hold them.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// A process whose RSS to report before and while they are open.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// The whole-path benchmark (starts its own sink and submitd).
    Bench {
        /// The submitd binary (default: beside this one).
        #[arg(long)]
        submitd: Option<PathBuf>,
        /// Concurrencies, comma-separated.
        #[arg(long, default_value = "1,2,4,8,16,32", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Messages per run.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Octets per message.
        #[arg(long, default_value = "10K", value_parser = parse_size)]
        size: usize,
        /// Idle sessions for the memory figure (0 skips it).
        #[arg(long, default_value_t = 1000)]
        idle_sessions: usize,
        /// Bound on each run.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        time_limit: Duration,
        /// Folder for results.md and throughput.svg.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// submitd's `[relay] connections` (deliveries at once).
        #[arg(long, default_value_t = 4)]
        relay_connections: usize,
        /// The sink submitd relays to (and the direct path it is compared
        /// with): kept in memory, or written and fsynced like a real MTA.
        #[arg(long, value_enum, default_value = "memory")]
        relay_to: bench::SinkKind,
        /// Logins for the fresh-connection runs (each once cold, then again warm).
        #[arg(long, default_value_t = 200)]
        fresh_logins: usize,
    },
    /// Two instances with Redis behind HAProxy against one instance
    /// (starts its own sink, redis-server, haproxy and submitds).
    Cluster {
        /// The submitd binary (default: beside this one).
        #[arg(long)]
        submitd: Option<PathBuf>,
        /// Clients at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Messages per run over reused connections.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Messages per run with a fresh connection each.
        #[arg(long, default_value_t = 300)]
        fresh_messages: usize,
        /// Rounds of the three paths.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Octets per message.
        #[arg(long, default_value = "10K", value_parser = parse_size)]
        size: usize,
        /// Bound on each run.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        time_limit: Duration,
    },
}

/// The submitd binary given, or the one beside this tool.
fn submitd_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(path) => Ok(path),
        None => Ok(std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("submitd")),
    }
}

fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (n, f) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1024),
        Some('M' | 'm') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    n.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(f))
        .filter(|&n| n >= 200)
        .ok_or_else(|| format!("{text:?} is not a size of at least 200 octets, such as \"10K\""))
}

impl TargetArgs {
    fn target(&self) -> Result<load::Target, String> {
        let password = match &self.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        };
        Ok(load::Target {
            host: self.host.clone(),
            port: self.port,
            tls: match self.tls {
                Tls::Implicit => Transport::ImplicitTls,
                Tls::Starttls => Transport::StartTls,
            },
            ca_file: self.ca.clone(),
            user: self.user.clone(),
            password,
            from: self.from.clone(),
            to: self.to.clone(),
        })
    }
}

fn print_report(report: &load::Report) {
    println!(
        "sent {} messages, {} errors, in {:.2} s: {:.1} msg/s, {:.2} MB/s",
        report.sent,
        report.errors,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.megabytes_per_second()
    );
    let ms = |q| report.percentile(q).as_secs_f64() * 1000.0;
    println!(
        "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(1.0)
    );
    if let Some(e) = &report.first_error {
        println!("first error: {e}");
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Send {
            target,
            concurrency,
            messages,
            size,
            fresh,
            rate,
            time_limit,
            no_resume,
            user_pool,
        } => {
            let report = load::run(
                &target.target()?,
                load::Spec {
                    concurrency,
                    messages,
                    size,
                    fresh,
                    rate,
                    time_limit,
                    resume: !no_resume,
                    user_pool,
                },
            )
            .await?;
            print_report(&report);
            if report.errors > 0 {
                return Err(format!("{} messages failed", report.errors));
            }
            Ok(())
        }
        Command::Idle {
            target,
            sessions,
            sources,
            hold,
            pid,
        } => {
            let before = pid.and_then(idle::rss_kib);
            let (open, error) = idle::open(&target.target()?, sessions, sources, hold).await?;
            println!("open {}", open.len());
            if let Some(e) = error {
                println!("first error: {e}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let (Some(before), Some(after)) = (before, pid.and_then(idle::rss_kib)) {
                println!(
                    "rss {before} KiB before, {after} KiB with {} open: {:.1} KiB a session",
                    open.len(),
                    after.saturating_sub(before) as f64 / open.len().max(1) as f64
                );
            }
            tokio::time::sleep(hold).await;
            Ok(())
        }
        Command::Bench {
            submitd,
            concurrency,
            messages,
            size,
            idle_sessions,
            time_limit,
            out,
            relay_connections,
            relay_to,
            fresh_logins,
        } => {
            let submitd = submitd_binary(submitd)?;
            let md = bench::run(&bench::Plan {
                submitd,
                concurrency,
                messages,
                size,
                idle_sessions,
                time_limit,
                out: out.clone(),
                relay_connections,
                relay_to,
                fresh_logins,
            })
            .await?;
            println!("{md}");
            println!(
                "written: {}/results.md, {}/throughput.svg",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Cluster {
            submitd,
            concurrency,
            messages,
            fresh_messages,
            rounds,
            size,
            time_limit,
        } => {
            let md = cluster::run(&cluster::ClusterPlan {
                submitd: submitd_binary(submitd)?,
                concurrency,
                messages,
                fresh_messages,
                rounds,
                size,
                time_limit,
            })
            .await?;
            println!("{md}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("submitd-load: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("submitd-load: {e}");
            ExitCode::from(1)
        }
    }
}

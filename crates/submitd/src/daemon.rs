//! `submitd serve`: the daemon's life. Start (queue recovered, users and
//! certificates read, listeners bound or taken from systemd, the relay
//! started), then signals until stopped, then a graceful stop.
//!
//! ```text
//! start ─▶ READY=1 ─┬─ SIGHUP ─▶ RELOADING=1 ─▶ users + certificates again ─▶ READY=1
//!                   └─ SIGTERM/SIGINT ─▶ STOPPING=1 ─▶ cancel: no new connections,
//!                        sessions finish the message in flight then get 421, the
//!                        relay's workers finish their attempt ─▶ wait (grace) ─▶ exit
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use submitd_auth::CredentialStore;
use submitd_config::{LogFormat, Settings};
use submitd_listener::{serve as serve_listener, server_tls_config, Certificates};
use submitd_relay::Spool;
use submitd_smtp::Transport;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{demo, memory, sockets, wiring};

/// Tells systemd (if it started us) how we are; a no-op otherwise.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) fn serve(settings: Settings) -> Result<(), String> {
    let said = if settings.demo {
        demo::prepare(&settings)?
    } else {
        Vec::new()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logwriter::start());
    match settings.log_format {
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object a line: the event's fields at the top level beside
        // timestamp, level, target and message.
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    for line in said {
        eprintln!("{line}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(run(settings));
    crate::logwriter::flush();
    result
}

/// What runs while the daemon runs, and what a reload or a stop touches.
struct Running {
    credentials: Arc<CredentialStore>,
    certificates: Arc<Certificates>,
    listeners: Vec<JoinHandle<TaskTracker>>,
    relay: JoinHandle<()>,
    /// For abandoning transfers when the stop's grace runs out.
    relay_handle: submitd_relay::Relay,
    local_socket: Option<PathBuf>,
    shutdown: CancellationToken,
}

async fn run(settings: Settings) -> Result<(), String> {
    // Before anything says "ready": a SIGHUP that arrives between the
    // ready line and the handler would otherwise kill the daemon (the
    // default action), which is what a flaky test once showed.
    let signals = Signals::install()?;
    let running = start(&settings).await?;
    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        // Ping at half the interval; a hung runtime stops the pings.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval / 2).await;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
    tracing::info!("ready");
    signals.wait(&settings, &running).await;
    stop(&settings, running).await;
    Ok(())
}

/// The Prometheus endpoint (`[metrics]`), the queue read from `relay` at
/// each scrape.
async fn serve_metrics(
    settings: &Settings,
    metrics: &submitd_config::MetricsSettings,
    relay: &submitd_relay::Relay,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(metrics.listen)
        .await
        .map_err(|e| {
            format!(
                "{}: metrics.listen: cannot listen on {}: {e}",
                settings.path.display(),
                metrics.listen
            )
        })?;
    let registry = submitd_metrics::metrics();
    registry.set_per_user(metrics.per_user);
    let relay = relay.clone();
    registry.set_queue_probe(move || {
        let (messages, oldest) = relay.queue_figures();
        submitd_metrics::QueueFigures {
            messages: messages as u64,
            oldest,
        }
    });
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %local, per_user = metrics.per_user, "metrics listening");
    tokio::spawn(submitd_metrics::serve(listener, shutdown.clone()));
    Ok(())
}

async fn start(settings: &Settings) -> Result<Running, String> {
    let (spool, recovery) = Spool::open(&settings.queue.directory).map_err(|e| e.to_string())?;
    tracing::info!(
        queued = recovery.queued.len(),
        partial = recovery.partial,
        corrupt = recovery.corrupt,
        "queue recovered"
    );
    let (credentials, errors) =
        CredentialStore::open(&settings.auth.users).map_err(|e| e.to_string())?;
    for error in &errors {
        tracing::error!("{error}");
    }
    credentials.set_reload_max_drop(settings.auth.reload_max_drop);
    let credentials = Arc::new(credentials);
    let (tls, certificates) =
        server_tls_config(&settings.tls.certificates).map_err(|e| e.to_string())?;
    let relay = wiring::relay(settings, spool)?;
    let shutdown = CancellationToken::new();
    if let Some(metrics) = &settings.metrics {
        serve_metrics(settings, metrics, &relay, &shutdown).await?;
    }
    let pressure = Arc::new(std::sync::atomic::AtomicBool::new(false));
    match memory::budget(settings.limits.memory_budget) {
        Some(budget) => {
            tracing::info!(budget_mib = budget.octets >> 20, source = %budget.source, "memory budget");
            tokio::spawn(memory::watch(
                budget,
                Arc::clone(&pressure),
                shutdown.clone(),
            ));
        }
        None => tracing::warn!("memory budget: cannot read the memory limit or size; none kept"),
    }
    let services = Arc::new(
        wiring::services(settings, Arc::clone(&credentials), relay.clone())?
            .with_memory_pressure(pressure),
    );
    let token_mechanisms = wiring::token_mechanisms(settings).await;
    let mut listeners = Vec::new();
    let mut inherited = sockets::inherited(settings)?;
    for listen in &settings.listen {
        let socket = match inherited.remove(&listen.address) {
            Some(socket) => socket,
            None => tokio::net::TcpListener::bind(listen.address)
                .await
                .map_err(|e| {
                    format!(
                        "{}: cannot listen on {}: {e}",
                        settings.path.display(),
                        listen.address
                    )
                })?,
        };
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        // The mode as the config file spells it.
        let mode = match listen.transport {
            Transport::StartTls => "starttls",
            _ => "implicit",
        };
        match &listen.proxy {
            None => tracing::info!(address = %local, mode = %mode, "listening"),
            Some(proxy) => {
                let trusted: Vec<String> = proxy
                    .trusted
                    .networks()
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                let trusted = trusted.join(",");
                tracing::info!(address = %local, mode = %mode, proxy_protocol = true, trusted_proxies = %trusted, "listening");
            }
        }
        listeners.push(tokio::spawn(serve_listener(
            socket,
            wiring::server_config(settings, listen.transport, &token_mechanisms),
            Arc::clone(&tls),
            Arc::clone(&services),
            listen.limits,
            listen.proxy.clone(),
            shutdown.clone(),
        )));
    }
    let local_socket = match &settings.local {
        Some(local) => {
            let listener = bind_local(settings, &local.socket)?;
            tracing::info!(socket = %local.socket.display(), domain = %local.domain, "listening for local submission");
            listeners.push(tokio::spawn(submitd_listener::serve_local(
                listener,
                local.domain.clone(),
                wiring::server_config(settings, Transport::Local, &[]),
                Arc::clone(&services),
                shutdown.clone(),
            )));
            Some(local.socket.clone())
        }
        None => None,
    };
    let relay_handle = relay.clone();
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    Ok(Running {
        credentials,
        certificates,
        listeners,
        relay,
        relay_handle,
        local_socket,
        shutdown,
    })
}

/// The local socket, open to every local user (the peer's uid says who
/// they are); a socket file left by an earlier run that no one serves is
/// replaced.
fn bind_local(
    settings: &Settings,
    socket: &std::path::Path,
) -> Result<tokio::net::UnixListener, String> {
    if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_err() {
        let _ = std::fs::remove_file(socket);
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| {
        format!(
            "{}: key `local.socket`: cannot listen on {}: {e}",
            settings.path.display(),
            socket.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    Ok(listener)
}

/// The signals the daemon answers, installed before it starts.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| format!("cannot install a signal handler: {e}"))
        };
        Ok(Self {
            hangup: install(SignalKind::hangup())?,
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }

    /// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
    async fn wait(mut self, settings: &Settings, running: &Running) {
        loop {
            tokio::select! {
                _ = self.hangup.recv() => reload(settings, running),
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
            }
        }
    }
}

/// SIGHUP: the credential file and every certificate read again; what
/// fails to load keeps what was in force.
fn reload(settings: &Settings, running: &Running) {
    let now = sd_notify::NotifyState::monotonic_usec_now().ok();
    let mut states = vec![sd_notify::NotifyState::Reloading];
    states.extend(now);
    notify(&states);
    match running.credentials.reload() {
        Ok(reloaded) => tracing::info!(
            users = reloaded.users,
            changed = reloaded.changed,
            "credential file reloaded"
        ),
        Err(e) => tracing::error!("{e}"),
    }
    let errors = running.certificates.reload();
    for e in &errors {
        tracing::error!("certificate not reloaded, the old one stays: {e}");
    }
    if errors.is_empty() {
        tracing::info!(
            certificates = settings.tls.certificates.len(),
            "certificates reloaded"
        );
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// How long deliveries that sent their end of data get, after the grace,
/// for the upstream's reply.
const AFTER_ABANDON: std::time::Duration = std::time::Duration::from_secs(10);

/// Stops listening, lets sessions and deliveries finish within the grace
/// period, then ends them.
async fn stop(settings: &Settings, running: Running) {
    notify(&[sd_notify::NotifyState::Stopping]);
    let grace = settings.limits.shutdown_grace;
    tracing::info!(
        grace = %humantime::format_duration(grace),
        "stopping: no new connections; sessions finish the message in flight, then get 421"
    );
    running.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    for listener in running.listeners {
        if let Ok(tracker) = listener.await {
            if tokio::time::timeout_at(deadline, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("sessions still open after the grace period; closing them (nothing they did not get a 250 for was queued)");
            }
        }
    }
    let mut relay = running.relay;
    if tokio::time::timeout_at(deadline, &mut relay).await.is_err() {
        // Transfers still under way: those before their end of data drop
        // their connection (the upstream discards them; they are tried at
        // the next start, so delivered once), those after it get a moment
        // for the upstream's reply, which is recorded.
        tracing::warn!("deliveries still running after the grace period; abandoning those not yet at their end of data");
        running.relay_handle.abandon_transfers();
        if tokio::time::timeout(AFTER_ABANDON, &mut relay)
            .await
            .is_err()
        {
            // Waiting for an upstream's reply after the end of data: the
            // message may be delivered again at the next start (at least
            // once), never lost.
            tracing::warn!("a delivery still waited for its upstream's reply; stopped");
            relay.abort();
        }
    }
    if let Some(socket) = running.local_socket {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!("stopped");
}

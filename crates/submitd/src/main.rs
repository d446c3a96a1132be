//! The `submitd` binary: the config file, the command line, wiring the
//! crates together, signals and logging. It knows no protocol details.
//!
//! Dependencies: `clap` for the command line, `submitd-config` for the
//! config file, `humantime` for durations in log lines, `rcgen` for the demo's self-signed certificate,
//! `tracing-subscriber` for log output, `tokio`/`tokio-util` for the
//! runtime, signals and shutdown, `sd-notify` for systemd's Type=notify,
//! `listenfd` for sockets passed by systemd (socket activation).

mod check;
mod demo;
mod import;
mod sendmail;
mod sockets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use submitd_auth::{
    Authenticator, CredentialStore, DovecotAuth, PasswordChecker, RateLimiter, SendingLimits,
    Throttle, ThrottleConfig,
};
use submitd_config::{Mode, PasswordBackend, RouteSettings, Settings, UpstreamSettings};
use submitd_listener::{serve as serve_listener, server_tls_config, ConnectionLimits, Services};
use submitd_relay::{
    client_tls_config, queue, read_password_file, Maildir, QueueId, Relay, RelayConfig,
    RetryPolicy, Route, SenderRoute, Spool, Upstream,
};
use submitd_smtp::{ClientTls, ServerConfig, Transport};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "submitd", version, about = "A submission-only mail server")]
struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/submitd/submitd.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Check the config, certificates, credential file, queue folder and
    /// upstreams; exit status 2 if anything would stop the server.
    Check {
        /// Also connect to each upstream: TLS with a verified certificate,
        /// EHLO and AUTH, then QUIT.
        #[arg(long)]
        connect: bool,
    },
    /// Print the argon2id hash of a password read from the terminal.
    HashPassword,
    /// Send a message read on standard input, as sendmail does, through
    /// the running daemon's local socket (`[local] socket`); also what
    /// `submitd` does when run as `sendmail`.
    Sendmail {
        /// Take the recipients from To:, Cc: and Bcc: too.
        #[arg(short = 't')]
        from_headers: bool,
        /// The envelope sender (default: you@[local] domain).
        #[arg(short = 'f', value_name = "SENDER")]
        sender: Option<String>,
        /// A line with a single dot is content, not the end.
        #[arg(short = 'i')]
        ignore_dots: bool,
        /// sendmail options (`-oi` is `-i`; others are ignored).
        #[arg(short = 'o', value_name = "OPTION")]
        options: Vec<String>,
        /// The sender's full name (ignored).
        #[arg(short = 'F', value_name = "NAME")]
        full_name: Option<String>,
        /// Body type (ignored: 8-bit is passed as it is).
        #[arg(short = 'B', value_name = "TYPE")]
        body: Option<String>,
        /// Recipients.
        recipients: Vec<String>,
    },
    /// Write a submitd config from a Postfix setup (main.cf, master.cf and
    /// the maps they name), and list what could not be carried over.
    ImportPostfix {
        /// The Postfix config folder (main.cf, master.cf; maps under
        /// /etc/postfix are read from here).
        #[arg(long, default_value = "/etc/postfix")]
        postfix_dir: PathBuf,
        /// Where to write submitd.toml, users and upstream password files.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Manage users in the credential file.
    #[command(subcommand)]
    User(UserCommand),
    /// Look at and act on the queue.
    #[command(subcommand)]
    Queue(QueueCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from the terminal.
    Add {
        /// Login name.
        name: String,
        /// An address (user@example.org) or domain (@example.org) the user may send as; repeatable.
        #[arg(long = "send-as")]
        send_as: Vec<String>,
    },
    /// Set a user's password.
    Passwd {
        /// Login name.
        name: String,
    },
    /// Remove a user.
    Del {
        /// Login name.
        name: String,
    },
    /// List users.
    List,
    /// Add an app password (printed once) for one device.
    AppPassword {
        /// Login name.
        name: String,
        /// The device's label, such as "phone".
        label: String,
        /// Revoke it instead.
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List queued messages with counts per state.
    List,
    /// Show one message's envelope and state.
    Show {
        /// Queue id.
        id: String,
    },
    /// Make one message (or all) due now.
    Flush {
        /// Queue id; all if left out.
        id: Option<String>,
    },
    /// Delete a message without delivering or bouncing it.
    Delete {
        /// Queue id.
        id: String,
    },
}

fn main() -> ExitCode {
    // Run as `sendmail` (a symlink), behave as `submitd sendmail`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "sendmail");
    if invoked {
        args.insert(1, "sendmail".into());
    }
    let cli = Cli::parse_from(args);
    if let Command::Sendmail { .. } = &cli.command {
        return run_sendmail(&cli);
    }
    let result = match &cli.command {
        Command::HashPassword => hash_password(),
        Command::ImportPostfix {
            postfix_dir,
            out,
            force,
        } => import_postfix(postfix_dir, out, *force),
        command => match Settings::load(&cli.config) {
            Ok(settings) => match command {
                Command::Serve => serve(settings),
                Command::Check { connect } => check(&settings, *connect),
                Command::User(user) => user_command(&settings, user),
                Command::Queue(q) => queue_command(&settings, q),
                Command::HashPassword => hash_password(),
                Command::ImportPostfix { .. } | Command::Sendmail { .. } => Ok(()),
            },
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("submitd: {message}");
            ExitCode::from(2)
        }
    }
}

fn run_sendmail(cli: &Cli) -> ExitCode {
    let Command::Sendmail {
        from_headers,
        sender,
        ignore_dots,
        options,
        recipients,
        ..
    } = &cli.command
    else {
        return ExitCode::from(64);
    };
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("submitd sendmail: {e} (the config must be readable by whoever sends: chmod 644 it)");
            return ExitCode::from(75);
        }
    };
    let Some(local) = &settings.local else {
        eprintln!(
            "submitd sendmail: {}: no [local] socket; add [local] socket = \"/run/submitd/submit.sock\" and restart submitd",
            settings.path.display()
        );
        return ExitCode::from(75);
    };
    let request = sendmail::Request {
        from_headers: *from_headers,
        sender: sender.clone(),
        ignore_dots: *ignore_dots || options.iter().any(|o| o == "i"),
        recipients: recipients.clone(),
    };
    let result = sendmail::read_stdin().and_then(|input| {
        sendmail::send(
            &request,
            &input,
            &local.socket,
            &local.domain,
            &sendmail::caller(),
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("submitd sendmail: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

fn import_postfix(
    postfix_dir: &std::path::Path,
    out: &std::path::Path,
    force: bool,
) -> Result<(), String> {
    let imported = import::import(postfix_dir)?;
    import::write(&imported, out, force)?;
    println!("carried over:");
    for (postfix, submitd) in &imported.carried {
        println!("  {postfix} -> {submitd}");
    }
    println!("not carried over:");
    for (postfix, why) in &imported.not_carried {
        println!("  {postfix}: {why}");
    }
    println!(
        "written: {}/submitd.toml, users{}; next: submitd check --connect --config {}/submitd.toml",
        out.display(),
        if imported.passwords.is_empty() {
            ""
        } else {
            " and upstream password files (0600)"
        },
        out.display()
    );
    Ok(())
}

fn hash_password() -> Result<(), String> {
    let password = submitd_auth::edit::read_password_no_echo("Password: ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let hash = submitd_auth::hash_password(password.as_bytes()).map_err(|e| e.to_string())?;
    println!("{hash}");
    Ok(())
}

fn user_command(settings: &Settings, command: &UserCommand) -> Result<(), String> {
    use submitd_auth::edit;
    let path = &settings.users;
    let read = || {
        edit::read_password_no_echo("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))
    };
    match command {
        UserCommand::Add { name, send_as } => {
            edit::add_user(path, name, read()?.as_bytes(), send_as).map_err(|e| e.to_string())
        }
        UserCommand::Passwd { name } => {
            edit::set_password(path, name, read()?.as_bytes()).map_err(|e| e.to_string())
        }
        UserCommand::Del { name } => edit::remove_user(path, name).map_err(|e| e.to_string()),
        UserCommand::List => {
            for user in edit::list_users(path).map_err(|e| e.to_string())? {
                println!(
                    "{}\tpassword={}\tsend-as={}\tapp-passwords={}",
                    user.name,
                    if user.has_password { "set" } else { "none" },
                    user.send_as,
                    user.app_passwords.join(",")
                );
            }
            Ok(())
        }
        UserCommand::AppPassword {
            name,
            label,
            revoke: true,
        } => edit::revoke_app_password(path, name, label).map_err(|e| e.to_string()),
        UserCommand::AppPassword {
            name,
            label,
            revoke: false,
        } => {
            let password = edit::add_app_password(path, name, label).map_err(|e| e.to_string())?;
            println!("{}", password.as_str());
            Ok(())
        }
    }
}

fn queue_id(text: &str) -> Result<QueueId, String> {
    QueueId::parse(text)
        .ok_or_else(|| format!("{text:?} is not a queue id (hex, as `queue list` shows)"))
}

fn queue_command(settings: &Settings, command: &QueueCommand) -> Result<(), String> {
    // Beside a running server: no lock, no recovery.
    let spool = Spool::attach(&settings.queue).map_err(|e| e.to_string())?;
    match command {
        QueueCommand::List => {
            let entries = queue::list(&spool).map_err(|e| e.to_string())?;
            for e in &entries {
                let sender = e
                    .envelope
                    .mail_from
                    .reverse_path
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                println!(
                    "{}\t{} octets\tattempts={}\tfrom=<{sender}>\trecipients={}",
                    e.id,
                    e.size,
                    e.state.attempts,
                    e.envelope.recipients.len()
                );
            }
            let f = queue::figures(&entries);
            println!(
                "{} messages ({} deferred), recipients: {} pending, {} delivered, {} failed; {} octets",
                f.messages, f.deferred, f.pending, f.delivered, f.failed, f.octets
            );
            Ok(())
        }
        QueueCommand::Show { id } => {
            let entry = queue::show(&spool, &queue_id(id)?).map_err(|e| e.to_string())?;
            println!(
                "id: {}\nuser: {}\nmail-from: {}\nsize: {}",
                entry.id,
                entry.envelope.user.as_deref().unwrap_or("-"),
                entry.envelope.mail_from,
                entry.size
            );
            for (rcpt, state) in entry
                .envelope
                .recipients
                .iter()
                .zip(&entry.state.recipients)
            {
                println!("rcpt: {rcpt}\t{state:?}");
            }
            println!(
                "attempts: {}\nnext-try: {}",
                entry.state.attempts, entry.state.next_try
            );
            Ok(())
        }
        QueueCommand::Flush { id } => {
            let id = id.as_deref().map(queue_id).transpose()?;
            let n = queue::flush(&spool, id.as_ref()).map_err(|e| e.to_string())?;
            println!("{n} message(s) due now; a running server picks them up within a minute");
            Ok(())
        }
        QueueCommand::Delete { id } => {
            queue::delete(&spool, &queue_id(id)?).map_err(|e| e.to_string())
        }
    }
}

fn check(settings: &Settings, connect: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let found = runtime.block_on(check::run(settings, connect));
    found.print();
    match found.problems() {
        0 => Ok(()),
        n => Err(format!("{}: {n} problem(s) found", settings.path.display())),
    }
}

fn build_upstream(u: &UpstreamSettings) -> Result<Upstream, String> {
    Ok(Upstream {
        host: u.host.clone(),
        port: u.port,
        tls: match u.tls {
            Mode::Implicit => ClientTls::Implicit,
            Mode::Starttls => ClientTls::StartTls,
        },
        credentials: match &u.credentials {
            Some((user, file)) => Some((user.clone(), read_password_file(file)?)),
            None => None,
        },
        tls_config: client_tls_config(u.ca_file.as_deref())?,
        connect_timeout: Duration::from_secs(30),
    })
}

pub(crate) fn build_route(settings: &Settings) -> Result<Route, String> {
    match &settings.route {
        RouteSettings::Maildir(path) => Maildir::open(path)
            .map(Route::Maildir)
            .map_err(|e| format!("{}: {e}", path.display())),
        RouteSettings::Upstreams(upstreams) => upstreams
            .iter()
            .map(build_upstream)
            .collect::<Result<Vec<_>, String>>()
            .map(Route::Upstreams),
    }
}

/// The per-sender upstreams (`[[relay.sender_upstream]]`).
pub(crate) fn build_sender_routes(settings: &Settings) -> Result<Vec<SenderRoute>, String> {
    settings
        .sender_routes
        .iter()
        .map(|(senders, u)| {
            Ok(SenderRoute {
                senders: senders.clone(),
                upstreams: vec![build_upstream(u)?],
            })
        })
        .collect()
}

/// The config's certificate files as the listener takes them.
pub(crate) fn certificate_paths(settings: &Settings) -> Vec<submitd_listener::CertificatePaths> {
    settings
        .certificates
        .iter()
        .map(|f| submitd_listener::CertificatePaths {
            certificate: f.certificate.clone(),
            key: f.key.clone(),
        })
        .collect()
}

/// Tells systemd (if it started us) how we are; a no-op otherwise.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn serve(settings: Settings) -> Result<(), String> {
    let said = if settings.demo {
        demo::prepare(&settings)?
    } else {
        Vec::new()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for line in said {
        eprintln!("{line}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<(), String> {
    let (spool, recovery) = Spool::open(&settings.queue).map_err(|e| e.to_string())?;
    tracing::info!(
        queued = recovery.queued.len(),
        partial = recovery.partial,
        corrupt = recovery.corrupt,
        "queue recovered"
    );
    let (credentials, errors) =
        CredentialStore::open(&settings.users).map_err(|e| e.to_string())?;
    for error in &errors {
        tracing::error!("{error}");
    }
    let (tls, certificates) =
        server_tls_config(&certificate_paths(&settings)).map_err(|e| e.to_string())?;
    let relay = Relay::new(
        spool.clone(),
        RelayConfig {
            connections: settings.relay_connections,
            idle_connection: settings.relay_idle,
            sender_routes: build_sender_routes(&settings)?,
            ..RelayConfig::new(
                settings.hostname.clone(),
                build_route(&settings)?,
                RetryPolicy {
                    lifetime: settings.lifetime,
                    ..RetryPolicy::default()
                },
            )
        },
    );
    let credentials = Arc::new(credentials);
    let services = Arc::new(Services {
        hostname: settings.hostname.clone(),
        credentials: Arc::clone(&credentials),
        authenticator: Arc::new(match &settings.password_backend {
            PasswordBackend::File => Authenticator::Local(
                PasswordChecker::new(settings.max_concurrent_checks).map_err(|e| e.to_string())?,
            ),
            PasswordBackend::Dovecot { socket, timeout } => Authenticator::Dovecot(DovecotAuth {
                socket: socket.clone(),
                timeout: *timeout,
            }),
        }),
        throttle: Arc::new(Mutex::new(Throttle::new(ThrottleConfig {
            base_delay: settings.failure_delay,
            ..ThrottleConfig::default()
        }))),
        rate: Arc::new(RateLimiter::new()),
        default_limits: SendingLimits::defaults(),
        spool,
        relay: relay.clone(),
        privacy: settings.privacy,
        handshake_timeout: settings.handshake_timeout,
    });
    let shutdown = CancellationToken::new();
    let mut listeners = Vec::new();
    let mut inherited = sockets::inherited(&settings)?;
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
        let transport = match listen.mode {
            Mode::Implicit => Transport::ImplicitTls,
            Mode::Starttls => Transport::StartTls,
        };
        let mut smtp = ServerConfig::new(settings.hostname.clone(), transport);
        smtp.limits = settings.limits.clone();
        tracing::info!(address = %local, mode = ?listen.mode, "listening");
        listeners.push(tokio::spawn(serve_listener(
            socket,
            Arc::new(smtp),
            Arc::clone(&tls),
            Arc::clone(&services),
            ConnectionLimits {
                total: listen.max_connections,
                per_client: settings.per_client,
                unauthenticated: settings.unauthenticated,
            },
            shutdown.clone(),
        )));
    }
    let mut local_socket = None;
    if let Some(local) = &settings.local {
        let socket = &local.socket;
        // A socket file left by an earlier run that no one serves now.
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
        // Any local user may connect: the peer's uid says who they are.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let mut smtp = ServerConfig::new(settings.hostname.clone(), Transport::Local);
        smtp.limits = settings.limits.clone();
        tracing::info!(socket = %socket.display(), domain = %local.domain, "listening for local submission");
        listeners.push(tokio::spawn(submitd_listener::serve_local(
            listener,
            local.domain.clone(),
            Arc::new(smtp),
            Arc::clone(&services),
            shutdown.clone(),
        )));
        local_socket = Some(socket.clone());
    }
    let relay_task = tokio::spawn(relay.clone().run());
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

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| e.to_string())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let now = sd_notify::NotifyState::monotonic_usec_now().ok();
                let mut states = vec![sd_notify::NotifyState::Reloading];
                states.extend(now);
                notify(&states);
                match credentials.reload() {
                    Ok(n) => tracing::info!(users = n, "credential file reloaded"),
                    Err(e) => tracing::error!("{e}"),
                }
                let errors = certificates.reload();
                for e in &errors {
                    tracing::error!("certificate not reloaded, the old one stays: {e}");
                }
                if errors.is_empty() {
                    tracing::info!(certificates = settings.certificates.len(), "certificates reloaded");
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let grace = settings.shutdown_grace;
    tracing::info!(
        grace = %humantime::format_duration(grace),
        "stopping: no new connections; sessions finish the message in flight, then get 421"
    );
    shutdown.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    for listener in listeners {
        if let Ok(tracker) = listener.await {
            if tokio::time::timeout_at(deadline, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("sessions still open after the grace period; closing them (nothing they did not get a 250 for was queued)");
            }
        }
    }
    relay_task.abort();
    if let Some(socket) = local_socket {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!("stopped");
    Ok(())
}

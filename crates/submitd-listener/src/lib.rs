//! Listening sockets: TCP accept, implicit TLS or STARTTLS with rustls,
//! and one task per connection that pumps bytes between the socket and the
//! SMTP server machine. The listener owns no policy and no queue: each of
//! the machine's questions goes to its owner, the login gate and sender
//! policy of `submitd-auth` and the intake of `submitd-relay`.
//!
//! ```text
//! TcpListener ─accept─▶ [proxy_protocol: trusted? ─▶ proxy::read_header, ≤ 5 s]
//!     ─▶ limits (total, per client, unauthenticated) ─▶ driver::serve_connection
//!     past a limit: driver::refuse_connection ([implicit TLS] ─▶ 421 ─▶ close)
//!     [implicit TLS] ─▶ ServerSession ◀─bytes─▶ stream (TCP, TLS, unix socket, duplex pipe)
//!         AuthStart/Response ─▶ answers ─▶ SaslExchange ─▶ LoginGate::login
//!         CheckSender        ─▶ answers ─▶ SenderPolicy::check_envelope
//!         MessageStart/Data  ─▶ answers ─▶ Intake: begin ─▶ Draft::write (to the spool)
//!         StoreMessage       ─▶ answers ─▶ Draft::finish ─▶ SenderPolicy::check_header
//!                                   ─▶ commit ─▶ 250
//! UnixListener ─accept─▶ peer uid ─▶ os_user::name_of ─▶ driver::serve_local_connection
//! ```
//!
//! Dependencies: `submitd-metrics` to count sessions and refusals,
//! `rustls`/`tokio-rustls` for TLS, `rustls-pki-types` for
//! PEM files, `x509-parser` for what a certificate says (SNI, `check`),
//! `tokio` and `tokio-util` (cancellation, task tracking) for the accept
//! loops, `tracing` for the log lines, `thiserror` for typed errors.

mod answers;
mod driver;
mod limits;
pub mod proxy;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use submitd_smtp::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use answers::Services;
pub use driver::{serve_connection, serve_local_connection, Io};
pub use limits::{ConnectionLimits, Refusal, Unauthenticated};
pub use proxy::{Network, ProxyProtocol, TrustedProxies};
pub use tls::{
    server_tls_config, single_certificate, CertificateError, CertificateFacts, CertificatePaths,
    Certificates, TlsError,
};

use driver::refuse_connection;
use limits::{Answering, ConnectionRate, PerClient, RefusalLog, UnauthenticatedSet};

/// How long a TLS handshake may take when the config file does not say.
/// A handshake takes well under a second even on a poor mobile link; a
/// connection that has not finished it in 10 s holds a place among the
/// unauthenticated for nothing (slowloris).
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long sessions get to finish after shutdown is asked for (SIGTERM)
/// when the config file does not say: a message in flight is finished and
/// answered, then the session gets 421.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The next accepted connection; `None` once `shutdown` is cancelled.
/// Accept errors (out of file descriptors and the like) are logged and
/// retried after a pause.
async fn next_connection<T, Fut>(
    shutdown: &CancellationToken,
    mut accept: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok(connection) => return Some(connection),
            Err(e) => {
                tracing::warn!(target: "submitd::listener", error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Refused connections answered at once. Past this a refused connection
/// is closed without a reply: a flood must not become a flood of TLS
/// handshakes.
const REFUSALS_AT_ONCE: usize = 32;

/// Accepts connections until `shutdown` is cancelled, within `limits`. A
/// connection past a limit is answered `421` (after the TLS handshake on
/// an implicit-TLS listener, so that the client can read it) and closed,
/// with a log line: mail clients then say "try again later" instead of a
/// network error. With `proxy`, each connection must come from a trusted
/// proxy and start with a PROXY protocol header, whose client address is
/// then the client's for everything (limits, throttle, logs, Received).
/// On cancellation every session ends with 421 at its next command
/// boundary, after finishing a message in flight. Returns the tracker of
/// running sessions, to wait on.
pub async fn serve(
    listener: TcpListener,
    smtp: Arc<ServerConfig>,
    tls: Arc<rustls::ServerConfig>,
    services: Arc<Services>,
    limits: ConnectionLimits,
    proxy: Option<ProxyProtocol>,
    shutdown: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let gate = Arc::new(Gate {
        smtp,
        acceptor: TlsAcceptor::from(tls),
        services,
        limits,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        permits: Arc::new(Semaphore::new(limits.total.max(1))),
        refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
        answering: Arc::new(Answering::default()),
        per_client: PerClient::default(),
        unauthenticated: Arc::new(UnauthenticatedSet::default()),
        rate: ConnectionRate::new(limits.rate, limits.per_client.saturating_mul(2)),
        refusal_log: Arc::new(RefusalLog::default()),
    });
    {
        // The refusals of each second in one line.
        let (log, shutdown) = (Arc::clone(&gate.refusal_log), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => log.flush(),
                }
            }
            log.flush();
        });
    }
    // Connections whose PROXY header is still being read: as many as the
    // listener takes sessions.
    let headers = Arc::new(Semaphore::new(limits.total.max(1)));
    while let Some((tcp, peer)) = next_connection(&shutdown, || listener.accept()).await {
        let _ = tcp.set_nodelay(true);
        match &proxy {
            None => gate.admit(tcp, peer),
            Some(proxy) => {
                if !proxy.trusted.trusts(peer.ip()) {
                    gate.refusal_log
                        .refused(peer.ip(), "not a trusted proxy", 0, false);
                    continue;
                }
                let Ok(place) = Arc::clone(&headers).try_acquire_owned() else {
                    let limit = limits.total;
                    gate.refusal_log.refused(
                        peer.ip(),
                        "too many PROXY headers pending",
                        limit,
                        false,
                    );
                    continue;
                };
                let gate = Arc::clone(&gate);
                tracker.spawn(async move {
                    gate.admit_proxied(tcp, peer).await;
                    drop(place);
                });
            }
        }
    }
    tracker.close();
    tracker
}

/// What the accept loop of one listener shares with the tasks it starts:
/// the bounds and the state that enforces them.
struct Gate {
    smtp: Arc<ServerConfig>,
    acceptor: TlsAcceptor,
    services: Arc<Services>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    answering: Arc<Answering>,
    per_client: PerClient,
    unauthenticated: Arc<UnauthenticatedSet>,
    rate: ConnectionRate,
    refusal_log: Arc<RefusalLog>,
}

impl Gate {
    /// Reads a PROXY header from a trusted proxy's connection (bounded by
    /// [`proxy::HEADER_TIMEOUT`]), then admits the connection as the
    /// client it names; closes it, with a log line, if the header is
    /// missing, malformed or slow.
    async fn admit_proxied(self: &Arc<Self>, mut tcp: TcpStream, proxy: SocketAddr) {
        let read = tokio::select! {
            () = self.shutdown.cancelled() => return,
            read = tokio::time::timeout(proxy::HEADER_TIMEOUT, proxy::read_header(&mut tcp)) => read,
        };
        let reason = match read {
            Ok(Ok(header)) => {
                let client = header.addresses.map_or(proxy, |(client, _)| client);
                tracing::debug!(target: "submitd::listener", proxy = %proxy, client = %client, "PROXY header");
                return self.admit(tcp, client);
            }
            Ok(Err(proxy::ReadError::Header(e))) => e.reason(),
            Ok(Err(proxy::ReadError::Io(_))) => "closed before the PROXY header ended",
            Err(_) => "PROXY header too slow",
        };
        self.refusal_log.refused(proxy.ip(), reason, 0, false);
    }

    /// Admits a connection from `peer` within the bounds and starts its
    /// session, or refuses it (answered with 421 where that is cheap).
    fn admit(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let limits = &self.limits;
        if !self.rate.admit(peer.ip(), Instant::now()) {
            let refusal = Refusal::Rate;
            self.refusal_log
                .refused(peer.ip(), refusal.reason(), refusal.limit(limits), false);
            return;
        }
        let admitted = match Arc::clone(&self.permits).try_acquire_owned() {
            Err(_) => Err(Refusal::Busy),
            Ok(permit) if !self.per_client.enter(peer.ip(), limits.per_client.max(1)) => {
                drop(permit);
                Err(Refusal::PerClient)
            }
            Ok(permit) => {
                let known = self.services.known_network(peer.ip());
                match self.unauthenticated.enter(
                    peer.ip(),
                    known,
                    limits.unauthenticated.max(1),
                    Instant::now(),
                ) {
                    Some(slot) => Ok((permit, slot)),
                    None => {
                        self.per_client.leave(peer.ip());
                        Err(Refusal::Unauthenticated)
                    }
                }
            }
        };
        let (permit, slot) = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => return self.refuse(tcp, peer, refusal),
        };
        let gate = Arc::clone(self);
        self.tracker.spawn(async move {
            // Replies are written whole (see the driver's `unsent`); Nagle
            // would only hold them back (set at accept).
            let (smtp, acceptor, services) = (
                Arc::clone(&gate.smtp),
                gate.acceptor.clone(),
                Arc::clone(&gate.services),
            );
            let shutdown = gate.shutdown.clone();
            serve_connection(tcp, peer, smtp, acceptor, services, Some(slot), shutdown).await;
            gate.per_client.leave(peer.ip());
            drop(permit);
        });
    }

    /// Answers a refused connection with its 421 if a place to answer is
    /// free (one per network, [`REFUSALS_AT_ONCE`] in all), else closes it.
    fn refuse(&self, tcp: TcpStream, peer: SocketAddr, refusal: Refusal) {
        let limit = refusal.limit(&self.limits);
        let answered = self.answering.begin(peer.ip()).and_then(|one| {
            let place = Arc::clone(&self.refusals).try_acquire_owned().ok()?;
            Some((one, place))
        });
        self.refusal_log
            .refused(peer.ip(), refusal.reason(), limit, answered.is_some());
        if let Some(place) = answered {
            let (reply, tls) = (refusal.reply(&self.smtp.hostname), self.acceptor.clone());
            let transport = self.smtp.transport;
            let timeout = self
                .services
                .handshake_timeout()
                .min(limits::REFUSAL_TIMEOUT);
            self.tracker.spawn(async move {
                let client = peer.to_string();
                refuse_connection(tcp, &client, transport, tls, reply, timeout).await;
                drop(place);
            });
        }
    }
}

/// Local sessions at once.
const LOCAL_SESSIONS: usize = 50;

/// Accepts connections on the local socket (for `submitd sendmail`) until
/// `shutdown` is cancelled. Each session is the local user whose uid the
/// socket's peer credentials give (a uid /etc/passwd does not name is
/// refused); no password is asked, as with Postfix's sendmail.
pub async fn serve_local(
    listener: tokio::net::UnixListener,
    domain: String,
    smtp: Arc<ServerConfig>,
    services: Arc<Services>,
    shutdown: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(LOCAL_SESSIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let Some((unix, _)) = next_connection(&shutdown, || listener.accept()).await else {
            break;
        };
        let uid = match unix.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::warn!(target: "submitd::listener", error = %e, "no peer credentials on the local socket; closed");
                continue;
            }
        };
        let Some(user) = submitd_auth::os_user::name_of(uid) else {
            tracing::warn!(target: "submitd::listener", uid, "local socket: a uid /etc/passwd does not name; closed");
            continue;
        };
        let (smtp, services, shutdown, domain) = (
            Arc::clone(&smtp),
            Arc::clone(&services),
            shutdown.clone(),
            domain.clone(),
        );
        tracker.spawn(async move {
            serve_local_connection(unix, user, domain, smtp, services, shutdown).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker
}

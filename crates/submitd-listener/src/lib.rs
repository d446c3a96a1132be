//! Listening sockets: TCP accept, implicit TLS or STARTTLS with rustls, and
//! one task per connection driving the SMTP server machine, whose questions
//! are answered by `submitd-auth` (SASL, passwords, throttle, sender policy,
//! limits) and `submitd-relay` (prepare, spool, wake the relay). Thin over
//! the machine: it moves bytes and answers; it decides nothing about SMTP.
//!
//! ```text
//! TcpListener ─accept─▶ (connection limit) ─▶ connection::handle
//!     TLS (implicit) ─▶ ServerSession ◀─▶ socket
//!         AuthStart/Response ─▶ SaslExchange ─▶ Throttle ─▶ PasswordChecker
//!         CheckSender ─▶ sender policy, sending limits
//!         StoreMessage ─▶ prepare ─▶ header sender policy ─▶ Spool::store ─▶ Relay::wake ─▶ 250
//! ```
//!
//! Dependencies: `rustls`/`tokio-rustls` for TLS, `rustls-pki-types` for
//! PEM files, `tokio` and `tokio-util` (cancellation, task tracking) for
//! the accept loop, `tracing` for the log lines.

pub mod connection;
pub mod tls;

use std::sync::Arc;

use submitd_smtp::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connection::Services;
pub use tls::{
    server_tls_config, single_certificate, CertificateFacts, CertificatePaths, Certificates,
    TlsError,
};

/// Connection bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once in all (further clients wait in the backlog).
    pub total: usize,
    /// Connections at once from one client address (IPv6: one /64);
    /// further ones are closed at once and logged.
    pub per_client: usize,
    /// Connections at once that have not (yet) authenticated. A client
    /// that never logs in holds one of these, so a flood of idle or
    /// password-guessing connections cannot take every slot from users
    /// who do log in; further ones are closed at once and logged.
    pub unauthenticated: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            total: 200,
            per_client: 20,
            unauthenticated: 100,
        }
    }
}

/// Counts open connections per client network.
#[derive(Debug, Default)]
struct PerClient(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerClient {
    fn enter(&self, ip: std::net::IpAddr, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(submitd_auth::client_network(ip)).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn leave(&self, ip: std::net::IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = submitd_auth::client_network(ip);
        if let Some(count) = map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&key);
            }
        }
    }
}

/// Counts connections that have not authenticated; a [`Unauthenticated`]
/// slot gives its place back when the session logs in or ends.
#[derive(Debug, Default)]
struct UnauthenticatedCount(std::sync::atomic::AtomicUsize);

/// One connection's place among the unauthenticated ones.
#[derive(Debug)]
pub struct Unauthenticated(Arc<UnauthenticatedCount>);

impl UnauthenticatedCount {
    fn enter(self: &Arc<Self>, max: usize) -> Option<Unauthenticated> {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Unauthenticated(Arc::clone(self)))
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The next accepted connection with its place among `permits`; `None`
/// once `shutdown` is cancelled. Accept errors (out of file descriptors
/// and the like) are logged and retried after a pause.
async fn next_connection<T, Fut>(
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    mut accept: impl FnMut() -> Fut,
) -> Option<(T, tokio::sync::OwnedSemaphorePermit)>
where
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let permit = tokio::select! {
        () = shutdown.cancelled() => return None,
        permit = Arc::clone(permits).acquire_owned() => permit.ok()?,
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok(connection) => return Some((connection, permit)),
            Err(e) => {
                tracing::warn!(target: "submitd::listener", error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Accepts connections until `shutdown` is cancelled, within `limits`. On cancellation every session ends with 421 at its next
/// command boundary, after finishing a message in flight. Returns the
/// tracker of running sessions, to wait on.
pub async fn serve(
    listener: TcpListener,
    smtp: Arc<ServerConfig>,
    tls: Arc<rustls::ServerConfig>,
    services: Arc<Services>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(limits.total.max(1)));
    let per_client = Arc::new(PerClient::default());
    let unauthenticated = Arc::new(UnauthenticatedCount::default());
    let acceptor = TlsAcceptor::from(tls);
    while let Some(((tcp, peer), permit)) =
        next_connection(&permits, &shutdown, || listener.accept()).await
    {
        if !per_client.enter(peer.ip(), limits.per_client.max(1)) {
            tracing::warn!(target: "submitd::listener", client = %peer.ip(), limit = limits.per_client, "too many connections from one client; closed");
            drop(tcp);
            continue;
        }
        let Some(slot) = unauthenticated.enter(limits.unauthenticated.max(1)) else {
            per_client.leave(peer.ip());
            tracing::warn!(target: "submitd::listener", client = %peer.ip(), limit = limits.unauthenticated, "too many unauthenticated connections; closed");
            drop(tcp);
            continue;
        };
        let per_client = Arc::clone(&per_client);
        let (smtp, acceptor, services) =
            (Arc::clone(&smtp), acceptor.clone(), Arc::clone(&services));
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            connection::handle(tcp, peer, smtp, acceptor, services, slot, shutdown).await;
            per_client.leave(peer.ip());
            drop(permit);
        });
    }
    tracker.close();
    tracker
}

/// The login name of `uid`, from /etc/passwd (also `submitd sendmail`'s
/// own name for its caller).
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
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
    while let Some(((unix, _), permit)) =
        next_connection(&permits, &shutdown, || listener.accept()).await
    {
        let uid = match unix.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::warn!(target: "submitd::listener", error = %e, "no peer credentials on the local socket; closed");
                continue;
            }
        };
        let Some(user) = user_name(uid) else {
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
            connection::handle_local(unix, user, domain, smtp, services, shutdown).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker
}

#[cfg(test)]
mod local_tests {
    #[test]
    fn root_is_uid_0() {
        assert_eq!(super::user_name(0).as_deref(), Some("root"));
        assert_eq!(super::user_name(4_000_000_000), None);
    }
}

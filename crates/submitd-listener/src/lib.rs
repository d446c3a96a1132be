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
pub use tls::{server_tls_config, TlsError};

/// Accepts connections until `shutdown` is cancelled, at most
/// `max_connections` at once (further clients wait in the kernel's
/// backlog). On cancellation every session ends with 421 at its next
/// command boundary, after finishing a message in flight. Returns the
/// tracker of running sessions, to wait on.
pub async fn serve(
    listener: TcpListener,
    smtp: Arc<ServerConfig>,
    tls: Arc<rustls::ServerConfig>,
    services: Arc<Services>,
    max_connections: usize,
    shutdown: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let (smtp, acceptor, services) =
                    (Arc::clone(&smtp), acceptor.clone(), Arc::clone(&services));
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    connection::handle(tcp, peer, smtp, acceptor, services, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(target: "submitd::listener", error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    tracker.close();
    tracker
}

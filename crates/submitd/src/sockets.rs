//! Socket activation: listening sockets passed by systemd (`submitd.socket`,
//! `LISTEN_FDS`), matched to the config's `[[listen]]` entries by their
//! address, so the config still says which is implicit TLS and which is
//! STARTTLS, and the service needs no capability to bind 465 or 587.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use submitd_config::Settings;

/// The sockets systemd passed, by local address; empty when it passed
/// none. A passed socket that no `[[listen]]` names is an error: it would
/// take connections that nothing serves.
pub(crate) fn inherited(settings: &Settings) -> Result<HashMap<SocketAddr, TcpListener>, String> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut sockets = HashMap::new();
    for index in 0..fds.len() {
        let socket = fds
            .take_tcp_listener(index)
            .map_err(|e| format!("socket {index} passed by systemd: {e} (expected a TCP listening socket: ListenStream= in submitd.socket)"))?
            .ok_or_else(|| format!("socket {index} passed by systemd was taken twice"))?;
        let address = socket
            .local_addr()
            .map_err(|e| format!("socket {index} passed by systemd: {e}"))?;
        if !settings.listen.iter().any(|l| l.address == address) {
            return Err(format!(
                "{}: systemd passed a socket on {address}, but no [[listen]] has address = \"{address}\"; \
                 make the addresses in submitd.socket (ListenStream=) and the config the same",
                settings.path.display()
            ));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("socket on {address}: {e}"))?;
        let socket =
            TcpListener::from_std(socket).map_err(|e| format!("socket on {address}: {e}"))?;
        tracing::info!(%address, "using the socket passed by systemd");
        sockets.insert(address, socket);
    }
    Ok(sockets)
}

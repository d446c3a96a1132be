//! Idle sessions: many TLS connections that are greeted and then say
//! nothing, spread over several loopback source addresses (127.0.0.x) so
//! a per-client limit does not stop them. For the memory a session costs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use submitd_smtp::Transport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::load::Target;

/// One idle session, held open while this lives.
pub(crate) type Session = TlsStream<TcpStream>;

async fn read_reply(stream: &mut (impl AsyncRead + Unpin)) -> Result<String, String> {
    let mut said = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&said)));
        }
        said.push(byte[0]);
        if said.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&said).into_owned();
            let last = text.trim_end().rsplit("\r\n").next().unwrap_or_default();
            if last.as_bytes().get(3) == Some(&b' ') {
                return Ok(text);
            }
        }
    }
}

/// Connects (from `source`, if given), runs TLS (after EHLO and STARTTLS
/// on a STARTTLS port) and reads the greeting.
pub(crate) async fn greeted(
    target: &Target,
    config: &Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
) -> Result<Session, String> {
    let address = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| e.to_string())?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{} has no IPv4 address", target.host))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let mut tcp = socket.connect(address).await.map_err(|e| e.to_string())?;
    if target.tls == Transport::StartTls {
        read_reply(&mut tcp).await?;
        tcp.write_all(b"EHLO idle.submitd.test\r\n")
            .await
            .map_err(|e| e.to_string())?;
        read_reply(&mut tcp).await?;
        tcp.write_all(b"STARTTLS\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_reply(&mut tcp).await?;
        if !reply.starts_with("220") {
            return Err(format!("STARTTLS refused: {reply}"));
        }
    }
    let name = ServerName::try_from(target.host.clone()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    if target.tls == Transport::ImplicitTls {
        let greeting = read_reply(&mut tls).await?;
        if !greeting.starts_with("220") {
            return Err(format!("greeting: {greeting}"));
        }
    }
    Ok(tls)
}

/// The `i`-th of `sources` loopback addresses: 127.0.0.1, 127.0.0.2, ...
pub(crate) fn source(i: usize, sources: usize) -> IpAddr {
    let k = (i % sources.max(1)) as u32 + 1;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + k))
}

/// Opens `count` idle sessions from `sources` addresses, within
/// `time_limit`. Returns those that opened and the first error.
pub(crate) async fn open(
    target: &Target,
    count: usize,
    sources: usize,
    time_limit: Duration,
) -> Result<(Vec<Session>, Option<String>), String> {
    let config =
        submitd_relay::client_tls_config(target.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + time_limit;
    let mut sessions = Vec::with_capacity(count);
    let mut first_error = None;
    // A few handshakes at once: fast, without a thundering herd.
    let mut i = 0;
    while i < count && Instant::now() < deadline {
        let batch: Vec<_> = (i..(i + 50).min(count))
            .map(|k| {
                let (target, config) = (target.clone(), Arc::clone(&config));
                tokio::spawn(
                    async move { greeted(&target, &config, Some(source(k, sources))).await },
                )
            })
            .collect();
        i += batch.len();
        for task in batch {
            match task.await.map_err(|e| e.to_string())? {
                Ok(session) => sessions.push(session),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    Ok((sessions, first_error))
}

/// A process's resident memory, from /proc (Linux).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cycle_over_loopback() {
        assert_eq!(source(0, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source(2, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(source(3, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    }

    #[test]
    fn rss_of_this_process() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}

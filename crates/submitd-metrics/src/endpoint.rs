//! The scrape endpoint: `GET /metrics` over HTTP/1.1, one request per
//! connection. Prometheus asks a few times a minute; the endpoint answers
//! nothing else, reads at most [`MAX_REQUEST`] octets within
//! [`REQUEST_TIMEOUT`], and serves [`CONNECTIONS`] at once, so a stray
//! client cannot hold it or the daemon's memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// The longest request head taken.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a request may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const CONNECTIONS: usize = 8;

/// Why the endpoint could not start.
#[derive(Debug)]
pub struct EndpointError(pub std::io::Error);

impl std::fmt::Display for EndpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metrics endpoint: {}", self.0)
    }
}

impl std::error::Error for EndpointError {}

/// Serves scrapes on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let places = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(target: "submitd::metrics", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past the bound a scrape is closed at once; Prometheus retries.
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = answer(stream).await {
                tracing::debug!(target: "submitd::metrics", client = %peer, error = %e, "scrape failed");
            }
            drop(place);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() >= MAX_REQUEST {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await
    .unwrap_or(Ok(false))?;
    let response = if complete {
        respond(&head, &String::from_utf8_lossy(&head))
    } else {
        reply(400, "Bad Request", "text/plain", "bad request\n")
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The response to a request head (`text`, the same read as text for its
/// Accept header): OpenMetrics to a scraper that asks for it (Prometheus
/// does), the classic text format otherwise.
fn respond(head: &[u8], text: &str) -> Vec<u8> {
    let openmetrics = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    });
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) if openmetrics => reply(
            200,
            "OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &metrics().encode(),
        ),
        (Some(b"GET"), Some(b"/metrics")) => reply(
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics().encode_text(),
        ),
        (Some(b"GET"), Some(_)) => reply(404, "Not Found", "text/plain", "only /metrics here\n"),
        _ => reply(
            405,
            "Method Not Allowed",
            "text/plain",
            "GET /metrics only\n",
        ),
    }
}

fn reply(code: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(port: u16, request: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_get_metrics_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, shutdown.clone()));
        metrics().login("PLAIN", "ok");
        let ok = ask(
            port,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"));
        assert!(ok.contains("submitd_logins_total{mechanism=\"PLAIN\",outcome=\"ok\"}"));
        assert!(ok.ends_with("# EOF\n"));
        let classic = ask(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(classic.contains("text/plain; version=0.0.4"), "{classic}");
        assert!(classic.contains("# TYPE submitd_logins_total counter"));
        let other = ask(port, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = ask(port, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let long = ask(port, &vec![b'a'; MAX_REQUEST]).await;
        assert!(long.starts_with("HTTP/1.1 400"), "{long}");
        shutdown.cancel();
    }
}

//! Load generation: concurrent TLS SMTP clients that log in and send
//! messages of a given size, each over one reused connection or a fresh
//! connection per message (as Thunderbird does), optionally paced to a
//! rate; and the measurements they make.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use submitd_relay::{client_tls_config, Connection, Upstream, UpstreamAuth};
use submitd_smtp::{Envelope, MailFrom, RcptTo, Transport};

/// Where the load goes and who it logs in as.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// Host name: connected to and checked against the certificate.
    pub(crate) host: String,
    /// Port.
    pub(crate) port: u16,
    /// Implicit TLS or STARTTLS.
    pub(crate) tls: Transport,
    /// The CA that signed the server's certificate.
    pub(crate) ca_file: Option<PathBuf>,
    /// Login.
    pub(crate) user: String,
    /// Password.
    pub(crate) password: String,
    /// Envelope sender.
    pub(crate) from: String,
    /// Envelope recipient.
    pub(crate) to: String,
}

/// How much load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    /// Clients at once.
    pub(crate) concurrency: usize,
    /// Messages in all.
    pub(crate) messages: usize,
    /// Octets of each message.
    pub(crate) size: usize,
    /// A new connection (TLS, AUTH) for every message.
    pub(crate) fresh: bool,
    /// Messages per second in all, or as fast as it goes.
    pub(crate) rate: Option<f64>,
    /// Stop starting messages after this long, whatever is left.
    pub(crate) time_limit: Duration,
    /// TLS session resumption between fresh connections (rustls's client
    /// cache); off: every connection a full handshake.
    pub(crate) resume: bool,
    /// Log in as `<user>0` … `<user>{n-1}` in turn (message i as user
    /// i mod n) instead of `<user>`: many devices, each once per round.
    pub(crate) user_pool: usize,
}

/// What one load run measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    /// Messages that got a 2xx after their data.
    pub(crate) sent: usize,
    /// Messages refused or lost to a connection error.
    pub(crate) errors: usize,
    /// The first error, for the person running the tool.
    pub(crate) first_error: Option<String>,
    /// From the first connection to the last reply (for the whole path:
    /// to the last arrival at the sink).
    pub(crate) elapsed: Duration,
    /// From the first connection to the last reply, always.
    pub(crate) submit_elapsed: Duration,
    /// Per message: MAIL to the reply after the data (with `fresh`, from
    /// the connect on), sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Octets of message content sent.
    pub(crate) octets: u64,
}

impl Report {
    /// Messages per second.
    pub(crate) fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Messages per second as the clients saw them (to the last 250).
    pub(crate) fn submit_rate(&self) -> f64 {
        self.sent as f64 / self.submit_elapsed.as_secs_f64().max(1e-9)
    }

    /// Megabytes (10^6 octets) of content per second.
    pub(crate) fn megabytes_per_second(&self) -> f64 {
        self.octets as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0.0..=1.0), nearest rank.
    pub(crate) fn percentile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }
}

/// The value at quantile `q` of sorted `values` (nearest rank).
pub(crate) fn percentile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A message of `size` octets: headers, then 76-octet lines.
pub(crate) fn message(from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: load\r\nMessage-ID: <load@submitd.test>\r\n\
         Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() + line.len() <= size {
        m.extend_from_slice(line.as_bytes());
    }
    while m.len() + 2 < size {
        m.push(b'y');
    }
    m.extend_from_slice(b"\r\n");
    m
}

impl Target {
    fn upstream(&self, resume: bool) -> Result<Upstream, String> {
        let mut tls_config =
            client_tls_config(self.ca_file.as_deref()).map_err(|e| e.to_string())?;
        if !resume {
            let mut config = (*tls_config).clone();
            config.resumption = rustls::client::Resumption::disabled();
            tls_config = Arc::new(config);
        }
        Ok(Upstream {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
            auth: UpstreamAuth::Password {
                user: self.user.clone(),
                password: Arc::new(self.password.as_bytes().to_vec()),
            },
            mechanisms: Vec::new(),
            tls_config,
            connect_timeout: Duration::from_secs(30),
        })
    }

    fn envelope(&self) -> Result<Envelope, String> {
        Ok(Envelope {
            mail_from: MailFrom::parse(&format!("<{}>", self.from)).map_err(|e| e.to_string())?,
            recipients: vec![RcptTo::parse(&format!("<{}>", self.to)).map_err(|e| e.to_string())?],
        })
    }
}

#[derive(Default)]
struct Shared {
    report: Report,
}

/// Runs `spec` against `target`; bounded by the message count and the
/// time limit.
pub(crate) async fn run(target: &Target, spec: Spec) -> Result<Report, String> {
    let upstream = Arc::new(target.upstream(spec.resume)?);
    // One upstream per login of the pool (they share the TLS session cache).
    let pool: Arc<Vec<Upstream>> = Arc::new(
        (0..spec.user_pool)
            .map(|i| Upstream {
                auth: match &upstream.auth {
                    UpstreamAuth::Password { user, password } => UpstreamAuth::Password {
                        user: format!("{user}{i}"),
                        password: Arc::clone(password),
                    },
                    other => other.clone(),
                },
                ..(*upstream).clone()
            })
            .collect(),
    );
    let envelope = Arc::new(target.envelope()?);
    let data = Arc::new(message(&target.from, &target.to, spec.size));
    let next = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Mutex::new(Shared::default()));
    let start = Instant::now();
    let deadline = start + spec.time_limit;
    let mut workers = Vec::new();
    for worker in 0..spec.concurrency.max(1) {
        let (upstream, pool, envelope, data, next, shared) = (
            Arc::clone(&upstream),
            Arc::clone(&pool),
            Arc::clone(&envelope),
            Arc::clone(&data),
            Arc::clone(&next),
            Arc::clone(&shared),
        );
        workers.push(tokio::spawn(async move {
            let mut connection: Option<Connection> = None;
            // With a rate, message i starts at i / rate seconds.
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.messages || Instant::now() >= deadline {
                    break;
                }
                if let Some(rate) = spec.rate {
                    let at = start + Duration::from_secs_f64(i as f64 / rate.max(1e-3));
                    tokio::time::sleep_until(at.into()).await;
                }
                let began = Instant::now();
                let login = match pool.len() {
                    0 => &*upstream,
                    n => &pool[i % n],
                };
                let result = send_one(login, &envelope, &data, &mut connection, spec.fresh).await;
                let latency = began.elapsed();
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(()) => {
                        s.report.sent += 1;
                        s.report.octets += data.len() as u64;
                        s.report.latencies.push(latency);
                    }
                    Err(e) => {
                        s.report.errors += 1;
                        if s.report.first_error.is_none() {
                            s.report.first_error = Some(format!("worker {worker}: {e}"));
                        }
                    }
                }
            }
            if let Some(c) = connection {
                c.quit().await;
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    let mut report = std::mem::take(&mut shared.lock().unwrap_or_else(|p| p.into_inner()).report);
    report.elapsed = start.elapsed();
    report.submit_elapsed = report.elapsed;
    report.latencies.sort();
    Ok(report)
}

async fn send_one(
    upstream: &Upstream,
    envelope: &Envelope,
    data: &[u8],
    connection: &mut Option<Connection>,
    fresh: bool,
) -> Result<(), String> {
    if connection.as_ref().is_none_or(|c| !c.is_usable()) {
        *connection = Some(
            Connection::open(upstream, "load.submitd.test")
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(open) = connection.as_mut() else {
        return Err("no connection".into());
    };
    let outcome = open.send(envelope, data).await;
    if fresh {
        if let Some(c) = connection.take() {
            c.quit().await;
        }
    }
    let outcome = outcome.map_err(|e| e.to_string())?;
    match outcome.recipients.iter().find(|r| !r.is_positive()) {
        None => Ok(()),
        Some(refused) => {
            // A refused message may leave the session in any state.
            *connection = None;
            Err(format!("refused: {refused}"))
        }
    }
}

/// TLS handshakes per second alone (connect, TLS, greeting, no AUTH):
/// what fresh connections would reach if logging in cost nothing.
pub(crate) async fn handshakes(
    target: &Target,
    concurrency: usize,
    count: usize,
) -> Result<f64, String> {
    let config = client_tls_config(target.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (config, next, target) = (Arc::clone(&config), Arc::clone(&next), target.clone());
        workers.push(tokio::spawn(async move {
            let mut done = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if crate::idle::greeted(&target, &config, None).await.is_ok() {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut done = 0;
    for w in workers {
        done += w.await.map_err(|e| e.to_string())?;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_size_asked_for() {
        for size in [200, 1000, 10 * 1024, 1024 * 1024] {
            let m = message("a@example.org", "b@example.net", size);
            assert_eq!(m.len(), size);
            assert!(m.ends_with(b"\r\n"));
            assert!(m.split(|&b| b == b'\n').all(|l| l.len() <= 1000));
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}

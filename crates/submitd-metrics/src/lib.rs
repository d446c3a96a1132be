//! The daemon's Prometheus metrics: the series every part of submitd
//! records (sessions, logins, messages, deliveries, the queue, latencies),
//! kept in one process-wide registry, and the scrape endpoint that serves
//! them (`[metrics] listen`, off by default, never on a mail port).
//!
//! Recording is a few atomic operations and costs the same whether or not
//! anything scrapes, so the crates record unconditionally through
//! [`metrics()`] and nothing is threaded through their constructors.
//! Series with a user name in them (cardinality: one per user) are
//! recorded only when the operator asks ([`Metrics::set_per_user`]).
//!
//! Dependencies: `prometheus-client`, the Prometheus project's own Rust
//! client (typed label sets, OpenMetrics text, no global macros; the
//! `metrics` facade with its exporter would bring an HTTP stack and turns
//! histograms into summaries unless told otherwise); `tokio` for the
//! endpoint, which is a small HTTP/1.1 responder of our own (one GET,
//! request size and time bounded: a web framework would add more code
//! than it serves); `tracing` for its log lines.

mod endpoint;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use endpoint::{serve, EndpointError};

/// Labels of the session series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// The listener's mode: `implicit`, `starttls` or `local`.
    pub listener: &'static str,
    /// `TLSv1_3`, `TLSv1_2` or `none`.
    pub tls: &'static str,
}

/// A listener's mode only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `implicit`, `starttls` or `local`.
    pub listener: &'static str,
}

/// One word of why, or what came of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed word (never text from a client).
    pub reason: &'static str,
}

/// Labels of the login series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// `PLAIN`, `LOGIN`, `OAUTHBEARER`, `XOAUTH2` (or `?` when the
    /// exchange broke before naming one).
    pub mechanism: &'static str,
    /// `ok`, `failed`, `blocked` (the throttle refused without checking)
    /// or `unavailable` (the backend could not answer).
    pub outcome: &'static str,
}

/// Labels of the delivery series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route: `default` or a sender route's name.
    pub route: String,
}

/// Labels of the per-recipient delivery outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The route: `default` or a sender route's name.
    pub route: String,
    /// `delivered`, `deferred` or `bounced`.
    pub outcome: &'static str,
}

/// Labels of the per-user series (only when asked for).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabels {
    /// The login name.
    pub user: String,
}

/// The queue as the relay sees it, read at each scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    /// Messages queued (waiting, scheduled for a retry, or being sent).
    pub messages: u64,
    /// The age of the oldest of them.
    pub oldest: Duration,
}

type QueueProbe = Box<dyn Fn() -> QueueFigures + Send + Sync>;

/// Every series submitd records.
pub struct Metrics {
    /// Sessions ended, by listener and the TLS version they ran.
    pub sessions: Family<SessionLabels, Counter>,
    /// Sessions open now, by listener.
    pub sessions_open: Family<ListenerLabels, Gauge>,
    /// Connections refused before a session, by reason (a connection
    /// bound, the rate, an untrusted proxy, a bad PROXY header).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Login attempts by mechanism and outcome.
    pub logins: Family<LoginLabels, Counter>,
    /// Messages accepted (250).
    pub messages_accepted: Counter,
    /// Messages refused, by reason (`sender_not_allowed`,
    /// `sending_limit`, `content`, `queue_full`, `spool`, `account`).
    pub messages_refused: Family<ReasonLabels, Counter>,
    /// Recipients of accepted messages.
    pub recipients: Counter,
    /// Octets of accepted messages as stored.
    pub message_bytes: Counter,
    /// Accepted messages by user (only with `per_user`).
    pub user_messages: Family<UserLabels, Counter>,
    /// Recipients tried upstream, by route and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Connections to an upstream that failed (connect, TLS, greeting,
    /// login), by route.
    pub upstream_failures: Family<RouteLabels, Counter>,
    /// Requests to an OAuth2 token endpoint, by route and outcome (`ok`,
    /// `failed`).
    pub token_requests: Family<DeliveryLabels, Counter>,
    /// Time to make a message durable (content written, fsync, rename).
    pub spool_write_seconds: Histogram,
    /// From the 250 to the upstream's acceptance of the last recipient.
    pub delivery_latency_seconds: Histogram,
    /// Commands to the shared-limits store that failed.
    pub redis_errors: Counter,
    queue_messages: Gauge,
    queue_oldest_seconds: Gauge<f64, AtomicU64>,
    queue_probe: Mutex<Option<QueueProbe>>,
    per_user: AtomicBool,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let sessions = Family::<SessionLabels, Counter>::default();
        let sessions_open = Family::<ListenerLabels, Gauge>::default();
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        let logins = Family::<LoginLabels, Counter>::default();
        let messages_accepted = Counter::default();
        let messages_refused = Family::<ReasonLabels, Counter>::default();
        let recipients = Counter::default();
        let message_bytes = Counter::default();
        let user_messages = Family::<UserLabels, Counter>::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let upstream_failures = Family::<RouteLabels, Counter>::default();
        let token_requests = Family::<DeliveryLabels, Counter>::default();
        // 1 ms to about 33 s.
        let spool_write_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        // 50 ms to 5 days (the default give-up time).
        let delivery_latency_seconds = Histogram::new([
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
            86400.0, 432000.0,
        ]);
        let redis_errors = Counter::default();
        let queue_messages = Gauge::default();
        let queue_oldest_seconds = Gauge::<f64, AtomicU64>::default();

        let mut registry = Registry::with_prefix("submitd");
        let r = &mut registry;
        r.register(
            "sessions",
            "Sessions ended, by listener and TLS version",
            sessions.clone(),
        );
        r.register(
            "sessions_open",
            "Sessions open now, by listener",
            sessions_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused before a session began, by reason",
            connections_refused.clone(),
        );
        r.register(
            "logins",
            "Login attempts, by mechanism and outcome",
            logins.clone(),
        );
        r.register(
            "messages_accepted",
            "Messages accepted (250) and queued",
            messages_accepted.clone(),
        );
        r.register(
            "messages_refused",
            "Messages refused, by reason",
            messages_refused.clone(),
        );
        r.register(
            "recipients",
            "Recipients of accepted messages",
            recipients.clone(),
        );
        r.register(
            "message_bytes",
            "Octets of accepted messages",
            message_bytes.clone(),
        );
        r.register(
            "user_messages",
            "Accepted messages by user (per_user = true)",
            user_messages.clone(),
        );
        r.register(
            "deliveries",
            "Recipients tried upstream, by route and outcome",
            deliveries.clone(),
        );
        r.register(
            "upstream_connection_failures",
            "Upstream connections that failed (connect, TLS, greeting, login), by route",
            upstream_failures.clone(),
        );
        r.register(
            "oauth2_token_requests",
            "Requests to an OAuth2 token endpoint, by route and outcome",
            token_requests.clone(),
        );
        r.register(
            "spool_write_seconds",
            "Time to make an accepted message durable",
            spool_write_seconds.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "Time from acceptance to delivery upstream",
            delivery_latency_seconds.clone(),
        );
        r.register(
            "redis_errors",
            "Shared-limit commands that failed",
            redis_errors.clone(),
        );
        r.register(
            "queue_messages",
            "Messages in the queue",
            queue_messages.clone(),
        );
        r.register(
            "queue_oldest_message_seconds",
            "Age of the oldest message in the queue (0 when empty)",
            queue_oldest_seconds.clone(),
        );
        Self {
            sessions,
            sessions_open,
            connections_refused,
            logins,
            messages_accepted,
            messages_refused,
            recipients,
            message_bytes,
            user_messages,
            deliveries,
            upstream_failures,
            token_requests,
            spool_write_seconds,
            delivery_latency_seconds,
            redis_errors,
            queue_messages,
            queue_oldest_seconds,
            queue_probe: Mutex::new(None),
            per_user: AtomicBool::new(false),
            registry,
        }
    }

    /// Records per-user series from now on (`[metrics] per_user`).
    pub fn set_per_user(&self, on: bool) {
        self.per_user.store(on, Ordering::Relaxed);
    }

    /// Counts an accepted message of `user`, `recipients` and `bytes`.
    pub fn message_accepted(&self, user: &str, recipients: usize, bytes: u64) {
        self.messages_accepted.inc();
        self.recipients.inc_by(recipients as u64);
        self.message_bytes.inc_by(bytes);
        if self.per_user.load(Ordering::Relaxed) {
            self.user_messages
                .get_or_create(&UserLabels {
                    user: user.to_owned(),
                })
                .inc();
        }
    }

    /// Counts a refused message.
    pub fn message_refused(&self, reason: &'static str) {
        self.messages_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a login attempt.
    pub fn login(&self, mechanism: &'static str, outcome: &'static str) {
        self.logins
            .get_or_create(&LoginLabels { mechanism, outcome })
            .inc();
    }

    /// Counts a refused connection.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a recipient's outcome on `route`.
    pub fn delivery(&self, route: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                route: route.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a failed upstream connection on `route`.
    pub fn upstream_failure(&self, route: &str) {
        self.upstream_failures
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .inc();
    }

    /// Counts a token request on `route`.
    pub fn token_request(&self, route: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.token_requests
            .get_or_create(&DeliveryLabels {
                route: route.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A session began on `listener`; counted as ended (with its TLS
    /// version) by [`Metrics::session_ended`].
    pub fn session_began(&self, listener: &'static str) {
        self.sessions_open
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// A session on `listener` ended, having run `tls`.
    pub fn session_ended(&self, listener: &'static str, tls: &'static str) {
        self.sessions_open
            .get_or_create(&ListenerLabels { listener })
            .dec();
        self.sessions
            .get_or_create(&SessionLabels { listener, tls })
            .inc();
    }

    /// Where the queue figures come from (the relay), read at each scrape.
    pub fn set_queue_probe(&self, probe: impl Fn() -> QueueFigures + Send + Sync + 'static) {
        let mut slot = self.queue_probe.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Box::new(probe));
    }

    /// The metrics in Prometheus's classic text format (0.0.4), which
    /// `promtool check metrics` and older scrapers read: OpenMetrics names
    /// a counter family without its `_total` and ends with `# EOF`; here
    /// the family takes its samples' name and the end mark goes.
    pub fn encode_text(&self) -> String {
        let open = self.encode();
        let mut counters = std::collections::HashSet::new();
        for line in open.lines() {
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"))
            {
                counters.insert(name.to_owned());
            }
        }
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// The metrics in the OpenMetrics text format, the queue read now.
    pub fn encode(&self) -> String {
        let probe = self.queue_probe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(probe) = probe.as_ref() {
            let figures = probe();
            self.queue_messages
                .set(i64::try_from(figures.messages).unwrap_or(i64::MAX));
            self.queue_oldest_seconds.set(figures.oldest.as_secs_f64());
        }
        drop(probe);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_recorded() {
        let m = Metrics::new();
        m.login("PLAIN", "ok");
        m.login("PLAIN", "failed");
        m.login("PLAIN", "failed");
        m.message_accepted("alice", 2, 1000);
        m.message_refused("sending_limit");
        m.session_began("implicit");
        m.session_ended("implicit", "TLSv1_3");
        m.delivery("default", "delivered");
        m.spool_write_seconds.observe(0.004);
        m.set_queue_probe(|| QueueFigures {
            messages: 3,
            oldest: Duration::from_secs(90),
        });
        let text = m.encode();
        for line in [
            "submitd_logins_total{mechanism=\"PLAIN\",outcome=\"failed\"} 2",
            "submitd_logins_total{mechanism=\"PLAIN\",outcome=\"ok\"} 1",
            "submitd_messages_accepted_total 1",
            "submitd_recipients_total 2",
            "submitd_message_bytes_total 1000",
            "submitd_messages_refused_total{reason=\"sending_limit\"} 1",
            "submitd_sessions_total{listener=\"implicit\",tls=\"TLSv1_3\"} 1",
            "submitd_sessions_open{listener=\"implicit\"} 0",
            "submitd_deliveries_total{route=\"default\",outcome=\"delivered\"} 1",
            "submitd_spool_write_seconds_count 1",
            "submitd_queue_messages 3",
            "submitd_queue_oldest_message_seconds 90.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let classic = m.encode_text();
        assert!(classic.contains("# TYPE submitd_logins_total counter\n"));
        assert!(classic.contains("# HELP submitd_logins_total Login attempts"));
        assert!(classic.contains("# TYPE submitd_queue_messages gauge\n"));
        assert!(!classic.contains("# EOF"));
        // Per-user series only when asked for.
        assert!(!text.contains("user=\"alice\""));
        m.set_per_user(true);
        m.message_accepted("alice", 1, 10);
        assert!(m
            .encode()
            .contains("submitd_user_messages_total{user=\"alice\"} 1"));
    }
}

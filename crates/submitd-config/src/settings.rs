//! The checked settings, one struct per section of the file, holding the
//! libraries' own setting types where they have one (session limits,
//! connection limits, the throttle, the retry policy, certificate paths,
//! how TLS starts), so a default is written once, in the library that
//! owns it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use submitd_auth::ThrottleConfig;
use submitd_cluster::ClusterConfig;

pub use crate::file::LogFormat;
use submitd_listener::{CertificatePaths, ConnectionLimits, ProxyProtocol};
use submitd_oauth2::{IssuerPolicy, TokenEndpoint};
use submitd_relay::{MinFree, RetryPolicy};
use submitd_smtp::{Mechanism, Transport};

/// The settings, checked and with absolute paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The config file read.
    pub path: PathBuf,
    /// This server's name (`hostname`).
    pub hostname: String,
    /// Create a demo certificate and user on first run (`demo`).
    pub demo: bool,
    /// Leave client name and address out of Received (`privacy`).
    pub privacy: bool,
    /// `[[listen]]`.
    pub listen: Vec<ListenSettings>,
    /// `[tls]`.
    pub tls: TlsSettings,
    /// `[auth]`.
    pub auth: AuthSettings,
    /// `[queue]`.
    pub queue: QueueSettings,
    /// `[relay]`.
    pub relay: RelaySettings,
    /// `[limits]` (the connection limits are in each listener's settings).
    pub limits: LimitSettings,
    /// `[local]`, if present.
    pub local: Option<LocalSettings>,
    /// `[metrics]`, if present.
    pub metrics: Option<MetricsSettings>,
    /// `[cluster]`, if present: limits shared in Redis.
    pub cluster: Option<ClusterConfig>,
    /// `[log] format`.
    pub log_format: LogFormat,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `listen`: where `GET /metrics` is served.
    pub listen: SocketAddr,
    /// `per_user`: series with a user name in them (one per user).
    pub per_user: bool,
}

/// One `[[listen]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSettings {
    /// `address`.
    pub address: SocketAddr,
    /// `mode`: [`Transport::ImplicitTls`] or [`Transport::StartTls`].
    pub transport: Transport,
    /// `max_connections` (else `[limits] connections`), with `[limits]`
    /// `connections_per_client` and `unauthenticated_connections`.
    pub limits: ConnectionLimits,
    /// `proxy_protocol` with its `trusted_proxies`: connections come
    /// through a load balancer that names the client in a PROXY header.
    pub proxy: Option<ProxyProtocol>,
}

/// `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `certificate` and `key`, then each `[[tls.additional]]`: the first
    /// is the default, the others are chosen by SNI.
    pub certificates: Vec<CertificatePaths>,
}

/// Where passwords are checked (`[auth] backend`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordBackend {
    /// The credential file's argon2id hashes.
    File,
    /// A Dovecot auth socket, with a bound on each check.
    Dovecot {
        /// `dovecot_socket`.
        socket: PathBuf,
        /// `dovecot_timeout`.
        timeout: Duration,
    },
}

/// `[auth]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// `users`: the credential file.
    pub users: PathBuf,
    /// `backend`, `dovecot_socket`, `dovecot_timeout`.
    pub backend: PasswordBackend,
    /// `max_concurrent_checks`.
    pub max_concurrent_checks: usize,
    /// The failed-login throttle, with `failure_delay` as its first delay.
    pub throttle: ThrottleConfig,
    /// `reload_max_drop`: the share of users, in percent, a reload may
    /// drop ("100%" turns the guard off).
    pub reload_max_drop: u8,
    /// How long a verified login skips the full check (`cache_ttl`);
    /// `None` when the cache is off ("0s", or Dovecot without
    /// `dovecot_cache = true`).
    pub verified_cache: Option<Duration>,
    /// `[auth.oauth2]`: bearer tokens from clients (OAUTHBEARER, XOAUTH2).
    pub oauth2: Option<ClientTokenSettings>,
}

/// `[auth.oauth2]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTokenSettings {
    /// `issuer`, `audience`, `login_claim`, `algorithms`, `leeway`.
    pub policy: IssuerPolicy,
    /// `ca_file` of the issuer's HTTPS; the system's roots if `None`.
    pub ca_file: Option<PathBuf>,
    /// `timeout` of each request for the issuer's keys.
    pub timeout: Duration,
}

/// `[queue]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    /// `directory`.
    pub directory: PathBuf,
    /// The retry schedule, with `lifetime`.
    pub retry: RetryPolicy,
    /// `min_free`: how much of the queue's disk is kept free (new
    /// messages get 452 4.3.1 below it).
    pub min_free: MinFree,
    /// `in_flow_delay`: the longest a 250 waits while the relay is behind
    /// (zero: never).
    pub in_flow_delay: Duration,
}

/// One upstream (`[[relay.upstream]]`, `[[relay.sender_upstream]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// `host`: connected to and checked against the certificate.
    pub host: String,
    /// `port`.
    pub port: u16,
    /// `tls`: [`Transport::ImplicitTls`] or [`Transport::StartTls`].
    pub transport: Transport,
    /// `auth`, with `username` and the password file or the OAuth2 table.
    pub auth: UpstreamAuthSettings,
    /// `mechanisms`: the AUTH mechanisms allowed, in order (empty: those
    /// that fit the secret).
    pub mechanisms: Vec<Mechanism>,
    /// `ca_file`; the system's roots if `None`.
    pub ca_file: Option<PathBuf>,
}

/// How submitd logs in to an upstream (`auth =`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamAuthSettings {
    /// `"none"`.
    None,
    /// `"password"`: `username` and `password_file`.
    Password {
        /// `username`.
        user: String,
        /// `password_file`.
        file: PathBuf,
    },
    /// `"xoauth2"`: `username` and `[…oauth2]`.
    XOAuth2 {
        /// `username`: the mailbox the token acts for.
        user: String,
        /// The `oauth2` table.
        oauth2: Box<OAuth2Settings>,
    },
}

/// An upstream's `oauth2` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// The endpoint, grant and client (presets filled in; `route` is the
    /// name `submitd oauth2 authorize` takes).
    pub endpoint: TokenEndpoint,
    /// `ca_file` of the provider's HTTPS; the system's roots if `None`.
    pub ca_file: Option<PathBuf>,
    /// `timeout`: of each request to the provider.
    pub timeout: Duration,
}

/// Where messages go by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteSettings {
    /// `maildir`.
    Maildir(PathBuf),
    /// `[[relay.upstream]]`, in order.
    Upstreams(Vec<UpstreamSettings>),
}

/// One `[[relay.sender_upstream]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderRouteSettings {
    /// `senders`: addresses and `@domains`.
    pub senders: Vec<String>,
    /// `name`, else the first sender: what `submitd oauth2 authorize` takes.
    pub name: String,
    /// The upstream (the entry's other keys).
    pub upstream: UpstreamSettings,
}

/// `[relay]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySettings {
    /// `maildir` or `[[relay.upstream]]`.
    pub route: RouteSettings,
    /// `[[relay.sender_upstream]]`, tried before `route`.
    pub sender_routes: Vec<SenderRouteSettings>,
    /// `connections`: deliveries at once.
    pub connections: usize,
    /// `idle_connection`: how long an idle upstream connection is kept.
    pub idle_connection: Duration,
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    /// `message_size`, `recipients`, `idle_timeout`, `session_duration`.
    pub session: submitd_smtp::Limits,
    /// `handshake_timeout`.
    pub handshake_timeout: Duration,
    /// `shutdown_grace`: how long sessions get to finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// `memory_budget`: resident memory above which sessions read more
    /// slowly and a warning is logged; `None`: chosen at start from the
    /// cgroup's limit or the machine's memory.
    pub memory_budget: Option<u64>,
}

/// `[local]`: the socket for the machine's own cron jobs and scripts
/// (`submitd sendmail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSettings {
    /// `socket`.
    pub socket: PathBuf,
    /// `domain`: local user `u` sends as `u@domain` (unless the
    /// credential file has a line for `u`); `hostname` if unset.
    pub domain: String,
}

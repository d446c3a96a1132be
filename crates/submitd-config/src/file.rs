//! The config file as written: serde structs, one per TOML table, with
//! `deny_unknown_fields` so a misspelt key is an error that names it.
//! Values are kept as the file spells them (durations and sizes as text);
//! `sections.rs` checks and converts them.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) hostname: String,
    #[serde(default)]
    pub(crate) demo: bool,
    #[serde(default)]
    pub(crate) privacy: bool,
    pub(crate) listen: Vec<Listen>,
    pub(crate) tls: Tls,
    pub(crate) auth: Auth,
    pub(crate) queue: Queue,
    pub(crate) relay: Relay,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) local: Option<Local>,
    #[serde(default)]
    pub(crate) metrics: Option<Metrics>,
    #[serde(default)]
    pub(crate) cluster: Option<Cluster>,
    #[serde(default)]
    pub(crate) log: Log,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    #[serde(default)]
    pub(crate) format: LogFormat,
}

/// `[log] format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of `key=value` fields (journald, grep, fail2ban).
    #[default]
    Text,
    /// One JSON object a line, the same fields (Loki, ELK).
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cluster {
    pub(crate) redis: String,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metrics {
    pub(crate) listen: String,
    #[serde(default)]
    pub(crate) per_user: bool,
}

/// `mode = ` of a listener and `tls = ` of an upstream.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TlsMode {
    Implicit,
    Starttls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listen {
    pub(crate) address: String,
    pub(crate) mode: TlsMode,
    #[serde(default)]
    pub(crate) max_connections: Option<usize>,
    #[serde(default)]
    pub(crate) proxy_protocol: bool,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tls {
    pub(crate) certificate: PathBuf,
    pub(crate) key: PathBuf,
    #[serde(default)]
    pub(crate) additional: Vec<TlsPair>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsPair {
    pub(crate) certificate: PathBuf,
    pub(crate) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    pub(crate) users: PathBuf,
    #[serde(default)]
    pub(crate) max_concurrent_checks: Option<usize>,
    #[serde(default)]
    pub(crate) failure_delay: Option<String>,
    #[serde(default)]
    pub(crate) backend: Option<BackendKind>,
    #[serde(default)]
    pub(crate) dovecot_socket: Option<PathBuf>,
    #[serde(default)]
    pub(crate) dovecot_timeout: Option<String>,
    #[serde(default)]
    pub(crate) reload_max_drop: Option<String>,
    #[serde(default)]
    pub(crate) cache_ttl: Option<String>,
    #[serde(default)]
    pub(crate) dovecot_cache: Option<bool>,
    #[serde(default)]
    pub(crate) oauth2: Option<AuthOAuth2>,
}

/// `[auth.oauth2]`: clients' bearer tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthOAuth2 {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    #[serde(default)]
    pub(crate) login_claim: Option<String>,
    #[serde(default)]
    pub(crate) algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) leeway: Option<String>,
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackendKind {
    File,
    Dovecot,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Queue {
    pub(crate) directory: PathBuf,
    #[serde(default)]
    pub(crate) lifetime: Option<String>,
    #[serde(default)]
    pub(crate) min_free: Option<String>,
    #[serde(default)]
    pub(crate) in_flow_delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Relay {
    #[serde(default)]
    pub(crate) maildir: Option<PathBuf>,
    #[serde(default)]
    pub(crate) upstream: Vec<Upstream>,
    #[serde(default)]
    pub(crate) sender_upstream: Vec<SenderUpstream>,
    #[serde(default)]
    pub(crate) connections: Option<usize>,
    #[serde(default)]
    pub(crate) idle_connection: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: TlsMode,
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) auth: Option<UpstreamAuthKind>,
    #[serde(default)]
    pub(crate) mechanisms: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) oauth2: Option<OAuth2>,
}

/// `auth = ` of an upstream.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum UpstreamAuthKind {
    Password,
    Xoauth2,
    None,
}

/// `[relay.upstream.oauth2]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OAuth2 {
    #[serde(default)]
    pub(crate) preset: Option<String>,
    #[serde(default)]
    pub(crate) tenant: Option<String>,
    #[serde(default)]
    pub(crate) token_url: Option<String>,
    #[serde(default)]
    pub(crate) device_url: Option<String>,
    #[serde(default)]
    pub(crate) auth_url: Option<String>,
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub(crate) client_key: Option<PathBuf>,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    pub(crate) grant: String,
    #[serde(default)]
    pub(crate) refresh_token_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SenderUpstream {
    pub(crate) senders: Vec<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(flatten)]
    pub(crate) upstream: Upstream,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    pub(crate) message_size: Option<String>,
    pub(crate) recipients: Option<usize>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) session_duration: Option<String>,
    pub(crate) connections: Option<usize>,
    pub(crate) connections_per_client: Option<usize>,
    pub(crate) unauthenticated_connections: Option<usize>,
    pub(crate) connection_rate: Option<u32>,
    pub(crate) handshake_timeout: Option<String>,
    pub(crate) shutdown_grace: Option<String>,
    pub(crate) command_deadline: Option<String>,
    pub(crate) memory_budget: Option<String>,
    pub(crate) min_data_rate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Local {
    pub(crate) socket: PathBuf,
    #[serde(default)]
    pub(crate) domain: Option<String>,
}

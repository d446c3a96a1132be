//! State that the instances behind one load balancer share, kept in
//! Redis or Valkey (`[cluster] redis = "redis://…"` or `rediss://`):
//! failed-login counts and blocks, and what each user sent in the last
//! hour and day. With it, N instances enforce one limit: a password
//! guesser cannot spread over them, and a user allowed 100 messages an
//! hour sends 100 in all.
//!
//! Every update is one Lua script (atomic on the server, one round trip)
//! on keys that expire by themselves, so nothing needs cleaning up and a
//! restarted Redis starts from nothing, as a restarted instance does.
//!
//! Redis out of reach is never an open door and never a refusal: each
//! call returns `None`, the caller's local counters (which it keeps in
//! any case) decide alone, as on a single instance, and one warning says
//! so. While it is down, Redis is tried again every [`RETRY_AFTER`], not at
//! every login, and each command is bounded by a short timeout, so a dead
//! Redis costs a login at most that timeout once per retry period.
//!
//! Dependencies: `redis` (redis-rs, the well-kept Rust client; its
//! multiplexed async connection over tokio, rustls for `rediss://`),
//! `tokio` for timeouts and the connection's lock, `submitd-metrics` to
//! count Redis errors, `tracing`, `thiserror`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::Script;
use tokio::sync::Mutex;

/// How long after a failed command Redis is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The shared store's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port/db` or `rediss://…` (TLS, the server's
    /// certificate verified against the system's roots).
    pub url: String,
    /// The first part of every key, so that several deployments can share
    /// one Redis.
    pub prefix: String,
    /// The most one command may take before the local counters decide.
    pub timeout: Duration,
    /// For `rediss://`: the CA (PEM) that signed Redis's certificate,
    /// instead of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The login throttle's rules, as the local throttle has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRules {
    /// Failures for one (network, user) pair that block the pair.
    pub block_after: u32,
    /// Distinct user names failing from one network that block it.
    pub spray_after: u32,
    /// How long a block lasts.
    pub block_for: Duration,
    /// A count with no failure for this long starts afresh.
    pub window: Duration,
}

/// What the store counted for one failed login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFailures {
    /// Failures of this (network, user) pair, on every instance (0 when
    /// this failure blocked the pair: a block that ends starts afresh).
    pub pair: u32,
    /// Failures of this user from anywhere.
    pub user: u32,
}

/// What a user sent, on every instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedUsage {
    /// Messages in the last 60 minutes.
    pub messages_hour: u32,
    /// Messages in the last 24 hours.
    pub messages_day: u32,
    /// Recipients in the last 60 minutes.
    pub recipients_hour: u32,
    /// Recipients in the last 24 hours.
    pub recipients_day: u32,
}

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL is not one redis-rs understands.
    #[error("{url:?} is not a Redis URL (redis://host:6379/0 or rediss://…): {source}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What was wrong.
        source: redis::RedisError,
    },
    /// The CA file cannot be read.
    #[error("{path}: cannot read the CA file: {source}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CA file given for a URL that is not `rediss://`.
    #[error("a CA file is for rediss:// (TLS) only; {url:?} is not")]
    CaWithoutTls {
        /// The URL given.
        url: String,
    },
}

/// One failure: counts for the pair and the user, the network's distinct
/// names; the pair blocked past `block_after` (its count then starts
/// afresh), the network past `spray_after` names.
const FAILURE: &str = r"
local window, block_after, spray_after, block_for = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local pair = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], window)
local user = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], window)
if pair >= block_after then
  redis.call('SET', KEYS[4], '1', 'EX', block_for)
  redis.call('DEL', KEYS[1])
end
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('EXPIRE', KEYS[3], window)
if redis.call('SCARD', KEYS[3]) >= spray_after then
  redis.call('SET', KEYS[5], '1', 'EX', block_for)
  redis.call('DEL', KEYS[3])
end
if pair >= block_after then pair = 0 end
return {pair, user}
";

/// Messages and recipients in the last hour and day from per-minute
/// fields, dropping fields older than a day.
const USAGE: &str = r"
local now = tonumber(ARGV[1])
local fields = redis.call('HGETALL', KEYS[1])
local mh, md, rh, rd = 0, 0, 0, 0
for i = 1, #fields, 2 do
  local kind, minute = string.sub(fields[i], 1, 1), tonumber(string.sub(fields[i], 2))
  local n = tonumber(fields[i + 1])
  if minute == nil or now - minute >= 1440 then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    local hour = now - minute < 60
    if kind == 'm' then
      md = md + n
      if hour then mh = mh + n end
    else
      rd = rd + n
      if hour then rh = rh + n end
    end
  end
end
return {mh, md, rh, rd}
";

/// Adds one message and its recipients to this minute.
const RECORD: &str = r"
redis.call('HINCRBY', KEYS[1], 'm' .. ARGV[1], 1)
redis.call('HINCRBY', KEYS[1], 'r' .. ARGV[1], tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], 90000)
return 1
";

/// Deletes the keys matching ARGV[1].
const CLEAR: &str = r"
local cursor, n = '0', 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do redis.call('DEL', k); n = n + 1 end
until cursor == '0'
return n
";

/// The connection and whether Redis is taken as down.
#[derive(Debug, Default)]
struct Link {
    connection: Option<MultiplexedConnection>,
    /// Redis failed; not tried again before this.
    down_until: Option<Instant>,
    /// A warning was logged for this episode.
    warned: bool,
}

/// The shared store.
#[derive(Debug)]
pub struct Cluster {
    client: redis::Client,
    config: ClusterConfig,
    link: Mutex<Link>,
    failure: Script,
    usage: Script,
    record: Script,
    exists: Script,
    clear: Script,
}

impl Cluster {
    /// The store at `config.url`. Does not connect: the first command
    /// does, and a Redis that is down at start is the same as one that
    /// goes down later.
    pub fn new(config: ClusterConfig) -> Result<Self, ClusterError> {
        let bad_url = |source| ClusterError::BadUrl {
            url: config.url.clone(),
            source,
        };
        let client = match &config.ca_file {
            None => redis::Client::open(config.url.as_str()).map_err(bad_url)?,
            Some(_) if !config.url.starts_with("rediss://") => {
                return Err(ClusterError::CaWithoutTls {
                    url: config.url.clone(),
                })
            }
            Some(path) => {
                let root = std::fs::read(path).map_err(|source| ClusterError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                redis::Client::build_with_tls(config.url.as_str(), certificates).map_err(bad_url)?
            }
        };
        Ok(Self {
            client,
            config,
            link: Mutex::new(Link::default()),
            failure: Script::new(FAILURE),
            usage: Script::new(USAGE),
            record: Script::new(RECORD),
            exists: Script::new("return redis.call('EXISTS', KEYS[1], KEYS[2])"),
            clear: Script::new(CLEAR),
        })
    }

    /// The URL without a password, for log lines.
    pub fn location(&self) -> String {
        let info = self.client.get_connection_info();
        format!("{}", info.addr())
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// A connection, unless Redis is taken as down, and whether it is new.
    async fn connection(&self) -> Option<(MultiplexedConnection, bool)> {
        let mut link = self.link.lock().await;
        if let Some(connection) = &link.connection {
            return Some((connection.clone(), false));
        }
        if link.down_until.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let connected = tokio::time::timeout(
            self.config.timeout,
            self.client.get_multiplexed_async_connection(),
        )
        .await;
        match connected {
            Ok(Ok(connection)) => {
                link.connection = Some(connection.clone());
                Some((connection, true))
            }
            Ok(Err(e)) => {
                self.went_down(&mut link, &e.to_string());
                None
            }
            Err(_) => {
                self.went_down(&mut link, "connect timed out");
                None
            }
        }
    }

    fn went_down(&self, link: &mut Link, error: &str) {
        submitd_metrics::metrics().redis_errors.inc();
        link.connection = None;
        link.down_until = Some(Instant::now() + RETRY_AFTER);
        if !link.warned {
            link.warned = true;
            tracing::warn!(target: "submitd::cluster", redis = %self.location(), %error, "Redis out of reach: each instance counts logins and sending limits on its own until it is back");
        }
    }

    /// Runs `invocation`; `None` (and Redis taken as down a while) when
    /// it fails or takes longer than the timeout. A kept connection that
    /// fails (Redis restarted since) is replaced once at once.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        loop {
            let (mut connection, new) = self.connection().await?;
            let result = tokio::time::timeout(
                self.config.timeout,
                invocation.invoke_async(&mut connection),
            )
            .await;
            let error = match result {
                Ok(Ok(value)) => {
                    let mut link = self.link.lock().await;
                    if link.warned {
                        link.warned = false;
                        link.down_until = None;
                        tracing::info!(target: "submitd::cluster", redis = %self.location(), "Redis reachable again: limits are shared again");
                    }
                    return Some(value);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "command timed out".to_owned(),
            };
            let mut link = self.link.lock().await;
            if new {
                self.went_down(&mut link, &error);
                return None;
            }
            link.connection = None;
        }
    }

    /// Whether `user` from `network` is blocked on any instance; `None`
    /// when Redis cannot say.
    pub async fn login_blocked(&self, network: &str, user: &str) -> Option<bool> {
        let user = user.to_lowercase();
        let (pair, net) = (
            self.key(&["login", "block", "pair", &bracket(network), &user]),
            self.key(&["login", "block", "net", &bracket(network)]),
        );
        // EXISTS through a script, so that every command takes one path.
        let mut invocation = self.exists.key(pair);
        invocation.key(net);
        let found: i64 = self.run(invocation).await?;
        Some(found > 0)
    }

    /// Counts a failed login of `user` from `network` under `rules`.
    pub async fn login_failed(
        &self,
        network: &str,
        user: &str,
        rules: LoginRules,
    ) -> Option<SharedFailures> {
        let user = user.to_lowercase();
        let net = bracket(network);
        let mut invocation = self.failure.key(self.key(&["login", "pair", &net, &user]));
        invocation
            .key(self.key(&["login", "user", &user]))
            .key(self.key(&["login", "names", &net]))
            .key(self.key(&["login", "block", "pair", &net, &user]))
            .key(self.key(&["login", "block", "net", &net]))
            .arg(rules.window.as_secs().max(1))
            .arg(rules.block_after.max(1))
            .arg(rules.spray_after.max(1))
            .arg(rules.block_for.as_secs().max(1))
            .arg(&user);
        let (pair, user): (u32, u32) = self.run(invocation).await?;
        Some(SharedFailures { pair, user })
    }

    /// Forgets every failed-login count and block (the users changed).
    pub async fn clear_logins(&self) -> Option<()> {
        let pattern = format!("{}:login:*", glob_escape(&self.config.prefix));
        let mut invocation = self.clear.prepare_invoke();
        invocation.arg(pattern);
        let _: i64 = self.run(invocation).await?;
        Some(())
    }

    /// What `user` sent in the last hour and day, on every instance.
    pub async fn usage(&self, user: &str) -> Option<SharedUsage> {
        let mut invocation = self.usage.key(self.key(&["sent", &user.to_lowercase()]));
        invocation.arg(unix_minute());
        let (messages_hour, messages_day, recipients_hour, recipients_day): (u32, u32, u32, u32) =
            self.run(invocation).await?;
        Some(SharedUsage {
            messages_hour,
            messages_day,
            recipients_hour,
            recipients_day,
        })
    }

    /// Adds a message of `user` to `recipients`.
    pub async fn record(&self, user: &str, recipients: u32) -> Option<()> {
        let mut invocation = self.record.key(self.key(&["sent", &user.to_lowercase()]));
        invocation.arg(unix_minute()).arg(recipients);
        let _: i64 = self.run(invocation).await?;
        Some(())
    }
}

/// A network in brackets, so that an IPv6 network's colons cannot run
/// into the user name after it.
fn bracket(network: &str) -> String {
    format!("[{network}]")
}

/// `text` with SCAN's pattern characters escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unix_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_run_into_each_other() {
        assert_eq!(bracket("2001:db8::"), "[2001:db8::]");
        assert_eq!(glob_escape("a*b[c]"), "a\\*b\\[c\\]");
        let cluster = Cluster::new(ClusterConfig {
            url: "redis://127.0.0.1:1/0".into(),
            prefix: "submitd".into(),
            timeout: Duration::from_millis(100),
            ca_file: None,
        })
        .unwrap();
        assert_eq!(
            cluster.key(&["login", "pair", &bracket("10.0.0.1"), "alice"]),
            "submitd:login:pair:[10.0.0.1]:alice"
        );
        assert!(Cluster::new(ClusterConfig {
            url: "http://x".into(),
            prefix: "p".into(),
            timeout: Duration::from_millis(100),
            ca_file: None,
        })
        .is_err());
    }

    #[tokio::test]
    async fn redis_out_of_reach_says_none_quickly_and_rests() {
        // Port 1 on loopback: nothing listens there.
        let cluster = Cluster::new(ClusterConfig {
            url: "redis://127.0.0.1:1/0".into(),
            prefix: "submitd".into(),
            timeout: Duration::from_millis(200),
            ca_file: None,
        })
        .unwrap();
        let started = Instant::now();
        assert_eq!(cluster.login_blocked("10.0.0.1", "alice").await, None);
        assert_eq!(cluster.usage("alice").await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
        // Taken as down: the second call does not even try.
        assert!(cluster.link.lock().await.down_until.is_some());
    }
}

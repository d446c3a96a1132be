//! Brute-force throttling of failed logins.
//!
//! Failures are counted per client network (an IPv4 address, or an IPv6
//! /64, which one subscriber usually holds whole) and per user name. Each
//! failure's reply is delayed, growing with the count; a network with too
//! many failures is blocked for a while and gets a temporary failure
//! without any password check. A *successful* login is never delayed or
//! blocked because of failures elsewhere: delays apply to failure replies
//! only and blocks to the failing network only, so an attacker hammering
//! `alice` from one place cannot lock the real alice out.
//!
//! Memory is bounded: old entries are forgotten after the window, and past
//! `max_entries` the least recently seen are dropped. The clock is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The throttle's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Delay of the first failure reply; doubles with each further failure.
    pub base_delay: Duration,
    /// Longest delay of one failure reply.
    pub max_delay: Duration,
    /// Failures from one network within the window that block it.
    pub block_after: u32,
    /// How long a block lasts.
    pub block_for: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// Most networks and user names remembered at once (each).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(20),
            block_after: 10,
            block_for: Duration::from_secs(15 * 60),
            window: Duration::from_secs(3600),
            max_entries: 100_000,
        }
    }
}

/// Whether a login attempt may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Check the password.
    Allowed,
    /// Refuse with a temporary failure, without checking, until then.
    Blocked {
        /// When the block ends.
        until: Instant,
    },
}

#[derive(Clone, Copy, Debug)]
struct Counter {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counters.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    networks: HashMap<IpAddr, Counter>,
    users: HashMap<String, Counter>,
}

/// The network an address counts under: IPv4 as is (also when mapped
/// into IPv6), IPv6 by its /64, which one subscriber usually holds whole.
/// The listener's per-client connection limit uses the same rule.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
            }
        },
    }
}

impl Throttle {
    /// A throttle with these settings and no history.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            networks: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// Before checking a password from `ip`.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Admission {
        match self
            .networks
            .get(&client_network(ip))
            .and_then(|c| c.blocked_until)
        {
            Some(until) if now < until => Admission::Blocked { until },
            _ => Admission::Allowed,
        }
    }

    /// Records a failed login; returns how long to wait before replying.
    pub fn failure(&mut self, ip: IpAddr, username: &str, now: Instant) -> Duration {
        let config = self.config.clone();
        let net = bump(&mut self.networks, client_network(ip), now, &config);
        if net.failures >= config.block_after {
            let until = now + config.block_for;
            if let Some(counter) = self.networks.get_mut(&client_network(ip)) {
                counter.blocked_until = Some(until);
            }
        }
        let user = bump(&mut self.users, username.to_lowercase(), now, &config);
        let worst = net.failures.max(user.failures);
        let factor = 2u32.saturating_pow(worst.saturating_sub(1).min(31));
        config
            .base_delay
            .saturating_mul(factor)
            .min(config.max_delay)
    }

    /// How many networks and user names are remembered.
    pub fn entries(&self) -> (usize, usize) {
        (self.networks.len(), self.users.len())
    }
}

/// Counts one failure under `key`, forgetting stale counts and keeping the
/// map within bounds.
fn bump<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Counter>,
    key: K,
    now: Instant,
    config: &ThrottleConfig,
) -> Counter {
    if map.len() >= config.max_entries && !map.contains_key(&key) {
        map.retain(|_, c| {
            now.saturating_duration_since(c.last) < config.window
                || c.blocked_until.is_some_and(|until| now < until)
        });
        while map.len() >= config.max_entries {
            let oldest = map
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
    }
    let counter = map.entry(key).or_insert(Counter {
        failures: 0,
        last: now,
        blocked_until: None,
    });
    if now.saturating_duration_since(counter.last) >= config.window {
        counter.failures = 0;
    }
    counter.failures = counter.failures.saturating_add(1);
    counter.last = now;
    *counter
}

/// The log line for one failed login, in a stable form that a fail2ban
/// filter matches (`config/fail2ban/filter.d/submitd.conf`):
///
/// `authentication failed: client=203.0.113.7 user="alice" mechanism=PLAIN`
///
/// The user name is quoted with escapes, so it cannot forge another field
/// or line.
pub fn failure_line(ip: IpAddr, username: &str, mechanism: &str) -> String {
    format!("authentication failed: client={ip} user={username:?} mechanism={mechanism}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            block_after: 5,
            block_for: Duration::from_secs(600),
            window: Duration::from_secs(3600),
            max_entries: 100,
        }
    }

    #[test]
    fn delays_grow_and_networks_get_blocked() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        let delays: Vec<u64> = (0..5)
            .map(|_| t.failure(ip("192.0.2.1"), "alice", now).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8]);
        assert_eq!(
            t.admit(ip("192.0.2.1"), now),
            Admission::Blocked {
                until: now + Duration::from_secs(600)
            }
        );
        // Another network is not blocked, and its success is not delayed:
        // delays are returned for failures only.
        assert_eq!(t.admit(ip("198.51.100.9"), now), Admission::Allowed);
        assert_eq!(
            t.admit(ip("192.0.2.1"), now + Duration::from_secs(601)),
            Admission::Allowed
        );
    }

    #[test]
    fn user_failures_from_many_networks_slow_those_failures() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..4 {
            t.failure(ip(&format!("203.0.113.{i}")), "Alice", now);
        }
        // A fifth network's failure for the same user is delayed as the fifth.
        assert_eq!(
            t.failure(ip("203.0.113.50"), "alice", now),
            Duration::from_secs(8)
        );
        // But no network is blocked by that.
        assert_eq!(t.admit(ip("203.0.113.50"), now), Admission::Allowed);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        for i in 1..=5 {
            t.failure(ip(&format!("2001:db8:1:2::{i:x}")), &format!("u{i}"), now);
        }
        assert!(matches!(
            t.admit(ip("2001:db8:1:2:ffff::1"), now),
            Admission::Blocked { .. }
        ));
        assert_eq!(t.admit(ip("2001:db8:1:3::1"), now), Admission::Allowed);
        for _ in 0..5 {
            t.failure(ip("::ffff:192.0.2.8"), "x", now);
        }
        assert!(matches!(
            t.admit(ip("192.0.2.8"), now),
            Admission::Blocked { .. }
        ));
    }

    #[test]
    fn old_failures_are_forgotten() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        for _ in 0..3 {
            t.failure(ip("192.0.2.1"), "alice", now);
        }
        let later = now + Duration::from_secs(3601);
        assert_eq!(
            t.failure(ip("192.0.2.1"), "alice", later),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..1000u32 {
            let addr = IpAddr::V4(i.to_be_bytes().into());
            t.failure(
                addr,
                &format!("user{i}"),
                now + Duration::from_millis(u64::from(i)),
            );
        }
        let (networks, users) = t.entries();
        assert!(networks <= 100 && users <= 100, "{networks} {users}");
        // The most recent ones are the ones kept.
        let last = IpAddr::V4(999u32.to_be_bytes().into());
        assert_eq!(
            t.failure(last, "user999", now + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn failure_line_is_stable_and_unforgeable() {
        assert_eq!(
            failure_line(ip("203.0.113.7"), "alice", "PLAIN"),
            "authentication failed: client=203.0.113.7 user=\"alice\" mechanism=PLAIN"
        );
        let line = failure_line(ip("2001:db8::1"), "x\" client=1.2.3.4\nfake", "LOGIN");
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(
                "authentication failed: client=2001:db8::1 user=\"x\\\" client=1.2.3.4\\nfake\""
            ),
            "{line}"
        );
    }
}

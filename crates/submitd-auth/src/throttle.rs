//! Brute-force throttling of failed logins, fair to the innocent behind a
//! shared address.
//!
//! Failures are counted per *pair* (client network, user name), per user
//! name, and per network as the set of distinct user names that failed
//! from it. A network is an IPv4 address or an IPv6 /64 (one subscriber
//! usually holds a /64 whole). The rule:
//!
//! * Every failure reply is delayed, doubling from `base_delay` with the
//!   pair's count or the user's count over all networks, whichever is
//!   higher, and never longer than `max_delay` (8 s by default: below the
//!   read timeouts of mail clients and libraries, so the client sees its
//!   535).
//! * `block_after` failures of one pair block that pair: that user from
//!   that network gets 454 without a check, for `block_for`. Other users
//!   from the same network are not touched: bob's old phone retrying a
//!   stale password does not lock out carol in the same office.
//! * `spray_after` distinct user names failing from one network block the
//!   whole network: that is guessing many accounts, not one person's
//!   mistake.
//! * A successful login is never delayed, and is refused only when its own
//!   pair or its network is blocked.
//! * When a block ends, its count starts afresh; a count with no failure
//!   for `window` is forgotten.
//!
//! Unknown and known user names are counted alike, so the throttle tells
//! nothing about which names exist. Memory is bounded: past `max_entries`
//! per table the least recently seen entries go. The clock is passed in.

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
    /// Failures of one user name from one network within the window that
    /// block that pair.
    pub block_after: u32,
    /// Distinct user names failing from one network within the window
    /// that block the whole network (password spraying).
    pub spray_after: u32,
    /// How long a block lasts.
    pub block_for: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// Most entries remembered at once, per table.
    pub max_entries: usize,
}

impl ThrottleConfig {
    /// The reply delay after `failures` failures: doubling from the base,
    /// at most the longest.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The rules the shared store applies.
    pub fn shared_rules(&self) -> submitd_cluster::LoginRules {
        submitd_cluster::LoginRules {
            block_after: self.block_after,
            spray_after: self.spray_after,
            block_for: self.block_for,
            window: self.window,
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            block_after: 10,
            spray_after: 10,
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

#[derive(Clone, Debug)]
struct Counter {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
    /// Networks only: the distinct user names that failed (at most
    /// `spray_after` of them are kept).
    names: Vec<String>,
}

impl Counter {
    fn blocked(&self, now: Instant) -> Option<Instant> {
        self.blocked_until.filter(|until| now < *until)
    }
}

/// Failure counters.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    pairs: HashMap<(IpAddr, String), Counter>,
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
            pairs: HashMap::new(),
            networks: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// Forgets every count and block (the users changed: what failed
    /// against the old file says nothing about the new one).
    pub fn clear(&mut self) {
        self.pairs.clear();
        self.networks.clear();
        self.users.clear();
    }

    /// Before checking a password for `username` from `ip`: blocked when
    /// the network is blocked for spraying or this pair for its failures.
    pub fn admit(&self, ip: IpAddr, username: &str, now: Instant) -> Admission {
        let net = client_network(ip);
        let network = self.networks.get(&net).and_then(|c| c.blocked(now));
        let pair = self
            .pairs
            .get(&(net, username.to_lowercase()))
            .and_then(|c| c.blocked(now));
        match network.max(pair) {
            Some(until) => Admission::Blocked { until },
            None => Admission::Allowed,
        }
    }

    /// Records a failed login; returns how long to wait before replying.
    pub fn failure(&mut self, ip: IpAddr, username: &str, now: Instant) -> Duration {
        let config = self.config.clone();
        let net = client_network(ip);
        let name = username.to_lowercase();
        let pair = bump(&mut self.pairs, (net, name.clone()), now, &config);
        if pair.failures >= config.block_after {
            if let Some(counter) = self.pairs.get_mut(&(net, name.clone())) {
                counter.blocked_until = Some(now + config.block_for);
            }
        }
        let user = bump(&mut self.users, name.clone(), now, &config).failures;
        bump(&mut self.networks, net, now, &config);
        if let Some(network) = self.networks.get_mut(&net) {
            let spray_after = config.spray_after.max(1) as usize;
            if !network.names.contains(&name) && network.names.len() < spray_after {
                network.names.push(name);
            }
            if network.names.len() >= spray_after && network.blocked(now).is_none() {
                network.blocked_until = Some(now + config.block_for);
            }
        }
        config.delay_after(pair.failures.max(user))
    }

    /// The settings.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// How many networks and user names are remembered.
    pub fn entries(&self) -> (usize, usize) {
        (self.networks.len(), self.users.len())
    }
}

/// Counts one failure under `key`: a count whose block has ended, or with
/// no failure for the window, starts afresh; the map stays within bounds.
fn bump<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Counter>,
    key: K,
    now: Instant,
    config: &ThrottleConfig,
) -> Counter {
    if map.len() >= config.max_entries && !map.contains_key(&key) {
        map.retain(|_, c| {
            now.saturating_duration_since(c.last) < config.window || c.blocked(now).is_some()
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
        names: Vec::new(),
    });
    let block_over = counter.blocked_until.is_some_and(|until| now >= until);
    if block_over || now.saturating_duration_since(counter.last) >= config.window {
        counter.failures = 0;
        counter.blocked_until = None;
        counter.names.clear();
    }
    counter.failures = counter.failures.saturating_add(1);
    counter.last = now;
    counter.clone()
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
            spray_after: 4,
            block_for: Duration::from_secs(600),
            window: Duration::from_secs(3600),
            max_entries: 100,
        }
    }

    fn blocked(t: &Throttle, addr: &str, user: &str, now: Instant) -> bool {
        matches!(t.admit(ip(addr), user, now), Admission::Blocked { .. })
    }

    #[test]
    fn delays_grow_and_the_failing_pair_is_blocked() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        let delays: Vec<u64> = (0..5)
            .map(|_| t.failure(ip("192.0.2.1"), "alice", now).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8]);
        assert_eq!(
            t.admit(ip("192.0.2.1"), "Alice", now),
            Admission::Blocked {
                until: now + Duration::from_secs(600)
            }
        );
        // Another user from the same network, and the same user from
        // another network, are not blocked by it.
        assert!(!blocked(&t, "192.0.2.1", "carol", now));
        assert!(!blocked(&t, "198.51.100.9", "alice", now));
        assert!(!blocked(
            &t,
            "192.0.2.1",
            "alice",
            now + Duration::from_secs(601)
        ));
    }

    /// The office case: bob's old phone keeps failing; carol, behind the
    /// same address, logs in.
    #[test]
    fn one_stale_password_does_not_lock_out_the_neighbours() {
        let mut t = Throttle::new(ThrottleConfig::default());
        let now = Instant::now();
        let mut longest = Duration::ZERO;
        for i in 0..12 {
            let at = now + Duration::from_secs(i * 30);
            longest = longest.max(t.failure(ip("203.0.113.5"), "bob", at));
        }
        assert!(longest < Duration::from_secs(15), "{longest:?}");
        let later = now + Duration::from_secs(400);
        assert!(blocked(&t, "203.0.113.5", "bob", later));
        assert!(!blocked(&t, "203.0.113.5", "carol", later));
    }

    #[test]
    fn guessing_many_names_blocks_the_network_only() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        for name in ["a", "b", "c"] {
            t.failure(ip("192.0.2.9"), name, now);
        }
        // The same name again is no evidence of spraying.
        t.failure(ip("192.0.2.9"), "C", now);
        assert!(!blocked(&t, "192.0.2.9", "dave", now));
        t.failure(ip("192.0.2.9"), "d", now);
        assert!(blocked(&t, "192.0.2.9", "dave", now), "4 names: sprayed");
        assert!(!blocked(&t, "192.0.2.10", "dave", now));
    }

    #[test]
    fn a_block_that_ended_starts_the_count_afresh() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        for _ in 0..5 {
            t.failure(ip("192.0.2.1"), "bob", now);
        }
        assert!(blocked(&t, "192.0.2.1", "bob", now));
        let after = now + Duration::from_secs(601);
        t.failure(ip("192.0.2.1"), "bob", after);
        assert!(
            !blocked(&t, "192.0.2.1", "bob", after),
            "one more stale password does not block again at once"
        );
        for _ in 0..4 {
            t.failure(ip("192.0.2.1"), "bob", after);
        }
        assert!(blocked(&t, "192.0.2.1", "bob", after));
        t.clear();
        assert!(!blocked(&t, "192.0.2.1", "bob", after));
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
        assert!(!blocked(&t, "203.0.113.50", "alice", now));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let mut t = Throttle::new(config());
        let now = Instant::now();
        for i in 1..=4 {
            t.failure(ip(&format!("2001:db8:1:2::{i:x}")), &format!("u{i}"), now);
        }
        assert!(blocked(&t, "2001:db8:1:2:ffff::1", "x", now));
        assert!(!blocked(&t, "2001:db8:1:3::1", "x", now));
        for _ in 0..5 {
            t.failure(ip("::ffff:192.0.2.8"), "x", now);
        }
        assert!(blocked(&t, "192.0.2.8", "x", now));
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
        assert!(t.pairs.len() <= 100);
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

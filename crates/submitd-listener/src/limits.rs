//! The bounds on connections of one listener: in all, per client network,
//! and not yet authenticated. A connection past a bound is answered 421
//! with the reason (a [`Refusal`]), closed and logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use submitd_smtp::Reply;
use tokio_util::sync::CancellationToken;

/// How long a refused client gets to finish its TLS handshake and read
/// the 421 (at most the listener's handshake timeout).
pub(crate) const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Refusals being answered (a TLS handshake and a 421), at most one per
/// client network at a time: a network that floods with stalled
/// handshakes cannot take every answer from the others.
#[derive(Debug, Default)]
pub(crate) struct Answering(Mutex<std::collections::HashSet<IpAddr>>);

/// One network's refusal being answered; the place is freed when dropped.
#[derive(Debug)]
pub(crate) struct AnsweringOne(Arc<Answering>, IpAddr);

impl Answering {
    /// A place to answer a refusal to `ip`, unless its network has one.
    pub(crate) fn begin(self: &Arc<Self>, ip: IpAddr) -> Option<AnsweringOne> {
        let network = submitd_auth::client_network(ip);
        let mut busy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(network)
            .then(|| AnsweringOne(Arc::clone(self), network))
    }
}

impl Drop for AnsweringOne {
    fn drop(&mut self) {
        let mut busy = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.1);
    }
}

/// Connection bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once in all; further ones get 421 4.3.2.
    pub total: usize,
    /// Connections at once from one client address (IPv6: one /64);
    /// further ones get 421 4.7.0. An office, a school or a household
    /// behind one NAT address is one client here.
    pub per_client: usize,
    /// Connections at once that have not (yet) authenticated; further
    /// ones get 421 4.7.0. A client that never logs in holds one of these,
    /// and there are fewer of them than `total`, so a flood of idle or
    /// password-guessing connections cannot take every place from users
    /// who do log in (a session gives its place back once it logs in).
    pub unauthenticated: usize,
    /// New connections a second from one client network (its burst is
    /// twice `per_client`, so a whole office may connect, and reconnect,
    /// at once); past it a connection is closed at accept, before any
    /// TLS. 0: no rate.
    pub rate: u32,
}

impl Default for ConnectionLimits {
    /// The defaults the config file's `[limits]` keys fall back to.
    fn default() -> Self {
        Self {
            total: 200,
            // Postfix's default is 50; 64 lets an office of 60 behind one
            // address send at once.
            per_client: 64,
            unauthenticated: 100,
            rate: 10,
        }
    }
}

/// Why a connection was refused before its session began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener has as many connections as it takes.
    Busy,
    /// The client's address has as many as one address may have.
    PerClient,
    /// As many connections as allowed have not logged in yet.
    Unauthenticated,
    /// The client's network opens connections faster than its rate: closed
    /// at accept, without a reply (no TLS is spent on it).
    Rate,
}

impl Refusal {
    /// The 421 the client reads before the connection closes.
    pub fn reply(self, hostname: &str) -> Reply {
        let (code, text) = match self {
            Self::Busy => ((4, 3, 2), "Too many connections, try again later"),
            Self::PerClient => (
                (4, 7, 0),
                "Too many connections from your address, try again later",
            ),
            Self::Unauthenticated => (
                (4, 7, 0),
                "Too many connections waiting to log in, try again later",
            ),
            Self::Rate => (
                (4, 7, 0),
                "Too many new connections from your address, try again later",
            ),
        };
        Reply::new(421, code, format!("{hostname} {text}"))
    }

    /// The log line's word for it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Busy => "too many connections",
            Self::PerClient => "too many connections from one client",
            Self::Unauthenticated => "too many unauthenticated connections",
            Self::Rate => "too many new connections a second from one client",
        }
    }

    /// The limit that was reached.
    pub(crate) fn limit(self, limits: &ConnectionLimits) -> usize {
        match self {
            Self::Busy => limits.total,
            Self::PerClient => limits.per_client,
            Self::Unauthenticated => limits.unauthenticated,
            Self::Rate => limits.rate as usize,
        }
    }
}

/// Counts open connections per client network.
#[derive(Debug, Default)]
pub(crate) struct PerClient(Mutex<HashMap<IpAddr, usize>>);

impl PerClient {
    pub(crate) fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(submitd_auth::client_network(ip)).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    pub(crate) fn leave(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = submitd_auth::client_network(ip);
        if let Some(count) = map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&key);
            }
        }
    }
}

/// Connections that have not authenticated, oldest first, each with its
/// client network and the token that ends it. When the bound is full a
/// newcomer may take a place:
///
/// 1. a newcomer from a network that logged in lately ([`KnownNetworks`])
///    takes the place of the oldest connection from a network that did
///    not, whatever its age;
/// 2. otherwise from the network holding the most places, if that is at
///    least two more than the newcomer's own holds (its oldest connection
///    there goes): one address cannot keep everyone else out, however
///    fast it reconnects;
/// 3. otherwise from the oldest connection of all, once it has had
///    [`EVICT_AFTER`] to log in: a client that stalls (a half-done
///    handshake, a trickled command) then costs its own place.
///
/// Rules 2 and 3 never take a known network's place for a newcomer from
/// an unknown one.
///
/// Otherwise the newcomer is refused.
#[derive(Debug, Default)]
pub(crate) struct UnauthenticatedSet(Mutex<Slots>);

#[derive(Debug, Default)]
struct Slots {
    next: u64,
    open: std::collections::BTreeMap<u64, Slot>,
    per_network: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Slot {
    since: Instant,
    network: IpAddr,
    /// The network logged in lately.
    known: bool,
    evicted: CancellationToken,
}

impl Slots {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.open.remove(&id)?;
        if let Some(n) = self.per_network.get_mut(&slot.network) {
            *n -= 1;
            if *n == 0 {
                self.per_network.remove(&slot.network);
            }
        }
        Some(slot)
    }

    /// The place a newcomer from `network` (`known` if it logged in
    /// lately) may take at `now`, if any.
    fn victim(&self, network: IpAddr, known: bool, now: Instant) -> Option<u64> {
        let takeable = |slot: &Slot| known || !slot.known;
        if known {
            if let Some((id, _)) = self.open.iter().find(|(_, slot)| !slot.known) {
                return Some(*id);
            }
        }
        let mine = self.per_network.get(&network).copied().unwrap_or(0);
        let crowded = self
            .per_network
            .iter()
            .max_by_key(|(_, n)| **n)
            .filter(|(_, n)| **n >= mine + 2)
            .map(|(net, _)| *net);
        if let Some(crowded) = crowded {
            let victim = self
                .open
                .iter()
                .find(|(_, slot)| slot.network == crowded && takeable(slot));
            if let Some((id, _)) = victim {
                return Some(*id);
            }
        }
        let (id, slot) = self.open.iter().find(|(_, slot)| takeable(slot))?;
        (now.saturating_duration_since(slot.since) >= EVICT_AFTER).then_some(*id)
    }
}

/// How long a connection has to log in before it can be evicted for a
/// newer one (TLS and AUTH take well under a second).
pub(crate) const EVICT_AFTER: Duration = Duration::from_secs(3);

/// One connection's place among the unauthenticated ones; given back when
/// dropped (at login, or when the session ends).
#[derive(Debug)]
pub struct Unauthenticated {
    set: Arc<UnauthenticatedSet>,
    id: u64,
    evicted: CancellationToken,
}

impl Unauthenticated {
    /// Cancelled when this connection's place is taken by a newer one: the
    /// session must end.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl UnauthenticatedSet {
    /// A place for a new connection from `ip` at `now`, evicting another
    /// if the set is full and the rules above allow; `None` if not.
    pub(crate) fn enter(
        self: &Arc<Self>,
        ip: IpAddr,
        known: bool,
        max: usize,
        now: Instant,
    ) -> Option<Unauthenticated> {
        let network = submitd_auth::client_network(ip);
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slots.open.len() >= max {
            let victim = slots.victim(network, known, now)?;
            if let Some(slot) = slots.remove(victim) {
                slot.evicted.cancel();
            }
        }
        let id = slots.next;
        slots.next += 1;
        let evicted = CancellationToken::new();
        slots.open.insert(
            id,
            Slot {
                since: now,
                network,
                known,
                evicted: evicted.clone(),
            },
        );
        *slots.per_network.entry(network).or_insert(0) += 1;
        Some(Unauthenticated {
            set: Arc::clone(self),
            id,
            evicted,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|s| s.open.len()).unwrap_or(0)
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut slots = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(self.id);
    }
}

/// Client networks that logged in successfully lately, for the
/// unauthenticated bound's eviction rule: when it is full, a newcomer from
/// such a network takes the place of a connection from a network without
/// that history. Real users come back from where they logged in before
/// (home, office); a flood of slow connections from fresh addresses then
/// cannot keep them out. Bounded: past [`KnownNetworks::MAX`] the least
/// recently seen go; an entry lasts [`KnownNetworks::FOR`].
#[derive(Debug, Default)]
pub(crate) struct KnownNetworks(Mutex<HashMap<IpAddr, Instant>>);

impl KnownNetworks {
    /// Most networks remembered.
    pub(crate) const MAX: usize = 10_000;
    /// How long a successful login vouches for its network.
    pub(crate) const FOR: Duration = Duration::from_secs(7 * 24 * 3600);

    /// A successful login from `ip` at `now`.
    pub(crate) fn logged_in(&self, ip: IpAddr, now: Instant) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let network = submitd_auth::client_network(ip);
        if known.len() >= Self::MAX && !known.contains_key(&network) {
            known.retain(|_, at| now.saturating_duration_since(*at) < Self::FOR);
            if known.len() >= Self::MAX {
                if let Some(oldest) = known.iter().min_by_key(|(_, at)| **at).map(|(n, _)| *n) {
                    known.remove(&oldest);
                }
            }
        }
        known.insert(network, now);
    }

    /// Whether `ip`'s network logged in successfully within
    /// [`KnownNetworks::FOR`] of `now`.
    pub(crate) fn is_known(&self, ip: IpAddr, now: Instant) -> bool {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(&submitd_auth::client_network(ip))
            .is_some_and(|at| now.saturating_duration_since(*at) < Self::FOR)
    }
}

/// New connections per client network: a token bucket of `burst` (twice
/// the per-client bound, so an office opening all its sessions at once
/// fits) refilled at `per_second`. A network over its rate is closed at accept,
/// before any TLS: reconnecting thousands of times a second then costs the
/// attacker, not the server and not the other clients.
#[derive(Debug)]
pub(crate) struct ConnectionRate {
    per_second: u32,
    burst: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl ConnectionRate {
    /// Most networks remembered; idle full buckets are forgotten first.
    const MAX: usize = 100_000;

    pub(crate) fn new(per_second: u32, burst: usize) -> Self {
        Self {
            per_second,
            burst: u32::try_from(burst).unwrap_or(u32::MAX).max(1),
            buckets: Mutex::default(),
        }
    }

    /// Whether a new connection from `ip` at `now` is within the rate.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let (rate, burst) = (f64::from(self.per_second), f64::from(self.burst));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let network = submitd_auth::client_network(ip);
        if buckets.len() >= Self::MAX && !buckets.contains_key(&network) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= Self::MAX {
                return true;
            }
        }
        let (tokens, at) = buckets.entry(network).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The log of refused connections, at most a line a second: under a flood
/// each refusal of its own would be tens of thousands of lines a second.
/// The first refusal after a quiet second is logged at once; those after
/// it are counted and logged by [`RefusalLog::flush`] (called every
/// second), with the last client and reason and how many there were.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog(Mutex<RefusalState>);

#[derive(Debug, Default)]
struct RefusalState {
    last_line: Option<Instant>,
    pending: u64,
    last: Option<(IpAddr, &'static str, usize, bool)>,
}

impl RefusalLog {
    pub(crate) fn refused(
        &self,
        client: IpAddr,
        reason: &'static str,
        limit: usize,
        answered: bool,
    ) {
        submitd_metrics::metrics().connection_refused(reason);
        let now = Instant::now();
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let quiet = state
            .last_line
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if quiet && state.pending == 0 {
            state.last_line = Some(now);
            tracing::warn!(target: "submitd::listener", client = %client, limit, reason, answered, refused = 1, "connection refused");
        } else {
            state.pending += 1;
            state.last = Some((client, reason, limit, answered));
        }
    }

    /// Logs what was refused since the last line, if anything.
    pub(crate) fn flush(&self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let refused = std::mem::take(&mut state.pending);
        if let (true, Some((client, reason, limit, answered))) = (refused > 0, state.last.take()) {
            state.last_line = Some(Instant::now());
            tracing::warn!(target: "submitd::listener", client = %client, limit, reason, answered, refused, "connection refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_oldest_gives_way_once_it_had_its_time() {
        let set = Arc::new(UnauthenticatedSet::default());
        let t0 = Instant::now();
        let first = set.enter(ip("192.0.2.1"), false, 2, t0).unwrap();
        let second = set
            .enter(ip("192.0.2.2"), false, 2, t0 + Duration::from_secs(1))
            .unwrap();
        let newcomer = ip("192.0.2.3");
        assert!(
            set.enter(newcomer, false, 2, t0 + Duration::from_secs(2))
                .is_none(),
            "too young to go"
        );
        let third = set.enter(newcomer, false, 2, t0 + EVICT_AFTER).unwrap();
        assert!(first.evicted().is_cancelled());
        assert!(!second.evicted().is_cancelled());
        assert_eq!(set.len(), 2);
        drop(first);
        assert_eq!(set.len(), 2, "an evicted place is not given back twice");
        drop(second);
        drop(third);
        assert_eq!(set.len(), 0);
    }

    /// One address filling the places cannot keep another out, however
    /// young its connections are; among equals, age decides.
    #[test]
    fn a_crowding_address_gives_way_to_others() {
        let set = Arc::new(UnauthenticatedSet::default());
        let now = Instant::now();
        let crowd: Vec<_> = (0..4)
            .map(|_| set.enter(ip("198.51.100.7"), false, 4, now).unwrap())
            .collect();
        // The crowd cannot take its own places.
        assert!(set.enter(ip("198.51.100.7"), false, 4, now).is_none());
        // Another address can, at once: the crowd's oldest goes.
        let user = set.enter(ip("203.0.113.9"), false, 4, now).unwrap();
        assert!(crowd[0].evicted().is_cancelled());
        assert!(!user.evicted().is_cancelled());
        // And the user's connection is never the one to go for the crowd.
        assert!(set.enter(ip("198.51.100.7"), false, 4, now).is_none());
        // IPv6 counts by /64.
        let v6: Vec<_> = (1..=2)
            .map(|i| {
                set.enter(ip(&format!("2001:db8::{i}")), false, 6, now)
                    .unwrap()
            })
            .collect();
        assert!(set.enter(ip("2001:db8::99"), false, 6, now).is_none());
        drop(v6);
    }

    #[test]
    fn the_connection_rate_allows_a_burst_then_a_steady_pace() {
        let rate = ConnectionRate::new(10, 64);
        let now = Instant::now();
        let office = ip("192.0.2.1");
        assert_eq!((0..64).filter(|_| rate.admit(office, now)).count(), 64);
        assert!(!rate.admit(office, now), "the burst is spent");
        assert!(
            rate.admit(ip("192.0.2.2"), now),
            "another network has its own"
        );
        let later = now + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| rate.admit(office, later)).count(), 5);
        assert!(ConnectionRate::new(0, 1).admit(office, now), "0: no rate");
    }

    /// Many fresh addresses, one place each: a known network's newcomer
    /// still gets in at once, and none of them can take its place back.
    #[test]
    fn a_network_that_logged_in_lately_gets_in_first() {
        let set = Arc::new(UnauthenticatedSet::default());
        let known = KnownNetworks::default();
        let now = Instant::now();
        known.logged_in(ip("203.0.113.9"), now);
        assert!(known.is_known(ip("203.0.113.9"), now));
        assert!(!known.is_known(ip("203.0.113.9"), now + KnownNetworks::FOR));
        let flood: Vec<_> = (1..=3)
            .map(|i| {
                set.enter(ip(&format!("198.51.100.{i}")), false, 3, now)
                    .unwrap()
            })
            .collect();
        let user = set
            .enter(
                ip("203.0.113.9"),
                known.is_known(ip("203.0.113.9"), now),
                3,
                now,
            )
            .unwrap();
        assert_eq!(
            flood.iter().filter(|s| s.evicted().is_cancelled()).count(),
            1
        );
        let later = now + EVICT_AFTER * 10;
        for i in 4..=10 {
            let _ = set.enter(ip(&format!("198.51.100.{i}")), false, 3, later);
        }
        assert!(
            !user.evicted().is_cancelled(),
            "the known one keeps its place"
        );
    }
}

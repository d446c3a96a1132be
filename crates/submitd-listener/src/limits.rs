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
pub(crate) const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

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
        };
        Reply::new(421, code, format!("{hostname} {text}"))
    }

    /// The log line's word for it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Busy => "too many connections",
            Self::PerClient => "too many connections from one client",
            Self::Unauthenticated => "too many unauthenticated connections",
        }
    }

    /// The limit that was reached.
    pub(crate) fn limit(self, limits: &ConnectionLimits) -> usize {
        match self {
            Self::Busy => limits.total,
            Self::PerClient => limits.per_client,
            Self::Unauthenticated => limits.unauthenticated,
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

/// Connections that have not authenticated, oldest first, each with the
/// token that ends it. When the bound is full, the oldest one that has
/// had [`EVICT_AFTER`] to log in gives its place to the newcomer: a client
/// that stalls (a half-done handshake, a trickled command) then costs the
/// attacker its place, not a real user theirs.
#[derive(Debug, Default)]
pub(crate) struct UnauthenticatedSet(Mutex<Slots>);

#[derive(Debug, Default)]
struct Slots {
    next: u64,
    open: std::collections::BTreeMap<u64, (Instant, CancellationToken)>,
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
    /// A place for a new connection at `now`, evicting the oldest one if
    /// the set is full and it has had its time; `None` if none can go.
    pub(crate) fn enter(self: &Arc<Self>, max: usize, now: Instant) -> Option<Unauthenticated> {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slots.open.len() >= max {
            let (&oldest, &(since, _)) = slots.open.iter().next()?;
            if now.saturating_duration_since(since) < EVICT_AFTER {
                return None;
            }
            if let Some((_, token)) = slots.open.remove(&oldest) {
                token.cancel();
            }
        }
        let id = slots.next;
        slots.next += 1;
        let evicted = CancellationToken::new();
        slots.open.insert(id, (now, evicted.clone()));
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
        slots.open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_gives_way_once_it_had_its_time() {
        let set = Arc::new(UnauthenticatedSet::default());
        let t0 = Instant::now();
        let first = set.enter(2, t0).unwrap();
        let second = set.enter(2, t0 + Duration::from_secs(1)).unwrap();
        assert!(
            set.enter(2, t0 + Duration::from_secs(2)).is_none(),
            "too young to go"
        );
        let third = set.enter(2, t0 + EVICT_AFTER).unwrap();
        assert!(first.evicted().is_cancelled());
        assert!(!second.evicted().is_cancelled());
        assert_eq!(set.len(), 2);
        drop(first);
        assert_eq!(set.len(), 2, "an evicted place is not given back twice");
        drop(second);
        drop(third);
        assert_eq!(set.len(), 0);
    }
}

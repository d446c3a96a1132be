//! The bounds on connections of one listener: in all, per client network,
//! and not yet authenticated. A connection past a bound is closed at once
//! and logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Connection bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once in all (further clients wait in the backlog).
    pub total: usize,
    /// Connections at once from one client address (IPv6: one /64);
    /// further ones are closed at once and logged.
    pub per_client: usize,
    /// Connections at once that have not (yet) authenticated. A client
    /// that never logs in holds one of these, so a flood of idle or
    /// password-guessing connections cannot take every slot from users
    /// who do log in; further ones are closed at once and logged.
    pub unauthenticated: usize,
}

impl Default for ConnectionLimits {
    /// The defaults the config file's `[limits]` keys fall back to.
    fn default() -> Self {
        Self {
            total: 200,
            per_client: 20,
            unauthenticated: 100,
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

/// Counts connections that have not authenticated; a [`Unauthenticated`]
/// slot gives its place back when the session logs in or ends.
#[derive(Debug, Default)]
pub(crate) struct UnauthenticatedCount(AtomicUsize);

/// One connection's place among the unauthenticated ones.
#[derive(Debug)]
pub struct Unauthenticated(Arc<UnauthenticatedCount>);

impl UnauthenticatedCount {
    pub(crate) fn enter(self: &Arc<Self>, max: usize) -> Option<Unauthenticated> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Unauthenticated(Arc::clone(self)))
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::AcqRel);
    }
}

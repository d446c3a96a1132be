//! Where a message goes: the default route (upstreams in order, or a
//! Maildir) or a sender's own upstreams, and which routes are down.
//!
//! A route is down for [`DOWN_FOR`] after every one of its upstreams
//! refused to connect: attempts in that window are deferred with the same
//! reason without connecting, so a dead smarthost costs one connection
//! timeout, not one per queued message, and a dead sender route does not
//! hold up the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::DeliveryError;
use crate::maildir::Maildir;
use crate::upstream::Upstream;

/// After every upstream of a route refused to connect, how long attempts
/// on it are deferred without trying again.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// Where messages go by default.
#[derive(Clone, Debug)]
pub enum Route {
    /// Upstream smarthosts, tried in order (failover).
    Upstreams(Vec<Upstream>),
    /// A local Maildir.
    Maildir(Maildir),
}

/// Upstreams for some senders only (Postfix's
/// `sender_dependent_relayhost_maps` with
/// `smtp_sender_dependent_authentication`): one Gmail account per user,
/// say, each with its own credentials.
#[derive(Clone, Debug)]
pub struct SenderRoute {
    /// Its name in logs and metrics (`name`, else its first sender).
    pub name: String,
    /// Whole addresses (`alice@example.org`) and domains (`@example.net`),
    /// compared without regard to case.
    pub senders: Vec<String>,
    /// Tried in order, like the default route's.
    pub upstreams: Vec<Upstream>,
}

/// Which route a message takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteId {
    /// The default route.
    Default,
    /// The sender route at this index of the configuration.
    Sender(usize),
}

/// What a route delivers to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Destination<'a> {
    Upstreams(&'a [Upstream]),
    Maildir(&'a Maildir),
}

/// The routes of a relay, and which are down now.
#[derive(Debug)]
pub(crate) struct Routes {
    default: Route,
    senders: Vec<SenderRoute>,
    /// Per route: until when (unix seconds) it is taken as down, and why.
    down: Mutex<HashMap<RouteId, (u64, Arc<DeliveryError>)>>,
}

impl Routes {
    pub(crate) fn new(default: Route, senders: Vec<SenderRoute>) -> Self {
        Self {
            default,
            senders,
            down: Mutex::new(HashMap::new()),
        }
    }

    /// Which route `sender` takes: its whole address first, then its
    /// domain, as Postfix looks up `user@domain` before `@domain`; the
    /// default route otherwise (and for bounces, whose sender is empty).
    pub(crate) fn for_sender(&self, sender: Option<(&str, &str)>) -> RouteId {
        let Some((local, domain)) = sender else {
            return RouteId::Default;
        };
        let address = format!("{local}@{domain}");
        let at_domain = format!("@{domain}");
        let find = |key: &str| {
            self.senders
                .iter()
                .position(|r| r.senders.iter().any(|s| s.eq_ignore_ascii_case(key)))
        };
        find(&address)
            .or_else(|| find(&at_domain))
            .map_or(RouteId::Default, RouteId::Sender)
    }

    /// Route `id`'s name in logs and metrics: `default`, or the sender
    /// route's.
    pub(crate) fn name(&self, id: RouteId) -> &str {
        match id {
            RouteId::Default => "default",
            RouteId::Sender(i) => self.senders.get(i).map_or("?", |r| r.name.as_str()),
        }
    }

    /// Where route `id` delivers.
    pub(crate) fn destination(&self, id: RouteId) -> Destination<'_> {
        match (id, &self.default) {
            (RouteId::Sender(i), _) => Destination::Upstreams(
                self.senders
                    .get(i)
                    .map_or(&[][..], |r| r.upstreams.as_slice()),
            ),
            (RouteId::Default, Route::Upstreams(upstreams)) => Destination::Upstreams(upstreams),
            (RouteId::Default, Route::Maildir(maildir)) => Destination::Maildir(maildir),
        }
    }

    /// Why route `id` is taken as down at `now`, if it is.
    pub(crate) fn down(&self, id: RouteId, now: u64) -> Option<DeliveryError> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let (until, cause) = down.get(&id)?;
        (*until > now).then(|| DeliveryError::RouteDown {
            cause: Arc::clone(cause),
            window: DOWN_FOR,
        })
    }

    /// Every upstream of route `id` failed at `now` with `cause`: the
    /// route is down for [`DOWN_FOR`]. Returns what this attempt and those
    /// deferred in the window report.
    pub(crate) fn mark_down(&self, id: RouteId, now: u64, cause: DeliveryError) -> DeliveryError {
        let cause = Arc::new(cause);
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (now + DOWN_FOR.as_secs(), Arc::clone(&cause)));
        DeliveryError::RouteDown {
            cause,
            window: DOWN_FOR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(senders: &[&[&str]]) -> Routes {
        let senders = senders
            .iter()
            .map(|list| SenderRoute {
                name: list[0].to_string(),
                senders: list.iter().map(|s| s.to_string()).collect(),
                upstreams: Vec::new(),
            })
            .collect();
        Routes::new(Route::Upstreams(Vec::new()), senders)
    }

    #[test]
    fn senders_pick_their_route_address_first_then_domain() {
        let routes = routes(&[&["@example.net"], &["Bob@Example.net", "carol@example.org"]]);
        assert_eq!(
            routes.for_sender(Some(("bob", "example.net"))),
            RouteId::Sender(1)
        );
        assert_eq!(
            routes.for_sender(Some(("alice", "EXAMPLE.NET"))),
            RouteId::Sender(0)
        );
        assert_eq!(
            routes.for_sender(Some(("carol", "example.org"))),
            RouteId::Sender(1)
        );
        assert_eq!(
            routes.for_sender(Some(("dave", "example.org"))),
            RouteId::Default
        );
        assert_eq!(
            routes.for_sender(None),
            RouteId::Default,
            "bounces take the default route"
        );
    }

    #[test]
    fn a_route_is_down_for_its_window_only_and_alone() {
        let routes = routes(&[&["@example.net"]]);
        let found = routes.mark_down(RouteId::Default, 1000, DeliveryError::NoUpstream);
        assert_eq!(
            found.to_string(),
            "no upstream configured (not retried for 30s)"
        );
        let down = routes.down(RouteId::Default, 1029).expect("down");
        assert_eq!(
            down.to_string(),
            "no upstream configured (not retried for 30s)"
        );
        assert!(routes.down(RouteId::Default, 1030).is_none());
        assert!(routes.down(RouteId::Sender(0), 1000).is_none());
    }
}

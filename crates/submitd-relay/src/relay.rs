//! The delivery runner: a schedule of queued messages by due time, kept in
//! memory, and a few workers that deliver what is due (to the upstreams in
//! order, or into a Maildir), record each attempt, queue bounces and
//! remove finished messages.
//!
//! ```text
//! enqueue(id) after each 250 ─┐        rescan every minute (and at start):
//!                             ▼        state files + envelope headers only
//!            schedule: (due time, id), oldest first, each id taken by one worker
//!                             │
//!   worker × connections: take a due id ─▶ load ─▶ deliver pending recipients
//!       (its upstream connection kept for the next message, closed when idle)
//!       ─▶ retry::apply ─▶ bounce stored and enqueued (if any) ─▶ state saved
//!       ─▶ finished? remove : back into the schedule at its next try
//! ```
//!
//! Ordering for crashes: a bounce is stored before the state that says its
//! recipients failed, so a crash between the two can at worst send a second
//! bounce, never none. A crash after delivery but before the state is saved
//! delivers again: at least once, never lost.
//!
//! Scale: nothing reads a message's content unless it is being delivered,
//! and when every upstream refused to connect, attempts in the next
//! [`DOWN_FOR`] are deferred with the same reason without connecting, so a
//! dead smarthost costs one connection timeout, not one per queued message.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use submitd_smtp::{Envelope, RcptTo};
use tokio::sync::Notify;

use crate::deliver::{Connection, Upstream};
use crate::dsn::bounce;
use crate::maildir::Maildir;
use crate::retry::{apply, AttemptResult, RetryPolicy};
use crate::spool::{unix_now, QueueId, RecipientState, Spool, SpoolError};

/// After every upstream refused to connect, how long attempts are deferred
/// without trying again.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// Upstreams for some senders only (Postfix's
/// `sender_dependent_relayhost_maps` with
/// `smtp_sender_dependent_authentication`): one Gmail account per user,
/// say, each with its own credentials.
#[derive(Clone, Debug)]
pub struct SenderRoute {
    /// Whole addresses (`alice@example.org`) and domains (`@example.net`),
    /// compared without regard to case.
    pub senders: Vec<String>,
    /// Tried in order, like the default route's.
    pub upstreams: Vec<Upstream>,
}

/// Which sender route `sender` takes: its whole address first, then its
/// domain, as Postfix looks up `user@domain` before `@domain`; `None`
/// for the default route (and for bounces, whose sender is empty).
fn sender_route(routes: &[SenderRoute], sender: Option<(&str, &str)>) -> Option<usize> {
    let (local, domain) = sender?;
    let address = format!("{local}@{domain}");
    let at_domain = format!("@{domain}");
    let find = |key: &str| {
        routes
            .iter()
            .position(|r| r.senders.iter().any(|s| s.eq_ignore_ascii_case(key)))
    };
    find(&address).or_else(|| find(&at_domain))
}

/// A worker's upstream connection, with the route it belongs to (0: the
/// default route, i + 1: sender route i).
type Held = Option<(usize, Connection)>;

/// Where messages go.
#[derive(Clone, Debug)]
pub enum Route {
    /// Upstream smarthosts, tried in order (failover).
    Upstreams(Vec<Upstream>),
    /// A local Maildir.
    Maildir(Maildir),
}

/// The runner's settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// This server's name (EHLO, bounces).
    pub hostname: String,
    /// Where messages go.
    pub route: Route,
    /// Retry schedule and lifetime.
    pub policy: RetryPolicy,
    /// Deliveries at once (workers, each with its own upstream connection).
    pub connections: usize,
    /// How long a worker keeps an idle upstream connection for the next
    /// message before it says QUIT.
    pub idle_connection: Duration,
    /// Upstreams chosen by sender, before the default route.
    pub sender_routes: Vec<SenderRoute>,
}

impl RelayConfig {
    /// The settings with the default concurrency (4) and idle time (5 s).
    pub fn new(hostname: impl Into<String>, route: Route, policy: RetryPolicy) -> Self {
        Self {
            hostname: hostname.into(),
            route,
            policy,
            connections: 4,
            idle_connection: Duration::from_secs(5),
            sender_routes: Vec::new(),
        }
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassFigures {
    /// Messages attempted.
    pub attempted: usize,
    /// Recipients delivered.
    pub delivered: usize,
    /// Recipients deferred (to retry).
    pub deferred: usize,
    /// Recipients failed for good.
    pub failed: usize,
    /// Bounces queued.
    pub bounces: usize,
    /// Messages finished and removed.
    pub removed: usize,
}

/// Which messages are due when, and which a worker holds now.
#[derive(Debug, Default)]
struct Schedule {
    due: BTreeSet<(u64, QueueId)>,
    /// When each id in `due` is due, to move it in O(log n).
    at: HashMap<QueueId, u64>,
    busy: HashSet<QueueId>,
}

impl Schedule {
    fn insert(&mut self, at: u64, id: QueueId) {
        if self.busy.contains(&id) {
            return;
        }
        if let Some(old) = self.at.insert(id.clone(), at) {
            self.due.remove(&(old, id.clone()));
        }
        self.due.insert((at, id));
    }

    /// Replaces everything not held by a worker.
    fn replace(&mut self, due: Vec<(u64, QueueId)>) {
        self.due.clear();
        self.at.clear();
        for (at, id) in due {
            self.insert(at, id);
        }
    }

    /// The oldest due message, now held by the caller.
    fn take_due(&mut self, now: u64) -> Option<QueueId> {
        let first = self.due.iter().next().filter(|(at, _)| *at <= now)?.clone();
        self.due.remove(&first);
        self.at.remove(&first.1);
        self.busy.insert(first.1.clone());
        Some(first.1)
    }

    fn next_due(&self) -> Option<u64> {
        self.due.iter().next().map(|(at, _)| *at)
    }
}

/// Delivers what the spool holds.
#[derive(Debug, Clone)]
pub struct Relay {
    spool: Spool,
    config: Arc<RelayConfig>,
    wake: Arc<Notify>,
    schedule: Arc<Mutex<Schedule>>,
    /// Per route: until when (unix seconds) every upstream of it is taken
    /// as down, and why.
    down: Arc<Mutex<HashMap<usize, (u64, String)>>>,
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

impl Relay {
    /// A runner over `spool`.
    pub fn new(spool: Spool, config: RelayConfig) -> Self {
        Self {
            spool,
            config: Arc::new(config),
            wake: Arc::new(Notify::new()),
            schedule: Arc::new(Mutex::new(Schedule::default())),
            down: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message just stored (after its 250): due now.
    pub fn enqueue(&self, id: QueueId) {
        self.schedule().insert(0, id);
        self.wake.notify_one();
    }

    /// Reads the queue again (after `submitd queue flush`, or to find
    /// messages another process stored) and wakes the workers.
    pub fn wake(&self) {
        self.rescan();
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Rebuilds the schedule from the queue on disk: state files and
    /// envelope headers only, never message content. Messages a worker
    /// holds stay as they are.
    pub fn rescan(&self) {
        let ids = match self.spool.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(target: "submitd::relay", error = %e, "cannot list the queue");
                return;
            }
        };
        let mut due = Vec::with_capacity(ids.len());
        for id in ids {
            let at = self
                .spool
                .load_envelope(&id)
                .and_then(|e| self.spool.state(&id, e.recipients.len()))
                .map(|state| state.next_try);
            match at {
                Ok(at) => due.push((at, id)),
                // Gone meanwhile (delivered, deleted): nothing to schedule.
                Err(SpoolError::NotFound(_)) => {}
                Err(e) => {
                    tracing::error!(target: "submitd::relay", %id, error = %e, "cannot read a queued message; it waits for the next scan");
                }
            }
        }
        self.schedule().replace(due);
    }

    /// Runs until the task is dropped: a scan of the queue, then
    /// `connections` workers, and a scan every minute.
    pub async fn run(self) {
        self.rescan();
        let mut workers = Vec::new();
        for _ in 0..self.config.connections.max(1) {
            workers.push(tokio::spawn(self.clone().worker()));
        }
        // Aborted with this task: the workers go with it.
        let _guard = AbortOnDrop(workers);
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            self.rescan();
            self.wake.notify_waiters();
        }
    }

    async fn worker(self) {
        let mut connection: Held = None;
        let mut figures = PassFigures::default();
        loop {
            let notified = self.wake.notified();
            let now = unix_now();
            let taken = self.schedule().take_due(now);
            if let Some(id) = taken {
                self.attempt_scheduled(&id, &mut connection, &mut figures)
                    .await;
                continue;
            }
            let until_due = self
                .schedule()
                .next_due()
                .map_or(Duration::from_secs(60), |at| {
                    Duration::from_secs(at.saturating_sub(now).clamp(1, 60))
                });
            let idle = if connection.is_some() {
                self.config.idle_connection
            } else {
                Duration::MAX
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(until_due) => {}
                () = tokio::time::sleep(idle) => {
                    if let Some((_, c)) = connection.take() {
                        c.quit().await;
                    }
                }
            }
        }
    }

    /// Attempts a message the caller took from the schedule, then puts it
    /// back at its next try (unless it is finished).
    async fn attempt_scheduled(
        &self,
        id: &QueueId,
        connection: &mut Held,
        figures: &mut PassFigures,
    ) {
        let next = match self.attempt(id, connection, figures).await {
            Ok(next) => next,
            Err(SpoolError::NotFound(_)) => None,
            Err(e) => {
                tracing::error!(target: "submitd::relay", %id, error = %e, "delivery attempt not recorded; retried at the next scan");
                None
            }
        };
        let mut schedule = self.schedule();
        schedule.busy.remove(id);
        if let Some(at) = next {
            schedule.insert(at, id.clone());
        }
    }

    /// Delivers every message that is due now, oldest first, over one
    /// upstream connection, and returns what it did (tests, benchmarks and
    /// one-off runs; the daemon uses [`Relay::run`]).
    pub async fn run_once(&self) -> PassFigures {
        self.rescan();
        let mut figures = PassFigures::default();
        let mut connection: Held = None;
        let now = unix_now();
        // Each message at most once a pass: one due again at once (a zero
        // backoff) waits for the next pass.
        let mut attempted = HashSet::new();
        let mut again = Vec::new();
        loop {
            let taken = self.schedule().take_due(now);
            let Some(id) = taken else {
                break;
            };
            if !attempted.insert(id.clone()) {
                again.push(id);
                continue;
            }
            self.attempt_scheduled(&id, &mut connection, &mut figures)
                .await;
        }
        {
            let mut schedule = self.schedule();
            for id in again {
                schedule.busy.remove(&id);
                schedule.insert(now, id);
            }
        }
        if let Some((_, connection)) = connection {
            connection.quit().await;
        }
        if figures.attempted > 0 {
            tracing::info!(target: "submitd::relay", ?figures, "delivery pass");
        }
        figures
    }

    /// One attempt at `id`; returns when it is next due, or `None` when it
    /// is finished and removed.
    async fn attempt(
        &self,
        id: &QueueId,
        connection: &mut Held,
        figures: &mut PassFigures,
    ) -> Result<Option<u64>, SpoolError> {
        let now = unix_now();
        // The schedule hands out due messages only (it is built from the
        // state files and headers, never content), so the file is read
        // once, whole; the checks below only guard against a stale entry.
        let (stored, data) = self.spool.load(id)?;
        let mut state = self.spool.state(id, stored.recipients.len())?;
        if state.is_finished() {
            self.spool.remove(id)?;
            figures.removed += 1;
            return Ok(None);
        }
        if state.next_try > now {
            return Ok(Some(state.next_try));
        }
        figures.attempted += 1;
        let pending: Vec<usize> = state
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, RecipientState::Pending(_)))
            .map(|(i, _)| i)
            .collect();
        let envelope = Envelope {
            mail_from: stored.mail_from.clone(),
            recipients: pending
                .iter()
                .filter_map(|&i| stored.recipients.get(i).cloned())
                .collect::<Vec<RcptTo>>(),
        };

        let sender = stored
            .mail_from
            .reverse_path
            .as_ref()
            .map(|m| (m.local_part(), m.domain()));
        let by_sender = sender_route(&self.config.sender_routes, sender);
        let outcome = match (&self.config.route, by_sender) {
            (_, Some(i)) => {
                let upstreams = &self.config.sender_routes[i].upstreams;
                self.send_upstream(i + 1, upstreams, connection, &envelope, &data)
                    .await
            }
            (Route::Maildir(maildir), None) => {
                let maildir = maildir.clone();
                let (id2, stored2, data2) = (id.clone(), stored.clone(), data.clone());
                let delivered =
                    tokio::task::spawn_blocking(move || maildir.deliver(&id2, &stored2, &data2))
                        .await;
                match delivered {
                    Ok(Ok(path)) => Ok(submitd_smtp::MessageOutcome {
                        recipients: vec![
                            submitd_smtp::Reply::new(
                                250,
                                submitd_smtp::EnhancedCode::new(2, 0, 0),
                                format!("delivered to {}", path.display())
                            );
                            envelope.recipients.len()
                        ],
                    }),
                    Ok(Err(e)) => Err(format!("maildir: {e}")),
                    Err(e) => Err(format!("maildir: {e}")),
                }
            }
            (Route::Upstreams(upstreams), None) => {
                self.send_upstream(0, upstreams, connection, &envelope, &data)
                    .await
            }
        };
        let result = match &outcome {
            Ok(outcome) => AttemptResult::Replies {
                tried: &pending,
                outcome,
            },
            Err(reason) => AttemptResult::SessionFailed {
                reason: reason.clone(),
                permanent: false,
            },
        };
        let failed_now = apply(
            &mut state,
            &result,
            &self.config.policy,
            stored.received,
            now,
            random_unit(),
        );

        for (i, r) in state.recipients.iter().enumerate() {
            if !pending.contains(&i) {
                continue;
            }
            match r {
                RecipientState::Delivered(_) => figures.delivered += 1,
                RecipientState::Pending(_) => figures.deferred += 1,
                RecipientState::Failed(_) => figures.failed += 1,
            }
            let rcpt = stored
                .recipients
                .get(i)
                .map(ToString::to_string)
                .unwrap_or_default();
            let (outcome_word, text) = match r {
                RecipientState::Delivered(t) => ("delivered", t.as_str()),
                RecipientState::Pending(t) => ("deferred", t.as_deref().unwrap_or("")),
                RecipientState::Failed(t) => ("failed", t.as_str()),
            };
            tracing::info!(target: "submitd::relay", %id, to = %rcpt, attempt = state.attempts, outcome = outcome_word, reply = %text, "delivery");
        }

        // The bounce first: a crash between the two sends a second bounce
        // at worst, never none.
        if !failed_now.is_empty() {
            let now_time = SystemTime::now();
            if let Some(b) = bounce(
                &self.config.hostname,
                id,
                &stored,
                &data,
                &state.recipients,
                &failed_now,
                now_time,
            ) {
                let bounce_id = self
                    .spool
                    .store(QueueId::generate(), b.envelope, Arc::new(b.data))
                    .await?;
                tracing::info!(target: "submitd::relay", %id, bounce = %bounce_id, "bounce queued to the sender");
                self.enqueue(bounce_id);
                figures.bounces += 1;
            }
        }
        let count =
            |f: fn(&RecipientState) -> bool| state.recipients.iter().filter(|r| f(r)).count();
        let delivered = count(|r| matches!(r, RecipientState::Delivered(_)));
        let failed = count(|r| matches!(r, RecipientState::Failed(_)));
        let pending = count(|r| matches!(r, RecipientState::Pending(_)));
        let user = stored.user.as_deref().unwrap_or("-");
        let from = stored
            .mail_from
            .reverse_path
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        if state.is_finished() {
            self.spool.remove(id)?;
            figures.removed += 1;
            // The one summary line of a message's end.
            let outcome = if failed == 0 {
                "delivered"
            } else if delivered == 0 {
                "bounced"
            } else {
                "partly bounced"
            };
            tracing::info!(target: "submitd::message", queue_id = %id, %user, %from, recipients = state.recipients.len(), delivered, failed, size = data.len(), attempts = state.attempts, %outcome, "message {outcome}");
            Ok(None)
        } else {
            self.spool.save_state(id, &state)?;
            tracing::info!(target: "submitd::message", queue_id = %id, %user, %from, recipients = state.recipients.len(), delivered, failed, pending, size = data.len(), attempts = state.attempts, next_try = state.next_try, outcome = "deferred", "message deferred");
            Ok(Some(state.next_try))
        }
    }

    /// Sends over the current connection, opening one (upstreams in order)
    /// if needed. Errors name every upstream tried.
    async fn send_upstream(
        &self,
        route: usize,
        upstreams: &[Upstream],
        connection: &mut Held,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<submitd_smtp::MessageOutcome, String> {
        if connection
            .as_ref()
            .is_some_and(|(held, c)| *held != route || !c.is_usable())
        {
            // Another route's (or a spent) connection: end it politely.
            if let Some((_, old)) = connection.take() {
                old.quit().await;
            }
        }
        if connection.is_none() {
            let down = self
                .down
                .lock()
                .ok()
                .and_then(|d| d.get(&route).cloned())
                .filter(|(until, _)| *until > unix_now());
            if let Some((_, reason)) = down {
                return Err(format!(
                    "{reason} (not retried for {}s)",
                    DOWN_FOR.as_secs()
                ));
            }
            let mut reasons = Vec::new();
            for upstream in upstreams {
                match Connection::open(upstream, &self.config.hostname).await {
                    Ok(c) => {
                        *connection = Some((route, c));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(target: "submitd::relay", error = %e, "upstream unavailable");
                        reasons.push(e.to_string());
                    }
                }
            }
            if connection.is_none() {
                let reason = if reasons.is_empty() {
                    "no upstream configured".to_owned()
                } else {
                    reasons.join("; ")
                };
                if let Ok(mut down) = self.down.lock() {
                    down.insert(route, (unix_now() + DOWN_FOR.as_secs(), reason.clone()));
                }
                return Err(reason);
            }
        }
        let Some((_, open)) = connection.as_mut() else {
            return Err("no connection".into());
        };
        match open.send(envelope, data).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                *connection = None;
                Err(e.to_string())
            }
        }
    }
}

/// Aborts the worker tasks when the runner's task ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for worker in &self.0 {
            worker.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> QueueId {
        QueueId::parse(&format!("{:022x}", n)).unwrap_or_else(|| panic!("id {n}"))
    }

    #[test]
    fn senders_pick_their_route_address_first_then_domain() {
        let route = |senders: &[&str]| SenderRoute {
            senders: senders.iter().map(|s| s.to_string()).collect(),
            upstreams: Vec::new(),
        };
        let routes = [
            route(&["@example.net"]),
            route(&["Bob@Example.net", "carol@example.org"]),
        ];
        assert_eq!(sender_route(&routes, Some(("bob", "example.net"))), Some(1));
        assert_eq!(
            sender_route(&routes, Some(("alice", "EXAMPLE.NET"))),
            Some(0)
        );
        assert_eq!(
            sender_route(&routes, Some(("carol", "example.org"))),
            Some(1)
        );
        assert_eq!(sender_route(&routes, Some(("dave", "example.org"))), None);
        assert_eq!(
            sender_route(&routes, None),
            None,
            "bounces take the default route"
        );
    }

    #[test]
    fn the_schedule_gives_each_due_message_to_one_worker_oldest_first() {
        let mut s = Schedule::default();
        s.insert(100, id(3));
        s.insert(50, id(2));
        s.insert(50, id(1));
        s.insert(500, id(4));
        assert_eq!(s.take_due(40), None);
        assert_eq!(s.take_due(100), Some(id(1)));
        assert_eq!(s.take_due(100), Some(id(2)));
        // Held by a worker: a rescan's insert does not hand it out again.
        s.insert(0, id(1));
        assert_eq!(s.take_due(100), Some(id(3)));
        assert_eq!(s.take_due(100), None);
        assert_eq!(s.next_due(), Some(500));
        // Re-inserting moves an entry, never duplicates it.
        s.insert(10, id(4));
        assert_eq!((s.due.len(), s.at.len()), (1, 1));
        assert_eq!(s.take_due(10), Some(id(4)));
        // A rescan replaces what is not held.
        s.replace(vec![(0, id(1)), (5, id(7))]);
        assert_eq!(s.take_due(10), Some(id(7)), "id 1 is still held");
        assert!(s.due.is_empty() && s.at.is_empty());
    }
}

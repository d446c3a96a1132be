//! The delivery runner: the schedule of queued messages, a few workers
//! that deliver what is due, and the rescan that keeps the schedule true
//! to the queue on disk.
//!
//! ```text
//! enqueue(id) after each 250 ─┐        scan at start (every file's header and state),
//!                             │        then every minute: the folder's names, and the
//!                             ▼        files of ids it does not know (all after a flush)
//!            schedule: (due time, id), oldest first, each id taken by one worker
//!                             │
//!   worker × connections: take a due id ─▶ attempt (attempt.rs)
//!       (its upstream connection kept for the next message, closed when idle)
//!       ─▶ finished? gone : back into the schedule at its next try
//! ```
//!
//! Scale: nothing reads a message's content unless it is being delivered,
//! and a route whose upstreams all refused is skipped for a while
//! (`route.rs`).
//!
//! Shutdown: [`Relay::run`] ends when its cancellation token is cancelled
//! (the same token that stops the listeners): each worker finishes the
//! attempt it is in, says QUIT on its connection and stops. An attempt cut
//! off harder than that (the daemon's grace period over) loses nothing: a
//! message whose state was not saved is attempted again at the next start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::attempt::Held;
use crate::retry::RetryPolicy;
use crate::route::{Route, Routes, SenderRoute};
use crate::schedule::Schedule;
use crate::spool::{unix_now, QueueId, Spool, SpoolError};

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
    /// The longest a new message's 250 waits while the relay has more new
    /// messages waiting than it can start (Postfix's `in_flow_delay`);
    /// zero: never.
    pub in_flow_delay: Duration,
}

impl RelayConfig {
    /// Deliveries at once when the config file does not say.
    pub const DEFAULT_CONNECTIONS: usize = 4;
    /// How long an idle upstream connection is kept when the config file
    /// does not say.
    pub const DEFAULT_IDLE_CONNECTION: Duration = Duration::from_secs(5);
    /// The longest a 250 waits for the relay when the config file does not
    /// say (Postfix's default too).
    pub const DEFAULT_IN_FLOW_DELAY: Duration = Duration::from_secs(1);

    /// The settings with the default concurrency and idle time.
    pub fn new(hostname: impl Into<String>, route: Route, policy: RetryPolicy) -> Self {
        Self {
            hostname: hostname.into(),
            route,
            policy,
            connections: Self::DEFAULT_CONNECTIONS,
            idle_connection: Self::DEFAULT_IDLE_CONNECTION,
            sender_routes: Vec::new(),
            in_flow_delay: Self::DEFAULT_IN_FLOW_DELAY,
        }
    }
}

/// What one pass (or one worker's attempts) did.
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

/// Delivers what the spool holds. Cheap to clone: clones share the
/// schedule and the workers' wake-up.
#[derive(Debug, Clone)]
pub struct Relay {
    pub(crate) spool: Spool,
    pub(crate) hostname: Arc<str>,
    pub(crate) policy: RetryPolicy,
    pub(crate) routes: Arc<Routes>,
    connections: usize,
    idle_connection: Duration,
    wake: Arc<Notify>,
    /// Told each time a worker takes a message (the intake's pacing).
    taken: Arc<Notify>,
    in_flow_delay: Duration,
    schedule: Arc<Mutex<Schedule>>,
    /// Cancelled when the stop's grace runs out: transfers that have not
    /// sent their end of data are abandoned (see [`Relay::abandon_transfers`]).
    pub(crate) abandon: CancellationToken,
}

impl Relay {
    /// A runner over `spool`.
    pub fn new(spool: Spool, config: RelayConfig) -> Self {
        Self {
            spool,
            hostname: config.hostname.into(),
            policy: config.policy,
            routes: Arc::new(Routes::new(config.route, config.sender_routes)),
            connections: config.connections.max(1),
            idle_connection: config.idle_connection,
            wake: Arc::new(Notify::new()),
            taken: Arc::new(Notify::new()),
            in_flow_delay: config.in_flow_delay,
            schedule: Arc::new(Mutex::new(Schedule::default())),
            abandon: CancellationToken::new(),
        }
    }

    /// The stop's grace has run out: every transfer that has not yet sent
    /// its end of data drops its connection before it does, so the
    /// upstream discards the message and it stays queued, untried, for the
    /// next start: delivered once, not twice. A transfer that has sent its
    /// end of data waits for the reply and records it. Call after
    /// cancelling the token given to [`Relay::run`].
    pub fn abandon_transfers(&self) {
        self.abandon.cancel();
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message just stored (after its 250): due now.
    pub fn enqueue(&self, id: QueueId) {
        self.schedule().insert(0, id);
        self.wake.notify_one();
    }

    /// Messages the relay knows of: scheduled (due or waiting for their
    /// next try) and being delivered now.
    pub fn queued(&self) -> usize {
        self.schedule().len()
    }

    /// Messages queued and the age of the oldest, for the metrics.
    pub fn queue_figures(&self) -> (usize, Duration) {
        let schedule = self.schedule();
        let oldest = schedule
            .oldest()
            .and_then(QueueId::created)
            .and_then(|created| std::time::SystemTime::now().duration_since(created).ok())
            .unwrap_or_default();
        (schedule.len(), oldest)
    }

    /// Messages stored and not yet taken by a worker (the relay's backlog
    /// of new work).
    pub fn waiting(&self) -> usize {
        self.schedule().waiting()
    }

    /// Waits (off the async threads) until the spool has removed every
    /// finished message handed to it.
    async fn removals_done(&self) {
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.wait_removals()).await;
    }

    /// Paces the intake to the relay, as Postfix's `in_flow_delay` does:
    /// while more new messages wait than twice the workers (each worker
    /// has one in hand and one next), waits until a worker takes one (each
    /// message taken lets one waiting 250 go, as Postfix's tokens do), at
    /// most the configured delay, then returns. Called before a new
    /// message's 250, so clients that submit faster than the relay can
    /// deliver are slowed to its pace instead of growing the queue without
    /// end; a route that is down does not slow anyone (its messages are
    /// taken and deferred at once), and nothing is ever refused for it.
    pub async fn pace_intake(&self) {
        if self.in_flow_delay.is_zero() {
            return;
        }
        let mark = self.connections * 2;
        if self.schedule().waiting() <= mark {
            return;
        }
        // Behind: the next message a worker takes lets this one go (a
        // token, first come first served), or the delay runs out.
        let _ = tokio::time::timeout(self.in_flow_delay, self.taken.notified()).await;
    }

    /// Reads the queue again (after `submitd queue flush`, or to find
    /// messages another process stored) and wakes the workers.
    pub fn wake(&self) {
        self.rescan();
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Brings the schedule up to date with the queue on disk: the folder's
    /// names, and the files (envelope headers and state files, never
    /// content) of messages the schedule does not know. Every file is read
    /// again only at start and when `submitd queue flush` asked for it, so
    /// a scan's cost does not grow with the messages already scheduled.
    /// Messages a worker holds stay as they are.
    pub fn rescan(&self) {
        self.scan(self.spool.take_rescan_request());
    }

    fn scan(&self, full: bool) {
        let start = self.schedule().scan_start();
        let ids = match self.spool.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(target: "submitd::relay", error = %e, "cannot list the queue");
                return;
            }
        };
        let to_read: Vec<QueueId> = {
            let schedule = self.schedule();
            ids.iter()
                .filter(|id| full || !schedule.knows(id))
                .cloned()
                .collect()
        };
        let mut found = Vec::with_capacity(to_read.len());
        for id in to_read {
            let at = self
                .spool
                .load_envelope(&id)
                .and_then(|e| self.spool.state(&id, e.recipients.len()))
                .map(|state| state.next_try);
            match at {
                Ok(at) => found.push((at, id)),
                // Gone meanwhile (delivered, deleted), or being received:
                // nothing to schedule.
                Err(SpoolError::NotFound(_) | SpoolError::Receiving { .. }) => {}
                Err(e) => {
                    tracing::error!(target: "submitd::relay", %id, error = %e, "cannot read a queued message; it waits for the next scan");
                }
            }
        }
        let listed: HashSet<QueueId> = ids.into_iter().collect();
        self.schedule().scan_end(start, &listed, found);
    }

    /// Runs until `shutdown` is cancelled: a scan of the queue, then
    /// `connections` workers, and a scan every minute. Returns once every
    /// worker has finished its attempt and closed its connection.
    pub async fn run(self, shutdown: CancellationToken) {
        self.scan(true);
        let workers = tokio_util::task::TaskTracker::new();
        for _ in 0..self.connections {
            workers.spawn(self.clone().worker(shutdown.clone()));
        }
        workers.close();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(60)) => {
                    self.rescan();
                    self.wake.notify_waiters();
                }
            }
        }
        workers.wait().await;
        // The removals of the last deliveries, before the process ends.
        self.removals_done().await;
    }

    async fn worker(self, shutdown: CancellationToken) {
        let mut connection: Held = None;
        let mut figures = PassFigures::default();
        while !shutdown.is_cancelled() {
            let notified = self.wake.notified();
            let now = unix_now();
            let taken = self.schedule().take_due(now);
            if let Some(id) = taken {
                // One waiting 250 goes per message taken, as a token.
                self.taken.notify_one();
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
                self.idle_connection
            } else {
                Duration::MAX
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = notified => {}
                () = tokio::time::sleep(until_due) => {}
                () = tokio::time::sleep(idle) => {
                    if let Some((_, c)) = connection.take() {
                        c.quit().await;
                    }
                }
            }
        }
        if let Some((_, c)) = connection.take() {
            c.quit().await;
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
            Err(e @ SpoolError::Corrupt { .. }) => {
                match self.spool.quarantine(id) {
                    Ok(()) => {
                        tracing::error!(target: "submitd::relay", %id, error = %e, "damaged queue file moved to corrupt/; not delivered")
                    }
                    Err(moved) => {
                        tracing::error!(target: "submitd::relay", %id, error = %e, %moved, "damaged queue file could not be moved aside; retried at the next scan")
                    }
                }
                None
            }
            Err(e) => {
                tracing::error!(target: "submitd::relay", %id, error = %e, "delivery attempt not recorded; retried at the next scan");
                None
            }
        };
        self.schedule().release(id, next);
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
                schedule.release(&id, Some(now));
            }
        }
        if let Some((_, connection)) = connection {
            connection.quit().await;
        }
        self.removals_done().await;
        if figures.attempted > 0 {
            tracing::info!(target: "submitd::relay", ?figures, "delivery pass");
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::Maildir;

    fn relay_with(dir: &std::path::Path, delay: Duration) -> Relay {
        let (spool, _) = Spool::open(&dir.join("queue")).unwrap();
        let route = Route::Maildir(Maildir::open(dir.join("Maildir")).unwrap());
        let config = RelayConfig {
            in_flow_delay: delay,
            ..RelayConfig::new("mx.example.org", route, RetryPolicy::default())
        };
        Relay::new(spool, config)
    }

    /// A 250 waits while more new messages wait than the workers can
    /// start, until a worker takes one, and never longer than the delay.
    #[tokio::test(start_paused = true)]
    async fn the_intake_is_paced_to_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let relay = relay_with(dir.path(), Duration::from_secs(1));
        let mark = RelayConfig::DEFAULT_CONNECTIONS * 2;
        for _ in 0..mark {
            relay.enqueue(QueueId::generate());
        }
        let started = tokio::time::Instant::now();
        relay.pace_intake().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "at the mark: no wait");
        relay.enqueue(QueueId::generate());
        relay.pace_intake().await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "behind: the whole delay"
        );
        // A worker taking one message lets a waiting 250 go at once.
        let waiter = tokio::spawn({
            let relay = relay.clone();
            async move {
                let started = tokio::time::Instant::now();
                relay.pace_intake().await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(relay.schedule().take_due(0).is_some());
        relay.taken.notify_one();
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(100));
        // Zero: never paced.
        let off = relay_with(&dir.path().join("off"), Duration::ZERO);
        for _ in 0..100 {
            off.enqueue(QueueId::generate());
        }
        let started = tokio::time::Instant::now();
        off.pace_intake().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}

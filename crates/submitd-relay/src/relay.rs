//! The delivery runner: takes due messages from the spool and delivers them
//! (to the upstreams in order, or into a Maildir), records each attempt,
//! queues bounces and removes finished messages.
//!
//! ```text
//! wake() or next due time ─▶ run_once: for each due message, oldest first
//!     load ─▶ deliver pending recipients (connection reused across messages,
//!             upstreams tried in order until one is ready)
//!          ─▶ retry::apply ─▶ bounce stored (if any) ─▶ state saved
//!          ─▶ finished? remove
//! ```
//!
//! Ordering for crashes: a bounce is stored before the state that says its
//! recipients failed, so a crash between the two can at worst send a second
//! bounce, never none. A crash after delivery but before the state is saved
//! delivers again: at least once, never lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use submitd_smtp::{Envelope, RcptTo};
use tokio::sync::Notify;

use crate::deliver::{Connection, Upstream};
use crate::dsn::bounce;
use crate::maildir::Maildir;
use crate::retry::{apply, AttemptResult, RetryPolicy};
use crate::spool::{unix_now, QueueId, RecipientState, Spool, SpoolError};

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

/// Delivers what the spool holds.
#[derive(Debug, Clone)]
pub struct Relay {
    spool: Spool,
    config: Arc<RelayConfig>,
    wake: Arc<Notify>,
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
        }
    }

    /// Asks for a pass now (after a new message is stored, or a flush), so
    /// the usual path is seconds, not a queue-run interval.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs passes until the task is dropped: one when woken, else when the
    /// next message is due (at most a minute apart).
    pub async fn run(self) {
        loop {
            let figures = self.run_once().await;
            if figures.attempted > 0 {
                tracing::info!(target: "submitd::relay", ?figures, "delivery pass");
            }
            let wait = self.next_due().map_or(Duration::from_secs(60), |due| {
                Duration::from_secs(due.saturating_sub(unix_now()).clamp(1, 60))
            });
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn next_due(&self) -> Option<u64> {
        let ids = self.spool.list().ok()?;
        ids.iter()
            .filter_map(|id| {
                let (envelope, _) = self.spool.load(id).ok()?;
                self.spool.state(id, envelope.recipients.len()).ok()
            })
            .map(|state| state.next_try)
            .min()
    }

    /// Delivers every message that is due, oldest first, reusing one
    /// upstream connection for all of them.
    pub async fn run_once(&self) -> PassFigures {
        let mut figures = PassFigures::default();
        let mut connection: Option<Connection> = None;
        let ids = match self.spool.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(target: "submitd::relay", error = %e, "cannot list the queue");
                return figures;
            }
        };
        for id in ids {
            if let Err(e) = self.attempt(&id, &mut connection, &mut figures).await {
                tracing::error!(target: "submitd::relay", %id, error = %e, "delivery attempt not recorded");
            }
        }
        if let Some(connection) = connection {
            connection.quit().await;
        }
        figures
    }

    async fn attempt(
        &self,
        id: &QueueId,
        connection: &mut Option<Connection>,
        figures: &mut PassFigures,
    ) -> Result<(), SpoolError> {
        let now = unix_now();
        let (stored, data) = self.spool.load(id)?;
        let mut state = self.spool.state(id, stored.recipients.len())?;
        if state.next_try > now || state.is_finished() {
            if state.is_finished() {
                self.spool.remove(id)?;
                figures.removed += 1;
            }
            return Ok(());
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

        let outcome = match &self.config.route {
            Route::Maildir(maildir) => {
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
            Route::Upstreams(upstreams) => {
                self.send_upstream(upstreams, connection, &envelope, &data)
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
        } else {
            self.spool.save_state(id, &state)?;
            tracing::info!(target: "submitd::message", queue_id = %id, %user, %from, recipients = state.recipients.len(), delivered, failed, pending, size = data.len(), attempts = state.attempts, next_try = state.next_try, outcome = "deferred", "message deferred");
        }
        Ok(())
    }

    /// Sends over the current connection, opening one (upstreams in order)
    /// if needed. Errors name every upstream tried.
    async fn send_upstream(
        &self,
        upstreams: &[Upstream],
        connection: &mut Option<Connection>,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<submitd_smtp::MessageOutcome, String> {
        if connection.as_ref().is_some_and(|c| !c.is_usable()) {
            *connection = None;
        }
        if connection.is_none() {
            let mut reasons = Vec::new();
            for upstream in upstreams {
                match Connection::open(upstream, &self.config.hostname).await {
                    Ok(c) => {
                        *connection = Some(c);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(target: "submitd::relay", error = %e, "upstream unavailable");
                        reasons.push(e.to_string());
                    }
                }
            }
            if connection.is_none() {
                return Err(if reasons.is_empty() {
                    "no upstream configured".into()
                } else {
                    reasons.join("; ")
                });
            }
        }
        let Some(open) = connection.as_mut() else {
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

//! One delivery attempt of one message, in the order the crash rules need:
//!
//! ```text
//! open (header read; content read in pieces as it is sent) ─▶ pending
//!   recipients ─▶ route ─▶ deliver
//!   (the worker's connection, else upstreams in order, else the Maildir)
//!   ─▶ retry::apply ─▶ log per recipient ─▶ bounce stored and enqueued
//!   ─▶ finished? remove : save the state ─▶ the message's summary line
//! ```
//!
//! Ordering for crashes: a bounce is stored before the state that says its
//! recipients failed, so a crash between the two can at worst send a second
//! bounce, never none. A crash after delivery but before the state is saved
//! delivers again: at least once, never lost.

use std::sync::Arc;
use std::time::SystemTime;

use submitd_smtp::{Envelope, MessageOutcome, Reply};

use crate::dsn::bounce;
use crate::error::DeliveryError;
use crate::retry::{apply, AttemptResult};
use crate::route::{Destination, RouteId};
use crate::runner::{PassFigures, Relay};
use crate::spool::{
    unix_now, Content, DeliveryState, QueueId, RecipientState, SpoolError, StoredEnvelope,
};
use crate::upstream::{Connection, Upstream};

/// A worker's upstream connection, with the route it belongs to.
pub(crate) type Held = Option<(RouteId, Connection)>;

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

/// The recipients still to deliver, by index into the envelope.
/// Whether the content has 8-bit octets: as recorded when it was queued,
/// or (files of older versions) found by reading it once, off the
/// workers' threads.
async fn eight_bit(content: Content) -> Result<(Content, bool), DeliveryError> {
    if let Some(eight_bit) = content.eight_bit() {
        return Ok((content, eight_bit));
    }
    tokio::task::spawn_blocking(move || {
        let mut content = content;
        let eight_bit = content.scan_eight_bit().map_err(DeliveryError::Content)?;
        Ok((content, eight_bit))
    })
    .await
    .map_err(|_| DeliveryError::Content(SpoolError::WriteStopped))?
}

fn pending(state: &DeliveryState) -> Vec<usize> {
    state
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, RecipientState::Pending(_)))
        .map(|(i, _)| i)
        .collect()
}

impl Relay {
    /// One attempt at `id`; returns when it is next due, or `None` when it
    /// is finished and removed.
    pub(crate) async fn attempt(
        &self,
        id: &QueueId,
        connection: &mut Held,
        figures: &mut PassFigures,
    ) -> Result<Option<u64>, SpoolError> {
        let now = unix_now();
        // The schedule hands out due messages only (it is built from the
        // state files and headers, never content), so the file is opened
        // once and its content read as it is sent; the checks below only
        // guard against a stale entry.
        let content = self.spool.open_content(id)?;
        let stored = content.envelope().clone();
        let size = usize::try_from(content.size()).unwrap_or(usize::MAX);
        let (mut state, has_state) = self.spool.load_state(id, stored.recipients.len())?;
        if state.is_finished() {
            self.spool.remove_later(id.clone(), has_state);
            figures.removed += 1;
            return Ok(None);
        }
        if state.next_try > now {
            return Ok(Some(state.next_try));
        }
        figures.attempted += 1;
        let tried = pending(&state);
        let envelope = Envelope {
            mail_from: stored.mail_from.clone(),
            recipients: tried
                .iter()
                .filter_map(|&i| stored.recipients.get(i).cloned())
                .collect(),
        };
        let outcome = match self.deliver(id, &envelope, content, connection).await {
            // A damaged file: not the upstream's doing, nothing recorded.
            Err(DeliveryError::Content(e)) => return Err(e),
            // Stopping: nothing was delivered and nothing is recorded; the
            // message is tried at the next start as if this never began.
            Err(e @ DeliveryError::Abandoned { .. }) => {
                tracing::info!(target: "submitd::relay", %id, error = %e, "delivery abandoned; tried again at the next start");
                return Ok(Some(now));
            }
            outcome => outcome,
        };
        let result = match &outcome {
            Ok(outcome) => AttemptResult::Replies {
                tried: &tried,
                outcome,
            },
            Err(error) => {
                if error.needs_attention() {
                    tracing::error!(target: "submitd::relay", %id, %error, "delivery needs attention: fix the upstream settings; the message is retried");
                }
                AttemptResult::Failed(error)
            }
        };
        let policy = &self.policy;
        let failed_now = apply(
            &mut state,
            &result,
            policy,
            stored.received,
            now,
            random_unit(),
        );
        let route = self.routes.for_sender(stored.mail_from.sender());
        log_recipients(id, &stored, &state, &tried, figures);
        count_recipients(self.routes.name(route), &state, &tried);
        // The bounce first: a crash between the two sends a second bounce
        // at worst, never none.
        if !failed_now.is_empty() {
            // The bounce quotes the message (RFC 3464 RET): read whole, once.
            let (_, data) = self.spool.load(id)?;
            self.queue_bounce(id, &stored, &data, &state, &failed_now, figures)
                .await?;
        }
        self.finish(id, &stored, &state, (size, has_state), figures)
    }

    /// Sends the message to its route: the Maildir, or the upstreams.
    async fn deliver(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        content: Content,
        connection: &mut Held,
    ) -> Result<MessageOutcome, DeliveryError> {
        let route = self
            .routes
            .for_sender(content.envelope().mail_from.sender());
        match self.routes.destination(route) {
            Destination::Upstreams(upstreams) => {
                let (content, eight_bit) = eight_bit(content).await?;
                self.send_upstream(route, upstreams, connection, envelope, content, eight_bit)
                    .await
            }
            Destination::Maildir(maildir) => {
                // The Maildir (the demo's and the tests' route) takes the
                // message whole.
                let (maildir, id) = (maildir.clone(), id.clone());
                let delivered = tokio::task::spawn_blocking(move || {
                    let mut content = content;
                    let mut data = Vec::new();
                    let mut piece = Vec::new();
                    while content
                        .next_piece(&mut piece)
                        .map_err(DeliveryError::Content)?
                    {
                        data.extend_from_slice(&piece);
                    }
                    Ok(maildir.deliver(&id, content.envelope(), &data))
                })
                .await
                .map_err(|e| DeliveryError::Maildir(std::io::Error::other(e)))??;
                let path = delivered.map_err(DeliveryError::Maildir)?;
                let reply = Reply::new(250, (2, 0, 0), format!("delivered to {}", path.display()));
                Ok(MessageOutcome {
                    recipients: vec![reply; envelope.recipients.len()],
                })
            }
        }
    }

    /// Sends over the worker's connection, opening one (upstreams in
    /// order) if it has none for this route.
    async fn send_upstream(
        &self,
        route: RouteId,
        upstreams: &[Upstream],
        connection: &mut Held,
        envelope: &Envelope,
        content: Content,
        eight_bit: bool,
    ) -> Result<MessageOutcome, DeliveryError> {
        if connection
            .as_ref()
            .is_some_and(|(held, c)| *held != route || !c.is_usable())
        {
            // Another route's (or a spent) connection: end it politely.
            if let Some((_, old)) = connection.take() {
                old.quit().await;
            }
        }
        let (_, open) = match connection.take() {
            Some(held) => connection.insert(held),
            None => connection.insert((route, self.open(route, upstreams).await?)),
        };
        let sent = open
            .send_content(envelope, content, eight_bit, &self.abandon)
            .await;
        if sent.is_err() {
            *connection = None;
        }
        sent
    }

    /// A new connection on `route`: its upstreams in order; when all of
    /// them fail, the route is down for a while.
    async fn open(
        &self,
        route: RouteId,
        upstreams: &[Upstream],
    ) -> Result<Connection, DeliveryError> {
        if let Some(down) = self.routes.down(route, unix_now()) {
            return Err(down);
        }
        let mut errors = Vec::new();
        for upstream in upstreams {
            match Connection::open(upstream, &self.hostname).await {
                Ok(c) => return Ok(c),
                Err(error) => {
                    tracing::warn!(target: "submitd::relay", %error, "upstream unavailable");
                    submitd_metrics::metrics().upstream_failure(self.routes.name(route));
                    errors.push(error);
                }
            }
        }
        let cause = match errors.len() {
            0 => DeliveryError::NoUpstream,
            1 => errors.remove(0),
            _ => DeliveryError::AllFailed(errors),
        };
        Err(self.routes.mark_down(route, unix_now(), cause))
    }

    /// Builds the bounce for the recipients that failed now, stores it and
    /// makes it due.
    async fn queue_bounce(
        &self,
        id: &QueueId,
        stored: &StoredEnvelope,
        data: &[u8],
        state: &DeliveryState,
        failed_now: &[usize],
        figures: &mut PassFigures,
    ) -> Result<(), SpoolError> {
        let Some(b) = bounce(
            &self.hostname,
            id,
            stored,
            data,
            &state.recipients,
            failed_now,
            SystemTime::now(),
        ) else {
            return Ok(());
        };
        let bounce_id = self
            .spool
            .store(QueueId::generate(), b.envelope, Arc::new(b.data))
            .await?;
        tracing::info!(target: "submitd::relay", %id, bounce = %bounce_id, "bounce queued to the sender");
        self.enqueue(bounce_id);
        figures.bounces += 1;
        Ok(())
    }

    /// Removes a finished message or saves its state, with the one summary
    /// line of its end (or of its deferral).
    fn finish(
        &self,
        id: &QueueId,
        stored: &StoredEnvelope,
        state: &DeliveryState,
        (size, has_state): (usize, bool),
        figures: &mut PassFigures,
    ) -> Result<Option<u64>, SpoolError> {
        let count =
            |f: fn(&RecipientState) -> bool| state.recipients.iter().filter(|r| f(r)).count();
        let delivered = count(|r| matches!(r, RecipientState::Delivered(_)));
        let failed = count(|r| matches!(r, RecipientState::Failed(_)));
        let pending = count(|r| matches!(r, RecipientState::Pending(_)));
        let user = stored.user.as_deref().unwrap_or("-");
        let from = stored.mail_from.address();
        let recipients = state.recipients.len();
        if state.is_finished() {
            self.spool.remove_later(id.clone(), has_state);
            figures.removed += 1;
            if let (true, Some(created)) = (delivered > 0, id.created()) {
                let latency = SystemTime::now()
                    .duration_since(created)
                    .unwrap_or_default();
                submitd_metrics::metrics()
                    .delivery_latency_seconds
                    .observe(latency.as_secs_f64());
            }
            let outcome = if failed == 0 {
                "delivered"
            } else if delivered == 0 {
                "bounced"
            } else {
                "partly bounced"
            };
            tracing::info!(target: "submitd::message", queue_id = %id, %user, %from, recipients, delivered, failed, size, attempts = state.attempts, %outcome, "message {outcome}");
            Ok(None)
        } else {
            self.spool.save_state(id, state)?;
            tracing::info!(target: "submitd::message", queue_id = %id, %user, %from, recipients, delivered, failed, pending, size, attempts = state.attempts, next_try = state.next_try, outcome = "deferred", "message deferred");
            Ok(Some(state.next_try))
        }
    }
}

/// The outcomes of the recipients tried, by route, in the metrics.
fn count_recipients(route: &str, state: &DeliveryState, tried: &[usize]) {
    for r in tried.iter().filter_map(|&i| state.recipients.get(i)) {
        let outcome = match r {
            RecipientState::Delivered(_) => "delivered",
            RecipientState::Pending(_) => "deferred",
            RecipientState::Failed(_) => "bounced",
        };
        submitd_metrics::metrics().delivery(route, outcome);
    }
}

/// One line per recipient tried, and the pass's counts.
fn log_recipients(
    id: &QueueId,
    stored: &StoredEnvelope,
    state: &DeliveryState,
    tried: &[usize],
    figures: &mut PassFigures,
) {
    for &i in tried {
        let Some(r) = state.recipients.get(i) else {
            continue;
        };
        let (outcome, text) = match r {
            RecipientState::Delivered(t) => {
                figures.delivered += 1;
                ("delivered", t.as_str())
            }
            RecipientState::Pending(t) => {
                figures.deferred += 1;
                ("deferred", t.as_deref().unwrap_or(""))
            }
            RecipientState::Failed(t) => {
                figures.failed += 1;
                ("failed", t.as_str())
            }
        };
        let rcpt = stored
            .recipients
            .get(i)
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::info!(target: "submitd::relay", %id, to = %rcpt, attempt = state.attempts, outcome, reply = %text, "delivery");
    }
}

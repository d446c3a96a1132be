//! What an attempt's outcome does to a message's delivery state, decided
//! here and nowhere else: a 2xx reply delivers a recipient, a 5xx reply
//! fails it for good (it goes into a bounce), and a 4xx reply or any
//! [`DeliveryError`] leaves it pending, tried again later with exponential
//! backoff and jitter until the message's lifetime runs out (then failed,
//! with the last reason). Time and randomness are passed in, so the
//! schedule is tested exactly.
//!
//! No [`DeliveryError`] fails a recipient by itself, not even one that
//! needs a person (refused credentials, a certificate that does not
//! verify, no STARTTLS): like Postfix's `smtp_sasl_auth_soft_bounce`, a
//! typo in the relay password must not bounce everyone's mail while the
//! admin fixes it. Such errors are logged as errors instead
//! ([`DeliveryError::needs_attention`]); the lifetime still bounds them.

use std::time::Duration;

use submitd_smtp::{MessageOutcome, Reply};

use crate::error::DeliveryError;
use crate::spool::{DeliveryState, RecipientState};

/// When to try again and when to give up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failed attempt; doubles after each further one.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// How long a message may stay queued (Postfix's
    /// `maximal_queue_lifetime`, 5 days).
    pub lifetime: Duration,
    /// Each wait is varied by up to this fraction either way, in percent,
    /// so messages queued together do not retry together.
    pub jitter_percent: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(3600),
            lifetime: Duration::from_secs(5 * 24 * 3600),
            jitter_percent: 20,
        }
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts; `random` in 0..=1 picks
    /// the jitter.
    pub fn backoff(&self, attempts: u32, random: f64) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        let base = self
            .first_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let spread = f64::from(self.jitter_percent) / 100.0;
        let factor = 1.0 + spread * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64(base.as_secs_f64() * factor)
    }
}

/// What one attempt found.
#[derive(Debug)]
pub enum AttemptResult<'a> {
    /// The upstream answered for the recipients that were tried, in order
    /// of `tried`.
    Replies {
        /// Indexes (into the envelope) of the recipients sent.
        tried: &'a [usize],
        /// The upstream's outcome for them.
        outcome: &'a MessageOutcome,
    },
    /// The attempt failed before any per-recipient answer (connection,
    /// TLS, greeting, AUTH, the Maildir): every pending recipient stays
    /// pending with this reason.
    Failed(&'a DeliveryError),
}

fn reply_text(reply: &Reply) -> String {
    reply.to_string().trim_end().replace("\r\n", " ")
}

/// Applies an attempt's result. Returns the recipients that failed for
/// good in this step (they go into one bounce).
pub fn apply(
    state: &mut DeliveryState,
    result: &AttemptResult<'_>,
    policy: &RetryPolicy,
    received: u64,
    now: u64,
    random: f64,
) -> Vec<usize> {
    let mut failed_now = Vec::new();
    state.attempts = state.attempts.saturating_add(1);
    match result {
        AttemptResult::Replies { tried, outcome } => {
            for (&index, reply) in tried.iter().zip(&outcome.recipients) {
                let Some(slot) = state.recipients.get_mut(index) else {
                    continue;
                };
                if !matches!(slot, RecipientState::Pending(_)) {
                    continue;
                }
                *slot = if reply.is_positive() {
                    RecipientState::Delivered(reply_text(reply))
                } else if reply.is_permanent() {
                    failed_now.push(index);
                    RecipientState::Failed(reply_text(reply))
                } else {
                    RecipientState::Pending(Some(reply_text(reply)))
                };
            }
        }
        AttemptResult::Failed(error) => {
            let reason = error.to_string();
            for slot in &mut state.recipients {
                if matches!(slot, RecipientState::Pending(_)) {
                    *slot = RecipientState::Pending(Some(reason.clone()));
                }
            }
        }
    }
    let expired = now.saturating_sub(received) >= policy.lifetime.as_secs();
    for (index, slot) in state.recipients.iter_mut().enumerate() {
        if let RecipientState::Pending(last) = slot {
            if expired {
                let last = last.as_deref().unwrap_or("no attempt could be made");
                let days = policy.lifetime.as_secs() / 86_400;
                *slot = RecipientState::Failed(format!(
                    "gave up after {days} days; last error: {last}"
                ));
                failed_now.push(index);
            }
        }
    }
    state.next_try = now.saturating_add(policy.backoff(state.attempts, random).as_secs());
    failed_now.sort_unstable();
    failed_now
}

#[cfg(test)]
mod tests {
    use submitd_smtp::EnhancedCode;

    use super::*;

    fn reply(code: u16, text: &str) -> Reply {
        Reply::new(code, EnhancedCode::new((code / 100) as u8, 0, 0), text)
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|a| p.backoff(a, 0.5).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(p.backoff(1, 0.0).as_secs(), 48);
        assert_eq!(p.backoff(1, 1.0).as_secs(), 72);
        assert_eq!(p.backoff(u32::MAX, 1.0).as_secs(), 4320);
    }

    #[test]
    fn per_recipient_outcomes() {
        let mut state = DeliveryState::new(3, 0);
        let outcome = MessageOutcome {
            recipients: vec![
                reply(250, "ok"),
                reply(550, "no such user"),
                reply(451, "later"),
            ],
        };
        let failed = apply(
            &mut state,
            &AttemptResult::Replies {
                tried: &[0, 1, 2],
                outcome: &outcome,
            },
            &RetryPolicy::default(),
            1000,
            1000,
            0.5,
        );
        assert_eq!(failed, vec![1]);
        assert!(
            matches!(&state.recipients[0], RecipientState::Delivered(t) if t.starts_with("250"))
        );
        assert!(
            matches!(&state.recipients[1], RecipientState::Failed(t) if t.contains("no such user"))
        );
        assert!(
            matches!(&state.recipients[2], RecipientState::Pending(Some(t)) if t.contains("later"))
        );
        assert_eq!((state.attempts, state.next_try), (1, 1060));

        // Second attempt: only the pending one is tried, and succeeds.
        let outcome = MessageOutcome {
            recipients: vec![reply(250, "ok")],
        };
        let failed = apply(
            &mut state,
            &AttemptResult::Replies {
                tried: &[2],
                outcome: &outcome,
            },
            &RetryPolicy::default(),
            1000,
            1100,
            0.5,
        );
        assert!(failed.is_empty());
        assert!(state.is_finished());
    }

    #[test]
    fn session_failures_retry_then_expire_exactly_once() {
        let policy = RetryPolicy::default();
        let mut state = DeliveryState::new(2, 0);
        let error = DeliveryError::Tls {
            upstream: "smtp.example:465".into(),
            failure: crate::error::TlsFailure::Handshake(std::io::Error::other(
                "certificate not valid for smtp.example",
            )),
        };
        assert!(error.needs_attention());
        let tls = AttemptResult::Failed(&error);
        assert!(apply(&mut state, &tls, &policy, 0, 10, 0.5).is_empty());
        assert!(
            matches!(&state.recipients[0], RecipientState::Pending(Some(t)) if t.contains("certificate"))
        );
        let lifetime = policy.lifetime.as_secs();
        assert!(apply(&mut state, &tls, &policy, 0, lifetime - 1, 0.5).is_empty());
        assert_eq!(
            apply(&mut state, &tls, &policy, 0, lifetime, 0.5),
            vec![0, 1]
        );
        assert!(
            matches!(&state.recipients[1], RecipientState::Failed(t) if t.starts_with("gave up after 5 days; last error: smtp.example:465: TLS handshake failed: certificate"))
        );
        // Nothing is left to fail a second time.
        assert!(apply(&mut state, &tls, &policy, 0, lifetime + 100, 0.5).is_empty());

        // A refusal that needs a person still waits for the person.
        let mut state = DeliveryState::new(1, 0);
        let refused = DeliveryError::Session {
            upstream: "smtp.example:465".into(),
            error: submitd_smtp::SessionError::Ehlo(reply(554, "relaying denied")),
        };
        assert!(apply(
            &mut state,
            &AttemptResult::Failed(&refused),
            &policy,
            0,
            5,
            0.5
        )
        .is_empty());
        assert!(
            matches!(&state.recipients[0], RecipientState::Pending(Some(t)) if t.contains("554"))
        );
    }
}

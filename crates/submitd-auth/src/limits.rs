//! Per-user sending limits: messages and recipients per hour and per day,
//! so a stolen password cannot spray thousands of messages before anyone
//! notices. The clock is passed in.
//!
//! The windows slide by the minute: each user's history is one bucket per
//! minute (messages, recipients), at most a day's 1,440, with a running day
//! total, so a check costs at most an hour's 60 buckets however much the
//! user sends. (One timestamp per message made every check scan the whole
//! day: quadratic for a script that sends thousands.)

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const MINUTES_PER_HOUR: u64 = 60;
const MINUTES_PER_DAY: u64 = 24 * 60;

/// Limits per user; `None` means "use the default" in a user's entry and
/// "no limit" once resolved against defaults that leave it unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendingLimits {
    /// Messages in any hour.
    pub messages_per_hour: Option<u32>,
    /// Messages in any 24 hours.
    pub messages_per_day: Option<u32>,
    /// Recipients in any hour.
    pub recipients_per_hour: Option<u32>,
    /// Recipients in any 24 hours.
    pub recipients_per_day: Option<u32>,
}

impl SendingLimits {
    /// The defaults: generous for people, small for a spam run.
    pub fn defaults() -> Self {
        Self {
            messages_per_hour: Some(100),
            messages_per_day: Some(500),
            recipients_per_hour: Some(500),
            recipients_per_day: Some(2000),
        }
    }

    /// A user's limits over the defaults.
    pub fn or(self, defaults: Self) -> Self {
        Self {
            messages_per_hour: self.messages_per_hour.or(defaults.messages_per_hour),
            messages_per_day: self.messages_per_day.or(defaults.messages_per_day),
            recipients_per_hour: self.recipients_per_hour.or(defaults.recipients_per_hour),
            recipients_per_day: self.recipients_per_day.or(defaults.recipients_per_day),
        }
    }

    /// Parses `N/h,N/d` (either part may be left out).
    pub(crate) fn parse_pair(value: &str) -> Result<(Option<u32>, Option<u32>), String> {
        let (mut hour, mut day) = (None, None);
        for part in value.split(',') {
            let (n, unit) = part
                .split_once('/')
                .ok_or_else(|| format!("{part:?} is not N/h or N/d"))?;
            let n: u32 = n
                .parse()
                .map_err(|_| format!("{n:?} is not a whole number"))?;
            match unit {
                "h" => hour = Some(n),
                "d" => day = Some(n),
                _ => return Err(format!("{unit:?} is not h or d")),
            }
        }
        Ok((hour, day))
    }
}

/// What a user sent in the hour and day windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    /// Messages in the last hour.
    pub messages_hour: u32,
    /// Messages in the last 24 hours.
    pub messages_day: u32,
    /// Recipients in the last hour.
    pub recipients_hour: u32,
    /// Recipients in the last 24 hours.
    pub recipients_day: u32,
}

impl SendingLimits {
    /// The first limit `used` has reached, if any.
    pub fn exceeded(&self, used: Used) -> Option<LimitExceeded> {
        [
            (
                self.messages_per_hour,
                used.messages_hour,
                LimitExceeded::MessagesPerHour as fn(u32) -> LimitExceeded,
            ),
            (
                self.messages_per_day,
                used.messages_day,
                LimitExceeded::MessagesPerDay,
            ),
            (
                self.recipients_per_hour,
                used.recipients_hour,
                LimitExceeded::RecipientsPerHour,
            ),
            (
                self.recipients_per_day,
                used.recipients_day,
                LimitExceeded::RecipientsPerDay,
            ),
        ]
        .into_iter()
        .find_map(|(limit, used, error)| limit.filter(|&l| used >= l).map(error))
    }
}

/// Which limit was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// Too many messages in the last hour.
    #[error("more than {0} messages in an hour")]
    MessagesPerHour(u32),
    /// Too many messages in the last 24 hours.
    #[error("more than {0} messages in a day")]
    MessagesPerDay(u32),
    /// Too many recipients in the last hour.
    #[error("more than {0} recipients in an hour")]
    RecipientsPerHour(u32),
    /// Too many recipients in the last 24 hours.
    #[error("more than {0} recipients in a day")]
    RecipientsPerDay(u32),
}

/// What one user sent in one minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    minute: u64,
    messages: u32,
    recipients: u32,
}

#[derive(Debug, Default)]
struct Usage {
    /// One bucket per minute with traffic, oldest first, the last day only.
    buckets: VecDeque<Bucket>,
    /// Sums over `buckets`.
    day_messages: u32,
    day_recipients: u32,
    /// A warning was logged for the limit reached; not again until then.
    warned_until: Option<Instant>,
}

impl Usage {
    /// Drops the buckets that left the day window.
    fn expire(&mut self, minute: u64) {
        while let Some(first) = self.buckets.front().copied() {
            if minute.saturating_sub(first.minute) < MINUTES_PER_DAY {
                break;
            }
            self.buckets.pop_front();
            self.day_messages = self.day_messages.saturating_sub(first.messages);
            self.day_recipients = self.day_recipients.saturating_sub(first.recipients);
        }
    }

    /// Messages and recipients in the hour window.
    fn hour(&self, minute: u64) -> (u32, u32) {
        self.buckets
            .iter()
            .rev()
            .take_while(|b| minute.saturating_sub(b.minute) < MINUTES_PER_HOUR)
            .fold((0u32, 0u32), |(m, r), b| {
                (m.saturating_add(b.messages), r.saturating_add(b.recipients))
            })
    }
}

/// Counts what each user sent, in hour and day windows sliding by the
/// minute.
#[derive(Debug)]
pub struct RateLimiter {
    usage: Mutex<HashMap<String, Usage>>,
    /// Minute 0 of the buckets.
    origin: Instant,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    /// A limiter with no history.
    pub fn new() -> Self {
        Self {
            usage: Mutex::new(HashMap::new()),
            origin: Instant::now(),
        }
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / 60
    }

    /// May `user` start another message now? Over a limit this logs one
    /// warning per window, not one per attempt.
    pub fn check(
        &self,
        user: &str,
        limits: SendingLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        let minute = self.minute(now);
        let mut all = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let usage = all.entry(user.to_owned()).or_default();
        usage.expire(minute);
        let (messages_hour, recipients_hour) = usage.hour(minute);
        let used = Used {
            messages_hour,
            messages_day: usage.day_messages,
            recipients_hour,
            recipients_day: usage.day_recipients,
        };
        let Some(exceeded) = limits.exceeded(used) else {
            return Ok(());
        };
        if usage.warned_until.is_none_or(|until| now >= until) {
            let window = match exceeded {
                LimitExceeded::MessagesPerHour(_) | LimitExceeded::RecipientsPerHour(_) => HOUR,
                _ => DAY,
            };
            usage.warned_until = Some(now + window);
            tracing::warn!(target: "submitd::limits", "sending limit reached: user={user:?} limit=\"{exceeded}\"");
        }
        Err(exceeded)
    }

    /// Records a message `user` sent to `recipients` recipients.
    pub fn record(&self, user: &str, recipients: u32, now: Instant) {
        let minute = self.minute(now);
        let mut all = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let usage = all.entry(user.to_owned()).or_default();
        usage.expire(minute);
        match usage.buckets.back_mut() {
            Some(last) if last.minute == minute => {
                last.messages = last.messages.saturating_add(1);
                last.recipients = last.recipients.saturating_add(recipients);
            }
            _ => usage.buckets.push_back(Bucket {
                minute,
                messages: 1,
                recipients,
            }),
        }
        usage.day_messages = usage.day_messages.saturating_add(1);
        usage.day_recipients = usage.day_recipients.saturating_add(recipients);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_slide_with_time() {
        let limiter = RateLimiter::new();
        let limits = SendingLimits {
            messages_per_hour: Some(3),
            messages_per_day: Some(5),
            recipients_per_hour: Some(10),
            recipients_per_day: None,
        };
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                limiter.check("alice", limits, t0 + Duration::from_secs(i)),
                Ok(())
            );
            limiter.record("alice", 1, t0 + Duration::from_secs(i));
        }
        assert_eq!(
            limiter.check("alice", limits, t0 + Duration::from_secs(10)),
            Err(LimitExceeded::MessagesPerHour(3))
        );
        // Other users are not affected.
        assert_eq!(limiter.check("bob", limits, t0), Ok(()));
        // An hour later the hour window is free again, the day is not.
        let later = t0 + HOUR + Duration::from_secs(5);
        for i in 0..2 {
            assert_eq!(limiter.check("alice", limits, later), Ok(()), "{i}");
            limiter.record("alice", 1, later);
        }
        assert_eq!(
            limiter.check("alice", limits, later),
            Err(LimitExceeded::MessagesPerDay(5))
        );
        assert_eq!(
            limiter.check("alice", limits, t0 + DAY + Duration::from_secs(5)),
            Ok(())
        );
    }

    #[test]
    fn a_busy_day_keeps_one_bucket_a_minute() {
        let limiter = RateLimiter::new();
        let t0 = Instant::now();
        let limits = SendingLimits::default();
        // 100,000 messages over two days, one every 1.7 s.
        for i in 0..100_000u64 {
            let at = t0 + Duration::from_millis(i * 1700);
            assert_eq!(limiter.check("script", limits, at), Ok(()));
            limiter.record("script", 2, at);
        }
        let all = limiter.usage.lock().unwrap();
        let usage = &all["script"];
        assert!(usage.buckets.len() <= 1440, "{}", usage.buckets.len());
        // A day at one per 1.7 s is about 50,800 messages.
        assert!(
            (50_000..=51_500).contains(&usage.day_messages),
            "{}",
            usage.day_messages
        );
        assert_eq!(usage.day_recipients, 2 * usage.day_messages);
    }

    #[test]
    fn recipients_count_too() {
        let limiter = RateLimiter::new();
        let limits = SendingLimits {
            recipients_per_hour: Some(10),
            ..SendingLimits::default()
        };
        let t0 = Instant::now();
        limiter.record("alice", 10, t0);
        assert_eq!(
            limiter.check("alice", limits, t0),
            Err(LimitExceeded::RecipientsPerHour(10))
        );
    }

    #[test]
    fn user_limits_override_defaults() {
        let user = SendingLimits {
            messages_per_hour: Some(1),
            ..SendingLimits::default()
        };
        let resolved = user.or(SendingLimits::defaults());
        assert_eq!(resolved.messages_per_hour, Some(1));
        assert_eq!(resolved.messages_per_day, Some(500));
        assert_eq!(
            SendingLimits::parse_pair("10/h,50/d"),
            Ok((Some(10), Some(50)))
        );
        assert_eq!(SendingLimits::parse_pair("7/d"), Ok((None, Some(7))));
        assert!(SendingLimits::parse_pair("10").is_err());
        assert!(SendingLimits::parse_pair("x/h").is_err());
        assert!(SendingLimits::parse_pair("1/w").is_err());
    }
}

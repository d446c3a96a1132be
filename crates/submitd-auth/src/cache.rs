//! The verified-credential cache: a login whose (user, password) passed a
//! full check within the TTL skips the next argon2 run (Dovecot's
//! `auth_cache` idea, made safe):
//!
//! ```text
//! login ─▶ tag = HMAC-SHA-256(process key, login ‖ password ‖ stored hash)
//!            │ hit, not expired, same credential epoch ─▶ Authenticated (no argon2)
//!            ▼ miss
//!         full check ─▶ success ─▶ remember tag (user, app password label)
//!                     └▶ failure ─▶ never remembered
//! ```
//!
//! What keeps it safe:
//! * No password is stored, only a keyed hash under a key made at start and
//!   never written anywhere: a memory dump gives nothing to test guesses
//!   against offline without the key, and the key dies with the process.
//! * The stored hash is part of the tag, so a changed password or a revoked
//!   app password cannot hit an old entry even before the flush; any reload
//!   of the credential file (SIGHUP, changed or not) flushes everything.
//! * Failures are never remembered: an unknown user and a wrong password
//!   both miss and both pay the full check, as before.
//! * An entry lives for the TTL from its check, and a hit does not extend it.
//! * Bounded: at most `capacity` entries, the oldest dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;

/// A tag: the keyed hash of one set of credentials.
type Tag = [u8; 32];

/// The cache's key for one login attempt, computed once per attempt
/// ([`VerifiedCache::key`]) for the lookup and, after a full check, the
/// insert.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheKey(Tag);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

/// What a hit gives back: the same as the full check gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The user's name as the credential source writes it.
    pub user: String,
    /// The label of the app password used, if one was.
    pub app_password: Option<String>,
}

#[derive(Debug)]
struct Entry {
    verified: Verified,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Entries {
    by_tag: HashMap<Tag, Entry>,
    /// Insertion order with each entry's expiry; every entry has the same
    /// TTL, so this is also expiry order.
    order: VecDeque<(Tag, Instant)>,
    /// The credential epoch the entries were verified under.
    epoch: u64,
}

/// Verified credentials, remembered for a while.
pub struct VerifiedCache {
    key: hmac::Key,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Why the cache could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the verified-credential cache's key: the system's random source failed")]
pub struct CacheKeyError;

impl VerifiedCache {
    /// Entries kept when the config does not say: far more than the users
    /// of a submission server have devices.
    pub const DEFAULT_CAPACITY: usize = 10_000;
    /// How long a verified login is remembered when the config does not say.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

    /// An empty cache with a fresh random key.
    pub fn new(ttl: Duration, capacity: usize) -> Result<Self, CacheKeyError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| CacheKeyError)?;
        Ok(Self {
            key,
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        })
    }

    /// The key for `login` and `password`, bound to `binding` (the stored
    /// hash they are checked against; empty for a backend that has none).
    pub fn key(&self, login: &str, password: &str, binding: &str) -> CacheKey {
        let mut context = hmac::Context::with_key(&self.key);
        // Length-prefixed, so no two different triples give the same input.
        for part in [login.to_ascii_lowercase().as_str(), password, binding] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        let mut tag = [0u8; 32];
        tag.copy_from_slice(context.sign().as_ref());
        CacheKey(tag)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A remembered success for `key`, checked under the same credential
    /// `epoch` within the TTL.
    pub fn get(&self, key: CacheKey, epoch: u64, now: Instant) -> Option<Verified> {
        let CacheKey(tag) = key;
        let mut entries = self.entries();
        if entries.epoch != epoch {
            flush(&mut entries, epoch);
            return None;
        }
        let entry = entries.by_tag.get(&tag)?;
        (entry.expires > now).then(|| entry.verified.clone())
    }

    /// Remembers a success of the full check for `key`.
    pub fn insert(&self, key: CacheKey, epoch: u64, verified: Verified, now: Instant) {
        let CacheKey(tag) = key;
        let expires = now + self.ttl;
        let mut entries = self.entries();
        if entries.epoch != epoch {
            // Checked under another file than the one in force: whichever
            // is older, do not mix them.
            if epoch < entries.epoch {
                return;
            }
            flush(&mut entries, epoch);
        }
        // Expired entries first, then the oldest while full.
        while let Some(&(old, at)) = entries.order.front() {
            if at > now && entries.by_tag.len() < self.capacity {
                break;
            }
            entries.order.pop_front();
            // A tag checked again later has a newer entry: keep that one.
            if entries.by_tag.get(&old).is_some_and(|e| e.expires == at) {
                entries.by_tag.remove(&old);
            }
        }
        entries.by_tag.insert(tag, Entry { verified, expires });
        entries.order.push_back((tag, expires));
    }

    /// Entries held now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries().by_tag.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn flush(entries: &mut Entries, epoch: u64) {
    entries.by_tag.clear();
    entries.order.clear();
    entries.epoch = epoch;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Verified {
        Verified {
            user: "alice".into(),
            app_password: None,
        }
    }

    #[test]
    fn a_hit_needs_the_same_login_password_hash_and_epoch() {
        let cache = VerifiedCache::new(Duration::from_secs(60), 10).unwrap();
        let now = Instant::now();
        cache.insert(cache.key("Alice", "pw", "$hash1"), 0, alice(), now);
        assert_eq!(
            cache.get(cache.key("alice", "pw", "$hash1"), 0, now),
            Some(alice())
        );
        assert_eq!(
            cache.get(cache.key("ALICE", "pw", "$hash1"), 0, now),
            Some(alice())
        );
        assert_eq!(cache.get(cache.key("alice", "pW", "$hash1"), 0, now), None);
        assert_eq!(
            cache.get(cache.key("alice", "pw", "$hash2"), 0, now),
            None,
            "a new password hash"
        );
        assert_eq!(cache.get(cache.key("bob", "pw", "$hash1"), 0, now), None);
        // Moving parts between fields must not collide.
        cache.insert(cache.key("ab", "c", ""), 0, alice(), now);
        assert_eq!(cache.get(cache.key("a", "bc", ""), 0, now), None);
        // Another epoch (a reload) flushes everything.
        assert_eq!(cache.get(cache.key("alice", "pw", "$hash1"), 1, now), None);
        assert!(cache.is_empty());
        assert_eq!(cache.get(cache.key("alice", "pw", "$hash1"), 0, now), None);
    }

    #[test]
    fn entries_expire_and_hits_do_not_extend_them() {
        let cache = VerifiedCache::new(Duration::from_secs(60), 10).unwrap();
        let now = Instant::now();
        cache.insert(cache.key("alice", "pw", "h"), 0, alice(), now);
        let later = now + Duration::from_secs(59);
        assert!(cache.get(cache.key("alice", "pw", "h"), 0, later).is_some());
        assert!(cache
            .get(
                cache.key("alice", "pw", "h"),
                0,
                now + Duration::from_secs(60)
            )
            .is_none());
        // A check under an older epoch than the cache's is not kept.
        cache.get(cache.key("x", "y", "z"), 3, now);
        cache.insert(cache.key("alice", "pw", "h"), 2, alice(), now);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_size_is_bounded_oldest_first() {
        let cache = VerifiedCache::new(Duration::from_secs(60), 3).unwrap();
        let now = Instant::now();
        for i in 0..5u64 {
            cache.insert(
                cache.key(&format!("u{i}"), "pw", "h"),
                0,
                alice(),
                now + Duration::from_millis(i),
            );
        }
        assert_eq!(cache.len(), 3);
        let at = now + Duration::from_secs(1);
        assert!(cache.get(cache.key("u0", "pw", "h"), 0, at).is_none());
        assert!(cache.get(cache.key("u1", "pw", "h"), 0, at).is_none());
        assert!(cache.get(cache.key("u4", "pw", "h"), 0, at).is_some());
        // The same credentials again: one entry, the newer expiry kept.
        cache.insert(
            cache.key("u4", "pw", "h"),
            0,
            alice(),
            now + Duration::from_secs(30),
        );
        cache.insert(
            cache.key("u5", "pw", "h"),
            0,
            alice(),
            now + Duration::from_secs(31),
        );
        assert!(cache
            .get(cache.key("u4", "pw", "h"), 0, now + Duration::from_secs(80))
            .is_some());
    }
}

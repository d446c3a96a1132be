//! Queue ids and the spool's clock.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in seconds since the epoch (the spool's unit of time).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A queue id: time-ordered and unique, safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// A new id: microseconds since the epoch and 32 random bits, in hex.
    pub fn generate() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let mut random = [0u8; 4];
        // Without OS randomness the time and the pid still separate ids.
        if getrandom::fill(&mut random).is_err() {
            random = std::process::id().to_le_bytes();
        }
        Self(format!("{micros:014x}{:08x}", u32::from_le_bytes(random)))
    }

    /// Reads an id given by a person or a file name.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = (16..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(text.to_ascii_lowercase()))
    }

    /// When the id was made (the message accepted), from its first 14
    /// digits; `None` for an id not made by [`QueueId::generate`].
    pub fn created(&self) -> Option<SystemTime> {
        let micros = u64::from_str_radix(self.0.get(..14)?, 16).ok()?;
        UNIX_EPOCH.checked_add(std::time::Duration::from_micros(micros))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

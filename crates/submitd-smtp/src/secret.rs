//! Bytes that must never be logged or kept: AUTH payloads and upstream
//! passwords.

use std::fmt;

use zeroize::Zeroizing;

/// Secret bytes. Zeroed on drop; `Debug` shows nothing of them.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes, for the mechanism that needs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

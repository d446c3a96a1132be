//! Who may send, and as whom.
//!
//! This crate owns the answers to the SMTP machine's questions about
//! people: SASL mechanisms, the credential file and its argon2id hashes,
//! throttling of failed logins, which sender addresses a user may use, and
//! how much a user may send. It knows no sockets and no SMTP replies; the
//! daemon turns its answers into replies.
//!
//! ```text
//!  AUTH exchange ──▶ sasl::SaslExchange ──▶ Credentials
//!                                              │
//!  gate::LoginGate::login(credentials, client address):
//!      throttle::Throttle::admit(ip) ──────────┤ blocked? → try later
//!                                              ▼
//!      cache::VerifiedCache: verified within the TTL? → authenticated
//!                                              ▼ miss
//!      store::CredentialStore::users() ─▶ backend::Authenticator::check
//!        Local: password::PasswordChecker (one argon2id run on its own
//!               threads, bounded; unknown users = dummy hash)
//!        Dovecot: dovecot::DovecotAuth (the auth socket Postfix uses)
//!                                              │ failure → throttle::failure → delay, log line
//!                                              ▼
//!  sender_policy::SenderPolicy (per session's Account):
//!      MAIL FROM ─▶ policy::check_envelope_sender, limits::RateLimiter::check
//!      From:/Sender: ─▶ policy::check_header_senders
//!      stored ─▶ limits::RateLimiter::record
//!  os_user ─▶ who a local uid is (the local socket, `submitd sendmail`)
//!  edit::* ─▶ the `user` commands, rewriting the file atomically
//! ```
//!
//! Dependencies: `argon2` for hashing, `aws-lc-rs` (already the TLS
//! crypto) for the cache's HMAC-SHA-256 and its random key, `getrandom` for app passwords,
//! `tokio` for the semaphore that bounds concurrent checks and the Dovecot
//! socket, `base64` for Dovecot's PLAIN response, `rpassword` to read a password without echo, `tracing` for the
//! limit warning, `thiserror` for typed errors, `zeroize` so passwords do
//! not linger in memory, `submitd-cluster` for the counts shared with
//! other instances (`[cluster]`), `submitd-metrics` to count logins.

pub mod backend;
pub mod cache;
pub mod dovecot;
pub mod edit;
pub mod gate;
pub mod limits;
pub mod os_user;
pub mod password;
pub mod policy;
pub mod sasl;
pub mod sender_policy;
pub mod store;
pub mod throttle;

pub use backend::{local_policy_user, Authenticator};
pub use cache::{CacheKey, CacheKeyError, Verified, VerifiedCache};
pub use dovecot::DovecotAuth;
pub use gate::{LoginGate, LoginOutcome};
pub use limits::{LimitExceeded, RateLimiter, SendingLimits};
pub use password::{hash_password, CheckOutcome, PasswordChecker, IDLE_RELEASE};
pub use policy::{check_envelope_sender, check_header_senders, PolicyError, SendAs, SendAsError};
pub use sasl::{Credentials, Mechanism, SaslError, SaslExchange, SaslStep, TokenCredentials};
pub use sender_policy::{Account, SenderPolicy, SenderRefusal};
pub use store::{
    CredentialStore, LineError, Reloaded, StoreError, User, Users, DEFAULT_RELOAD_MAX_DROP,
};
pub use throttle::{client_network, failure_line, Admission, Throttle, ThrottleConfig};

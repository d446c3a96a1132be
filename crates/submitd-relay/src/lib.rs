//! Never lose a message: preparing a message for transfer (RFC 6409 §8),
//! the durable spool, delivery to the upstream over verified TLS (or into a
//! Maildir), the retry schedule and bounces (RFC 3464), the upstream client over
//! TLS and bounces.
//!
//! ```text
//! accepted message ─▶ prepare::prepare (strict header read, Received, Message-ID, Date)
//!                  ─▶ spool::Spool::store ─▶ tmp/ → fsync → msg/ → fsync dir ─▶ queue id (250)
//!                                                   │
//!   relay::Relay ◀──────────────────────────────────┘ state/ rewritten per attempt
//!     ─▶ deliver::Connection (TLS, client machine) or maildir::Maildir
//!     ─▶ retry::apply ─▶ dsn::bounce (queued like any message) ─▶ remove when finished
//! ```
//!
//! Dependencies: `submitd-smtp` for envelopes in wire form and the client
//! machine, `rustls`/`tokio-rustls` for TLS to the upstream,
//! `rustls-native-certs` for the system's CA roots, `rustls-pki-types` for
//! PEM CA files, `mail-parser`
//! for From:/Sender: address lists (only of fields this crate found itself), `crc32fast` to
//! detect damaged queue files, `getrandom` for queue ids, `tokio` for the
//! blocking pool and group commit, `tracing` for recovery log lines,
//! `thiserror` for typed errors.

pub mod deliver;
pub mod dsn;
pub mod maildir;
pub mod prepare;
pub mod queue;
pub mod relay;
pub mod retry;
pub mod spool;

pub use deliver::{client_tls_config, read_password_file, Connection, ConnectionError, Upstream};
pub use dsn::{bounce, Bounce};
pub use maildir::Maildir;
pub use prepare::{prepare, HeaderSenders, PrepareError, Prepared, TraceInfo};
pub use relay::{PassFigures, Relay, RelayConfig, Route, SenderRoute};
pub use retry::{apply, AttemptResult, RetryPolicy};
pub use spool::{
    unix_now, DeliveryState, QueueId, RecipientState, Recovery, Spool, SpoolError, StoredEnvelope,
};

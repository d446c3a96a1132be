//! Never lose a message: taking an accepted message into the queue (RFC
//! 6409 §8 preparation, the durable spool), delivering it to the upstream
//! over verified TLS (or into a Maildir), retrying and bouncing (RFC 3464).
//!
//! ```text
//! listener ─▶ intake::Intake::begin ─▶ Draft::write (pieces as they arrive: the
//!             header held until its blank line, then prepare.rs::inspect: strict
//!             header read, Received, Message-ID, Date; the rest streamed to
//!             spool tmp/) ─▶ Draft::finish ─▶ [listener: header senders]
//!             ─▶ PreparedMessage::commit ─▶ spool::SpoolFile::commit
//!                   fsync → msg/ → fsync dir ─▶ runner::Relay::enqueue ─▶ 250
//!
//! runner::Relay: schedule.rs (due times) ─▶ workers ─▶ attempt.rs:
//!     route.rs (sender routes, routes down) ─▶ upstream::Connection (TLS,
//!     the client machine) or maildir::Maildir ─▶ error::DeliveryError
//!     ─▶ retry::apply ─▶ dsn::bounce (queued like any message) ─▶ state
//!     saved, or the message removed when finished
//! ```
//!
//! Dependencies: `submitd-smtp` for envelopes in wire form, replies and the
//! client machine, `rustls`/`tokio-rustls` for TLS to the upstream,
//! `rustls-native-certs` for the system's CA roots, `rustls-pki-types` for
//! PEM CA files, `mail-parser` for From:/Sender: address lists (only of
//! fields this crate found itself), `memchr` to find the header's end in
//! what arrives, `rustix` for the free space of the spool's disk (statvfs), `crc32fast` to detect damaged queue
//! files, `getrandom` for queue ids and retry jitter, `tokio` for the
//! blocking pool and the workers, `tokio-util` for the
//! shutdown token and the workers' tracker, `tracing` for log lines,
//! `thiserror` for typed errors, `submitd-metrics` to count deliveries,
//! spool writes and latencies.

mod attempt;
pub mod dsn;
pub mod error;
pub mod intake;
pub mod maildir;
pub mod prepare;
pub mod queue;
pub mod retry;
pub mod route;
mod runner;
mod schedule;
pub mod space;
pub mod spool;
pub mod upstream;

pub use dsn::{bounce, Bounce};
pub use error::{DeliveryError, TlsFailure};
pub use intake::{Accepted, Draft, Intake, IntakeError, Origin, PreparedMessage};
pub use maildir::Maildir;
pub use prepare::{
    header_end, inspect, prepare, HeaderLimits, HeaderSenders, Inspected, PrepareError, Prepared,
    TraceInfo,
};
pub use retry::{apply, AttemptResult, RetryPolicy};
pub use route::{Route, RouteId, SenderRoute, DOWN_FOR};
pub use runner::{PassFigures, Relay, RelayConfig};
pub use space::{free_space, MinFree, NoSpace, Space, SpaceGuard, DEFAULT_MIN_FREE};
pub use spool::{
    unix_now, Content, DeliveryState, Peeked, QueueId, RecipientState, Recovery, Spool, SpoolError,
    SpoolFile, StoredEnvelope,
};
pub use upstream::{
    client_tls_config, read_password_file, Connection, SetupError, Upstream, UpstreamAuth,
};

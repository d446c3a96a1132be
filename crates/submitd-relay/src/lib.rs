//! Never lose a message: the durable spool, and (to come) preparing a
//! message for transfer, the delivery scheduler, the upstream client over
//! TLS and bounces.
//!
//! ```text
//! accepted message ─▶ spool::Spool::store ─▶ tmp/ → fsync → msg/ → fsync dir ─▶ queue id (250)
//!                                                   │
//!                      delivery (to come) ◀─────────┘ state/ rewritten per attempt
//! ```
//!
//! Dependencies: `submitd-smtp` for envelopes in wire form, `crc32fast` to
//! detect damaged queue files, `getrandom` for queue ids, `tokio` for the
//! blocking pool and group commit, `tracing` for recovery log lines,
//! `thiserror` for typed errors.

pub mod spool;

pub use spool::{
    DeliveryState, QueueId, RecipientState, Recovery, Spool, SpoolError, StoredEnvelope,
};

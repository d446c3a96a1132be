//! The intake: how a message the server machine accepted becomes a queued
//! message. It owns everything between "the client sent the end of data"
//! and the 250: the queue id, the arrival time, the trace header, the
//! strict header read, the durable spool write and the wake-up of the
//! relay, with the one log line that says the message was taken.
//!
//! ```text
//! Intake::begin ─▶ Draft (queue id, arrival time)
//!   Draft::prepare(message, origin) ─▶ PreparedMessage   (Received, Message-ID, Date added;
//!                                        │                 From:/Sender: found for the policy)
//!                    caller checks PreparedMessage::senders() against the user's policy
//!                                        ▼
//!   PreparedMessage::commit ─▶ spool (fsync file + folder) ─▶ relay enqueue ─▶ Accepted (250)
//! ```
//!
//! The caller (the listener) slots only the header-sender check between
//! prepare and commit; it never sees a queue file. A refusal or a spool
//! fault comes back as an [`IntakeError`] whose [`IntakeError::reply`] is
//! the SMTP reply to send.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use submitd_smtp::{Message, Reply};

use crate::prepare::{prepare, HeaderSenders, PrepareError, TraceInfo};
use crate::runner::Relay;
use crate::spool::{QueueId, Spool, SpoolError, StoredEnvelope};

/// Why a message was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The message itself is refused (its header): a permanent refusal.
    #[error(transparent)]
    Refused(#[from] PrepareError),
    /// The spool could not store it: the client should try again later.
    #[error("cannot queue the message: {0}")]
    Spool(#[from] SpoolError),
}

impl IntakeError {
    /// The SMTP reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Refused(e) => e.reply(),
            Self::Spool(_) => Reply::new(
                451,
                (4, 3, 0),
                "Cannot queue the message now; try again later",
            ),
        }
    }
}

/// Who handed a message over, as the trace header and the log name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The user whose sender policy applied (the login, or the local user).
    pub user: &'a str,
    /// The client's address; `None` on the local socket, where there is no
    /// network client to record.
    pub client: Option<IpAddr>,
}

/// Takes accepted messages into the queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Intake {
    spool: Spool,
    relay: Relay,
    hostname: Arc<str>,
    privacy: bool,
}

impl Intake {
    /// Stores into the relay's spool and makes each message due on the
    /// relay; `hostname` names this server in the Received field, and
    /// `privacy` leaves the client's name and address out of it.
    pub fn new(relay: Relay, hostname: &str, privacy: bool) -> Self {
        Self {
            spool: relay.spool.clone(),
            relay,
            hostname: hostname.into(),
            privacy,
        }
    }

    /// Starts taking one message: its queue id and arrival time are fixed
    /// now (the Received field names both).
    pub fn begin(&self) -> Draft<'_> {
        Draft {
            intake: self,
            id: QueueId::generate(),
            arrived: SystemTime::now(),
        }
    }
}

/// A message being taken in, not yet prepared.
#[derive(Debug)]
pub struct Draft<'a> {
    intake: &'a Intake,
    id: QueueId,
    arrived: SystemTime,
}

impl<'a> Draft<'a> {
    /// The queue id the message will have.
    pub fn queue_id(&self) -> &QueueId {
        &self.id
    }

    /// Reads the header strictly and adds the trace fields (Received, and
    /// Message-ID and Date when missing).
    pub fn prepare(
        self,
        message: Message,
        origin: Origin<'_>,
    ) -> Result<PreparedMessage<'a>, IntakeError> {
        let client_name = message.client_name.to_string();
        let single = match message.recipients.as_slice() {
            [only] => Some(only.forward_path.to_string()),
            _ => None,
        };
        let trace = TraceInfo {
            hostname: &self.intake.hostname,
            client: origin
                .client
                .filter(|_| !self.intake.privacy)
                .map(|ip| (client_name.as_str(), ip)),
            protocol: message.protocol(),
            queue_id: &self.id,
            single_recipient: single.as_deref(),
            now: self.arrived,
        };
        let prepared = prepare(&message.data, &trace)?;
        let received = self
            .arrived
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(PreparedMessage {
            intake: self.intake,
            id: self.id,
            envelope: StoredEnvelope {
                mail_from: message.mail_from,
                recipients: message.recipients,
                user: Some(origin.user.to_owned()),
                received,
            },
            data: prepared.data,
            senders: prepared.senders,
        })
    }
}

/// A message ready to be committed to the queue.
#[derive(Debug)]
pub struct PreparedMessage<'a> {
    intake: &'a Intake,
    id: QueueId,
    envelope: StoredEnvelope,
    data: Vec<u8>,
    senders: HeaderSenders,
}

/// A message in the queue: what the 250 and the caller's counters need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its queue id.
    pub id: QueueId,
    /// How many recipients it has.
    pub recipients: usize,
    /// Its size in the queue, trace fields included.
    pub size: usize,
}

impl PreparedMessage<'_> {
    /// The From: and Sender: addresses, for the sender policy.
    pub fn senders(&self) -> &HeaderSenders {
        &self.senders
    }

    /// Stores the message durably (file and folder fsynced), makes it due
    /// on the relay and logs it. Only after this returns `Ok` may the
    /// client be told 250.
    pub async fn commit(self) -> Result<Accepted, IntakeError> {
        let user = self.envelope.user.clone().unwrap_or_default();
        let from = self.envelope.mail_from.address();
        let recipients = self.envelope.recipients.len();
        let size = self.data.len();
        let stored = self
            .intake
            .spool
            .store(self.id, self.envelope, Arc::new(self.data))
            .await;
        match stored {
            Ok(id) => {
                self.intake.relay.enqueue(id.clone());
                tracing::info!(target: "submitd::message", queue_id = %id, %user, %from, recipients, size, outcome = "queued", "message accepted");
                Ok(Accepted {
                    id,
                    recipients,
                    size,
                })
            }
            Err(e) => {
                tracing::error!(target: "submitd::message", %user, error = %e, "message could not be queued");
                Err(IntakeError::Spool(e))
            }
        }
    }
}

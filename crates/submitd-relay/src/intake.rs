//! The intake: how a message the server machine is receiving becomes a
//! queued message. It owns everything between the machine's
//! `MessageStart` and the 250: the queue id, the arrival time, the strict
//! header read and the trace header, the streaming write to the spool, the
//! durable commit and the wake-up of the relay, with the one log line that
//! says the message was taken.
//!
//! ```text
//! Intake::begin(message, origin) ─▶ Draft (queue id, arrival time, envelope)
//!   Draft::write(piece) …   header held (bounded by HeaderLimits) until its blank line,
//!                           then inspected (Received, Message-ID, Date; From:/Sender:),
//!                           then everything streamed to spool msg/ in WRITE_AT writes
//!   Draft::finish ─▶ PreparedMessage
//!                    caller checks PreparedMessage::senders() against the user's policy
//!   PreparedMessage::commit ─▶ spool (header with size + checksum, fsync file, fsync folder)
//!                           ─▶ relay enqueue ─▶ paced while the relay is behind ─▶ Accepted (250)
//! ```
//!
//! Memory per message is the header (at most [`HeaderLimits::size`]) or one
//! write's worth of content ([`WRITE_AT`]), whichever is held, never the
//! message. A refusal or a spool fault is remembered by the draft and
//! comes back from [`Draft::finish`] or [`PreparedMessage::commit`] as an
//! [`IntakeError`] whose [`IntakeError::reply`] is the SMTP reply to send;
//! whatever was written of such a message is removed. The caller (the
//! listener) slots only the header-sender check between finish and commit;
//! it never sees a queue file.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use submitd_smtp::{Message, Reply};

use crate::prepare::{header_end, inspect, HeaderLimits, HeaderSenders, PrepareError, TraceInfo};
use crate::runner::Relay;
use crate::space::{MinFree, NoSpace, SpaceGuard, DEFAULT_MIN_FREE};
use crate::spool::{QueueId, Spool, SpoolError, SpoolFile, StoredEnvelope};

/// Content gathered before it is written to the spool: one write (on the
/// blocking pool) per this many octets.
pub const WRITE_AT: usize = 64 * 1024;

/// Why a message was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The message itself is refused (its header): a permanent refusal.
    #[error(transparent)]
    Refused(#[from] PrepareError),
    /// The spool could not store it: the client should try again later.
    #[error("cannot queue the message: {0}")]
    Spool(#[from] SpoolError),
    /// The spool's disk is below its free-space floor (or would be with
    /// this message): refused before its content is read.
    #[error(transparent)]
    NoSpace(#[from] NoSpace),
}

impl IntakeError {
    /// One word for the metrics: `content`, `disk_full` or `spool`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused(_) => "content",
            Self::NoSpace(_) => "disk_full",
            Self::Spool(e) if e.is_disk_full() => "disk_full",
            Self::Spool(_) => "spool",
        }
    }

    /// The SMTP reply for this error: the refusal's own, 452 4.3.1 when
    /// the spool's disk is full (RFC 3463: mail system full), otherwise
    /// 451 4.3.0. Both temporary: the client keeps the message.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Refused(e) => e.reply(),
            Self::NoSpace(_) => Reply::new(
                452,
                (4, 3, 1),
                "Insufficient system storage: cannot take messages now; try again later",
            ),
            Self::Spool(e) if e.is_disk_full() => Reply::new(
                452,
                (4, 3, 1),
                "Mail system full: cannot queue the message now; try again later",
            ),
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
    header: HeaderLimits,
    space: Arc<SpaceGuard>,
}

impl Intake {
    /// Stores into the relay's spool and makes each message due on the
    /// relay; `hostname` names this server in the Received field, and
    /// `privacy` leaves the client's name and address out of it. Headers
    /// are bounded by the default [`HeaderLimits`].
    pub fn new(relay: Relay, hostname: &str, privacy: bool) -> Self {
        let relay_dir = relay.spool.root().to_owned();
        Self {
            spool: relay.spool.clone(),
            relay,
            hostname: hostname.into(),
            privacy,
            header: HeaderLimits::default(),
            space: Arc::new(SpaceGuard::new(&relay_dir, DEFAULT_MIN_FREE)),
        }
    }

    /// The same intake keeping `min_free` of the spool's disk free (a
    /// floor of 0: none).
    pub fn with_min_free(mut self, min_free: MinFree) -> Self {
        self.space = Arc::new(SpaceGuard::new(self.spool.root(), min_free));
        self
    }

    /// Whether a message declared (by MAIL's SIZE) to be `declared` octets
    /// may come in: refused while the spool's disk is below its floor, or
    /// would be with it. Ask at MAIL, before the content is read.
    pub fn admit(&self, declared: Option<u64>) -> Result<(), IntakeError> {
        self.space.admit(declared).map_err(IntakeError::NoSpace)
    }

    /// The same intake with other bounds on a message's header.
    pub fn with_header_limits(mut self, header: HeaderLimits) -> Self {
        self.header = header;
        self
    }

    /// Starts taking one message, whose content the machine is about to
    /// pass on: its queue id and arrival time are fixed now (the Received
    /// field names both).
    pub fn begin(&self, message: &Message, origin: Origin<'_>) -> Draft {
        let arrived = SystemTime::now();
        let received = arrived
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = QueueId::generate();
        let envelope = StoredEnvelope {
            mail_from: message.mail_from.clone(),
            recipients: message.recipients.clone(),
            user: Some(origin.user.to_owned()),
            received,
        };
        let single_recipient = match message.recipients.as_slice() {
            [only] => Some(only.forward_path.to_string()),
            _ => None,
        };
        Draft {
            file: Some(self.spool.create(id.clone(), envelope)),
            intake: self.clone(),
            id,
            arrived,
            client_name: message.client_name.to_string(),
            client: origin.client.filter(|_| !self.privacy),
            protocol: message.protocol(),
            single_recipient,
            user: origin.user.to_owned(),
            from: message.mail_from.address(),
            recipients: message.recipients.len(),
            held: Vec::new(),
            scanned: 0,
            senders: None,
            failed: None,
        }
    }
}

/// A message being taken in: its content arrives with [`Draft::write`].
/// Dropped before it is committed, it leaves nothing in the spool.
#[derive(Debug)]
pub struct Draft {
    intake: Intake,
    id: QueueId,
    /// `None` after a failure (the file is gone with it).
    file: Option<SpoolFile>,
    arrived: SystemTime,
    client_name: String,
    client: Option<IpAddr>,
    protocol: &'static str,
    single_recipient: Option<String>,
    user: String,
    from: String,
    recipients: usize,
    /// The header until it was inspected; after that, content waiting to
    /// be written.
    held: Vec<u8>,
    /// How far `held` was searched for the header's end.
    scanned: usize,
    /// Found once the header was inspected.
    senders: Option<HeaderSenders>,
    /// The first refusal or fault; the rest of the content is only read.
    failed: Option<IntakeError>,
}

impl Draft {
    /// The queue id the message will have.
    pub fn queue_id(&self) -> &QueueId {
        &self.id
    }

    /// Takes the next piece of content. Never fails itself: a refusal or a
    /// spool fault is remembered (and the rest of the content dropped) for
    /// [`Draft::finish`] to report once the client has sent it all.
    pub async fn write(&mut self, piece: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.held.extend_from_slice(piece);
        if self.senders.is_none() {
            let from = self.scanned.saturating_sub(3);
            let found = header_end(&self.held[from..]).map(|end| from + end);
            self.scanned = self.held.len();
            let limit = self.intake.header.size;
            match found {
                Some(end) if end <= limit => {
                    if let Err(e) = self.inspect() {
                        return self.fail(e);
                    }
                }
                None if self.held.len() <= limit => return,
                _ => return self.fail(PrepareError::HeaderTooBig(limit).into()),
            }
        }
        if self.held.len() >= WRITE_AT {
            self.flush().await;
        }
    }

    /// Reads the held header strictly and puts the trace fields in front.
    fn inspect(&mut self) -> Result<(), IntakeError> {
        let client = self.client.map(|ip| (self.client_name.as_str(), ip));
        let trace = TraceInfo {
            hostname: &self.intake.hostname,
            client,
            protocol: self.protocol,
            queue_id: &self.id,
            single_recipient: self.single_recipient.as_deref(),
            now: self.arrived,
        };
        let inspected = inspect(&self.held, &trace, self.intake.header.fields)?;
        let mut held = Vec::with_capacity(inspected.added.len() + self.held.len());
        held.extend_from_slice(inspected.added.as_bytes());
        held.append(&mut self.held);
        self.held = held;
        self.senders = Some(inspected.senders);
        Ok(())
    }

    fn fail(&mut self, error: IntakeError) {
        self.failed = Some(error);
        self.held = Vec::new();
        self.file = None;
    }

    /// Writes what is held to the spool file on the blocking pool; the
    /// buffer comes back for the next pieces.
    async fn flush(&mut self) {
        let Some(mut file) = self.file.take() else {
            return self.fail(SpoolError::WriteStopped.into());
        };
        let held = std::mem::take(&mut self.held);
        let written = tokio::task::spawn_blocking(move || {
            let result = file.append(&held);
            (file, held, result)
        })
        .await;
        match written {
            Ok((file, mut held, Ok(()))) => {
                held.clear();
                self.held = held;
                self.file = Some(file);
            }
            Ok((_, _, Err(e))) => {
                tracing::error!(target: "submitd::message", user = %self.user, error = %e, "message could not be written to the queue");
                self.fail(e.into());
            }
            Err(_) => self.fail(SpoolError::WriteStopped.into()),
        }
    }

    /// The content is complete: the message is ready to be committed, or
    /// the refusal or fault met on the way. A message whose header never
    /// ended (no blank line, no body) is inspected now.
    pub fn finish(mut self) -> Result<PreparedMessage, IntakeError> {
        if self.senders.is_none() && self.failed.is_none() {
            if let Err(e) = self.inspect() {
                self.fail(e);
            }
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        let (Some(file), Some(senders)) = (self.file, self.senders) else {
            return Err(SpoolError::WriteStopped.into());
        };
        Ok(PreparedMessage {
            intake: self.intake,
            file,
            tail: self.held,
            senders,
            user: self.user,
            from: self.from,
            recipients: self.recipients,
        })
    }
}

/// A message ready to be committed to the queue.
#[derive(Debug)]
pub struct PreparedMessage {
    intake: Intake,
    file: SpoolFile,
    /// The last of the content, not yet written.
    tail: Vec<u8>,
    senders: HeaderSenders,
    user: String,
    from: String,
    recipients: usize,
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

impl PreparedMessage {
    /// The From: and Sender: addresses, for the sender policy.
    pub fn senders(&self) -> &HeaderSenders {
        &self.senders
    }

    /// Stores the message durably (file and folder fsynced), makes it due
    /// on the relay and logs it. Only after this returns `Ok` may the
    /// client be told 250.
    pub async fn commit(self) -> Result<Accepted, IntakeError> {
        let Self {
            intake,
            file,
            tail,
            user,
            from,
            recipients,
            ..
        } = self;
        let size = usize::try_from(file.size())
            .unwrap_or(usize::MAX)
            .saturating_add(tail.len());
        let started = std::time::Instant::now();
        let stored = tokio::task::spawn_blocking(move || file.commit(&tail))
            .await
            .unwrap_or(Err(SpoolError::WriteStopped));
        match stored {
            Ok(id) => {
                submitd_metrics::metrics()
                    .spool_write_seconds
                    .observe(started.elapsed().as_secs_f64());
                intake.relay.enqueue(id.clone());
                tracing::info!(target: "submitd::message", queue_id = %id, %user, %from, recipients, size, outcome = "queued", "message accepted");
                // Durable and due: the 250 waits (a second at most) while
                // the relay is behind, so the queue does not grow faster
                // than it drains.
                intake.relay.pace_intake().await;
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

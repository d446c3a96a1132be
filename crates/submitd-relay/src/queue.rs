//! Queue operations as library functions; the daemon's `queue list|show|
//! flush|delete` commands call these.

use crate::spool::{DeliveryState, QueueId, RecipientState, Spool, SpoolError, StoredEnvelope};

/// One queued message as `queue list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// Its id.
    pub id: QueueId,
    /// Envelope and facts.
    pub envelope: StoredEnvelope,
    /// Size in octets.
    pub size: usize,
    /// Delivery state.
    pub state: DeliveryState,
}

/// Counts over the whole queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    /// Messages queued.
    pub messages: usize,
    /// Messages with at least one failed attempt (deferred).
    pub deferred: usize,
    /// Recipients still to deliver.
    pub pending: usize,
    /// Recipients delivered (messages not finished yet).
    pub delivered: usize,
    /// Recipients failed for good (bounce being sent).
    pub failed: usize,
    /// Octets queued.
    pub octets: u64,
}

/// Every queued message, oldest first: from each file's header, its
/// length and its state file, without reading any content (the checksum
/// is checked by `show` and when the message is sent).
pub fn list(spool: &Spool) -> Result<Vec<QueueEntry>, SpoolError> {
    let mut entries = Vec::new();
    for id in spool.list()? {
        let peeked = match spool.peek(&id) {
            Ok(peeked) => peeked,
            // Delivered and removed by a running server meanwhile, or
            // still being received by it: not (or not yet) in the queue.
            Err(SpoolError::NotFound(_) | SpoolError::Receiving { .. }) => continue,
            Err(e) => return Err(e),
        };
        let state = match spool.state(&id, peeked.envelope.recipients.len()) {
            Ok(state) => state,
            Err(SpoolError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        entries.push(QueueEntry {
            id,
            size: usize::try_from(peeked.size).unwrap_or(usize::MAX),
            envelope: peeked.envelope,
            state,
        });
    }
    Ok(entries)
}

/// One queued message.
pub fn show(spool: &Spool, id: &QueueId) -> Result<QueueEntry, SpoolError> {
    let (envelope, data) = spool.load(id)?;
    let state = spool.state(id, envelope.recipients.len())?;
    Ok(QueueEntry {
        id: id.clone(),
        size: data.len(),
        envelope,
        state,
    })
}

/// Counts per state.
pub fn figures(entries: &[QueueEntry]) -> QueueFigures {
    let mut f = QueueFigures {
        messages: entries.len(),
        ..QueueFigures::default()
    };
    for entry in entries {
        f.octets += entry.size as u64;
        if entry.state.attempts > 0 {
            f.deferred += 1;
        }
        for r in &entry.state.recipients {
            match r {
                RecipientState::Pending(_) => f.pending += 1,
                RecipientState::Delivered(_) => f.delivered += 1,
                RecipientState::Failed(_) => f.failed += 1,
            }
        }
    }
    f
}

/// Makes one message (or all, with `None`) due now. Returns how many.
///
/// Beside a running server, a message may be delivered and removed while
/// this runs: flushing all skips it; flushing one names it as not found.
pub fn flush(spool: &Spool, id: Option<&QueueId>) -> Result<usize, SpoolError> {
    let (ids, all) = match id {
        Some(id) => (vec![id.clone()], false),
        None => (spool.list()?, true),
    };
    let mut flushed = 0;
    for id in &ids {
        let recipients = match spool.load_envelope(id) {
            Ok(envelope) => envelope.recipients.len(),
            Err(SpoolError::NotFound(_) | SpoolError::Receiving { .. }) if all => continue,
            Err(e) => return Err(e),
        };
        let mut state = spool.state(id, recipients)?;
        state.next_try = 0;
        spool.save_state(id, &state)?;
        flushed += 1;
    }
    if flushed > 0 {
        spool.request_rescan()?;
    }
    Ok(flushed)
}

/// Deletes a message without delivering or bouncing it.
pub fn delete(spool: &Spool, id: &QueueId) -> Result<(), SpoolError> {
    spool.remove(id)
}

#[cfg(test)]
mod tests {
    use submitd_smtp::{MailFrom, RcptTo};

    use super::*;

    #[test]
    fn list_show_flush_delete() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let envelope = StoredEnvelope {
            mail_from: MailFrom::parse("<alice@example.org>").unwrap(),
            recipients: vec![
                RcptTo::parse("<a@example.net>").unwrap(),
                RcptTo::parse("<b@example.net>").unwrap(),
            ],
            user: Some("alice".into()),
            received: 0,
        };
        let one = spool
            .store_blocking(QueueId::generate(), &envelope, b"12345")
            .unwrap();
        let two = spool
            .store_blocking(QueueId::generate(), &envelope, b"123")
            .unwrap();
        spool
            .save_state(
                &one,
                &DeliveryState {
                    attempts: 2,
                    next_try: 99_999,
                    recipients: vec![
                        RecipientState::Delivered("250".into()),
                        RecipientState::Pending(Some("451".into())),
                    ],
                },
            )
            .unwrap();
        let entries = list(&spool).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            figures(&entries),
            QueueFigures {
                messages: 2,
                deferred: 1,
                pending: 3,
                delivered: 1,
                failed: 0,
                octets: 8
            }
        );
        assert_eq!(flush(&spool, Some(&one)).unwrap(), 1);
        assert_eq!(show(&spool, &one).unwrap().state.next_try, 0);
        assert_eq!(
            show(&spool, &one).unwrap().state.attempts,
            2,
            "flush keeps the history"
        );
        delete(&spool, &two).unwrap();
        assert_eq!(list(&spool).unwrap().len(), 1);
        assert!(matches!(show(&spool, &two), Err(SpoolError::NotFound(_))));
    }
}

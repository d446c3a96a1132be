//! What the owning server does with the queue at start: unfinished writes
//! to `partial/`, damaged files to `corrupt/`, each with a log line; nothing
//! is deleted but state files of messages that are gone.
//!
//! Each message's header is read and its length checked against it, not
//! its content: a queue of 100,000 messages starts in the time it takes to
//! read 100,000 headers. The checksum is checked as the message is sent
//! (`Content`), and a message that fails it then is moved to `corrupt/`
//! the same way.

use std::fs;

use super::format::read_envelope;
use super::{fsync_held, io_error, list_dir, move_aside, QueueId, Spool, SpoolError};

/// What recovery found at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Messages in the queue.
    pub queued: Vec<QueueId>,
    /// Unfinished writes moved to `partial/` (never acknowledged).
    pub partial: usize,
    /// Damaged files moved to `corrupt/`.
    pub corrupt: usize,
    /// State files of finished messages, removed.
    pub stray_states: usize,
}

impl Spool {
    pub(super) fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut recovery = Recovery::default();
        for path in list_dir(&self.dirs.tmp)? {
            tracing::warn!(target: "submitd::spool", file = %path.display(), "unfinished write from before a crash; never acknowledged; moved to partial/");
            move_aside(&path, &self.dirs.partial)?;
            recovery.partial += 1;
        }
        for path in list_dir(&self.dirs.msg)? {
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(QueueId::parse);
            let checked = match id {
                Some(id) => fs::File::open(&path)
                    .map_err(io_error(&path))
                    .and_then(|file| read_envelope(&path, file))
                    .map(|_| id),
                None => Err(SpoolError::Corrupt {
                    path: path.clone(),
                    reason: "not a queue id".into(),
                }),
            };
            match checked {
                Ok(id) => recovery.queued.push(id),
                Err(SpoolError::Receiving { .. }) => {
                    tracing::warn!(target: "submitd::spool", file = %path.display(), "unfinished write from before a crash; never acknowledged; moved to partial/");
                    move_aside(&path, &self.dirs.partial)?;
                    recovery.partial += 1;
                }
                Err(e) => {
                    tracing::error!(target: "submitd::spool", error = %e, "damaged queue file moved to corrupt/");
                    move_aside(&path, &self.dirs.corrupt)?;
                    recovery.corrupt += 1;
                }
            }
        }
        for path in list_dir(&self.dirs.state)? {
            let name = path.file_name().unwrap_or_default();
            if !self.dirs.msg.join(name).exists() {
                fs::remove_file(&path).map_err(io_error(&path))?;
                recovery.stray_states += 1;
            }
        }
        fsync_held(&self.dirs.msg_fd, &self.dirs.msg)?;
        recovery.queued.sort();
        Ok(recovery)
    }
}

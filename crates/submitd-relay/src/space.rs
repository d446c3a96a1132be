//! The spool's free space. Below a floor (a share of the file system) new
//! messages are refused at MAIL with `452 4.3.1`, before their content is
//! read, and so is a message whose declared SIZE would take the disk below
//! it. Messages already queued are delivered as ever, and as they leave,
//! space returns and new ones are taken again, without a restart. The
//! crossing of the floor is logged once each way, not once per message.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Free and total octets of the file system the spool is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Octets an unprivileged writer may still use.
    pub available: u64,
    /// The file system's size.
    pub total: u64,
}

/// Free space of the file system holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<Space> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(Space {
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

/// The share of the spool's file system, in percent, kept free when the
/// config does not say.
pub const DEFAULT_MIN_FREE: u8 = 5;

/// Checks new messages against the spool's free-space floor.
#[derive(Debug)]
pub struct SpaceGuard {
    dir: PathBuf,
    min_free: u8,
    /// Below the floor at the last check (for the once-an-episode log).
    low: AtomicBool,
}

/// A message refused for lack of space: what was free, and the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the queue's disk has {available} octets free, below its floor of {floor} (min_free {min_free}%)")]
pub struct NoSpace {
    /// Octets free.
    pub available: u64,
    /// Octets kept free.
    pub floor: u64,
    /// The floor as a share, in percent.
    pub min_free: u8,
}

impl SpaceGuard {
    /// Keeps `min_free` percent (at most 50) of `dir`'s file system free;
    /// 0 checks nothing.
    pub fn new(dir: &Path, min_free: u8) -> Self {
        Self {
            dir: dir.to_owned(),
            min_free: min_free.min(50),
            low: AtomicBool::new(false),
        }
    }

    /// Whether a new message of (at most) `declared` octets may be taken.
    /// A file system that cannot be asked is not held against the client:
    /// the write itself will say if the disk is full.
    pub fn admit(&self, declared: Option<u64>) -> Result<(), NoSpace> {
        if self.min_free == 0 {
            return Ok(());
        }
        let Ok(space) = free_space(&self.dir) else {
            return Ok(());
        };
        let floor = space.total / 100 * u64::from(self.min_free);
        let after = space.available.saturating_sub(declared.unwrap_or(0));
        let low = space.available < floor;
        if low != self.low.swap(low, Ordering::AcqRel) {
            if low {
                tracing::error!(target: "submitd::spool", available = space.available, floor, dir = %self.dir.display(), "queue disk below its free-space floor: new messages refused with 452 4.3.1 until space returns");
            } else {
                tracing::info!(target: "submitd::spool", available = space.available, floor, "queue disk above its free-space floor again: new messages taken");
            }
        }
        if after < floor {
            return Err(NoSpace {
                available: space.available,
                floor,
                min_free: self.min_free,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_refuses_what_would_cross_it() {
        let dir = tempfile::tempdir().unwrap();
        let space = free_space(dir.path()).unwrap();
        assert!(space.total > 0 && space.available <= space.total);
        let guard = SpaceGuard::new(dir.path(), 1);
        assert_eq!(guard.admit(None), Ok(()));
        // A declared size larger than what is free is refused before any
        // of it is read.
        let refused = guard.admit(Some(space.total)).unwrap_err();
        assert_eq!(refused.min_free, 1);
        assert!(refused.to_string().contains("below its floor"), "{refused}");
        assert_eq!(SpaceGuard::new(dir.path(), 0).admit(Some(u64::MAX)), Ok(()));
    }
}

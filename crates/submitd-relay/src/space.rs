//! The spool's free space. Below a floor (a share of the file system, or a
//! number of octets; by default 5 % of it, at most 1 GiB) new
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

/// How much of the spool's file system is kept free.
///
/// A share alone is wrong at both ends: 5 % of a 250 GB disk refuses mail
/// with 12 GB still free (CI met exactly that), and a fixed size is more
/// than a small queue partition holds. The default is therefore the
/// smaller of the two. Postfix keeps `queue_minfree` (0 by default) plus
/// 1.5 message sizes; Exim's `check_spool_space` is a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    /// A share of the file system, in percent (at most 50); 0 keeps none.
    Percent(u8),
    /// A number of octets; 0 keeps none.
    Octets(u64),
    /// A share of the file system, but never more than `cap` octets.
    PercentAtMost {
        /// The share, in percent (at most 50).
        percent: u8,
        /// The most octets kept free.
        cap: u64,
    },
}

/// The floor when the config does not say: 5 % of the file system, at
/// most 1 GiB.
pub const DEFAULT_MIN_FREE: MinFree = MinFree::PercentAtMost {
    percent: 5,
    cap: 1 << 30,
};

impl MinFree {
    /// The octets kept free on a file system of `total` octets.
    pub fn floor(self, total: u64) -> u64 {
        let share = |percent: u8| total / 100 * u64::from(percent.min(50));
        match self {
            Self::Percent(percent) => share(percent),
            Self::Octets(octets) => octets,
            Self::PercentAtMost { percent, cap } => share(percent).min(cap),
        }
    }

    /// Whether no floor is kept at all.
    pub fn is_none(self) -> bool {
        matches!(
            self,
            Self::Percent(0) | Self::Octets(0) | Self::PercentAtMost { percent: 0, .. }
        )
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = |f: &mut std::fmt::Formatter<'_>, octets: u64| match octets {
            n if n >= 1 << 30 && n % (1 << 30) == 0 => write!(f, "{}G", n >> 30),
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{}M", n >> 20),
            n => write!(f, "{n}"),
        };
        match *self {
            Self::Percent(percent) => write!(f, "{percent}%"),
            Self::Octets(octets) => size(f, octets),
            Self::PercentAtMost { percent, cap } => {
                write!(f, "{percent}% at most ")?;
                size(f, cap)
            }
        }
    }
}

/// Checks new messages against the spool's free-space floor.
#[derive(Debug)]
pub struct SpaceGuard {
    dir: PathBuf,
    min_free: MinFree,
    /// Below the floor at the last check (for the once-an-episode log).
    low: AtomicBool,
}

/// A message refused for lack of space: what was free, and the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the queue's disk has {available} octets free, below its floor of {floor} (min_free {min_free})")]
pub struct NoSpace {
    /// Octets free.
    pub available: u64,
    /// Octets kept free.
    pub floor: u64,
    /// The floor as configured.
    pub min_free: MinFree,
}

impl SpaceGuard {
    /// Keeps `min_free` of `dir`'s file system free; a floor of 0 checks
    /// nothing.
    pub fn new(dir: &Path, min_free: MinFree) -> Self {
        Self {
            dir: dir.to_owned(),
            min_free,
            low: AtomicBool::new(false),
        }
    }

    /// Whether a new message of (at most) `declared` octets may be taken.
    /// A file system that cannot be asked is not held against the client:
    /// the write itself will say if the disk is full.
    pub fn admit(&self, declared: Option<u64>) -> Result<(), NoSpace> {
        if self.min_free.is_none() {
            return Ok(());
        }
        let Ok(space) = free_space(&self.dir) else {
            return Ok(());
        };
        let floor = self.min_free.floor(space.total);
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
        let guard = SpaceGuard::new(dir.path(), MinFree::Octets(1));
        assert_eq!(guard.admit(None), Ok(()));
        // A declared size larger than what is free is refused before any
        // of it is read.
        let refused = guard.admit(Some(space.total)).unwrap_err();
        assert_eq!(refused.min_free, MinFree::Octets(1));
        assert!(refused.to_string().contains("below its floor"), "{refused}");
        // A floor above what the disk has refuses even an empty message.
        let above = SpaceGuard::new(dir.path(), MinFree::Octets(space.total.saturating_add(1)));
        assert!(above.admit(None).is_err());
        for none in [MinFree::Percent(0), MinFree::Octets(0)] {
            assert_eq!(
                SpaceGuard::new(dir.path(), none).admit(Some(u64::MAX)),
                Ok(())
            );
        }
    }

    #[test]
    fn the_default_floor_is_a_share_of_a_small_disk_and_a_gibibyte_of_a_big_one() {
        const GIB: u64 = 1 << 30;
        // A 16 MiB tmpfs keeps 5 % free; a 4 GiB partition 5 % as well.
        assert_eq!(DEFAULT_MIN_FREE.floor(16 << 20), (16 << 20) / 100 * 5);
        assert_eq!(DEFAULT_MIN_FREE.floor(4 * GIB), 4 * GIB / 100 * 5);
        // From 20 GiB on, 1 GiB: a 250 GB disk with 12 GB free takes mail.
        assert_eq!(DEFAULT_MIN_FREE.floor(250_000_000_000), GIB);
        assert_eq!(MinFree::Percent(5).floor(250_000_000_000), 12_500_000_000);
        assert_eq!(MinFree::Octets(GIB).floor(16 << 20), GIB);
        // A share is never more than half the disk.
        assert_eq!(MinFree::Percent(90).floor(1000), 500);
        assert_eq!(DEFAULT_MIN_FREE.to_string(), "5% at most 1G");
        assert_eq!(MinFree::Octets(512 << 20).to_string(), "512M");
        assert_eq!(MinFree::Octets(1000).to_string(), "1000");
    }
}

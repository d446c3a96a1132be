//! Which queued messages are due when, and which a worker holds now: the
//! relay's in-memory index, built from state files and envelope headers
//! (never content) at start; afterwards kept by the relay itself (each
//! attempt says when the message is next due) and by scans that read only
//! the files of messages it does not know. Every operation is O(log n) in
//! the number of queued messages; a scan reads the folder (names only)
//! and the files of new messages, so its cost does not grow with the
//! messages already scheduled.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::spool::QueueId;

/// Due times by message, and the messages workers hold.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    due: BTreeSet<(u64, QueueId)>,
    /// When each id in `due` is due, and the insert it came from (to move
    /// it in O(log n), and to tell a scan what was added while it ran).
    at: HashMap<QueueId, (u64, u64)>,
    busy: HashSet<QueueId>,
    /// Inserts so far.
    inserts: u64,
    /// Entries due at 0: stored (or flushed) and not yet taken by a worker.
    waiting: usize,
}

/// Where a scan began: what the schedule had seen by then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScanStart(u64);

impl Schedule {
    /// Makes `id` due at `at` (moving it if it was already scheduled); a
    /// message a worker holds is left to that worker.
    pub(crate) fn insert(&mut self, at: u64, id: QueueId) {
        if self.busy.contains(&id) {
            return;
        }
        self.inserts += 1;
        if let Some((old, _)) = self.at.insert(id.clone(), (at, self.inserts)) {
            self.remove_due(old, id.clone());
        }
        self.waiting += usize::from(at == 0);
        self.due.insert((at, id));
    }

    fn remove_due(&mut self, at: u64, id: QueueId) {
        if self.due.remove(&(at, id)) && at == 0 {
            self.waiting -= 1;
        }
    }

    /// Whether `id` is scheduled or held.
    pub(crate) fn knows(&self, id: &QueueId) -> bool {
        self.at.contains_key(id) || self.busy.contains(id)
    }

    /// Marks the start of a scan of the folder.
    pub(crate) fn scan_start(&self) -> ScanStart {
        ScanStart(self.inserts)
    }

    /// Ends a scan that began at `start`, found `listed` in the folder and
    /// read `found` (due times of the messages it read): entries known
    /// before the scan but no longer in the folder go (removed behind the
    /// relay's back), `found` is scheduled, and what was inserted while
    /// the scan ran stays as it is (a message stored meanwhile is not in
    /// the listing, and must not be forgotten).
    pub(crate) fn scan_end(
        &mut self,
        start: ScanStart,
        listed: &HashSet<QueueId>,
        found: Vec<(u64, QueueId)>,
    ) {
        let gone: Vec<(u64, QueueId)> = self
            .at
            .iter()
            .filter(|(id, (_, insert))| *insert <= start.0 && !listed.contains(*id))
            .map(|(id, (at, _))| (*at, id.clone()))
            .collect();
        for (at, id) in gone {
            self.at.remove(&id);
            self.remove_due(at, id);
        }
        for (at, id) in found {
            let newer = self
                .at
                .get(&id)
                .is_some_and(|(_, insert)| *insert > start.0);
            if !newer {
                self.insert(at, id);
            }
        }
    }

    /// The oldest message due at `now`, now held by the caller until it
    /// calls [`Schedule::release`].
    pub(crate) fn take_due(&mut self, now: u64) -> Option<QueueId> {
        let first = self.due.iter().next().filter(|(at, _)| *at <= now)?.clone();
        self.remove_due(first.0, first.1.clone());
        self.at.remove(&first.1);
        self.busy.insert(first.1.clone());
        Some(first.1)
    }

    /// The holder of `id` is done with it; due again at `next`, or gone
    /// (finished) with `None`.
    pub(crate) fn release(&mut self, id: &QueueId, next: Option<u64>) {
        self.busy.remove(id);
        if let Some(at) = next {
            self.insert(at, id.clone());
        }
    }

    /// When the next message is due.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.due.iter().next().map(|(at, _)| *at)
    }

    /// Messages stored (or flushed) that no worker has taken yet: the
    /// relay's backlog of new work.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Messages scheduled (due or not) and held.
    pub(crate) fn len(&self) -> usize {
        self.at.len() + self.busy.len()
    }

    /// The oldest message scheduled or held (ids are time-ordered). O(n):
    /// for a scrape every few seconds, not for the delivery path.
    pub(crate) fn oldest(&self) -> Option<&QueueId> {
        self.at.keys().chain(self.busy.iter()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> QueueId {
        QueueId::parse(&format!("{:022x}", n)).unwrap_or_else(|| panic!("id {n}"))
    }

    fn listed(ids: &[u8]) -> HashSet<QueueId> {
        ids.iter().map(|&n| id(n)).collect()
    }

    #[test]
    fn the_schedule_gives_each_due_message_to_one_worker_oldest_first() {
        let mut s = Schedule::default();
        s.insert(100, id(3));
        s.insert(50, id(2));
        s.insert(50, id(1));
        s.insert(500, id(4));
        s.insert(0, id(5));
        assert_eq!(s.waiting(), 1);
        assert_eq!(s.take_due(0), Some(id(5)));
        assert_eq!(s.waiting(), 0);
        s.release(&id(5), None);
        assert_eq!(s.take_due(40), None);
        assert_eq!(s.take_due(100), Some(id(1)));
        assert_eq!(s.take_due(100), Some(id(2)));
        // Held by a worker: a scan's insert does not hand it out again.
        s.insert(0, id(1));
        assert_eq!(s.take_due(100), Some(id(3)));
        assert_eq!(s.take_due(100), None);
        assert_eq!(s.next_due(), Some(500));
        // Re-inserting moves an entry, never duplicates it.
        s.insert(10, id(4));
        assert_eq!((s.due.len(), s.at.len()), (1, 1));
        assert_eq!(s.take_due(10), Some(id(4)));
        // Released, a message is due again or gone.
        s.release(&id(1), Some(20));
        s.release(&id(2), None);
        s.release(&id(3), None);
        s.release(&id(4), None);
        assert_eq!(s.take_due(20), Some(id(1)));
        assert_eq!(s.take_due(20), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_scan_forgets_the_deleted_keeps_what_came_meanwhile_and_adds_the_found() {
        let mut s = Schedule::default();
        s.insert(10, id(1));
        s.insert(10, id(2));
        assert!(s.knows(&id(1)) && !s.knows(&id(9)));
        let start = s.scan_start();
        // Stored while the folder was read: not in the listing.
        s.insert(0, id(3));
        // id 2 was deleted from the disk; id 7 is new to the relay.
        s.scan_end(start, &listed(&[1, 7]), vec![(5, id(7))]);
        assert!(s.knows(&id(1)) && s.knows(&id(3)) && s.knows(&id(7)));
        assert!(!s.knows(&id(2)));
        assert_eq!(s.take_due(100), Some(id(3)));
        assert_eq!(s.take_due(100), Some(id(7)));
        // A held message is not in `at`: a scan neither drops nor doubles it.
        let start = s.scan_start();
        s.scan_end(start, &listed(&[1]), vec![(0, id(3))]);
        assert!(s.knows(&id(3)));
        assert_eq!(s.take_due(100), Some(id(1)));
        assert_eq!(s.take_due(100), None);
        // A full scan's newer due time wins over what it read, and the
        // reread moves a known entry.
        s.release(&id(1), Some(50));
        let start = s.scan_start();
        s.insert(60, id(1));
        s.scan_end(start, &listed(&[1]), vec![(0, id(1))]);
        assert_eq!(s.next_due(), Some(60));
        let start = s.scan_start();
        s.scan_end(start, &listed(&[1]), vec![(0, id(1))]);
        assert_eq!(s.next_due(), Some(0));
        assert_eq!(s.waiting(), 1);
        let start = s.scan_start();
        s.scan_end(start, &listed(&[]), vec![]);
        // Gone from the folder: forgotten; ids 3 and 7 are still held.
        assert_eq!((s.waiting(), s.len()), (0, 2));
    }
}

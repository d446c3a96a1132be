//! Which queued messages are due when, and which a worker holds now: the
//! relay's in-memory index, rebuilt from state files and envelope headers
//! (never content) at start and every minute. Every operation is O(log n)
//! in the number of queued messages.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::spool::QueueId;

/// Due times by message, and the messages workers hold.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    due: BTreeSet<(u64, QueueId)>,
    /// When each id in `due` is due, to move it in O(log n).
    at: HashMap<QueueId, u64>,
    busy: HashSet<QueueId>,
}

impl Schedule {
    /// Makes `id` due at `at` (moving it if it was already scheduled); a
    /// message a worker holds is left to that worker.
    pub(crate) fn insert(&mut self, at: u64, id: QueueId) {
        if self.busy.contains(&id) {
            return;
        }
        if let Some(old) = self.at.insert(id.clone(), at) {
            self.due.remove(&(old, id.clone()));
        }
        self.due.insert((at, id));
    }

    /// Replaces everything not held by a worker.
    pub(crate) fn replace(&mut self, due: Vec<(u64, QueueId)>) {
        self.due.clear();
        self.at.clear();
        for (at, id) in due {
            self.insert(at, id);
        }
    }

    /// The oldest message due at `now`, now held by the caller until it
    /// calls [`Schedule::release`].
    pub(crate) fn take_due(&mut self, now: u64) -> Option<QueueId> {
        let first = self.due.iter().next().filter(|(at, _)| *at <= now)?.clone();
        self.due.remove(&first);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> QueueId {
        QueueId::parse(&format!("{:022x}", n)).unwrap_or_else(|| panic!("id {n}"))
    }

    #[test]
    fn the_schedule_gives_each_due_message_to_one_worker_oldest_first() {
        let mut s = Schedule::default();
        s.insert(100, id(3));
        s.insert(50, id(2));
        s.insert(50, id(1));
        s.insert(500, id(4));
        assert_eq!(s.take_due(40), None);
        assert_eq!(s.take_due(100), Some(id(1)));
        assert_eq!(s.take_due(100), Some(id(2)));
        // Held by a worker: a rescan's insert does not hand it out again.
        s.insert(0, id(1));
        assert_eq!(s.take_due(100), Some(id(3)));
        assert_eq!(s.take_due(100), None);
        assert_eq!(s.next_due(), Some(500));
        // Re-inserting moves an entry, never duplicates it.
        s.insert(10, id(4));
        assert_eq!((s.due.len(), s.at.len()), (1, 1));
        assert_eq!(s.take_due(10), Some(id(4)));
        // A rescan replaces what is not held.
        s.replace(vec![(0, id(1)), (5, id(7))]);
        assert_eq!(s.take_due(10), Some(id(7)), "id 1 is still held");
        assert!(s.due.is_empty() && s.at.is_empty());
        // Released, a message is due again or gone.
        s.release(&id(1), Some(20));
        s.release(&id(7), None);
        assert_eq!(s.take_due(20), Some(id(1)));
        assert_eq!(s.take_due(20), None);
    }
}

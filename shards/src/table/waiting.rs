//! Subscribers waiting for a snapshot: the table's look at them for the shard's periodic
//! `no_snapshot` notices and snapshot requests, and moving a subscriber there after a gap.

use std::rc::Rc;
use std::sync::Arc;

use super::{Held, Table};

/// What [`Table::snapshot_waits`] found.
pub struct SnapshotWaits<T> {
    /// Topics that have subscribers waiting for a snapshot.
    pub topics: Vec<Arc<str>>,
    /// Waiters to tell: `(subscriber, topic, from, to)`, the sequences published since they
    /// began to wait (or were last told) and that they will not receive.
    pub overdue: Vec<(Rc<T>, Arc<str>, u64, u64)>,
}

impl<T> Table<T> {
    /// Topics with subscribers waiting for a snapshot, and the waiters that have waited `wait`
    /// since they began or were last told (their clock restarts, and their `from` moves past
    /// what they are told of). Linear in the topics the shard tracks.
    pub fn snapshot_waits(
        &mut self,
        now: std::time::Instant,
        wait: std::time::Duration,
    ) -> SnapshotWaits<T> {
        let mut found = SnapshotWaits {
            topics: Vec::new(),
            overdue: Vec::new(),
        };
        for e in self.slots.iter_mut().flatten() {
            if e.exact.held.is_empty() {
                continue;
            }
            found.topics.push(e.name.clone());
            for h in &mut e.exact.held {
                if now.saturating_duration_since(h.since) < wait {
                    continue;
                }
                h.since = now;
                if e.last_seq >= h.from {
                    found
                        .overdue
                        .push((h.sub.clone(), e.name.clone(), h.from, e.last_seq));
                    h.from = e.last_seq + 1;
                }
            }
        }
        found
    }

    /// Moves `sub` from `topic`'s subscribers to those waiting for its next snapshot (after
    /// a gap on a snapshot topic whose policy is `notice`). Nothing if it is not a subscriber.
    pub fn hold_until_snapshot(&mut self, sub: &Rc<T>, topic: &str) {
        let Some(e) = self.topic_mut(topic) else {
            return;
        };
        let from = e.last_seq + 1;
        let exact = &mut e.exact;
        if let Some(pos) = exact.subscribers.iter().position(|s| Rc::ptr_eq(s, sub)) {
            exact.subscribers.swap_remove(pos);
            exact.held.push(Held {
                sub: sub.clone(),
                since: std::time::Instant::now(),
                from,
            });
        }
    }
}

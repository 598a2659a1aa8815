//! What the reader threads share while they run: live counters for the progress line, the
//! monitor and the stepped scenarios, the latency of the last interval, each topic's base
//! sequence, and what each reader still waits for at the end of a run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Live counters, readable from other threads for the progress line and stepped scenarios.
pub struct Live {
    pub connected: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub gap_notices: AtomicU64,
    pub reconnects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Messages covered by `gap` notices, all connections.
    pub announced: AtomicU64,
    /// Holes no `gap` announced, healthy connections, so far.
    pub unannounced: AtomicU64,
    /// Messages published per topic during the run, given before the clients stop: the tail
    /// check then counts from what was published, not only from what other clients saw.
    pub published: Mutex<Option<Vec<u64>>>,
    /// Kernel thread id of each reader thread (for its CPU time in /proc; 0 until started).
    pub tids: Vec<AtomicU64>,
    /// Per reader thread, its share of [`Live::tail_pending`] (`u64::MAX` until counted).
    pending: Vec<AtomicU64>,
    /// Per topic, the lowest sequence any connection's first `ack` reported, of all reader
    /// threads: the topic's sequence before the run published anything.
    base: Mutex<Vec<Option<u64>>>,
    /// Slow connections read at their limited rate while set; cleared to let them drain.
    pub throttle_slow: AtomicBool,
    /// Latency (µs) recorded since the last [`Live::take_interval`], merged in every 200 ms.
    interval: Mutex<Histogram<u64>>,
}

impl Default for Live {
    /// One reader thread.
    fn default() -> Self {
        Live::new(1)
    }
}

impl Live {
    /// Counters for `threads` reader threads (at least one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        Live {
            connected: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            gap_notices: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            announced: AtomicU64::new(0),
            unannounced: AtomicU64::new(0),
            published: Mutex::new(None),
            tids: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            pending: (0..threads).map(|_| AtomicU64::new(u64::MAX)).collect(),
            base: Mutex::new(Vec::new()),
            throttle_slow: AtomicBool::new(true),
            interval: Mutex::new(latency_histogram()),
        }
    }

    /// Once `published` is given: subscriptions of open connections that have not yet
    /// reached their topic's last published message (delivered, or announced by a `gap`),
    /// all reader threads together. `u64::MAX` until every thread has counted once. The
    /// drain waits for 0: every stream seen to its end.
    pub fn tail_pending(&self) -> u64 {
        let mut sum = 0u64;
        for p in &self.pending {
            let v = p.load(Ordering::Relaxed);
            if v == u64::MAX {
                return u64::MAX;
            }
            sum += v;
        }
        sum
    }

    /// Notes what a connection's first `ack` said of its topics (`(topic, next expected)`):
    /// each topic's base is the lowest `next - 1` seen by any reader.
    pub(crate) fn note_base(&self, topics: usize, subs: &[(u32, u64)]) {
        let mut base = self.base.lock().expect("not poisoned");
        if base.len() < topics {
            base.resize(topics, None);
        }
        for &(t, next) in subs {
            if next > 0 {
                let b = &mut base[t as usize];
                *b = Some(b.map_or(next - 1, |b| b.min(next - 1)));
            }
        }
    }

    /// Per topic, its sequence before the run (`None` where no `ack` said it yet).
    pub fn base(&self) -> Vec<Option<u64>> {
        self.base.lock().expect("not poisoned").clone()
    }

    /// Reader thread `reader` still waits for `n` subscriptions to reach their end.
    pub(crate) fn set_pending(&self, reader: usize, n: u64) {
        self.pending[reader].store(n, Ordering::Relaxed);
    }

    /// Adds a reader's latency since its last hand-over (every 200 ms).
    pub(crate) fn add_interval(&self, h: &Histogram<u64>) {
        let _ = self.interval.lock().expect("not poisoned").add(h);
    }

    /// The latency recorded since the previous call (lags the clients by up to 200 ms).
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut h = self.interval.lock().expect("not poisoned");
        let out = h.clone();
        h.reset();
        out
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_base_is_the_lowest_any_reader_acked() {
        let live = Live::new(2);
        live.note_base(3, &[(0, 5), (1, 0)]);
        live.note_base(3, &[(0, 3)]);
        live.note_base(3, &[(0, 9), (2, 1)]);
        assert_eq!(live.base(), [Some(2), None, Some(0)]);
    }
}

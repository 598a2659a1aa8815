//! The dispatcher's history and recovery: the `[recovery]` settings, the node's epoch, each
//! topic's held frames, the answers to a recovering subscribe, and snapshot requests to
//! publishers (docs/protocol.md, "Recovery"). Dispatcher thread only. Data path:
//! publisher -> dispatcher (**history**) -> ring -> shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver};
use serde::Deserialize;

use corecast_shards::ring::{RecoverItem, RecoveredItem, Start};

use super::{Dispatcher, SnapshotRequestFn, Source, TopicState};

/// The `[recovery]` section: history and resume (docs/protocol.md, "Recovery").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryConfig {
    /// Most messages a resume replays (`recovery_max_messages`); a resume that missed more is
    /// answered `"recovered":false`. Default 10000 (a minute of a topic at 100 msgs/s, and
    /// more).
    pub max_messages: u64,
    /// How long a subscriber of a snapshot topic waits for a snapshot before it is told with
    /// a `gap` of reason `no_snapshot` (it keeps waiting), ms. Default 5000.
    pub snapshot_wait_ms: u64,
    /// How often a snapshot is asked again of its publisher while someone waits, ms.
    /// Default 1000.
    pub snapshot_request_interval_ms: u64,
    /// Memory of history kept over all topics, bytes: each held message counts its frame
    /// plus 224 bytes of overhead (allocation, bookkeeping, as measured), so this bounds the
    /// process's memory for history. Past it the oldest history goes first. 0 keeps no history.
    /// Default 268435456 (256 MiB).
    pub history_max_bytes: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            max_messages: 10_000,
            snapshot_wait_ms: 5_000,
            snapshot_request_interval_ms: 1_000,
            history_max_bytes: 256 << 20,
        }
    }
}

impl RecoveryConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("snapshot_wait_ms", self.snapshot_wait_ms),
            (
                "snapshot_request_interval_ms",
                self.snapshot_request_interval_ms,
            ),
        ] {
            if v == 0 {
                return Err(format!("recovery.{name} must be greater than 0"));
            }
        }
        Ok(())
    }
}

/// A new epoch: 64 random bits from the kernel (`/dev/urandom`), as 16 hex digits. Falls back
/// to the clock and process id mixed if the kernel's source cannot be read.
pub fn new_epoch() -> Arc<str> {
    use std::io::Read;
    let mut bits = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bits));
    let n = match read {
        Ok(()) => u64::from_le_bytes(bits),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t.rotate_left(17) ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
        }
    };
    Arc::from(format!("{n:016x}"))
}

/// Memory a held frame costs beyond its bytes, as measured: 100 topics of 10,000 held
/// messages of ~90-byte frames took 316 MB of RSS over an empty server, ~316 bytes each. The
/// rest is the frame's allocation slack and shared header, its `Held` slot and its
/// `history_order` entry, with the growth slack of both queues.
const HELD_OVERHEAD: usize = 224;

/// What one held frame counts against `recovery.history_max_bytes`.
pub(super) fn held_cost(bytes: &Bytes) -> usize {
    bytes.len() + HELD_OVERHEAD
}

/// One frame of a topic's history.
pub(super) struct Held {
    pub(super) seq: u64,
    pub(super) bytes: Bytes,
    pub(super) at: Instant,
}

impl TopicState {
    /// Trims the oldest history past the namespace's count and age bounds (age as of `now`).
    /// Returns the cost (`held_cost`) and number of the frames trimmed.
    pub(super) fn trim_own_bounds(&mut self, now: Instant) -> (usize, usize) {
        let max_age = std::time::Duration::from_millis(self.rules.history_max_age_ms);
        let (mut cost, mut count) = (0, 0);
        while let Some(front) = self.history.front() {
            let over = self.history.len() > self.rules.history_max_messages
                || now.saturating_duration_since(front.at) > max_age;
            if !over {
                break;
            }
            cost += held_cost(&front.bytes);
            count += 1;
            self.history.pop_front();
        }
        (cost, count)
    }

    /// Index in `history` of `seq`, if held.
    fn held_at(&self, seq: u64) -> Option<usize> {
        let first = self.history.front()?.seq;
        (seq >= first && seq <= self.seq).then(|| (seq - first) as usize)
    }
}

impl Dispatcher {
    /// Where the in-process publisher's snapshot requests go (shared with the server).
    pub(crate) fn set_snapshot_requests(
        &mut self,
        to: Arc<std::sync::Mutex<Option<SnapshotRequestFn>>>,
    ) {
        self.on_snapshot_request = to;
    }

    /// A new TCP publisher: its number, its outbox, and what wakes its task when the outbox
    /// has lines.
    pub(crate) fn register_ingest(&mut self) -> (Source, Rc<RefCell<Vec<u8>>>, LocalReceiver<()>) {
        let n = self.next_ingest;
        self.next_ingest += 1;
        let outbox = Rc::new(RefCell::new(Vec::new()));
        let (kick, kicked) = local_channel::new_unbounded();
        self.ingest_out.insert(n, (outbox.clone(), kick));
        (Source::Ingest(n), outbox, kicked)
    }

    /// A TCP publisher is gone.
    pub(crate) fn unregister_ingest(&mut self, source: Source) {
        if let Source::Ingest(n) = source {
            self.ingest_out.remove(&n);
        }
    }

    /// Asks for a snapshot of `topic` (a subscriber waits for one), at most once per
    /// `recovery.snapshot_request_interval_ms`: of the TCP publisher that sent its newest
    /// snapshot, else of the one that sent its newest message, else of the in-process
    /// publisher's callback. A TCP publisher gets `{"op":"snapshot_request","topic":T}`.
    pub(crate) fn request_snapshot(&mut self, topic: &str, now: Instant) {
        let every = std::time::Duration::from_millis(self.recovery.snapshot_request_interval_ms);
        let Some(s) = self.topics.get_mut(topic) else {
            return;
        };
        if s.requested_at
            .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return;
        }
        s.requested_at = Some(now);
        self.stats.snapshot_requests += 1;
        let outbox = |src: Source| match src {
            Source::Ingest(n) => self.ingest_out.get(&n),
            Source::InProcess | Source::System => None,
        };
        let to = outbox(s.snapshot_from).or_else(|| outbox(s.last_from));
        match to {
            // A publisher that does not read its socket: its outbox stops growing at 64 KiB
            // (its task blocks in the write, as with error lines).
            Some((out, _)) if out.borrow().len() >= 64 << 10 => {}
            Some((out, kick)) => {
                let line = simd_json::json!({"op": "snapshot_request", "topic": topic});
                let mut out = out.borrow_mut();
                out.extend_from_slice(simd_json::prelude::Writable::encode(&line).as_bytes());
                out.push(b'\n');
                let _ = kick.try_send(());
            }
            None => {
                let f = self
                    .on_snapshot_request
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(f) = f {
                    f(topic);
                }
            }
        }
    }

    /// Answers one topic of a recovering subscribe (the shard already receives the topic's
    /// frames: it asks only once the subscription is live, so the answer's place in its ring
    /// is where the subscriber joins). A resume whose epoch matches, at or below the head,
    /// missing at most `recovery.max_messages` that are all held, gets them; otherwise
    /// `recovered: false` and the plain answer: for a snapshot topic the newest held snapshot
    /// and every message after it (or `waiting` when none is held), for a stream topic
    /// nothing (`start: next`). Frames are shared, not copied.
    pub(super) fn recover(&mut self, item: &RecoverItem) -> RecoveredItem {
        // History older than the namespace's age bound goes first, even on a quiet topic.
        if let Some(s) = self.topics.get_mut(&*item.topic) {
            let (cost, count) = s.trim_own_bounds(Instant::now());
            self.history_bytes -= cost;
            self.history_len -= count;
        }
        let state = self.topics.get(&*item.topic);
        let head = state.map_or(0, |s| s.seq);
        let frames_from = |s: &TopicState, first: u64| -> Vec<Bytes> {
            s.held_at(first).map_or_else(Vec::new, |at| {
                s.history.range(at..).map(|h| h.bytes.clone()).collect()
            })
        };
        let mut recovered = None;
        if let Some((epoch, since)) = &item.since {
            let missed = head.saturating_sub(*since);
            let ok = **epoch == *self.epoch
                && *since <= head
                && missed <= self.recovery.max_messages
                && (missed == 0 || state.is_some_and(|s| s.held_at(since + 1).is_some()));
            if ok {
                self.stats.recovered += 1;
                let frames = match state {
                    Some(s) if missed > 0 => frames_from(s, since + 1),
                    _ => Vec::new(),
                };
                return RecoveredItem {
                    seq: *since,
                    head,
                    recovered: Some(true),
                    start: Start::Next,
                    waiting: false,
                    frames,
                };
            }
            self.stats.not_recovered += 1;
            recovered = Some(false);
        }
        if !item.snapshot {
            return RecoveredItem {
                seq: head,
                head,
                recovered,
                start: Start::Next,
                waiting: false,
                frames: Vec::new(),
            };
        }
        let held = state.filter(|s| s.last_snapshot > 0 && s.held_at(s.last_snapshot).is_some());
        match held {
            Some(s) => RecoveredItem {
                seq: head,
                head,
                recovered,
                start: Start::Snapshot,
                waiting: false,
                frames: frames_from(s, s.last_snapshot),
            },
            None => RecoveredItem {
                seq: head,
                head,
                recovered,
                start: Start::Snapshot,
                waiting: true,
                frames: Vec::new(),
            },
        }
    }

    /// Trims the oldest history over all topics while it holds more than
    /// `recovery.history_max_bytes`; compacts `history_order` when most of it is stale.
    pub(super) fn trim_history(&mut self) {
        while self.history_bytes > self.recovery.history_max_bytes {
            let Some((id, seq)) = self.history_order.pop_front() else {
                break;
            };
            let Some(s) = self
                .by_id
                .get(id.0 as usize)
                .and_then(|name| self.topics.get_mut(name))
            else {
                continue;
            };
            if s.history.front().is_some_and(|h| h.seq == seq) {
                if let Some(h) = s.history.pop_front() {
                    self.history_bytes -= held_cost(&h.bytes);
                    self.history_len -= 1;
                }
            }
        }
        if self.history_order.len() > 2 * self.history_len + 1024 {
            let (topics, by_id) = (&self.topics, &self.by_id);
            self.history_order.retain(|(id, seq)| {
                by_id
                    .get(id.0 as usize)
                    .and_then(|name| topics.get(name))
                    .and_then(|s| s.history.front())
                    .is_some_and(|front| front.seq <= *seq)
            });
        }
    }
}

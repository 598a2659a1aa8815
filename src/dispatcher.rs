//! The dispatcher: one core that sequences every topic, encodes each message's WebSocket frame
//! once, and pushes it into the rings of the shards that have subscribers for the topic.
//! Dispatcher thread only (`!Send`).
//!
//! Routing state is a per-topic bitmask of shards: a shard's bit is set while it has at least
//! one subscriber for the topic or for a pattern covering it. Shards report their first and
//! last subscriber (ring::ControlMsg); the reply to a subscribe travels on the same ring as the
//! frames, so the shard knows exactly which sequence its subscribers start after.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use serde::Deserialize;

use corecast_shards::namespace::{Namespaces, Rules};
use corecast_shards::protocol;
use corecast_shards::ring::{
    ControlMsg, Frame, Interest, PushError, RecoveredItem, RingSender, ShardMsg, TopicId,
};
use corecast_shards::topic::{covering_prefixes, NameIndex};

use crate::publisher::{Event, PublishError};

mod recovery;
use recovery::{held_cost, Held};
pub use recovery::{new_epoch, RecoveryConfig};

/// Most shards one dispatcher routes to (the width of the routing bitmask).
pub const MAX_SHARDS: usize = 64;

/// Dispatcher settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Capacity of each dispatcher -> shard ring, messages (allocated whole at start, about
    /// 100 bytes each). Default 8192.
    pub ring_capacity: usize,
    /// Messages held for a shard whose ring is full before the oldest frames are dropped
    /// (the shard announces the hole as a `gap`). Default 262144.
    pub backlog_limit: usize,
    /// Published topics tracked at most; publishing a new topic past it is refused
    /// (`topic_limit`). Only publishing adds topics: a subscription to a topic nobody published
    /// takes no slot. Default 100000; at most 4294967295 (a topic's id on the node is 32 bits,
    /// see `corecast_shards::ring::TopicId`).
    pub max_topics: usize,
    /// Longest ingest line, bytes. Default 1048576.
    pub max_line_bytes: usize,
    /// Capacity of the in-process publisher queue, events (allocated whole at start, about
    /// 90 bytes each). Default 8192.
    pub publisher_queue: usize,
    /// How often a one-line summary is printed to stderr, ms; 0 never. Default 10000.
    pub summary_interval_ms: u64,
    /// Key every TCP publisher sends as its first line (compared in constant time); a wrong
    /// or missing key gets an `unauthorized` error line and the connection is closed. Required
    /// when `server.ingest` is not a loopback address. Default unset (no key asked).
    pub publisher_key: Option<corecast_shards::auth::Secret>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            ring_capacity: corecast_shards::ring::DEFAULT_RING_CAPACITY,
            backlog_limit: 262_144,
            max_topics: 100_000,
            max_line_bytes: 1 << 20,
            publisher_queue: 8_192,
            summary_interval_ms: 10_000,
            publisher_key: None,
        }
    }
}

impl DispatcherConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("ring_capacity", self.ring_capacity),
            ("backlog_limit", self.backlog_limit),
            ("max_topics", self.max_topics),
            ("max_line_bytes", self.max_line_bytes),
            ("publisher_queue", self.publisher_queue),
        ] {
            if v == 0 {
                return Err(format!("dispatcher.{name} must be greater than 0"));
            }
        }
        if u32::try_from(self.max_topics).is_err() {
            return Err(format!(
                "dispatcher.max_topics must be at most {} (topic ids are 32 bits)",
                u32::MAX
            ));
        }
        Ok(())
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct TopicState {
    name: Arc<str>,
    /// Its number, given at its first publish (the count of topics before it).
    id: TopicId,
    /// Last sequence assigned; 0 before the first message.
    seq: u64,
    /// Shards subscribed to this exact topic.
    exact: u64,
    /// Shards to send its frames to: `exact` plus shards with a covering pattern.
    routes: u64,
    /// Its namespace's rules.
    rules: Rules,
    /// Its recent frames, oldest first, contiguous up to `seq`.
    history: VecDeque<Held>,
    /// Sequence of its newest snapshot (held or not); 0: none in this epoch.
    last_snapshot: u64,
    /// Who sent its newest snapshot, and its newest message.
    snapshot_from: Source,
    last_from: Source,
    /// When a snapshot was last asked for.
    requested_at: Option<Instant>,
}

/// A TCP publisher's outbox (lines for it) and the signal that wakes its task to write them.
type IngestOut = (Rc<RefCell<Vec<u8>>>, LocalSender<()>);

/// Where a published message came from: a TCP ingest connection (by its number) or the
/// in-process [`crate::publisher::Publisher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    InProcess,
    Ingest(u64),
    /// The server itself (the admin thread's `_sys.stats`): the only source of reserved
    /// `_sys.` topics, and kept out of the figures it publishes.
    System,
}

/// Called on the dispatcher's thread with a topic's name when a subscriber waits for a
/// snapshot that the in-process publisher sent (or would send): publish one with
/// [`crate::publisher::Publisher::publish_snapshot`]. Keep it short; it must not block.
pub type SnapshotRequestFn = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// The dispatcher's side of one shard's ring. Messages go straight into the ring while it has
/// room; otherwise they wait, in order, in `backlog`, which a pump task drains.
struct RingOut {
    tx: Rc<RingSender<ShardMsg>>,
    backlog: Rc<RefCell<Backlog>>,
    kick: LocalSender<()>,
}

/// Messages for one shard that did not fit in its ring, in order.
#[derive(Default)]
struct Backlog {
    queue: VecDeque<ShardMsg>,
    /// The pump is sending from `queue` (a message may be in flight outside it); new messages
    /// must queue behind it to keep the order.
    pumping: bool,
}

/// Counters of the dispatcher, reported in the summary.
#[derive(Debug, Clone, Default)]
pub struct DispatcherStats {
    /// Events accepted and sequenced (the server's own `_sys.` figures left out).
    pub published: u64,
    /// Ingest lines refused.
    pub rejected_lines: u64,
    /// In-process events refused after validation (topic limit).
    pub rejected_events: u64,
    /// Frames pushed into rings (one per shard routed to).
    pub ring_pushes: u64,
    /// Times a ring was full and messages went to the backlog.
    pub ring_full: u64,
    /// Frames dropped from a full backlog (each announced by the shard as a gap).
    pub backlog_dropped: u64,
    /// Resumes answered with the missed messages.
    pub recovered: u64,
    /// Resumes answered `"recovered":false`.
    pub not_recovered: u64,
    /// Snapshots asked of publishers.
    pub snapshot_requests: u64,
    /// Published topics tracked (the reserved `_sys.` topics left out).
    pub topics: u64,
    /// Some shard has a subscriber of a reserved `_sys.` topic (the dashboard is open).
    pub system_subscribed: bool,
    /// Bytes of history held (frames and their overhead, as `recovery.history_max_bytes`
    /// counts them), as of the latest report.
    pub history_bytes: u64,
    /// `backlog_dropped` by shard (index = shard).
    pub backlog_dropped_by_shard: Vec<u64>,
    /// Refused ingest lines and in-process events by error code, in the order of
    /// [`crate::publisher::ERROR_CODES`].
    pub ingest_errors: [u64; crate::publisher::ERROR_CODES.len()],
}

impl DispatcherStats {
    /// Counts a refused line or event under its error code.
    pub fn count_error(&mut self, code: &str) {
        if let Some(i) = crate::publisher::ERROR_CODES
            .iter()
            .position(|c| *c == code)
        {
            self.ingest_errors[i] += 1;
        }
    }
}

/// Sequencing, framing and routing state. Dispatcher thread only.
pub struct Dispatcher {
    /// Published topics; grows only by publishing, up to `max_topics`.
    topics: HashMap<Arc<str>, TopicState>,
    /// The published topics' names in order: a pattern's subscribe or unsubscribe visits the
    /// topics under it, not every topic.
    names: NameIndex,
    /// Shards subscribed to topics nobody has published yet (bitmask per name). Bounded by
    /// the clients' own budgets (`max_subscriptions` per connection); moved into `topics` by
    /// the first publish.
    unpublished: HashMap<Arc<str>, u64>,
    /// Shards subscribed to each pattern, by prefix (without `.*`).
    prefixes: HashMap<Arc<str>, u64>,
    rings: Vec<RingOut>,
    config: DispatcherConfig,
    recovery: RecoveryConfig,
    namespaces: Arc<Namespaces>,
    /// The node's epoch: every topic's sequence lives in it.
    epoch: Arc<str>,
    /// Bytes of every topic's history.
    history_bytes: usize,
    /// How many backlog-overflow log lines may be written (10 a second).
    drop_log: corecast_shards::log::Budget,
    /// Every held frame's topic and sequence in publish order, for trimming the oldest
    /// history first when `history_max_bytes` is reached; entries whose frame a topic's own
    /// bounds already trimmed are skipped (and compacted away).
    history_order: VecDeque<(TopicId, u64)>,
    /// Frames held over all topics.
    history_len: usize,
    /// Topic names by id, for `history_order`.
    by_id: Vec<Arc<str>>,
    /// The reserved `_sys.` topics published (by [`Source::System`] only).
    system: Vec<Arc<str>>,
    /// Each TCP publisher's outbox and the signal that wakes its task to write it, by its
    /// number.
    ingest_out: HashMap<u64, IngestOut>,
    next_ingest: u64,
    /// The in-process publisher's snapshot requests.
    on_snapshot_request: Arc<std::sync::Mutex<Option<SnapshotRequestFn>>>,
    pub stats: DispatcherStats,
    /// Bumped by every publish and control message; the napper watches it.
    pub activity: Rc<corecast_shards::executor::Activity>,
}

/// One published topic, for `/topics`.
#[derive(Debug, Clone)]
pub struct TopicRow {
    pub name: Arc<str>,
    /// Last sequence assigned.
    pub seq: u64,
    /// Messages of history held.
    pub history_messages: usize,
    /// Bytes of those messages' frames.
    pub history_bytes: usize,
}

impl Dispatcher {
    /// Every published topic's row (the admin endpoint asked: `/topics`).
    pub fn topic_rows(&self) -> Vec<TopicRow> {
        self.topics
            .values()
            .filter(|t| !corecast_shards::topic::is_system(&t.name))
            .map(|t| TopicRow {
                name: t.name.clone(),
                seq: t.seq,
                history_messages: t.history.len(),
                history_bytes: t.history.iter().map(|h| h.bytes.len()).sum(),
            })
            .collect()
    }

    /// True while some shard routes a reserved `_sys.` topic (someone reads the server's
    /// figures).
    /// Two hash lookups and a look at the few reserved topics published: it runs at every
    /// shard report.
    pub fn system_subscribed(&self) -> bool {
        use corecast_shards::topic::{SYSTEM_PREFIX, SYSTEM_STATS};
        // Before its first sample the topic's subscribers wait among the unpublished names.
        self.unpublished.contains_key(SYSTEM_STATS)
            || self.prefixes.contains_key(SYSTEM_PREFIX)
            || self
                .system
                .iter()
                .any(|n| self.topics.get(n).is_some_and(|t| t.routes != 0))
    }

    /// Bytes of history held now (see [`DispatcherStats::history_bytes`]).
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// A dispatcher over connected rings; returns the pump tasks' inputs to spawn.
    pub(crate) fn new(
        config: DispatcherConfig,
        recovery: RecoveryConfig,
        namespaces: Arc<Namespaces>,
        epoch: Arc<str>,
        rings: Vec<RingSender<ShardMsg>>,
    ) -> (Dispatcher, Vec<Pump>) {
        let mut outs = Vec::with_capacity(rings.len());
        let mut pumps = Vec::with_capacity(rings.len());
        for tx in rings {
            let tx = Rc::new(tx);
            let backlog = Rc::new(RefCell::new(Backlog::default()));
            let (kick, kicked) = local_channel::new_unbounded();
            pumps.push(Pump {
                tx: tx.clone(),
                backlog: backlog.clone(),
                kicked,
            });
            outs.push(RingOut { tx, backlog, kick });
        }
        let d = Dispatcher {
            topics: HashMap::new(),
            names: NameIndex::default(),
            unpublished: HashMap::new(),
            prefixes: HashMap::new(),
            rings: outs,
            config,
            recovery,
            namespaces,
            epoch,
            history_bytes: 0,
            drop_log: Default::default(),
            history_order: VecDeque::new(),
            history_len: 0,
            by_id: Vec::new(),
            system: Vec::new(),
            ingest_out: HashMap::new(),
            next_ingest: 1,
            on_snapshot_request: Arc::default(),
            stats: DispatcherStats::default(),
            activity: Rc::default(),
        };
        (d, pumps)
    }

    pub fn config(&self) -> &DispatcherConfig {
        &self.config
    }

    /// Sequences one event, encodes its frame once, and pushes it to every routed shard.
    /// Returns its sequence. See [`Dispatcher::publish_parts`].
    pub fn publish(&mut self, event: Event) -> Result<u64, PublishError> {
        let from = if event.system {
            Source::System
        } else {
            Source::InProcess
        };
        self.publish_parts(
            &event.topic,
            &event.data,
            event.ts,
            event.ingest_at,
            event.snapshot,
            from,
        )
    }

    /// Sequences one message of `topic` (a valid name) whose `data` is JSON text already
    /// validated, encodes its frame once (a `snapshot` frame when `snapshot`), keeps it in the
    /// topic's history and pushes it to every routed shard. `ts`: the publisher's µs since the
    /// epoch, or now. Returns its sequence; refuses a new topic past `max_topics`
    /// (`topic_limit`) and a snapshot on a topic outside every snapshot namespace
    /// (`not_snapshot_topic`), and, on a snapshot topic whose newest snapshot (in this epoch)
    /// another source sent, a delta from `from` (`not_owner`: another publisher's deltas would
    /// not apply to that snapshot) until `from` sends a snapshot. A reserved `_sys.` topic is
    /// refused (`reserved_topic`) but from [`Source::System`], whose messages keep no history,
    /// take no topic slot and are left out of the counters. Cost: a hash lookup, one
    /// frame allocation (one copy of `data`) unless the topic keeps no history and no shard is
    /// routed, and a ring push per routed shard.
    pub fn publish_parts(
        &mut self,
        topic: &str,
        data: &[u8],
        ts: Option<u64>,
        ingest_at: Instant,
        snapshot: bool,
        from: Source,
    ) -> Result<u64, PublishError> {
        self.activity.bump();
        let system = from == Source::System;
        if corecast_shards::topic::is_system(topic) != system {
            return Err(PublishError::ReservedTopic);
        }
        let max = self.config.max_topics;
        if snapshot
            && !self
                .topics
                .get(topic)
                .map_or_else(|| self.namespaces.rules(topic), |s| s.rules)
                .snapshots
        {
            return Err(PublishError::NotSnapshotTopic);
        }
        let state = match self.topics.get_mut(topic) {
            Some(s) => s,
            None => {
                if self.topics.len() - self.system.len() >= max && !system {
                    return Err(PublishError::TopicLimit(max));
                }
                let (name, exact) = match self.unpublished.remove_entry(topic) {
                    Some((name, shards)) => (name, shards),
                    None => (Arc::from(topic), 0),
                };
                let routes = exact | pattern_routes(&self.prefixes, &name);
                // `max_topics` is at most u32::MAX (validated), so the count fits.
                let id = TopicId(self.topics.len() as u32);
                self.names.insert(name.clone());
                self.by_id.push(name.clone());
                if system {
                    self.system.push(name.clone());
                }
                self.stats.topics = (self.by_id.len() - self.system.len()) as u64;
                let rules = self.namespaces.rules(&name);
                self.topics.entry(name.clone()).or_insert(TopicState {
                    name,
                    id,
                    seq: 0,
                    exact,
                    routes,
                    rules,
                    history: VecDeque::new(),
                    last_snapshot: 0,
                    snapshot_from: Source::InProcess,
                    last_from: Source::InProcess,
                    requested_at: None,
                })
            }
        };
        if !snapshot
            && state.rules.snapshots
            && state.last_snapshot > 0
            && state.snapshot_from != from
        {
            return Err(PublishError::NotOwner);
        }
        state.seq += 1;
        let seq = state.seq;
        state.last_from = from;
        if snapshot {
            state.last_snapshot = seq;
            state.snapshot_from = from;
            state.requested_at = None;
        }
        if !system {
            self.stats.published += 1;
        }
        let routes = state.routes;
        let keep =
            !system && state.rules.history_max_messages > 0 && self.recovery.history_max_bytes > 0;
        if routes == 0 && !keep {
            return Ok(seq);
        }
        let ts = ts.unwrap_or_else(now_us);
        let bytes = if snapshot {
            protocol::snapshot(&state.name, seq, &self.epoch, ts, data)
        } else {
            protocol::msg(&state.name, seq, ts, data)
        };
        let topic = state.id;
        if keep {
            self.history_bytes += held_cost(&bytes);
            self.history_len += 1;
            state.history.push_back(Held {
                seq,
                bytes: bytes.clone(),
                at: ingest_at,
            });
            let (cost, count) = state.trim_own_bounds(ingest_at);
            self.history_bytes -= cost;
            self.history_len -= count;
            self.history_order.push_back((topic, seq));
            self.trim_history();
        }
        let mut mask = routes;
        while mask != 0 {
            let shard = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let frame = Frame {
                topic,
                seq,
                bytes: bytes.clone(),
                ingest_at,
                snapshot,
                system,
            };
            self.push(
                shard,
                ShardMsg::Frame {
                    frame,
                    sent_at: Instant::now(),
                },
            );
        }
        Ok(seq)
    }

    /// Applies a shard's subscribe or unsubscribe, replying on its ring when asked.
    pub fn on_control(&mut self, msg: ControlMsg) {
        self.activity.bump();
        match msg {
            ControlMsg::Subscribe {
                shard,
                interest,
                nonce,
            } => {
                let bit = 1u64 << shard;
                let seq = match &interest {
                    Interest::Topic(t) => self.subscribe_topic(t, bit),
                    Interest::Prefix(p) => {
                        self.subscribe_prefix(p, bit);
                        0
                    }
                };
                self.push(
                    shard,
                    ShardMsg::Subscribed {
                        interest,
                        nonce,
                        seq,
                    },
                );
            }
            ControlMsg::Unsubscribe { shard, interest } => {
                let bit = 1u64 << shard;
                match &interest {
                    Interest::Topic(t) => {
                        let prefixes = &self.prefixes;
                        if let Some(s) = self.topics.get_mut(&**t) {
                            s.exact &= !bit;
                            s.routes = s.exact | pattern_routes(prefixes, &s.name);
                        } else if let Some(shards) = self.unpublished.get_mut(&**t) {
                            *shards &= !bit;
                            if *shards == 0 {
                                self.unpublished.remove(&**t);
                            }
                        }
                    }
                    Interest::Prefix(p) => {
                        if let Some(shards) = self.prefixes.get_mut(p) {
                            *shards &= !bit;
                            if *shards == 0 {
                                self.prefixes.remove(p);
                            }
                        }
                        let prefixes = &self.prefixes;
                        for name in self.names.under(p) {
                            if let Some(s) = self.topics.get_mut(&name) {
                                s.routes = s.exact | pattern_routes(prefixes, &s.name);
                            }
                        }
                    }
                }
            }
            ControlMsg::Recover {
                shard,
                nonce,
                items,
            } => {
                let answers: Vec<RecoveredItem> = items.iter().map(|i| self.recover(i)).collect();
                // A subscriber that waits for a snapshot: ask the publisher for one.
                let now = Instant::now();
                for (item, answer) in items.iter().zip(&answers) {
                    if answer.waiting {
                        self.request_snapshot(&item.topic, now);
                    }
                }
                self.push(
                    shard,
                    ShardMsg::Recovered {
                        nonce,
                        items: answers,
                    },
                );
            }
            ControlMsg::SnapshotWanted { topics, .. } => {
                let now = Instant::now();
                for t in topics {
                    self.request_snapshot(&t, now);
                }
            }
            ControlMsg::Report(_) | ControlMsg::Goodbye { .. } => {}
        }
    }

    /// Routes `topic` to the shard `bit`; returns its current sequence (0 when unpublished).
    /// Never refused, and never takes a topic slot: an unpublished topic waits in
    /// `unpublished` until its first publish.
    fn subscribe_topic(&mut self, topic: &Arc<str>, bit: u64) -> u64 {
        if let Some(s) = self.topics.get_mut(&**topic) {
            s.exact |= bit;
            s.routes |= bit;
            return s.seq;
        }
        *self.unpublished.entry(topic.clone()).or_insert(0) |= bit;
        0
    }

    fn subscribe_prefix(&mut self, prefix: &Arc<str>, bit: u64) {
        *self.prefixes.entry(prefix.clone()).or_insert(0) |= bit;
        for name in self.names.under(prefix) {
            if let Some(s) = self.topics.get_mut(&name) {
                s.routes |= bit;
            }
        }
    }

    /// Pushes in order: straight into the ring when nothing waits, else behind the backlog.
    fn push(&mut self, shard: usize, msg: ShardMsg) {
        let ring = &self.rings[shard];
        let mut backlog = ring.backlog.borrow_mut();
        let msg = if backlog.queue.is_empty() && !backlog.pumping {
            match ring.tx.try_push(msg) {
                Ok(()) => {
                    self.stats.ring_pushes += 1;
                    return;
                }
                Err(PushError::Full(m)) => {
                    self.stats.ring_full += 1;
                    m
                }
                // The shard is gone (shutting down): nothing to deliver to.
                Err(PushError::Closed(_)) => return,
            }
        } else {
            msg
        };
        if backlog.queue.len() >= self.config.backlog_limit {
            let oldest_frame = backlog
                .queue
                .iter()
                .position(|m| matches!(m, ShardMsg::Frame { .. }));
            if let Some(pos) = oldest_frame {
                backlog.queue.remove(pos);
                self.stats.backlog_dropped += 1;
                let by_shard = &mut self.stats.backlog_dropped_by_shard;
                if by_shard.len() <= shard {
                    by_shard.resize(shard + 1, 0);
                }
                by_shard[shard] += 1;
                if let Some(suppressed) = self.drop_log.allow(Instant::now()) {
                    tracing::warn!(
                        shard,
                        backlog = backlog.queue.len(),
                        suppressed,
                        "a shard's ring and backlog are full: its oldest frame dropped (shard_overflow gap follows)"
                    );
                }
            }
        }
        backlog.queue.push_back(msg);
        if !backlog.pumping {
            backlog.pumping = true;
            let _ = ring.kick.try_send(());
        }
    }

    /// Sends `Shutdown` to every shard, behind whatever is queued for it.
    pub fn shutdown_shards(&mut self) {
        for shard in 0..self.rings.len() {
            self.push(shard, ShardMsg::Shutdown);
        }
    }
}

/// Shards with a pattern covering `topic`: one lookup per dot in the topic, whatever the
/// number of patterns.
fn pattern_routes(prefixes: &HashMap<Arc<str>, u64>, topic: &str) -> u64 {
    if prefixes.is_empty() {
        return 0;
    }
    covering_prefixes(topic)
        .filter_map(|p| prefixes.get(p))
        .fold(0, |acc, shards| acc | shards)
}

/// Drains one shard's backlog into its ring, waiting for room. Dispatcher thread.
pub(crate) struct Pump {
    tx: Rc<RingSender<ShardMsg>>,
    backlog: Rc<RefCell<Backlog>>,
    kicked: LocalReceiver<()>,
}

impl Pump {
    pub(crate) async fn run(self) {
        while self.kicked.recv().await.is_some() {
            loop {
                let next = {
                    let mut b = self.backlog.borrow_mut();
                    let next = b.queue.pop_front();
                    if next.is_none() {
                        b.pumping = false;
                    }
                    next
                };
                let Some(msg) = next else { break };
                if self.tx.push(msg).await.is_err() {
                    let mut b = self.backlog.borrow_mut();
                    b.queue.clear();
                    b.pumping = false;
                    break;
                }
            }
        }
    }
}

//! What crosses between the dispatcher core and a shard: any thread (`Send`).
//!
//! Each shard has two single-producer single-consumer rings (glommio `shared_channel`s):
//! dispatcher -> shard carries [`ShardMsg`] in publish order, shard -> dispatcher carries
//! [`ControlMsg`]. Because a subscription reply travels on the same ring as the frames, a shard
//! sees every frame published after its subscription took effect, and none from before.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::metrics::ShardReport;

/// A published message, framed once by the dispatcher and never re-encoded.
///
/// Lives on any thread; a shard wraps it in an `Rc` so each subscriber costs a shard-local
/// reference count, not an atomic shared across cores.
#[derive(Debug)]
pub struct Frame {
    /// Topic the message was published on.
    pub topic: Arc<str>,
    /// Per-topic sequence number, starting at 1, contiguous while the dispatcher runs.
    pub seq: u64,
    /// The complete WebSocket text frame (header + `msg` JSON), ready to write to any client.
    pub bytes: Bytes,
    /// When the dispatcher received the event (for the ingest-to-write histogram).
    pub ingest_at: Instant,
}

/// What a subscription names, owned: a topic or a `prefix.*` pattern (prefix stored without `.*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    /// Exactly one topic.
    Topic(Arc<str>),
    /// Every topic under the prefix.
    Prefix(Arc<str>),
}

/// Why the dispatcher refused a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The dispatcher already tracks `max_topics` topics.
    TopicLimit,
}

/// Dispatcher -> shard, in order.
#[derive(Debug)]
pub enum ShardMsg {
    /// A frame to fan out to the shard's subscribers of `frame.topic`.
    Frame {
        frame: Frame,
        /// When the dispatcher pushed it into the ring (for the ring-hop histogram).
        sent_at: Instant,
    },
    /// Reply to [`ControlMsg::Subscribe`]: from here on the shard receives every frame for it.
    Subscribed {
        interest: Interest,
        /// Echo of the request's nonce, so a stale reply is never taken for a newer request.
        nonce: u64,
        /// The topic's current sequence (0 if nothing was published yet; 0 for a prefix).
        result: Result<u64, Refusal>,
    },
    /// Stop accepting, close every connection with "going away", flush, and exit.
    Shutdown,
}

/// Shard -> dispatcher.
#[derive(Debug)]
pub enum ControlMsg {
    /// The shard has its first subscriber for `interest` and wants its frames.
    Subscribe {
        shard: usize,
        interest: Interest,
        nonce: u64,
    },
    /// The shard's last subscriber for `interest` left.
    Unsubscribe { shard: usize, interest: Interest },
    /// Periodic counters and histograms, merged by the reporter.
    Report(Box<ShardReport>),
    /// The shard finished shutting down; nothing follows on this ring.
    Goodbye { shard: usize },
}

/// Capacity of each dispatcher -> shard ring, in messages, unless configured otherwise.
pub const DEFAULT_RING_CAPACITY: usize = 65_536;

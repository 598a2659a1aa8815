//! What crosses between the dispatcher core and a shard: any thread (`Send`).
//!
//! Each shard has two rings: dispatcher -> shard carries [`ShardMsg`] in publish order,
//! shard -> dispatcher carries [`ControlMsg`]. Because a subscription reply travels on the same
//! ring as the frames, a shard sees every frame published after its subscription took effect,
//! and none from before.
//!
//! A ring is a bounded lock-free queue (crossbeam-channel's array flavour). Producers push
//! without waiting; the consumer, a task on a polling executor, takes everything waiting and,
//! when the ring is empty, looks again after `poll` (a glommio timer, checked on every pass of
//! the executor's polling loop). No cross-thread wake-up is involved: glommio 0.9's
//! (`shared_channel` notifications, foreign wakers, and io_uring readiness of a doorbell
//! socket) were measured here to lose or delay wake-ups by up to seconds on this kernel; see
//! docs/architecture.md, "The ring hop".

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::metrics::ShardReport;

/// A topic's number on this node: given by the dispatcher at the topic's first publish, counting
/// from 0, and never reused while the process runs (the dispatcher never forgets a published
/// topic; it refuses new ones past `max_topics`, which is at most `u32::MAX`). A shard indexes
/// its table by it, so routing a frame hashes no string and touches no counter shared with
/// another core. It never leaves the node: clients see names only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub u32);

/// A published message, framed once by the dispatcher and never re-encoded.
///
/// Lives on any thread; a shard wraps it in an `Rc` so each subscriber costs a shard-local
/// reference count. The one count shared across cores is that of `bytes`, touched once per
/// shard routed to, when the dispatcher pushes the frame and when the shard lets it go.
#[derive(Debug)]
pub struct Frame {
    /// Topic the message was published on. The name is inside `bytes` ([`Frame::name`]).
    pub topic: TopicId,
    /// Per-topic sequence number, starting at 1, contiguous while the dispatcher runs.
    pub seq: u64,
    /// The complete WebSocket text frame (header + `msg` JSON), ready to write to any client.
    pub bytes: Bytes,
    /// When the dispatcher received the event (for the ingest-to-write histogram).
    pub ingest_at: Instant,
}

impl Frame {
    /// The topic's name, read from the frame's own bytes, where [`crate::protocol::msg`] wrote
    /// it. A shard reads it when it first meets a topic id, for a gap notice and after an
    /// unsubscribe; never per subscriber. Linear in the name's length.
    ///
    /// Panics if `bytes` were not made by `protocol::msg` (a frame is built nowhere else).
    pub fn name(&self) -> &str {
        crate::protocol::msg_topic(&self.bytes).expect("a frame's bytes are made by protocol::msg")
    }
}

/// What a subscription names, owned: a topic or a `prefix.*` pattern (prefix stored without `.*`).
/// Ordered topics first, then patterns, each by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interest {
    /// Exactly one topic.
    Topic(Arc<str>),
    /// Every topic under the prefix.
    Prefix(Arc<str>),
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
        /// A subscription is never refused: one to a topic nobody published costs the
        /// dispatcher no topic slot (docs/protocol.md, "Per-client budgets").
        seq: u64,
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

/// The producing end of a ring. Any thread; clone it for more producers.
pub struct RingSender<T> {
    tx: Sender<T>,
}

impl<T> Clone for RingSender<T> {
    fn clone(&self) -> Self {
        RingSender {
            tx: self.tx.clone(),
        }
    }
}

/// The consuming end of a ring. Any thread; used by one consumer.
pub struct RingReceiver<T> {
    rx: Receiver<T>,
}

/// A bounded ring of `capacity` messages.
pub fn ring<T>(capacity: usize) -> (RingSender<T>, RingReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (RingSender { tx }, RingReceiver { rx })
}

/// Every producer of the ring is gone and nothing is left in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Why a push did not happen; the message is handed back.
#[derive(Debug)]
pub enum PushError<T> {
    /// The ring is full.
    Full(T),
    /// The consumer is gone.
    Closed(T),
}

impl<T> RingSender<T> {
    /// Pushes without waiting. Cost: one lock-free enqueue.
    pub fn try_push(&self, msg: T) -> Result<(), PushError<T>> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) => Err(PushError::Full(m)),
            Err(TrySendError::Disconnected(m)) => Err(PushError::Closed(m)),
        }
    }

    /// Pushes from a glommio task, waiting for room (looking again every 50 µs: a full ring is
    /// an overload, not the steady state). Errors only when the consumer is gone.
    pub async fn push(&self, msg: T) -> Result<(), T> {
        let mut msg = msg;
        loop {
            match self.try_push(msg) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(m)) => return Err(m),
                Err(PushError::Full(m)) => {
                    msg = m;
                    glommio::timer::sleep(Duration::from_micros(50)).await;
                }
            }
        }
    }

    /// Pushes from a plain thread, blocking while the ring is full. Errors when the consumer
    /// is gone.
    pub fn push_blocking(&self, msg: T) -> Result<(), T> {
        self.tx.send(msg).map_err(|e| e.into_inner())
    }
}

impl<T> RingReceiver<T> {
    /// Moves up to `max` waiting messages into `out` without waiting. `Err` when every
    /// producer is gone and the ring is empty.
    pub fn try_take(&self, out: &mut Vec<T>, max: usize) -> Result<(), Closed> {
        let limit = out.len() + max;
        while out.len() < limit {
            match self.rx.try_recv() {
                Ok(m) => out.push(m),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(Closed),
            }
        }
        Ok(())
    }

    /// Waits for at least one message and moves up to `max` more into `out`, looking every `poll`
    /// while the ring is empty. Returns false when every producer is gone and nothing is left.
    /// Must run on a glommio executor.
    pub async fn recv_batch(&self, out: &mut Vec<T>, max: usize, poll: Duration) -> bool {
        self.recv_batch_by(out, max, poll, None).await
    }

    /// Like [`RingReceiver::recv_batch`], but gives up at `deadline`: returns with `out`
    /// unchanged (and true) if nothing arrived by then.
    pub async fn recv_batch_until(
        &self,
        out: &mut Vec<T>,
        max: usize,
        poll: Duration,
        deadline: std::time::Instant,
    ) -> bool {
        self.recv_batch_by(out, max, poll, Some(deadline)).await
    }

    async fn recv_batch_by(
        &self,
        out: &mut Vec<T>,
        max: usize,
        poll: Duration,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        let before = out.len();
        loop {
            let closed = self.try_take(out, max).is_err();
            if out.len() > before {
                return true;
            }
            if closed {
                return false;
            }
            let mut pause = poll;
            if let Some(deadline) = deadline {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return true;
                }
                pause = pause.min(deadline - now);
            }
            glommio::timer::sleep(pause).await;
        }
    }

    /// Waits for one message; `None` when every producer is gone.
    pub async fn recv(&self, poll: Duration) -> Option<T> {
        let mut one = Vec::with_capacity(1);
        if self.recv_batch(&mut one, 1, poll).await {
            one.pop()
        } else {
            None
        }
    }
}

/// Frames for unit tests, made as the dispatcher makes them.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Frame, TopicId};
    use std::time::Instant;

    /// The same name gets the same topic id on a thread, in order of first use.
    fn id_of(name: &str) -> TopicId {
        thread_local! {
            static IDS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let i = IDS.with_borrow_mut(|ids| match ids.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                ids.push(name.to_owned());
                ids.len() - 1
            }
        });
        TopicId(i as u32)
    }

    fn msg(name: &str, seq: u64, pad: usize) -> bytes::Bytes {
        let data = format!("\"{}\"", "x".repeat(pad));
        crate::protocol::msg(name, seq, 0, data.as_bytes())
    }

    /// A frame of `name`, exactly `len` bytes long (at least the bare `msg` frame's size,
    /// about 50 bytes), ingested at `at`.
    pub(crate) fn frame_at(name: &str, seq: u64, len: usize, at: Instant) -> Frame {
        let bare = msg(name, seq, 0).len();
        assert!(
            len >= bare,
            "a msg frame of {name} is at least {bare} bytes"
        );
        let mut bytes = msg(name, seq, len - bare);
        // A longer payload may need a longer header (RFC 6455 §5.2).
        if bytes.len() > len {
            bytes = msg(name, seq, len - bare - (bytes.len() - len));
        }
        assert_eq!(bytes.len(), len);
        Frame {
            topic: id_of(name),
            seq,
            bytes,
            ingest_at: at,
        }
    }

    /// The smallest frame of `name`, ingested now.
    pub(crate) fn frame(name: &str, seq: u64) -> Frame {
        Frame {
            topic: id_of(name),
            seq,
            bytes: msg(name, seq, 0),
            ingest_at: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_closed_hand_the_message_back() {
        let (tx, rx) = ring::<u32>(1);
        tx.try_push(1).unwrap();
        assert!(matches!(tx.try_push(2), Err(PushError::Full(2))));
        drop(rx);
        assert!(matches!(tx.try_push(3), Err(PushError::Closed(3))));
    }

    #[test]
    fn consumer_takes_in_order_then_sees_the_end() {
        let (tx, rx) = ring::<u32>(8);
        let producer = std::thread::spawn(move || {
            for i in 0..100 {
                tx.push_blocking(i).unwrap();
            }
        });
        let mut all = Vec::new();
        while rx.try_take(&mut all, 16).is_ok() {
            std::thread::yield_now();
        }
        producer.join().unwrap();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}

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
//! the executor's polling loop). No glommio wake-up is involved: glommio 0.9's
//! (`shared_channel` notifications, foreign wakers, and io_uring readiness of a doorbell
//! socket) were measured here to lose or delay wake-ups by up to seconds on this kernel; see
//! docs/architecture.md, "The ring hop".
//!
//! The one wake-up there is belongs to the idle nap ([`crate::executor::nap_when_idle`]): a
//! consumer whose executor is about to sleep arms the ring's [`Doorbell`], and the next push
//! rings it (an `eventfd` the nap waits on), so a message arriving during a nap ends it at
//! once instead of waiting out the nap. While the consumer is awake a push costs one fence and
//! one load of a flag only the napping consumer writes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
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
    /// A `snapshot` frame (full state of a snapshot topic), not a `msg`.
    pub snapshot: bool,
    /// A frame of a reserved topic ([`crate::topic::is_system`]): delivered like any other,
    /// but kept out of the delivery counters and latency histograms it reports on.
    pub system: bool,
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
    /// Reply to [`ControlMsg::Recover`], one entry per item in the same order: from here on
    /// the shard receives every frame of those topics after each entry's `seq`.
    Recovered {
        nonce: u64,
        items: Vec<RecoveredItem>,
    },
    /// Stop accepting, close every connection with "going away", flush, and exit.
    Shutdown,
}

/// One topic of a subscribe that needs the dispatcher's history: a resume (`since`) or a
/// snapshot topic (`snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverItem {
    pub topic: Arc<str>,
    /// The client's `since`: epoch and the last sequence it holds.
    pub since: Option<(Box<str>, u64)>,
    /// The topic is a snapshot topic: start from its newest snapshot when not recovered.
    pub snapshot: bool,
}

/// Where a subscriber's data of a topic starts (the ack entry's `start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The next frame is `msg` seq+1.
    Next,
    /// The next frame is a `snapshot`, then the `msg`s after it.
    Snapshot,
}

/// The dispatcher's answer for one [`RecoverItem`].
#[derive(Debug, Clone)]
pub struct RecoveredItem {
    /// The ack entry's `seq`: the topic's head (for a recovered resume: `since.seq`).
    pub seq: u64,
    /// The topic's head when the dispatcher answered: the subscriber has everything up to it.
    pub head: u64,
    /// Present when `since` was given: the messages after it are in `frames`.
    pub recovered: Option<bool>,
    pub start: Start,
    /// No usable snapshot is held: the subscriber waits for the next one.
    pub waiting: bool,
    /// Frames to send before any live frame of the topic, in order: the missed `msg`s of a
    /// recovered resume, or a snapshot and the `msg`s after it. Shared, never copied.
    pub frames: Vec<Bytes>,
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
    /// Subscribe with history: route these topics to the shard (like `Subscribe`) and answer
    /// with [`ShardMsg::Recovered`]; for a resume, what was missed; for a snapshot topic, the
    /// newest snapshot and the deltas after it.
    Recover {
        shard: usize,
        nonce: u64,
        items: Vec<RecoverItem>,
    },
    /// The shard's last subscriber for `interest` left.
    Unsubscribe { shard: usize, interest: Interest },
    /// Subscribers on the shard still wait for a snapshot of these topics: ask the
    /// publishers again (sent every `recovery.snapshot_request_interval_ms` while they wait).
    SnapshotWanted { shard: usize, topics: Vec<Arc<str>> },
    /// Periodic counters and histograms, merged by the reporter.
    Report(Box<ShardReport>),
    /// The shard finished shutting down; nothing follows on this ring.
    Goodbye { shard: usize },
}

/// Capacity of each dispatcher -> shard ring, in messages, unless configured otherwise. A ring
/// is allocated whole and touched at start (about 100 bytes a slot: 0.8 MiB here), and it only
/// has to hold a burst until the shard's next round takes up to 4096: past it, messages wait
/// in the dispatcher's backlog (`dispatcher.backlog_limit`), in order, without loss.
pub const DEFAULT_RING_CAPACITY: usize = 8_192;

/// How a producer wakes a consumer that naps: an `eventfd` (Linux, `eventfd(2)`) and a flag
/// saying the consumer sleeps. Any thread.
///
/// The consumer sets the flag, then looks at its ring once more before it sleeps; a producer
/// pushes, then looks at the flag (a sequentially consistent fence on each side between the
/// two), so at least one of them sees the other: a message is never left behind a sleeping
/// consumer for longer than its nap. If the `eventfd` cannot be made (the process is out of
/// descriptors) the doorbell is mute and a nap ends on its timeout, as naps did before.
pub struct Doorbell {
    napping: AtomicBool,
    efd: Option<OwnedFd>,
}

impl Doorbell {
    fn new() -> Doorbell {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        Doorbell {
            napping: AtomicBool::new(false),
            // SAFETY: a valid descriptor, owned by nobody else.
            efd: (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    }

    /// Producer side, after a push: wakes the consumer if it naps. One fence and one load
    /// while it does not; one `write(2)` for the first push of a nap.
    #[inline]
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.napping.load(Ordering::Relaxed) && self.napping.swap(false, Ordering::SeqCst) {
            if let Some(fd) = &self.efd {
                let one = 1u64.to_ne_bytes();
                // A full counter (2^64 - 2 unread rings) cannot happen: a nonzero count is
                // readable, so the next nap sees it and reads it away.
                // SAFETY: writes 8 bytes from a live buffer to our own eventfd.
                let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
            }
        }
    }

    /// Consumer side, before a nap: from here on a push rings.
    fn arm(&self) {
        self.napping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Consumer side, after a nap: quiet again, and the eventfd's count read away if the nap
    /// saw it readable (`rang`). A ring that came after the nap's look stays counted: the next
    /// nap sees it at once and reads it then (one pass for nothing, no ring lost), and a nap
    /// that no push ended costs no `read(2)`.
    fn disarm(&self, rang: bool) {
        self.napping.store(false, Ordering::Relaxed);
        if !rang {
            return;
        }
        if let Some(fd) = &self.efd {
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer; non-blocking.
            let _ = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        }
    }
}

/// The producing end of a ring. Any thread; clone it for more producers.
pub struct RingSender<T> {
    tx: Sender<T>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for RingSender<T> {
    fn clone(&self) -> Self {
        RingSender {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

/// The consuming end of a ring. Any thread; used by one consumer. Dropping it closes the ring
/// for its producers (their pushes fail with [`PushError::Closed`]).
pub struct RingReceiver<T> {
    // The only strong reference: the nap's [`RingWake`] holds a weak one, so it never keeps
    // the ring open after its consumer is gone.
    rx: Arc<Receiver<T>>,
    bell: Arc<Doorbell>,
}

/// A bounded ring of `capacity` messages, with its [`Doorbell`].
pub fn ring<T>(capacity: usize) -> (RingSender<T>, RingReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let bell = Arc::new(Doorbell::new());
    (
        RingSender {
            tx,
            bell: bell.clone(),
        },
        RingReceiver {
            rx: Arc::new(rx),
            bell,
        },
    )
}

/// What the idle nap of a ring's consumer holds: the ring's doorbell and a way to see whether
/// the ring is empty. Made by [`RingReceiver::wake`]; used on the consumer's thread.
pub struct RingWake<T> {
    rx: std::sync::Weak<Receiver<T>>,
    bell: Arc<Doorbell>,
}

impl<T> crate::executor::NapWake for RingWake<T> {
    /// True (nap) when the ring is empty, or when its consumer is gone (nothing of it is
    /// waited for any more).
    fn arm(&self) -> bool {
        self.bell.arm();
        self.rx.upgrade().is_none_or(|rx| rx.is_empty())
    }
    fn disarm(&self, rang: bool) {
        self.bell.disarm(rang);
    }
    fn fd(&self) -> Option<RawFd> {
        self.bell.efd.as_ref().map(|fd| fd.as_raw_fd())
    }
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
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
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
        self.tx.send(msg).map_err(|e| e.into_inner())?;
        self.bell.ring();
        Ok(())
    }
}

impl<T> RingReceiver<T> {
    /// What the consumer's idle nap needs to be woken by this ring's pushes.
    pub fn wake(&self) -> RingWake<T> {
        RingWake {
            rx: Arc::downgrade(&self.rx),
            bell: self.bell.clone(),
        }
    }

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
            snapshot: false,
            system: false,
        }
    }

    /// The smallest frame of `name`, ingested now.
    pub(crate) fn frame(name: &str, seq: u64) -> Frame {
        Frame {
            topic: id_of(name),
            seq,
            bytes: msg(name, seq, 0),
            ingest_at: Instant::now(),
            snapshot: false,
            system: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_during_a_nap_rings_the_doorbell_and_one_before_it_prevents_the_nap() {
        use crate::executor::NapWake;
        let (tx, rx) = ring::<u32>(8);
        let wake = rx.wake();
        let fd = wake.fd().expect("an eventfd");
        tx.try_push(1).unwrap();
        assert!(!wake.arm(), "work waiting: no nap");
        wake.disarm(false);
        let mut got = Vec::new();
        rx.try_take(&mut got, 8).unwrap();
        assert!(wake.arm(), "empty: nap");
        let started = Instant::now();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.try_push(2).unwrap();
            tx.try_push(3).unwrap();
        });
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd; 10 s at most.
        let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(n, 1, "woken by the push");
        assert!(started.elapsed() < Duration::from_secs(5));
        producer.join().unwrap();
        wake.disarm(true);
        pfd.revents = 0;
        // SAFETY: as above, without waiting.
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, 0) },
            0,
            "disarm read the count away"
        );

        // The producer is gone: what it pushed is taken, then the ring reports it closed.
        assert!(rx.try_take(&mut got, 8).is_err());
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn a_ring_the_nap_did_not_see_stays_counted_for_the_next_nap() {
        use crate::executor::NapWake;
        let (tx, rx) = ring::<u32>(8);
        let wake = rx.wake();
        let mut pfd = libc::pollfd {
            fd: wake.fd().expect("an eventfd"),
            events: libc::POLLIN,
            revents: 0,
        };
        assert!(wake.arm());
        // The nap timed out; the push comes after its look, before the disarm.
        tx.try_push(1).unwrap();
        wake.disarm(false);
        // SAFETY: one live pollfd, no waiting.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1, "still counted");
        let mut got = Vec::new();
        rx.try_take(&mut got, 8).unwrap();
        // The next nap: armed on an empty ring, it ends at once and reads the count away.
        assert!(wake.arm());
        pfd.revents = 0;
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::poll(&mut pfd, 1, 0) },
            1,
            "the nap ends at once"
        );
        wake.disarm(true);
        pfd.revents = 0;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0, "read away");
        assert_eq!(got, vec![1]);
    }

    #[test]
    fn a_nap_never_keeps_a_finished_ring_open_or_waits_on_it() {
        use crate::executor::NapWake;
        let (tx, rx) = ring::<u32>(8);
        let wake = rx.wake();
        tx.try_push(1).unwrap();
        assert!(!wake.arm(), "work waiting");
        drop(rx);
        assert!(wake.arm(), "the consumer is gone: nothing to wait for");
        assert!(matches!(tx.try_push(2), Err(PushError::Closed(2))));
    }

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

//! One client connection, shard-local (`!Send`): its state, its queue and its write side.
//! The code that drives it lives beside it, named along the data path: [`crate::upgrade`]
//! (the HTTP upgrade, a short task per accepted socket), [`crate::open`] (the readiness loop
//! that reads every connection and marks blocked ones dirty again when their socket has
//! room), [`crate::requests`] (what a client's frames and requests do) and
//! [`crate::ending`] (goodbye and linger).
//!
//! A connection is written in one place: [`crate::write::write_dirty`], at the end of every
//! fan-out round and every pass of the readiness loop, over the connections marked dirty
//! since. Whatever queues a frame (a published frame, a reply, a ping, the close frame) marks
//! the connection; nothing else calls [`Conn::flush`]. When the socket buffer fills, the
//! connection is `Blocked` and skipped until the readiness loop sees the socket writable,
//! while new frames keep queueing (drop-oldest) behind it.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use crate::close;
use crate::inbound::{Event, Fatal, Reassembler};
use crate::metrics::ShardMetrics;
use crate::queue::{Bounds, Enqueued, Flushed, Outbound};
use crate::ratelimit::{Limits, TokenBucket, Verdict};
use crate::readiness::Readiness;
use crate::ring::Frame;
use crate::ring::Interest;
use crate::topic::covering_prefixes;

/// What a connection's write side needs of the shard that holds it: where to ask for its
/// close, where to count what it wrote, and the bound on its own frames. The shard's context
/// is the implementation; through this trait the connection does not name it.
pub(crate) trait Host {
    /// The shard's epoll set of open connections (close requests go through it).
    fn readiness(&self) -> &Readiness;
    /// The shard's metrics.
    fn metrics(&self) -> &RefCell<ShardMetrics>;
    /// Most bytes of a connection's own frames queued before it is closed (4001).
    fn max_control_bytes(&self) -> usize;
}

impl<H: Host> Host for Rc<H> {
    fn readiness(&self) -> &Readiness {
        (**self).readiness()
    }
    fn metrics(&self) -> &RefCell<ShardMetrics> {
        (**self).metrics()
    }
    fn max_control_bytes(&self) -> usize {
        (**self).max_control_bytes()
    }
}

/// A connection as the shard sees it. Shard-local (`!Send`), shared by `Rc` between the
/// shard's map of connections, the subscription table and the fan-out round. While the
/// connection is idle this is all it holds (plus its list of subscriptions).
pub struct Conn {
    /// Shard-local id, shown to the client as `<shard>-<id>`.
    id: u64,
    /// The socket, for direct reads and writes; valid while the connection is registered.
    fd: RawFd,
    /// Owner of `fd` until the connection is closed.
    sock: Cell<Option<OwnedFd>>,
    /// Frames waiting to be written.
    out: RefCell<Outbound>,
    /// Bytes received and not yet whole messages (no heap memory while none are pending).
    reader: RefCell<Reassembler>,
    /// Topics and patterns this connection subscribed to (including requests not yet acked),
    /// sorted (topics, then patterns): a lookup costs O(log n), so no request costs the
    /// product of its size and this list's, and no queued frame costs a scan of it.
    subs: RefCell<Vec<Interest>>,
    /// Stamp of the last frame routed here, so a frame matched twice (topic and pattern) is
    /// queued once.
    last_stamp: Cell<u64>,
    /// In the shard's list of connections to write at the end of this round (a mark of
    /// membership in that list, not a state of the connection).
    dirty: Cell<bool>,
    /// Where the connection is in its life; changed only through [`Conn`]'s transition
    /// methods, forward only.
    life: Cell<Lifecycle>,
    /// Whether its socket takes writes; apart from `life` (any phase but `Closed` can be
    /// blocked).
    writes: Cell<Writes>,
    /// A subscribe request of this connection waits for the dispatcher: the requests behind
    /// it stay unread (in the reassembler and the socket) until it is acked, so replies come
    /// in request order and each describes the state after the requests before it.
    awaiting: Cell<bool>,
    /// A frame of the message being reassembled was refused by the rate limit: the whole
    /// message is dropped when it completes (the refusal was already announced).
    refused_message: Cell<bool>,
    /// Last time the client finished something: a whole message or a control frame (bytes
    /// of an unfinished frame, or fragments of an unfinished message, do not count).
    last_heard: Cell<Instant>,
    /// Inbound rate limit.
    bucket: RefCell<TokenBucket>,
}

/// Where a connection is in its life. It only moves forward, and may skip a step:
/// `Open` -> `CloseRequested` -> `Ending` -> `Closing` -> `Lingering` -> `Closed`. A client's
/// close or EOF goes from `Open` straight to `Ending`; a connection whose peer is gone closes
/// without a close frame (from `Ending` to `Closed`). Every phase but `Closed` keeps its socket
/// in the shard's epoll set; the moves are made by [`crate::ending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    /// Reads requests, receives frames.
    Open,
    /// The shard asked for the close (the first request wins); the readiness loop acts on
    /// it within a pass.
    CloseRequested(CloseRequest),
    /// Leaving the subscription table and choosing its goodbye: a step inside one call,
    /// never seen by another task.
    Ending,
    /// The close frame is queued, the last frame (none after the client's EOF: then only the
    /// replies already queued): written until the queue is empty or the grace period passes (the deadline is kept beside the shard's list of closing
    /// connections, so a `Conn` stays within its allocation class).
    Closing,
    /// Our side is shut down for writing; what the client still sends is read and discarded
    /// until its EOF or [`crate::ending::LINGER`] passes, so unread input never turns the
    /// close into a reset.
    Lingering,
    /// The socket is closed: nothing more is read or written.
    Closed,
}

/// Whether a connection's socket takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writes {
    /// Written whenever it is dirty.
    Ready,
    /// The socket buffer is full: written again once the socket reports room (the readiness
    /// loop, or the heartbeat should an edge be missed), meanwhile frames queue (drop-oldest)
    /// behind it.
    Blocked,
    /// A write failed: the peer is gone, nothing more is written.
    Failed,
}

/// What [`Conn::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// Nothing was queued, or the connection does not take writes (blocked, failed, closed).
    Nothing,
    /// Everything queued went to the socket.
    Drained,
    /// The socket buffer filled: the connection is now blocked.
    Blocked,
    /// The write failed: the connection is asked to close.
    Failed,
}

/// Why the shard closes a connection of its own accord.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseRequest {
    /// The server is shutting down.
    GoingAway,
    /// Nothing heard from the client for the heartbeat timeout.
    HeartbeatTimeout,
    /// The client does not read the replies to its own requests.
    ControlBacklog,
    /// A write failed: the peer is gone (nothing more is sent).
    WriteFailed,
    /// Drop-oldest dropped frames of a topic whose gap policy is `disconnect`.
    SlowConsumer,
    /// No valid `auth` in time where anonymous access is off.
    AuthRequired,
    /// The token expired and no new one came.
    TokenExpired,
}

impl CloseRequest {
    /// The close frame's code and reason.
    pub(crate) fn code_reason(self) -> (u16, &'static str) {
        match self {
            Self::GoingAway => (close::GOING_AWAY, "going away, reconnect"),
            Self::HeartbeatTimeout => (close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
            Self::ControlBacklog => (close::CONTROL_BACKLOG, "control replies not read"),
            Self::WriteFailed => (close::NORMAL, "write failed"),
            Self::SlowConsumer => (close::SLOW_CONSUMER, "slow consumer"),
            Self::AuthRequired => (close::AUTH_REQUIRED, "authentication required"),
            Self::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
        }
    }
}

impl Conn {
    /// A connection just upgraded: `sock` is its own descriptor, nothing queued or subscribed.
    pub(crate) fn new(id: u64, sock: OwnedFd, bucket: TokenBucket, now: Instant) -> Conn {
        Conn {
            id,
            fd: sock.as_raw_fd(),
            sock: Cell::new(Some(sock)),
            out: RefCell::default(),
            reader: RefCell::default(),
            subs: RefCell::default(),
            last_stamp: Cell::new(0),
            dirty: Cell::new(false),
            life: Cell::new(Lifecycle::Open),
            writes: Cell::new(Writes::Ready),
            awaiting: Cell::new(false),
            refused_message: Cell::new(false),
            last_heard: Cell::new(now),
            bucket: RefCell::new(bucket),
        }
    }

    /// Where the connection is in its life.
    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.life.get()
    }

    /// Asks for the connection to be closed; the readiness loop acts on it within a pass.
    /// The first request wins; a connection already ending ignores it.
    pub(crate) fn request_close(&self, host: &impl Host, why: CloseRequest) {
        if self.life.get() == Lifecycle::Open {
            self.life.set(Lifecycle::CloseRequested(why));
            host.readiness().ask_close(self.id);
        }
    }

    /// `Open` or `CloseRequested` -> `Ending`: true if this call made the move (the caller
    /// then owns the ending), false if the connection was already ending.
    pub(crate) fn begin_ending(&self) -> bool {
        match self.life.get() {
            Lifecycle::Open | Lifecycle::CloseRequested(_) => {
                self.life.set(Lifecycle::Ending);
                true
            }
            Lifecycle::Ending | Lifecycle::Closing | Lifecycle::Lingering | Lifecycle::Closed => {
                false
            }
        }
    }

    /// `Ending` -> `Closing`: queues the close frame, if any, as the last frame.
    pub(crate) fn begin_closing(&self, frame: Option<Vec<u8>>) {
        debug_assert_eq!(self.life.get(), Lifecycle::Ending);
        if let Some(frame) = frame {
            self.out.borrow_mut().push_own(frame);
        }
        self.life.set(Lifecycle::Closing);
    }

    /// `Closing` -> `Lingering`: shuts our side down for writing; input is then read and
    /// discarded.
    pub(crate) fn begin_lingering(&self) {
        debug_assert_eq!(self.life.get(), Lifecycle::Closing);
        crate::socket::shutdown_write(self.fd);
        self.life.set(Lifecycle::Lingering);
    }

    /// -> `Closed`: out of the epoll set, and the socket closed; nothing more is read or
    /// written. True if this call closed it.
    pub(crate) fn close(&self, host: &impl Host) -> bool {
        let Some(sock) = self.sock.take() else {
            return false;
        };
        host.readiness().remove(self.fd);
        drop(sock);
        self.life.set(Lifecycle::Closed);
        true
    }

    /// True when a write failed or the socket is closed: nothing more will be written.
    pub(crate) fn write_failed(&self) -> bool {
        self.writes.get() == Writes::Failed || self.life.get() == Lifecycle::Closed
    }

    /// The socket reported room: a blocked connection takes writes again. True if it was
    /// blocked (it then has frames waiting and should be marked dirty).
    pub(crate) fn writable(&self) -> bool {
        if self.writes.get() == Writes::Blocked {
            self.writes.set(Writes::Ready);
            return true;
        }
        false
    }

    /// True when nothing is queued.
    pub(crate) fn drained(&self) -> bool {
        self.out.borrow().is_empty()
    }

    /// Queues a frame of this connection's own; closes the connection if the client lets
    /// them pile up past `max_control_bytes`.
    pub(crate) fn push_own(&self, host: &impl Host, frame: Vec<u8>) {
        if matches!(
            self.life.get(),
            Lifecycle::Closing | Lifecycle::Lingering | Lifecycle::Closed
        ) {
            return;
        }
        let mut out = self.out.borrow_mut();
        out.push_own(frame);
        if out.control_bytes() > host.max_control_bytes() {
            drop(out);
            self.request_close(host, CloseRequest::ControlBacklog);
        }
    }

    /// Writes what is queued with one vectored system call (more only past 512 frames), and
    /// says what happened. Does nothing while blocked (the readiness loop writes again once
    /// the socket has room), after a failed write, or once shut down for writing.
    /// Called by [`crate::write::write_dirty`] only.
    pub(crate) fn flush(&self, host: &impl Host) -> Wrote {
        if self.writes.get() != Writes::Ready
            || matches!(self.life.get(), Lifecycle::Lingering | Lifecycle::Closed)
        {
            return Wrote::Nothing;
        }
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            return Wrote::Nothing;
        }
        let mut m = host.metrics().borrow_mut();
        m.queue_depth.saturating_record(out.published_len() as u64);
        let fd = self.fd;
        let result = out.flush(|iov| {
            m.counters.writes += 1;
            m.batch_frames.saturating_record(iov.len() as u64);
            crate::socket::send_vectored(fd, iov)
        });
        match result {
            Ok((Flushed::Drained, announced)) => {
                m.counters.gap_notices += announced as u64;
                Wrote::Drained
            }
            Ok((Flushed::Blocked, announced)) => {
                m.counters.gap_notices += announced as u64;
                self.writes.set(Writes::Blocked);
                Wrote::Blocked
            }
            Err(_) => {
                drop(out);
                drop(m);
                self.writes.set(Writes::Failed);
                self.request_close(host, CloseRequest::WriteFailed);
                Wrote::Failed
            }
        }
    }

    /// True while a subscribe of this connection waits for the dispatcher: its later frames
    /// (pongs included) are unread, so silence is not the client's.
    pub(crate) fn awaiting(&self) -> bool {
        self.awaiting.get()
    }

    /// Marks whether a subscribe of this connection waits for the dispatcher; returns what
    /// was marked before.
    pub(crate) fn set_awaiting(&self, waiting: bool) -> bool {
        self.awaiting.replace(waiting)
    }

    /// The shard-local id, shown to the client as `<shard>-<id>`.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The socket, for reads and writes while the connection is open.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// True the first time it is called with `stamp` (a routing pass): a frame that reaches
    /// the connection twice in one pass (topic and pattern) is queued once.
    pub(crate) fn first_in_pass(&self, stamp: u64) -> bool {
        self.last_stamp.replace(stamp) != stamp
    }

    /// Marks the connection as in the round's dirty list; true if it was not yet.
    pub(crate) fn mark_dirty(&self) -> bool {
        !self.dirty.replace(true)
    }

    /// Takes the connection off the round's dirty list (it is being written).
    pub(crate) fn clear_dirty(&self) {
        self.dirty.set(false);
    }

    /// The client finished something at `now` (a whole message or a control frame).
    pub(crate) fn heard(&self, now: Instant) {
        self.last_heard.set(now);
    }

    /// When the client last finished something.
    pub(crate) fn last_heard(&self) -> Instant {
        self.last_heard.get()
    }

    /// Takes one token from the inbound rate limit.
    pub(crate) fn take_token(&self, limits: &Limits, now: Instant) -> Verdict {
        self.bucket.borrow_mut().take(limits, now)
    }

    /// Marks whether the message being reassembled was refused by the rate limit (it is
    /// dropped when it completes); returns what was marked before.
    pub(crate) fn set_refused_message(&self, refused: bool) -> bool {
        self.refused_message.replace(refused)
    }

    /// Queues a published frame (shared, no copy) under the queue's bounds, dropping the
    /// oldest published frames past them.
    /// Queues a published frame (drop-oldest past the bounds), adding the topic of each frame
    /// dropped to `dropped`.
    pub(crate) fn push_published_noting(
        &self,
        frame: Rc<Frame>,
        bounds: &Bounds,
        dropped: &mut Vec<crate::ring::TopicId>,
    ) -> Enqueued {
        self.out
            .borrow_mut()
            .push_published_noting(frame, bounds, dropped)
    }

    /// Puts pending gap notices in place, then drops every queued frame of `topic` (the gap
    /// policy `resnapshot`: the notices stay, the frames after them are replaced).
    pub(crate) fn announce_then_purge(&self, topic: &str) -> usize {
        let mut out = self.out.borrow_mut();
        let placed = out.announce_gaps();
        placed + out.retain_published(|t| t != topic)
    }

    /// Queues a `gap` notice: `from..=to` of `topic` will never reach this client.
    pub(crate) fn push_notice(&self, topic: &str, from: u64, to: u64, reason: &'static str) {
        self.out.borrow_mut().push_notice(topic, from, to, reason);
    }

    /// Frames of every kind waiting to be written.
    pub(crate) fn queued(&self) -> usize {
        self.out.borrow().len()
    }

    /// Queues frames of a replay (recovered history, a snapshot and its deltas), behind
    /// whatever is queued (the ack that announced them). Never dropped.
    pub(crate) fn push_replay(&self, frames: Vec<bytes::Bytes>) {
        if matches!(
            self.life.get(),
            Lifecycle::Closing | Lifecycle::Lingering | Lifecycle::Closed
        ) {
            return;
        }
        let mut out = self.out.borrow_mut();
        for f in frames {
            out.push_replay(f);
        }
    }

    /// Drops every queued frame of `topic` (a resync starts it over). Returns how many
    /// pending gap notices were put in place.
    pub(crate) fn purge_topic(&self, topic: &str) -> usize {
        self.out.borrow_mut().retain_published(|t| t != topic)
    }

    /// After an unsubscribe: drops the queued frames of topics no subscription covers any
    /// more. Returns how many pending gap notices were put in place.
    pub(crate) fn retain_covered(&self) -> usize {
        self.out
            .borrow_mut()
            .retain_published(|topic| self.covers(topic))
    }

    /// Adds bytes read from the socket to the message being reassembled.
    pub(crate) fn feed(&self, bytes: &[u8]) {
        self.reader.borrow_mut().feed(bytes);
    }

    /// Bytes received and not yet taken as events.
    pub(crate) fn pending_input(&self) -> usize {
        self.reader.borrow().pending()
    }

    /// The next whole event received, messages up to `max_message_bytes`; `Err` when the
    /// connection must close (see [`crate::inbound`]).
    pub(crate) fn next_event(&self, max_message_bytes: usize) -> Result<Option<Event>, Fatal> {
        self.reader.borrow_mut().next_event(max_message_bytes)
    }

    /// The connection is ending: input is no longer parsed, and its buffer is freed.
    pub(crate) fn stop_reading(&self) {
        self.reader.take();
    }

    /// True when `interest` is one of this connection's subscriptions (or of its requests
    /// still waiting). O(log n).
    pub(crate) fn is_subscribed(&self, interest: &Interest) -> bool {
        self.subs.borrow().binary_search(interest).is_ok()
    }

    /// How many subscriptions the connection has, and how many of them are patterns.
    pub(crate) fn subscription_counts(&self) -> (usize, usize) {
        let subs = self.subs.borrow();
        let topics = subs.partition_point(|i| matches!(i, Interest::Topic(_)));
        (subs.len(), subs.len() - topics)
    }

    /// Adds subscriptions it does not have. The list grows by exactly as many (it lives as
    /// long as the connection) and stays sorted.
    pub(crate) fn add_subscriptions<'a>(&self, new: impl ExactSizeIterator<Item = &'a Interest>) {
        let mut subs = self.subs.borrow_mut();
        subs.reserve_exact(new.len());
        subs.extend(new.cloned());
        subs.sort_unstable();
    }

    /// Removes the subscriptions in `gone`, which is sorted.
    pub(crate) fn remove_subscriptions(&self, gone: &[Interest]) {
        self.subs
            .borrow_mut()
            .retain(|i| gone.binary_search(i).is_err());
    }

    /// A copy of every subscription (topics, then patterns).
    pub(crate) fn subscriptions(&self) -> Vec<Interest> {
        self.subs.borrow().clone()
    }

    /// Takes every subscription (the connection is ending).
    pub(crate) fn take_subscriptions(&self) -> Vec<Interest> {
        self.subs.take()
    }

    /// True when `topic` is still covered by one of this connection's subscriptions.
    /// O(log n) per dot in the topic.
    pub(crate) fn covers(&self, topic: &str) -> bool {
        let subs = self.subs.borrow();
        let patterns = subs.partition_point(|i| matches!(i, Interest::Topic(_)));
        let (topics, patterns) = subs.split_at(patterns);
        find_named(topics, topic) || covering_prefixes(topic).any(|p| find_named(patterns, p))
    }

    /// The pattern of this connection that covers `topic`, if any (as its prefix).
    pub(crate) fn pattern_covering(&self, topic: &str) -> Option<String> {
        let subs = self.subs.borrow();
        let patterns = &subs[subs.partition_point(|i| matches!(i, Interest::Topic(_)))..];
        covering_prefixes(topic)
            .find(|p| find_named(patterns, p))
            .map(str::to_string)
    }
}

/// Whether `list` (sorted by name) names `name`.
fn find_named(list: &[Interest], name: &str) -> bool {
    list.binary_search_by(|i| match i {
        Interest::Topic(t) | Interest::Prefix(t) => (**t).cmp(name),
    })
    .is_ok()
}

#[cfg(test)]
mod tests {
    /// An idle connection's memory is mostly its `Conn` (see docs/architecture.md, "Memory of
    /// an idle connection"): with the `Rc` counts it must fit the allocator's 256-byte size
    /// class; one byte more and every connection takes the next class, 320 bytes.
    #[test]
    fn conn_fits_a_256_byte_allocation() {
        let rc_box = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<super::Conn>();
        assert!(rc_box <= 256, "Rc<Conn> allocates {rc_box} bytes");
    }
}

//! One client connection, shard-local (`!Send`): its state, its queue and its write side.
//! The tasks that drive it live beside it, named along the data path: [`crate::upgrade`] (the
//! HTTP upgrade, a short task per accepted socket), [`crate::open`] (the readiness loop that
//! reads every open connection and finishes blocked writes), [`crate::requests`] (what a
//! client's frames and requests do) and [`crate::ending`] (goodbye and linger). The shard's
//! fan-out round writes a connection once per round ([`Conn::flush`]).
//!
//! Writing is shared: when the socket buffer fills, the connection is marked `blocked` and
//! the fan-out round leaves it alone until the readiness loop sees the socket writable, while
//! new frames keep queueing (drop-oldest) behind it.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use crate::close;
use crate::inbound::Reassembler;
use crate::metrics::ShardMetrics;
use crate::queue::{Flushed, Outbound};
use crate::ratelimit::TokenBucket;
use crate::readiness::Readiness;
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
    pub(crate) id: u64,
    /// The socket, for direct reads and writes; valid while the connection is registered.
    pub(crate) fd: RawFd,
    /// Owner of `fd` while the connection is open; taken by the closing task.
    pub(crate) sock: Cell<Option<OwnedFd>>,
    /// Frames waiting to be written.
    pub(crate) out: RefCell<Outbound>,
    /// Bytes received and not yet whole messages (no heap memory while none are pending).
    pub(crate) reader: RefCell<Reassembler>,
    /// Topics and patterns this connection subscribed to (including requests not yet acked),
    /// sorted (topics, then patterns): a lookup costs O(log n), so no request costs the
    /// product of its size and this list's, and no queued frame costs a scan of it.
    pub(crate) subs: RefCell<Vec<Interest>>,
    /// Stamp of the last frame routed here, so a frame matched twice (topic and pattern) is
    /// queued once.
    pub(crate) last_stamp: Cell<u64>,
    /// In the shard's list of connections to write at the end of this round.
    pub(crate) dirty: Cell<bool>,
    /// The socket buffer is full; written again once the readiness loop sees it writable.
    pub(crate) blocked: Cell<bool>,
    /// A write failed (peer gone), or the socket is closed: nothing more is written.
    pub(crate) broken: Cell<bool>,
    /// The connection is ending: the closing task owns the socket.
    pub(crate) ending: Cell<bool>,
    /// The close frame is queued: nothing else may be queued after it.
    pub(crate) closing: Cell<bool>,
    /// Close requested by the shard, acted on by the readiness loop.
    pub(crate) close: Cell<Option<CloseRequest>>,
    /// A subscribe request of this connection waits for the dispatcher: the requests behind
    /// it stay unread (in the reassembler and the socket) until it is acked, so replies come
    /// in request order and each describes the state after the requests before it.
    pub(crate) awaiting: Cell<bool>,
    /// A frame of the message being reassembled was refused by the rate limit: the whole
    /// message is dropped when it completes (the refusal was already announced).
    pub(crate) refused_message: Cell<bool>,
    /// Last time the client finished something: a whole message or a control frame (bytes
    /// of an unfinished frame, or fragments of an unfinished message, do not count).
    pub(crate) last_heard: Cell<Instant>,
    /// Inbound rate limit.
    pub(crate) bucket: RefCell<TokenBucket>,
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
}

impl CloseRequest {
    /// The close frame's code and reason.
    pub(crate) fn code_reason(self) -> (u16, &'static str) {
        match self {
            Self::GoingAway => (close::GOING_AWAY, "going away, reconnect"),
            Self::HeartbeatTimeout => (close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
            Self::ControlBacklog => (close::CONTROL_BACKLOG, "control replies not read"),
            Self::WriteFailed => (close::NORMAL, "write failed"),
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
            blocked: Cell::new(false),
            broken: Cell::new(false),
            ending: Cell::new(false),
            closing: Cell::new(false),
            close: Cell::new(None),
            awaiting: Cell::new(false),
            refused_message: Cell::new(false),
            last_heard: Cell::new(now),
            bucket: RefCell::new(bucket),
        }
    }

    /// Asks for the connection to be closed; the readiness loop acts on it within a pass.
    /// The first request wins.
    pub(crate) fn request_close(&self, host: &impl Host, why: CloseRequest) {
        if self.close.get().is_none() {
            self.close.set(Some(why));
            host.readiness().ask_close(self.id);
        }
    }

    /// Queues a frame of this connection's own; closes the connection if the client lets
    /// them pile up past `max_control_bytes`.
    pub(crate) fn push_own(&self, host: &impl Host, frame: Vec<u8>) {
        if self.closing.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        out.push_own(frame);
        if out.control_bytes() > host.max_control_bytes() {
            drop(out);
            self.request_close(host, CloseRequest::ControlBacklog);
        }
    }

    /// Writes what is queued with one vectored system call (more only past 512 frames).
    /// Does nothing while blocked: the readiness loop writes again once the socket has room.
    pub(crate) fn flush(&self, host: &impl Host) {
        if self.blocked.get() || self.broken.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            return;
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
            Ok((state, announced)) => {
                m.counters.gap_notices += announced as u64;
                if state == Flushed::Blocked {
                    self.blocked.set(true);
                }
            }
            Err(_) => {
                drop(out);
                drop(m);
                self.broken.set(true);
                self.request_close(host, CloseRequest::WriteFailed);
            }
        }
    }

    /// Tries a blocked write again (the socket reported room, or a periodic retry).
    pub(crate) fn retry_blocked(&self, host: &impl Host) {
        if self.blocked.replace(false) {
            self.flush(host);
        }
    }

    /// True while a subscribe of this connection waits for the dispatcher: its later frames
    /// (pongs included) are unread, so silence is not the client's.
    pub(crate) fn awaiting(&self) -> bool {
        self.awaiting.get()
    }

    /// True when `topic` is still covered by one of this connection's subscriptions.
    /// O(log n) per dot in the topic.
    pub(crate) fn covers(&self, topic: &str) -> bool {
        let subs = self.subs.borrow();
        let patterns = subs.partition_point(|i| matches!(i, Interest::Topic(_)));
        let (topics, patterns) = subs.split_at(patterns);
        let find = |list: &[Interest], name: &str| {
            list.binary_search_by(|i| match i {
                Interest::Topic(t) | Interest::Prefix(t) => (**t).cmp(name),
            })
            .is_ok()
        };
        find(topics, topic) || covering_prefixes(topic).any(|p| find(patterns, p))
    }
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

//! What crosses between the dispatcher core and a shard: any thread (`Send`).
//!
//! Each shard has two rings: dispatcher -> shard carries [`ShardMsg`] in publish order,
//! shard -> dispatcher carries [`ControlMsg`]. Because a subscription reply travels on the same
//! ring as the frames, a shard sees every frame published after its subscription took effect,
//! and none from before.
//!
//! A ring is a bounded lock-free queue (crossbeam-channel's array flavour) plus a doorbell: a
//! socket pair. The consumer, before it sleeps, raises a `parked` flag, checks the queue once
//! more, then waits for the doorbell socket to become readable, through glommio's ordinary
//! socket readiness path. A producer checks the flag after each push (one shared load, stable
//! while the consumer is busy) and writes one byte to the doorbell only when the consumer is
//! parked. glommio 0.9's own cross-executor wake-ups (`shared_channel` notifications and
//! foreign `Waker`s) were measured here to lose wake-ups when the receiving executor has no
//! timer armed: p90 ring hop of 700 ms in a two-executor test, hence this doorbell
//! (docs/architecture.md, "The ring hop").

use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use futures_lite::{AsyncReadExt, FutureExt};

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

/// Longest a consumer waits on the doorbell before it looks at the queue again. The doorbell's
/// readiness travels through io_uring task work, which a polling executor may run late; this
/// bound keeps a late doorbell from holding a frame back by more than this.
const RECHECK: Duration = Duration::from_micros(200);

/// The doorbell's writing half, shared by every sender; dropped with the last one, which the
/// consumer reads as end of stream.
struct Bell {
    writer: UnixStream,
    /// Set by the consumer while it sleeps (or is about to).
    parked: Arc<AtomicBool>,
}

/// The producing end of a ring. Any thread; clone it for more producers.
pub struct RingSender<T> {
    // Field order matters: the queue disconnects before the doorbell closes.
    tx: Sender<T>,
    bell: Arc<Bell>,
}

impl<T> Clone for RingSender<T> {
    fn clone(&self) -> Self {
        RingSender {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

/// The consuming end of a ring, not yet on its executor. Any thread; move it to the consumer's
/// executor and [`RingReceiver::attach`] it there.
pub struct RingReceiver<T> {
    rx: Receiver<T>,
    parked: Arc<AtomicBool>,
    /// The doorbell's reading half.
    bell: UnixStream,
}

/// The consuming end of a ring on its executor. Executor-local (`!Send`).
pub struct AttachedReceiver<T> {
    rx: Receiver<T>,
    parked: Arc<AtomicBool>,
    bell: glommio::net::UnixStream,
}

/// A bounded ring of `capacity` messages.
pub fn ring<T>(capacity: usize) -> std::io::Result<(RingSender<T>, RingReceiver<T>)> {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (writer, reader) = UnixStream::pair()?;
    writer.set_nonblocking(true)?;
    let parked = Arc::new(AtomicBool::new(false));
    Ok((
        RingSender {
            tx,
            bell: Arc::new(Bell {
                writer,
                parked: parked.clone(),
            }),
        },
        RingReceiver {
            rx,
            parked,
            bell: reader,
        },
    ))
}

/// Why a push did not happen; the message is handed back.
#[derive(Debug)]
pub enum PushError<T> {
    /// The ring is full.
    Full(T),
    /// The consumer is gone.
    Closed(T),
}

impl<T> RingSender<T> {
    /// Rings the doorbell if the consumer is parked. Cost: one shared load when it is not.
    fn ring_bell(&self) {
        // Pairs with the consumer's fence: either it sees our message, or we see it parked.
        fence(Ordering::SeqCst);
        if self.bell.parked.load(Ordering::Relaxed)
            && self.bell.parked.swap(false, Ordering::AcqRel)
        {
            // A full socket buffer already holds a wake-up; nothing else can fail usefully.
            let _ = (&self.bell.writer).write(&[1]);
        }
    }

    /// Pushes without waiting. Cost: one lock-free enqueue and one doorbell check.
    pub fn try_push(&self, msg: T) -> Result<(), PushError<T>> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.ring_bell();
                Ok(())
            }
            Err(TrySendError::Full(m)) => Err(PushError::Full(m)),
            Err(TrySendError::Disconnected(m)) => Err(PushError::Closed(m)),
        }
    }

    /// Pushes from a glommio task, waiting for room (polling every 50 µs: a full ring is an
    /// overload, not the steady state). Errors only when the consumer is gone.
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

    /// Pushes from a plain thread, blocking while the ring is full. Errors when the consumer is gone.
    pub fn push_blocking(&self, msg: T) -> Result<(), T> {
        match self.tx.send(msg) {
            Ok(()) => {
                self.ring_bell();
                Ok(())
            }
            Err(e) => Err(e.into_inner()),
        }
    }

    /// Messages in the ring now.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// True when the ring holds nothing.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

impl<T> RingReceiver<T> {
    /// Hands the doorbell to the current glommio executor. Call it on the consumer's executor.
    pub fn attach(self) -> AttachedReceiver<T> {
        // SAFETY: the fd is a connected Unix socket we own and give up here.
        let bell = unsafe { glommio::net::UnixStream::from_raw_fd(self.bell.into_raw_fd()) };
        AttachedReceiver {
            rx: self.rx,
            parked: self.parked,
            bell,
        }
    }
}

impl<T> AttachedReceiver<T> {
    fn take(&self, out: &mut Vec<T>, max: usize) -> Result<(), ()> {
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(m) => out.push(m),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(()),
            }
        }
        Ok(())
    }

    /// Waits for at least one message and moves up to `max` into `out`. Returns false when
    /// every producer is gone and nothing is left. Must run on a glommio executor.
    pub async fn recv_batch(&mut self, out: &mut Vec<T>, max: usize) -> bool {
        let before = out.len();
        loop {
            let closed = self.take(out, max).is_err();
            if out.len() > before {
                return true;
            }
            if closed {
                return false;
            }
            self.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let closed = self.take(out, max).is_err();
            if out.len() > before || closed {
                self.parked.store(false, Ordering::Relaxed);
                return out.len() > before;
            }
            let mut sink = [0u8; 64];
            let rung = async { Some(self.bell.read(&mut sink).await) };
            let timeout = async {
                glommio::timer::sleep(RECHECK).await;
                None
            };
            match rung.or(timeout).await {
                // Every sender is gone: drain what is left, then report closed.
                Some(Ok(0) | Err(_)) => {
                    self.parked.store(false, Ordering::Relaxed);
                    let _ = self.take(out, max);
                    return out.len() > before;
                }
                Some(Ok(_)) => {}
                None => self.parked.store(false, Ordering::Relaxed),
            }
        }
    }

    /// Waits for one message; `None` when every producer is gone.
    pub async fn recv(&mut self) -> Option<T> {
        let mut one = Vec::with_capacity(1);
        if self.recv_batch(&mut one, 1).await {
            one.pop()
        } else {
            None
        }
    }
}

//! A connection's outbound queue: shard-local (`!Send`), bounded, drop-oldest.
//!
//! Holds shared published frames (`Rc<Frame>`, no copy) and the connection's own control
//! frames (welcome, acks, errors, pongs, pings, close) in one FIFO, so the bytes on the wire
//! are whole frames in order. When the published frames exceed the message or byte bound the
//! oldest ones are dropped, counted, and remembered as per-topic gaps; the gap notices are put
//! at the head of the next write, before any later frame of the same topic.
//! Control frames are never dropped: they are bounded separately (`max_control_bytes`).
//! An idle, drained queue holds no heap memory.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;

use crate::protocol;
use crate::ring::{Frame, TopicId};

/// One whole WebSocket frame waiting to be written.
enum Chunk {
    /// A published frame shared by every subscriber on the shard.
    Published(Rc<Frame>),
    /// A frame of this connection only (ack, error, pong, ping, close).
    Own(Box<[u8]>),
    /// A `gap` notice: never dropped, not counted against `max_control_bytes`.
    Notice(Box<[u8]>),
    /// A frame of a replay (history a subscribe recovered, a snapshot and its deltas), shared
    /// with the dispatcher's history: never dropped (drop-oldest and the age bound apply to
    /// the live frames behind it), not counted against either bound.
    Replay(bytes::Bytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Published(f) => &f.bytes,
            Chunk::Own(b) | Chunk::Notice(b) => b,
            Chunk::Replay(b) => b,
        }
    }
}

/// A run of dropped sequence numbers of one topic, not yet announced.
#[derive(Debug)]
struct Gap {
    topic: TopicId,
    /// The topic's name, copied out of the first frame dropped (a gap holds no frame's bytes).
    name: Box<str>,
    from: u64,
    to: u64,
    reason: &'static str,
}

/// What [`Outbound::push_published`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued with room to spare.
    Queued,
    /// Queued after dropping `dropped` older published frames; `notices` gap notices were put
    /// in place at once (a drop that reaches a notice or own frame queued after the dropped
    /// ones fixes its gap's place there, see [`Outbound::announce_gaps`]).
    DroppedOldest { dropped: u32, notices: u32 },
}

/// What a write attempt left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    Drained,
    /// The socket buffer is full: wait until it is writable, then write again.
    Blocked,
}

/// Limits of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most published frames held (oldest dropped past it).
    pub max_messages: usize,
    /// Most bytes of published frames held (oldest dropped past it).
    pub max_bytes: usize,
    /// Most bytes of control frames held before the connection is closed.
    pub max_control_bytes: usize,
    /// Published frames older than this, relative to the newest one queued, are dropped
    /// (stale market data is worth less than the gap notice that replaces it). `None`: no
    /// age bound.
    pub max_age: Option<std::time::Duration>,
}

/// Most iovecs handed to one `sendmsg` (Linux IOV_MAX is 1024).
const MAX_IOV: usize = 512;

/// Frames per write whose iovec stays on the stack (512 bytes); more spill into a `Vec`.
const INLINE_IOV: usize = 32;

/// Shard-local outbound queue of one connection.
#[derive(Default)]
pub struct Outbound {
    chunks: VecDeque<Chunk>,
    /// Bytes of `chunks[0]` already written (a partial write); that chunk is never dropped.
    /// (A frame is far smaller than 4 GiB: `max_message_bytes` and the queue's byte bound.)
    head_written: u32,
    /// Published frames in `chunks`.
    published: u32,
    /// Bytes of published frames in `chunks`.
    published_bytes: usize,
    /// Bytes of own frames in `chunks`.
    control_bytes: usize,
    /// Drops not yet announced, in drop order; no allocation while there are none.
    // Boxed: one pointer instead of a `Vec`'s three words in every connection; the extra
    // allocation happens only while the state is in use.
    #[allow(clippy::box_collection)]
    gaps: Option<Box<Vec<Gap>>>,
}

impl Outbound {
    /// Published frames waiting.
    pub fn published_len(&self) -> usize {
        self.published as usize
    }

    /// Frames of every kind waiting (a replay's included).
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True when nothing at all waits to be written.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.gaps.is_none()
    }

    /// Bytes of control frames waiting.
    pub fn control_bytes(&self) -> usize {
        self.control_bytes
    }

    /// Queues a published frame, dropping the oldest published frames past the bounds.
    /// Cost: O(1) plus O(1) per dropped frame (drops scan past at most the own frames at the head).
    pub fn push_published(&mut self, frame: Rc<Frame>, bounds: &Bounds) -> Enqueued {
        self.push_published_noting(frame, bounds, &mut Vec::new())
    }

    /// As [`Outbound::push_published`], adding the topic of each frame dropped to
    /// `dropped_topics` (for the gap policy of its namespace).
    pub fn push_published_noting(
        &mut self,
        frame: Rc<Frame>,
        bounds: &Bounds,
        dropped_topics: &mut Vec<TopicId>,
    ) -> Enqueued {
        let len = frame.bytes.len();
        let (mut dropped, mut notices) = (0u32, 0u32);
        while self.published > 0
            && (self.published as usize + 1 > bounds.max_messages
                || self.published_bytes + len > bounds.max_bytes)
        {
            if let Some(f) = self.oldest_published() {
                dropped_topics.push(f.topic);
            }
            let Some(placed) = self.drop_oldest_published() else {
                break;
            };
            dropped += 1;
            notices += placed;
        }
        if let Some(cutoff) = bounds.max_age.and_then(|a| frame.ingest_at.checked_sub(a)) {
            while let Some(f) = self.oldest_published().filter(|f| f.ingest_at < cutoff) {
                dropped_topics.push(f.topic);
                notices += self.drop_oldest_published().unwrap_or(0);
                dropped += 1;
            }
        }
        self.published += 1;
        self.published_bytes += len;
        self.chunks.push_back(Chunk::Published(frame));
        if dropped == 0 {
            Enqueued::Queued
        } else {
            Enqueued::DroppedOldest { dropped, notices }
        }
    }

    /// Queues a frame of this connection's own (never dropped).
    pub fn push_own(&mut self, frame: Vec<u8>) {
        self.control_bytes += frame.len();
        self.chunks.push_back(Chunk::Own(frame.into_boxed_slice()));
    }

    /// Queues a replay frame at the tail (see `Chunk::Replay`).
    pub fn push_replay(&mut self, frame: bytes::Bytes) {
        self.chunks.push_back(Chunk::Replay(frame));
    }

    /// Queues, at the tail, the notice that `from..=to` of `topic` never reached this queue
    /// (the shard itself missed them): it belongs right before the next frame of the topic.
    pub fn push_notice(&mut self, topic: &str, from: u64, to: u64, reason: &'static str) {
        let frame = protocol::gap(topic, from, to, reason);
        self.chunks
            .push_back(Chunk::Notice(frame.into_boxed_slice()));
    }

    /// Removes every queued published or replay frame for which `keep` says false (after an
    /// unsubscribe; a resync purges its topic so).
    /// Pending gaps of the topics kept are put in place first, in front of the first published
    /// frame still queued: that frame may be one about to go, and a notice queued behind it
    /// (for later sequences) must not end up ahead of them. Returns how many gap notices were
    /// put in place.
    pub fn retain_published(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        if let Some(gaps) = &mut self.gaps {
            gaps.retain(|g| keep(&g.name));
            if gaps.is_empty() {
                self.gaps = None;
            }
        }
        let placed = self.announce_gaps();
        let mut index = 0usize;
        self.chunks.retain(|c| {
            let first = index == 0;
            index += 1;
            match c {
                Chunk::Published(f) if !(keep(f.name()) || first && self.head_written > 0) => {
                    self.published -= 1;
                    self.published_bytes -= f.bytes.len();
                    false
                }
                Chunk::Replay(b) => {
                    let topic = protocol::msg_topic(b).unwrap_or_default();
                    keep(topic) || first && self.head_written > 0
                }
                _ => true,
            }
        });
        placed
    }

    /// Position of the oldest published frame that may be dropped (a partly written head
    /// may not).
    fn oldest_published_at(&self) -> Option<usize> {
        let start = usize::from(self.head_written > 0);
        (start..self.chunks.len()).find(|&i| matches!(self.chunks[i], Chunk::Published(_)))
    }

    fn oldest_published(&self) -> Option<&Frame> {
        match self.chunks.get(self.oldest_published_at()?) {
            Some(Chunk::Published(f)) => Some(f),
            _ => None,
        }
    }

    /// Drops the oldest droppable published frame and remembers it as a gap. `None` when there
    /// is none; otherwise the number of gap notices put in place because the frame now at the
    /// dropped one's place is a notice or an own frame (see [`Outbound::announce_gaps`]).
    fn drop_oldest_published(&mut self) -> Option<u32> {
        let pos = self.oldest_published_at()?;
        let Some(Chunk::Published(f)) = self.chunks.remove(pos) else {
            unreachable!("position found above holds a published frame")
        };
        self.published -= 1;
        self.published_bytes -= f.bytes.len();
        let gaps = self.gaps.get_or_insert_with(Box::default);
        match gaps.iter_mut().rev().find(|g| g.topic == f.topic) {
            Some(g) if g.to + 1 == f.seq && g.reason == protocol::reason::SLOW_CONSUMER => {
                g.to = f.seq
            }
            _ => gaps.push(Gap {
                topic: f.topic,
                name: f.name().into(),
                from: f.seq,
                to: f.seq,
                reason: protocol::reason::SLOW_CONSUMER,
            }),
        }
        // Pending gaps go in front of the first published frame still queued, which is right
        // only while nothing else stands between the dropped frames and it. A notice queued
        // after the dropped frames (the shard's own `shard_overflow`, for later sequences of
        // the same topic) would then be written before the gap of earlier ones: the client
        // would see its stream jump ahead, then a notice for the past. So a drop that leaves a
        // notice or own frame at its place fixes the pending gaps there, now.
        if matches!(
            self.chunks.get(pos),
            Some(Chunk::Notice(_) | Chunk::Own(_) | Chunk::Replay(_))
        ) {
            return Some(self.place_gaps(pos) as u32);
        }
        Some(0)
    }

    /// Moves pending gap notices in front of the first published frame still queued (after a
    /// partly written frame and after earlier notices), so they precede every later frame of
    /// their topic and follow every earlier notice. Returns how many were announced.
    pub fn announce_gaps(&mut self) -> usize {
        if self.gaps.is_none() {
            return 0;
        }
        let first_published = self
            .chunks
            .iter()
            .enumerate()
            .position(|(i, c)| {
                matches!(c, Chunk::Published(_)) && !(i == 0 && self.head_written > 0)
            })
            .unwrap_or(self.chunks.len());
        let at = first_published.max(usize::from(self.head_written > 0));
        self.place_gaps(at)
    }

    /// Puts the pending gap notices, in drop order, at position `at` of the queue. Returns how
    /// many.
    fn place_gaps(&mut self, at: usize) -> usize {
        let Some(gaps) = self.gaps.take() else {
            return 0;
        };
        let n = gaps.len();
        for (i, g) in gaps.into_iter().enumerate() {
            let frame = protocol::gap(&g.name, g.from, g.to, g.reason);
            self.chunks
                .insert(at + i, Chunk::Notice(frame.into_boxed_slice()));
        }
        n
    }

    /// Writes as much as `send` takes, in as few calls as possible (one per `MAX_IOV` frames).
    /// `send` is a non-blocking vectored write; `WouldBlock` and short writes mean `Blocked`.
    /// Returns the outcome and the number of gap notices put on the wire.
    pub fn flush(
        &mut self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<(Flushed, usize)> {
        let announced = self.announce_gaps();
        let streaming = self.published > 0;
        while !self.chunks.is_empty() {
            // The iovec lives on the stack for the usual few frames: no allocation per write.
            let mut inline = [IoSlice::new(&[]); INLINE_IOV];
            let mut spilled: Vec<IoSlice<'_>> = Vec::new();
            let n = self.chunks.len().min(MAX_IOV);
            let slices = self.chunks.iter().take(n).enumerate().map(|(i, c)| {
                if i == 0 {
                    &c.bytes()[self.head_written as usize..]
                } else {
                    c.bytes()
                }
            });
            let mut want = 0usize;
            let iov: &[IoSlice<'_>] = if n <= INLINE_IOV {
                for (slot, b) in inline.iter_mut().zip(slices) {
                    want += b.len();
                    *slot = IoSlice::new(b);
                }
                &inline[..n]
            } else {
                spilled.extend(slices.map(|b| {
                    want += b.len();
                    IoSlice::new(b)
                }));
                &spilled
            };
            let sent = send(iov);
            // The spilled iovec borrows the queue until dropped; `consume` needs it back.
            drop(spilled);
            let written = match sent {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flushed::Blocked, announced))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(written);
            if written < want {
                return Ok((Flushed::Blocked, announced));
            }
        }
        if !streaming {
            self.release();
        }
        Ok((Flushed::Drained, announced))
    }

    /// The unwritten rest of the head frame, for a readiness-driven write. Pending gap notices
    /// are put in place first, so a write of the head never jumps ahead of them.
    pub fn head(&mut self) -> Option<&[u8]> {
        self.announce_gaps();
        self.chunks
            .front()
            .map(|c| &c.bytes()[self.head_written as usize..])
    }

    /// Marks `n` bytes from the head as written.
    pub fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let rest = front.bytes().len() - self.head_written as usize;
            if n < rest {
                self.head_written += n as u32;
                return;
            }
            n -= rest;
            self.head_written = 0;
            match self.chunks.pop_front() {
                Some(Chunk::Published(f)) => {
                    self.published -= 1;
                    self.published_bytes -= f.bytes.len();
                }
                Some(Chunk::Own(b)) => self.control_bytes -= b.len(),
                Some(Chunk::Notice(_) | Chunk::Replay(_)) | None => {}
            }
        }
    }

    /// Frees the buffer of a drained queue. Called after a write that carried only the
    /// connection's own frames (welcome, replies, pings): a connection that is not receiving a
    /// stream holds no queue memory (its next heartbeat ping releases it once a stream stops),
    /// while one that is keeps its buffer from write to write, so a write allocates nothing
    /// (the iovec is on the stack too). Freeing it after every write measured no smaller in
    /// RSS at 10,000 connections receiving 1 message/s (docs/benchmarks.md).
    fn release(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests;

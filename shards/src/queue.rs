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
use crate::ring::Frame;

/// One whole WebSocket frame waiting to be written.
enum Chunk {
    /// A published frame shared by every subscriber on the shard.
    Published(Rc<Frame>),
    /// A frame of this connection only (ack, error, pong, ping, close).
    Own(Box<[u8]>),
    /// A `gap` notice: never dropped, not counted against `max_control_bytes`.
    Notice(Box<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Published(f) => &f.bytes,
            Chunk::Own(b) | Chunk::Notice(b) => b,
        }
    }
}

/// A run of dropped sequence numbers of one topic, not yet announced.
#[derive(Debug)]
struct Gap {
    /// The first frame dropped: its topic id and the name its bytes carry.
    first: Rc<Frame>,
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
        let len = frame.bytes.len();
        let (mut dropped, mut notices) = (0u32, 0u32);
        while self.published > 0
            && (self.published as usize + 1 > bounds.max_messages
                || self.published_bytes + len > bounds.max_bytes)
        {
            let Some(placed) = self.drop_oldest_published() else {
                break;
            };
            dropped += 1;
            notices += placed;
        }
        if let Some(cutoff) = bounds.max_age.and_then(|a| frame.ingest_at.checked_sub(a)) {
            while self
                .oldest_published()
                .is_some_and(|f| f.ingest_at < cutoff)
            {
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

    /// Queues, at the tail, the notice that `from..=to` of `topic` never reached this queue
    /// (the shard itself missed them): it belongs right before the next frame of the topic.
    pub fn push_notice(&mut self, topic: &str, from: u64, to: u64, reason: &'static str) {
        let frame = protocol::gap(topic, from, to, reason);
        self.chunks
            .push_back(Chunk::Notice(frame.into_boxed_slice()));
    }

    /// Removes every queued published frame for which `keep` says false (after an unsubscribe).
    /// Pending gaps of the topics kept are put in place first, in front of the first published
    /// frame still queued: that frame may be one about to go, and a notice queued behind it
    /// (for later sequences) must not end up ahead of them. Returns how many gap notices were
    /// put in place.
    pub fn retain_published(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        if let Some(gaps) = &mut self.gaps {
            gaps.retain(|g| keep(g.first.name()));
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
        match gaps.iter_mut().rev().find(|g| g.first.topic == f.topic) {
            Some(g) if g.to + 1 == f.seq && g.reason == protocol::reason::SLOW_CONSUMER => {
                g.to = f.seq
            }
            _ => gaps.push(Gap {
                from: f.seq,
                to: f.seq,
                reason: protocol::reason::SLOW_CONSUMER,
                first: f,
            }),
        }
        // Pending gaps go in front of the first published frame still queued, which is right
        // only while nothing else stands between the dropped frames and it. A notice queued
        // after the dropped frames (the shard's own `shard_overflow`, for later sequences of
        // the same topic) would then be written before the gap of earlier ones: the client
        // would see its stream jump ahead, then a notice for the past. So a drop that leaves a
        // notice or own frame at its place fixes the pending gaps there, now.
        if matches!(self.chunks.get(pos), Some(Chunk::Notice(_) | Chunk::Own(_))) {
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
            let frame = protocol::gap(g.first.name(), g.from, g.to, g.reason);
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
            let mut iov = Vec::with_capacity(self.chunks.len().min(MAX_IOV));
            let mut want = 0usize;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = if i == 0 {
                    &c.bytes()[self.head_written as usize..]
                } else {
                    c.bytes()
                };
                want += b.len();
                iov.push(IoSlice::new(b));
            }
            let written = match send(&iov) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flushed::Blocked, announced))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            drop(iov);
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
                Some(Chunk::Notice(_)) | None => {}
            }
        }
    }

    /// Frees the buffer of a drained queue. Called after a write that carried only the
    /// connection's own frames (welcome, replies, pings): a connection that is not receiving a
    /// stream holds no queue memory (its next heartbeat ping releases it once a stream stops),
    /// while one that is keeps its buffer from write to write (an allocation and a free per
    /// write would cost the fan-out ~60% more instructions per delivered message).
    fn release(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::frame_at;
    use std::time::Instant;

    /// Size of the small frames the tests queue, in bytes.
    const S: usize = 64;

    fn frame(topic: &str, seq: u64, len: usize) -> Rc<Frame> {
        Rc::new(frame_at(topic, seq, len, Instant::now()))
    }

    const B: Bounds = Bounds {
        max_messages: 3,
        max_bytes: 1000,
        max_control_bytes: 1000,
        max_age: None,
    };

    fn drain(q: &mut Outbound) -> Vec<u8> {
        let mut out = Vec::new();
        q.flush(|iov| {
            let n: usize = iov.iter().map(|s| s.len()).sum();
            for s in iov {
                out.extend_from_slice(s);
            }
            Ok(n)
        })
        .unwrap();
        out
    }

    #[test]
    fn frames_older_than_the_age_bound_are_dropped_and_announced() {
        let t = "t";
        let bounds = Bounds {
            max_messages: 100,
            max_age: Some(std::time::Duration::from_millis(100)),
            ..B
        };
        let start = Instant::now();
        let at = |seq: u64, ms: u64| {
            Rc::new(frame_at(
                t,
                seq,
                S,
                start + std::time::Duration::from_millis(ms),
            ))
        };
        let mut q = Outbound::default();
        q.push_own(b"ack".to_vec());
        assert_eq!(q.push_published(at(1, 0), &bounds), Enqueued::Queued);
        assert_eq!(q.push_published(at(2, 50), &bounds), Enqueued::Queued);
        assert_eq!(
            q.push_published(at(3, 100), &bounds),
            Enqueued::Queued,
            "exactly 100 ms: kept"
        );
        // 160 ms: frames 1 (160 ms old) and 2 (110 ms old) are stale.
        assert_eq!(
            q.push_published(at(4, 160), &bounds),
            Enqueued::DroppedOldest {
                dropped: 2,
                notices: 0
            }
        );
        assert_eq!(q.published_len(), 2);
        let wire = drain(&mut q);
        let gap = protocol::gap("t", 1, 2, protocol::reason::SLOW_CONSUMER);
        assert_eq!(&wire[..3], b"ack", "own frames are never dropped");
        assert_eq!(
            &wire[3..3 + gap.len()],
            &gap[..],
            "the notice precedes the frames left"
        );
        assert_eq!(wire.len(), 3 + gap.len() + 2 * S);
    }

    #[test]
    fn a_queue_drained_of_its_own_frames_frees_its_buffer_a_streaming_one_keeps_it() {
        let t = "t";
        let mut q = Outbound::default();
        q.push_own(b"welcome".to_vec());
        assert!(q.chunks.capacity() > 0);
        assert_eq!(drain(&mut q), b"welcome");
        assert_eq!(q.chunks.capacity(), 0, "idle: no queue memory");

        q.push_published(frame(t, 1, S), &B);
        q.push_own(b"pong".to_vec());
        assert_eq!(drain(&mut q).len(), S + 4);
        assert!(q.is_empty());
        assert!(
            q.chunks.capacity() > 0,
            "streaming: buffer kept for the next write"
        );

        q.push_own(b"ping".to_vec());
        drain(&mut q);
        assert_eq!(q.chunks.capacity(), 0, "the stream stopped: released");
    }

    #[test]
    fn a_gap_goes_before_a_later_notice_of_the_same_topic() {
        // Frames 1-2 queued, then the shard's notice that 3-4 never reached it, then frame 5.
        // The bound (3 frames) drops 1 and 2 to make room for 6 and 7: their
        // gap must reach the client before the notice for 3-4, or its stream jumps ahead
        // and the gap for 1-2 arrives for the past.
        let t = "t";
        let mut q = Outbound::default();
        q.push_published(frame(t, 1, S), &B);
        q.push_published(frame(t, 2, S), &B);
        q.push_notice("t", 3, 4, protocol::reason::SHARD_OVERFLOW);
        q.push_published(frame(t, 5, S), &B);
        assert_eq!(
            q.push_published(frame(t, 6, S), &B),
            Enqueued::DroppedOldest {
                dropped: 1,
                notices: 0
            },
            "frame 2 still stands between the gap and the notice"
        );
        assert_eq!(
            q.push_published(frame(t, 7, S), &B),
            Enqueued::DroppedOldest {
                dropped: 1,
                notices: 1
            },
            "dropping 2 reaches the notice: the gap is placed before it"
        );
        let mut expected = protocol::gap("t", 1, 2, protocol::reason::SLOW_CONSUMER);
        expected.extend(protocol::gap("t", 3, 4, protocol::reason::SHARD_OVERFLOW));
        for seq in 5..=7 {
            expected.extend_from_slice(&frame(t, seq, S).bytes);
        }
        assert_eq!(drain(&mut q), expected, "1-2 gap, 3-4 notice, frames 5-7");
    }

    #[test]
    fn an_unsubscribe_does_not_move_a_pending_gap_behind_a_later_notice() {
        // Bound of 2: [t1, u1]; the shard then queues its notice that t:2-3 never reached it
        // and t4, which drops t1 (u1 now stands where t1 was, so the gap waits). The client
        // unsubscribes from u: u1 goes, and the gap for t:1 must still precede t:2-3.
        let (t, u) = ("t", "u");
        let two = Bounds {
            max_messages: 2,
            ..B
        };
        let mut q = Outbound::default();
        q.push_published(frame(t, 1, S), &two);
        q.push_published(frame(u, 1, S), &two);
        q.push_notice("t", 2, 3, protocol::reason::SHARD_OVERFLOW);
        q.push_published(frame(t, 4, S), &two);
        assert_eq!(q.retain_published(|topic| topic != "u"), 1);
        let mut expected = protocol::gap("t", 1, 1, protocol::reason::SLOW_CONSUMER);
        expected.extend(protocol::gap("t", 2, 3, protocol::reason::SHARD_OVERFLOW));
        expected.extend_from_slice(&frame(t, 4, S).bytes);
        assert_eq!(drain(&mut q), expected);
    }

    #[test]
    fn drops_oldest_and_announces_one_merged_gap_first() {
        let t = "t";
        let mut q = Outbound::default();
        for seq in 1..=3 {
            assert_eq!(q.push_published(frame(t, seq, S), &B), Enqueued::Queued);
        }
        assert_eq!(
            q.push_published(frame(t, 4, S), &B),
            Enqueued::DroppedOldest {
                dropped: 1,
                notices: 0
            }
        );
        assert_eq!(
            q.push_published(frame(t, 5, S), &B),
            Enqueued::DroppedOldest {
                dropped: 1,
                notices: 0
            }
        );
        assert_eq!(q.published_len(), 3);
        let wire = drain(&mut q);
        let gap = protocol::gap("t", 1, 2, protocol::reason::SLOW_CONSUMER);
        assert!(wire.starts_with(&gap), "gap notice comes first");
        assert_eq!(wire.len(), gap.len() + 3 * S);
        assert!(q.is_empty());
    }

    #[test]
    fn byte_bound_drops_too_and_own_frames_survive() {
        let t = "t";
        let mut q = Outbound::default();
        q.push_own(b"hello".to_vec());
        q.push_published(frame(t, 1, 600), &B);
        assert_eq!(
            q.push_published(frame(t, 2, 600), &B),
            Enqueued::DroppedOldest {
                dropped: 1,
                notices: 0
            }
        );
        let wire = drain(&mut q);
        let gap = protocol::gap("t", 1, 1, protocol::reason::SLOW_CONSUMER);
        assert_eq!(&wire[..5], b"hello", "own frames keep their place");
        assert_eq!(
            &wire[5..5 + gap.len()],
            &gap[..],
            "the notice precedes the next frame"
        );
        assert_eq!(wire.len(), gap.len() + 5 + 600);
    }

    #[test]
    fn partial_write_keeps_the_head_whole() {
        let t = "t";
        let mut q = Outbound::default();
        for seq in 1..=3 {
            q.push_published(frame(t, seq, S), &B);
        }
        // The socket takes frame 1 whole and all of frame 2 but 5 bytes.
        let (state, _) = q.flush(|_| Ok(2 * S - 5)).unwrap();
        assert_eq!(state, Flushed::Blocked);
        assert_eq!(q.head().unwrap().len(), 5);
        // Frame 2 is partly written, so frame 3 is the oldest that may be dropped.
        q.push_published(frame(t, 4, S), &B);
        q.push_published(frame(t, 5, S), &B);
        let wire = drain(&mut q);
        let gap = protocol::gap("t", 3, 3, protocol::reason::SLOW_CONSUMER);
        assert_eq!(wire.len(), 5 + gap.len() + 2 * S);
        assert_eq!(
            &wire[5..5 + gap.len()],
            &gap[..],
            "gap after the partial frame"
        );
    }

    #[test]
    fn later_gap_notices_follow_earlier_unwritten_ones() {
        let t = "t";
        let mut q = Outbound::default();
        for seq in 1..=3 {
            q.push_published(frame(t, seq, S), &B);
        }
        q.push_published(frame(t, 4, S), &B); // drops 1
                                              // Nothing can be written: the notice for 1 is queued, unwritten.
        q.flush(|_| Err(io::Error::from(io::ErrorKind::WouldBlock)))
            .unwrap();
        q.push_published(frame(t, 5, S), &B); // drops 2
        let wire = drain(&mut q);
        let first = protocol::gap("t", 1, 1, protocol::reason::SLOW_CONSUMER);
        let second = protocol::gap("t", 2, 2, protocol::reason::SLOW_CONSUMER);
        assert_eq!(&wire[..first.len()], &first[..]);
        assert_eq!(&wire[first.len()..first.len() + second.len()], &second[..]);
        assert_eq!(wire.len(), first.len() + second.len() + 3 * S);
    }

    #[test]
    fn head_of_a_blocked_queue_is_the_pending_gap_notice() {
        let t = "t";
        let mut q = Outbound::default();
        for seq in 1..=3 {
            q.push_published(frame(t, seq, S), &B);
        }
        // Blocked: nothing written, then drops happen while the socket is full.
        q.flush(|_| Err(io::Error::from(io::ErrorKind::WouldBlock)))
            .unwrap();
        q.push_published(frame(t, 4, S), &B);
        let gap = protocol::gap("t", 1, 1, protocol::reason::SLOW_CONSUMER);
        assert_eq!(
            q.head().unwrap(),
            &gap[..],
            "the notice goes out before frame 2"
        );
    }

    #[test]
    fn would_block_reports_blocked_and_keeps_everything() {
        let t = "t";
        let mut q = Outbound::default();
        q.push_published(frame(t, 1, S), &B);
        let (state, _) = q
            .flush(|_| Err(io::Error::from(io::ErrorKind::WouldBlock)))
            .unwrap();
        assert_eq!(state, Flushed::Blocked);
        assert_eq!(q.published_len(), 1);
    }

    #[test]
    fn retain_removes_unsubscribed_topics() {
        let a = "a";
        let b = "b";
        let mut q = Outbound::default();
        q.push_published(frame(a, 1, S), &B);
        q.push_published(frame(b, 1, S), &B);
        q.retain_published(|topic| topic != "a");
        assert_eq!(q.published_len(), 1);
        assert_eq!(drain(&mut q).len(), S);
    }
}

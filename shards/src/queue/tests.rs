//! Unit tests of the outbound queue.

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

    // More frames than fit the iovec on the stack, and more than one write's worth: the
    // bytes go out whole and in order.
    let roomy = Bounds {
        max_messages: 10_000,
        max_bytes: 10 << 20,
        ..B
    };
    let mut expected = Vec::new();
    for seq in 2..(2 + MAX_IOV as u64 + 40) {
        let f = frame(t, seq, S);
        expected.extend_from_slice(&f.bytes);
        q.push_published(f, &roomy);
    }
    let (mut calls, mut wire) = (Vec::new(), Vec::new());
    let (done, _) = q
        .flush(|iov| {
            calls.push(iov.len());
            for s in iov {
                wire.extend_from_slice(s);
            }
            Ok(iov.iter().map(|s| s.len()).sum())
        })
        .unwrap();
    assert_eq!(done, Flushed::Drained);
    assert_eq!(calls, vec![MAX_IOV, 40], "one call per MAX_IOV frames");
    assert!(wire == expected, "every frame whole, in order");

    // A short write in the inline case: the rest stays queued, the head part-written.
    for seq in 600..603 {
        q.push_published(frame(t, seq, S), &roomy);
    }
    let (done, _) = q.flush(|_| Ok(S + 1)).unwrap();
    assert_eq!(done, Flushed::Blocked);
    assert_eq!(q.head().map(|h| h.len()), Some(S - 1));
    assert_eq!(drain(&mut q).len(), S - 1 + S);

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

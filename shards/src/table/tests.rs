//! Unit tests of the subscription table.

use super::*;
use crate::ring::testing::frame;

fn topic(s: &str) -> Interest {
    Interest::Topic(s.into())
}

fn delivered(table: &mut Table<u32>, f: &Frame) -> Vec<(u32, Option<(u64, u64)>)> {
    let mut v = Vec::new();
    table.route(f, |s, m| v.push((**s, m)));
    v
}

#[test]
fn ack_waits_for_the_dispatcher_then_frames_flow() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let a = Rc::new(1u32);
    assert!(t
        .subscribe(
            a.clone(),
            Some(7),
            vec![(topic("x"), true)],
            vec![],
            &mut out
        )
        .is_none());
    let nonce = match &out[..] {
        [ToDispatcher::Subscribe { nonce, .. }] => *nonce,
        other => panic!("{other:?}"),
    };
    // Frames before the reply are not routed.
    assert_eq!(t.route(&frame("x", 3), |_, _| {}), Routed::Unrouted);
    let done = t.on_subscribed(&topic("x"), nonce, 41, &mut Vec::new());
    match &done[..] {
        [Resolved { id, topics, .. }] => {
            assert_eq!(*id, Some(7));
            assert_eq!(topics, &vec![(topic("x"), Some(41))]);
        }
        _ => panic!("expected one ack"),
    }
    assert_eq!(delivered(&mut t, &frame("x", 42)), vec![(1, None)]);
    // A second subscriber is acked at once with the shard's last sequence.
    let b = Rc::new(2u32);
    let mut out2 = Vec::new();
    match t.subscribe(b, None, vec![(topic("x"), true)], vec![], &mut out2) {
        Some(Resolved { topics, .. }) => assert_eq!(topics[0].1, Some(42)),
        _ => panic!("expected an immediate ack"),
    }
    assert!(out2.is_empty());
}

#[test]
fn missed_frames_are_reported_and_stale_ones_ignored() {
    let mut t = Table::default();
    let mut out = Vec::new();
    t.subscribe(
        Rc::new(1u32),
        None,
        vec![(topic("x"), true)],
        vec![],
        &mut out,
    );
    t.on_subscribed(&topic("x"), 1, 0, &mut Vec::new());
    assert_eq!(delivered(&mut t, &frame("x", 1)), vec![(1, None)]);
    assert_eq!(delivered(&mut t, &frame("x", 5)), vec![(1, Some((2, 4)))]);
    assert_eq!(t.route(&frame("x", 5), |_, _| {}), Routed::Stale);
}

#[test]
fn the_first_frame_after_the_ack_reports_a_hole_from_the_acked_sequence() {
    // What the shard's late-frame notice relies on: the table knows the topic by name only
    // (no frame of it met yet), and still measures the hole from the sequence the ack gave.
    let mut t = Table::default();
    let mut out = Vec::new();
    t.subscribe(
        Rc::new(1u32),
        None,
        vec![(topic("late.x"), true)],
        vec![],
        &mut out,
    );
    t.on_subscribed(&topic("late.x"), 1, 10, &mut Vec::new());
    assert_eq!(
        t.last_seq_of(frame("late.x", 15).topic),
        None,
        "not met by id yet"
    );
    assert_eq!(
        delivered(&mut t, &frame("late.x", 15)),
        vec![(1, Some((11, 14)))]
    );
    // Frames at or below the acked sequence belong to before the subscription.
    let mut t = Table::default();
    t.subscribe(
        Rc::new(1u32),
        None,
        vec![(topic("late.y"), true)],
        vec![],
        &mut out,
    );
    t.on_subscribed(&topic("late.y"), 1, 10, &mut Vec::new());
    assert_eq!(t.route(&frame("late.y", 10), |_, _| {}), Routed::Stale);
    assert_eq!(delivered(&mut t, &frame("late.y", 11)), vec![(1, None)]);
}

#[test]
fn last_unsubscribe_tells_the_dispatcher_and_stale_reply_is_ignored() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let a = Rc::new(1u32);
    t.subscribe(a.clone(), None, vec![(topic("x"), true)], vec![], &mut out);
    t.on_subscribed(&topic("x"), 1, 0, &mut Vec::new());
    out.clear();
    t.unsubscribe(&a, &topic("x"), &mut out);
    assert_eq!(
        out,
        vec![ToDispatcher::Unsubscribe {
            interest: topic("x")
        }]
    );
    assert_eq!(t.interest_count(), 0);
    // Resubscribe: a new nonce; the old nonce's reply changes nothing.
    out.clear();
    t.subscribe(a.clone(), None, vec![(topic("x"), true)], vec![], &mut out);
    assert!(t
        .on_subscribed(&topic("x"), 1, 9, &mut Vec::new())
        .is_empty());
    assert_eq!(t.on_subscribed(&topic("x"), 2, 9, &mut Vec::new()).len(), 1);
}

#[test]
fn a_topic_dropped_and_subscribed_again_is_found_by_its_id_again() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let a = Rc::new(1u32);
    t.subscribe(a.clone(), None, vec![(topic("x"), true)], vec![], &mut out);
    t.on_subscribed(&topic("x"), 1, 0, &mut Vec::new());
    assert_eq!(delivered(&mut t, &frame("x", 1)), vec![(1, None)]);
    assert_eq!(t.last_seq_of(frame("x", 1).topic), Some(1));
    t.unsubscribe(&a, &topic("x"), &mut out);
    assert_eq!(
        t.last_seq_of(frame("x", 1).topic),
        None,
        "the id is forgotten"
    );
    assert_eq!(t.route(&frame("x", 2), |_, _| {}), Routed::Unrouted);
    // Another topic takes the freed slot; x's id must not lead to it.
    t.subscribe(a.clone(), None, vec![(topic("y"), true)], vec![], &mut out);
    t.on_subscribed(&topic("y"), 2, 0, &mut Vec::new());
    assert_eq!(t.route(&frame("x", 3), |_, _| {}), Routed::Unrouted);
    assert_eq!(delivered(&mut t, &frame("y", 1)), vec![(1, None)]);
    t.subscribe(a.clone(), None, vec![(topic("x"), true)], vec![], &mut out);
    t.on_subscribed(&topic("x"), 3, 3, &mut Vec::new());
    assert_eq!(delivered(&mut t, &frame("x", 4)), vec![(1, None)]);
    assert_eq!(t.last_seq_of(frame("x", 4).topic), Some(4));
    assert_eq!(t.last_seq_of(frame("y", 1).topic), Some(1));
}

#[test]
fn patterns_route_present_and_future_topics() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let p = Interest::Prefix("trades".into());
    t.subscribe(
        Rc::new(1u32),
        None,
        vec![(p.clone(), true)],
        vec![],
        &mut out,
    );
    match &t.on_subscribed(&p, 1, 0, &mut Vec::new())[..] {
        [Resolved { topics, .. }] => assert_eq!(topics[0].1, None),
        _ => panic!(),
    }
    assert_eq!(delivered(&mut t, &frame("trades.A", 10)), vec![(1, None)]);
    assert_eq!(delivered(&mut t, &frame("trades.B", 1)), vec![(1, None)]);
    assert_eq!(t.route(&frame("book.A", 1), |_, _| {}), Routed::Unrouted);
    assert_eq!(
        delivered(&mut t, &frame("trades.A", 12)),
        vec![(1, Some((11, 11)))]
    );
}

#[test]
fn overlapping_requests_add_once_and_complete_in_order() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let a = Rc::new(1u32);
    // id 1 wants x and y; id 2 wants y too, while id 1 is pending.
    t.subscribe(
        a.clone(),
        Some(1),
        vec![(topic("x"), true), (topic("y"), true)],
        vec![],
        &mut out,
    );
    t.subscribe(
        a.clone(),
        Some(2),
        vec![(topic("y"), true)],
        vec![],
        &mut out,
    );
    let done = t.on_subscribed(&topic("y"), 2, 0, &mut Vec::new());
    assert!(matches!(&done[..], [Resolved { id: Some(2), .. }]));
    assert_eq!(
        delivered(&mut t, &frame("y", 1)),
        vec![(1, None)],
        "y flows at once"
    );
    let done = t.on_subscribed(&topic("x"), 1, 0, &mut Vec::new());
    assert!(matches!(&done[..], [Resolved { id: Some(1), .. }]));
    assert!(t.wants(&a, &topic("y")) && t.wants(&a, &topic("x")));
    assert_eq!(
        delivered(&mut t, &frame("y", 2)),
        vec![(1, None)],
        "and is not doubled"
    );
}

#[test]
fn a_second_pattern_keeps_the_baseline_another_pattern_tracks() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let wide = Interest::Prefix("a".into());
    t.subscribe(
        Rc::new(1u32),
        None,
        vec![(wide.clone(), true)],
        vec![],
        &mut out,
    );
    t.on_subscribed(&wide, 1, 0, &mut Vec::new());
    assert_eq!(delivered(&mut t, &frame("a.b.c", 10)), vec![(1, None)]);
    let narrow = Interest::Prefix("a.b".into());
    t.subscribe(
        Rc::new(2u32),
        None,
        vec![(narrow.clone(), true)],
        vec![],
        &mut out,
    );
    t.on_subscribed(&narrow, 2, 0, &mut Vec::new());
    // 11..15 never reached the shard: both subscribers hear of the hole.
    let mut got = delivered(&mut t, &frame("a.b.c", 16));
    got.sort();
    assert_eq!(got, vec![(1, Some((11, 15))), (2, Some((11, 15)))]);
}

#[test]
fn requests_completed_by_one_reply_resolve_in_request_order() {
    let mut t = Table::default();
    let mut out = Vec::new();
    for id in 1..=4u64 {
        t.subscribe(
            Rc::new(id as u32),
            Some(id),
            vec![(topic("x"), true)],
            vec![],
            &mut out,
        );
    }
    let ids: Vec<Option<u64>> = t
        .on_subscribed(&topic("x"), 1, 0, &mut Vec::new())
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [Some(1), Some(2), Some(3), Some(4)]);
}

#[test]
fn many_patterns_route_by_lookup() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let sub = Rc::new(7u32);
    for i in 0..1000 {
        let p = Interest::Prefix(format!("p{i}").into());
        t.subscribe(sub.clone(), None, vec![(p.clone(), true)], vec![], &mut out);
        let nonce = match out.last() {
            Some(ToDispatcher::Subscribe { nonce, .. }) => *nonce,
            other => panic!("{other:?}"),
        };
        t.on_subscribed(&p, nonce, 0, &mut Vec::new());
    }
    assert_eq!(delivered(&mut t, &frame("p999.x", 1)), vec![(7, None)]);
    assert_eq!(delivered(&mut t, &frame("p5.a.b", 1)), vec![(7, None)]);
    assert_eq!(t.route(&frame("q.x", 1), |_, _| {}), Routed::Unrouted);
    out.clear();
    t.unsubscribe(&sub, &Interest::Prefix("p5".into()), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(t.route(&frame("p5.a.b", 2), |_, _| {}), Routed::Unrouted);
}

#[test]
fn interning_returns_the_tables_name() {
    let mut t: Table<()> = Table::default();
    let first = Interest::Topic(Arc::from("book.X"));
    let mut out = Vec::new();
    t.subscribe(
        Rc::new(()),
        None,
        vec![(first.clone(), true)],
        vec![],
        &mut out,
    );
    let again = t.intern(Interest::Topic(Arc::from("book.X")));
    match (&first, &again) {
        (Interest::Topic(a), Interest::Topic(b)) => assert!(Arc::ptr_eq(a, b)),
        _ => unreachable!(),
    }
    let other = Interest::Topic(Arc::from("book.Y"));
    assert_eq!(
        t.intern(other.clone()),
        other,
        "unknown topics pass through"
    );
}

fn snapshot_item(name: &str) -> RecoverItem {
    RecoverItem {
        topic: name.into(),
        since: None,
        snapshot: true,
    }
}

fn answer(seq: u64, waiting: bool) -> RecoveredItem {
    RecoveredItem {
        seq,
        head: seq,
        recovered: None,
        start: crate::ring::Start::Snapshot,
        waiting,
        frames: Vec::new(),
    }
}

#[test]
fn history_is_asked_once_the_interest_is_live_and_the_request_completes_with_the_answer() {
    let mut t = Table::default();
    let mut out = Vec::new();
    let a = Rc::new(1u32);
    let done = t.subscribe(
        a.clone(),
        Some(1),
        vec![(topic("book.x"), true)],
        vec![snapshot_item("book.x")],
        &mut out,
    );
    assert!(done.is_none());
    // First the route, then, with it live, the history.
    assert!(
        matches!(&out[..], [ToDispatcher::Subscribe { .. }]),
        "{out:?}"
    );
    let mut asks = Vec::new();
    assert!(t
        .on_subscribed(&topic("book.x"), 1, 4, &mut asks)
        .is_empty());
    let nonce = match &asks[..] {
        [ToDispatcher::Recover { nonce, items }] => {
            assert_eq!(items, &vec![snapshot_item("book.x")]);
            *nonce
        }
        other => panic!("{other:?}"),
    };
    // A stale answer completes nothing; the right one completes the request.
    assert!(t.on_recovered(nonce + 100, vec![answer(4, true)]).is_none());
    let r = t
        .on_recovered(nonce, vec![answer(4, true)])
        .expect("completed");
    assert_eq!(r.topics, vec![(topic("book.x"), Some(4))]);
    assert_eq!(r.recovered.len(), 1);
    // Waiting for a snapshot: no delta reaches it, the snapshot does, then deltas.
    assert!(delivered(&mut t, &frame("book.x", 5)).is_empty());
    let mut snap = frame("book.x", 6);
    snap.snapshot = true;
    assert_eq!(delivered(&mut t, &snap), vec![(1, None)]);
    assert_eq!(delivered(&mut t, &frame("book.x", 7)), vec![(1, None)]);
}

#[test]
fn a_resync_leaves_the_subscribers_at_once_and_rejoins_with_the_answer() {
    let (mut t, a) = live_on("book.y");
    assert_eq!(delivered(&mut t, &frame("book.y", 1)), vec![(1, None)]);
    let nonce = start_resync(&mut t, &a, Some(9), "book.y", false);
    // Between the resync and the answer it gets nothing (the answer's frames cover it).
    assert!(delivered(&mut t, &frame("book.y", 2)).is_empty());
    let r = t
        .on_recovered(nonce, vec![answer(2, false)])
        .expect("completed");
    assert_eq!(r.id, Some(9));
    assert_eq!(delivered(&mut t, &frame("book.y", 3)), vec![(1, None)]);
}

#[test]
fn an_unsubscribe_drops_a_pending_quiet_resnapshot_and_releases_the_topic() {
    let (mut t, a) = live_on("book.z");
    // The server starts a resnapshot (quiet); the client unsubscribes before the answer.
    let nonce = start_resync(&mut t, &a, None, "book.z", true);
    let mut gone = Vec::new();
    t.unsubscribe(&a, &topic("book.z"), &mut gone);
    assert_eq!(
        gone,
        vec![ToDispatcher::Unsubscribe {
            interest: topic("book.z")
        }],
        "the topic is released"
    );
    assert!(
        t.on_recovered(nonce, vec![answer(0, false)]).is_none(),
        "nothing to deliver"
    );
    assert_eq!(t.interest_count(), 0);
}

/// A table where subscriber 1 is live on `name`, and its `Rc`.
fn live_on(name: &str) -> (Table<u32>, Rc<u32>) {
    let mut t = Table::default();
    let a = Rc::new(1u32);
    t.subscribe(
        a.clone(),
        None,
        vec![(topic(name), true)],
        vec![],
        &mut Vec::new(),
    );
    t.on_subscribed(&topic(name), 1, 0, &mut Vec::new());
    (t, a)
}

/// Starts a resync of `a` on `name` (quiet or not); returns the nonce of the `Recover`.
fn start_resync(t: &mut Table<u32>, a: &Rc<u32>, id: Option<u64>, name: &str, quiet: bool) -> u64 {
    let mut asks = Vec::new();
    assert!(t
        .resync(
            a.clone(),
            id,
            topic(name),
            snapshot_item(name),
            quiet,
            &mut asks
        )
        .is_none());
    match &asks[..] {
        [ToDispatcher::Recover { nonce, .. }] => *nonce,
        other => panic!("{other:?}"),
    }
}

#[test]
fn frames_the_shard_missed_but_a_replay_covered_are_announced_to_the_others_only() {
    let (mut t, _a) = live_on("t.h");
    for seq in 1..=3 {
        assert_eq!(delivered(&mut t, &frame("t.h", seq)), vec![(1, None)]);
    }
    // 4..=6 never reach the shard (lost before it); b resumes and its replay covers them.
    let b = Rc::new(2u32);
    let mut asks = Vec::new();
    let item = RecoverItem {
        topic: "t.h".into(),
        since: Some(("e".into(), 2)),
        snapshot: false,
    };
    assert!(t
        .subscribe(
            b.clone(),
            Some(1),
            vec![(topic("t.h"), true)],
            vec![item],
            &mut asks
        )
        .is_none());
    let [ToDispatcher::Recover { nonce, .. }] = &asks[..] else {
        panic!("{asks:?}")
    };
    let mut recovered = answer(2, false);
    recovered.head = 6;
    recovered.recovered = Some(true);
    recovered.start = crate::ring::Start::Next;
    let r = t.on_recovered(*nonce, vec![recovered]).expect("completed");
    let behind: Vec<(u32, &str, u64, u64)> = r
        .behind
        .iter()
        .map(|(s, n, f, to)| (**s, &**n, *f, *to))
        .collect();
    assert_eq!(behind, vec![(1, "t.h", 4, 6)], "a is told; b has them");
    // The next frame finds no hole, for either.
    let mut got = delivered(&mut t, &frame("t.h", 7));
    got.sort();
    assert_eq!(got, vec![(1, None), (2, None)]);
}

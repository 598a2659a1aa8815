//! Benchmarks live in `benches/`: `dispatcher` (ingest parse, frame build), `fanout` (routing
//! a frame to N subscribers on one shard, drop-oldest queue, token bucket), `ring_hop`
//! (dispatcher -> shard latency) and `instructions` (fixed work for callgrind). This library
//! holds the fixtures they share.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use corecast_shards::protocol;
use corecast_shards::queue::{Bounds, Outbound};
use corecast_shards::ring::{Frame, Interest, TopicId};
use corecast_shards::table::{Table, ToDispatcher};

/// One order-book delta as a publisher sends it.
pub const BOOK_LINE: &str = r#"{"topic":"book.BTCUSD","data":{"symbol":"BTCUSD","bids":[["43210.50","1.2000"]],"asks":[["43211.00","0.0000"]]},"ts":1700000000000000}"#;

/// The default queue bounds of a connection.
pub const BOUNDS: Bounds = Bounds {
    max_messages: 4096,
    max_bytes: 4 << 20,
    max_control_bytes: 256 << 10,
    max_age: None,
};

/// Topic of [`trade_frame`] and [`table_with`].
pub const TOPIC: &str = "trades.BTCUSD";

/// A small trade frame of [`TOPIC`], sequence `seq`, as the dispatcher builds it.
pub fn trade_frame(seq: u64) -> Frame {
    Frame {
        topic: TopicId(0),
        seq,
        bytes: protocol::msg(TOPIC, seq, 1, br#"{"p":"43210.5","q":"0.01"}"#),
        ingest_at: Instant::now(),
        snapshot: false,
        system: false,
    }
}

/// One subscriber's queue.
pub type Queue = Rc<RefCell<Outbound>>;

/// A table with `n` subscribers (each with its own queue) on [`TOPIC`], live.
pub fn table_with(n: usize) -> (Table<RefCell<Outbound>>, Vec<Queue>) {
    let mut t = Table::default();
    let topic = Interest::Topic(Arc::from(TOPIC));
    let mut out = Vec::new();
    let subs: Vec<Queue> = (0..n)
        .map(|_| Rc::new(RefCell::new(Outbound::default())))
        .collect();
    for s in &subs {
        t.subscribe(
            s.clone(),
            None,
            vec![(topic.clone(), true)],
            vec![],
            &mut out,
        );
    }
    let done = t.on_subscribed(&topic, 1, 0, &mut Vec::new());
    assert_eq!(done.len(), n);
    (t, subs)
}

/// A table with one subscriber on [`TOPIC`], one on the pattern `trades.*` that covers it,
/// and `others` more on patterns that do not (`p0.*`, `p1.*`, ...), all live: routing a frame
/// of [`TOPIC`] reaches two queues whatever `others` is. Returns the two queues that receive.
pub fn table_with_patterns(others: usize) -> (Table<RefCell<Outbound>>, Vec<Queue>) {
    let mut t = Table::default();
    let mut out = Vec::new();
    let receivers: Vec<Queue> = (0..2)
        .map(|_| Rc::new(RefCell::new(Outbound::default())))
        .collect();
    let mut subscribe = |t: &mut Table<RefCell<Outbound>>, q: Queue, i: Interest| {
        t.subscribe(q, None, vec![(i, true)], vec![], &mut out);
        for m in out.drain(..) {
            if let ToDispatcher::Subscribe { interest, nonce } = m {
                t.on_subscribed(&interest, nonce, 0, &mut Vec::new());
            }
        }
    };
    subscribe(
        &mut t,
        receivers[0].clone(),
        Interest::Topic(Arc::from(TOPIC)),
    );
    subscribe(
        &mut t,
        receivers[1].clone(),
        Interest::Prefix(Arc::from("trades")),
    );
    for k in 0..others {
        let q = Rc::new(RefCell::new(Outbound::default()));
        subscribe(&mut t, q, Interest::Prefix(Arc::from(format!("p{k}"))));
    }
    (t, receivers)
}

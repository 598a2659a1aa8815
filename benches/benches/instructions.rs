//! A fixed amount of work per stage, for counting instructions with callgrind (stable on a noisy
//! machine, unlike time). Run it twice with N and 2N and divide the difference by N: setup
//! cancels out. `tuning/instructions.sh` does exactly that.
//!
//! `instructions fanout N`: N frames routed to 1,000 subscribers of one topic and drained as a
//! write round would (no system call): instructions per delivered message.
//! `instructions ingest N`: N order-book lines parsed, sequenced and framed: instructions per
//! published message on the dispatcher.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use corecast::dispatcher::encode_msg;
use corecast::publisher::parse_line;
use corecast_shards::queue::{Bounds, Outbound};
use corecast_shards::ring::{Frame, Interest};
use corecast_shards::table::Table;

const SUBSCRIBERS: usize = 1000;
const LINE: &str = r#"{"topic":"book.BTCUSD","data":{"symbol":"BTCUSD","bids":[["43210.50","1.2000"]],"asks":[["43211.00","0.0000"]]},"ts":1700000000000000}"#;
const BOUNDS: Bounds = Bounds {
    max_messages: 4096,
    max_bytes: 4 << 20,
    max_control_bytes: 256 << 10,
    max_age: None,
};

fn fanout(n: u64) -> u64 {
    let mut table: Table<RefCell<Outbound>> = Table::default();
    let topic = Interest::Topic(Arc::from("trades.BTCUSD"));
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| Rc::new(RefCell::new(Outbound::default())))
        .collect();
    let mut out = Vec::new();
    for s in &subs {
        table.subscribe(s.clone(), None, vec![(topic.clone(), true)], &mut out);
    }
    table.on_subscribed(&topic, 1, Ok(0), &mut out);
    let mut written = 0u64;
    for seq in 1..=n {
        let f = Rc::new(Frame {
            topic: Arc::from("trades.BTCUSD"),
            seq,
            bytes: encode_msg("trades.BTCUSD", seq, 1, br#"{"p":"43210.5","q":"0.01"}"#),
            ingest_at: Instant::now(),
        });
        table.route(&f, |s, _| {
            s.borrow_mut().push_published(f.clone(), &BOUNDS);
        });
        for s in &subs {
            let _ = s.borrow_mut().flush(|iov| {
                let len: usize = iov.iter().map(|s| s.len()).sum();
                written += len as u64;
                Ok::<usize, std::io::Error>(len)
            });
        }
    }
    written
}

fn ingest(n: u64) -> u64 {
    let mut buf = LINE.as_bytes().to_vec();
    let mut bytes = 0u64;
    for seq in 1..=n {
        buf.copy_from_slice(LINE.as_bytes());
        let e = parse_line(&mut buf, Instant::now()).expect("valid line");
        bytes += encode_msg(&e.topic, seq, e.ts.unwrap_or(0), &e.data).len() as u64;
    }
    bytes
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let out = match args.first().map(String::as_str) {
        Some("fanout") => fanout(n),
        Some("ingest") => ingest(n),
        _ => {
            eprintln!("usage: instructions fanout|ingest N");
            std::process::exit(2);
        }
    };
    println!("{out}");
}

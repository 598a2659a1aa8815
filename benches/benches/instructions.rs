//! A fixed amount of work per stage, for counting instructions with callgrind (stable on a noisy
//! machine, unlike time). Run it twice with N and 2N and divide the difference by N: setup
//! cancels out. `tuning/instructions.sh` does exactly that.
//!
//! `instructions fanout N`: N frames routed to 1,000 subscribers of one topic and drained as a
//! write round would (no system call): instructions per delivered message.
//! `instructions ingest N`: N order-book lines parsed, sequenced and framed: instructions per
//! published message on the dispatcher.

use std::rc::Rc;

use corecast::publisher::LineParser;
use corecast_benches::{table_with, trade_frame, BOOK_LINE as LINE, BOUNDS};
use corecast_shards::protocol;

const SUBSCRIBERS: usize = 1000;

fn fanout(n: u64) -> u64 {
    let (mut table, subs) = table_with(SUBSCRIBERS);
    let mut written = 0u64;
    for seq in 1..=n {
        let f = Rc::new(trade_frame(seq));
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
    let mut parser = LineParser::default();
    let mut bytes = 0u64;
    for seq in 1..=n {
        let e = parser.parse(LINE.as_bytes()).expect("valid line");
        bytes += protocol::msg(e.topic, seq, e.ts.unwrap_or(0), e.data).len() as u64;
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

//! The real `corecast demo` binary: a subscribed client sees live, contiguous `msg` frames, and
//! SIGTERM closes it with 1001 and exits cleanly.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;

#[test]
fn demo_feed_reaches_a_client_in_order_and_sigterm_says_going_away() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
            "--shards",
            "1",
        ])
        .args(["--exit-after", "60"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the binary prints its addresses")
            .unwrap();
        if let Some(rest) = line.split("clients on ws://").nth(1) {
            let addr = rest.split(',').next().unwrap().trim();
            break format!("ws://{addr}/ws");
        }
    };
    let mut ws = connect(&url);
    let ack = subscribe(&mut ws, 1, &["trades.BTCUSD", "book.BTCUSD", "ticker.*"]);
    let mut last: HashMap<String, u64> = HashMap::new();
    for t in ["trades.BTCUSD", "book.BTCUSD"] {
        last.insert(t.to_string(), ack_seq(&ack, t));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    let mut snapshots = 0;
    while seen < 60 && Instant::now() < deadline {
        let m = next_json(&mut ws);
        let op = m["op"].as_str().unwrap_or_default().to_string();
        if op != "msg" && op != "snapshot" {
            continue;
        }
        let topic = m["topic"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        // `book.` is a snapshot topic in the demo: it starts with a snapshot, whose seq may be
        // below the ack's; every later message is the previous + 1.
        let prev = last.insert(topic.clone(), seq);
        if op == "snapshot" {
            assert!(topic.starts_with("book."), "{m:?}");
            snapshots += 1;
        } else if let Some(prev) = prev {
            assert_eq!(seq, prev + 1, "contiguous seq on {topic}");
        }
        assert!(m["data"]["symbol"].is_str(), "market data payload: {m:?}");
        seen += 1;
    }
    assert_eq!(seen, 60, "live messages within 20 s");
    assert!(snapshots >= 1, "the book started from a snapshot");
    // SIGTERM: graceful shutdown.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, reason) = expect_close(&mut ws);
    assert_eq!((code, reason.as_str()), (1001, "going away, reconnect"));
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

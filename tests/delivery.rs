//! Delivery over real sockets with tungstenite clients: order, contiguity, unsubscribe,
//! patterns, many shards, slow readers, heartbeats, shutdown, TCP ingest.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;
use tungstenite::Message;

#[test]
fn subscribe_then_receive_in_order_with_contiguous_seq() {
    let server = start(|_| {});
    server.publish_settled("book.BTCUSD", 5); // history before the subscription
    let mut ws = connect(&server.url);
    let welcome = next_op(&mut ws, "welcome");
    assert!(welcome["conn"].as_str().unwrap().starts_with("0-"));
    let ack = subscribe(&mut ws, 7, &["book.BTCUSD"]);
    assert_eq!(ack_seq(&ack, "book.BTCUSD"), 5);
    server.publish("book.BTCUSD", 300);
    for k in 0..300u64 {
        let m = next_op(&mut ws, "msg");
        assert_eq!(m["seq"].as_u64(), Some(6 + k));
        assert_eq!(
            m["data"]["i"].as_u64(),
            Some(k),
            "payload travels unchanged"
        );
        assert!(
            m["ts"].as_u64().unwrap() > 1_600_000_000_000_000,
            "ts in µs"
        );
    }
}

#[test]
fn in_process_publisher_refuses_bad_events_with_errors() {
    let server = start(|_| {});
    let e = server.publisher.publish("bad topic", "{}").unwrap_err();
    assert_eq!(e.code(), "bad_topic");
    let e = server.publisher.publish("ok.topic", "{nope").unwrap_err();
    assert_eq!(e.code(), "invalid_json");
    // A good event after the refusals is delivered.
    let mut peer = Bystander::new(&server, "ok.topic");
    peer.check(&server, 3);
}

#[test]
fn unsubscribe_stops_delivery() {
    let server = start(|_| {});
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["a.x", "b.x"]);
    server.publish("a.x", 3);
    expect_contiguous(&mut ws, "a.x", 1, 3);
    send(&mut ws, r#"{"op":"unsubscribe","id":2,"topics":["a.x"]}"#);
    let ack = next_op(&mut ws, "ack");
    assert_eq!(ack["id"], 2);
    assert_eq!(ack_seq(&ack, "a.x"), 3);
    server.publish("a.x", 50);
    server.publish("b.x", 1); // fence: published after every a.x message
    let m = next_op(&mut ws, "msg");
    assert_eq!(
        m["topic"].as_str(),
        Some("b.x"),
        "no a.x after the unsubscribe ack"
    );
    send(&mut ws, r#"{"op":"unsubscribe","id":3,"topics":["a.x"]}"#);
    let e = next_op(&mut ws, "error");
    assert_eq!(e["code"].as_str(), Some("not_subscribed"));
}

#[test]
fn pattern_receives_present_and_future_topics_only_under_its_prefix() {
    let server = start(|_| {});
    server.publish_settled("trades.OLD", 2);
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["trades.*"]);
    assert!(
        ack["topics"][0]["seq"].is_null(),
        "patterns ack without a seq: {ack:?}"
    );
    server.publish("trades.OLD", 1);
    server.publish("book.OLD", 1);
    server.publish("tradesX.NEW", 1);
    server.publish("trades.NEW", 2);
    let got: Vec<(String, u64)> = (0..3)
        .map(|_| {
            let m = next_op(&mut ws, "msg");
            (
                m["topic"].as_str().unwrap().to_string(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("trades.OLD".into(), 3),
            ("trades.NEW".into(), 1),
            ("trades.NEW".into(), 2)
        ],
        "{got:?}"
    );
}

#[test]
fn topic_and_pattern_overlap_delivers_once() {
    let server = start(|_| {});
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["px.a", "px.*"]);
    server.publish("px.a", 20);
    expect_contiguous(&mut ws, "px.a", 1, 20);
}

#[test]
fn every_shard_receives_every_message() {
    let server = start(|c| c.server.shards = 2);
    let mut clients = Vec::new();
    let mut shards_seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let mut ws = connect(&server.url);
        let w = next_op(&mut ws, "welcome");
        let shard = w["conn"]
            .as_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string();
        shards_seen.insert(shard);
        clients.push(ws);
        if shards_seen.len() == 2 && clients.len() >= 6 {
            break;
        }
    }
    assert_eq!(
        shards_seen.len(),
        2,
        "SO_REUSEPORT spread clients over both shards"
    );
    for ws in &mut clients {
        subscribe(ws, 1, &["book.ALL"]);
    }
    server.publish("book.ALL", 500);
    for ws in &mut clients {
        expect_contiguous(ws, "book.ALL", 1, 500);
    }
}

#[test]
fn the_dispatcher_on_its_own_thread_or_on_shard_0_delivers_alike_and_shuts_down() {
    use corecast::config::DispatcherThread;
    for placement in [DispatcherThread::Own, DispatcherThread::Shared] {
        let mut server = start(|c| {
            c.server.shards = 2;
            c.server.dispatcher_thread = placement;
        });
        // Clients on both shards (SO_REUSEPORT spreads them), one of them on the shard
        // that hosts a shared dispatcher.
        let mut clients = Vec::new();
        let mut shards_seen = std::collections::BTreeSet::new();
        while shards_seen.len() < 2 && clients.len() < 64 {
            let mut ws = connect(&server.url);
            let w = next_op(&mut ws, "welcome");
            let conn = w["conn"].as_str().unwrap().to_string();
            shards_seen.insert(conn.split('-').next().unwrap().to_string());
            subscribe(&mut ws, 1, &["trade.X"]);
            clients.push(ws);
        }
        assert_eq!(
            shards_seen.len(),
            2,
            "{placement:?}: clients on both shards"
        );
        // Through the TCP ingest, served on shard 0's executor when shared.
        let mut publisher = TcpStream::connect(server.ingest).unwrap();
        let lines: String = (0..400)
            .map(|i| format!("{{\"topic\":\"trade.X\",\"data\":{{\"i\":{i}}}}}\n"))
            .collect();
        publisher.write_all(lines.as_bytes()).unwrap();
        for ws in &mut clients {
            for k in 0..400u64 {
                let m = next_op(ws, "msg");
                assert_eq!(m["seq"].as_u64(), Some(1 + k), "{placement:?}");
                assert_eq!(m["data"]["i"].as_u64(), Some(k), "{placement:?}");
            }
        }
        // Every thread ends, the dispatcher included wherever it ran; clients hear "going away".
        let closing = std::thread::spawn(move || server.shutdown());
        for ws in &mut clients {
            let (code, _) = expect_close(ws);
            assert_eq!(code, 1001, "{placement:?}");
        }
        assert!(
            closing.join().unwrap(),
            "{placement:?}: every thread ended in time"
        );
    }
}

#[test]
fn slow_reader_gets_gap_notices_and_others_lose_nothing() {
    let server = start(|c| {
        c.shard.queue_max_bytes = 256 * 1024;
        c.shard.send_buffer_bytes = 8192;
    });
    let fast = Bystander::new(&server, "trades.FAST");
    // The slow client: tiny receive buffer, and it does not read while we publish.
    let mut slow = slow_subscriber(&server, "trades.FAST");
    let n = 5000;
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
    // The fast client reads on its own thread while the slow one is stalled.
    publish_keeping_pace(&server, fast.ws, "trades.FAST", n, &payload);
    // Now the slow client reads: every seq is either delivered or inside an announced gap.
    let gaps = read_to_the_end(&mut slow, "trades.FAST", n, Duration::from_secs(10));
    assert!(
        !gaps.is_empty(),
        "the slow reader was told about its losses"
    );
}

/// Publishes `n` messages on `topic` while `reader` (subscribed to it) reads them on its own
/// thread, never more than 50 ahead of it: the reader keeps up however busy the machine is,
/// so it must receive all `n`, contiguous, while a client that does not read falls behind.
fn publish_keeping_pace(
    server: &TestServer,
    mut reader: Client,
    topic: &str,
    n: u64,
    payload: &str,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let read = Arc::new(AtomicU64::new(0));
    let thread = {
        let (read, topic) = (read.clone(), topic.to_string());
        std::thread::spawn(move || {
            for k in 0..n {
                expect_contiguous(&mut reader, &topic, 1 + k, 1);
                read.store(k + 1, Ordering::Release);
            }
        })
    };
    for i in 0..n {
        // Bounded: a reader that stopped (its assertion failed) is waited for 10 s at most.
        let waited = Instant::now();
        while i >= read.load(Ordering::Acquire) + 50
            && waited.elapsed() < Duration::from_secs(10)
            && !thread.is_finished()
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        server.publisher.publish(topic, payload).unwrap();
    }
    thread
        .join()
        .expect("the reader that keeps up received every message, in order");
}

/// A client with a 4 KiB receive buffer subscribed to `topic` (ack read), that reads only
/// when the test says so: the server's queue for it fills and drops.
fn slow_subscriber(server: &TestServer, topic: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&server.addr.into()).unwrap();
        TcpStream::from(s)
    };
    let (mut ws, _) = tungstenite::client(server.url.as_str(), stream).expect("handshake");
    ws.send(tungstenite::Message::text(format!(
        r#"{{"op":"subscribe","id":1,"topics":["{topic}"]}}"#
    )))
    .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            if t.contains("\"ack\"") {
                assert!(t.contains(topic), "{t}");
                return ws;
            }
        }
    }
}

/// Reads `topic` from seq 1 until seq `n` is delivered or announced, each read waiting at
/// most `patience`; asserts that every seq is delivered in order or covered by a
/// `slow_consumer` gap that starts where delivery stopped. Returns the gaps, `(from, to)`.
fn read_to_the_end(
    ws: &mut tungstenite::WebSocket<TcpStream>,
    topic: &str,
    n: u64,
    patience: Duration,
) -> Vec<(u64, u64)> {
    ws.get_ref().set_read_timeout(Some(patience)).unwrap();
    let mut next = 1u64;
    let mut gaps = Vec::new();
    while next <= n {
        let text = match ws.read() {
            Ok(tungstenite::Message::Text(t)) => t,
            Ok(_) => continue,
            Err(e) => panic!("seq {next}..={n} of {topic} never came (nor a gap): {e}"),
        };
        let mut b = text.as_bytes().to_vec();
        let v = simd_json::to_owned_value(&mut b).unwrap();
        match v["op"].as_str() {
            Some("msg") => {
                assert_eq!(v["topic"].as_str(), Some(topic));
                assert_eq!(
                    v["seq"].as_u64(),
                    Some(next),
                    "after gaps, the stream goes on"
                );
                next += 1;
            }
            Some("gap") => {
                assert_eq!(v["reason"].as_str(), Some("slow_consumer"));
                assert_eq!(
                    v["from"].as_u64(),
                    Some(next),
                    "the gap starts where delivery stopped"
                );
                let to = v["to"].as_u64().unwrap();
                gaps.push((next, to));
                next = to + 1;
            }
            _ => {}
        }
    }
    assert_eq!(next, n + 1, "nothing past the last published seq");
    gaps
}

#[test]
fn a_drop_at_the_end_of_a_burst_is_announced_while_the_topic_stays_quiet() {
    // The heartbeat is far off, so nothing but the client's own reading can release what the
    // server holds for it: no ping round, no later message on the topic.
    let server = start(|c| {
        c.shard.queue_max_messages = 64;
        c.shard.send_buffer_bytes = 8192;
        c.shard.heartbeat_interval_ms = 60_000;
        c.shard.heartbeat_timeout_ms = 180_000;
    });
    let mut slow = slow_subscriber(&server, "burst.END");
    // A reader that keeps up: once it has seen the whole burst, the shard has routed all of
    // it, and the slow client's last drops were made by its last frames.
    let fence = Bystander::new(&server, "burst.END").ws;
    let n = 3000u64;
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
    publish_keeping_pace(&server, fence, "burst.END", n, &payload);
    // The topic now stays quiet. The slow client reads: its gaps and the burst's last
    // message come out without anything else happening (the read timeout is a fraction of
    // the heartbeat interval).
    let gaps = read_to_the_end(&mut slow, "burst.END", n, Duration::from_secs(5));
    let (_, last_dropped) = *gaps.last().expect("the slow client lost messages");
    // 64 queued frames plus what the socket buffers hold (~24 KiB, about 100 frames of 260
    // bytes) survive; everything before them went, so the last drop is near the burst's end.
    assert!(
        last_dropped > n - 400,
        "the last drop ({last_dropped}) came from the end of the burst ({n})"
    );
}

#[test]
fn silent_client_is_closed_after_heartbeat_timeout() {
    let server = start(|c| {
        c.shard.heartbeat_interval_ms = 100;
        c.shard.heartbeat_timeout_ms = 400;
    });
    let mut silent = connect(&server.url);
    let mut lively = connect(&server.url);
    let start = Instant::now();
    // `lively` reads (tungstenite answers pings while reading); `silent` does nothing.
    set_timeout(&lively, Duration::from_millis(50));
    while start.elapsed() < Duration::from_millis(1200) {
        let _ = lively.read();
    }
    set_timeout(&lively, Duration::from_secs(10));
    let (code, reason) = expect_close(&mut silent);
    assert_eq!(code, 4000);
    assert_eq!(reason, "heartbeat timeout");
    subscribe(&mut lively, 5, &["still.here"]);
}

#[test]
fn graceful_shutdown_sends_going_away() {
    let mut server = start(|_| {});
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["t.x"]);
    let t = Instant::now();
    assert!(server.shutdown(), "every thread finished");
    assert!(t.elapsed() < Duration::from_secs(8));
    let (code, reason) = expect_close(&mut ws);
    assert_eq!(code, 1001);
    assert_eq!(reason, "going away, reconnect");
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn tcp_ingest_reports_bad_lines_and_keeps_the_stream() {
    let server = start(|_| {});
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["ing.a"]);
    let mut publisher = TcpStream::connect(server.ingest).unwrap();
    publisher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let lines = concat!(
        "{\"topic\":\"ing.a\",\"data\":{\"n\":1}}\n",
        "this is not json\n",
        "\n",
        "{\"topic\":\"bad topic\",\"data\":1}\n",
        "{\"topic\":\"ing.a\"}\n",
        "{\"topic\":\"ing.a\",\"data\":[2],\"ts\":123}\r\n",
    );
    publisher.write_all(lines.as_bytes()).unwrap();
    let mut replies = BufReader::new(publisher.try_clone().unwrap());
    let mut errors = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        let mut b = line.trim_end().as_bytes().to_vec();
        let v = simd_json::to_owned_value(&mut b).unwrap();
        errors.push((
            v["line"].as_u64().unwrap(),
            v["code"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        errors,
        vec![
            (2, "invalid_json".into()),
            (4, "bad_topic".into()),
            (5, "missing_data".into())
        ]
    );
    let m1 = next_op(&mut ws, "msg");
    let m2 = next_op(&mut ws, "msg");
    assert_eq!((m1["seq"].as_u64(), m2["seq"].as_u64()), (Some(1), Some(2)));
    assert_eq!(m1["data"]["n"].as_u64(), Some(1));
    assert_eq!(m2["ts"].as_u64(), Some(123), "publisher timestamp kept");
}

#[test]
fn batch_window_gathers_a_burst_into_one_write() {
    let mut server = start(|c| {
        c.shard.batch_window_us = 300_000;
        c.shard.report_interval_ms = 50;
    });
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["burst"]);
    let first = ack_seq(&ack, "burst") + 1;
    let writes_before = server.totals().counters.writes;
    // 40 messages published within far less than the window: they share a write.
    server.publish("burst", 40);
    expect_contiguous(&mut ws, "burst", first, 40);
    std::thread::sleep(Duration::from_millis(200));
    let writes = server.totals().counters.writes - writes_before;
    assert!(
        (1..=2).contains(&writes),
        "40 frames in a 300 ms window took {writes} writes"
    );
    // Alone, a message still arrives: the window closes on time without more traffic.
    server.publish("burst", 1);
    expect_contiguous(&mut ws, "burst", first + 40, 1);
    assert!(server.shutdown());
}

#[test]
fn a_close_answered_during_a_batch_window_longer_than_the_grace_period_still_goes_out() {
    // The window holds every write; the grace period must not run out while it does.
    let server = start(|c| {
        c.shard.batch_window_us = 500_000;
        c.shard.shutdown_grace_ms = 100;
    });
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["held"]);
    server.publish("held", 1);
    // The frame is routed and held (the window lasts 500 ms); our close arrives meanwhile,
    // and its echo waits with the frame, past the 100 ms grace period.
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    ws.close(None).unwrap();
    // (tungstenite drops data frames once it has sent its close; the echo is what counts.)
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => panic!("the close echo was lost: {e}"),
        }
    }
    assert!(
        sent.elapsed() >= Duration::from_millis(200),
        "the echo waited for the window ({:?}), so the grace period did pass meanwhile",
        sent.elapsed()
    );
}

#[test]
fn unsubscribing_a_pattern_keeps_the_topics_still_subscribed_exactly() {
    let server = start(|_| {});
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["cov.a", "cov.*", "other.x"]);
    assert_eq!(ack_seq(&ack, "cov.a"), 0);
    server.publish("cov.a", 3);
    server.publish("cov.b", 3);
    send(&mut ws, r#"{"op":"unsubscribe","id":2,"topics":["cov.*"]}"#);
    server.publish("cov.a", 2);
    server.publish("cov.b", 2);
    server.publish("other.x", 1);
    // Until the ack, anything may arrive; after it, no cov.b, and cov.a goes on unbroken.
    // The ack and other.x race (the request is read while the frames travel): wait for both.
    let mut next_a = 1;
    let mut acked = false;
    let mut other = false;
    while !(acked && other && next_a == 6) {
        let v = next_json(&mut ws);
        match (v["op"].as_str(), v.get("topic").and_then(|t| t.as_str())) {
            (Some("ack"), _) => {
                assert!(!acked, "one ack");
                acked = true;
            }
            (Some("msg"), Some("cov.a")) => {
                assert_eq!(v["seq"].as_u64(), Some(next_a), "cov.a in order");
                next_a += 1;
            }
            (Some("msg"), Some("cov.b")) => assert!(!acked, "cov.b after the unsubscribe ack"),
            (Some("msg"), Some("other.x")) => {
                assert!(!other, "one other.x");
                other = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

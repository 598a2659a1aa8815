//! The connection layer over real sockets: how a client's bytes arrive must not matter. A
//! request in the same write as the upgrade, a request a byte at a time, a message spanning
//! many reads, and a last request arriving with the client's FIN are all answered. And when
//! the shard itself falls behind, what it skips is announced in order. A close queued behind a
//! full socket goes out once the client reads; a client that never reads is closed after the
//! grace period and the linger.
//! Frames are built and read by tungstenite (an independent codec), not by corecast's.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;
use tungstenite::Message;

#[test]
fn a_request_in_the_same_write_as_the_upgrade_is_answered() {
    let server = start(|_| {});
    let mut s = TcpStream::connect(server.addr).unwrap();
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(client_frame(
        r#"{"op":"subscribe","id":1,"topics":["early.t"]}"#,
    ));
    bytes.extend(client_frame(r#"{"op":"ping","id":2}"#));
    s.write_all(&bytes).unwrap();
    let mut ws = after_upgrade(s);
    // The pong is the shard's own answer; the ack waits for the dispatcher: either may be first.
    let (mut acked, mut ponged) = (false, false);
    while !(acked && ponged) {
        let Message::Text(t) = ws.read().expect("the server answers") else {
            continue;
        };
        let mut bytes = t.as_bytes().to_vec();
        let v = simd_json::to_owned_value(&mut bytes).unwrap();
        match v["op"].as_str() {
            Some("ack") => acked = v["id"].as_u64() == Some(1),
            Some("pong") => ponged = v["id"].as_u64() == Some(2),
            _ => {}
        }
    }
    server.publish_settled("early.t", 3);
    for seq in 1..=3 {
        assert_eq!(next_of(&mut ws, "msg")["seq"].as_u64(), Some(seq));
    }
}

#[test]
fn a_request_arriving_a_byte_at_a_time_is_answered() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(UPGRADE).unwrap();
    let mut ws = after_upgrade(s);
    next_of(&mut ws, "welcome");
    let frame = client_frame(r#"{"op":"subscribe","id":9,"topics":["slow.t","slow.u"]}"#);
    for b in &frame {
        w.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let ack = next_of(&mut ws, "ack");
    assert_eq!(ack["id"].as_u64(), Some(9));
    assert_eq!(ack["topics"].as_array().map(|a| a.len()), Some(2));
    server.publish_settled("slow.u", 5);
    for seq in 1..=5 {
        assert_eq!(next_of(&mut ws, "msg")["seq"].as_u64(), Some(seq));
    }
    peer.check(&server, 50);
}

#[test]
fn a_message_spanning_many_reads_is_answered_and_the_connection_goes_on() {
    // 3 MiB: dozens of reads of the shard's 64 KiB buffer, over several passes of the
    // readiness loop (16 reads per connection per pass at most), reassembled into one message.
    let big = 3 << 20;
    let server = start(|c| c.shard.max_message_bytes = 4 << 20);
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    let pad = "x".repeat(big);
    send(
        &mut ws,
        &format!(r#"{{"op":"subscribe","id":4,"topics":["big.t"],"pad":"{pad}"}}"#),
    );
    let ack = next_op(&mut ws, "ack");
    assert_eq!(ack["id"].as_u64(), Some(4));
    send(&mut ws, r#"{"op":"ping","id":5}"#);
    assert_eq!(next_op(&mut ws, "pong")["id"].as_u64(), Some(5));
    server.publish_settled("big.t", 10);
    expect_contiguous(&mut ws, "big.t", 1, 10);
    peer.check(&server, 50);
}

/// A subscribed connection that never reads: it makes every fan-out round write one more socket.
fn ballast(server: &TestServer, topic: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(client_frame(&format!(
        r#"{{"op":"subscribe","id":1,"topics":["{topic}"]}}"#
    )));
    s.write_all(&bytes).unwrap();
    s
}

#[test]
fn frames_reaching_a_lagging_shard_past_the_age_bound_are_skipped_and_announced_in_order() {
    let mut server = start(|c| {
        c.shard.queue_max_age_ms = 1;
        c.shard.report_interval_ms = 50;
    });
    let topic = "late.t";
    // 200 more sockets to write each round: a round takes longer than the 1 ms bound, so
    // frames published in a burst wait in the ring past it.
    let _ballast: Vec<TcpStream> = (0..200).map(|_| ballast(&server, topic)).collect();
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &[topic]);
    let mut next = ack_seq(&ack, topic) + 1;
    let end = next + 3000 - 1;
    server.publish(topic, 3000);
    let mut skipped = 0;
    while next <= end {
        let v = next_json(&mut ws);
        match v["op"].as_str() {
            Some("msg") => {
                assert_eq!(v["seq"].as_u64(), Some(next), "{v:?}");
                next += 1;
            }
            Some("gap") => {
                assert_eq!(v["topic"].as_str(), Some(topic), "{v:?}");
                assert_eq!(
                    v["from"].as_u64(),
                    Some(next),
                    "a gap starts where delivery stopped"
                );
                let to = v["to"].as_u64().unwrap();
                assert!(to >= next && to <= end, "{v:?}");
                match v["reason"].as_str() {
                    Some("shard_overflow") => skipped += to - next + 1,
                    // The connection's own queue may also drop by age (same bound).
                    Some("slow_consumer") => {}
                    _ => panic!("unexpected reason: {v:?}"),
                }
                next = to + 1;
            }
            _ => {}
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let late = server.totals().counters.late_frames;
    assert!(
        skipped > 0,
        "the burst outran the shard: some frames arrived late and were skipped by the shard"
    );
    assert!(
        late >= skipped,
        "late frames counted ({late}) cover the {skipped} announced to this client"
    );
    assert!(server.shutdown());
}

#[test]
fn a_last_request_sent_with_the_fin_is_answered_and_the_connection_ends_at_once() {
    let server = start(|c| {
        c.shard.heartbeat_interval_ms = 60_000;
        c.shard.heartbeat_timeout_ms = 180_000;
    });
    let s = TcpStream::connect(server.addr).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(UPGRADE).unwrap();
    let mut ws = after_upgrade(s);
    next_of(&mut ws, "welcome");
    // Let the shard go quiet (it naps), so the request and the FIN arrive in one readiness edge.
    std::thread::sleep(Duration::from_millis(50));
    w.write_all(&client_frame(r#"{"op":"ping","id":3}"#))
        .unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(next_of(&mut ws, "pong")["id"].as_u64(), Some(3));
    // Then the server closes its side without waiting for a heartbeat to find the peer gone.
    expect_server_closes(&mut ws);
}

#[test]
fn a_close_behind_a_full_socket_waits_for_the_reader_and_a_client_that_never_reads_is_closed_after_grace_and_linger(
) {
    const GRACE_MS: u64 = 5000;
    let mut server = start(|c| {
        c.shard.heartbeat_interval_ms = 200;
        c.shard.heartbeat_timeout_ms = 600;
        c.shard.shutdown_grace_ms = GRACE_MS;
        c.shard.send_buffer_bytes = 8192;
        c.shard.report_interval_ms = 50;
    });
    let start = Instant::now();
    let mut never_reads = ballast(&server, "full.t");
    let mut reads_late = connect(&server.url);
    subscribe(&mut reads_late, 1, &["full.t"]);
    // Fill both sockets: neither client reads, so their writes block with frames queued.
    let data = format!("\"{}\"", "x".repeat(4000));
    for _ in 0..300 {
        server.publisher.publish("full.t", data.clone()).unwrap();
    }
    // Neither answers a ping: both are asked to close (heartbeat timeout) 0.6 to 0.8 s after
    // they were last heard, their close frames queued behind what the sockets do not take.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, reason) = expect_close(&mut reads_late);
    assert_eq!((code, reason.as_str()), (4000, "heartbeat timeout"));
    drop(reads_late);
    let open_at = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while server.totals().counters.open != n {
            assert!(
                Instant::now() < deadline,
                "{n} connections left within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    };
    // The reader's close went out and it is gone; the other is held for the grace period
    // (from no earlier than 0.6 s), then lingers 1 s.
    let reader_gone = open_at(1);
    let never_reads_gone = open_at(0);
    assert!(
        never_reads_gone >= Duration::from_millis(600 + GRACE_MS),
        "held through the grace period: closed at {never_reads_gone:?}"
    );
    assert!(
        reader_gone < never_reads_gone,
        "the reader went first ({reader_gone:?}, {never_reads_gone:?})"
    );
    never_reads
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 16];
    loop {
        match never_reads.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("the server closed the socket, so reading ends in EOF: {e}"),
        }
    }
    assert!(server.shutdown());
}

#[test]
fn each_connection_is_pinged_once_per_interval_not_once_per_slice() {
    const INTERVAL_MS: u64 = 320;
    let server = start(|c| {
        c.shard.heartbeat_interval_ms = INTERVAL_MS;
        c.shard.heartbeat_timeout_ms = 10 * INTERVAL_MS;
    });
    let mut clients: Vec<_> = (0..5).map(|_| connect(&server.url)).collect();
    for ws in &clients {
        set_timeout(ws, Duration::from_millis(5));
    }
    // Over six intervals, each connection should see five to seven pings (its first within
    // one interval of opening), however its pings are spread over the interval; one more or
    // less is allowed for a loaded machine. Pinging once per slice would give ~380.
    let start = Instant::now();
    let mut pings = vec![0u32; clients.len()];
    while start.elapsed() < Duration::from_millis(6 * INTERVAL_MS) {
        for (ws, n) in clients.iter_mut().zip(pings.iter_mut()) {
            if let Ok(Message::Ping(_)) = ws.read() {
                *n += 1;
            }
        }
    }
    for (i, n) in pings.iter().enumerate() {
        assert!(
            (4..=8).contains(n),
            "client {i} got {n} pings in six intervals: {pings:?}"
        );
    }
}

/// A port another server listens on is an error at start, not a silent share: every shard's
/// listener sets SO_REUSEPORT, which alone would let a second server take part of the
/// connections.
#[test]
fn a_client_port_in_use_is_a_start_error() {
    let first = start(|_| {});
    let e = corecast::Server::start({
        let mut c = corecast::Config::default();
        c.server.listen = first.addr;
        c.server.ingest = "127.0.0.1:0".parse().unwrap();
        c.server.shards = 1;
        c
    })
    .err()
    .expect("the second server is refused");
    let text = e.to_string();
    assert!(
        text.contains(&first.addr.to_string()) && text.contains("in use"),
        "{text}"
    );
    let mut ws = connect(&first.url);
    subscribe(&mut ws, 1, &["t.still"]);
}

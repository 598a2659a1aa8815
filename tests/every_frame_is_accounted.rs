//! Whatever the protocol promises per inbound frame holds for every frame, continuation
//! frames included, and a client's liveness is not kept up by a client that never finishes
//! anything. A bystander on the same shard loses nothing.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

fn tight_limits(c: &mut corecast::Config) {
    c.shard.rate_limit_per_sec = 1;
    c.shard.rate_limit_burst = 10;
    c.shard.rate_limit_max_strikes = 5;
}

#[test]
fn a_continuation_flood_is_cut_with_1008_like_a_ping_flood() {
    let server = start(tight_limits);
    let mut peer = Bystander::new(&server, "by.stander");
    for (what, first, then) in [
        (
            "continuations",
            OpCode::Data(Data::Text),
            OpCode::Data(Data::Continue),
        ),
        (
            "pings",
            OpCode::Control(Control::Ping),
            OpCode::Control(Control::Ping),
        ),
    ] {
        let mut s = upgraded(&server);
        let mut flood = masked_frame(first, first == OpCode::Control(Control::Ping), b"{");
        for _ in 0..10_000 {
            flood.extend(masked_frame(
                then,
                then == OpCode::Control(Control::Ping),
                b"",
            ));
        }
        // The server may close before reading all of it.
        let _ = s.write_all(&flood);
        assert_eq!(close_code_on_wire(&mut s), 1008, "{what}");
    }
    peer.check(&server, 100);
}

#[test]
fn a_message_with_a_refused_fragment_is_dropped_whole() {
    let server = start(|c| {
        c.shard.rate_limit_per_sec = 1;
        c.shard.rate_limit_burst = 1;
        c.shard.rate_limit_max_strikes = 100;
    });
    let mut peer = Bystander::new(&server, "by.stander");
    let s = upgraded(&server);
    let mut w = s.try_clone().unwrap();
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
    next_of(&mut ws, "welcome");
    // Frame 1 takes the only token; frame 2 (a middle fragment) and a ping are refused; after
    // a refill the last frame is allowed, but its message lost a fragment: not acted on.
    let mut bytes = masked_frame(OpCode::Data(Data::Text), false, br#"{"op":"ping","#);
    bytes.extend(masked_frame(
        OpCode::Data(Data::Continue),
        false,
        br#""id""#,
    ));
    bytes.extend(masked_frame(OpCode::Control(Control::Ping), true, b"p"));
    w.write_all(&bytes).unwrap();
    for _ in 0..2 {
        assert_eq!(next_of(&mut ws, "error")["code"], "rate_limited");
    }
    std::thread::sleep(Duration::from_millis(1100));
    w.write_all(&masked_frame(OpCode::Data(Data::Continue), true, b":5}"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    ws.send(tungstenite::Message::text(r#"{"op":"ping","id":6}"#))
        .unwrap();
    let pong = next_of(&mut ws, "pong");
    assert_eq!(
        pong["id"], 6,
        "the message that lost a fragment was not acted on"
    );
    peer.check(&server, 100);
}

fn quick_heartbeat(c: &mut corecast::Config) {
    c.shard.heartbeat_interval_ms = 100;
    c.shard.heartbeat_timeout_ms = 1000;
}

#[test]
fn fragments_of_a_message_never_finished_do_not_keep_a_client_alive() {
    let server = start(quick_heartbeat);
    let mut peer = Bystander::new(&server, "by.stander");
    let mut s = upgraded(&server);
    s.write_all(&masked_frame(OpCode::Data(Data::Text), false, b"{"))
        .unwrap();
    let started = Instant::now();
    // An empty continuation every 50 ms, well within the rate limit, for up to 3 s.
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(3) {
        if s.write_all(&masked_frame(OpCode::Data(Data::Continue), false, b""))
            .is_err()
        {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        peer.answer_pings();
    }
    let payload = close_payload_on_wire(&mut s);
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        4000,
        "closed={closed}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed within the timeout, not at the end"
    );
    peer.check(&server, 100);
}

#[test]
fn bytes_of_a_frame_never_finished_do_not_keep_a_client_alive() {
    let server = start(quick_heartbeat);
    let mut peer = Bystander::new(&server, "by.stander");
    let mut s = upgraded(&server);
    // A 100-byte frame, sent one byte every 50 ms: it would take 5 s to finish.
    let frame = masked_frame(OpCode::Data(Data::Text), true, &[b' '; 100]);
    let started = Instant::now();
    for b in &frame {
        if s.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        peer.answer_pings();
    }
    assert_eq!(close_code_on_wire(&mut s), 4000);
    assert!(started.elapsed() < Duration::from_secs(3));
    peer.check(&server, 100);
}

#[test]
fn a_client_that_finishes_frames_stays() {
    let server = start(quick_heartbeat);
    let mut s = upgraded(&server);
    let started = Instant::now();
    // One pong every 100 ms for 2.5 s, longer than the 1 s timeout.
    while started.elapsed() < Duration::from_millis(2500) {
        s.write_all(&masked_frame(OpCode::Control(Control::Pong), true, b""))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
    ws.send(tungstenite::Message::text(r#"{"op":"ping","id":3}"#))
        .unwrap();
    assert_eq!(next_of(&mut ws, "pong")["id"], 3);
}

//! Replies to one connection's requests come in the order of the requests and, taken in that
//! order, describe the server's real state, however the requests overlap: a subscribe that
//! waits for the dispatcher holds back the requests behind it. A bystander loses nothing.

mod common;

use std::io::Write;

use common::*;
use simd_json::prelude::*;
use tungstenite::{Message, WebSocket};

/// An upgraded connection, welcome read, that sends `requests` in one TCP write.
fn pipelined(server: &TestServer, requests: &[&str]) -> WebSocket<std::net::TcpStream> {
    let mut s = upgraded(server);
    let mut bytes = Vec::new();
    for r in requests {
        bytes.extend(client_frame(r));
    }
    s.write_all(&bytes).unwrap();
    let mut ws = WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
    next_of(&mut ws, "welcome");
    ws
}

/// The next `n` replies (acks, errors, pongs) as `(op, id)`, skipping pings.
fn replies(ws: &mut WebSocket<std::net::TcpStream>, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Message::Text(t) = ws.read().expect("a reply") {
            let mut b = t.as_bytes().to_vec();
            let v = simd_json::to_owned_value(&mut b).unwrap();
            let op = v["op"].as_str().unwrap().to_string();
            assert_ne!(op, "msg", "no message before the replies: {v:?}");
            out.push((op, v["id"].as_u64().unwrap_or(0)));
        }
    }
    out
}

/// Proves whether `ws` is subscribed to `topic`: publishes one message, then asks for a pong;
/// returns the msgs that arrived before the pong.
fn receives(server: &TestServer, ws: &mut WebSocket<std::net::TcpStream>, topic: &str) -> usize {
    server.publish_settled(topic, 1);
    ws.send(Message::text(r#"{"op":"ping","id":999}"#)).unwrap();
    let mut msgs = 0;
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let mut b = t.as_bytes().to_vec();
            let v = simd_json::to_owned_value(&mut b).unwrap();
            match v["op"].as_str() {
                Some("msg") => msgs += 1,
                Some("pong") => return msgs,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn sub(id: u64, topics: &str) -> String {
    format!(r#"{{"op":"subscribe","id":{id},"topics":[{topics}]}}"#)
}

fn unsub(id: u64, topics: &str) -> String {
    format!(r#"{{"op":"unsubscribe","id":{id},"topics":[{topics}]}}"#)
}

fn ids(replies: &[(String, u64)]) -> Vec<u64> {
    replies.iter().map(|(_, id)| *id).collect()
}

#[test]
fn subscribe_then_unsubscribe_in_one_segment_acks_in_order_and_ends_unsubscribed() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = pipelined(&server, &[&sub(10, r#""ord.a""#), &unsub(20, r#""ord.a""#)]);
    let got = replies(&mut ws, 2);
    assert_eq!(got, vec![("ack".into(), 10), ("ack".into(), 20)]);
    assert_eq!(
        receives(&server, &mut ws, "ord.a"),
        0,
        "unsubscribed, as the last ack says"
    );
    peer.check(&server, 100);
}

#[test]
fn subscribe_unsubscribe_subscribe_ends_subscribed() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = pipelined(
        &server,
        &[
            &sub(10, r#""ord.b""#),
            &unsub(20, r#""ord.b""#),
            &sub(30, r#""ord.b""#),
        ],
    );
    assert_eq!(ids(&replies(&mut ws, 3)), [10, 20, 30]);
    assert_eq!(receives(&server, &mut ws, "ord.b"), 1);
    peer.check(&server, 100);
}

#[test]
fn pattern_and_exact_overlap_in_order_and_deliver_once() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = pipelined(
        &server,
        &[
            &sub(10, r#""ordp.*""#),
            &sub(20, r#""ordp.x""#),
            &unsub(30, r#""ordp.*""#),
            &sub(40, r#""ordp.*""#),
        ],
    );
    assert_eq!(ids(&replies(&mut ws, 4)), [10, 20, 30, 40]);
    assert_eq!(
        receives(&server, &mut ws, "ordp.x"),
        1,
        "once, though named twice"
    );
    peer.check(&server, 100);
}

#[test]
fn two_subscribes_of_one_topic_ack_in_order_with_one_sequence() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    // A topic new to the shard: the first subscribe waits for the dispatcher.
    let mut ws = pipelined(&server, &[&sub(10, r#""ord.c""#), &sub(20, r#""ord.c""#)]);
    let a = next_of(&mut ws, "ack");
    let b = next_of(&mut ws, "ack");
    assert_eq!((a["id"].as_u64(), b["id"].as_u64()), (Some(10), Some(20)));
    assert_eq!(a["topics"][0]["seq"].as_u64(), Some(0));
    assert_eq!(b["topics"][0]["seq"].as_u64(), Some(0));
    assert_eq!(receives(&server, &mut ws, "ord.c"), 1, "subscribed once");
    peer.check(&server, 100);
}

#[test]
fn refused_requests_and_pings_keep_their_place_behind_a_waiting_subscribe() {
    let server = start(|c| c.shard.max_patterns = 1);
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = pipelined(
        &server,
        &[
            &sub(10, r#""ord.d""#),
            &sub(20, r#""ord.e", "bad topic""#),
            r#"{"op":"ping","id":30}"#,
            &sub(40, r#""ord.f", "x.*", "y.*""#),
            &unsub(50, r#""ord.e""#),
            &sub(60, r#""ord.g""#),
        ],
    );
    let got = replies(&mut ws, 6);
    assert_eq!(
        got,
        vec![
            ("ack".into(), 10),
            ("error".into(), 20),
            ("pong".into(), 30),
            ("error".into(), 40),
            ("error".into(), 50),
            ("ack".into(), 60),
        ]
    );
    // Nothing of the refused requests was subscribed.
    assert_eq!(receives(&server, &mut ws, "ord.e"), 0);
    assert_eq!(receives(&server, &mut ws, "ord.f"), 0);
    assert_eq!(receives(&server, &mut ws, "ord.d"), 1);
    peer.check(&server, 100);
}

#[test]
fn requests_behind_a_waiting_subscribe_sent_with_the_fin_are_answered_and_the_connection_ends() {
    let server = start(|c| {
        c.shard.heartbeat_interval_ms = 60_000;
        c.shard.heartbeat_timeout_ms = 180_000;
    });
    let mut peer = Bystander::new(&server, "by.stander");
    let s = upgraded(&server);
    let mut w = s.try_clone().unwrap();
    let mut ws = WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
    next_of(&mut ws, "welcome");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut bytes = client_frame(&sub(1, r#""fin.a""#));
    bytes.extend(client_frame(r#"{"op":"ping","id":2}"#));
    w.write_all(&bytes).unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(ids(&replies(&mut ws, 2)), [1, 2]);
    // The FIN arrived while the pong waited behind the subscribe: it is still seen.
    expect_server_closes(&mut ws);
    peer.check(&server, 100);
}

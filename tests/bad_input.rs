//! Every bad input gets a clear answer, and a bystander on the same shard loses nothing.

mod common;

use std::io::Write;

use common::*;
use simd_json::prelude::*;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::Role;
use tungstenite::Message;

#[test]
fn plain_http_gets_426_and_bystander_unaffected() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let answer = raw_exchange(&server, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_line(&answer), "HTTP/1.1 426 Upgrade Required");
    assert!(String::from_utf8_lossy(&answer).contains("Upgrade: websocket"));
    let answer = raw_exchange(
        &server,
        b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(status_line(&answer), "HTTP/1.1 404 Not Found");
    peer.check(&server, 100);
}

#[test]
fn malformed_handshake_gets_400() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let answer = raw_exchange(&server, b"\x16\x03\x01\x02\x00 junk\r\n\r\n");
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");
    let no_key = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(
        status_line(&raw_exchange(&server, no_key)),
        "HTTP/1.1 400 Bad Request"
    );
    peer.check(&server, 100);
}

#[test]
fn invalid_json_unknown_op_and_bad_topics_get_errors_and_the_connection_stays() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    send(&mut ws, "{not json");
    let e = next_op(&mut ws, "error");
    assert_eq!(e["code"].as_str(), Some("invalid_json"));
    send(&mut ws, r#"{"op":"dance","id":4}"#);
    let e = next_op(&mut ws, "error");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("unknown_op"), Some(4))
    );
    for bad in ["has space", "a..b", "", "*.x", "x*"] {
        send(
            &mut ws,
            &format!(r#"{{"op":"subscribe","id":5,"topics":["ok.topic","{bad}"]}}"#),
        );
        let e = next_op(&mut ws, "error");
        assert_eq!(e["code"].as_str(), Some("bad_topic"), "{bad:?}: {e:?}");
        assert!(e["message"].as_str().unwrap().contains("topic"));
    }
    // Nothing of a refused request was subscribed, and the connection still works.
    send(&mut ws, r#"{"op":"ping","id":9}"#);
    assert_eq!(next_op(&mut ws, "pong")["id"], 9);
    send(
        &mut ws,
        r#"{"op":"unsubscribe","id":10,"topics":["ok.topic"]}"#,
    );
    assert_eq!(
        next_op(&mut ws, "error")["code"].as_str(),
        Some("not_subscribed")
    );
    peer.check(&server, 100);
}

#[test]
fn oversized_text_frame_closes_with_1009() {
    let server = start(|c| c.shard.max_message_bytes = 1024);
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    send(
        &mut ws,
        &format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(2000)),
    );
    assert_eq!(expect_close(&mut ws).0, 1009);
    peer.check(&server, 100);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).unwrap();
    assert_eq!(expect_close(&mut ws).0, 1007);
    peer.check(&server, 100);
}

#[test]
fn binary_message_closes_with_1003() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(expect_close(&mut ws).0, 1003);
    peer.check(&server, 100);
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let stream = upgraded(&server);
    // tungstenite in the server role writes unmasked frames: exactly the violation.
    let mut wrong_role =
        tungstenite::WebSocket::from_raw_socket(stream.try_clone().unwrap(), Role::Server, None);
    wrong_role.send(Message::text(r#"{"op":"ping"}"#)).unwrap();
    let mut s = stream;
    assert_eq!(close_code_on_wire(&mut s), 1002);
    peer.check(&server, 100);
}

#[test]
fn binary_junk_after_handshake_closes_with_1002() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut s = upgraded(&server);
    s.write_all(&[0xff; 64]).unwrap();
    assert_eq!(close_code_on_wire(&mut s), 1002);
    peer.check(&server, 100);
}

#[test]
fn flood_past_rate_limit_gets_errors_then_1008() {
    let server = start(|c| {
        c.shard.rate_limit_per_sec = 1;
        c.shard.rate_limit_burst = 10;
        c.shard.rate_limit_max_strikes = 5;
    });
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 100, &["flood.x"]); // one token; the topic is live on the shard now
    for i in 0..30 {
        // Sends may fail once the server closed; the answer is what counts.
        let _ = ws.send(Message::text(format!(
            r#"{{"op":"subscribe","id":{i},"topics":["flood.x"]}}"#
        )));
    }
    let (mut acks, mut limited) = (0, 0);
    let code = loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let mut b = t.as_bytes().to_vec();
                let v = simd_json::to_owned_value(&mut b).unwrap();
                match v["op"].as_str() {
                    Some("ack") => acks += 1,
                    Some("error") => {
                        assert_eq!(v["code"].as_str(), Some("rate_limited"));
                        limited += 1;
                    }
                    _ => {}
                }
            }
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert!(
        (9..=11).contains(&acks),
        "the rest of the burst is served: {acks}"
    );
    assert!(limited >= 1, "refusals are announced before the close");
    assert_eq!(code, 1008);
    peer.check(&server, 100);
}

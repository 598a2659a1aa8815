//! Shared test harness: a real server in-process on loopback, and tungstenite clients.
//! Servers poll their cores, so tests that start one take a process-wide lock and run one at a time.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corecast::{Config, Publisher, Server};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct TestServer {
    server: Option<Server>,
    pub url: String,
    pub addr: SocketAddr,
    pub ingest: SocketAddr,
    pub publisher: Publisher,
    _turn: MutexGuard<'static, ()>,
}

/// Takes this test binary's turn to run a server.
pub fn start_lock() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a server on ephemeral loopback ports with `tweak` applied to the defaults.
pub fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let turn = start_lock();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.ingest = "127.0.0.1:0".parse().unwrap();
    config.server.shards = 1;
    config.dispatcher.summary_interval_ms = 0;
    tweak(&mut config);
    let server = Server::start(config).expect("server starts");
    let addr = server.client_addr();
    TestServer {
        url: format!("ws://{addr}/ws"),
        addr,
        ingest: server.ingest_addr(),
        publisher: server.publisher(),
        server: Some(server),
        _turn: turn,
    }
}

impl TestServer {
    /// Graceful shutdown; true if every thread finished in time.
    pub fn shutdown(&mut self) -> bool {
        self.server
            .take()
            .map_or(true, |s| s.shutdown(Duration::from_secs(10)))
    }

    /// Publishes `n` messages and returns once the dispatcher has sequenced them (a witness
    /// client receives them): publishing is asynchronous, and history must be history.
    pub fn publish_settled(&self, topic: &str, n: u64) {
        let mut witness = connect(&self.url);
        let ack = subscribe(&mut witness, 1, &[topic]);
        self.publish(topic, n);
        expect_contiguous(&mut witness, topic, ack_seq(&ack, topic) + 1, n);
    }

    /// The shards' latest reports merged (they report every `report_interval_ms`).
    pub fn totals(&self) -> corecast::report::Totals {
        let server = self.server.as_ref().expect("running");
        let stats = server.stats();
        let t = stats.lock().unwrap().totals();
        t
    }

    pub fn publish(&self, topic: &str, n: u64) {
        for i in 0..n {
            self.publisher
                .publish(topic, format!("{{\"i\":{i}}}"))
                .expect("publish");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A tungstenite client with a 10 s read timeout.
pub fn connect(url: &str) -> Client {
    let (ws, _) = tungstenite::connect(url).expect("websocket connects");
    set_timeout(&ws, Duration::from_secs(10));
    ws
}

pub fn set_timeout(ws: &Client, t: Duration) {
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(t)).unwrap();
    }
}

/// Next text message as JSON, skipping pings and pongs. Panics on close or timeout.
pub fn next_json(ws: &mut Client) -> OwnedValue {
    loop {
        match ws.read().expect("read a message") {
            Message::Text(t) => {
                let mut b = t.as_bytes().to_vec();
                return simd_json::to_owned_value(&mut b).expect("server sends JSON");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Next message whose `op` is `op`, skipping others.
pub fn next_op(ws: &mut Client, op: &str) -> OwnedValue {
    loop {
        let v = next_json(ws);
        if v["op"].as_str() == Some(op) {
            return v;
        }
    }
}

pub fn send(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).expect("send");
}

/// Reads the welcome, subscribes, returns the ack.
pub fn subscribe(ws: &mut Client, id: u64, topics: &[&str]) -> OwnedValue {
    let list: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
    send(
        ws,
        &format!(
            "{{\"op\":\"subscribe\",\"id\":{id},\"topics\":[{}]}}",
            list.join(",")
        ),
    );
    let ack = next_op(ws, "ack");
    assert_eq!(ack["id"], id, "ack answers the request: {ack:?}");
    ack
}

/// The sequence an ack reports for `topic`.
pub fn ack_seq(ack: &OwnedValue, topic: &str) -> u64 {
    ack["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"].as_str() == Some(topic))
        .and_then(|t| t["seq"].as_u64())
        .unwrap_or_else(|| panic!("{topic} in {ack:?}"))
}

/// Receives `n` msgs of `topic` and checks they are exactly `first..first+n` in order.
pub fn expect_contiguous(ws: &mut Client, topic: &str, first: u64, n: u64) {
    for k in 0..n {
        let m = next_op(ws, "msg");
        assert_eq!(m["topic"].as_str(), Some(topic), "{m:?}");
        assert_eq!(m["seq"].as_u64(), Some(first + k), "contiguous seq: {m:?}");
    }
}

/// Reads until the server's close frame and returns its code (panics if none arrives).
pub fn expect_close(ws: &mut Client) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
    panic!("no close frame within 10 s");
}

/// A subscribed bystander on the same server: proves other clients lose nothing.
pub struct Bystander {
    pub ws: Client,
    pub topic: String,
    pub next: u64,
}

impl Bystander {
    pub fn new(server: &TestServer, topic: &str) -> Bystander {
        let mut ws = connect(&server.url);
        let ack = subscribe(&mut ws, 1, &[topic]);
        Bystander {
            ws,
            next: ack_seq(&ack, topic) + 1,
            topic: topic.to_string(),
        }
    }

    /// Publishes `n` messages and checks this client receives every one, in order.
    pub fn check(&mut self, server: &TestServer, n: u64) {
        server.publish(&self.topic, n);
        expect_contiguous(&mut self.ws, &self.topic.clone(), self.next, n);
        self.next += n;
    }
}

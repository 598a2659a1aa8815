//! Shared test harness: a real server in-process on loopback, and tungstenite clients.
//! Tests run their servers in parallel (cargo's default test threads): an idle server's
//! executors nap (docs/runtime.md), so servers share the cores without starving each other.
#![allow(dead_code)]

pub mod tokens;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use corecast::{Config, Publisher, Server};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::Role;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    server: Option<Server>,
    pub url: String,
    pub addr: SocketAddr,
    pub ingest: SocketAddr,
    pub publisher: Publisher,
}

/// Starts a server on ephemeral loopback ports with `tweak` applied to the defaults.
pub fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
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
    }
}

/// A server with the admin endpoint on an ephemeral loopback port and shard reports every
/// 200 ms, `tweak` applied; and the endpoint's address.
pub fn admin_server(tweak: impl FnOnce(&mut Config)) -> (TestServer, SocketAddr) {
    let server = start(|c| {
        c.server.admin = Some("127.0.0.1:0".parse().unwrap());
        c.shard.report_interval_ms = 200;
        tweak(c);
    });
    let admin = server
        .server()
        .admin_addr()
        .expect("the admin endpoint runs");
    (server, admin)
}

impl TestServer {
    /// Graceful shutdown; true if every thread finished in time.
    pub fn shutdown(&mut self) -> bool {
        self.server
            .take()
            .is_none_or(|s| s.shutdown(Duration::from_secs(10)))
    }

    /// Publishes `n` messages and returns once the dispatcher has sequenced them (a witness
    /// client receives them): publishing is asynchronous, and history must be history.
    pub fn publish_settled(&self, topic: &str, n: u64) {
        let mut witness = connect(&self.url);
        let ack = subscribe(&mut witness, 1, &[topic]);
        self.publish(topic, n);
        expect_contiguous(&mut witness, topic, ack_seq(&ack, topic) + 1, n);
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
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
    subscribe_entries(ws, id, &list)
}

/// Subscribes with `entries` as written (JSON strings or objects), returns the ack.
pub fn subscribe_entries(ws: &mut Client, id: u64, entries: &[String]) -> OwnedValue {
    send(
        ws,
        &format!(
            "{{\"op\":\"subscribe\",\"id\":{id},\"topics\":[{}]}}",
            entries.join(",")
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

    /// Reads what is waiting without blocking, so tungstenite answers the server's pings (for
    /// tests with a short heartbeat). Nothing else may be waiting.
    pub fn answer_pings(&mut self) {
        set_timeout(&self.ws, Duration::from_millis(1));
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("bystander got {other:?} while idle"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("bystander lost its connection: {e}"),
            }
        }
        set_timeout(&self.ws, Duration::from_secs(10));
    }

    /// Publishes `n` messages and checks this client receives every one, in order.
    pub fn check(&mut self, server: &TestServer, n: u64) {
        server.publish(&self.topic, n);
        expect_contiguous(&mut self.ws, &self.topic.clone(), self.next, n);
        self.next += n;
    }
}

/// A valid upgrade request for `/ws`, as a client writes it by hand.
pub const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client text frame, as a browser would send it (tungstenite's encoder).
pub fn client_frame(text: &str) -> Vec<u8> {
    masked_frame(OpCode::Data(Data::Text), true, text.as_bytes())
}

/// Any masked client frame, encoded by tungstenite: `opcode`, FIN bit and payload as given,
/// whether or not the protocol allows them.
pub fn masked_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Frame::message(payload.to_vec(), opcode, fin);
    f.header_mut().mask = Some([0x5a, 0x13, 0xc4, 0x7e]);
    let mut out = Vec::new();
    f.format(&mut out).unwrap();
    out
}

/// Reads the server's 101 answer and returns a tungstenite client on the same socket.
pub fn after_upgrade(mut s: TcpStream) -> WebSocket<TcpStream> {
    read_101(&mut s);
    WebSocket::from_raw_socket(s, Role::Client, None)
}

/// Reads an HTTP answer's head, byte by byte (nothing after it), within 10 s, and checks it
/// is a 101.
pub fn read_101(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
}

/// Does the client side of the handshake by hand and returns the upgraded socket.
pub fn upgraded(server: &TestServer) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(UPGRADE).unwrap();
    after_upgrade(s).into_inner()
}

/// The next JSON text message whose `op` is `op`, skipping others (welcome, pings).
pub fn next_of(ws: &mut WebSocket<TcpStream>, op: &str) -> OwnedValue {
    loop {
        match ws.read().expect("the server answers") {
            Message::Text(t) => {
                let mut bytes = t.as_bytes().to_vec();
                let v = simd_json::to_owned_value(&mut bytes).unwrap();
                if v["op"].as_str() == Some(op) {
                    return v;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads a raw tungstenite client until the server's close frame: its code, or `None` for
/// an empty close. Panics if the connection ends without one.
pub fn close_of(ws: &mut WebSocket<TcpStream>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// Sends raw bytes, returns everything the server answers until it closes.
pub fn raw_exchange(server: &TestServer, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The first line of an HTTP answer.
pub fn status_line(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Reads server frames (unmasked, RFC 6455 5.2) until the server ends the connection and
/// returns the close frame's payload (code and reason). Parsed here, by the test, so that
/// codes a client library does not know yet (1014) are seen as sent.
pub fn close_payload_on_wire(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let mut i = 0;
    while i + 2 <= all.len() {
        let (op, len) = (all[i] & 0x0f, (all[i + 1] & 0x7f) as usize);
        let (hdr, len) = match len {
            126 => (4, u16::from_be_bytes([all[i + 2], all[i + 3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(all[i + 2..i + 10].try_into().unwrap()) as usize,
            ),
            n => (2, n),
        };
        if op == 0x8 {
            return all[i + hdr..i + hdr + len].to_vec();
        }
        i += hdr + len;
    }
    panic!("no close frame in {all:?}");
}

/// The close code the server sent (see [`close_payload_on_wire`]).
pub fn close_code_on_wire(s: &mut TcpStream) -> u16 {
    let p = close_payload_on_wire(s);
    u16::from_be_bytes([p[0], p[1]])
}

/// After the client's FIN: the server ends the connection within 5 s, sending nothing more
/// (it does not wait for a heartbeat to find the peer gone).
pub fn expect_server_closes(ws: &mut WebSocket<TcpStream>) {
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("the server kept the half-closed connection open: {e}")
        }
        Err(_) => {}
        Ok(m) => panic!("nothing more was expected, got {m:?}"),
    }
}

/// A plain HTTP/1.1 GET over a new connection (`Connection: close`), read to its end:
/// `(status, head, body)`. An independent minimal client for the admin endpoint.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("the admin endpoint accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("a text answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, head.to_string(), body.to_string())
}

/// The value of the sample `series` (the name with its labels, as exposed) in a Prometheus
/// text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs `promtool check metrics` on `text`. Debian's `prometheus` package provides promtool
/// (`.ci/run` installs it); without it the check is skipped with a note, except under CI,
/// where it fails.
pub fn promtool_check_metrics(text: &str) {
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not found ({e}): `promtool check metrics` skipped; apt-get install prometheus");
            return;
        }
        Err(e) => panic!("promtool is required under CI (apt-get install prometheus): {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The HTTP upgrade request (RFC 9110 §5.3, RFC 9112 §3.2, RFC 6455 §4.2.1): list fields are
//! combined across field lines, singleton fields may appear once, `Host` is required and
//! valid, and both request-target forms a server must accept upgrade alike. Each answer is
//! exact, and a bystander on the same shard loses nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// An upgrade request with `target` and these header lines (each ending in CRLF).
fn request(target: &str, headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\n{headers}\r\n").into_bytes()
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";
const UPGRADE_WS: &str = "Upgrade: websocket\r\n";
const CONNECTION: &str = "Connection: Upgrade\r\n";
const HOST: &str = "Host: 127.0.0.1\r\n";

fn all_but(skip: &str, extra: &str) -> String {
    let mut h = String::new();
    for line in [HOST, UPGRADE_WS, CONNECTION, KEY, VERSION] {
        if line != skip {
            h.push_str(line);
        }
    }
    h.push_str(extra);
    h
}

/// Sends `bytes` and returns the status line; when the server upgrades, proves the
/// connection works (welcome, then a ping answered) with a tungstenite client.
fn answer(server: &TestServer, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    let status = status_line(&head);
    if status.starts_with("HTTP/1.1 101") {
        let mut ws = WebSocket::from_raw_socket(s, Role::Client, None);
        next_of(&mut ws, "welcome");
        ws.send(Message::text(r#"{"op":"ping","id":7}"#)).unwrap();
        assert_eq!(next_of(&mut ws, "pong")["id"], 7);
    }
    status
}

const OK: &str = "HTTP/1.1 101 Switching Protocols";
const BAD: &str = "HTTP/1.1 400 Bad Request";

#[test]
fn list_fields_split_over_several_lines_are_combined() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let split_connection = all_but(
        CONNECTION,
        "Connection: keep-alive\r\nConnection: Upgrade\r\n",
    );
    assert_eq!(answer(&server, &request("/ws", &split_connection)), OK);
    let split_upgrade = all_but(UPGRADE_WS, "Upgrade: h2c\r\nupgrade: WebSocket\r\n");
    assert_eq!(answer(&server, &request("/ws", &split_upgrade)), OK);
    let lists = all_but(
        "",
        "Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b\r\nSec-WebSocket-Extensions: x\r\nSec-WebSocket-Extensions: y\r\n",
    );
    assert_eq!(answer(&server, &request("/ws", &lists)), OK);
    // The same tokens on one line, as before.
    let one_line = all_but(CONNECTION, "Connection: keep-alive, Upgrade\r\n");
    assert_eq!(answer(&server, &request("/ws", &one_line)), OK);
    peer.check(&server, 100);
}

#[test]
fn host_must_be_present_once_and_valid() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    assert_eq!(
        answer(&server, &request("/ws", &all_but(HOST, ""))),
        BAD,
        "no Host"
    );
    for host in [
        "Host: a\r\nHost: a\r\n",
        "Host:\r\n",
        "Host: a b\r\n",
        "Host: a:port\r\n",
        "Host: [::1\r\n",
    ] {
        assert_eq!(
            answer(&server, &request("/ws", &all_but(HOST, host))),
            BAD,
            "{host:?}"
        );
    }
    for host in [
        "Host: [::1]:8080\r\n",
        "Host: localhost:80\r\n",
        "Host: example.com\r\n",
    ] {
        assert_eq!(
            answer(&server, &request("/ws", &all_but(HOST, host))),
            OK,
            "{host:?}"
        );
    }
    peer.check(&server, 100);
}

#[test]
fn a_second_singleton_field_is_400_before_its_value_is_looked_at() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    // Alone, version 8 would be 426 and a bad key 400 for its value: twice, both are 400.
    for twice in [
        "Sec-WebSocket-Version: 8\r\n",
        "Sec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        "Content-Length: 0\r\nContent-Length: 0\r\n",
        "Host: 127.0.0.1\r\n",
    ] {
        let headers = all_but("", twice);
        let raw = raw_exchange(&server, &request("/ws", &headers));
        assert_eq!(status_line(&raw), BAD, "{twice:?}");
        assert!(
            String::from_utf8_lossy(&raw).contains("more than one"),
            "{twice:?}"
        );
    }
    peer.check(&server, 100);
}

#[test]
fn request_framing_faults_are_400() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    for (what, headers) in [
        ("a body", all_but("", "Content-Length: 5\r\n")),
        (
            "chunked body",
            all_but("", "Transfer-Encoding: chunked\r\n"),
        ),
        ("space before colon", all_but(HOST, "Host : a\r\n")),
        ("obsolete line folding", all_but("", "X-A: b\r\n c\r\n")),
    ] {
        let raw = raw_exchange(&server, &request("/ws", &headers));
        assert_eq!(status_line(&raw), BAD, "{what}");
    }
    peer.check(&server, 100);
}

#[test]
fn absolute_form_upgrades_exactly_like_origin_form() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let addr = server.addr;
    let headers = all_but("", "");
    for target in [
        format!("http://{addr}/ws"),
        format!("ws://{addr}/ws?token=abc"),
        format!("HTTP://{addr}/ws"),
        "/ws?a=1&b=%2F".to_string(),
        "/w%73".to_string(),
    ] {
        assert_eq!(answer(&server, &request(&target, &headers)), OK, "{target}");
    }
    for (target, status) in [
        (format!("http://{addr}/other"), "HTTP/1.1 404 Not Found"),
        (format!("http://{addr}"), "HTTP/1.1 404 Not Found"),
        ("/ws%2F".to_string(), "HTTP/1.1 404 Not Found"),
        ("/WS".to_string(), "HTTP/1.1 404 Not Found"),
        ("/ws/".to_string(), "HTTP/1.1 404 Not Found"),
        (addr.to_string(), BAD),
        ("*".to_string(), BAD),
        (format!("ftp://{addr}/ws"), BAD),
        (format!("http://user@{addr}/ws"), BAD),
        ("/w%zzs".to_string(), BAD),
    ] {
        let raw = raw_exchange(&server, &request(&target, &headers));
        assert_eq!(status_line(&raw), status, "{target}");
    }
    peer.check(&server, 100);
}

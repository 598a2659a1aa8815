//! Who may connect (docs/security.md, "Limits" and "Order of the upgrade's checks"): the
//! Origin allow-list (403), per-address and per-user limits (429 with `Retry-After`), the
//! address behind trusted proxies, the order of the checks, and the publisher key. Each with
//! a bystander that loses nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::tokens::*;
use common::*;
use serde_json::json;
use simd_json::prelude::*;

/// Retries `f` until it is true or 5 s pass: a closed connection is released on the
/// server's side a moment after the client's close.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn close(mut ws: Client) {
    let _ = ws.close(None);
    let _ = ws.flush();
    while ws.read().is_ok() {}
}

#[test]
fn connections_per_user_are_counted_across_the_server() {
    let server = auth_server(|c| {
        c.limits.connections_per_user = 2;
        c.server.shards = 2;
    });
    let mut bystander = Bystander::new(&server, "public.bystander");
    let alice = hs(claims("alice", 600, json!({})));
    // Alice's two connections on different shards (the welcome's `conn` is `<shard>-<id>`):
    // were the count per shard, a third would find room on either.
    let shard_of = |ws: &mut Client| -> String {
        let w = next_op(ws, "welcome");
        w["conn"]
            .as_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string()
    };
    let mut a1 = with_bearer(&server.url, &alice).unwrap();
    let first = shard_of(&mut a1);
    let mut a2 = None;
    for _ in 0..200 {
        // A refusal here is the place of the last try, not yet released by the server.
        let Ok(mut ws) = with_bearer(&server.url, &alice) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if shard_of(&mut ws) != first {
            a2 = Some(ws);
            break;
        }
        close(ws);
    }
    let _a2 = a2.expect("a connection on the other shard within 64 tries");
    for _ in 0..8 {
        let r = refused(with_bearer(&server.url, &alice));
        assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("1")));
        assert_eq!(r.body["error"], "connections_per_user");
    }
    // In the first message too: the connection stays, without the user.
    let mut a3 = connect(&server.url);
    send_auth(&mut a3, 1, &alice);
    let e = next_op(&mut a3, "error");
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str()),
        (Some(1), Some("too_many_connections"))
    );
    send(
        &mut a3,
        r#"{"op":"subscribe","id":2,"topics":["user.alice"]}"#,
    );
    assert_eq!(next_op(&mut a3, "error")["code"], "forbidden");
    // Another user is not affected; a closed connection frees its place.
    assert!(with_bearer(&server.url, &hs(claims("bob", 600, json!({})))).is_ok());
    close(a1);
    assert!(eventually(|| with_bearer(&server.url, &alice).is_ok()));
    bystander.check(&server, 3);
}

#[test]
fn connections_and_connects_per_address() {
    let server = start(|c| c.limits.connections_per_ip = 3);
    let mut bystander = Bystander::new(&server, "t.bystander"); // one of the three
    let c1 = upgrade(&server.url, &[]).unwrap();
    let _c2 = upgrade(&server.url, &[]).unwrap();
    let r = refused(upgrade(&server.url, &[]));
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("1")));
    assert_eq!(r.body["error"], "connections_per_ip");
    close(c1);
    assert!(eventually(|| upgrade(&server.url, &[]).is_ok()));
    bystander.check(&server, 3);

    let server = start(|c| c.limits.connects_per_ip_per_sec = 3);
    let mut kept = Vec::new();
    let mut refusal = None;
    for _ in 0..10 {
        match upgrade(&server.url, &[]) {
            Ok(ws) => kept.push(ws),
            Err(r) => {
                refusal = Some(r);
                break;
            }
        }
    }
    let r = refusal.expect("a fast fourth connect is refused");
    assert!(kept.len() >= 3, "the burst is the rate: {}", kept.len());
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("connect_rate"))
    );
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(upgrade(&server.url, &[]).is_ok(), "the bucket refills");
}

/// Behind a trusted proxy the client is the rightmost untrusted `X-Forwarded-For` address;
/// from anyone else the header is ignored.
#[test]
fn forwarded_addresses_count_only_behind_trusted_proxies() {
    let server = start(|c| {
        c.limits.connections_per_ip = 1;
        c.limits.trusted_proxies = vec!["127.0.0.0/8".into()];
    });
    let xff = |v: &str| upgrade(&server.url, &[("X-Forwarded-For", v)]);
    let _a = xff("203.0.113.7").unwrap();
    let _b = xff("198.51.100.1, 203.0.113.8").unwrap();
    assert_eq!(refused(xff("203.0.113.7")).status, 429);
    assert_eq!(
        refused(xff("192.0.2.1, 203.0.113.7, 127.0.0.2")).status,
        429,
        "trusted hops skipped"
    );
    let _c = xff("2001:db8:1:2::1").unwrap();
    assert_eq!(refused(xff("2001:db8:1:2::99")).status, 429, "one /64");
    let _d = upgrade(&server.url, &[]).unwrap(); // the proxy itself, 127.0.0.1

    let untrusted = start(|c| c.limits.connections_per_ip = 1);
    let _e = upgrade(&untrusted.url, &[("X-Forwarded-For", "203.0.113.7")]).unwrap();
    let r = refused(upgrade(
        &untrusted.url,
        &[("X-Forwarded-For", "203.0.113.9")],
    ));
    assert_eq!(r.status, 429, "the header of an untrusted peer is ignored");
}

#[test]
fn origins_on_the_allow_list_only() {
    let server = start(|c| c.limits.allowed_origins = vec!["https://app.example.com".into()]);
    let mut bystander = Bystander::new(&server, "t.bystander");
    assert!(
        upgrade(&server.url, &[]).is_ok(),
        "no Origin: not a browser"
    );
    assert!(upgrade(&server.url, &[("Origin", "https://app.example.com")]).is_ok());
    for bad in [
        "https://evil.example.com",
        "null",
        "https://app.example.com:8443",
        "http://app.example.com",
    ] {
        let r = refused(upgrade(&server.url, &[("Origin", bad)]));
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("origin_not_allowed")),
            "{bad}"
        );
    }
    bystander.check(&server, 3);
}

/// The documented order: Origin, then per-address limits, then the token, then per-user
/// limits.
#[test]
fn the_upgrade_checks_run_in_the_documented_order() {
    let server = auth_server(|c| {
        c.limits.allowed_origins = vec!["https://app.example.com".into()];
        c.limits.connections_per_ip = 2;
        c.limits.connections_per_user = 1;
    });
    let alice = hs(claims("alice", 600, json!({})));
    let bad = ("Authorization", "Bearer a.b.c");
    let origin = ("Origin", "https://evil.example.com");
    let elsewhere = server.url.replace("/ws", "/other");
    let r = refused(upgrade(&elsewhere, &[origin, bad]));
    assert_eq!(r.status, 404, "the path before Origin");
    let r = refused(upgrade(&server.url, &[origin, bad]));
    assert_eq!(r.status, 403, "Origin before the token");
    // (A refused socket holds its address's place until it is gone: retry the next opens.)
    let _a = retrying(|| with_bearer(&server.url, &alice));
    let expired = hs(claims(
        "alice",
        600,
        json!({"iat": now() - 100, "exp": now() - 60}),
    ));
    let r = refused(with_bearer(&server.url, &expired));
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("expired")),
        "the token before the per-user limit (alice is at hers)"
    );
    let r = refused(with_bearer(&server.url, &alice));
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("connections_per_user"))
    );
    let _b = retrying(|| upgrade(&server.url, &[]));
    // A direct client over its per-address limit is answered at accept, before its request
    // is read: the 404 path, the bad Origin and the bad token are not looked at.
    let r = refused(upgrade(&elsewhere, &[origin, bad]));
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("connections_per_ip"))
    );
}

/// Opens with `f`, retrying refusals for up to 5 s.
fn retrying(mut f: impl FnMut() -> Result<Client, Refused>) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Ok(ws) => return ws,
            Err(r) if Instant::now() > deadline => panic!("still refused: {r:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Sockets of an address over its limit never wait in the upgrade: one that sends nothing
/// is answered 429 at once; a counted socket that never finishes its request gives its place
/// back at the handshake timeout.
#[test]
fn handshake_sockets_count_and_are_bounded() {
    use std::io::Read;
    let server = start(|c| {
        c.limits.connections_per_ip = 1;
        c.shard.handshake_timeout_ms = 300;
    });
    let mut silent = std::net::TcpStream::connect(server.addr).unwrap(); // counted, says nothing
    std::thread::sleep(Duration::from_millis(50));
    let mut second = std::net::TcpStream::connect(server.addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = second.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Retry-After: 1\r\n") && text.contains("connections_per_ip"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "answered before the handshake timeout"
    );
    // The silent socket is dropped at its handshake timeout, and its place is free again.
    silent
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    let _ws = retrying(|| upgrade(&server.url, &[]));
}

/// Thousands of sockets that never authenticate leave deadlines behind; the clock is
/// compacted, and a connection opened after them still gets its 4003, and a token its
/// `refresh` and 4004.
#[test]
fn the_auth_clock_keeps_its_deadlines_through_churn() {
    let server = auth_server(|c| {
        c.auth.anonymous_topics = None;
        c.auth.timeout_ms = 3_000;
        c.auth.leeway_s = 0;
    });
    for _ in 0..1500 {
        drop(upgraded(&server)); // upgraded, then gone without a word
    }
    let mut late = connect(&server.url);
    let mut token = with_bearer(&server.url, &hs(claims("alice", 3, json!({})))).unwrap();
    assert_eq!(next_op(&mut token, "refresh")["op"], "refresh");
    assert_eq!(expect_close(&mut token).0, 4004);
    assert_eq!(expect_close(&mut late).0, 4003);
}

/// With `dispatcher.publisher_key` a publisher's first line is the key: a wrong one gets an
/// `unauthorized` error line and the connection closes; the right one publishes.
#[test]
fn publishers_send_the_key_first() {
    let server = start(|c| {
        c.dispatcher.publisher_key =
            Some(corecast_shards::auth::Secret("pub-key-0123456789".into()));
    });
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["t.a"]);
    for first in [
        "wrong-key",
        "pub-key-0123456789x",
        "",
        "{\"topic\":\"t.a\",\"data\":1}",
    ] {
        let mut p = std::net::TcpStream::connect(server.ingest).unwrap();
        p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(p, "{first}\n{{\"topic\":\"t.a\",\"data\":0}}\n").unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(p);
        r.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["code"], "unauthorized", "{first:?}: {line}");
        line.clear();
        assert_eq!(
            r.read_line(&mut line).unwrap(),
            0,
            "closed after the refusal"
        );
    }
    let mut p = std::net::TcpStream::connect(server.ingest).unwrap();
    write!(
        p,
        "pub-key-0123456789\r\n{{\"topic\":\"t.a\",\"data\":1}}\n"
    )
    .unwrap();
    p.flush().unwrap();
    writeln!(p, "{{\"topic\":\"t.a\",\"data\":2}}").unwrap();
    let m = next_op(&mut ws, "msg");
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_u64()),
        (Some(1), Some(1)),
        "nothing of the refused publishers"
    );
    let m = next_op(&mut ws, "msg");
    assert_eq!(m["data"].as_u64(), Some(2));
}

/// Whatever ends a connection releases its places: a 4003 (no `auth` in time), a 4004 (the
/// token expired), an `auth` refused by the per-user limit.
#[test]
fn closed_connections_give_their_places_back() {
    let server = auth_server(|c| {
        c.auth.anonymous_topics = None;
        c.auth.timeout_ms = 300;
        c.auth.leeway_s = 0;
        c.limits.connections_per_ip = 2;
        c.limits.connections_per_user = 1;
    });
    // 4003, twice the limit over: each releases its address.
    for _ in 0..4 {
        let mut ws = upgrade(&server.url, &[]).unwrap();
        assert_eq!(expect_close(&mut ws).0, 4003);
        close(ws);
    }
    // A 4004 releases the user. (3 s: a token is refused from its `exp` on, and a second
    // of that goes to whole-second rounding.)
    let mut ws = with_bearer(&server.url, &hs(claims("alice", 3, json!({})))).unwrap();
    assert_eq!(expect_close(&mut ws).0, 4004);
    close(ws);
    let alice = hs(claims("alice", 600, json!({})));
    let mut kept = None;
    assert!(eventually(|| {
        kept = with_bearer(&server.url, &alice).ok();
        kept.is_some()
    }));
    // An `auth` over the user limit counts nothing: the connection still ends with 4003 and
    // alice keeps exactly one place.
    let mut over = upgrade(&server.url, &[]).unwrap();
    send_auth(&mut over, 1, &alice);
    assert_eq!(next_op(&mut over, "error")["code"], "too_many_connections");
    assert_eq!(expect_close(&mut over).0, 4003);
    close(over);
    assert_eq!(refused(with_bearer(&server.url, &alice)).status, 429);
    drop(kept);
    assert!(eventually(|| with_bearer(&server.url, &alice).is_ok()));
}

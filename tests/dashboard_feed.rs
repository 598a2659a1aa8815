//! The dashboard's feed over real sockets (docs/protocol.md, "Reserved topics";
//! docs/operations.md, "The dashboard"): `_sys.` is refused at ingest; `_sys.stats` comes once
//! a second to connections that sent the admin key (`server.admin_key`, or the one made at
//! start and handed out by `/dashboard.json`), and to nobody else, loopback included; its
//! traffic stays out of the figures it reports; the admin port serves the dashboard's files
//! and the JavaScript client.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;

const KEY: &str = "operator-key-0123456789";

/// The key `/dashboard.json` hands out (made at start when `server.admin_key` is unset).
fn made_key(admin: std::net::SocketAddr) -> String {
    let (status, _, body) = http_get(admin, "/dashboard.json", &[]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["admin_key_required"], false, "{body}");
    let key = v["admin_key"].as_str().expect("a key is made").to_string();
    assert_eq!(key.len(), 32, "128 random bits in hex: {key}");
    key
}

/// Sends the admin key and expects its ack.
fn operator(ws: &mut Client, key: &str) {
    send(
        ws,
        &format!(r#"{{"op":"auth","id":900,"admin_key":"{key}"}}"#),
    );
    let ack = next_op(ws, "ack");
    assert_eq!(ack["admin"].as_bool(), Some(true), "{ack:?}");
}

fn with_key(c: &mut corecast::Config) {
    c.server.admin_key = Some(corecast_shards::auth::Secret(KEY.into()));
}

/// The next `_sys.stats` sample's data, skipping other frames.
fn next_sample(ws: &mut Client) -> simd_json::OwnedValue {
    loop {
        let m = next_op(ws, "msg");
        if m["topic"].as_str() == Some("_sys.stats") {
            return m["data"].clone();
        }
    }
}

fn error_code(v: &simd_json::OwnedValue) -> (&str, Option<&str>) {
    (
        v["code"].as_str().unwrap_or(""),
        v.get("reason").and_then(|r| r.as_str()),
    )
}

#[test]
fn reserved_topics_are_refused_at_ingest_tcp_and_in_process() {
    let (server, admin) = admin_server(|_| {});
    let mut tcp = std::net::TcpStream::connect(server.ingest).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"{\"topic\":\"_sys.stats\",\"data\":{\"connections\":1e9}}\n{\"topic\":\"_sys\",\"data\":1}\n{\"topic\":\"_system.x\",\"data\":1}\n")
        .unwrap();
    let mut lines = BufReader::new(tcp.try_clone().unwrap());
    for n in [1, 2] {
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["code"], "reserved_topic", "{line}");
        assert_eq!(v["line"], n, "{line}");
        assert!(v["message"].as_str().unwrap().contains("_sys."), "{line}");
    }
    let refused = server.publisher.publish("_sys.stats", "1");
    assert_eq!(
        refused.map_err(|e| e.code()),
        Err("reserved_topic"),
        "in-process publishing is refused on the caller's thread"
    );
    assert!(
        server.publisher.publish("_sysx", "1").is_ok(),
        "only `_sys` and what is under it"
    );
    // `_system.x` (line 3) is an ordinary topic: published, so the publisher's stream went on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = http_get(admin, "/metrics", &[]);
        let refused = sample(
            &body,
            "corecast_ingest_errors_total{code=\"reserved_topic\"}",
        );
        let published = sample(&body, "corecast_messages_published_total");
        if refused == Some(2.0) && published == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{refused:?} {published:?}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_made_key_reads_the_figures_and_they_leave_themselves_out() {
    let (server, admin) = admin_server(|c| c.server.shards = 2);
    let mut reader = connect(&server.url);
    operator(&mut reader, &made_key(admin));
    let ack = subscribe(&mut reader, 1, &["_sys.stats"]);
    assert_eq!(ack["op"].as_str(), Some("ack"), "{ack:?}");
    let mut watcher = connect(&server.url);
    subscribe(&mut watcher, 1, &["prices.a"]);
    let first = next_sample(&mut reader);
    for field in [
        "ts",
        "uptime_s",
        "connections",
        "msgs_in_per_s",
        "msgs_out_per_s",
        "latency_us",
    ] {
        assert!(first.get(field).is_some(), "{field} missing: {first:?}");
    }
    assert_eq!(first["v"].as_u64(), Some(1));
    assert_eq!(first["shards"].as_array().map(|a| a.len()), Some(2));
    // Publish a steady stream while samples come; the busiest topics name it.
    let publisher = server.publisher.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p_stop, published) = (
        stop.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let p_count = published.clone();
    let feeder = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p_stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            publisher.publish("prices.a", "{\"p\":1}").unwrap();
            p_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let began = Instant::now();
    let deadline = began + Duration::from_secs(15);
    let mut seen: Option<simd_json::OwnedValue> = None;
    while Instant::now() < deadline {
        let s = next_sample(&mut reader);
        let busiest = s["busiest"].as_array().cloned().unwrap_or_default();
        // The feeder's own rate so far; a sample's rate is over the last report interval.
        let rate = published.load(std::sync::atomic::Ordering::Relaxed) as f64
            / began.elapsed().as_secs_f64();
        let near = |v: Option<f64>| v.is_some_and(|v| v > rate * 0.5 && v < rate * 1.5);
        if began.elapsed() > Duration::from_secs(2)
            && near(s["msgs_in_per_s"].as_f64())
            && near(s["msgs_out_per_s"].as_f64())
            && near(busiest.first().and_then(|b| b["msgs_per_s"].as_f64()))
            && s["latency_us"]["count"].as_u64().unwrap_or(0) > 0
            && busiest.first().and_then(|b| b["topic"].as_str()) == Some("prices.a")
        {
            seen = Some(s);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    let s = seen.expect(
        "a sample showed the stream: rates within half of the feeder's, latency, the busiest topic",
    );
    assert_eq!(s["connections"].as_u64(), Some(2), "{s:?}");
    assert_eq!(
        s["topics"].as_u64(),
        Some(1),
        "`_sys.stats` is not counted: {s:?}"
    );
    assert_eq!(s["busiest"].as_array().unwrap().len(), 1, "{s:?}");
    assert_eq!(s["busiest"][0]["subscribers"].as_u64(), Some(1), "{s:?}");
    // Every counter leaves the figures out: published and delivered count prices.a only,
    // however many samples went out.
    let n = published.load(std::sync::atomic::Ordering::Relaxed);
    expect_contiguous(&mut watcher, "prices.a", 1, n);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = http_get(admin, "/metrics", &[]);
        let published = sample(&body, "corecast_messages_published_total");
        let delivered: f64 = ["0", "1"]
            .iter()
            .filter_map(|sh| {
                sample(
                    &body,
                    &format!("corecast_messages_delivered_total{{shard=\"{sh}\"}}"),
                )
            })
            .sum();
        if published == Some(n as f64) && delivered == n as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "published {published:?}, delivered {delivered} of {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, body) = http_get(admin, "/topics", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("_sys"),
        "/topics lists no reserved topic: {body}"
    );
    assert!(body.contains("prices.a"), "{body}");
}

#[test]
fn the_admin_key_guards_the_reserved_topics() {
    let (server, admin) = admin_server(with_key);
    let mut ws = connect(&server.url);
    for (id, name) in [(1, "_sys.stats"), (2, "_sys.*")] {
        send(
            &mut ws,
            &format!(r#"{{"op":"subscribe","id":{id},"topics":["{name}"]}}"#),
        );
        let e = next_op(&mut ws, "error");
        assert_eq!(error_code(&e), ("forbidden", None), "{e:?}");
        assert!(
            e["message"].as_str().unwrap().contains("admin_key"),
            "{e:?}"
        );
    }
    send(
        &mut ws,
        r#"{"op":"auth","id":3,"admin_key":"operator-key-012345678X"}"#,
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        error_code(&e),
        ("unauthorized", Some("bad_admin_key")),
        "{e:?}"
    );
    assert_eq!(e["id"].as_u64(), Some(3));
    send(
        &mut ws,
        &format!(r#"{{"op":"auth","id":4,"admin_key":"{KEY}"}}"#),
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        error_code(&e),
        ("rate_limited", None),
        "one auth a second: {e:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    send(
        &mut ws,
        &format!(r#"{{"op":"auth","id":5,"admin_key":"{KEY}"}}"#),
    );
    let ack = next_op(&mut ws, "ack");
    assert_eq!(ack["id"].as_u64(), Some(5));
    assert_eq!(ack["admin"].as_bool(), Some(true), "{ack:?}");
    let ack = subscribe(&mut ws, 6, &["_sys.stats"]);
    assert_eq!(ack["id"].as_u64(), Some(6), "{ack:?}");
    let s = next_sample(&mut ws);
    assert_eq!(s["connections"].as_u64(), Some(1), "{s:?}");
    // Both fields at once is a bad request.
    send(
        &mut ws,
        &format!(r#"{{"op":"auth","id":7,"admin_key":"{KEY}","token":"x"}}"#),
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(error_code(&e), ("bad_request", None), "{e:?}");
    // With a configured key, /dashboard.json hands out none.
    let (status, _, body) = http_get(admin, "/dashboard.json", &[]);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["admin_key_required"], true, "{body}");
    assert_eq!(v["admin_key"], serde_json::Value::Null, "{body}");
}

#[test]
fn without_the_key_nobody_reads_the_figures_loopback_included() {
    let (server, admin) = admin_server(|_| {});
    let mut ws = connect(&server.url);
    send(
        &mut ws,
        r#"{"op":"subscribe","id":1,"topics":["_sys.stats"]}"#,
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        error_code(&e),
        ("forbidden", None),
        "a loopback client without the key: {e:?}"
    );
    send(
        &mut ws,
        r#"{"op":"auth","id":2,"admin_key":"0123456789abcdef0123456789abcdef"}"#,
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        error_code(&e),
        ("unauthorized", Some("bad_admin_key")),
        "{e:?}"
    );
    // A second start makes another key: one server's key is no other's.
    let (other, other_admin) = admin_server(|_| {});
    assert_ne!(made_key(admin), made_key(other_admin));
    let mut ws = connect(&other.url);
    send(
        &mut ws,
        &format!(
            r#"{{"op":"auth","id":1,"admin_key":"{}"}}"#,
            made_key(admin)
        ),
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        error_code(&e),
        ("unauthorized", Some("bad_admin_key")),
        "{e:?}"
    );
    // No admin endpoint: no key, and the figures are nobody's.
    let plain = start(|_| {});
    let mut ws = connect(&plain.url);
    send(&mut ws, r#"{"op":"subscribe","id":1,"topics":["_sys.*"]}"#);
    let e = next_op(&mut ws, "error");
    assert_eq!(error_code(&e), ("forbidden", None), "{e:?}");
    assert!(
        e["message"].as_str().unwrap().contains("no admin endpoint"),
        "{e:?}"
    );
    send(
        &mut ws,
        r#"{"op":"auth","id":2,"admin_key":"0123456789abcdef"}"#,
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(error_code(&e), ("bad_request", None), "{e:?}");
}

#[test]
fn the_operator_needs_no_token_where_anonymous_access_is_off() {
    let (server, _admin) = admin_server(|c| {
        with_key(c);
        c.auth.hmac_secret = Some(corecast_shards::auth::Secret(tokens::SECRET.into()));
        c.auth.timeout_ms = 500;
    });
    let mut ws = connect(&server.url);
    send(
        &mut ws,
        &format!(r#"{{"op":"auth","id":1,"admin_key":"{KEY}"}}"#),
    );
    assert_eq!(next_op(&mut ws, "ack")["admin"].as_bool(), Some(true));
    send(
        &mut ws,
        r#"{"op":"subscribe","id":2,"topics":["_sys.stats","prices.a"]}"#,
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        error_code(&e),
        ("auth_required", None),
        "other topics still need a token: {e:?}"
    );
    subscribe(&mut ws, 3, &["_sys.stats"]);
    // Past the auth deadline (500 ms) the connection stays open and samples keep coming.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut samples = 0;
    while Instant::now() < until || samples < 2 {
        next_sample(&mut ws);
        samples += 1;
    }
    // A connection that sent neither is closed at its deadline, as before.
    let mut idle = connect(&server.url);
    assert_eq!(expect_close(&mut idle).0, 4003);
    // A token and the key sent back to back: neither waits for the other's rate limit.
    let mut both = connect(&server.url);
    let token = tokens::hs(tokens::claims("alice", 600, serde_json::json!({})));
    tokens::send_auth(&mut both, 1, &token);
    send(
        &mut both,
        &format!(r#"{{"op":"auth","id":2,"admin_key":"{KEY}"}}"#),
    );
    assert_eq!(next_op(&mut both, "ack")["sub"].as_str(), Some("alice"));
    assert_eq!(next_op(&mut both, "ack")["admin"].as_bool(), Some(true));
}

#[test]
fn the_admin_port_serves_the_dashboard_and_the_client() {
    let (server, admin) = admin_server(with_key);
    let (status, head, body) = http_get(admin, "/", &[]);
    assert_eq!(status, 200, "the page is open even with a key: {body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(body.contains("dashboard.js"), "{body}");
    for (path, what) in [
        ("/corecast.js", "export class Corecast"),
        (
            "/corecast.d.ts",
            "export class Corecast extends EventTarget",
        ),
        (
            "/corecast-status.js",
            "customElements.define('corecast-status'",
        ),
        ("/dashboard.js", "_sys.stats"),
        ("/vendor/uplot.js", "uPlot"),
    ] {
        let (status, head, body) = http_get(admin, path, &[]);
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(what), "{path} holds {what:?}");
        assert!(head.contains("nosniff"), "{head}");
        let shared = head.contains("access-control-allow-origin: *")
            || head.contains("Access-Control-Allow-Origin: *");
        assert_eq!(
            shared,
            path.starts_with("/corecast"),
            "{path}: only the client is shared\n{head}"
        );
    }
    let (status, _, body) = http_get(admin, "/dashboard.json", &[]);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ws_port"], server.addr.port());
    assert_eq!(v["ws_path"], "/ws");
    assert_eq!(v["admin_key_required"], true);
    let (status, _, _) = http_get(admin, "/stats", &[]);
    assert_eq!(status, 401, "the figures themselves still need the key");
}

/// `/dashboard.json` asked with `Host: host`.
fn dashboard_json_for_host(admin: std::net::SocketAddr, host: &str) -> serde_json::Value {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /dashboard.json HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (_, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap()
}

#[test]
fn the_made_key_goes_only_to_pages_at_an_address_or_localhost() {
    let (_server, admin) = admin_server(|_| {});
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "LOCALHOST".into(),
    ] {
        let v = dashboard_json_for_host(admin, &host);
        assert!(v["admin_key"].is_string(), "{host}: {v}");
        assert!(v["admin_key_note"].is_null(), "{host}: {v}");
    }
    // A DNS-rebinding page reaches this address under its own host name.
    for host in [
        format!("attacker.example:{port}"),
        "127.0.0.1.nip.io".into(),
    ] {
        let v = dashboard_json_for_host(admin, &host);
        assert!(v["admin_key"].is_null(), "{host}: {v}");
        assert!(
            v["admin_key_note"].as_str().unwrap().contains("DNS"),
            "{host}: {v}"
        );
    }
}

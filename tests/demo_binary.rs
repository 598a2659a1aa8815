//! The real `corecast demo` binary: a subscribed client sees live, contiguous `msg` frames, and
//! SIGTERM closes it with 1001 and exits cleanly.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;

#[test]
fn demo_feed_reaches_a_client_in_order_and_sigterm_says_going_away() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(["--exit-after", "60"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (url, admin) = loop {
        let line = lines
            .next()
            .expect("the binary prints its addresses")
            .unwrap();
        if let Some(rest) = line.split("clients on ws://").nth(1) {
            let addr = rest.split(',').next().unwrap().trim();
            let admin: std::net::SocketAddr = line
                .split("admin on http://")
                .nth(1)
                .expect("the demo serves its admin endpoint")
                .trim()
                .parse()
                .unwrap();
            break (format!("ws://{addr}/ws"), admin);
        }
    };
    std::thread::spawn(move || for _ in lines {}); // keep stderr drained
    let (status, _, before) = http_get(admin, "/metrics", &[]);
    assert_eq!(status, 200);
    promtool_check_metrics(&before);
    let mut ws = connect(&url);
    let ack = subscribe(&mut ws, 1, &["trades.BTCUSD", "book.BTCUSD", "ticker.*"]);
    let mut last: HashMap<String, u64> = HashMap::new();
    for t in ["trades.BTCUSD", "book.BTCUSD"] {
        last.insert(t.to_string(), ack_seq(&ack, t));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    let mut snapshots = 0;
    while seen < 60 && Instant::now() < deadline {
        let m = next_json(&mut ws);
        let op = m["op"].as_str().unwrap_or_default().to_string();
        if op != "msg" && op != "snapshot" {
            continue;
        }
        let topic = m["topic"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        // `book.` is a snapshot topic in the demo: it starts with a snapshot, whose seq may be
        // below the ack's; every later message is the previous + 1.
        let prev = last.insert(topic.clone(), seq);
        if op == "snapshot" {
            assert!(topic.starts_with("book."), "{m:?}");
            snapshots += 1;
        } else if let Some(prev) = prev {
            assert_eq!(seq, prev + 1, "contiguous seq on {topic}");
        }
        assert!(m["data"]["symbol"].is_str(), "market data payload: {m:?}");
        seen += 1;
    }
    assert_eq!(seen, 60, "live messages within 20 s");
    assert!(snapshots >= 1, "the book started from a snapshot");
    // The demo's /metrics passes promtool and its counters move under the feed.
    std::thread::sleep(Duration::from_millis(1100)); // a shard report
    let (_, _, after) = http_get(admin, "/metrics", &[]);
    promtool_check_metrics(&after);
    let published = |t: &str| sample(t, "corecast_messages_published_total").unwrap();
    assert!(published(&after) > published(&before), "published moves");
    assert!(sample(&after, "corecast_messages_delivered_total{shard=\"0\"}").unwrap() >= 60.0);
    assert_eq!(
        sample(&after, "corecast_connections{shard=\"0\"}"),
        Some(1.0)
    );
    assert_eq!(http_get(admin, "/health/ready", &[]).0, 200);
    // SIGTERM: graceful shutdown.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, reason) = expect_close(&mut ws);
    assert_eq!((code, reason.as_str()), (1001, "going away, reconnect"));
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

/// The demo's private stream: the token it prints reads `user.demo.orders` (orders and fills
/// arrive), an anonymous client is refused it, and `corecast watch --token` shows it.
#[test]
fn the_demo_prints_a_token_for_its_private_stream() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["demo", "--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"])
        .args(["--shards", "1", "--exit-after", "60", "--symbols", "8"])
        .args(["--admin", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut url = None;
    let mut token = None;
    let mut watch_command = None;
    // (The log line with the addresses and the help text may come in either order.)
    while url.is_none() || token.is_none() || watch_command.is_none() {
        let line = lines.next().expect("the demo prints its token").unwrap();
        if let Some(rest) = line.split("clients on ws://").nth(1) {
            url = Some(format!(
                "ws://{}/ws",
                rest.split(',').next().unwrap().trim()
            ));
        }
        let trimmed = line.trim();
        if trimmed.starts_with("ey") && trimmed.matches('.').count() == 2 {
            token = Some(trimmed.to_string());
        }
        if trimmed.contains("watch") && trimmed.contains("--token") {
            watch_command = Some(trimmed.to_string());
        }
    }
    let (url, token) = (url.unwrap(), token.unwrap());
    assert!(watch_command
        .unwrap()
        .ends_with(&format!("--token {token} user.demo.orders")));
    std::thread::spawn(move || for _ in lines {}); // keep stderr drained

    let mut anon = connect(&url);
    send(
        &mut anon,
        r#"{"op":"subscribe","id":1,"topics":["user.demo.orders"]}"#,
    );
    assert_eq!(next_op(&mut anon, "error")["code"], "forbidden");
    subscribe(&mut anon, 2, &["trades.BTCUSD"]); // public topics stay open

    let mut ws = common::tokens::with_bearer(&url, &token).unwrap();
    assert_eq!(next_op(&mut ws, "welcome")["sub"], "demo");
    subscribe(&mut ws, 1, &["user.demo.orders"]);
    set_timeout(&ws, Duration::from_secs(30));
    let m = next_op(&mut ws, "msg");
    assert_eq!(m["topic"], "user.demo.orders");
    let kind = m["data"]["type"].as_str().unwrap_or_default();
    assert!(
        kind == "order" || kind == "fill",
        "an order or a fill: {m:?}"
    );
    assert!(m["data"]["order_id"].as_u64().is_some(), "{m:?}");

    let watched = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["watch", "--server", &url, "--token", &token, "--count", "1"])
        .arg("user.demo.orders")
        .output()
        .unwrap();
    assert!(watched.status.success(), "{watched:?}");
    let text = String::from_utf8_lossy(&watched.stdout);
    assert!(text.contains("user.demo.orders"), "{text}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

//! The admin endpoint over real sockets (docs/operations.md): `/metrics` exposes every fixed
//! family from startup with zero-valued series, passes `promtool check metrics`, and moves
//! under load; the health endpoints answer 503 with the reason when a shard stops
//! reporting; the admin key; a bind failure is a start error.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Polls `/metrics` until `series` reaches `at_least` (shards report every 200 ms here).
fn metric_reaches(admin: std::net::SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = http_get(admin, "/metrics", &[]);
        assert_eq!(status, 200);
        if sample(&body, series).is_some_and(|v| v >= at_least) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_family_is_there_from_startup_with_zeros() {
    let (_server, admin) = admin_server(|c| c.server.shards = 2);
    let (status, head, body) = http_get(admin, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    promtool_check_metrics(&body);
    for shard in ["0", "1"] {
        for series in [
            format!("corecast_connections{{shard=\"{shard}\"}}"),
            format!("corecast_subscriptions{{shard=\"{shard}\"}}"),
            format!("corecast_messages_delivered_total{{shard=\"{shard}\"}}"),
            format!(
                "corecast_messages_dropped_total{{shard=\"{shard}\",reason=\"slow_consumer\"}}"
            ),
            format!(
                "corecast_messages_dropped_total{{shard=\"{shard}\",reason=\"shard_overflow\"}}"
            ),
            format!("corecast_gap_notices_total{{shard=\"{shard}\",reason=\"slow_consumer\"}}"),
            format!("corecast_gap_notices_total{{shard=\"{shard}\",reason=\"shard_overflow\"}}"),
            format!("corecast_gap_notices_total{{shard=\"{shard}\",reason=\"no_snapshot\"}}"),
        ] {
            assert_eq!(sample(&body, &series), Some(0.0), "{series} in\n{body}");
        }
    }
    for kind in corecast::admin::metrics::REFUSAL_KINDS {
        let series = format!("corecast_refusals_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(&body, &series), Some(0.0), "{series}");
    }
    for code in corecast::publisher::ERROR_CODES {
        let series = format!("corecast_ingest_errors_total{{code=\"{code}\"}}");
        assert_eq!(sample(&body, &series), Some(0.0), "{series}");
    }
    for series in [
        "corecast_topics",
        "corecast_messages_published_total",
        "corecast_history_bytes",
        "corecast_ingest_to_write_seconds_count",
        "corecast_ring_hop_seconds_count",
        "corecast_frames_per_write_count",
        "corecast_connection_queue_messages_count",
    ] {
        assert_eq!(sample(&body, series), Some(0.0), "{series}");
    }
    assert_eq!(
        sample(&body, "corecast_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    assert!(sample(&body, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    for family in [
        "corecast_ingest_to_write_seconds",
        "corecast_ring_hop_seconds",
        "corecast_frames_per_write",
        "corecast_connection_queue_messages",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} summary")),
            "{family}"
        );
        for q in ["0.5", "0.9", "0.99", "0.999"] {
            assert!(
                body.contains(&format!("{family}{{quantile=\"{q}\"}}")),
                "{family} {q}"
            );
        }
    }
}

#[test]
fn the_figures_move_under_load() {
    let (server, admin) = admin_server(|_| {});
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["t.a", "t.b.*"]);
    server.publish("t.a", 200);
    expect_contiguous(&mut ws, "t.a", 1, 200);
    let body = metric_reaches(
        admin,
        "corecast_messages_delivered_total{shard=\"0\"}",
        200.0,
    );
    promtool_check_metrics(&body);
    assert!(sample(&body, "corecast_messages_published_total").unwrap() >= 200.0);
    assert_eq!(
        sample(&body, "corecast_connections{shard=\"0\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "corecast_subscriptions{shard=\"0\"}"),
        Some(2.0)
    );
    assert_eq!(sample(&body, "corecast_topics"), Some(1.0));
    assert!(sample(&body, "corecast_ingest_to_write_seconds_count").unwrap() >= 200.0);
    assert!(sample(&body, "corecast_ring_hop_seconds{quantile=\"0.99\"}").unwrap() > 0.0);
    // A refused subscribe and a bad publisher line are counted by kind and code.
    send(&mut ws, r#"{"op":"subscribe","id":2,"topics":["a..b"]}"#);
    assert_eq!(next_op(&mut ws, "error")["code"], "bad_topic");
    let mut p = std::net::TcpStream::connect(server.ingest).unwrap();
    std::io::Write::write_all(&mut p, b"{nope\n").unwrap();
    metric_reaches(admin, "corecast_refusals_total{kind=\"bad_request\"}", 1.0);
    metric_reaches(
        admin,
        "corecast_ingest_errors_total{code=\"invalid_json\"}",
        1.0,
    );
    let (status, _, stats) = http_get(admin, "/stats", &[]);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(v["shards"][0]["delivered"].as_u64().unwrap() >= 200, "{v}");
    assert!(
        v["last_60s"]["ingest_to_write_seconds"]["count"]
            .as_u64()
            .unwrap()
            >= 200
    );
    // Gone: the gauges come back down.
    drop(ws);
    let settled = Instant::now() + Duration::from_secs(5);
    loop {
        let body = http_get(admin, "/metrics", &[]).2;
        let connections = sample(&body, "corecast_connections{shard=\"0\"}");
        let subscriptions = sample(&body, "corecast_subscriptions{shard=\"0\"}");
        if (connections, subscriptions) == (Some(0.0), Some(0.0)) {
            break;
        }
        assert!(Instant::now() < settled, "the gauges stay up:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readiness_says_which_shard_stopped_reporting() {
    let (server, admin) = admin_server(|c| {
        c.server.shards = 2;
        c.shard.report_interval_ms = 1000;
    });
    let (status, _, body) = http_get(admin, "/health/live", &[]);
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#));
    // Ready once both shards have reported.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(admin, "/health/ready", &[]).0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Shard 1's last report 10 s old, as if it had stopped: degraded, naming it, on both
    // readiness paths; liveness is unaffected.
    let stats = server.server().stats();
    stats.lock().unwrap().reported_at[1] = Some(Instant::now() - Duration::from_secs(10));
    for path in ["/health/ready", "/health"] {
        let (status, _, body) = http_get(admin, path, &[]);
        assert_eq!(status, 503, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "degraded");
        let reasons = v["reasons"].as_array().unwrap();
        assert_eq!(reasons.len(), 1, "{v}");
        assert!(
            reasons[0]
                .as_str()
                .unwrap()
                .starts_with("shard 1 last reported 10."),
            "{v}"
        );
    }
    assert_eq!(http_get(admin, "/health/live", &[]).0, 200);
    let (_, _, metrics) = http_get(admin, "/metrics", &[]);
    assert!(sample(&metrics, "corecast_shard_report_age_seconds{shard=\"1\"}").unwrap() >= 10.0);
    // Its next report makes the server ready again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(admin, "/health/ready", &[]).0 != 200 {
        assert!(Instant::now() < deadline, "not ready again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_shard_that_never_reported_is_not_ready() {
    let (_server, admin) = admin_server(|c| c.shard.report_interval_ms = 600_000);
    // Reports come every 10 minutes here: the first is not in yet.
    let (status, _, body) = http_get(admin, "/health/ready", &[]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shard 0 has not reported yet"), "{body}");
}

#[test]
fn the_admin_key_guards_all_but_health() {
    let (_server, admin) = admin_server(|c| {
        c.server.admin_key = Some(corecast_shards::auth::Secret("admin-key-0123456789".into()));
    });
    for path in ["/metrics", "/stats"] {
        assert_eq!(http_get(admin, path, &[]).0, 401, "{path}");
        assert_eq!(
            http_get(admin, path, &[("Authorization", "Bearer wrong")]).0,
            401
        );
        let ok = http_get(
            admin,
            path,
            &[("Authorization", "Bearer admin-key-0123456789")],
        );
        assert_eq!(ok.0, 200, "{path}");
    }
    assert_eq!(http_get(admin, "/health/live", &[]).0, 200);
    assert_eq!(
        http_get(
            admin,
            "/nowhere",
            &[("Authorization", "Bearer admin-key-0123456789")]
        )
        .0,
        404
    );
}

#[test]
fn an_admin_address_in_use_is_a_start_error() {
    let (_server, admin) = admin_server(|_| {});
    let e = corecast::Server::start({
        let mut c = corecast::Config::default();
        c.server.listen = "127.0.0.1:0".parse().unwrap();
        c.server.ingest = "127.0.0.1:0".parse().unwrap();
        c.server.shards = 1;
        c.server.admin = Some(admin);
        c
    })
    .err()
    .expect("refused");
    assert!(e.to_string().contains(&admin.to_string()), "{e}");
}

/// A hostile or slow client does not stop the endpoint: a huge `Content-Length` is not
/// allocated or read, a client that never finishes its head is dropped at the head timeout,
/// and probes are answered meanwhile; the answers carry no body but the endpoint's own.
#[test]
fn hostile_clients_do_not_stop_the_probes() {
    use std::io::{Read, Write};
    let (_server, admin) = admin_server(|_| {});
    let mut huge = std::net::TcpStream::connect(admin).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        huge,
        "GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n"
    )
    .unwrap();
    let mut answer = [0u8; 12];
    huge.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    // Slow clients from another address (127.0.0.2): heads never finished, as many as one
    // address may hold.
    let from = |ip: &str| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &format!("{ip}:0")
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.connect(&admin.into()).unwrap();
        std::net::TcpStream::from(s)
    };
    let slow: Vec<std::net::TcpStream> = (0..corecast::admin::MAX_PER_ADDRESS)
        .map(|_| {
            let mut s = from("127.0.0.2");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // One more from that address is closed at once.
    let mut extra = from("127.0.0.2");
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut nothing = Vec::new();
    match extra.read_to_end(&mut nothing) {
        Ok(_) => assert!(nothing.is_empty(), "closed without an answer"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "closed, not timed out"
        ),
    }
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(http_get(admin, "/health/live", &[]).0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "probes wait for slow clients"
    );
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // closed by the head timeout (2 s)
    }
    let (status, head, _) = http_get(admin, "/metrics", &[("Content-Length", "0")]);
    assert_eq!(status, 200, "{head}");
}

/// `/topics`: every published topic with its epoch, seq, subscribers (over every shard, those
/// of patterns listed apart), messages per second and history, paginated and sorted.
#[test]
fn topics_lists_every_topic_with_its_figures() {
    let (server, admin) = admin_server(|c| c.server.shards = 2);
    let mut clients: Vec<Client> = (0..4).map(|_| connect(&server.url)).collect();
    for ws in &mut clients[..3] {
        subscribe(ws, 1, &["t.busy"]);
    }
    subscribe(&mut clients[3], 1, &["t.quiet", "t.*"]);
    server.publish("t.busy", 50);
    expect_contiguous(&mut clients[0], "t.busy", 1, 50); // history is history
    server.publish("t.quiet", 2);
    expect_contiguous(&mut clients[3], "t.busy", 1, 50); // through its pattern
    expect_contiguous(&mut clients[3], "t.quiet", 1, 2);
    let (status, _, body) = http_get(admin, "/topics?sort=subscribers", &[]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let epoch = v["epoch"].as_str().unwrap();
    assert_eq!(epoch.len(), 16);
    assert_eq!(v["total"], 2);
    let busy = &v["topics"][0];
    assert_eq!(busy["topic"], "t.busy", "{v}");
    assert_eq!(
        (busy["seq"].as_u64(), busy["epoch"].as_str()),
        (Some(50), Some(epoch))
    );
    // Three clients, whichever shards they landed on.
    assert_eq!(busy["subscribers"], 3, "{v}");
    assert_eq!(busy["history_messages"], 50);
    assert!(busy["history_bytes"].as_u64().unwrap() > 50 * 30);
    assert!(busy["msgs_per_sec"].as_f64().is_some());
    assert_eq!(v["topics"][1]["topic"], "t.quiet");
    assert_eq!(v["topics"][1]["subscribers"], 1);
    assert_eq!(v["patterns"][0]["pattern"], "t.*");
    assert_eq!(v["patterns"][0]["subscribers"], 1);
    // Pages, and a prefix.
    let page: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/topics?limit=1&offset=1", &[]).2).unwrap();
    assert_eq!(
        (
            page["total"].as_u64(),
            page["topics"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    assert_eq!(page["topics"][0]["topic"], "t.quiet", "sorted by name");
    let none: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/topics?prefix=x.", &[]).2).unwrap();
    assert_eq!(none["total"], 0);
    let (status, _, body) = http_get(admin, "/topics?sort=size", &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("sort"), "{body}");
}

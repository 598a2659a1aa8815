//! Short loadgen runs against an in-process server: a few hundred connections for a few
//! seconds each, asserting correctness (nothing lost, every drop announced), never a timing.

use std::time::Duration;

fn server(send_buffer_bytes: usize) -> corecast::Server {
    let mut config = corecast::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.ingest = "127.0.0.1:0".parse().unwrap();
    config.server.shards = 1;
    config.dispatcher.summary_interval_ms = 0;
    // Small kernel buffers and queues make slow readers reach drop-oldest within seconds.
    config.shard.send_buffer_bytes = send_buffer_bytes;
    if send_buffer_bytes > 0 {
        config.shard.queue_max_messages = 64;
    }
    corecast::Server::start(config).expect("server starts")
}

fn plan(s: &corecast::Server, connections: usize, topics: usize) -> loadgen::RunPlan {
    let mut p = loadgen::RunPlan::new(s.client_addr(), s.ingest_addr(), connections, topics);
    p.source_addrs = 3;
    p.connect_rate = 2000;
    p.topic_prefix = "smoke".into();
    p
}

#[test]
fn few_hundred_connections_lose_nothing() {
    let server = server(0);
    let mut p = plan(&server, 300, 10);
    p.subscriptions_per_conn = 2;
    // Three reader threads: the merged accounting must come out exact, as with one.
    p.threads = 3;
    p.duration = Duration::from_secs(3);
    let r = loadgen::run(&p).expect("run completes");
    eprint!("{}", r.summary());
    assert_eq!(r.connections_ok, 300);
    assert_eq!(r.connect_failures, 0);
    assert!(r.published > 0);
    // Round-robin publishing: each of the 600 subscriptions expects about a tenth of the total.
    let share = r.published * 600 / 10;
    assert!(
        r.expected.abs_diff(share) <= 600,
        "{} vs {share}",
        r.expected
    );
    assert_eq!(r.lost, 0, "no message lost");
    assert_eq!(
        r.delivered + r.announced(),
        r.expected,
        "every message delivered or announced"
    );
    assert_eq!(r.unexpected_disconnects, 0);
    assert_eq!(r.disorder(), 0, "nothing repeated, reordered or misrouted");
    assert!(r.json().contains("\"loadgen_saturated\":"));
    assert!(r.hgrm().contains("Percentile"));
    assert!(server.shutdown(Duration::from_secs(10)));
}

#[test]
fn soak_with_churn_and_slow_readers_announces_every_drop() {
    let server = server(8192);
    let mut p = plan(&server, 200, 4);
    p.subscriptions_per_conn = 1;
    p.distribution = loadgen::Distribution::Zipf(1.0);
    p.rate = 2000;
    p.payload_bytes = 200;
    p.duration = Duration::from_secs(4);
    p.churn_per_sec = 0.05;
    p.slow_fraction = 0.1;
    p.slow_speed = 0.05;
    p.report_every = Some(Duration::from_secs(1));
    p.threads = 2;
    let r = loadgen::run(&p).expect("run completes");
    eprint!("{}", r.summary());
    assert_eq!(r.reader_cpu_pct.len(), 2, "two reader threads ran");
    assert_eq!(r.connections_ok, 200, "churned connections came back");
    assert_eq!(r.slow_connections, 20);
    assert!(
        r.reconnects >= 20,
        "10 per second for 4 s: {}",
        r.reconnects
    );
    assert_eq!(r.lost, 0, "healthy connections lose nothing");
    assert_eq!(r.unexpected_disconnects, 0);
    assert_eq!(r.healthy.gap_notices, 0, "healthy readers see no drops");
    assert!(r.slow.gap_notices > 0, "slow readers are told of drops");
    assert!(r.slow.announced > 0);
    assert_eq!(r.slow_silent(), 0, "no drop goes unannounced");
    assert_eq!(r.disorder(), 0, "nothing repeated, reordered or misrouted");
    assert!(!r.samples.is_empty(), "periodic reports were taken");
    // Churned connections come back while the load goes on (10 close per second; each is
    // back within the next report), not only once publishing stops.
    let during: Vec<u64> = r.samples.iter().take(3).map(|s| s.connected).collect();
    assert!(
        during.iter().all(|&c| c >= 180),
        "connected during the load: {during:?}"
    );
    assert!(r.json().contains("\"reports\":[{"));
    assert!(server.shutdown(Duration::from_secs(10)));
}

#[test]
fn capacity_steps_up_and_connect_counts_handshakes() {
    let server = server(0);
    let mut p = plan(&server, 100, 5);
    let cap = loadgen::CapacityPlan {
        start_rate: 200,
        factor: 2.0,
        step: Duration::from_millis(500),
        p99_bound: Duration::from_secs(5),
        max_steps: 2,
    };
    let r = loadgen::run_capacity(&p, &cap).expect("capacity completes");
    eprint!("{}", r.summary());
    assert_eq!(r.connections_ok, 100);
    assert!(!r.steps.is_empty() && r.steps.len() <= 2);
    assert_eq!(r.steps[0].rate, 200);
    if r.steps.len() == 2 {
        assert_eq!(r.steps[1].rate, 400);
    }
    for s in &r.steps {
        assert!(s.published > 0);
        assert_eq!(
            s.expected,
            s.published * 100 / 5,
            "each message reaches 20 clients"
        );
        assert_eq!(s.delivered, s.expected, "nothing dropped at these rates");
    }
    assert_eq!(r.lost, 0);
    assert!(r.json().contains("\"steps\":[{"));

    p.connections = 300;
    p.subscriptions_per_conn = 0;
    p.connect_rate = 0;
    p.max_in_flight = 100;
    p.duration = Duration::from_secs(20);
    let c = loadgen::run_connect(&p).expect("connect completes");
    assert_eq!(c.connections_ok, 300);
    assert_eq!(c.connect_failures, 0);
    assert_eq!(
        c.handshake_us.len(),
        300,
        "one handshake time per connection"
    );
    assert!(c.span > Duration::ZERO);
    assert!(server.shutdown(Duration::from_secs(10)));
}

#[test]
fn book_clients_keep_the_demo_books_through_resumes_with_no_checksum_failure() {
    let mut config = corecast::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.ingest = "127.0.0.1:0".parse().unwrap();
    config.server.shards = 1;
    config.dispatcher.summary_interval_ms = 0;
    corecast::demo::declare_namespaces(&mut config);
    let server = corecast::Server::start(config).expect("server starts");
    let feed = corecast::demo::Feed::start(
        server.publisher(),
        corecast::demo::FeedConfig {
            symbols: 10,
            rate_scale: 5.0,
        },
    );
    let topics = corecast::demo::symbols(10)
        .into_iter()
        .map(|s| format!("book.{s}"))
        .collect();
    let r = loadgen::book::run(&loadgen::book::BookPlan {
        server: server.client_addr(),
        path: "/ws".into(),
        connections: 60,
        topics,
        join_over: Duration::from_secs(1),
        resume_fraction: 0.5,
        duration: Duration::from_secs(5),
        threads: 2,
    })
    .expect("run completes");
    feed.stop();
    assert!(server.shutdown(Duration::from_secs(10)));
    let x = &r.report;
    assert_eq!(r.failed_connections, 0, "{x:?}");
    assert_eq!(r.open_at_end, 60, "{x:?}");
    assert_eq!((x.failed, x.holes, x.gaps), (0, 0, 0), "{x:?}");
    assert!(x.checked > 1_000, "{x:?}");
    assert!(x.resumes >= 15, "about half of 60 resume: {x:?}");
    assert_eq!(x.recovered, x.resumes, "{x:?}");
}

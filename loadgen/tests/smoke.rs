//! A short loadgen run against an in-process server: a few hundred connections for a few
//! seconds, asserting correctness (nothing lost, nothing unannounced), never a timing.

use std::time::Duration;

#[test]
fn few_hundred_connections_lose_nothing() {
    let mut config = corecast::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.ingest = "127.0.0.1:0".parse().unwrap();
    config.server.shards = 1;
    config.dispatcher.summary_interval_ms = 0;
    let server = corecast::Server::start(config).expect("server starts");
    let plan = loadgen::RunPlan {
        server: server.client_addr(),
        path: "/ws".into(),
        ingest: server.ingest_addr(),
        connections: 300,
        topics: 10,
        subscriptions_per_conn: 2,
        rate: 1000,
        payload_bytes: 100,
        duration: Duration::from_secs(3),
        source_addrs: 3,
        connect_rate: 2000,
        topic_prefix: "smoke".into(),
        server_pid: None,
        progress: false,
    };
    let r = loadgen::run(&plan).expect("run completes");
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
        r.delivered + r.announced,
        r.expected,
        "every message delivered or announced"
    );
    assert_eq!(r.unexpected_disconnects, 0);
    assert!(r.json().contains("\"loadgen_saturated\":"));
    assert!(r.hgrm().contains("Percentile"));
    assert!(server.shutdown(Duration::from_secs(10)));
}

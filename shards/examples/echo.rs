//! An echo endpoint on one real shard, for the Autobahn TestSuite (docs/conformance.md).
//!
//! The shard runs the same upgrade, reassembly, framing, queue and socket-write code as
//! `corecast serve`; only the message handler is swapped ([`Handler::Echo`]: text and binary
//! messages are sent back as they came) and the limits are those the suite needs: no rate
//! limit, 16 MiB messages, a 64 MiB budget of unread replies, any request path, no heartbeat
//! pings during a case.
//!
//! `cargo run --release -p corecast-shards --example echo -- 127.0.0.1:9001` (loopback only);
//! it runs until killed.

use std::net::SocketAddr;

use corecast_shards::config::ShardConfig;
use corecast_shards::ring::{ring, ControlMsg, ShardMsg};
use corecast_shards::shard::{spawn, Handler, ShardSpec};

fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .expect("usage: echo ADDR (for example 127.0.0.1:9001)");
    assert!(
        addr.ip().is_loopback(),
        "the echo endpoint listens on loopback only"
    );
    let listener = std::net::TcpListener::bind(addr).expect("bind the echo address");
    let config = ShardConfig {
        path: "*".into(),
        max_message_bytes: 16 << 20,
        max_control_bytes: 64 << 20,
        rate_limit_per_sec: u32::MAX,
        rate_limit_burst: u32::MAX,
        report_interval_ms: 0,
        // No unsolicited pings in the middle of a test case.
        heartbeat_interval_ms: 600_000,
        heartbeat_timeout_ms: 3_600_000,
        ..ShardConfig::default()
    };
    // The dispatcher's ends of the rings: nothing is ever published, and an echo shard never
    // subscribes, so they only have to stay open.
    let (_to_shard, ring_rx) = ring::<ShardMsg>(16);
    let (control_tx, _from_shard) = ring::<ControlMsg>(16);
    let shard = spawn(ShardSpec {
        id: 0,
        core: None,
        listener,
        ring: ring_rx,
        control: control_tx,
        config,
        handler: Handler::Echo,
        guest: None,
        namespaces: Default::default(),
        epoch: "echo".into(),
        waits: Default::default(),
        auth: None,
        admission: Default::default(),
        topics_wanted: Default::default(),
        admin_key: None,
    })
    .expect("start the shard");
    eprintln!("echo: ws://{addr}/ (any path)");
    let _ = shard.join();
}

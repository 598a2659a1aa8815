//! Configuration of a shard: a plain struct with `Default`; each field gives unit and default.
//! Only the binary reads files and flags; this crate takes the struct.

use std::time::Duration;

use serde::Deserialize;

use crate::queue::Bounds;
use crate::ratelimit::Limits;

/// Settings every shard shares. Any thread (copied into each shard at start).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// HTTP path of the WebSocket endpoint (compared after the query is cut off and
    /// percent-encoded unreserved characters are decoded); `"*"` upgrades any path.
    /// Default `/ws`.
    pub path: String,
    /// Largest client message (after reassembly), bytes; past it the connection is closed
    /// with 1009. Default 65536.
    pub max_message_bytes: usize,
    /// Published frames a connection may have queued before the oldest are dropped. Default 4096.
    pub queue_max_messages: usize,
    /// Bytes of published frames a connection may have queued before the oldest are dropped.
    /// Default 4 MiB.
    pub queue_max_bytes: usize,
    /// Published frames queued longer than this behind the newest one are dropped (and
    /// announced as `slow_consumer`), ms: bounds the staleness of what a lagging connection
    /// receives, however deep the queue. The shard applies it to itself too: a frame that
    /// reaches it already older than this (the shard fell behind) is skipped and announced as
    /// `shard_overflow`. 0 = no age bound. Default 0.
    pub queue_max_age_ms: u64,
    /// Bytes of unread control replies (acks, errors, pongs) before the connection is closed
    /// with 4001. Default 256 KiB.
    pub max_control_bytes: usize,
    /// Server ping interval, ms. Default 15000.
    pub heartbeat_interval_ms: u64,
    /// A connection that finishes nothing this long (no whole message, ping or pong; bytes
    /// of an unfinished frame or fragments of an unfinished message do not count) is closed
    /// with 4000, ms. Default 45000.
    pub heartbeat_timeout_ms: u64,
    /// Kernel send buffer of each client socket (SO_SNDBUF), bytes; 0 keeps the kernel's
    /// autotuning. Smaller makes slow readers hit drop-oldest sooner. Default 0.
    pub send_buffer_bytes: usize,
    /// Time allowed for the HTTP upgrade, ms. Default 10000.
    pub handshake_timeout_ms: u64,
    /// Sustained inbound frames per second per connection: every frame but a close counts,
    /// control and continuation frames included. Default 50.
    pub rate_limit_per_sec: u32,
    /// Inbound frames allowed in a burst. Default 100.
    pub rate_limit_burst: u32,
    /// Refused frames in a row (bucket never refilled in between) before closing with 1008.
    /// Default 20.
    pub rate_limit_max_strikes: u32,
    /// Topics in one subscribe or unsubscribe request. Default 100.
    pub max_topics_per_request: usize,
    /// Subscriptions (topics and patterns) per connection. A subscription costs only its own
    /// connection's budget, even to a topic nobody has published. Default 1000.
    pub max_subscriptions: usize,
    /// Pattern subscriptions (`prefix.*`) per connection, counted within
    /// `max_subscriptions`. Default 16.
    pub max_patterns: usize,
    /// How long shutdown waits for close frames to flush, ms. Default 2000.
    pub shutdown_grace_ms: u64,
    /// How often the shard sends its metrics to the reporter, ms; 0 never. Default 1000.
    pub report_interval_ms: u64,
    /// How often an idle shard looks at its ring and at its connections' readiness, µs (the
    /// dispatcher uses the same value for its inputs): the bound on the ring hop, and on the
    /// wait of a client's request, added while idle. Default 5.
    pub ring_poll_us: u64,
    /// How long an idle shard (and the dispatcher) sleeps at a time once nothing happened for
    /// one pass, µs. Work ends a nap at once (see `executor::nap_when_idle`); what waits one
    /// out is timers (heartbeats, reports), so this bounds their lateness, and each nap that
    /// runs its length costs a context switch. 0 never sleeps (pure polling, for a dedicated
    /// core). Default 1000.
    pub idle_nap_us: u64,
    /// Longest nap, µs: naps double from `idle_nap_us` while nothing happens, up to this
    /// (never below `idle_nap_us`). Default 1000.
    pub idle_nap_max_us: u64,
    /// Longest a published frame waits in a connection's queue for more to share its write,
    /// µs. 0 writes every fan-out round at once (lowest latency); a window gathers more
    /// messages per `send()` when each send costs far more than the bytes it carries.
    /// While a window is open every write of the shard waits with it, replies and pings
    /// included (the ack still precedes the topic's first message). Default 0.
    pub batch_window_us: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            path: "/ws".into(),
            max_message_bytes: 64 * 1024,
            queue_max_messages: 4096,
            queue_max_bytes: 4 << 20,
            queue_max_age_ms: 0,
            max_control_bytes: 256 * 1024,
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
            send_buffer_bytes: 0,
            handshake_timeout_ms: 10_000,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            rate_limit_max_strikes: 20,
            max_topics_per_request: 100,
            max_subscriptions: 1000,
            max_patterns: 16,
            shutdown_grace_ms: 2000,
            report_interval_ms: 1000,
            ring_poll_us: 5,
            idle_nap_us: 1000,
            idle_nap_max_us: 1000,
            batch_window_us: 0,
        }
    }
}

impl ShardConfig {
    pub(crate) fn bounds(&self) -> Bounds {
        Bounds {
            max_age: (self.queue_max_age_ms > 0)
                .then(|| Duration::from_millis(self.queue_max_age_ms)),
            max_messages: self.queue_max_messages,
            max_bytes: self.queue_max_bytes,
            max_control_bytes: self.max_control_bytes,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            rate: self.rate_limit_per_sec,
            burst: self.rate_limit_burst,
            max_strikes: self.rate_limit_max_strikes,
        }
    }

    /// [`ShardConfig::ring_poll_us`] as a duration.
    pub fn ring_poll(&self) -> Duration {
        Duration::from_micros(self.ring_poll_us)
    }

    /// The shortest and longest idle naps.
    pub fn idle_naps(&self) -> (Duration, Duration) {
        (
            Duration::from_micros(self.idle_nap_us),
            Duration::from_micros(self.idle_nap_max_us),
        )
    }

    /// [`ShardConfig::batch_window_us`] as a duration.
    pub fn batch_window(&self) -> Duration {
        Duration::from_micros(self.batch_window_us)
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub(crate) fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.path != "*"
            && crate::handshake::target_path(&self.path).as_deref() != Ok(self.path.as_str())
        {
            return Err(format!(
                "shard.path must be \"*\" or an absolute path without query, fragment or \
                 needless percent-encoding (like /ws), got {:?}",
                self.path
            ));
        }
        let positive = [
            ("max_message_bytes", self.max_message_bytes as u64),
            ("queue_max_messages", self.queue_max_messages as u64),
            ("queue_max_bytes", self.queue_max_bytes as u64),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("rate_limit_per_sec", u64::from(self.rate_limit_per_sec)),
            ("rate_limit_burst", u64::from(self.rate_limit_burst)),
            (
                "rate_limit_max_strikes",
                u64::from(self.rate_limit_max_strikes),
            ),
            ("max_topics_per_request", self.max_topics_per_request as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("shard.{name} must be greater than 0"));
        }
        if self.batch_window_us > 1_000_000 {
            return Err(format!(
                "shard.batch_window_us must be at most 1000000 (1 s), got {}",
                self.batch_window_us
            ));
        }
        if !self.path.starts_with('/') {
            return Err(format!(
                "shard.path must start with '/', got {:?}",
                self.path
            ));
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(
                "shard.heartbeat_timeout_ms must be longer than heartbeat_interval_ms".into(),
            );
        }
        Ok(())
    }
}

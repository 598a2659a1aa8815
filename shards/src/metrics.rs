//! Per-shard probes: plain counters and HDR histograms, shard-local, no atomics.
//! A shard sends a [`ShardReport`] (a copy) to the reporter on an interval.

use hdrhistogram::Histogram;

/// Counters of one shard, each a plain integer bumped by its owner.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Connections accepted by the listener.
    pub accepted: u64,
    /// Connections whose handshake failed or timed out.
    pub handshake_failed: u64,
    /// Connections currently open (after the handshake).
    pub open: u64,
    /// Frames received from the dispatcher.
    pub frames_in: u64,
    /// Frames put in a connection's queue.
    pub deliveries: u64,
    /// Write system calls to clients.
    pub writes: u64,
    /// Frames dropped from slow connections' queues.
    pub dropped: u64,
    /// Gap notices sent.
    pub gap_notices: u64,
    /// Frames the shard received after a sequence hole (the hole was announced).
    pub shard_gaps: u64,
    /// Frames older than what the shard had (left over from an earlier subscription).
    pub stale_frames: u64,
    /// Frames no subscriber on the shard wanted (the dispatcher's routes lag an unsubscribe by
    /// one ring hop).
    pub unrouted_frames: u64,
    /// Frames that reached the shard older than `queue_max_age_ms`: skipped, announced as gaps.
    pub late_frames: u64,
    /// Inbound frames refused by the rate limit.
    pub rate_limited: u64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: u64,
    /// Requests answered with an `error`.
    pub rejected_requests: u64,
    /// Connections closed for silence past the heartbeat timeout.
    pub heartbeat_timeouts: u64,
    /// Tokens refused (at the upgrade, 401, or in an `auth` message).
    pub auth_refused: u64,
    /// Subscribes refused as `forbidden`.
    pub forbidden: u64,
    /// Upgrades refused by the Origin allow-list (403) or a connection limit (429), and
    /// `auth` messages refused by the per-user limit.
    pub limit_refused: u64,
    /// Connections closed with 4003 (no `auth` in time) or 4004 (token expired).
    pub auth_closes: u64,
    /// Subscriptions (topics and patterns) of the open connections, now (a gauge).
    pub subscriptions: u64,
    /// `gap` notices of reason `no_snapshot` (also counted in `gap_notices`).
    pub no_snapshot_notices: u64,
    /// `gap` notices of reason `shard_overflow` (not in `gap_notices`).
    pub overflow_notices: u64,
    /// Subscriptions ended by a refreshed token with fewer permissions (`unsubscribed`).
    pub revoked: u64,
}

impl Counters {
    /// Adds another shard's counters to these.
    pub fn add(&mut self, o: &Counters) {
        self.accepted += o.accepted;
        self.handshake_failed += o.handshake_failed;
        self.open += o.open;
        self.frames_in += o.frames_in;
        self.deliveries += o.deliveries;
        self.writes += o.writes;
        self.dropped += o.dropped;
        self.gap_notices += o.gap_notices;
        self.shard_gaps += o.shard_gaps;
        self.stale_frames += o.stale_frames;
        self.unrouted_frames += o.unrouted_frames;
        self.late_frames += o.late_frames;
        self.rate_limited += o.rate_limited;
        self.protocol_errors += o.protocol_errors;
        self.rejected_requests += o.rejected_requests;
        self.heartbeat_timeouts += o.heartbeat_timeouts;
        self.auth_refused += o.auth_refused;
        self.forbidden += o.forbidden;
        self.limit_refused += o.limit_refused;
        self.auth_closes += o.auth_closes;
        self.subscriptions += o.subscriptions;
        self.no_snapshot_notices += o.no_snapshot_notices;
        self.overflow_notices += o.overflow_notices;
        self.revoked += o.revoked;
    }
}

/// Histograms and counters of one shard.
pub struct ShardMetrics {
    pub counters: Counters,
    /// Dispatcher receipt to the end of the write pass of the fan-out round that handled the
    /// frame, ns.
    pub ingest_to_write_ns: Histogram<u64>,
    /// Dispatcher push to shard receipt, ns.
    pub ring_hop_ns: Histogram<u64>,
    /// Frames per write system call.
    pub batch_frames: Histogram<u64>,
    /// Published frames waiting in a connection's queue when it is written.
    pub queue_depth: Histogram<u64>,
}

fn histogram(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 3).expect("static histogram bounds are valid")
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            counters: Counters::default(),
            ingest_to_write_ns: histogram(60_000_000_000),
            ring_hop_ns: histogram(60_000_000_000),
            batch_frames: histogram(1 << 20),
            queue_depth: histogram(1 << 24),
        }
    }
}

/// A copy of one shard's metrics, sent to the reporter. Any thread.
#[derive(Clone)]
pub struct ShardReport {
    pub shard: usize,
    /// Subscribers by topic and pattern (`prefix.*`), when the admin endpoint asked for them
    /// (`/topics`); `None` otherwise.
    pub topic_subscribers: Option<Vec<(std::sync::Arc<str>, u32)>>,
    pub counters: Counters,
    pub ingest_to_write_ns: Histogram<u64>,
    pub ring_hop_ns: Histogram<u64>,
    pub batch_frames: Histogram<u64>,
    pub queue_depth: Histogram<u64>,
}

impl std::fmt::Debug for ShardReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReport")
            .field("shard", &self.shard)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl ShardReport {
    /// An empty report, to merge shards into.
    pub fn empty(shard: usize) -> ShardReport {
        ShardMetrics::default().report(shard)
    }

    /// Adds another shard's report to this one (counters summed, histograms merged).
    pub fn merge(&mut self, o: &ShardReport) {
        self.counters.add(&o.counters);
        // Same bounds on both sides, so merging cannot fail.
        let _ = self.ingest_to_write_ns.add(&o.ingest_to_write_ns);
        let _ = self.ring_hop_ns.add(&o.ring_hop_ns);
        let _ = self.batch_frames.add(&o.batch_frames);
        let _ = self.queue_depth.add(&o.queue_depth);
    }
}

impl ShardMetrics {
    /// Copies the current state into a report (cumulative since start).
    pub fn report(&self, shard: usize) -> ShardReport {
        ShardReport {
            shard,
            topic_subscribers: None,
            counters: self.counters.clone(),
            ingest_to_write_ns: self.ingest_to_write_ns.clone(),
            ring_hop_ns: self.ring_hop_ns.clone(),
            batch_frames: self.batch_frames.clone(),
            queue_depth: self.queue_depth.clone(),
        }
    }
}

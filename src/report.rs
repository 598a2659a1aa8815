//! The reporter: merges the shards' periodic reports and the dispatcher's counters into one
//! view. Written by the dispatcher thread, read by anyone (behind a mutex touched once per
//! report, never on the fan-out path).

use std::sync::{Arc, Mutex};

use corecast_shards::metrics::{Counters, ShardReport};
use hdrhistogram::Histogram;

use crate::dispatcher::DispatcherStats;

/// Latest reports of every shard plus the dispatcher's counters. Any thread.
#[derive(Default)]
pub struct Stats {
    pub shards: Vec<Option<ShardReport>>,
    pub dispatcher: DispatcherStats,
}

/// Shared handle to the live [`Stats`].
pub type SharedStats = Arc<Mutex<Stats>>;

/// A merged view of every shard.
pub struct Totals {
    pub counters: Counters,
    pub ingest_to_write_ns: Histogram<u64>,
    pub ring_hop_ns: Histogram<u64>,
    pub batch_frames: Histogram<u64>,
    pub queue_depth: Histogram<u64>,
}

impl Stats {
    /// Stores a shard's report, replacing its previous one.
    pub fn update(&mut self, report: ShardReport) {
        let i = report.shard;
        if self.shards.len() <= i {
            self.shards.resize_with(i + 1, || None);
        }
        self.shards[i] = Some(report);
    }

    /// Sums counters and merges histograms across shards.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            counters: Counters::default(),
            ingest_to_write_ns: Histogram::new(3).expect("3 significant figures is valid"),
            ring_hop_ns: Histogram::new(3).expect("valid"),
            batch_frames: Histogram::new(3).expect("valid"),
            queue_depth: Histogram::new(3).expect("valid"),
        };
        for r in self.shards.iter().flatten() {
            let c = &r.counters;
            let s = &mut t.counters;
            s.accepted += c.accepted;
            s.handshake_failed += c.handshake_failed;
            s.open += c.open;
            s.frames_in += c.frames_in;
            s.deliveries += c.deliveries;
            s.writes += c.writes;
            s.dropped += c.dropped;
            s.gap_notices += c.gap_notices;
            s.shard_gaps += c.shard_gaps;
            s.stale_frames += c.stale_frames;
            s.rate_limited += c.rate_limited;
            s.protocol_errors += c.protocol_errors;
            s.rejected_requests += c.rejected_requests;
            s.heartbeat_timeouts += c.heartbeat_timeouts;
            // Merging histograms with auto-resize cannot fail.
            let _ = t.ingest_to_write_ns.add(&r.ingest_to_write_ns);
            let _ = t.ring_hop_ns.add(&r.ring_hop_ns);
            let _ = t.batch_frames.add(&r.batch_frames);
            let _ = t.queue_depth.add(&r.queue_depth);
        }
        t
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

impl Totals {
    /// One line for the log: connections, traffic, drops and latency percentiles.
    pub fn line(&self, d: &DispatcherStats, per_sec: Option<(f64, f64)>) -> String {
        let c = &self.counters;
        let rates = per_sec.map_or(String::new(), |(i, o)| {
            format!(" in {i:.0}/s out {o:.0}/s |")
        });
        format!(
            "conns {} |{rates} published {} delivered {} writes {} dropped {} gaps {} | ring hop p50 {}us p99 {}us | ingest->write p50 {}us p99 {}us p99.9 {}us | batch p50 {} p99 {}",
            c.open,
            d.published,
            c.deliveries,
            c.writes,
            c.dropped + d.backlog_dropped,
            c.gap_notices,
            us(self.ring_hop_ns.value_at_quantile(0.5)),
            us(self.ring_hop_ns.value_at_quantile(0.99)),
            us(self.ingest_to_write_ns.value_at_quantile(0.5)),
            us(self.ingest_to_write_ns.value_at_quantile(0.99)),
            us(self.ingest_to_write_ns.value_at_quantile(0.999)),
            self.batch_frames.value_at_quantile(0.5),
            self.batch_frames.value_at_quantile(0.99),
        )
    }
}

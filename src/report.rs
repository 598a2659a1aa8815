//! The reporter: merges the shards' periodic reports and the dispatcher's counters into one
//! view. Written by the dispatcher thread, read by anyone (behind a mutex touched once per
//! report, never on the fan-out path).

use std::sync::{Arc, Mutex};

use corecast_shards::metrics::ShardReport;

use crate::dispatcher::DispatcherStats;

/// Latest reports of every shard plus the dispatcher's counters. Any thread.
#[derive(Default)]
pub struct Stats {
    pub shards: Vec<Option<ShardReport>>,
    pub dispatcher: DispatcherStats,
}

/// Shared handle to the live [`Stats`].
pub type SharedStats = Arc<Mutex<Stats>>;

/// A merged view of every shard: a report whose `shard` field is meaningless.
pub type Totals = ShardReport;

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
        let mut t = ShardReport::empty(usize::MAX);
        for r in self.shards.iter().flatten() {
            t.merge(r);
        }
        t
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// One line for the log: connections, traffic, drops and latency percentiles.
pub fn summary_line(t: &Totals, d: &DispatcherStats, per_sec: Option<(f64, f64)>) -> String {
    let c = &t.counters;
    let rates = per_sec.map_or(String::new(), |(i, o)| {
        format!(" in {i:.0}/s out {o:.0}/s |")
    });
    format!(
            "conns {} |{rates} published {} delivered {} writes {} dropped {} gaps {} | ring hop p50 {}us p99 {}us | ingest->write p50 {}us p99 {}us p99.9 {}us | batch p50 {} p99 {}",
            c.open,
            d.published,
            c.deliveries,
            c.writes,
            c.dropped + c.late_frames + d.backlog_dropped,
            c.gap_notices,
            us(t.ring_hop_ns.value_at_quantile(0.5)),
            us(t.ring_hop_ns.value_at_quantile(0.99)),
            us(t.ingest_to_write_ns.value_at_quantile(0.5)),
            us(t.ingest_to_write_ns.value_at_quantile(0.99)),
            us(t.ingest_to_write_ns.value_at_quantile(0.999)),
            t.batch_frames.value_at_quantile(0.5),
            t.batch_frames.value_at_quantile(0.99),
        )
}

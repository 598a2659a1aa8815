//! `_sys.stats`: the server's own figures, published once a second on the reserved topic the
//! admin dashboard reads over WebSocket (docs/operations.md, "The dashboard"). Built on the
//! admin thread from the shards' latest reports (copied out under the stats mutex, as for
//! `/metrics`), published through the in-process publisher without blocking (a full input
//! queue skips a sample), and kept out of every figure it reports: the dispatcher does not
//! count it, keeps no history of it and lists it in no `/topics`; shards leave its frames out
//! of their delivery counters and latency histograms.
//!
//! Rates are per shard, over the time between that shard's two latest reports (not between
//! samples: a report that lands just before or after a sample would make a per-sample rate
//! jump between 0 and twice the truth). Latency percentiles are those of the frames written
//! since the previous sample's reports. While someone reads the topic, the per-topic figures of
//! `/topics` are kept wanted, for the busiest topics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corecast_shards::metrics::Counters;

use super::Context;
use crate::report::Histograms;

/// The topic the figures are published on.
pub const TOPIC: &str = corecast_shards::topic::SYSTEM_STATS;

/// Time between samples.
pub const EVERY: Duration = Duration::from_secs(1);

/// Busiest topics listed per sample.
pub const BUSIEST: usize = 10;

/// Figures of one shard at its latest report, and its rates over the report before.
#[derive(Default, Clone)]
struct ShardSeen {
    at: Option<Instant>,
    counters: Counters,
    out_per_s: f64,
    writes_per_s: f64,
    drops_per_s: f64,
}

/// What the sampler remembers between samples.
#[derive(Default)]
pub(crate) struct Sampler {
    shards: Vec<ShardSeen>,
    /// The dispatcher's published count when a report last came in, and when.
    published: Option<(Instant, u64)>,
    in_per_s: f64,
    overflow_per_s: f64,
    backlog_dropped: u64,
    /// The merged histograms at the previous sample (while someone reads the topic).
    histograms: Option<Histograms>,
    latency: serde_json::Value,
}

/// Runs until the admin runtime stops: a sample a second.
pub(crate) async fn run(ctx: Arc<Context>, asked: Arc<super::topics::Asked>) {
    let mut sampler = Sampler::default();
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = Instant::now();
        let Some(data) = sampler.sample(&ctx, &asked, now) else {
            continue;
        };
        // A full input queue skips this sample; the next comes a second later.
        let _ = ctx.publisher.publish_system(TOPIC, data);
    }
}

impl Sampler {
    /// Takes one sample; `None` while nobody reads the topic (the bookkeeping of rates goes
    /// on, so the first sample a new reader gets has them).
    fn sample(
        &mut self,
        ctx: &Context,
        asked: &super::topics::Asked,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let (reports, reported_at, d, reasons) = {
            let s = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
            (
                s.shards.clone(),
                s.reported_at.clone(),
                s.dispatcher.clone(),
                s.not_ready(ctx.shards, ctx.report_interval, now),
            )
        };
        self.shards.resize_with(ctx.shards, ShardSeen::default);
        for (i, seen) in self.shards.iter_mut().enumerate() {
            let (Some(Some(r)), Some(Some(at))) = (reports.get(i), reported_at.get(i)) else {
                continue;
            };
            if seen.at == Some(*at) {
                continue;
            }
            if let Some(before) = seen.at {
                let secs = at.saturating_duration_since(before).as_secs_f64();
                if secs > 0.0 {
                    let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
                    let (c, p) = (&r.counters, &seen.counters);
                    seen.out_per_s = per_s(c.deliveries, p.deliveries);
                    seen.writes_per_s = per_s(c.writes, p.writes);
                    seen.drops_per_s = per_s(c.dropped, p.dropped);
                }
            }
            seen.at = Some(*at);
            seen.counters = r.counters.clone();
        }
        // A shard silent for three report intervals is moving nothing anyone can see: its
        // rates fall to 0 (its `report_age_s` tells why) rather than repeat its last ones.
        let silent = ctx.report_interval.unwrap_or(EVERY) * 3;
        for seen in &mut self.shards {
            if seen
                .at
                .is_some_and(|at| now.saturating_duration_since(at) > silent)
            {
                (seen.out_per_s, seen.writes_per_s, seen.drops_per_s) = (0.0, 0.0, 0.0);
            }
        }
        // The dispatcher's counters are copied at every shard's report: the newest report
        // is when they were taken.
        if let Some(latest) = reported_at.iter().flatten().max().copied() {
            let overflow = d.backlog_dropped
                + self
                    .shards
                    .iter()
                    .map(|s| s.counters.late_frames)
                    .sum::<u64>();
            match self.published {
                Some((at, _)) if at == latest => {}
                Some((at, published)) => {
                    let secs = latest.saturating_duration_since(at).as_secs_f64();
                    if secs > 0.0 {
                        self.in_per_s = d.published.saturating_sub(published) as f64 / secs;
                        self.overflow_per_s =
                            overflow.saturating_sub(self.backlog_dropped) as f64 / secs;
                    }
                    self.published = Some((latest, d.published));
                }
                None => self.published = Some((latest, d.published)),
            }
            self.backlog_dropped = overflow;
        }
        if !d.system_subscribed {
            self.histograms = None;
            return None;
        }
        // Someone reads the figures: keep the per-topic ones coming, for the busiest topics.
        *asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        ctx.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .topics_wanted
            .store(true, Ordering::Relaxed);
        let cumulative = Histograms::of(&crate::report::merge(&reports));
        match self.histograms.take() {
            Some(before)
                if before.ingest_to_write_ns.len() < cumulative.ingest_to_write_ns.len() =>
            {
                let mut h = cumulative.ingest_to_write_ns.clone();
                let _ = h.subtract(&before.ingest_to_write_ns);
                self.latency = super::metrics::quantiles(&h, 1e-3);
            }
            // No frame written since: the figures stand.
            Some(_) => {}
            None => {
                self.latency =
                    super::metrics::quantiles(&hdrhistogram::Histogram::new(1).ok()?, 1e-3)
            }
        }
        self.histograms = Some(cumulative);
        Some(
            self.json(ctx, &d, reasons.is_empty())
                .to_string()
                .into_bytes(),
        )
    }

    fn json(
        &self,
        ctx: &Context,
        d: &crate::dispatcher::DispatcherStats,
        ready: bool,
    ) -> serde_json::Value {
        let sum = |get: &dyn Fn(&ShardSeen) -> u64| self.shards.iter().map(get).sum::<u64>();
        let shards: Vec<serde_json::Value> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({
                    "shard": i,
                    "connections": s.counters.open,
                    "subscriptions": s.counters.subscriptions,
                    "msgs_out_per_s": s.out_per_s,
                    "report_age_s": s.at.map(|at| at.elapsed().as_secs_f64()),
                })
            })
            .collect();
        let counters: Vec<Counters> = self.shards.iter().map(|s| s.counters.clone()).collect();
        let (refusals, errors) = super::metrics::totals_json(&counters, d);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        serde_json::json!({
            "v": 1,
            "ts": at_ms,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": ctx.started.elapsed().as_secs_f64(),
            "epoch": ctx.epoch,
            "ready": ready,
            "connections": sum(&|s| s.counters.open),
            "subscriptions": sum(&|s| s.counters.subscriptions),
            "topics": d.topics,
            "history_bytes": d.history_bytes,
            "history_max_bytes": ctx.history_max_bytes,
            "msgs_in_per_s": self.in_per_s,
            "msgs_out_per_s": self.shards.iter().map(|s| s.out_per_s).sum::<f64>(),
            "writes_per_s": self.shards.iter().map(|s| s.writes_per_s).sum::<f64>(),
            "shards": shards,
            "drops": {
                "slow_consumer": sum(&|s| s.counters.dropped),
                "shard_overflow": self.backlog_dropped,
            },
            "drops_per_s": {
                "slow_consumer": self.shards.iter().map(|s| s.drops_per_s).sum::<f64>(),
                "shard_overflow": self.overflow_per_s,
            },
            "gaps": {
                "slow_consumer": sum(&|s| s.counters.gap_notices.saturating_sub(s.counters.no_snapshot_notices)),
                "no_snapshot": sum(&|s| s.counters.no_snapshot_notices),
                "shard_overflow": sum(&|s| s.counters.overflow_notices),
            },
            "latency_us": self.latency,
            "refusals": refusals,
            "ingest_errors": errors,
            "busiest": super::topics::busiest(ctx, BUSIEST),
        })
    }
}

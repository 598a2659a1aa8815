//! The reporter: merges the shards' periodic reports and the dispatcher's counters into one
//! view. Written by the dispatcher thread, read by anyone (behind a mutex touched once per
//! report, never on the fan-out path).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corecast_shards::metrics::ShardReport;
use hdrhistogram::Histogram;

use crate::dispatcher::DispatcherStats;

/// How far back the windowed latency figures look (`/metrics` summaries).
pub const WINDOW: Duration = Duration::from_secs(60);

/// Latest reports of every shard plus the dispatcher's counters. Any thread. The mutex around
/// it is held by the dispatcher thread to store a report (a move) and by readers to copy the
/// `Arc`s out; merging and windowing happen in the reader's thread.
#[derive(Default)]
pub struct Stats {
    pub shards: Vec<Option<Arc<ShardReport>>>,
    pub dispatcher: DispatcherStats,
    /// When each shard's latest report arrived.
    pub reported_at: Vec<Option<Instant>>,
    /// Set once the server began shutting down.
    pub shutting_down: bool,
    /// Set while the admin endpoint wants per-topic figures (`/topics`): the shards then
    /// send subscriber counts with their reports, and the dispatcher its topic rows.
    pub topics_wanted: Arc<std::sync::atomic::AtomicBool>,
    /// The dispatcher's topic rows, and when they were taken (while `topics_wanted`).
    pub topic_rows: Option<(Instant, Arc<Vec<crate::dispatcher::TopicRow>>)>,
    /// The rows before those (for the rate).
    pub topic_rows_before: Option<(Instant, Arc<Vec<crate::dispatcher::TopicRow>>)>,
}

/// Shared handle to the live [`Stats`].
pub type SharedStats = Arc<Mutex<Stats>>;

/// A merged view of every shard: a report whose `shard` field is meaningless.
pub type Totals = ShardReport;

/// The merged histograms of every shard (cumulative since start, or over a window).
#[derive(Clone)]
pub struct Histograms {
    /// Ingest to the end of the shard's write pass, ns.
    pub ingest_to_write_ns: Histogram<u64>,
    /// Dispatcher push to shard receipt, ns.
    pub ring_hop_ns: Histogram<u64>,
    /// Frames per write system call.
    pub batch_frames: Histogram<u64>,
    /// Published frames queued on a connection when it is written.
    pub queue_depth: Histogram<u64>,
}

impl Histograms {
    /// The histograms of a merged report.
    pub fn of(t: &Totals) -> Histograms {
        Histograms {
            ingest_to_write_ns: t.ingest_to_write_ns.clone(),
            ring_hop_ns: t.ring_hop_ns.clone(),
            batch_frames: t.batch_frames.clone(),
            queue_depth: t.queue_depth.clone(),
        }
    }

    /// `self` less `earlier` (an earlier merge of the same shards): what was recorded between.
    fn since(mut self, earlier: &Histograms) -> Histograms {
        // Counts only grow, and the bounds are the same: subtraction cannot fail.
        let _ = self
            .ingest_to_write_ns
            .subtract(&earlier.ingest_to_write_ns);
        let _ = self.ring_hop_ns.subtract(&earlier.ring_hop_ns);
        let _ = self.batch_frames.subtract(&earlier.batch_frames);
        let _ = self.queue_depth.subtract(&earlier.queue_depth);
        self
    }
}

/// How often [`Window`] keeps a merge.
const KEEP_EVERY: Duration = Duration::from_secs(5);

/// The windowed figures, kept by the reader (the admin thread, at each scrape): merges of
/// every [`KEEP_EVERY`] over the last [`WINDOW`] and a bit (about 13 of them), so the newest
/// merge less the one a window ago is the window's.
#[derive(Default)]
pub struct Window {
    kept: VecDeque<(Instant, Histograms)>,
}

impl Window {
    /// Takes the cumulative merge at `now` and returns about the last [`WINDOW`] of it (give or
    /// take half the time between calls; everything since start while nothing a window old is
    /// kept: a young server, or a first scrape).
    pub fn observe(&mut self, now: Instant, cumulative: &Histograms) -> Histograms {
        let due = self
            .kept
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= KEEP_EVERY);
        if due {
            self.kept.push_back((now, cumulative.clone()));
        }
        // Keep the newest merge at least a window old, and everything after it.
        while self
            .kept
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WINDOW)
        {
            self.kept.pop_front();
        }
        // The base is the kept merge nearest a window ago: the newest at least a window old
        // (the front) or the one after it, whichever is closer; so the span is the window
        // give or take half the time between kept merges (scrapes, at least 5 s apart).
        let Some((oldest_at, oldest)) = self.kept.front() else {
            return cumulative.clone();
        };
        let age = |at: &Instant| now.saturating_duration_since(*at);
        if age(oldest_at) < WINDOW {
            return cumulative.clone();
        }
        let base = match self.kept.get(1) {
            Some((at, next)) if WINDOW - age(at) < age(oldest_at) - WINDOW => next,
            _ => oldest,
        };
        cumulative.clone().since(base)
    }
}

impl Stats {
    /// Stores a shard's report, replacing its previous one (a move: the merging is the
    /// reader's).
    pub fn update(&mut self, report: ShardReport) {
        self.update_at(report, Instant::now());
    }

    /// [`Stats::update`] at `now`.
    pub fn update_at(&mut self, report: ShardReport, now: Instant) {
        let i = report.shard;
        if self.shards.len() <= i {
            self.shards.resize_with(i + 1, || None);
            self.reported_at.resize(i + 1, None);
        }
        self.shards[i] = Some(Arc::new(report));
        self.reported_at[i] = Some(now);
    }

    /// Why the server is not ready, empty when it is: a shard that has not reported within
    /// three report intervals (at least 2 s), or never, or shutdown under way. `interval` is
    /// `shard.report_interval_ms` (`None`: reports are off, and not looked at).
    pub fn not_ready(
        &self,
        shards: usize,
        interval: Option<Duration>,
        now: Instant,
    ) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.shutting_down {
            reasons.push("shutting down".to_string());
        }
        let Some(interval) = interval else {
            return reasons;
        };
        let limit = (interval * 3).max(Duration::from_secs(2));
        for shard in 0..shards {
            match self.reported_at.get(shard).copied().flatten() {
                None => reasons.push(format!("shard {shard} has not reported yet")),
                Some(at) if now.saturating_duration_since(at) > limit => reasons.push(format!(
                    "shard {shard} last reported {:.1} s ago (more than 3 report intervals)",
                    now.saturating_duration_since(at).as_secs_f64()
                )),
                Some(_) => {}
            }
        }
        reasons
    }

    /// Sums counters and merges histograms across shards.
    pub fn totals(&self) -> Totals {
        merge(&self.shards)
    }
}

/// Sums counters and merges histograms across shards' reports.
pub fn merge(shards: &[Option<Arc<ShardReport>>]) -> Totals {
    let mut t = ShardReport::empty(usize::MAX);
    for r in shards.iter().flatten() {
        t.merge(r);
    }
    t
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(shard: usize, latencies: &[u64]) -> ShardReport {
        let mut r = ShardReport::empty(shard);
        for &l in latencies {
            r.ingest_to_write_ns.record(l).unwrap();
        }
        r
    }

    #[test]
    fn the_window_is_the_last_minute_once_it_has_one() {
        let t0 = Instant::now();
        let mut w = Window::default();
        let mut cumulative = report(0, &[1_000; 10]);
        let first = w.observe(t0, &Histograms::of(&cumulative));
        assert_eq!(first.ingest_to_write_ns.len(), 10, "young: all of it");
        // Ten more samples a second, at 2,000 ns from 61 s on; observed each second.
        for sec in 1..=70u64 {
            let value = if sec > 60 { 2_000 } else { 1_000 };
            for _ in 0..10 {
                cumulative.ingest_to_write_ns.record(value).unwrap();
            }
            let got = w.observe(t0 + Duration::from_secs(sec), &Histograms::of(&cumulative));
            if sec == 70 {
                // About the last 60 s, give or take 2.5 s (merges are kept every 5 s).
                let n = got.ingest_to_write_ns.len();
                assert!((575..=625).contains(&n), "{n}");
                assert!(got.ingest_to_write_ns.max() >= 2_000);
            }
        }
        assert!(w.kept.len() <= 15, "{} merges kept", w.kept.len());
    }

    #[test]
    fn readiness_names_shards_not_reporting() {
        let t0 = Instant::now();
        let mut s = Stats::default();
        let i = Some(Duration::from_secs(1));
        assert_eq!(
            s.not_ready(2, i, t0),
            [
                "shard 0 has not reported yet",
                "shard 1 has not reported yet"
            ]
        );
        s.update_at(report(0, &[]), t0);
        s.update_at(report(1, &[]), t0);
        assert!(s.not_ready(2, i, t0 + Duration::from_secs(3)).is_empty());
        s.update_at(report(0, &[]), t0 + Duration::from_secs(3));
        let r = s.not_ready(2, i, t0 + Duration::from_millis(3500));
        assert_eq!(r.len(), 1);
        assert!(r[0].starts_with("shard 1 last reported 3.5 s ago"), "{r:?}");
        let short = Some(Duration::from_millis(100));
        s.update_at(report(0, &[]), t0 + Duration::from_secs(10));
        s.update_at(report(1, &[]), t0 + Duration::from_secs(10));
        let soon = t0 + Duration::from_millis(11_500);
        assert!(
            s.not_ready(2, short, soon).is_empty(),
            "at least 2 s, not 3 x 100 ms"
        );
        assert!(
            s.not_ready(2, None, t0 + Duration::from_secs(99))
                .is_empty(),
            "reports off"
        );
        s.shutting_down = true;
        assert_eq!(s.not_ready(2, None, t0), ["shutting down"]);
    }
}

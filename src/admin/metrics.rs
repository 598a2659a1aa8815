//! `/metrics`: the shards' latest reports and the dispatcher's counters as Prometheus metric
//! families (text exposition 0.0.4, encoded by the `prometheus` crate's `TextEncoder`), built
//! at scrape time from one copy of [`crate::report::Stats`]. Every fixed family is present
//! from startup, with a zero-valued series for every label value that exists (each shard,
//! drop reason, gap reason, refusal kind and ingest error code), so dashboards and alerts
//! never see "absent" where they mean zero. Units follow the Prometheus naming conventions
//! (seconds, `_total` for counters). docs/operations.md lists every family.

use prometheus::core::Collector as _;
use prometheus::proto::{
    Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary,
};

use super::Context;
use crate::report::Histograms;

/// Quantiles of every summary.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Refusal kinds of `corecast_refusals_total`.
pub const REFUSAL_KINDS: [&str; 8] = [
    "rate_limit",
    "forbidden",
    "auth",
    "limit",
    "bad_request",
    "handshake",
    "auth_close",
    "revoked",
];

/// Builds the exposition; holds the process collector (`process_*`) and the window of the
/// latency summaries (kept at each scrape, see [`crate::report::Window`]).
pub struct Collector {
    process: prometheus::process_collector::ProcessCollector,
    window: std::sync::Mutex<crate::report::Window>,
}

impl Collector {
    pub fn new() -> Collector {
        Collector {
            process: prometheus::process_collector::ProcessCollector::for_self(),
            window: Default::default(),
        }
    }

    /// Every family, as text.
    pub fn render(&self, ctx: &Context) -> String {
        let mut families = families(ctx, self);
        families.extend(self.process.collect());
        let mut out = String::new();
        // Encoding well-formed families into a String cannot fail.
        let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
        out
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A summary, scaled by `scale` (ns to seconds: 1e-9): quantiles of `window` (NaN when it
/// holds nothing, the convention for "no observation"), `_count` and `_sum` of `cumulative`
/// (counters since start, so `rate()` of them is the rate of observations).
fn summary(
    window: &hdrhistogram::Histogram<u64>,
    cumulative: &hdrhistogram::Histogram<u64>,
    scale: f64,
) -> Metric {
    let h = window;
    let mut s = Summary::default();
    s.set_sample_count(cumulative.len());
    s.set_sample_sum(cumulative.mean() * cumulative.len() as f64 * scale);
    s.set_quantile(
        QUANTILES
            .iter()
            .map(|&q| {
                let mut x = Quantile::default();
                x.set_quantile(q);
                x.set_value(if h.is_empty() {
                    f64::NAN
                } else {
                    h.value_at_quantile(q) as f64 * scale
                });
                x
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_summary(s);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// The figures behind `/metrics` and `/stats`. The shared stats are locked only to copy the
/// reports' `Arc`s out; merging and windowing happen here, on the admin thread.
struct Figures {
    shards: Vec<corecast_shards::metrics::Counters>,
    report_age: Vec<Option<f64>>,
    d: crate::dispatcher::DispatcherStats,
    window: Histograms,
    cumulative: Histograms,
}

fn figures(ctx: &Context, collector: &Collector) -> Figures {
    let now = std::time::Instant::now();
    let (reports, reported_at, d) = {
        let s = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
        (
            s.shards.clone(),
            s.reported_at.clone(),
            s.dispatcher.clone(),
        )
    };
    let cumulative = Histograms::of(&crate::report::merge(&reports));
    let window = collector
        .window
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .observe(now, &cumulative);
    Figures {
        shards: (0..ctx.shards)
            .map(|i| {
                reports
                    .get(i)
                    .and_then(Option::as_ref)
                    .map(|r| r.counters.clone())
                    .unwrap_or_default()
            })
            .collect(),
        report_age: (0..ctx.shards)
            .map(|i| {
                reported_at
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|at| now.saturating_duration_since(at).as_secs_f64())
            })
            .collect(),
        d,
        window,
        cumulative,
    }
}

/// Refusals of one kind over every shard (the kind's definition is in docs/operations.md).
pub(crate) fn refusals(shards: &[corecast_shards::metrics::Counters], kind: &str) -> u64 {
    shards
        .iter()
        .map(|c| match kind {
            "rate_limit" => c.rate_limited,
            "forbidden" => c.forbidden,
            "auth" => c.auth_refused,
            "limit" => c.limit_refused,
            // Every other `error` reply (`forbidden` is counted in both).
            "bad_request" => c.rejected_requests.saturating_sub(c.forbidden),
            "handshake" => c.handshake_failed,
            "auth_close" => c.auth_closes,
            "revoked" => c.revoked,
            _ => 0,
        })
        .sum()
}

fn families(ctx: &Context, collector: &Collector) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE, SUMMARY};
    let f = figures(ctx, collector);
    let ids: Vec<String> = (0..f.shards.len()).map(|i| i.to_string()).collect();
    let per_shard = |get: &dyn Fn(usize, &corecast_shards::metrics::Counters) -> u64| {
        f.shards
            .iter()
            .enumerate()
            .map(|(i, c)| counter(&[("shard", &ids[i])], get(i, c)))
            .collect::<Vec<_>>()
    };
    let backlog = |i: usize| f.d.backlog_dropped_by_shard.get(i).copied().unwrap_or(0);
    let mut dropped = Vec::new();
    let mut gaps = Vec::new();
    for (i, c) in f.shards.iter().enumerate() {
        let shard = ids[i].as_str();
        dropped.push(counter(
            &[("shard", shard), ("reason", "slow_consumer")],
            c.dropped,
        ));
        dropped.push(counter(
            &[("shard", shard), ("reason", "shard_overflow")],
            c.late_frames + backlog(i),
        ));
        let slow = c.gap_notices.saturating_sub(c.no_snapshot_notices);
        gaps.push(counter(
            &[("shard", shard), ("reason", "slow_consumer")],
            slow,
        ));
        gaps.push(counter(
            &[("shard", shard), ("reason", "shard_overflow")],
            c.overflow_notices,
        ));
        gaps.push(counter(
            &[("shard", shard), ("reason", "no_snapshot")],
            c.no_snapshot_notices,
        ));
    }
    let (w, c) = (&f.window, &f.cumulative);
    let mut out = vec![
        family(
            "corecast_build_info",
            "Always 1; the labels name the build.",
            GAUGE,
            vec![gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        ),
        family(
            "corecast_connections",
            "Open client connections, by shard.",
            GAUGE,
            f.shards
                .iter()
                .enumerate()
                .map(|(i, c)| gauge(&[("shard", &ids[i])], c.open as f64))
                .collect(),
        ),
        family(
            "corecast_subscriptions",
            "Subscriptions (topics and patterns) of the open connections, by shard.",
            GAUGE,
            f.shards
                .iter()
                .enumerate()
                .map(|(i, c)| gauge(&[("shard", &ids[i])], c.subscriptions as f64))
                .collect(),
        ),
        family(
            "corecast_topics",
            "Published topics the dispatcher tracks.",
            GAUGE,
            vec![gauge(&[], f.d.topics as f64)],
        ),
        family(
            "corecast_messages_published_total",
            "Events accepted and sequenced by the dispatcher.",
            COUNTER,
            vec![counter(&[], f.d.published)],
        ),
        family(
            "corecast_messages_delivered_total",
            "Frames put in a client connection's queue, by shard.",
            COUNTER,
            per_shard(&|_, c| c.deliveries),
        ),
        family(
            "corecast_messages_dropped_total",
            "Frames dropped before a client got them, by shard and reason: slow_consumer \
             (drop-oldest on a connection's queue), shard_overflow (the shard fell behind: the \
             dispatcher's backlog for it overflowed, or frames reached it older than \
             queue_max_age_ms).",
            COUNTER,
            dropped,
        ),
        family(
            "corecast_gap_notices_total",
            "gap notices sent to clients, by shard and reason (docs/protocol.md, Gap reasons).",
            COUNTER,
            gaps,
        ),
        family(
            "corecast_refusals_total",
            "Refusals, by kind: rate_limit (inbound frames over the limit), forbidden \
             (subscribes not allowed), auth (tokens refused), limit (Origin and connection \
             limits), bad_request (other error replies), handshake (upgrades that failed or \
             timed out), auth_close (closed with 4003 or 4004), revoked (subscriptions ended \
             by a refreshed token with fewer permissions).",
            COUNTER,
            REFUSAL_KINDS
                .iter()
                .map(|k| counter(&[("kind", k)], refusals(&f.shards, k)))
                .collect(),
        ),
        family(
            "corecast_ingest_errors_total",
            "Publisher lines and in-process events refused, by error code.",
            COUNTER,
            crate::publisher::ERROR_CODES
                .iter()
                .zip(f.d.ingest_errors.iter())
                .map(|(code, n)| counter(&[("code", code)], *n))
                .collect(),
        ),
        family(
            "corecast_history_bytes",
            "Bytes of history held for resumes (frames and their overhead).",
            GAUGE,
            vec![gauge(&[], f.d.history_bytes as f64)],
        ),
        family(
            "corecast_history_max_bytes",
            "The bound on corecast_history_bytes (recovery.history_max_bytes).",
            GAUGE,
            vec![gauge(&[], ctx.history_max_bytes as f64)],
        ),
        family(
            "corecast_shard_report_age_seconds",
            "Time since each shard's latest report (-1 before its first).",
            GAUGE,
            f.report_age
                .iter()
                .enumerate()
                .map(|(i, a)| gauge(&[("shard", &ids[i])], a.unwrap_or(-1.0)))
                .collect(),
        ),
        family(
            "corecast_uptime_seconds",
            "Time since the server started.",
            GAUGE,
            vec![gauge(&[], ctx.started.elapsed().as_secs_f64())],
        ),
        family(
            "corecast_ingest_to_write_seconds",
            "From a message's ingest to the end of the write pass of the shard's fan-out \
             round that handled it, every shard that received it; quantiles over the last \
             60 s, count and sum since start.",
            SUMMARY,
            vec![summary(&w.ingest_to_write_ns, &c.ingest_to_write_ns, 1e-9)],
        ),
        family(
            "corecast_ring_hop_seconds",
            "From the dispatcher's push to the shard's receipt; quantiles over the last 60 s, \
             count and sum since start.",
            SUMMARY,
            vec![summary(&w.ring_hop_ns, &c.ring_hop_ns, 1e-9)],
        ),
        family(
            "corecast_frames_per_write",
            "Frames carried by one write system call to a client; quantiles over the last 60 s, \
             count and sum since start.",
            SUMMARY,
            vec![summary(&w.batch_frames, &c.batch_frames, 1.0)],
        ),
        family(
            "corecast_connection_queue_messages",
            "Published frames waiting in a connection's queue when it is written; quantiles \
             over the last 60 s, count and sum since start.",
            SUMMARY,
            vec![summary(&w.queue_depth, &c.queue_depth, 1.0)],
        ),
    ];
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

/// `/stats`: the same figures as one JSON object.
/// A histogram's count and its quantiles 0.5, 0.9, 0.99, 0.999 and max, each value times
/// `scale` (1e-9 for ns as seconds, 1e-3 for ns as µs); `null`s when it is empty (`/metrics`
/// says NaN). `/stats` and `_sys.stats` give their latencies so.
pub(crate) fn quantiles(h: &hdrhistogram::Histogram<u64>, scale: f64) -> serde_json::Value {
    let at = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 * scale);
    serde_json::json!({
        "count": h.len(),
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": (!h.is_empty()).then(|| h.max() as f64 * scale),
    })
}

/// Refusals by kind over `shards` and the dispatcher's ingest errors by code, as JSON objects
/// of totals (`/stats` and `_sys.stats` give them so).
pub(crate) fn totals_json(
    shards: &[corecast_shards::metrics::Counters],
    d: &crate::dispatcher::DispatcherStats,
) -> (serde_json::Value, serde_json::Value) {
    let refusals: serde_json::Map<String, serde_json::Value> = REFUSAL_KINDS
        .iter()
        .map(|k| (k.to_string(), refusals(shards, k).into()))
        .collect();
    let errors: serde_json::Map<String, serde_json::Value> = crate::publisher::ERROR_CODES
        .iter()
        .zip(d.ingest_errors.iter())
        .map(|(c, n)| (c.to_string(), (*n).into()))
        .collect();
    (refusals.into(), errors.into())
}

pub fn stats_json(ctx: &Context, collector: &Collector) -> serde_json::Value {
    let f = figures(ctx, collector);
    let q = quantiles;
    let shards: Vec<serde_json::Value> = f
        .shards
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({
                "shard": i,
                "connections": c.open,
                "subscriptions": c.subscriptions,
                "delivered": c.deliveries,
                "writes": c.writes,
                "dropped_slow_consumer": c.dropped,
                "dropped_shard_overflow": c.late_frames + f.d.backlog_dropped_by_shard.get(i).copied().unwrap_or(0),
                "gap_notices": c.gap_notices + c.overflow_notices,
                "report_age_seconds": f.report_age[i],
            })
        })
        .collect();
    let (refusals, errors) = totals_json(&f.shards, &f.d);
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
        "shards": shards,
        "topics": f.d.topics,
        "published": f.d.published,
        "history_bytes": f.d.history_bytes,
        "refusals": refusals,
        "ingest_errors": errors,
        "last_60s": {
            "ingest_to_write_seconds": q(&f.window.ingest_to_write_ns, 1e-9),
            "ring_hop_seconds": q(&f.window.ring_hop_ns, 1e-9),
            "frames_per_write": q(&f.window.batch_frames, 1.0),
            "connection_queue_messages": q(&f.window.queue_depth, 1.0),
        },
    })
}

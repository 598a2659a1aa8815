//! What each scenario reports: the human summary, the `--json` document and the `--hgrm`
//! percentile text.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::check::Tally;
use crate::monitor::Sample;

/// Everything a fanout, latency or soak run measured.
pub struct RunReport {
    /// The wire protocol driven (`Protocol::name`).
    pub protocol: &'static str,
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub published: u64,
    pub delivered: u64,
    /// Messages the subscriptions should have received: from the publisher's counts when no
    /// connection churned (`expected_exact`), else delivered + announced + lost.
    pub expected: u64,
    pub expected_exact: bool,
    /// Healthy connections' messages neither delivered nor announced by a `gap`.
    pub lost: u64,
    pub healthy: Tally,
    pub slow: Tally,
    pub slow_connections: u64,
    pub unexpected_disconnects: u64,
    pub reconnects: u64,
    /// From the start of publishing to the last delivery or notice.
    pub elapsed: Duration,
    /// The publishing window: the publisher's duration (it sends nothing after it).
    pub window: Duration,
    /// Healthy connections' latency from intended send time, µs.
    pub latency_us: Histogram<u64>,
    /// The loadgen process's CPU, % of one core.
    pub client_cpu_pct: f64,
    /// The busiest reader thread's CPU, % of one core (the part that can saturate).
    pub client_thread_cpu_pct: f64,
    /// Each reader thread's CPU, % of one core, in reader order.
    pub reader_cpu_pct: Vec<f64>,
    pub server_cpu_pct: Option<f64>,
    /// True when any second of the publishing window showed loadgen as its own bottleneck.
    pub loadgen_saturated: bool,
    /// Why, second by second (monitor.rs: reader at 90% CPU or more; reader waiting runnable
    /// 25% of the time or more while undelivered messages grew; over 1% of the publisher's
    /// batches more than 1 ms late).
    pub saturation: Vec<String>,
    /// Spells in which a CPU ran nothing at all (`stalls.rs`), e.g. `cpu 1: 93 ms at 3.0 s`
    /// (seconds since the run's clients were up, the clock of `saturation`); `None` when the
    /// watch could not run (no real-time priority).
    pub host_stalls: Option<Vec<String>>,
    pub publisher_max_lag_us: u64,
    /// Periodic reports (soak).
    pub samples: Vec<Sample>,
}

impl RunReport {
    /// Delivered messages per second over the run.
    /// Deliveries of the messages published in the publishing window, divided by the
    /// window's length (every message loadgen publishes lies in the window). minreader
    /// (benches/) reports the same quantity, so the two compare directly.
    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Deliveries divided by the time from the start of publishing to the last delivery:
    /// what the server sustained, lower than [`RunReport::delivered_per_sec`] when it fell
    /// behind and took a while to drain.
    pub fn sustained_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Gap notices received, healthy and slow connections together.
    pub fn gap_notices(&self) -> u64 {
        self.healthy.gap_notices + self.slow.gap_notices
    }

    /// Messages announced as dropped, healthy and slow together.
    pub fn announced(&self) -> u64 {
        self.healthy.announced + self.slow.announced
    }

    /// Repeated, reordered or misrouted messages and notices, all connections (must be 0).
    pub fn disorder(&self) -> u64 {
        self.healthy.duplicates
            + self.healthy.misrouted
            + self.slow.duplicates
            + self.slow.misrouted
    }

    /// Slow connections' holes that no `gap` announced (silence, which must never happen).
    pub fn slow_silent(&self) -> u64 {
        self.slow.unannounced + self.slow.tail_missing
    }

    /// Server RSS growth after warm-up (first report at or after `warmup`): (at warm-up, max
    /// after, growth %).
    pub fn rss_growth(&self, warmup: Duration) -> Option<(u64, u64, f64)> {
        let w = warmup.as_secs_f64();
        let mut after = self.samples.iter().filter(|s| s.at_secs >= w);
        let base = after.next()?.server_rss_kib?;
        let max = after.filter_map(|s| s.server_rss_kib).max().unwrap_or(base);
        Some((base, max, (max as f64 / base as f64 - 1.0) * 100.0))
    }

    /// Server RSS trend after warm-up, KiB per minute: the least-squares slope through the
    /// periodic samples. Tells a leak (a steady climb) from a working set that swings (a
    /// slope near zero however far the peak is from the first sample). Needs 3 samples.
    pub fn rss_trend(&self, warmup: Duration) -> Option<f64> {
        let w = warmup.as_secs_f64();
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.at_secs >= w)
            .filter_map(|s| Some((s.at_secs / 60.0, s.server_rss_kib? as f64)))
            .collect();
        slope(&points)
    }

    /// The human summary, a few lines.
    pub fn summary(&self) -> String {
        let q = |p: f64| self.latency_us.value_at_quantile(p);
        let mut s = format!(
            "loadgen: {} connections ok, {} failed | published {} | delivered {} of {} expected{} ({:.0}/s in the publishing window, {:.0}/s to the last delivery) | lost {} | gap notices {} covering {} | disconnects {} | reconnects {}\n",
            self.connections_ok,
            self.connect_failures,
            self.published,
            self.delivered,
            self.expected,
            if self.expected_exact { "" } else { " (with churn: delivered + announced + lost)" },
            self.delivered_per_sec(),
            self.sustained_per_sec(),
            self.lost,
            self.gap_notices(),
            self.announced(),
            self.unexpected_disconnects,
            self.reconnects,
        );
        let _ = writeln!(
            s,
            "loadgen: latency from intended send time (healthy): p50 {}us p90 {}us p99 {}us p99.9 {}us max {}us | cpu loadgen {:.0}% (busiest of {} reader thread(s) {:.0}%) server {}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency_us.max(),
            self.client_cpu_pct,
            self.reader_cpu_pct.len(),
            self.client_thread_cpu_pct,
            self.server_cpu_pct
                .map_or("n/a".into(), |v| format!("{v:.0}%"))
        );
        if self.slow_connections > 0 {
            let _ = writeln!(
                s,
                "loadgen: {} slow connections: delivered {}, {} gap notices covering {} dropped, {} missing without a notice",
                self.slow_connections,
                self.slow.delivered,
                self.slow.gap_notices,
                self.slow.announced,
                self.slow_silent()
            );
        }
        if self.disorder() > 0 {
            let _ = writeln!(
                s,
                "loadgen: {} messages or notices repeated, out of order or for a topic not subscribed",
                self.disorder()
            );
        }
        if self.loadgen_saturated {
            let _ = writeln!(
                s,
                "loadgen: WARNING: loadgen itself was the bottleneck ({} findings, second by second); the figures bound the server from below: {}{}",
                self.saturation.len(),
                self.saturation[..self.saturation.len().min(3)].join("; "),
                if self.saturation.len() > 3 { "; ... (all in the JSON)" } else { "" }
            );
        }
        if let Some(stalls) = self.host_stalls.as_ref().filter(|s| !s.is_empty()) {
            let _ = writeln!(
                s,
                "loadgen: a CPU ran nothing for a spell {} time(s) (not even loadgen's real-time watcher: the host took it, or the kernel held it; server and loadgen stop alike, and such spells set the tail): {}{}",
                stalls.len(),
                stalls[..stalls.len().min(5)].join("; "),
                if stalls.len() > 5 { "; ... (all in the JSON)" } else { "" }
            );
        }
        s
    }

    /// The `--json` document (`crate::schema::RunJson`).
    pub fn json(&self) -> String {
        self.to_schema().to_json()
    }

    /// The report as the shared schema.
    pub fn to_schema(&self) -> crate::schema::RunJson {
        use crate::schema::{Latency, RunJson, TallyJson};
        let q = |p: f64| self.latency_us.value_at_quantile(p);
        let tally = |t: &Tally| TallyJson {
            delivered: t.delivered,
            gap_notices: t.gap_notices,
            gaps: t.announced,
            unannounced: t.unannounced,
            tail_missing: t.tail_missing,
            duplicates: t.duplicates,
            misrouted: t.misrouted,
        };
        RunJson {
            protocol: self.protocol.into(),
            connections_ok: self.connections_ok,
            connect_failures: self.connect_failures,
            published: self.published,
            delivered: self.delivered,
            expected: self.expected,
            expected_exact: self.expected_exact,
            lost: self.lost,
            gaps: self.announced(),
            gap_notices: self.gap_notices(),
            unexpected_disconnects: self.unexpected_disconnects,
            reconnects: self.reconnects,
            elapsed_secs: self.elapsed.as_secs_f64(),
            delivered_per_sec: self.delivered_per_sec().round(),
            sustained_per_sec: self.sustained_per_sec().round(),
            latency_us: Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: self.latency_us.max(),
            },
            client_cpu_pct: self.client_cpu_pct,
            client_thread_cpu_pct: self.client_thread_cpu_pct,
            reader_cpu_pct: self.reader_cpu_pct.clone(),
            server_cpu_pct: self.server_cpu_pct,
            loadgen_saturated: self.loadgen_saturated,
            saturation: self.saturation.clone(),
            host_stalls: self.host_stalls.clone(),
            publisher_max_lag_us: self.publisher_max_lag_us,
            healthy: tally(&self.healthy),
            slow_connections: self.slow_connections,
            slow: tally(&self.slow),
            reports: self.samples.clone(),
        }
    }

    /// HdrHistogram's percentile-distribution text of the latency (µs).
    pub fn hgrm(&self) -> String {
        hgrm(&self.latency_us)
    }
}

/// Least-squares slope of `y` over `x`; `None` for fewer than 3 points or a single `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn opt_f(v: Option<f64>) -> String {
    v.map_or("null".to_string(), |v| format!("{v:.1}"))
}

/// HdrHistogram's percentile-distribution text (the format its tools and plotters read).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let p = v.percentile() / 100.0;
        let inv = if p < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - p))
        } else {
            "inf".into()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:>14}",
            v.value_iterated_to() as f64,
            p,
            total,
            inv
        );
    }
    let _ = write!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.mean(),
        h.stdev(),
        h.max() as f64,
        h.len()
    );
    out
}

/// One step of a capacity run.
#[derive(Debug, Clone)]
pub struct Step {
    /// Published messages per second asked of the publisher.
    pub rate: u64,
    pub published: u64,
    /// Deliveries the step should produce.
    pub expected: u64,
    /// Delivered while the publisher ran, and in all (after the drain).
    pub delivered_in_window: u64,
    pub delivered: u64,
    /// Delivered per second over the second half of the publishing window (steady state).
    pub delivered_per_sec: f64,
    /// How long the publisher ran.
    pub window: Duration,
    /// Time the backlog took to drain after the publisher stopped.
    pub drain: Duration,
    pub gap_notices: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub client_thread_cpu_pct: f64,
    pub server_cpu_pct: Option<f64>,
    pub publisher_max_lag_us: u64,
    pub sustainable: bool,
    /// Why the step is not sustainable, if it is not.
    pub verdict: String,
}

/// What a capacity run found.
pub struct CapacityReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub steps: Vec<Step>,
    /// Unannounced losses on healthy connections over the whole run.
    pub lost: u64,
    pub unexpected_disconnects: u64,
    pub p99_bound: Duration,
    pub latency_us: Histogram<u64>,
}

impl CapacityReport {
    /// The highest sustainable step, if any.
    pub fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.sustainable)
            .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec))
    }

    /// The human summary: one line per step, then the verdict.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for st in &self.steps {
            let _ = writeln!(
                s,
                "loadgen: step {:>7}/s published -> {:>9.0} delivered/s of {:>9.0} expected | drain {:>5} ms | p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms | gap notices {} | client {:.0}% server {} | {}",
                st.rate,
                st.delivered_per_sec,
                st.expected as f64 / st.window.as_secs_f64().max(1e-9),
                st.drain.as_millis(),
                st.p50_us as f64 / 1000.0,
                st.p99_us as f64 / 1000.0,
                st.p999_us as f64 / 1000.0,
                st.gap_notices,
                st.client_thread_cpu_pct,
                st.server_cpu_pct.map_or("n/a".into(), |v| format!("{v:.0}%")),
                if st.sustainable { "sustainable" } else { &st.verdict }
            );
        }
        match self.best() {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "loadgen: highest sustainable: {:.0} delivered msgs/s ({} published/s), p99 {:.1} ms (bound {} ms); {} connections, lost {}",
                    b.delivered_per_sec,
                    b.rate,
                    b.p99_us as f64 / 1000.0,
                    self.p99_bound.as_millis(),
                    self.connections_ok,
                    self.lost
                );
            }
            None => s.push_str("loadgen: no step was sustainable\n"),
        }
        s
    }

    /// The `--json` document.
    pub fn json(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                format!(
                    "{{\"rate\":{},\"published\":{},\"expected\":{},\"delivered\":{},\"delivered_in_window\":{},\"delivered_per_sec\":{:.0},\"drain_ms\":{},\"gap_notices\":{},\"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"client_thread_cpu_pct\":{:.1},\"server_cpu_pct\":{},\"publisher_max_lag_us\":{},\"sustainable\":{},\"verdict\":\"{}\"}}",
                    s.rate,
                    s.published,
                    s.expected,
                    s.delivered,
                    s.delivered_in_window,
                    s.delivered_per_sec,
                    s.drain.as_millis(),
                    s.gap_notices,
                    s.p50_us,
                    s.p99_us,
                    s.p999_us,
                    s.max_us,
                    s.client_thread_cpu_pct,
                    opt_f(s.server_cpu_pct),
                    s.publisher_max_lag_us,
                    s.sustainable,
                    s.verdict
                )
            })
            .collect();
        let best = self.best();
        format!(
            "{{\"connections_ok\":{},\"connect_failures\":{},\"lost\":{},\"unexpected_disconnects\":{},\"p99_bound_ms\":{},\"sustainable_delivered_per_sec\":{},\"sustainable_rate\":{},\"loadgen_saturated\":{},\"steps\":[{}]}}",
            self.connections_ok,
            self.connect_failures,
            self.lost,
            self.unexpected_disconnects,
            self.p99_bound.as_millis(),
            best.map_or("null".into(), |b| format!("{:.0}", b.delivered_per_sec)),
            best.map_or("null".into(), |b| b.rate.to_string()),
            self.steps.iter().any(|s| s.verdict.contains("loadgen")),
            steps.join(",")
        )
    }
}

/// What a connect storm measured.
pub struct ConnectReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    /// From the first `connect()` to the last handshake completed.
    pub span: Duration,
    pub handshake_us: Histogram<u64>,
    pub client_cpu_pct: f64,
    pub server_cpu_pct: Option<f64>,
}

impl ConnectReport {
    pub fn connections_per_sec(&self) -> f64 {
        self.connections_ok as f64 / self.span.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self) -> String {
        let q = |p: f64| self.handshake_us.value_at_quantile(p);
        format!(
            "loadgen: {} connections established in {:.3} s ({:.0}/s), {} failed | handshake p50 {}us p90 {}us p99 {}us max {}us | cpu loadgen {:.0}% server {}\n",
            self.connections_ok,
            self.span.as_secs_f64(),
            self.connections_per_sec(),
            self.connect_failures,
            q(0.5),
            q(0.9),
            q(0.99),
            self.handshake_us.max(),
            self.client_cpu_pct,
            self.server_cpu_pct
                .map_or("n/a".into(), |v| format!("{v:.0}%"))
        )
    }

    pub fn json(&self) -> String {
        let q = |p: f64| self.handshake_us.value_at_quantile(p);
        format!(
            "{{\"connections_ok\":{},\"connect_failures\":{},\"span_secs\":{:.3},\"connections_per_sec\":{:.0},\"handshake_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"client_cpu_pct\":{:.1},\"server_cpu_pct\":{}}}",
            self.connections_ok,
            self.connect_failures,
            self.span.as_secs_f64(),
            self.connections_per_sec(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.handshake_us.max(),
            self.client_cpu_pct,
            opt_f(self.server_cpu_pct)
        )
    }
}

/// What an idle run measured.
pub struct IdleReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub kernel_tcp_pages_before: Option<u64>,
    pub kernel_tcp_pages_after: Option<u64>,
    pub kernel_slab_before: Option<u64>,
    pub kernel_slab_after: Option<u64>,
}

impl IdleReport {
    /// Server RSS added per connection, bytes.
    pub fn rss_per_conn(&self) -> Option<f64> {
        let (a, b) = (self.server_rss_before_kib?, self.server_rss_after_kib?);
        Some((b.saturating_sub(a) * 1024) as f64 / self.connections_ok.max(1) as f64)
    }

    /// Kernel TCP buffer memory added per connection (both ends of loopback), bytes.
    pub fn kernel_per_conn(&self) -> Option<f64> {
        let (a, b) = (self.kernel_tcp_pages_before?, self.kernel_tcp_pages_after?);
        Some((b.saturating_sub(a) * 4096) as f64 / self.connections_ok.max(1) as f64)
    }

    /// Kernel socket objects (slab) added per connection, both ends of loopback, bytes.
    pub fn kernel_slab_per_conn(&self) -> Option<f64> {
        let (a, b) = (self.kernel_slab_before?, self.kernel_slab_after?);
        Some(b.saturating_sub(a) as f64 / self.connections_ok.max(1) as f64)
    }

    pub fn summary(&self) -> String {
        format!(
            "loadgen: {} idle connections ok, {} failed | server RSS {} -> {} KiB, {} bytes per connection | kernel, per connection (both ends of loopback): TCP buffers {} bytes, socket objects {} bytes\n",
            self.connections_ok,
            self.connect_failures,
            self.server_rss_before_kib.map_or("n/a".into(), |v| v.to_string()),
            self.server_rss_after_kib.map_or("n/a".into(), |v| v.to_string()),
            self.rss_per_conn()
                .map_or("n/a (no --server-pid)".into(), |v| format!("{v:.0}")),
            self.kernel_per_conn()
                .map_or("n/a".into(), |v| format!("{v:.0}")),
            self.kernel_slab_per_conn()
                .map_or("n/a (needs root)".into(), |v| format!("{v:.0}")),
        )
    }

    /// The `--json` document.
    pub fn json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        format!(
            "{{\"connections_ok\":{},\"connect_failures\":{},\"server_rss_before_kib\":{},\"server_rss_after_kib\":{},\"server_rss_per_conn_bytes\":{},\"kernel_tcp_pages_before\":{},\"kernel_tcp_pages_after\":{},\"kernel_tcp_per_conn_bytes\":{},\"kernel_slab_per_conn_bytes\":{}}}",
            self.connections_ok,
            self.connect_failures,
            opt(self.server_rss_before_kib),
            opt(self.server_rss_after_kib),
            self.rss_per_conn().map_or("null".to_string(), |v| format!("{v:.0}")),
            opt(self.kernel_tcp_pages_before),
            opt(self.kernel_tcp_pages_after),
            self.kernel_per_conn().map_or("null".to_string(), |v| format!("{v:.0}")),
            self.kernel_slab_per_conn().map_or("null".to_string(), |v| format!("{v:.0}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_tells_a_climb_from_a_swing() {
        let climb: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, 100.0 + 5.0 * i as f64))
            .collect();
        assert!((slope(&climb).unwrap() - 5.0).abs() < 1e-9);
        // Up and down by 20 around 100 with no drift: a peak 20% over the start, slope ~0.
        let swing: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, if i % 2 == 0 { 100.0 } else { 120.0 }))
            .collect();
        assert!(slope(&swing).unwrap().abs() < 2.5);
        assert_eq!(slope(&climb[..2]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }
}

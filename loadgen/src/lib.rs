//! # loadgen
//!
//! A load generator for corecast with its own WebSocket client path: a paced open-loop
//! publisher over the ingest port ([`publisher`]) and thousands of subscribing clients on one
//! thread ([`client`], [`wire`]). Every run checks correctness (per-topic sequence continuity,
//! every hole either announced by a `gap` or counted as a loss) and reports latency from each
//! message's intended send time, its own CPU and the server's.

pub mod client;
pub mod publisher;
pub mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub server: SocketAddr,
    pub path: String,
    pub ingest: SocketAddr,
    pub connections: usize,
    pub topics: usize,
    pub subscriptions_per_conn: usize,
    pub rate: u64,
    pub payload_bytes: usize,
    pub duration: Duration,
    pub source_addrs: u8,
    pub connect_rate: u32,
    /// Prefix of the topic names (`<prefix>.<n>`).
    pub topic_prefix: String,
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// Everything a run measured.
pub struct RunReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub published: u64,
    pub delivered: u64,
    pub expected: u64,
    /// Messages neither delivered nor announced by a `gap` (losses).
    pub lost: u64,
    pub gap_notices: u64,
    pub announced: u64,
    pub unexpected_disconnects: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    pub client_cpu_pct: f64,
    pub server_cpu_pct: Option<f64>,
    pub loadgen_saturated: bool,
    pub publisher_max_lag_us: u64,
}

/// CPU seconds (user + system) of process `pid`, from /proc.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The client thread of a run, once every connection is subscribed (or failed).
struct Clients {
    topics: Vec<String>,
    per_conn: usize,
    live: Arc<client::Live>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<client::ClientReport>>,
}

impl Clients {
    /// Starts the clients and waits until they are all subscribed, at most `connect_limit`.
    fn start(plan: &RunPlan, connect_limit: Duration) -> std::io::Result<Clients> {
        let topics: Vec<String> = (0..plan.topics)
            .map(|i| format!("{}.{i}", plan.topic_prefix))
            .collect();
        let per_conn = plan.subscriptions_per_conn.min(topics.len()).max(1);
        let client_plan = client::ClientPlan {
            server: plan.server,
            path: plan.path.clone(),
            connections: plan.connections,
            topics: topics.clone(),
            per_conn,
            source_addrs: plan.source_addrs,
            connect_rate: plan.connect_rate,
        };
        let live = Arc::new(client::Live::default());
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + connect_limit;
        let thread = {
            let (live, ready, stop) = (live.clone(), ready.clone(), stop.clone());
            std::thread::Builder::new()
                .name("loadgen-clients".into())
                .spawn(move || client::run(&client_plan, &live, &ready, &stop, deadline))?
        };
        while !ready.load(Ordering::Relaxed) && !thread.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Clients {
            topics,
            per_conn,
            live,
            stop,
            thread,
        })
    }

    /// Stops the clients and returns what they saw.
    fn finish(self) -> anyhow::Result<client::ClientReport> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??)
    }
}

/// Connects, subscribes, publishes for the duration, drains, and reports. Bounded in time:
/// connecting gets at most 60 s, draining at most 10 s after the last publish.
pub fn run(plan: &RunPlan) -> anyhow::Result<RunReport> {
    let clients = Clients::start(plan, Duration::from_secs(60))?;
    let (topics, live, stop) = (
        clients.topics.clone(),
        clients.live.clone(),
        clients.stop.clone(),
    );
    let server_cpu0 = plan.server_pid.and_then(process_cpu_secs);
    let self_cpu0 = process_cpu_secs(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let pub_plan = publisher::PublishPlan {
        ingest: plan.ingest,
        topics: topics.clone(),
        rate: plan.rate,
        payload_bytes: plan.payload_bytes,
        duration: plan.duration,
    };
    let progress = if plan.progress {
        let (live, stop) = (live.clone(), stop.clone());
        Some(std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let d = live.delivered.load(Ordering::Relaxed);
                eprintln!(
                    "loadgen: {} connected, {} subscribed, {} msgs/s delivered",
                    live.connected.load(Ordering::Relaxed),
                    live.acked.load(Ordering::Relaxed),
                    d - last
                );
                last = d;
            }
        }))
    } else {
        None
    };
    let published = publisher::run(&pub_plan)?;
    // Each subscription expects every message published on its topic during the run.
    let expected: u64 = (0..plan.connections)
        .map(|i| {
            (0..clients.per_conn)
                .map(|k| published.per_topic[(i + k) % topics.len()])
                .sum::<u64>()
        })
        .sum();
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let mut last_seen = u64::MAX;
    while Instant::now() < drain_deadline {
        let d = live.delivered.load(Ordering::Relaxed);
        if d >= expected
            || (d == last_seen && Instant::now() + Duration::from_secs(8) > drain_deadline)
        {
            break;
        }
        last_seen = d;
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    let c = clients.finish()?;
    if let Some(p) = progress {
        let _ = p.join();
    }
    let wall = elapsed.as_secs_f64();
    let server_cpu_pct = match (plan.server_pid.and_then(process_cpu_secs), server_cpu0) {
        (Some(b), Some(a)) => Some((b - a) / wall * 100.0),
        _ => None,
    };
    let self_cpu = process_cpu_secs(std::process::id()).unwrap_or(0.0) - self_cpu0;
    let client_thread_pct = c.cpu_secs / wall * 100.0;
    let accounted = c.delivered + c.announced;
    Ok(RunReport {
        connections_ok: c.connections_ok,
        connect_failures: c.connect_failures,
        published: published.total,
        delivered: c.delivered,
        expected,
        lost: expected.saturating_sub(accounted).max(c.unannounced),
        gap_notices: c.gap_notices,
        announced: c.announced,
        unexpected_disconnects: c.unexpected_disconnects,
        elapsed,
        latency_us: c.latency_us,
        client_cpu_pct: self_cpu / wall * 100.0,
        server_cpu_pct,
        // The client thread near a full core means loadgen, not the server, may be the limit.
        loadgen_saturated: client_thread_pct > 90.0,
        publisher_max_lag_us: published.max_lag_us,
    })
}

impl RunReport {
    /// Delivered messages per second over the run.
    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `--json` document.
    pub fn json(&self) -> String {
        let q = |p: f64| self.latency_us.value_at_quantile(p);
        let server = self
            .server_cpu_pct
            .map_or("null".to_string(), |v| format!("{v:.1}"));
        format!(
            concat!(
                "{{\"connections_ok\":{},\"connect_failures\":{},\"published\":{},\"delivered\":{},",
                "\"expected\":{},\"lost\":{},\"gaps\":{},\"gap_notices\":{},\"unexpected_disconnects\":{},",
                "\"delivered_per_sec\":{:.0},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},",
                "\"client_cpu_pct\":{:.1},\"server_cpu_pct\":{},\"loadgen_saturated\":{},\"publisher_max_lag_us\":{}}}"
            ),
            self.connections_ok,
            self.connect_failures,
            self.published,
            self.delivered,
            self.expected,
            self.lost,
            self.announced,
            self.gap_notices,
            self.unexpected_disconnects,
            self.delivered_per_sec(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency_us.max(),
            self.client_cpu_pct,
            server,
            self.loadgen_saturated,
            self.publisher_max_lag_us,
        )
    }

    /// HdrHistogram's percentile-distribution text (values in µs).
    pub fn hgrm(&self) -> String {
        let h = &self.latency_us;
        let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
        let mut total = 0u64;
        for v in h.iter_quantiles(1) {
            total += v.count_since_last_iteration();
            let p = v.percentile() / 100.0;
            let inv = if p < 1.0 {
                format!("{:.2}", 1.0 / (1.0 - p))
            } else {
                "inf".into()
            };
            out.push_str(&format!(
                "{:12.3} {:14.12} {:10} {:>14}\n",
                v.value_iterated_to() as f64,
                p,
                total,
                inv
            ));
        }
        out.push_str(&format!(
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
            h.mean(),
            h.stdev(),
            h.max() as f64,
            h.len()
        ));
        out
    }
}

/// Resident memory of process `pid`, KiB, from /proc.
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Pages of memory the kernel holds for TCP sockets, all processes (/proc/net/sockstat).
pub fn tcp_kernel_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// What an idle run measured.
pub struct IdleReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub kernel_tcp_pages_before: Option<u64>,
    pub kernel_tcp_pages_after: Option<u64>,
}

impl IdleReport {
    /// Server RSS added per connection, bytes.
    pub fn rss_per_conn(&self) -> Option<f64> {
        let (a, b) = (self.server_rss_before_kib?, self.server_rss_after_kib?);
        Some((b.saturating_sub(a) * 1024) as f64 / self.connections_ok.max(1) as f64)
    }

    /// The `--json` document.
    pub fn json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        format!(
            "{{\"connections_ok\":{},\"connect_failures\":{},\"server_rss_before_kib\":{},\"server_rss_after_kib\":{},\"server_rss_per_conn_bytes\":{},\"kernel_tcp_pages_before\":{},\"kernel_tcp_pages_after\":{}}}",
            self.connections_ok,
            self.connect_failures,
            opt(self.server_rss_before_kib),
            opt(self.server_rss_after_kib),
            self.rss_per_conn().map_or("null".to_string(), |v| format!("{v:.0}")),
            opt(self.kernel_tcp_pages_before),
            opt(self.kernel_tcp_pages_after),
        )
    }
}

/// Opens and subscribes every connection, holds them idle for `plan.duration`, and measures
/// the server's resident memory before and after (needs `server_pid`). Publishes nothing.
pub fn run_idle(plan: &RunPlan) -> anyhow::Result<IdleReport> {
    let rss_before = plan.server_pid.and_then(process_rss_kib);
    let pages_before = tcp_kernel_pages();
    let clients = Clients::start(plan, Duration::from_secs(120))?;
    std::thread::sleep(plan.duration);
    let rss_after = plan.server_pid.and_then(process_rss_kib);
    let pages_after = tcp_kernel_pages();
    let c = clients.finish()?;
    Ok(IdleReport {
        connections_ok: c.connections_ok,
        connect_failures: c.connect_failures,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        kernel_tcp_pages_before: pages_before,
        kernel_tcp_pages_after: pages_after,
    })
}

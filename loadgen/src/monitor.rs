//! The monitor thread: once a second it collects the clients' latency, updates the live
//! progress line (indicatif on a terminal, a plain line every 5 s otherwise), and, when asked,
//! prints and keeps a periodic report (soak). It also keeps a latency window that stepped
//! scenarios reset per step.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{latency_histogram, Live};

/// One periodic report.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the monitor started.
    pub at_secs: f64,
    pub connected: u64,
    pub published_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Latency percentiles of this period (healthy connections), µs.
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Totals so far.
    pub gap_notices: u64,
    pub reconnects: u64,
    pub disconnects: u64,
    pub server_rss_kib: Option<u64>,
}

impl Sample {
    /// One JSON object.
    pub fn json(&self) -> String {
        format!(
            "{{\"at_secs\":{:.1},\"connected\":{},\"published_per_sec\":{:.0},\"delivered_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"gap_notices\":{},\"reconnects\":{},\"disconnects\":{},\"server_rss_kib\":{}}}",
            self.at_secs,
            self.connected,
            self.published_per_sec,
            self.delivered_per_sec,
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.gap_notices,
            self.reconnects,
            self.disconnects,
            self.server_rss_kib
                .map_or("null".to_string(), |v| v.to_string())
        )
    }
}

struct Shared {
    live: Arc<Live>,
    published: Arc<AtomicU64>,
    stop: AtomicBool,
    window: Mutex<Histogram<u64>>,
    /// Everything so far, for the progress line.
    so_far: Mutex<Histogram<u64>>,
    samples: Mutex<Vec<Sample>>,
}

/// Handle of the monitor thread; stops it when finished or dropped.
pub struct Monitor {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    /// Starts the monitor. `published` is the publisher's live count.
    pub fn start(
        live: Arc<Live>,
        published: Arc<AtomicU64>,
        connections: usize,
        progress: bool,
        report_every: Option<Duration>,
        server_pid: Option<u32>,
    ) -> Monitor {
        let shared = Arc::new(Shared {
            live,
            published,
            stop: AtomicBool::new(false),
            window: Mutex::new(latency_histogram()),
            so_far: Mutex::new(latency_histogram()),
            samples: Mutex::new(Vec::new()),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("loadgen-monitor".into())
                .spawn(move || watch(&shared, connections, progress, report_every, server_pid))
                .ok()
        };
        Monitor { shared, thread }
    }

    /// Latency recorded since the previous call (the clients hand theirs over every 200 ms).
    pub fn take_window(&self) -> Histogram<u64> {
        let mut w = self.shared.window.lock().expect("not poisoned");
        let fresh = self.shared.live.take_interval();
        let _ = w.add(&fresh);
        let _ = self.shared.so_far.lock().expect("not poisoned").add(&fresh);
        let out = w.clone();
        w.reset();
        out
    }

    /// Stops the thread; returns the periodic reports.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop();
        std::mem::take(&mut *self.shared.samples.lock().expect("not poisoned"))
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(
    s: &Shared,
    connections: usize,
    progress: bool,
    report_every: Option<Duration>,
    server_pid: Option<u32>,
) {
    let terminal = std::io::stderr().is_terminal();
    let bar = if progress && terminal {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Some(b)
    } else {
        None
    };
    let started = Instant::now();
    let mut period = latency_histogram();
    let (mut last_pub, mut last_del) = (0u64, 0u64);
    let (mut rep_pub, mut rep_del) = (0u64, 0u64);
    let mut last_report = started;
    let mut last_plain = started;
    let mut tick = started;
    while !s.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let secs = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        let h = s.live.take_interval();
        let _ = period.add(&h);
        let _ = s.window.lock().expect("not poisoned").add(&h);
        let p99_so_far = {
            let mut all = s.so_far.lock().expect("not poisoned");
            let _ = all.add(&h);
            all.value_at_quantile(0.99)
        };
        let (published, delivered) = (
            s.published.load(Ordering::Relaxed),
            s.live.delivered.load(Ordering::Relaxed),
        );
        let line = format!(
            "{}/{connections} connected | in {:.0}/s | out {:.0}/s | p99 so far {:.1} ms | gap notices {} | reconnects {}",
            s.live.connected.load(Ordering::Relaxed),
            (published - last_pub) as f64 / secs,
            (delivered - last_del) as f64 / secs,
            p99_so_far as f64 / 1000.0,
            s.live.gap_notices.load(Ordering::Relaxed),
            s.live.reconnects.load(Ordering::Relaxed),
        );
        (last_pub, last_del) = (published, delivered);
        match &bar {
            Some(b) => {
                b.set_message(line);
                b.tick();
            }
            None if progress && last_plain.elapsed() >= Duration::from_secs(5) => {
                last_plain = Instant::now();
                eprintln!("loadgen: {line}");
            }
            None => {}
        }
        let Some(every) = report_every else { continue };
        if last_report.elapsed() < every {
            continue;
        }
        let span = last_report.elapsed().as_secs_f64();
        last_report = Instant::now();
        let sample = Sample {
            at_secs: started.elapsed().as_secs_f64(),
            connected: s.live.connected.load(Ordering::Relaxed),
            published_per_sec: (published - rep_pub) as f64 / span,
            delivered_per_sec: (delivered - rep_del) as f64 / span,
            p50_us: period.value_at_quantile(0.5),
            p99_us: period.value_at_quantile(0.99),
            max_us: period.max(),
            gap_notices: s.live.gap_notices.load(Ordering::Relaxed),
            reconnects: s.live.reconnects.load(Ordering::Relaxed),
            disconnects: s.live.disconnects.load(Ordering::Relaxed),
            server_rss_kib: server_pid.and_then(crate::process_rss_kib),
        };
        (rep_pub, rep_del) = (published, delivered);
        period.reset();
        let text = format!(
            "loadgen: [{:>6.0}s] {} connected | in {:.0}/s out {:.0}/s | p50 {:.1} ms p99 {:.1} ms max {:.1} ms | gap notices {} | reconnects {} | disconnects {} | server RSS {}",
            sample.at_secs,
            sample.connected,
            sample.published_per_sec,
            sample.delivered_per_sec,
            sample.p50_us as f64 / 1000.0,
            sample.p99_us as f64 / 1000.0,
            sample.max_us as f64 / 1000.0,
            sample.gap_notices,
            sample.reconnects,
            sample.disconnects,
            sample
                .server_rss_kib
                .map_or("n/a".to_string(), |k| format!("{} MiB", k / 1024)),
        );
        match &bar {
            Some(b) => b.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
        s.samples.lock().expect("not poisoned").push(sample);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

//! The monitor thread: once a second it collects the clients' latency, updates the live
//! progress line (indicatif on a terminal, a plain line every 5 s otherwise), and, when asked,
//! prints and keeps a periodic report (soak). It also keeps a latency window that stepped
//! scenarios reset per step, and judges, second by second while the publisher runs, whether
//! loadgen itself is the bottleneck ([`Watch`]).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::live::{latency_histogram, Live};

/// One periodic report (the `reports` entries of the JSON document).
pub type Sample = crate::schema::SampleJson;

/// What the saturation check needs besides the clients' live counters.
pub struct Watch {
    /// The publisher's live lateness counters.
    pub lateness: Arc<crate::publisher::Lateness>,
    /// Deliveries each published message should produce (subscriptions / topics: the
    /// publisher goes round-robin over the topics).
    pub deliveries_per_message: f64,
}

/// The reader thread used at least this share of a core over a second: saturated.
const READER_CPU_LIMIT: f64 = 0.90;
/// The reader waited runnable at least this share of a second while undelivered messages
/// grew: saturated (it was ready to read and did not get a core).
const READER_WAIT_LIMIT: f64 = 0.25;
/// More than this share of the publisher's batches over a second left over 1 ms late: its
/// lag p99 passed 1 ms.
const PUBLISHER_LATE_LIMIT: f64 = 0.01;

/// CPU time and run-queue wait of one thread, ns (`/proc/self/task/TID/schedstat`).
fn schedstat(tid: u64) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// The counters one tick reads, kept for the next tick's differences.
#[derive(Clone)]
struct Reading {
    at: Instant,
    /// Each reader thread's CPU time and run-queue wait, ns (`None`: not started).
    readers: Vec<Option<(u64, u64)>>,
    published: u64,
    batches: u64,
    late: u64,
    /// Deliveries expected so far minus deliveries made.
    backlog: f64,
}

/// One second's evidence, compared with the previous second's.
struct Saturation {
    watch: Watch,
    last: Option<Reading>,
    reasons: Vec<String>,
}

impl Saturation {
    /// Looks at the second that just ended; `at` is seconds since the start.
    fn tick(&mut self, live: &Live, published: u64, at: f64) {
        let readers = live
            .tids
            .iter()
            .map(|tid| match tid.load(Ordering::Relaxed) {
                0 => None,
                tid => schedstat(tid),
            })
            .collect();
        let delivered = live.delivered.load(Ordering::Relaxed);
        let now = Reading {
            at: Instant::now(),
            readers,
            published,
            batches: self.watch.lateness.batches.load(Ordering::Relaxed),
            late: self.watch.lateness.late.load(Ordering::Relaxed),
            backlog: published as f64 * self.watch.deliveries_per_message - delivered as f64,
        };
        if let Some(before) = &self.last {
            let wall = now.at.duration_since(before.at).as_nanos().max(1) as f64;
            // Judged only while the publisher runs: connecting and draining are not measured.
            if now.published > before.published {
                // Readers are numbered from 1 in the reasons (thread `loadgen-read-0` is
                // reader 1).
                for (k, pair) in now.readers.iter().zip(&before.readers).enumerate() {
                    let (Some((run1, wait1)), Some((run0, wait0))) = pair else {
                        continue;
                    };
                    let cpu = run1.saturating_sub(*run0) as f64 / wall;
                    let waited = wait1.saturating_sub(*wait0) as f64 / wall;
                    let reader = k + 1;
                    if cpu >= READER_CPU_LIMIT {
                        self.reasons.push(format!(
                            "reader {reader}: {:.0}% CPU at {at:.0} s",
                            cpu * 100.0
                        ));
                    }
                    if waited >= READER_WAIT_LIMIT && now.backlog > before.backlog {
                        self.reasons.push(format!(
                            "reader {reader}: waited runnable {:.0}% of the second at {at:.0} s while undelivered messages grew by {:.0}",
                            waited * 100.0,
                            now.backlog - before.backlog
                        ));
                    }
                }
                let new_batches = now.batches.saturating_sub(before.batches);
                let new_late = now.late.saturating_sub(before.late);
                if new_batches > 0 && new_late as f64 / new_batches as f64 > PUBLISHER_LATE_LIMIT {
                    self.reasons.push(format!(
                        "publisher: {new_late} of {new_batches} batches over 1 ms late at {at:.0} s"
                    ));
                }
            }
        }
        self.last = Some(now);
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
    /// Why loadgen was its own bottleneck, second by second; empty when it never was.
    saturation: Mutex<Vec<String>>,
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
        watch: Watch,
    ) -> Monitor {
        let shared = Arc::new(Shared {
            live,
            published,
            stop: AtomicBool::new(false),
            window: Mutex::new(latency_histogram()),
            so_far: Mutex::new(latency_histogram()),
            samples: Mutex::new(Vec::new()),
            saturation: Mutex::new(Vec::new()),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("loadgen-monitor".into())
                .spawn(move || {
                    let saturation = Saturation {
                        watch,
                        last: None,
                        reasons: Vec::new(),
                    };
                    run(
                        &shared,
                        connections,
                        progress,
                        report_every,
                        server_pid,
                        saturation,
                    )
                })
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

    /// Stops the thread; returns the periodic reports and the reasons loadgen was saturated
    /// (empty when it never was).
    pub fn finish(mut self) -> (Vec<Sample>, Vec<String>) {
        self.stop();
        (
            std::mem::take(&mut *self.shared.samples.lock().expect("not poisoned")),
            std::mem::take(&mut *self.shared.saturation.lock().expect("not poisoned")),
        )
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

fn run(
    s: &Shared,
    connections: usize,
    progress: bool,
    report_every: Option<Duration>,
    server_pid: Option<u32>,
    mut saturation: Saturation,
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
        saturation.tick(&s.live, published, started.elapsed().as_secs_f64());
        if !saturation.reasons.is_empty() {
            s.saturation
                .lock()
                .expect("not poisoned")
                .append(&mut saturation.reasons);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher() -> (Saturation, Arc<crate::publisher::Lateness>) {
        let lateness = Arc::new(crate::publisher::Lateness::default());
        let s = Saturation {
            watch: Watch {
                lateness: lateness.clone(),
                deliveries_per_message: 10.0,
            },
            last: None,
            reasons: Vec::new(),
        };
        (s, lateness)
    }

    #[test]
    fn a_late_publisher_is_reported_and_an_idle_one_is_not() {
        let live = Live::default(); // tid 0: no reader figures
        let (mut s, lateness) = watcher();
        s.tick(&live, 0, 0.0);
        lateness.batches.store(1000, Ordering::Relaxed);
        lateness.late.store(5, Ordering::Relaxed);
        s.tick(&live, 100, 1.0);
        assert!(s.reasons.is_empty(), "0.5% late is within the p99 mark");
        lateness.batches.store(2000, Ordering::Relaxed);
        lateness.late.store(105, Ordering::Relaxed);
        s.tick(&live, 200, 2.0);
        assert_eq!(
            s.reasons,
            ["publisher: 100 of 1000 batches over 1 ms late at 2 s"]
        );
        // Seconds without publishing are not judged.
        lateness.late.store(999, Ordering::Relaxed);
        lateness.batches.store(2100, Ordering::Relaxed);
        s.tick(&live, 200, 3.0);
        assert_eq!(s.reasons.len(), 1);
    }

    #[test]
    fn a_reader_that_used_a_whole_core_or_waited_for_one_is_reported() {
        // Two readers: the first not started (no figures), the second this thread.
        let live = Live::new(2);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u64;
        live.tids[1].store(tid, Ordering::Relaxed);
        let (mut s, _) = watcher();
        s.tick(&live, 0, 0.0);
        let (run0, wait0) = schedstat(tid).unwrap();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (run1, wait1) = schedstat(tid).unwrap();
        s.tick(&live, 1, 1.0);
        // Spinning, this thread either ran or waited for a core the whole time: which one
        // depends on the machine, so the expected verdict is computed from the same counters.
        let wall = spin.elapsed().as_nanos() as f64;
        let ran = (run1 - run0) as f64 / wall;
        let waited = (wait1 - wait0) as f64 / wall;
        assert!(
            ran + waited > 0.8,
            "schedstat accounts for the spin: {ran} + {waited}"
        );
        // Clear of the limits either way (the tick's second is a few µs longer than the spin).
        if ran >= 0.97 || waited >= READER_WAIT_LIMIT + 0.05 {
            assert!(!s.reasons.is_empty(), "ran {ran:.2} waited {waited:.2}");
            assert!(
                s.reasons.iter().all(|r| r.starts_with("reader 2: ")),
                "{:?}",
                s.reasons
            );
        } else if ran < READER_CPU_LIMIT - 0.05 && waited < READER_WAIT_LIMIT - 0.05 {
            assert!(
                s.reasons.is_empty(),
                "ran {ran:.2} waited {waited:.2}: {:?}",
                s.reasons
            );
        }
    }
}

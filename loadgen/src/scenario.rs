//! The scenarios: how a run is staged (connect, publish, drain, measure) and judged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client;
use crate::live::Live;
use crate::merge::{self, ClientReport};
use crate::monitor::Monitor;
use crate::publisher::{self, Published};
use crate::report::{CapacityReport, ConnectReport, IdleReport, RunReport, Step};
use crate::{process_cpu_secs, stat_cpu_secs, RunPlan};

/// The reader threads of a run.
struct Readers {
    subs: Arc<Vec<Vec<u32>>>,
    slow: Arc<Vec<bool>>,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<merge::Finished>>>,
}

/// Per reader thread, its CPU use between two readings of [`Readers::cpu_secs`], % of
/// one core.
fn reader_cpu_pct(before: &[f64], after: &[f64], wall: Duration) -> Vec<f64> {
    let secs = wall.as_secs_f64().max(1e-9);
    after
        .iter()
        .zip(before)
        .map(|(b, a)| (b - a) / secs * 100.0)
        .collect()
}

/// The busiest reader thread's share of a core (`client_thread_cpu_pct`).
fn busiest(pcts: &[f64]) -> f64 {
    pcts.iter().copied().fold(0.0, f64::max)
}

impl Readers {
    /// Starts the reader threads (`plan.threads`, or the default of
    /// [`crate::default_reader_threads`]) and waits until every connection is subscribed (or
    /// failed), at most `connect_limit`.
    fn start(plan: &RunPlan, connect_limit: Duration) -> std::io::Result<Readers> {
        let subs = Arc::new(if plan.subscriptions_per_conn == 0 {
            vec![Vec::new(); plan.connections]
        } else {
            plan.assignments()
        });
        let slow = Arc::new(plan.slow_set());
        let client_plan = client::ClientPlan {
            protocol: plan.protocol,
            server: plan.server,
            path: plan.path.clone(),
            topics: plan.topic_names(),
            subs: subs.clone(),
            slow: slow.clone(),
            slow_bytes_per_sec: plan.slow_bytes_per_sec(),
            churn_per_sec: plan.churn_per_sec,
            source_addrs: plan.source_addrs,
            connect_rate: plan.connect_rate,
            max_in_flight: plan.max_in_flight.max(1),
        };
        let of = plan.reader_threads();
        let live = Arc::new(Live::new(of));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + connect_limit;
        let client_plan = Arc::new(client_plan);
        let mut readies = Vec::with_capacity(of);
        let mut threads = Vec::with_capacity(of);
        for index in 0..of {
            let ready = Arc::new(AtomicBool::new(false));
            readies.push(ready.clone());
            let (live, stop, client_plan) = (live.clone(), stop.clone(), client_plan.clone());
            let part = client::Part { index, of };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-read-{index}"))
                    .spawn(move || {
                        client::run(&client_plan, part, &live, &ready, &stop, deadline)
                    })?,
            );
        }
        while !readies.iter().all(|r| r.load(Ordering::Relaxed))
            && !threads.iter().any(|t| t.is_finished())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Readers {
            subs,
            slow,
            live,
            stop,
            threads,
        })
    }

    /// CPU seconds of each reader thread so far.
    fn cpu_secs(&self) -> Vec<f64> {
        self.live
            .tids
            .iter()
            .map(|tid| {
                let tid = tid.load(Ordering::Relaxed);
                stat_cpu_secs(&format!("/proc/self/task/{tid}/stat")).unwrap_or(0.0)
            })
            .collect()
    }

    /// Deliveries `published` should produce: (all connections, healthy ones only).
    fn expected(&self, published: &Published) -> (u64, u64) {
        let (mut all, mut healthy) = (0, 0);
        for (i, subs) in self.subs.iter().enumerate() {
            let n: u64 = subs.iter().map(|&t| published.per_topic[t as usize]).sum();
            all += n;
            if !self.slow[i] {
                healthy += n;
            }
        }
        (all, healthy)
    }

    /// Waits until `target` deliveries plus announced drops have arrived since `base`, or
    /// nothing arrived for `quiet`, or `limit` passed. Returns the time waited and when the
    /// last of them arrived.
    fn drain(
        &self,
        base: u64,
        target: u64,
        quiet: Duration,
        limit: Duration,
    ) -> (Duration, Instant) {
        self.wait(limit, |accounted, since_change| {
            accounted - base >= target || since_change >= quiet
        })
    }

    /// After publishing (with `Live::published` given): waits until every open subscription
    /// has seen its topic's last message or a `gap` covering it, or `limit` passed. Returns
    /// when the last delivery or notice arrived.
    fn drain_to_end(&self, limit: Duration) -> Instant {
        let pending = || self.live.tail_pending();
        self.wait(limit, |_, _| pending() == 0).1
    }

    /// Polls every 10 ms until `done(deliveries + announced drops so far, time since they
    /// last changed)` or `limit`; returns the time waited and when they last changed.
    fn wait(&self, limit: Duration, done: impl Fn(u64, Duration) -> bool) -> (Duration, Instant) {
        let started = Instant::now();
        let accounted = || {
            self.live.delivered.load(Ordering::Relaxed)
                + self.live.announced.load(Ordering::Relaxed)
        };
        let mut last = accounted();
        let mut last_change = Instant::now();
        while started.elapsed() < limit {
            let now = accounted();
            if now != last {
                last = now;
                last_change = Instant::now();
            }
            if done(now, last_change.elapsed()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (started.elapsed(), last_change)
    }

    /// Stops the reader threads and returns what they saw, merged.
    fn finish(self) -> anyhow::Result<ClientReport> {
        self.stop.store(true, Ordering::Relaxed);
        let mut parts = Vec::with_capacity(self.threads.len());
        for t in self.threads {
            parts.push(
                t.join()
                    .map_err(|_| anyhow::anyhow!("reader thread panicked"))??,
            );
        }
        let published = self.live.published.lock().expect("not poisoned").clone();
        Ok(merge::merge(parts, published.as_deref(), &self.live.base()))
    }
}

/// The parts of a staged run: clients, monitor and the publisher's live count.
struct Session {
    clients: Readers,
    monitor: Monitor,
    stalls: crate::stalls::StallWatch,
    published: Arc<AtomicU64>,
    lateness: Arc<publisher::Lateness>,
}

impl Session {
    fn start(plan: &RunPlan, connect_limit: Duration) -> anyhow::Result<Session> {
        let clients = Readers::start(plan, connect_limit)?;
        let stalls = crate::stalls::StallWatch::start();
        let published = Arc::new(AtomicU64::new(0));
        let lateness = Arc::new(publisher::Lateness::default());
        // The readers' own assignment of topics, not a second one.
        let subscriptions: usize = clients.subs.iter().map(Vec::len).sum();
        let monitor = Monitor::start(
            clients.live.clone(),
            published.clone(),
            plan.connections,
            plan.progress,
            plan.report_every,
            plan.server_pid,
            crate::monitor::Watch {
                lateness: lateness.clone(),
                // The publisher goes round-robin over the topics.
                deliveries_per_message: subscriptions as f64 / plan.topics.max(1) as f64,
            },
        );
        Ok(Session {
            clients,
            monitor,
            stalls,
            published,
            lateness,
        })
    }

    /// Starts the paced publisher on its own thread; join it for what it published.
    fn publish(
        &self,
        plan: &RunPlan,
        rate: u64,
        duration: Duration,
    ) -> std::thread::JoinHandle<std::io::Result<Published>> {
        let pub_plan = publisher::PublishPlan {
            protocol: plan.protocol,
            server: plan.server,
            path: plan.path.clone(),
            ingest: plan.ingest,
            topics: plan.topic_names(),
            rate,
            payload_bytes: plan.payload_bytes,
            duration,
        };
        let counter = self.published.clone();
        let lateness = self.lateness.clone();
        std::thread::spawn(move || publisher::run(&pub_plan, &counter, &lateness))
    }
}

/// Waits for a publisher thread.
fn joined(
    publisher: std::thread::JoinHandle<std::io::Result<Published>>,
) -> anyhow::Result<Published> {
    Ok(publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??)
}

/// A publisher this far behind its schedule means loadgen, not the server, set the pace.
const PUBLISHER_LAG_LIMIT_US: u64 = 100_000;

/// Fanout, latency and soak: connects, publishes at `plan.rate` for the duration (with churn
/// and slow consumers if the plan asks), lets the slow connections drain, and reports.
/// Bounded in time: connecting gets at most 120 s, draining at most 30 s.
pub fn run(plan: &RunPlan) -> anyhow::Result<RunReport> {
    let session = Session::start(plan, Duration::from_secs(120))?;
    let server_cpu0 = plan.server_pid.and_then(process_cpu_secs);
    let self_cpu0 = process_cpu_secs(std::process::id()).unwrap_or(0.0);
    let thread_cpu0 = session.clients.cpu_secs();
    let started = Instant::now();
    let published = joined(session.publish(plan, plan.rate, plan.duration))?;
    let publishing = started.elapsed();
    let wall_cpu = |cpu1: f64, cpu0: f64| (cpu1 - cpu0) / publishing.as_secs_f64() * 100.0;
    // CPU over the publishing window: what the load cost, not the drain's idling.
    let server_cpu_pct = match (plan.server_pid.and_then(process_cpu_secs), server_cpu0) {
        (Some(b), Some(a)) => Some(wall_cpu(b, a)),
        _ => None,
    };
    let client_cpu_pct = wall_cpu(
        process_cpu_secs(std::process::id()).unwrap_or(0.0),
        self_cpu0,
    );
    let reader_cpu_pct = reader_cpu_pct(&thread_cpu0, &session.clients.cpu_secs(), publishing);
    let client_thread_cpu_pct = busiest(&reader_cpu_pct);
    // Slow connections read freely now, so whatever the server still holds for them arrives
    // (and every drop is announced) before the tail is checked.
    let live = session.clients.live.clone();
    live.throttle_slow.store(false, Ordering::Relaxed);
    let (expected_all, expected_healthy) = session.clients.expected(&published);
    let churn = plan.churn_per_sec > 0.0;
    // The drain ends when every subscription has seen its topic's last message (or a gap
    // covering it), not after a quiet spell: a slow reader's last bytes can take seconds to
    // come out of a zero window. Bounded: 30 s, or what the slow readers need to take a full
    // server queue and socket buffer (8 MiB) at their rate, if more.
    *live.published.lock().expect("not poisoned") = Some(published.per_topic.clone());
    let slow_secs = if plan.slow_fraction > 0.0 {
        (8u64 << 20) / plan.slow_bytes_per_sec().max(1)
    } else {
        0
    };
    let bound = Duration::from_secs(slow_secs.clamp(30, 300));
    let last_progress = match plan.protocol {
        crate::Protocol::Corecast => session.clients.drain_to_end(bound),
        // No sequences to see the end of a stream by: wait for the expected count, or 3 s
        // without a delivery (this protocol drops silently, so a shortfall never arrives).
        crate::Protocol::JsonPubsub => {
            session
                .clients
                .drain(0, expected_all, Duration::from_secs(3), bound)
                .1
        }
    };
    // Up to the last delivery: waiting for stragglers is not delivery time.
    let elapsed = last_progress.max(started + publishing) - started;
    let slow_connections = session.clients.slow.iter().filter(|&&s| s).count() as u64;
    let Session {
        clients,
        monitor,
        stalls,
        ..
    } = session;
    let c = clients.finish()?;
    let (samples, saturation) = monitor.finish();
    let host_stalls = stalls
        .finish()
        .map(|s| s.iter().map(ToString::to_string).collect());
    let h = c.healthy;
    let mut lost = h.unannounced + h.tail_missing;
    if !churn {
        lost = lost.max(expected_healthy.saturating_sub(h.delivered + h.announced));
    }
    let delivered = h.delivered + c.slow.delivered;
    let expected = if churn {
        delivered + h.announced + c.slow.announced + lost + c.slow.unannounced + c.slow.tail_missing
    } else {
        expected_all
    };
    Ok(RunReport {
        protocol: plan.protocol.name(),
        connections_ok: c.connections_ok,
        connect_failures: c.connect_failures,
        published: published.total,
        delivered,
        expected,
        expected_exact: !churn,
        lost,
        healthy: h,
        slow: c.slow,
        slow_connections,
        unexpected_disconnects: c.unexpected_disconnects,
        reconnects: c.reconnects,
        elapsed,
        window: plan.duration,
        latency_us: c.latency_us,
        client_cpu_pct,
        client_thread_cpu_pct,
        reader_cpu_pct,
        server_cpu_pct,
        loadgen_saturated: !saturation.is_empty(),
        saturation,
        host_stalls,
        publisher_max_lag_us: published.max_lag_us,
        samples,
    })
}

/// How a capacity run steps.
#[derive(Debug, Clone)]
pub struct CapacityPlan {
    /// Published messages per second of the first step.
    pub start_rate: u64,
    /// Each step's rate is the previous one times this.
    pub factor: f64,
    /// How long each step publishes.
    pub step: Duration,
    /// A step whose p99 passes this is not sustainable.
    pub p99_bound: Duration,
    pub max_steps: usize,
}

/// A step must deliver at least this share of its expected deliveries (B1's definition of
/// capacity: at least 99.9% delivered, p99 under the bound).
const DELIVERED_SHARE: f64 = 0.999;

/// Steps the publish rate up until delivery falls below [`DELIVERED_SHARE`] or behind the
/// offered rate, or p99 passes the bound; reports every step and the highest sustainable one.
/// Bounded: at most `max_steps` steps of `step` each, plus a bounded drain per step.
pub fn run_capacity(plan: &RunPlan, cap: &CapacityPlan) -> anyhow::Result<CapacityReport> {
    let session = Session::start(plan, Duration::from_secs(120))?;
    let live = session.clients.live.clone();
    let mut steps = Vec::new();
    let mut rate = cap.start_rate.max(1) as f64;
    for _ in 0..cap.max_steps {
        let r = rate.round() as u64;
        let d0 = live.delivered.load(Ordering::Relaxed);
        let a0 = live.announced.load(Ordering::Relaxed);
        let g0 = live.gap_notices.load(Ordering::Relaxed);
        let u0 = live.unannounced.load(Ordering::Relaxed);
        let x0 = live.disconnects.load(Ordering::Relaxed);
        let server0 = plan.server_pid.and_then(process_cpu_secs);
        let thread0 = session.clients.cpu_secs();
        let _ = session.monitor.take_window();
        let started = Instant::now();
        // Delivery is judged on the step's second half, when the step's traffic has reached
        // its steady state: a server that keeps up delivers at the offered rate there, however
        // long each message takes; one that falls behind delivers less.
        let publisher = session.publish(plan, r, cap.step);
        std::thread::sleep(cap.step / 2);
        let (d_mid, t_mid) = (live.delivered.load(Ordering::Relaxed), Instant::now());
        let published = joined(publisher)?;
        let window = started.elapsed();
        let (d_end, t_end) = (live.delivered.load(Ordering::Relaxed), Instant::now());
        let delivered_in_window = d_end - d0;
        let steady_per_sec =
            (d_end - d_mid) as f64 / t_end.duration_since(t_mid).as_secs_f64().max(1e-9);
        let server_cpu_pct = match (plan.server_pid.and_then(process_cpu_secs), server0) {
            (Some(b), Some(a)) => Some((b - a) / window.as_secs_f64() * 100.0),
            _ => None,
        };
        let client_thread_cpu_pct = busiest(&reader_cpu_pct(
            &thread0,
            &session.clients.cpu_secs(),
            window,
        ));
        let (expected, _) = session.clients.expected(&published);
        let expected_per_sec = expected as f64 / window.as_secs_f64().max(1e-9);
        let (drain, _) = session.clients.drain(
            d0 + a0,
            expected,
            Duration::from_secs(2),
            Duration::from_secs(15),
        );
        // The clients hand their latency over every 200 ms: wait for this step's last.
        std::thread::sleep(Duration::from_millis(300));
        let lat = session.monitor.take_window();
        let lost = live.unannounced.load(Ordering::Relaxed) - u0;
        let disconnects = live.disconnects.load(Ordering::Relaxed) - x0;
        let announced = live.announced.load(Ordering::Relaxed) - a0;
        let delivered = live.delivered.load(Ordering::Relaxed) - d0;
        let gap_notices = live.gap_notices.load(Ordering::Relaxed) - g0;
        let p99 = lat.value_at_quantile(0.99);
        let verdict = if published.max_lag_us > PUBLISHER_LAG_LIMIT_US
            && published.max_blocked_us * 2 >= published.max_lag_us
        {
            format!(
                "the server stopped reading the publisher: a write blocked {} ms, {} ms behind schedule",
                published.max_blocked_us / 1000,
                published.max_lag_us / 1000
            )
        } else if published.max_lag_us > PUBLISHER_LAG_LIMIT_US {
            format!(
                "loadgen limit: the publisher fell {} ms behind",
                published.max_lag_us / 1000
            )
        } else if client_thread_cpu_pct > 90.0 {
            format!("loadgen limit: a reader thread at {client_thread_cpu_pct:.0}% of a core")
        } else if lost > 0 || disconnects > 0 {
            format!("{lost} messages lost without a notice, {disconnects} connections lost")
        } else if (delivered as f64) < DELIVERED_SHARE * expected as f64 {
            // Dropped is dropped, announced (corecast's `gap`) or silent (a server that
            // drops past its backpressure limit without a word): both count against B1's
            // "at least 99.9% delivered".
            format!(
                "{:.2}% delivered after the drain: {} of {expected} missing, {announced} of them announced by {gap_notices} gap notices",
                delivered as f64 * 100.0 / expected.max(1) as f64,
                expected.saturating_sub(delivered)
            )
        } else if steady_per_sec < 0.97 * expected_per_sec {
            format!(
                "fell behind: {:.0}% of the offered deliveries in the step's second half",
                steady_per_sec * 100.0 / expected_per_sec.max(1e-9)
            )
        } else if drain > Duration::from_secs(1) + Duration::from_micros(p99) {
            format!("backlog took {} ms to drain", drain.as_millis())
        } else if p99 > cap.p99_bound.as_micros() as u64 {
            format!("p99 {:.1} ms over the bound", p99 as f64 / 1000.0)
        } else {
            String::new()
        };
        let sustainable = verdict.is_empty();
        steps.push(Step {
            rate: r,
            published: published.total,
            expected,
            delivered_in_window,
            delivered,
            delivered_per_sec: steady_per_sec,
            window,
            drain,
            gap_notices,
            p50_us: lat.value_at_quantile(0.5),
            p99_us: p99,
            p999_us: lat.value_at_quantile(0.999),
            max_us: lat.max(),
            client_thread_cpu_pct,
            server_cpu_pct,
            publisher_max_lag_us: published.max_lag_us,
            sustainable,
            verdict,
        });
        if !sustainable {
            break;
        }
        rate *= cap.factor.max(1.01);
    }
    let Session {
        clients, monitor, ..
    } = session;
    let c = clients.finish()?;
    drop(monitor);
    Ok(CapacityReport {
        connections_ok: c.connections_ok,
        connect_failures: c.connect_failures,
        steps,
        lost: c.healthy.unannounced + c.healthy.tail_missing,
        unexpected_disconnects: c.unexpected_disconnects,
        p99_bound: cap.p99_bound,
        latency_us: c.latency_us,
    })
}

/// Opens `plan.connections` as fast as the server takes them (at most `max_in_flight`
/// handshakes at a time, `connect_rate` per second if set) and reports the handshake latency
/// and the rate. Bounded by `plan.duration` (at least 10 s).
pub fn run_connect(plan: &RunPlan) -> anyhow::Result<ConnectReport> {
    let server_cpu0 = plan.server_pid.and_then(process_cpu_secs);
    let self_cpu0 = process_cpu_secs(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let clients = Readers::start(plan, plan.duration.max(Duration::from_secs(10)))?;
    let wall = started.elapsed().as_secs_f64();
    let server_cpu_pct = match (plan.server_pid.and_then(process_cpu_secs), server_cpu0) {
        (Some(b), Some(a)) => Some((b - a) / wall * 100.0),
        _ => None,
    };
    let client_cpu_pct =
        (process_cpu_secs(std::process::id()).unwrap_or(0.0) - self_cpu0) / wall * 100.0;
    let c = clients.finish()?;
    Ok(ConnectReport {
        connections_ok: c.connections_ok,
        connect_failures: c.connect_failures,
        span: c.connect_span,
        handshake_us: c.handshake_us,
        client_cpu_pct,
        server_cpu_pct,
    })
}

/// Opens and subscribes every connection, holds them idle for `plan.duration`, and measures
/// the server's resident memory before and after (needs `server_pid`). Publishes nothing.
pub fn run_idle(plan: &RunPlan) -> anyhow::Result<IdleReport> {
    let rss_before = plan.server_pid.and_then(crate::process_rss_kib);
    let pages_before = crate::tcp_kernel_pages();
    let slab_before = crate::tcp_slab_bytes();
    let clients = Readers::start(plan, Duration::from_secs(120))?;
    std::thread::sleep(plan.duration);
    let rss_after = plan.server_pid.and_then(crate::process_rss_kib);
    let pages_after = crate::tcp_kernel_pages();
    let slab_after = crate::tcp_slab_bytes();
    let c = clients.finish()?;
    Ok(IdleReport {
        connections_ok: c.connections_ok,
        connect_failures: c.connect_failures,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        kernel_tcp_pages_before: pages_before,
        kernel_tcp_pages_after: pages_after,
        kernel_slab_before: slab_before,
        kernel_slab_after: slab_after,
    })
}

//! The publisher side: an open-loop paced publisher over the ingest TCP port. Message `i` has
//! an intended send time `start + i / rate`; it carries that time (`"t"`, µs since the epoch),
//! so latency is measured from when it should have been sent, whatever the publisher's own
//! delays (no coordinated omission).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Corecast: JSON lines to `ingest`. JsonPubsub: a WebSocket client of its own to
    /// `server` + `path`, one `pub` text frame per message.
    pub protocol: crate::Protocol,
    pub server: SocketAddr,
    pub path: String,
    pub ingest: SocketAddr,
    pub topics: Vec<String>,
    /// Messages per second, all topics together.
    pub rate: u64,
    /// Approximate size of each event's `data`, bytes.
    pub payload_bytes: usize,
    pub duration: Duration,
}

/// Messages published per topic.
pub struct Published {
    pub per_topic: Vec<u64>,
    pub total: u64,
    /// Largest lag behind the schedule, µs, after the batch's write (a publisher that cannot
    /// keep up, or a server that stops reading it, shows it here).
    pub max_lag_us: u64,
    /// Longest a single write blocked, µs: the server not reading the publisher's
    /// connection (its backpressure), not loadgen being slow.
    pub max_blocked_us: u64,
}

/// How late the publisher's batches left, live, for the saturation check: the share of
/// batches more than [`LATE_US`] behind schedule is the publisher's lag past its p99 mark.
#[derive(Debug, Default)]
pub struct Lateness {
    /// Batches written so far.
    pub batches: AtomicU64,
    /// Of those, batches whose write began more than [`LATE_US`] after their first message's
    /// time: loadgen's own lateness (a write blocked by the server does not count here).
    pub late: AtomicU64,
}

/// A batch this late (µs) counts as late.
pub const LATE_US: u64 = 1000;

/// Shortest pause between writes: above it the publisher wakes per message, below it
/// messages due together share a write.
const MIN_SLEEP: Duration = Duration::from_micros(50);

/// Publishes round-robin over the topics until `duration` has passed, adding each batch to
/// `counter`. Bounded in time.
pub fn run(plan: &PublishPlan, counter: &AtomicU64, lateness: &Lateness) -> io::Result<Published> {
    // Sleeps as short as asked: the default timer slack (50 µs) would stretch each one.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0);
    }
    // Wake up on time on a busy machine: this thread sleeps between batches and uses a few
    // percent of a core, so it asks for the lowest real-time priority (SCHED_FIFO 1), or,
    // where that is not allowed, nice -10. It takes no more CPU that way, only gets it when
    // due, ahead of the polling server threads. Its lateness is watched all the same
    // (`Lateness`).
    // SAFETY: both calls change only this thread's scheduling (pid 0 / its own tid).
    unsafe {
        let param = libc::sched_param { sched_priority: 1 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10);
        }
    }
    let json_pubsub = plan.protocol == crate::Protocol::JsonPubsub;
    let mut out = if json_pubsub {
        websocket(plan)?
    } else {
        TcpStream::connect(plan.ingest)?
    };
    out.set_nodelay(true)?;
    let pad = "x".repeat(plan.payload_bytes.saturating_sub(30));
    let start = Instant::now();
    let epoch_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut per_topic = vec![0u64; plan.topics.len()];
    let base = counter.load(Ordering::Relaxed);
    let mut sent = 0u64;
    let mut max_lag_us = 0u64;
    let mut max_blocked_us = 0u64;
    let mut batch = Vec::with_capacity(64 * 1024);
    // At most 100 M msgs/s: the schedule is kept in whole nanoseconds.
    let interval_ns = 1_000_000_000 / plan.rate.clamp(1, 100_000_000);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= plan.duration {
            break;
        }
        let due = (elapsed.as_nanos() as u64 / interval_ns) + 1;
        let first_in_batch = sent;
        while sent < due && batch.len() < 60 * 1024 {
            let intended_us = epoch_start + sent * interval_ns / 1000;
            let t = (sent as usize) % plan.topics.len();
            if json_pubsub {
                let text = format!(
                    "{{\"op\":\"pub\",\"topic\":\"{}\",\"t\":{intended_us},\"p\":\"{pad}\"}}",
                    plan.topics[t]
                );
                batch.extend(crate::wire::client_text(text.as_bytes(), [3, 1, 4, 1]));
            } else {
                let _ = writeln!(
                    batch,
                    "{{\"topic\":\"{}\",\"data\":{{\"t\":{intended_us},\"p\":\"{pad}\"}}}}",
                    plan.topics[t]
                );
            }
            per_topic[t] += 1;
            sent += 1;
        }
        if !batch.is_empty() {
            let due_ns = first_in_batch * interval_ns;
            let began = start.elapsed();
            out.write_all(&batch)?;
            batch.clear();
            counter.store(base + sent, Ordering::Relaxed);
            let ended = start.elapsed();
            // How late the batch's first message left, after the write (which can block),
            // and how much of that the write itself took.
            let behind = (ended.as_nanos() as u64).saturating_sub(due_ns) / 1000;
            max_lag_us = max_lag_us.max(behind);
            max_blocked_us = max_blocked_us.max((ended - began).as_micros() as u64);
            lateness.batches.fetch_add(1, Ordering::Relaxed);
            if (began.as_nanos() as u64).saturating_sub(due_ns) / 1000 > LATE_US {
                lateness.late.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Never spin (the publisher shares the machine with the server under test): sleep
        // until the next message is due, at least MIN_SLEEP; what falls due meanwhile goes
        // out in one write, each message still stamped with its own intended time.
        let next = Duration::from_nanos(sent * interval_ns);
        let now = start.elapsed();
        std::thread::sleep(next.saturating_sub(now).max(MIN_SLEEP));
    }
    out.flush()?;
    Ok(Published {
        per_topic,
        total: sent,
        max_lag_us,
        max_blocked_us,
    })
}

/// The json-pubsub publisher's own WebSocket connection (it never subscribes): the upgrade
/// done, the 101 read, blocking. What the server sends it (nothing, in that protocol) is
/// never read.
fn websocket(plan: &PublishPlan) -> io::Result<TcpStream> {
    use std::io::Read;
    let mut s = TcpStream::connect(plan.server)?;
    s.write_all(&crate::wire::upgrade_request(
        &plan.server.to_string(),
        &plan.path,
    ))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(
            "the publisher's WebSocket upgrade was refused",
        ));
    }
    Ok(s)
}

//! The subscriber side: thousands of WebSocket clients spread over several loopback source
//! addresses, each checking per-topic sequence continuity and recording latency from the
//! message's intended send time. The connections are partitioned over one or more reader
//! threads ([`Part`]), each with its own mio poll set, histograms and tallies; [`merge`] joins
//! what they saw into one [`ClientReport`] once they stop (counts add, histograms add, and the
//! end-of-stream check runs over all connections together, so the merged figures are those a
//! single thread would have produced from the same frames).
//!
//! Two kinds of connection: healthy ones read everything at once and must lose nothing; slow
//! ones (a chosen fraction) read at a fixed byte rate, so the server must drop their oldest
//! frames and announce every drop with a `gap` notice. Churn closes a fraction of the healthy
//! connections each second and opens them again; a reconnected connection resumes from the
//! sequence its new `ack` reports.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::check::{on_text, Seen, Tally};
use crate::wire;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    pub protocol: crate::Protocol,
    pub server: SocketAddr,
    pub path: String,
    /// Topic names.
    pub topics: Vec<String>,
    /// Topic indices each connection subscribes to (one entry per connection; empty: the
    /// connection only completes the handshake).
    pub subs: Arc<Vec<Vec<u32>>>,
    /// Which connections read slowly (same length as `subs`).
    pub slow: Arc<Vec<bool>>,
    /// Bytes per second a slow connection reads while throttled.
    pub slow_bytes_per_sec: u64,
    /// Fraction of the healthy connections closed and reopened each second (0 = none).
    pub churn_per_sec: f64,
    /// Loopback source addresses to spread over (127.0.0.2, 127.0.0.3, ...).
    pub source_addrs: u8,
    /// New connections per second at most; 0 = as fast as handshakes complete.
    pub connect_rate: u32,
    /// Handshakes in progress at most.
    pub max_in_flight: usize,
}

impl ClientPlan {
    fn connections(&self) -> usize {
        self.subs.len()
    }
}

/// Live counters, readable from other threads for the progress line and stepped scenarios.
pub struct Live {
    pub connected: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub gap_notices: AtomicU64,
    pub reconnects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Messages covered by `gap` notices, all connections.
    pub announced: AtomicU64,
    /// Holes no `gap` announced, healthy connections, so far.
    pub unannounced: AtomicU64,
    /// Messages published per topic during the run, given before the clients stop: the tail
    /// check then counts from what was published, not only from what other clients saw.
    pub published: Mutex<Option<Vec<u64>>>,
    /// Kernel thread id of each reader thread (for its CPU time in /proc; 0 until started).
    pub tids: Vec<AtomicU64>,
    /// Per reader thread, its share of [`Live::tail_pending`] (`u64::MAX` until counted).
    pending: Vec<AtomicU64>,
    /// Per topic, the lowest sequence any connection's first `ack` reported, of all reader
    /// threads: the topic's sequence before the run published anything.
    base: Mutex<Vec<Option<u64>>>,
    /// Slow connections read at their limited rate while set; cleared to let them drain.
    pub throttle_slow: AtomicBool,
    /// Latency (µs) recorded since the last [`Live::take_interval`], merged in every 200 ms.
    interval: Mutex<Histogram<u64>>,
}

impl Default for Live {
    /// One reader thread.
    fn default() -> Self {
        Live::new(1)
    }
}

impl Live {
    /// Counters for `threads` reader threads (at least one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        Live {
            connected: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            gap_notices: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            announced: AtomicU64::new(0),
            unannounced: AtomicU64::new(0),
            published: Mutex::new(None),
            tids: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            pending: (0..threads).map(|_| AtomicU64::new(u64::MAX)).collect(),
            base: Mutex::new(Vec::new()),
            throttle_slow: AtomicBool::new(true),
            interval: Mutex::new(latency_histogram()),
        }
    }

    /// Once `published` is given: subscriptions of open connections that have not yet
    /// reached their topic's last published message (delivered, or announced by a `gap`),
    /// all reader threads together. `u64::MAX` until every thread has counted once. The
    /// drain waits for 0: every stream seen to its end.
    pub fn tail_pending(&self) -> u64 {
        let mut sum = 0u64;
        for p in &self.pending {
            let v = p.load(Ordering::Relaxed);
            if v == u64::MAX {
                return u64::MAX;
            }
            sum += v;
        }
        sum
    }

    /// Notes what a connection's first `ack` said of its topics (`(topic, next expected)`):
    /// each topic's base is the lowest `next - 1` seen by any reader.
    fn note_base(&self, topics: usize, subs: &[(u32, u64)]) {
        let mut base = self.base.lock().expect("not poisoned");
        if base.len() < topics {
            base.resize(topics, None);
        }
        for &(t, next) in subs {
            if next > 0 {
                let b = &mut base[t as usize];
                *b = Some(b.map_or(next - 1, |b| b.min(next - 1)));
            }
        }
    }

    /// Per topic, its sequence before the run (`None` where no `ack` said it yet).
    pub fn base(&self) -> Vec<Option<u64>> {
        self.base.lock().expect("not poisoned").clone()
    }

    /// The latency recorded since the previous call (lags the clients by up to 200 ms).
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut h = self.interval.lock().expect("not poisoned");
        let out = h.clone();
        h.reset();
        out
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What the clients saw.
pub struct ClientReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub healthy: Tally,
    pub slow: Tally,
    pub unexpected_disconnects: u64,
    pub reconnects: u64,
    /// Latency of healthy connections, µs from intended send time.
    pub latency_us: Histogram<u64>,
    /// From `connect()` to the `101` response, µs, first attempt of each connection.
    pub handshake_us: Histogram<u64>,
    /// From the first `connect()` to the last handshake completed.
    pub connect_span: Duration,
    /// CPU seconds each reader thread used, in reader order.
    pub thread_cpu_secs: Vec<f64>,
}

impl ClientReport {
    fn empty() -> Self {
        ClientReport {
            connections_ok: 0,
            connect_failures: 0,
            healthy: Tally::default(),
            slow: Tally::default(),
            unexpected_disconnects: 0,
            reconnects: 0,
            latency_us: latency_histogram(),
            handshake_us: latency_histogram(),
            connect_span: Duration::ZERO,
            thread_cpu_secs: Vec::new(),
        }
    }
}

/// Which connections one reader thread owns: connection `i` (of the plan) belongs to reader
/// `i % of`, so every reader gets the same mix of topics, slow readers and source addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// This reader's number, from 0.
    pub index: usize,
    /// Reader threads in all (at least 1).
    pub of: usize,
}

impl Part {
    /// The plan's connection indices this reader owns, ascending.
    pub fn owned(self, connections: usize) -> Vec<usize> {
        (self.index..connections).step_by(self.of.max(1)).collect()
    }
}

/// One open subscription's position at the end, for the end-of-stream check.
struct StreamEnd {
    slow: bool,
    /// (topic index, next expected seq; 0 = not yet known).
    subs: Vec<(u32, u64)>,
}

/// What one reader thread hands back when it stops; [`merge`] joins them.
pub struct Finished {
    report: ClientReport,
    /// Connections open and acked at the end.
    open: Vec<StreamEnd>,
    /// Per topic, the highest sequence any of this thread's connections saw (open or not).
    seen: Vec<u64>,
    /// Connections owned, and those still waiting to be retried.
    owned: u64,
    unretried: u64,
    first_opened: Option<Instant>,
    last_handshake: Option<Instant>,
}

enum Phase {
    Handshake,
    Open,
    Dead,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// (topic index, next expected seq; 0 = not yet known).
    subs: Vec<(u32, u64)>,
    acked: bool,
    slow: bool,
    /// Bytes a slow connection may still read in the current tenth of a second.
    budget: usize,
    /// When the current connection attempt began.
    opened_at: Instant,
    /// When the first attempt began (handshake latency and the connect span count from it).
    first_opened_at: Instant,
    /// Whether this connection's handshake time was recorded (first attempt only).
    timed: bool,
}

/// CPU seconds used by the calling thread.
pub fn thread_cpu_secs() -> f64 {
    // SAFETY: getrusage writes only into the struct we pass.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        (r.ru_utime.tv_sec + r.ru_stime.tv_sec) as f64
            + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) as f64 / 1e6
    }
}

/// Receive buffer of a slow connection, bytes: a reader on a thin link, whose backlog builds
/// up in the server (where it is bounded and announced) rather than in this host's kernel.
const SLOW_RCVBUF: usize = 16 * 1024;

fn open(plan: &ClientPlan, i: usize) -> io::Result<TcpStream> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % plan.source_addrs.max(1) as usize) as u8);
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if plan.slow[i] {
        s.set_recv_buffer_size(SLOW_RCVBUF)?;
    }
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    match s.connect(&plan.server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// The client event loop's state.
struct Clients<'a> {
    plan: &'a ClientPlan,
    live: &'a Live,
    part: Part,
    /// The plan's index of each connection this thread owns (`conns[j]` is `owned[j]`).
    owned: Vec<usize>,
    /// Connections of this thread acked and open now (its share of `Live::acked`).
    acked_here: u64,
    poll: Poll,
    conns: Vec<Conn>,
    index: HashMap<Vec<u8>, u32>,
    report: ClientReport,
    interval: Histogram<u64>,
    host: String,
    /// Connections whose handshake failed, to try again (bounded).
    to_retry: Vec<usize>,
    retries_left: usize,
    in_flight: usize,
    last_handshake: Option<Instant>,
    /// Connections that still had data when their turn ended.
    again: Vec<usize>,
    /// This thread's share of `--connect-rate` (0: unlimited) and `--max-in-flight`.
    connect_rate: u32,
    max_in_flight: usize,
}

/// A handshake not answered within this is failed (and retried).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one connection may do before the others get their turn.
const READS_PER_TURN: usize = 4;

/// Runs this reader thread's share (`part`) of the clients until `stop`; `ready` is set once
/// each of them is subscribed (or failed). Bounded: connects stop at `connect_deadline`.
/// Allocates per connection and per control frame, never per message.
pub fn run(
    plan: &ClientPlan,
    part: Part,
    live: &Live,
    ready: &AtomicBool,
    stop: &AtomicBool,
    connect_deadline: Instant,
) -> io::Result<Finished> {
    let cpu0 = thread_cpu_secs();
    // SAFETY: gettid has no preconditions.
    live.tids[part.index].store(unsafe { libc::gettid() } as u64, Ordering::Relaxed);
    let owned = part.owned(plan.connections());
    let n = owned.len();
    let mut cl = Clients {
        plan,
        live,
        part,
        owned,
        acked_here: 0,
        poll: Poll::new()?,
        conns: Vec::with_capacity(n),
        index: plan
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_bytes().to_vec(), i as u32))
            .collect(),
        report: ClientReport::empty(),
        interval: latency_histogram(),
        host: plan.server.to_string(),
        to_retry: Vec::new(),
        retries_left: n / 10 + 10,
        in_flight: 0,
        last_handshake: None,
        again: Vec::new(),
        // The plan's limits hold for all readers together.
        connect_rate: plan.connect_rate.div_ceil(part.of.max(1) as u32),
        max_in_flight: plan.max_in_flight.div_ceil(part.of.max(1)).max(1),
    };
    let mut events = Events::with_capacity(4096);
    let started = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut last_merge = Instant::now();
    let mut last_slow_tick = Instant::now();
    let mut last_churn = Instant::now();
    let mut churn_cursor = 0usize;
    let mut churn_carry = 0.0f64;
    let healthy = cl.owned.iter().filter(|&&g| !plan.slow[g]).count();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        cl.open_more(started, now < connect_deadline)?;
        let wait = if cl.again.is_empty() {
            Duration::from_millis(5)
        } else {
            Duration::ZERO
        };
        cl.poll.poll(&mut events, Some(wait))?;
        for i in std::mem::take(&mut cl.again) {
            cl.service(i, &mut buf, false);
        }
        for ev in events.iter() {
            cl.service(ev.token().0, &mut buf, true);
        }
        let now = Instant::now();
        if now.duration_since(last_slow_tick) >= Duration::from_millis(100) {
            last_slow_tick = now;
            cl.service_slow(&mut buf);
            cl.expire_handshakes(now);
            cl.count_tail_pending();
        }
        if now.duration_since(last_merge) >= Duration::from_millis(200) {
            last_merge = now;
            let mut shared = live.interval.lock().expect("not poisoned");
            let _ = shared.add(&cl.interval);
            cl.interval.reset();
        }
        if plan.churn_per_sec > 0.0
            && ready.load(Ordering::Relaxed)
            && now.duration_since(last_churn) >= Duration::from_secs(1)
        {
            last_churn = now;
            churn_carry += plan.churn_per_sec * healthy as f64;
            let count = churn_carry as usize;
            churn_carry -= count as f64;
            churn_cursor = cl.churn(count, churn_cursor)?;
        }
        // Every connection acked, failed for good, or lost after opening.
        let settled = cl.conns.len() >= n
            && cl.to_retry.is_empty()
            && cl.acked_here + cl.report.connect_failures + cl.report.unexpected_disconnects
                >= n as u64;
        if settled || now >= connect_deadline {
            ready.store(true, Ordering::Relaxed);
        }
    }
    let mut finished = cl.finish();
    finished.report.thread_cpu_secs = vec![thread_cpu_secs() - cpu0];
    Ok(finished)
}

impl Clients<'_> {
    /// Opens connections while the rate and the in-flight bound allow, and retries failures.
    /// First-time opens stop at the connect deadline (`first_opens` false); retries go on.
    fn open_more(&mut self, started: Instant, first_opens: bool) -> io::Result<()> {
        let n = if first_opens {
            self.owned.len()
        } else {
            self.conns.len()
        };
        let allowed = if self.connect_rate == 0 {
            n
        } else {
            ((started.elapsed().as_secs_f64() * f64::from(self.connect_rate)) as usize + 1).min(n)
        };
        while self.conns.len() < allowed && self.in_flight < self.max_in_flight {
            let i = self.conns.len();
            let g = self.owned[i];
            let mut stream = open(self.plan, g).map_err(|e| {
                io::Error::other(format!("cannot open socket {g}: {e} (descriptors?)"))
            })?;
            self.poll.registry().register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.conns.push(Conn {
                stream,
                phase: Phase::Handshake,
                inbuf: Vec::new(),
                outbuf: wire::upgrade_request(&self.host, &self.plan.path),
                subs: self.plan.subs[g].iter().map(|&t| (t, 0)).collect(),
                acked: false,
                slow: self.plan.slow[g],
                budget: 0,
                opened_at: Instant::now(),
                first_opened_at: Instant::now(),
                timed: false,
            });
            self.in_flight += 1;
        }
        while self.in_flight < self.max_in_flight {
            let Some(i) = self.to_retry.pop() else { break };
            if self.retries_left == 0 {
                self.report.connect_failures += 1;
                continue;
            }
            self.retries_left -= 1;
            self.reopen(i)?;
        }
        Ok(())
    }

    /// Opens connection `i` again (after a failed handshake or a deliberate close).
    fn reopen(&mut self, i: usize) -> io::Result<bool> {
        let mut stream = match open(self.plan, self.owned[i]) {
            Ok(s) => s,
            Err(_) => {
                self.report.connect_failures += 1;
                let c = &mut self.conns[i];
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                c.phase = Phase::Dead;
                return Ok(false);
            }
        };
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let c = &mut self.conns[i];
        c.stream = stream;
        c.phase = Phase::Handshake;
        c.inbuf.clear();
        c.outbuf = wire::upgrade_request(&self.host, &self.plan.path);
        c.acked = false;
        for s in &mut c.subs {
            s.1 = 0;
        }
        c.opened_at = Instant::now();
        self.in_flight += 1;
        Ok(true)
    }

    /// Fails handshakes that took longer than [`HANDSHAKE_TIMEOUT`] (they are retried).
    fn expire_handshakes(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if matches!(c.phase, Phase::Handshake)
                && now.saturating_duration_since(c.opened_at) > HANDSHAKE_TIMEOUT
            {
                self.fail(i);
            }
        }
    }

    /// Handles readiness of connection `i`. Slow connections read only their budget, and only
    /// from `service_slow` once open (`from_event` false).
    fn service(&mut self, i: usize, buf: &mut [u8], from_event: bool) {
        let throttled = {
            let c = &self.conns[i];
            if matches!(c.phase, Phase::Dead) {
                return;
            }
            c.slow
                && matches!(c.phase, Phase::Open)
                && self.live.throttle_slow.load(Ordering::Relaxed)
        };
        if !self.flush_out(i) {
            return;
        }
        if throttled && from_event {
            return;
        }
        for round in 0.. {
            if round == READS_PER_TURN {
                // Data may remain, and no new readiness event will say so (edge-triggered):
                // come back after the other ready connections had their turn.
                self.again.push(i);
                break;
            }
            let c = &mut self.conns[i];
            let limit = if throttled {
                c.budget.min(buf.len())
            } else {
                buf.len()
            };
            if limit == 0 {
                break;
            }
            match c.stream.read(&mut buf[..limit]) {
                Ok(0) => {
                    self.fail(i);
                    return;
                }
                Ok(n) => {
                    if throttled {
                        c.budget -= n;
                    }
                    c.inbuf.extend_from_slice(&buf[..n]);
                    if !self.handle(i) {
                        self.fail(i);
                        return;
                    }
                    if n < limit && !throttled {
                        // A short read emptied the socket: new data raises a new edge, so
                        // the read that would only say "would block" is saved (it was one
                        // system call in two).
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                Err(_) => {
                    self.fail(i);
                    return;
                }
            }
        }
        self.flush_out(i);
    }

    /// Writes what the connection has to say; false if the connection failed.
    fn flush_out(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        if c.outbuf.is_empty() {
            return true;
        }
        match c.stream.write(&c.outbuf) {
            Ok(n) => {
                c.outbuf.drain(..n);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => true,
            Err(_) => {
                self.fail(i);
                false
            }
        }
    }

    /// Every tenth of a second: refills the slow connections' budgets and reads them.
    fn service_slow(&mut self, buf: &mut [u8]) {
        let per_tick = (self.plan.slow_bytes_per_sec / 10).max(1) as usize;
        for i in 0..self.conns.len() {
            if self.conns[i].slow && matches!(self.conns[i].phase, Phase::Open) {
                self.conns[i].budget = per_tick;
                self.service(i, buf, false);
            }
        }
    }

    /// Closes `count` healthy open connections (round-robin from `cursor`) with a close frame
    /// and opens them again. Returns the next cursor.
    fn churn(&mut self, count: usize, mut cursor: usize) -> io::Result<usize> {
        let n = self.conns.len();
        let mut done = 0;
        let mut looked = 0;
        while done < count && looked < n {
            let i = cursor % n.max(1);
            cursor += 1;
            looked += 1;
            let c = &mut self.conns[i];
            if c.slow || !c.acked || !matches!(c.phase, Phase::Open) {
                continue;
            }
            // A close frame only between frames: never after half a queued pong.
            if c.outbuf.is_empty() {
                let _ = c
                    .stream
                    .write(&wire::client_close(1000, b"churn", [3, 1, 4, 1]));
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
            c.phase = Phase::Dead;
            c.acked = false;
            self.acked_here -= 1;
            self.live.acked.fetch_sub(1, Ordering::Relaxed);
            self.live.connected.fetch_sub(1, Ordering::Relaxed);
            if self.reopen(i)? {
                self.live.reconnects.fetch_add(1, Ordering::Relaxed);
                self.report.reconnects += 1;
            }
            done += 1;
        }
        Ok(cursor)
    }

    fn fail(&mut self, i: usize) {
        let c = &mut self.conns[i];
        match c.phase {
            Phase::Handshake => {
                self.in_flight -= 1;
                self.to_retry.push(i);
            }
            Phase::Open => {
                self.report.unexpected_disconnects += 1;
                self.live.disconnects.fetch_add(1, Ordering::Relaxed);
                self.live.connected.fetch_sub(1, Ordering::Relaxed);
                if c.acked {
                    self.acked_here -= 1;
                    self.live.acked.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Phase::Dead => {}
        }
        let _ = self.poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        c.phase = Phase::Dead;
    }

    /// Handles whatever complete data the connection's input holds. False when the connection
    /// must be dropped.
    fn handle(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        if matches!(c.phase, Phase::Handshake) {
            let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return true;
            };
            let head = &c.inbuf[..end];
            if !head.starts_with(b"HTTP/1.1 101")
                || !head
                    .windows(wire::EXPECTED_ACCEPT.len())
                    .any(|w| w == wire::EXPECTED_ACCEPT.as_bytes())
            {
                return false;
            }
            c.inbuf.drain(..end + 4);
            c.phase = Phase::Open;
            self.in_flight -= 1;
            let now = Instant::now();
            if !c.timed {
                c.timed = true;
                let us = now.duration_since(c.first_opened_at).as_micros() as u64;
                self.report.handshake_us.saturating_record(us.max(1));
            }
            self.last_handshake = Some(now);
            self.live.connected.fetch_add(1, Ordering::Relaxed);
            if c.subs.is_empty() {
                c.acked = true;
                self.acked_here += 1;
                self.live.acked.fetch_add(1, Ordering::Relaxed);
            } else if self.plan.protocol == crate::Protocol::JsonPubsub {
                // No acks in this protocol: subscribed once the requests are written.
                for (t, _) in &c.subs {
                    let req = format!(
                        "{{\"op\":\"sub\",\"topic\":\"{}\"}}",
                        self.plan.topics[*t as usize]
                    );
                    c.outbuf
                        .extend(wire::client_text(req.as_bytes(), [7, 13, 42, 99]));
                }
                c.acked = true;
                self.acked_here += 1;
                self.live.acked.fetch_add(1, Ordering::Relaxed);
            } else {
                let names: Vec<String> = c
                    .subs
                    .iter()
                    .map(|(t, _)| format!("\"{}\"", self.plan.topics[*t as usize]))
                    .collect();
                let req = format!(
                    "{{\"op\":\"subscribe\",\"id\":1,\"topics\":[{}]}}",
                    names.join(",")
                );
                c.outbuf
                    .extend(wire::client_text(req.as_bytes(), [7, 13, 42, 99]));
            }
        }
        let mut used = 0;
        let mut keep = true;
        while let Some(f) = wire::next_frame(&c.inbuf[used..]) {
            let len = f.len;
            match f.opcode {
                0x1 => {
                    let tally = if c.slow {
                        &mut self.report.slow
                    } else {
                        &mut self.report.healthy
                    };
                    let latency = (!c.slow).then_some(&mut self.interval);
                    let holes_before = tally.unannounced;
                    let seen = match self.plan.protocol {
                        crate::Protocol::Corecast => on_text(
                            &mut c.subs,
                            &mut c.acked,
                            f.payload,
                            &self.index,
                            tally,
                            latency,
                            &mut self.report.latency_us,
                        ),
                        crate::Protocol::JsonPubsub => crate::check::on_pub_text(
                            f.payload,
                            tally,
                            latency,
                            &mut self.report.latency_us,
                        ),
                    };
                    let holes = tally.unannounced - holes_before;
                    if holes > 0 && !c.slow {
                        self.live.unannounced.fetch_add(holes, Ordering::Relaxed);
                    }
                    match seen {
                        Seen::Msg => {
                            self.live.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Seen::Gap(n) => {
                            self.live.gap_notices.fetch_add(1, Ordering::Relaxed);
                            self.live.announced.fetch_add(n, Ordering::Relaxed);
                        }
                        Seen::FirstAck => {
                            self.acked_here += 1;
                            self.live.acked.fetch_add(1, Ordering::Relaxed);
                            // Each topic's sequence before this run published anything.
                            self.live.note_base(self.plan.topics.len(), &c.subs);
                        }
                        Seen::Other => {}
                    }
                }
                0x9 => {
                    let pong = wire::client_pong(f.payload);
                    c.outbuf.extend(pong);
                }
                0x8 | wire::BROKEN => {
                    keep = false;
                    break;
                }
                _ => {}
            }
            used += len;
        }
        c.inbuf.drain(..used);
        keep
    }

    /// The last sequence of each topic once the publisher's counts are known: the topic's
    /// sequence before the run plus what was published on it (`None` when unknown).
    fn last_published(&self) -> Option<Vec<Option<u64>>> {
        let published = self.live.published.lock().expect("not poisoned");
        let published = published.as_ref()?;
        Some(
            self.live
                .base()
                .iter()
                .zip(published)
                .map(|(base, p)| base.map(|b| b + p))
                .collect(),
        )
    }

    /// Updates `Live::tail_pending` (after the publisher finished; a no-op before).
    fn count_tail_pending(&self) {
        let Some(last) = self.last_published() else {
            return;
        };
        let pending = self
            .conns
            .iter()
            .filter(|c| matches!(c.phase, Phase::Open) && c.acked)
            .flat_map(|c| c.subs.iter())
            .filter(|&&(t, next)| last[t as usize].is_some_and(|l| next <= l))
            .count();
        self.live.pending[self.part.index].store(pending as u64, Ordering::Relaxed);
    }

    /// Stops: what this thread saw, for [`merge`].
    fn finish(self) -> Finished {
        let open = self
            .conns
            .iter()
            .filter(|c| matches!(c.phase, Phase::Open) && c.acked)
            .map(|c| StreamEnd {
                slow: c.slow,
                subs: c.subs.clone(),
            })
            .collect();
        let mut seen = vec![0u64; self.plan.topics.len()];
        for c in &self.conns {
            for &(t, next) in &c.subs {
                seen[t as usize] = seen[t as usize].max(next.saturating_sub(1));
            }
        }
        Finished {
            open,
            seen,
            owned: self.owned.len() as u64,
            unretried: self.to_retry.len() as u64,
            first_opened: self.conns.first().map(|c| c.first_opened_at),
            last_handshake: self.last_handshake,
            report: self.report,
        }
    }
}

/// Joins what the reader threads saw into one report. The end of each topic's stream is the
/// highest sequence any connection of any thread saw (open at the end or not), and no less than the topic's sequence
/// before the run plus what the publisher sent on it (`published`, when known); every open
/// subscription short of it counts as `tail_missing`. `base` is each topic's sequence before
/// the run ([`Live::base`]).
pub fn merge(
    parts: Vec<Finished>,
    published: Option<&[u64]>,
    base: &[Option<u64>],
) -> ClientReport {
    let mut report = ClientReport::empty();
    let topics = parts.iter().map(|p| p.seen.len()).max().unwrap_or(0);
    let mut last = vec![0u64; topics];
    for p in &parts {
        for (t, &seen) in p.seen.iter().enumerate() {
            last[t] = last[t].max(seen);
        }
    }
    if let Some(published) = published {
        for (t, l) in last.iter_mut().enumerate() {
            if let (Some(&Some(b)), Some(p)) = (base.get(t), published.get(t)) {
                *l = (*l).max(b + p);
            }
        }
    }
    let (mut owned, mut unretried) = (0, 0);
    let mut first_opened: Option<Instant> = None;
    let mut last_handshake: Option<Instant> = None;
    for p in parts {
        owned += p.owned;
        unretried += p.unretried;
        first_opened = match (first_opened, p.first_opened) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last_handshake = last_handshake.max(p.last_handshake);
        for c in &p.open {
            report.connections_ok += 1;
            let tally = if c.slow {
                &mut report.slow
            } else {
                &mut report.healthy
            };
            for &(t, next) in &c.subs {
                if next > 0 {
                    tally.tail_missing += last[t as usize].saturating_sub(next - 1);
                }
            }
        }
        let r = p.report;
        report.healthy.add(&r.healthy);
        report.slow.add(&r.slow);
        report.connect_failures += r.connect_failures;
        report.unexpected_disconnects += r.unexpected_disconnects;
        report.reconnects += r.reconnects;
        let _ = report.latency_us.add(&r.latency_us);
        let _ = report.handshake_us.add(&r.handshake_us);
        report.thread_cpu_secs.extend(r.thread_cpu_secs);
    }
    if let (Some(first), Some(lastc)) = (first_opened, last_handshake) {
        report.connect_span = lastc.saturating_duration_since(first);
    }
    // A connection neither working at the end nor lost after opening (counted apart) failed
    // to connect: never opened before the deadline, stuck in its handshake, or out of
    // retries.
    report.connect_failures = (report.connect_failures + unretried)
        .max(owned.saturating_sub(report.connections_ok + report.unexpected_disconnects));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connection's record in a synthetic trace: slow or not, its subscriptions' next
    /// expected sequence at the end, and the latencies (µs) it recorded.
    struct Trace {
        slow: bool,
        subs: Vec<(u32, u64)>,
        latencies: Vec<u64>,
        open: bool,
    }

    fn trace() -> Vec<Trace> {
        // Three topics; topic 0's furthest reader is connection 5, so connection 0 (on the
        // other thread when split in two) must be found 3 messages short of the end.
        let mut t = Vec::new();
        for i in 0..8u64 {
            t.push(Trace {
                slow: i % 4 == 3,
                subs: vec![((i % 3) as u32, 100 + i)],
                latencies: (1..=50).map(|k| k * 37 + i * 1000).collect(),
                open: i != 6,
            });
        }
        t[0].subs = vec![(0, 101)];
        t[5].subs = vec![(0, 104), (1, 200)];
        t
    }

    /// What a reader thread owning `members` of the trace hands back.
    fn part(trace: &[Trace], members: &[usize]) -> Finished {
        let mut report = ClientReport::empty();
        let mut seen = vec![0u64; 3];
        let mut open = Vec::new();
        for &m in members {
            let c = &trace[m];
            let tally = if c.slow {
                &mut report.slow
            } else {
                &mut report.healthy
            };
            tally.delivered += c.latencies.len() as u64;
            for &l in &c.latencies {
                if !c.slow {
                    report.latency_us.saturating_record(l);
                }
            }
            report.handshake_us.saturating_record(1000 + m as u64);
            for &(t, next) in &c.subs {
                seen[t as usize] = seen[t as usize].max(next - 1);
            }
            if c.open {
                open.push(StreamEnd {
                    slow: c.slow,
                    subs: c.subs.clone(),
                });
            } else {
                report.unexpected_disconnects += 1;
            }
        }
        report.thread_cpu_secs = vec![1.0];
        Finished {
            report,
            open,
            seen,
            owned: members.len() as u64,
            unretried: 0,
            first_opened: None,
            last_handshake: None,
        }
    }

    #[test]
    fn merged_readers_report_what_one_reader_would_on_the_same_trace() {
        let t = trace();
        let all: Vec<usize> = (0..t.len()).collect();
        let published = [110u64, 0, 0];
        let base = [Some(0), None, Some(0)];
        let one = merge(vec![part(&t, &all)], Some(&published), &base);
        let split = |of: usize| {
            (0..of)
                .map(|index| part(&t, &Part { index, of }.owned(t.len())))
                .collect::<Vec<_>>()
        };
        for of in [2, 3] {
            let many = merge(split(of), Some(&published), &base);
            assert_eq!(many.connections_ok, one.connections_ok);
            assert_eq!(many.connect_failures, one.connect_failures);
            assert_eq!(many.unexpected_disconnects, one.unexpected_disconnects);
            for (a, b) in [(&many.healthy, &one.healthy), (&many.slow, &one.slow)] {
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{of} readers");
            }
            for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(
                    many.latency_us.value_at_quantile(q),
                    one.latency_us.value_at_quantile(q)
                );
                assert_eq!(
                    many.handshake_us.value_at_quantile(q),
                    one.handshake_us.value_at_quantile(q)
                );
            }
            assert_eq!(many.latency_us.len(), one.latency_us.len());
            assert_eq!(many.thread_cpu_secs.len(), of);
        }
        // The end of topic 0 is what was published (110), past what anyone saw (103): each
        // open subscription on it is short by 110 minus what it saw.
        // Open on topic 0: connection 0 (saw 100), 3 (slow, saw 102), 5 (saw 103); 6 is closed.
        assert_eq!(
            one.healthy.tail_missing,
            (110 - 100) + (110 - 103) + tail_1_2(&t)
        );
        assert_eq!(one.connections_ok, 7);
    }

    /// Topics 1 and 2 have no published count (base unknown for 1, 0 published on 2): their
    /// end is the furthest sequence seen, by any connection, open or closed.
    fn tail_1_2(t: &[Trace]) -> u64 {
        let mut last = [0u64; 3];
        for c in t {
            for &(topic, next) in &c.subs {
                last[topic as usize] = last[topic as usize].max(next - 1);
            }
        }
        t.iter()
            .filter(|c| c.open && !c.slow)
            .flat_map(|c| c.subs.iter())
            .filter(|(topic, _)| *topic != 0)
            .map(|&(topic, next)| last[topic as usize] - (next - 1))
            .sum()
    }

    #[test]
    fn a_topic_base_is_the_lowest_any_reader_acked() {
        let live = Live::new(2);
        live.note_base(3, &[(0, 5), (1, 0)]);
        live.note_base(3, &[(0, 3)]);
        live.note_base(3, &[(0, 9), (2, 1)]);
        assert_eq!(live.base(), [Some(2), None, Some(0)]);
    }

    #[test]
    fn readers_own_every_connection_once() {
        for of in 1..=5 {
            let mut all: Vec<usize> = (0..of)
                .flat_map(|index| Part { index, of }.owned(23))
                .collect();
            all.sort_unstable();
            assert_eq!(all, (0..23).collect::<Vec<_>>(), "{of} readers");
        }
    }
}

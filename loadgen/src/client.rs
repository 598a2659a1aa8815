//! The subscriber side: thousands of WebSocket clients spread over several loopback source
//! addresses, each checking per-topic sequence continuity and recording latency from the
//! message's intended send time. The connections are partitioned over one or more reader
//! threads ([`Part`]), each with its own mio poll set, histograms and tallies; what they share
//! while running is in [`crate::live`], and [`crate::merge`] joins what they saw once they
//! stop.
//!
//! Two kinds of connection: healthy ones read everything at once and must lose nothing; slow
//! ones (a chosen fraction) read at a fixed byte rate, so the server must drop their oldest
//! frames and announce every drop with a `gap` notice. Churn closes a fraction of the healthy
//! connections each second and opens them again; a reconnected connection resumes from the
//! sequence its new `ack` reports.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::check::{on_text, Seen};
use crate::live::{latency_histogram, Live};
use crate::merge::{ClientReport, Finished, StreamEnd};
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
            live.add_interval(&cl.interval);
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
        // Added to the shared count once per read, not per message: with several reader
        // threads a shared counter touched per message would bounce between their cores.
        let mut delivered = 0u64;
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
                        Seen::Msg => delivered += 1,
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
        if delivered > 0 {
            self.live.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
        keep
    }

    /// The last sequence of each topic once the publisher's counts are known: the topic's
    /// sequence before the run plus what was published on it (`None` when unknown: no reader
    /// saw the topic's base, as with `json-pubsub`, whose acks carry no sequence).
    fn last_published(&self) -> Option<Vec<Option<u64>>> {
        let published = self.live.published.lock().expect("not poisoned");
        let published = published.as_ref()?;
        let base = self.live.base();
        Some(
            published
                .iter()
                .enumerate()
                .map(|(t, p)| base.get(t).copied().flatten().map(|b| b + p))
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
        self.live.set_pending(self.part.index, pending as u64);
    }

    /// Stops: what this thread saw, for [`crate::merge::merge`].
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

#[cfg(test)]
mod tests {
    use super::*;

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

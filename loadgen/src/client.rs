//! The subscriber side: thousands of WebSocket clients on one thread (mio), spread over several
//! loopback source addresses, each checking per-topic sequence continuity and recording latency
//! from the message's intended send time.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::wire;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    pub server: SocketAddr,
    pub path: String,
    pub connections: usize,
    /// Topic names; connection `i` subscribes to `per_conn` of them starting at `i % len`.
    pub topics: Vec<String>,
    pub per_conn: usize,
    /// Loopback source addresses to spread over (127.0.0.2, 127.0.0.3, ...).
    pub source_addrs: u8,
    /// New connections per second at most.
    pub connect_rate: u32,
}

/// Live counters, readable from other threads for the progress line.
#[derive(Default)]
pub struct Live {
    pub connected: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
}

/// What the clients saw.
pub struct ClientReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub delivered: u64,
    /// Holes in a sequence that no `gap` message announced (losses).
    pub unannounced: u64,
    pub gap_notices: u64,
    /// Messages covered by `gap` notices.
    pub announced: u64,
    pub unexpected_disconnects: u64,
    /// Delivered per (subscribed) topic index, summed over connections.
    pub per_topic: Vec<u64>,
    pub latency_us: Histogram<u64>,
    /// CPU seconds the client thread used.
    pub cpu_secs: f64,
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
    subs: Vec<(usize, u64)>,
    acked: bool,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
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

fn open(plan: &ClientPlan, i: usize) -> io::Result<TcpStream> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % plan.source_addrs.max(1) as usize) as u8);
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    match s.connect(&plan.server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// Runs the clients until `stop`; `ready` is set once every connection is subscribed (or
/// failed). Bounded: connects stop at `connect_deadline`.
pub fn run(
    plan: &ClientPlan,
    live: &Live,
    ready: &AtomicBool,
    stop: &AtomicBool,
    connect_deadline: Instant,
) -> io::Result<ClientReport> {
    let cpu0 = thread_cpu_secs();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Conn> = Vec::with_capacity(plan.connections);
    let index: HashMap<Vec<u8>, usize> = plan
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_bytes().to_vec(), i))
        .collect();
    let mut report = ClientReport {
        connections_ok: 0,
        connect_failures: 0,
        delivered: 0,
        unannounced: 0,
        gap_notices: 0,
        announced: 0,
        unexpected_disconnects: 0,
        per_topic: vec![0; plan.topics.len()],
        latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        cpu_secs: 0.0,
    };
    let host = plan.server.to_string();
    let started = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut attempted = 0usize;
    let mut retries_left = plan.connections / 10 + 10;
    let mut to_retry: Vec<usize> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Open connections at a bounded rate, retrying failures a bounded number of times.
        let allowed = ((started.elapsed().as_secs_f64() * f64::from(plan.connect_rate)) as usize
            + 1)
        .min(plan.connections);
        while attempted < allowed && Instant::now() < connect_deadline {
            let i = attempted;
            match open(plan, i) {
                Ok(mut stream) => {
                    poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let subs = (0..plan.per_conn)
                        .map(|k| ((i + k) % plan.topics.len(), 0u64))
                        .collect();
                    conns.push(Conn {
                        stream,
                        phase: Phase::Handshake,
                        inbuf: Vec::new(),
                        outbuf: wire::upgrade_request(&host, &plan.path),
                        subs,
                        acked: false,
                    });
                }
                Err(_) => {
                    report.connect_failures += 1;
                    return Err(io::Error::other("cannot open a socket (descriptors?)"));
                }
            }
            attempted += 1;
        }
        if let Some(i) = to_retry.pop() {
            if retries_left > 0 && Instant::now() < connect_deadline {
                retries_left -= 1;
                if let Ok(mut stream) = open(plan, i) {
                    poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let c = &mut conns[i];
                    c.stream = stream;
                    c.phase = Phase::Handshake;
                    c.inbuf.clear();
                    c.outbuf = wire::upgrade_request(&host, &plan.path);
                }
            } else {
                report.connect_failures += 1;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(5)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if matches!(c.phase, Phase::Dead) {
                continue;
            }
            if !c.outbuf.is_empty() {
                match c.stream.write(&c.outbuf) {
                    Ok(n) => {
                        c.outbuf.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        fail(c, &mut to_retry, &mut report, i, live);
                        continue;
                    }
                }
            }
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        fail(c, &mut to_retry, &mut report, i, live);
                        break;
                    }
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        if !handle(c, plan, &index, &mut report, live) {
                            fail(c, &mut to_retry, &mut report, i, live);
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                    Err(_) => {
                        fail(c, &mut to_retry, &mut report, i, live);
                        break;
                    }
                }
            }
            if !c.outbuf.is_empty() {
                if let Ok(n) = c.stream.write(&c.outbuf) {
                    c.outbuf.drain(..n);
                }
            }
        }
        let settled = attempted >= plan.connections
            && to_retry.is_empty()
            && live.acked.load(Ordering::Relaxed) + report.connect_failures
                >= plan.connections as u64;
        if settled || Instant::now() >= connect_deadline {
            ready.store(true, Ordering::Relaxed);
        }
    }
    report.connections_ok = conns
        .iter()
        .filter(|c| matches!(c.phase, Phase::Open) && c.acked)
        .count() as u64;
    report.cpu_secs = thread_cpu_secs() - cpu0;
    Ok(report)
}

fn fail(c: &mut Conn, retry: &mut Vec<usize>, report: &mut ClientReport, i: usize, live: &Live) {
    match c.phase {
        Phase::Handshake => retry.push(i),
        Phase::Open => {
            report.unexpected_disconnects += 1;
            if c.acked {
                live.acked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Phase::Dead => {}
    }
    c.phase = Phase::Dead;
}

/// Handles whatever complete data `c.inbuf` holds. False when the connection must be dropped.
fn handle(
    c: &mut Conn,
    plan: &ClientPlan,
    index: &HashMap<Vec<u8>, usize>,
    r: &mut ClientReport,
    live: &Live,
) -> bool {
    if matches!(c.phase, Phase::Handshake) {
        let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return true;
        };
        let head = String::from_utf8_lossy(&c.inbuf[..end]).to_string();
        if !head.starts_with("HTTP/1.1 101") || !head.contains(wire::EXPECTED_ACCEPT) {
            return false;
        }
        c.inbuf.drain(..end + 4);
        c.phase = Phase::Open;
        live.connected.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = c
            .subs
            .iter()
            .map(|(t, _)| format!("\"{}\"", plan.topics[*t]))
            .collect();
        let req = format!(
            "{{\"op\":\"subscribe\",\"id\":1,\"topics\":[{}]}}",
            names.join(",")
        );
        c.outbuf
            .extend(wire::client_text(req.as_bytes(), [7, 13, 42, 99]));
    }
    let mut used = 0;
    while let Some(f) = wire::next_frame(&c.inbuf[used..]) {
        let (opcode, len) = (f.opcode, f.len);
        match opcode {
            0x1 => on_text(c, index, r, live, used, len),
            0x9 => {
                let pong = wire::client_pong(f.payload);
                c.outbuf.extend(pong);
            }
            0x8 => return false,
            _ => {}
        }
        used += len;
    }
    c.inbuf.drain(..used);
    true
}

fn on_text(
    c: &mut Conn,
    index: &HashMap<Vec<u8>, usize>,
    r: &mut ClientReport,
    live: &Live,
    at: usize,
    len: usize,
) {
    let frame = wire::next_frame(&c.inbuf[at..at + len]).expect("whole frame");
    let p = frame.payload;
    let Some(op) = wire::str_after(p, b"\"op\":\"") else {
        return;
    };
    match op {
        b"msg" => {
            let (Some(topic), Some(seq)) = (
                wire::str_after(p, b"\"topic\":\""),
                wire::u64_after(p, b"\"seq\":"),
            ) else {
                return;
            };
            let Some(&t) = index.get(topic) else { return };
            if let Some(sub) = c.subs.iter_mut().find(|(x, _)| *x == t) {
                if sub.1 != 0 && seq > sub.1 {
                    r.unannounced += seq - sub.1;
                }
                sub.1 = seq + 1;
            }
            r.delivered += 1;
            r.per_topic[t] += 1;
            live.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(data_at) = p.windows(8).position(|w| w == b"\"data\":{") {
                if let Some(sent) = wire::u64_after(&p[data_at..], b"\"t\":") {
                    r.latency_us
                        .saturating_record(now_us().saturating_sub(sent).max(1));
                }
            }
        }
        b"gap" => {
            let topic = wire::str_after(p, b"\"topic\":\"");
            let (from, to) = (
                wire::u64_after(p, b"\"from\":"),
                wire::u64_after(p, b"\"to\":"),
            );
            if let (Some(topic), Some(from), Some(to)) = (topic, from, to) {
                r.gap_notices += 1;
                r.announced += to + 1 - from;
                if let Some(&t) = index.get(topic) {
                    if let Some(sub) = c.subs.iter_mut().find(|(x, _)| *x == t) {
                        if sub.1 != 0 && from > sub.1 {
                            r.unannounced += from - sub.1;
                        }
                        sub.1 = to + 1;
                    }
                }
            }
        }
        b"ack" => {
            let mut text = p.to_vec();
            if let Ok(v) = simd_json::to_owned_value(&mut text) {
                use simd_json::prelude::*;
                if let Some(list) = v["topics"].as_array() {
                    for e in list {
                        let (Some(name), Some(seq)) = (e["topic"].as_str(), e["seq"].as_u64())
                        else {
                            continue;
                        };
                        if let Some(&t) = index.get(name.as_bytes()) {
                            if let Some(sub) = c.subs.iter_mut().find(|(x, _)| *x == t) {
                                sub.1 = seq + 1;
                            }
                        }
                    }
                }
            }
            if !c.acked {
                c.acked = true;
                live.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {}
    }
}

//! A deliberately minimal WebSocket reader, sharing no code with loadgen's client: the
//! independent instrument loadgen's figures are checked against (docs/benchmarks.md).
//!
//! It opens N connections (blocking handshakes, one after another), subscribes connection i
//! to topic `PREFIX.(i % T)`, then reads every socket from one level-triggered epoll set,
//! counts text frames and takes each message's intended send time from its `"t":` field
//! (µs since the epoch, as loadgen's publisher writes it). Nothing else: no sequence checks,
//! and pongs only with `--pongs 1`. The publishing window starts at the first intended time seen and lasts
//! `--duration-secs`; `delivered_per_sec` is the deliveries of messages whose intended time
//! falls in it, divided by its length (loadgen's definition). Loopback only.
//!
//! `minreader --server 127.0.0.1:8080 --path /ws --connections 1000 --topics 10
//!  --duration-secs 20 [--prefix lg] [--protocol corecast|json-pubsub] [--drain-secs 5]
//!  [--pongs 0|1] [--timeline FILE]`
//! prints one JSON line: connections, delivered, delivered_per_sec, latency percentiles (µs),
//! and the reader's CPU use (% of one core). `--timeline` writes one line per 50 ms of read
//! time (after a `# start_us` line: the window's start, µs since the epoch): milliseconds
//! since the first message, messages read, their highest latency (µs) and pings read, to
//! place a latency tail against the server's heartbeat or a profile of the same run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

struct Args {
    server: SocketAddr,
    path: String,
    connections: usize,
    topics: usize,
    prefix: String,
    json_pubsub: bool,
    duration: u64,
    drain: u64,
    pongs: bool,
    timeline: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        server: "127.0.0.1:8080".parse().unwrap(),
        path: "/ws".into(),
        connections: 1000,
        topics: 10,
        prefix: "lg".into(),
        json_pubsub: false,
        duration: 20,
        drain: 5,
        pongs: false,
        timeline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => a.server = v.parse().expect("--server HOST:PORT"),
            "--path" => a.path = v,
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--topics" => a.topics = v.parse().expect("--topics N"),
            "--prefix" => a.prefix = v,
            "--protocol" => a.json_pubsub = v == "json-pubsub",
            "--duration-secs" => a.duration = v.parse().expect("--duration-secs N"),
            "--drain-secs" => a.drain = v.parse().expect("--drain-secs N"),
            "--pongs" => a.pongs = v == "1",
            "--timeline" => a.timeline = Some(v),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.server.ip().is_loopback(), "loopback servers only");
    a
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A masked client text frame with a zero mask key (valid: RFC 6455 5.3 allows any key).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

fn connect(a: &Args, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(a.server).expect("connect");
    s.set_nodelay(true).unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        a.path, a.server
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("handshake answer");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "not upgraded");
    let topic = format!("{}.{}", a.prefix, i % a.topics.max(1));
    let sub = if a.json_pubsub {
        format!("{{\"op\":\"sub\",\"topic\":\"{topic}\"}}")
    } else {
        format!("{{\"op\":\"subscribe\",\"topics\":[\"{topic}\"]}}")
    };
    s.write_all(&text_frame(sub.as_bytes())).unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

/// The number after `"t":` in a message, if any.
fn intended_us(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut v = 0u64;
    let mut any = false;
    for d in digits {
        v = v * 10 + u64::from(d - b'0');
        any = true;
    }
    any.then_some(v)
}

struct Window {
    start: Option<u64>,
    length_us: u64,
    delivered: u64,
    latency: Histogram<u64>,
    last_in_window: Instant,
    /// Per 50 ms of read time since `start`: (messages, highest latency µs, pings).
    timeline: Vec<(u32, u64, u32)>,
}

impl Window {
    fn record(&mut self, t: u64, now: u64) {
        let start = *self.start.get_or_insert(t);
        if t >= start && t < start + self.length_us {
            self.delivered += 1;
            let latency = now.saturating_sub(t).max(1);
            self.latency.saturating_record(latency);
            self.last_in_window = Instant::now();
            let slot = self.slot(now);
            slot.0 += 1;
            slot.1 = slot.1.max(latency);
        }
    }

    fn slot(&mut self, now: u64) -> &mut (u32, u64, u32) {
        let at = (now.saturating_sub(self.start.unwrap_or(now)) / 50_000) as usize;
        let at = at.min(20 * 60 * 10);
        if self.timeline.len() <= at {
            self.timeline.resize(at + 1, (0, 0, 0));
        }
        &mut self.timeline[at]
    }
}

/// Consumes whole server frames at the front of `buf` (servers never mask). Returns the
/// payloads of the pings among them, in order.
fn frames(buf: &mut Vec<u8>, w: &mut Window) -> Vec<Vec<u8>> {
    let mut pings = Vec::new();
    let mut at = 0;
    let now = now_us();
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            break;
        }
        let (len, hdr) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if rest.len() < hdr + len {
            break;
        }
        if rest[0] & 0x0f == 0x1 {
            if let Some(t) = intended_us(&rest[hdr..hdr + len]) {
                w.record(t, now);
            }
        } else if rest[0] & 0x0f == 0x9 {
            pings.push(rest[hdr..hdr + len].to_vec());
            w.slot(now).2 += 1;
        }
        at += hdr + len;
    }
    buf.drain(..at);
    pings
}

/// A masked client pong echoing `payload`, zero mask key (RFC 6455 5.5.3).
fn pong_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let a = args();
    let socks: Vec<TcpStream> = (0..a.connections).map(|i| connect(&a, i)).collect();
    eprintln!("minreader: {} connections subscribed", socks.len());
    // SAFETY: plain epoll calls on descriptors this process owns.
    let ep = unsafe { libc::epoll_create1(0) };
    assert!(ep >= 0);
    for (i, s) in socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        assert_eq!(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) },
            0
        );
    }
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); socks.len()];
    let mut w = Window {
        start: None,
        length_us: a.duration * 1_000_000,
        delivered: 0,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).unwrap(),
        last_in_window: Instant::now(),
        timeline: Vec::new(),
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut chunk = vec![0u8; 64 * 1024];
    let began = Instant::now();
    let cpu0 = cpu_secs();
    let mut window_seen_at: Option<Instant> = None;
    loop {
        // Bounded: ends `drain` seconds after the window closed (by its own clock), or after
        // ten minutes whatever happens.
        if let Some(seen) = window_seen_at {
            if seen.elapsed() > Duration::from_secs(a.duration + a.drain)
                && w.last_in_window.elapsed() > Duration::from_secs(1)
            {
                break;
            }
        }
        if began.elapsed() > Duration::from_secs(600) {
            break;
        }
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in &events[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            match (&socks[i]).read(&mut chunk) {
                Ok(0) | Err(_) => {}
                Ok(k) => {
                    bufs[i].extend_from_slice(&chunk[..k]);
                    for p in frames(&mut bufs[i], &mut w) {
                        if a.pongs {
                            // A pong is a few bytes: one write takes it whole or the
                            // connection is broken, which the run's counts will show.
                            let _ = (&socks[i]).write(&pong_frame(&p));
                        }
                    }
                }
            }
        }
        if window_seen_at.is_none() && w.start.is_some() {
            window_seen_at = Some(Instant::now());
        }
    }
    if let Some(path) = &a.timeline {
        // The window's start (µs since the epoch) first, to line the timeline up with other
        // records of the same run.
        let mut out = format!(
            "# start_us {}\nms\tmessages\tmax_latency_us\tpings\n",
            w.start.unwrap_or(0)
        );
        for (k, (n, max, pings)) in w.timeline.iter().enumerate() {
            out += &format!("{}\t{n}\t{max}\t{pings}\n", k * 50);
        }
        std::fs::write(path, out).expect("write --timeline");
    }
    let wall = began.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let h = &w.latency;
    println!(
        "{{\"connections\":{},\"delivered\":{},\"delivered_per_sec\":{:.0},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"cpu_pct\":{:.0}}}",
        socks.len(),
        w.delivered,
        w.delivered as f64 / a.duration as f64,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        100.0 * cpu / wall
    );
}

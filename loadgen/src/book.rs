//! `loadgen book`: many clients, each keeping one order book of a running `corecast demo`
//! (or any publisher of its book format, docs/market-data.md) with
//! [`corecast::watch::BookClient`]: they subscribe at random times over `join_over`, a
//! fraction of them disconnect once at a random time and resume with `since`, and every
//! message's checksum is checked. Reports the checksum failures (the target is zero), holes,
//! gaps, resumes and how many recovered, and how long a resume took from its subscribe to its
//! ack. Clients are tungstenite WebSockets in non-blocking mode on mio poll sets, one per
//! reader thread. Loopback only; bounded by `duration`.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use corecast::watch::{BookClient, BookReport};
use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// What the run does.
#[derive(Debug, Clone)]
pub struct BookPlan {
    pub server: SocketAddr,
    pub path: String,
    pub connections: usize,
    /// Book topics; connection `i` keeps `topics[i % len]`.
    pub topics: Vec<String>,
    /// Connections join at uniformly random times over this long.
    pub join_over: Duration,
    /// Fraction of connections that disconnect once and resume.
    pub resume_fraction: f64,
    pub duration: Duration,
    pub threads: usize,
}

/// What the run saw.
#[derive(Debug, Clone)]
pub struct BookRunReport {
    pub report: BookReport,
    /// Connections that could not connect or were refused.
    pub failed_connections: u64,
    /// Connections that were open at the end.
    pub open_at_end: u64,
    /// From a resume's subscribe (on its new connection) to its ack, µs.
    pub resume_ack_us: Histogram<u64>,
    pub wall: Duration,
}

impl BookRunReport {
    fn empty() -> anyhow::Result<BookRunReport> {
        Ok(BookRunReport {
            report: BookReport::default(),
            failed_connections: 0,
            open_at_end: 0,
            resume_ack_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            wall: Duration::ZERO,
        })
    }
}

struct Client {
    book: BookClient,
    ws: Option<WebSocket<TcpStream>>,
    join_at: Instant,
    resume_at: Option<Instant>,
    /// When the pending resume's subscribe went out (until its ack).
    resumed_at: Option<Instant>,
}

/// A small xorshift generator (deterministic per thread).
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn open(plan: &BookPlan) -> anyhow::Result<WebSocket<TcpStream>> {
    let stream = TcpStream::connect(plan.server).context("connect")?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{}{}", plan.server, plan.path);
    // Small buffers: thousands of clients in one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0);
    let (ws, _) = tungstenite::client::client_with_config(url.as_str(), stream, Some(config))
        .map_err(|e| anyhow::anyhow!("handshake: {e}"))?;
    ws.get_ref().set_nonblocking(true)?;
    Ok(ws)
}

/// Runs the plan; one reader thread per `threads`, each with its share of the connections.
pub fn run(plan: &BookPlan) -> anyhow::Result<BookRunReport> {
    anyhow::ensure!(!plan.topics.is_empty(), "no book topics");
    anyhow::ensure!(plan.server.ip().is_loopback(), "loopback only");
    let started = Instant::now();
    let threads = plan.threads.max(1);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let plan = plan.clone();
            std::thread::spawn(move || reader(&plan, t, threads, started))
        })
        .collect();
    let mut total = BookRunReport::empty()?;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
        total.report.add(&r.report);
        total.failed_connections += r.failed_connections;
        total.open_at_end += r.open_at_end;
        total.resume_ack_us.add(&r.resume_ack_us)?;
    }
    total.wall = started.elapsed();
    Ok(total)
}

fn reader(
    plan: &BookPlan,
    t: usize,
    threads: usize,
    started: Instant,
) -> anyhow::Result<BookRunReport> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0x2545_F491));
    let end = started + plan.duration;
    let mut clients: Vec<Client> = (t..plan.connections)
        .step_by(threads)
        .map(|i| {
            let join_at = started + plan.join_over.mul_f64(rng.unit());
            let resume_at = (rng.unit() < plan.resume_fraction).then(|| {
                let room = end.saturating_duration_since(join_at + Duration::from_secs(2));
                join_at + Duration::from_millis(500) + room.mul_f64(rng.unit() * 0.8)
            });
            Client {
                book: BookClient::new(
                    &plan.topics[i % plan.topics.len()],
                    corecast::demo::BOOK_DEPTH,
                ),
                ws: None,
                join_at,
                resume_at,
                resumed_at: None,
            }
        })
        .collect();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut report = BookRunReport::empty()?;
    let mut next_join = 0usize;
    let mut order: Vec<usize> = (0..clients.len()).collect();
    order.sort_by_key(|&i| clients[i].join_at);
    while Instant::now() < end {
        let now = Instant::now();
        // Joins that are due.
        while next_join < order.len() && clients[order[next_join]].join_at <= now {
            let i = order[next_join];
            next_join += 1;
            connect(plan, &mut clients[i], i, &poll, &mut report);
        }
        // Resumes that are due: drop the connection, open another, subscribe with since.
        for (i, c) in clients.iter_mut().enumerate() {
            if c.ws.is_some() && c.resume_at.is_some_and(|at| at <= now) {
                c.resume_at = None;
                if let Some(ws) = c.ws.take() {
                    let _ = poll
                        .registry()
                        .deregister(&mut SourceFd(&ws.get_ref().as_raw_fd()));
                }
                c.resumed_at = Some(Instant::now());
                connect(plan, c, i, &poll, &mut report);
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut clients[i];
            while let Some(ws) = c.ws.as_mut() {
                match ws.read() {
                    Ok(Message::Text(text)) => {
                        let acked = text.starts_with("{\"op\":\"ack\"");
                        match c.book.on_text(&text) {
                            Ok(Some(reply)) => {
                                let _ = ws.send(Message::text(reply));
                            }
                            Ok(None) => {}
                            Err(_) => {
                                report.failed_connections += 1;
                                c.ws = None;
                                break;
                            }
                        }
                        if acked {
                            if let Some(at) = c.resumed_at.take() {
                                let us = at.elapsed().as_micros() as u64;
                                report.resume_ack_us.saturating_record(us.max(1));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock =>
                    {
                        let _ = ws.flush();
                        break;
                    }
                    Err(_) => {
                        c.ws = None;
                        break;
                    }
                }
            }
        }
    }
    for c in &clients {
        report.report.add(&c.book.report);
        report.open_at_end += u64::from(c.ws.is_some());
    }
    Ok(report)
}

fn connect(plan: &BookPlan, c: &mut Client, i: usize, poll: &Poll, report: &mut BookRunReport) {
    match open(plan) {
        Ok(mut ws) => {
            let fd = ws.get_ref().as_raw_fd();
            let request = c.book.subscribe_request();
            // The request is small: a non-blocking socket takes it whole.
            if ws.send(Message::text(request)).is_err()
                || poll
                    .registry()
                    .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                    .is_err()
            {
                report.failed_connections += 1;
                return;
            }
            c.ws = Some(ws);
        }
        Err(_) => report.failed_connections += 1,
    }
}

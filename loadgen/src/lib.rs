//! # loadgen
//!
//! A load generator for corecast with its own WebSocket client path: a paced open-loop
//! publisher over the ingest port ([`publisher`]) and thousands of subscribing clients on one
//! thread ([`client`], [`wire`]). Every run checks correctness (per-topic sequence continuity,
//! every hole either announced by a `gap` or counted as a loss) and reports latency from each
//! message's intended send time, its own CPU and the server's.
//!
//! Scenarios ([`scenario`]): fanout and latency (one paced run), soak (long run with churn and
//! slow consumers, periodic reports), capacity (stepped rate until delivery falls behind),
//! connect (handshake storm) and idle (memory per connection); and [`book`]: clients that keep
//! the demo's order books, resume, and check every checksum.

pub mod book;
pub mod check;
pub mod client;
pub mod live;
pub mod merge;
pub mod monitor;
pub mod publisher;
pub mod report;
pub mod scenario;
pub mod schema;
pub mod stalls;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

pub use report::{CapacityReport, ConnectReport, IdleReport, RunReport};
pub use scenario::{run, run_capacity, run_connect, run_idle, CapacityPlan};

/// How connections choose their topics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Connection `i` takes topics `i, i+1, ...` (mod T): every topic equally popular.
    Uniform,
    /// Topics drawn by Zipf's law with exponent `s` (topic 0 the most popular), the shape of
    /// real market data where a few symbols draw most subscribers.
    Zipf(f64),
}

/// The wire protocol loadgen drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// corecast's (docs/protocol.md): subscribe/ack, `msg` with per-topic `seq`, `gap`
    /// notices; the publisher writes JSON lines to the ingest port. Every check applies.
    #[default]
    Corecast,
    /// The minimal JSON pub/sub of `../shared/peers/` (the uWebSockets broadcast server):
    /// `{"op":"sub","topic":T}` subscribes (no ack); the publisher is a WebSocket client of
    /// its own that sends `{"op":"pub","topic":T,"t":N,"p":...}`, forwarded unchanged to the
    /// subscribers. No sequences or gaps exist: deliveries (against what was expected),
    /// latency and CPU are measured.
    JsonPubsub,
}

impl Protocol {
    /// The name used on the command line and in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Corecast => "corecast",
            Protocol::JsonPubsub => "json-pubsub",
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The wire protocol the server speaks.
    pub protocol: Protocol,
    pub server: SocketAddr,
    pub path: String,
    pub ingest: SocketAddr,
    pub connections: usize,
    pub topics: usize,
    /// Subscriptions per connection; 0 = connections only complete the handshake.
    pub subscriptions_per_conn: usize,
    pub distribution: Distribution,
    pub rate: u64,
    pub payload_bytes: usize,
    pub duration: Duration,
    pub source_addrs: u8,
    /// New connections per second at most; 0 = as fast as the server takes them.
    pub connect_rate: u32,
    /// Handshakes in progress at most.
    pub max_in_flight: usize,
    /// Prefix of the topic names (`<prefix>.<n>`).
    pub topic_prefix: String,
    pub server_pid: Option<u32>,
    /// Fraction of connections that read slowly (0..1).
    pub slow_fraction: f64,
    /// A slow connection reads this fraction of its expected byte rate (0..1).
    pub slow_speed: f64,
    /// Fraction of healthy connections closed and reopened each second.
    pub churn_per_sec: f64,
    /// Print a periodic report line this often (soak); `None` = none.
    pub report_every: Option<Duration>,
    /// Show the live progress line.
    pub progress: bool,
    /// Reader threads, connections partitioned over them (`client::Part`); 0 = the default
    /// of [`default_reader_threads`].
    pub threads: usize,
}

impl RunPlan {
    /// A plan with the common defaults, for `connections` clients on `topics` topics.
    pub fn new(server: SocketAddr, ingest: SocketAddr, connections: usize, topics: usize) -> Self {
        RunPlan {
            protocol: Protocol::Corecast,
            server,
            path: "/ws".into(),
            ingest,
            connections,
            topics,
            subscriptions_per_conn: 1,
            distribution: Distribution::Uniform,
            rate: 1000,
            payload_bytes: 100,
            duration: Duration::from_secs(10),
            source_addrs: 4,
            connect_rate: 5000,
            max_in_flight: 1000,
            topic_prefix: "lg".into(),
            server_pid: None,
            slow_fraction: 0.0,
            slow_speed: 0.5,
            churn_per_sec: 0.0,
            report_every: None,
            progress: false,
            threads: 0,
        }
    }

    /// Reader threads this run uses: `threads`, or the default for `server_pid`.
    pub fn reader_threads(&self) -> usize {
        match self.threads {
            0 => default_reader_threads(self.server_pid),
            n => n,
        }
    }

    /// Topic names, `<prefix>.<n>`.
    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics.max(1))
            .map(|i| format!("{}.{i}", self.topic_prefix))
            .collect()
    }

    /// The topics each connection subscribes to. Deterministic: the same plan gives the same
    /// assignment.
    pub fn assignments(&self) -> Vec<Vec<u32>> {
        let t = self.topics.max(1);
        let k = self.subscriptions_per_conn.min(t);
        match self.distribution {
            Distribution::Uniform => (0..self.connections)
                .map(|i| (0..k).map(|j| ((i + j) % t) as u32).collect())
                .collect(),
            Distribution::Zipf(s) => {
                // Cumulative weights 1/rank^s, sampled by binary search.
                let mut cdf = Vec::with_capacity(t);
                let mut sum = 0.0;
                for r in 1..=t {
                    sum += 1.0 / (r as f64).powf(s);
                    cdf.push(sum);
                }
                let mut rng = SplitMix(0x5eed);
                (0..self.connections)
                    .map(|_| {
                        let mut mine: Vec<u32> = Vec::with_capacity(k);
                        // Bounded: after 64 draws per subscription, fill with the next free.
                        let mut tries = 64 * k;
                        while mine.len() < k && tries > 0 {
                            tries -= 1;
                            let x = rng.unit() * sum;
                            let pick = cdf.partition_point(|&c| c < x).min(t - 1) as u32;
                            if !mine.contains(&pick) {
                                mine.push(pick);
                            }
                        }
                        let mut next = 0u32;
                        while mine.len() < k {
                            if !mine.contains(&next) {
                                mine.push(next);
                            }
                            next += 1;
                        }
                        mine
                    })
                    .collect()
            }
        }
    }

    /// Which connections read slowly: `slow_fraction` of them, spread evenly.
    pub fn slow_set(&self) -> Vec<bool> {
        let f = self.slow_fraction.clamp(0.0, 1.0);
        (0..self.connections)
            .map(|i| (((i + 1) as f64) * f).floor() > ((i as f64) * f).floor())
            .collect()
    }

    /// Bytes per second a slow connection reads: `slow_speed` of what its busiest share of
    /// the traffic would need (frame size estimated as payload plus 80 bytes of envelope).
    pub fn slow_bytes_per_sec(&self) -> u64 {
        let per_topic = self.rate as f64 / self.topics.max(1) as f64;
        let frame = (self.payload_bytes + 80) as f64;
        let need = per_topic * self.subscriptions_per_conn.max(1) as f64 * frame;
        (need * self.slow_speed.clamp(0.0, 1.0)) as u64
    }
}

/// A small deterministic generator (SplitMix64) for reproducible topic assignments.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The CPUs thread `tid` may run on (`sched_getaffinity(2)`; 0 = the calling thread),
/// ascending, or `None` when the thread is gone or not ours to ask about.
pub(crate) fn affinity(tid: libc::pid_t) -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits; sched_getaffinity writes at most its size into it, and
    // CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect(),
        )
    }
}

/// The default number of reader threads (`--threads`): the CPUs loadgen may run on, minus
/// those a thread of process `server_pid` is pinned to (a thread whose affinity is exactly
/// one CPU, as corecast pins its dispatcher and shards and as `taskset -c N` pins a whole
/// process), at least 1. Without `server_pid`, every CPU loadgen may run on. On a host with
/// cores to spare this gives the readers the cores the server does not use; on a 2-core
/// machine running `corecast serve` (dispatcher on CPU 0, shard on CPU 1) it is 1.
pub fn default_reader_threads(server_pid: Option<u32>) -> usize {
    let mine = affinity(0).unwrap_or_default();
    let mut pinned = std::collections::BTreeSet::new();
    if let Some(pid) = server_pid {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                if let Some([cpu]) = affinity(tid).as_deref() {
                    pinned.insert(*cpu);
                }
            }
        }
    }
    mine.iter().filter(|c| !pinned.contains(*c)).count().max(1)
}

/// CPU seconds (user + system) of a process (`/proc/PID/stat`) or thread
/// (`/proc/self/task/TID/stat`).
pub fn stat_cpu_secs(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// CPU seconds (user + system) of process `pid`, from /proc.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
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

/// Bytes of kernel slab memory in TCP socket objects (`TCP` and `sock_inode_cache`, active
/// objects times object size; /proc/slabinfo, readable by root), all processes. `None` when
/// unreadable.
pub fn tcp_slab_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let mut total = 0u64;
    let mut found = false;
    for line in s.lines() {
        let mut f = line.split_whitespace();
        let name = f.next()?;
        if name == "TCP" || name == "sock_inode_cache" {
            let active: u64 = f.next()?.parse().ok()?;
            let _num = f.next()?;
            let size: u64 = f.next()?.parse().ok()?;
            total += active * size;
            found = true;
        }
    }
    found.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize, t: usize, k: usize) -> RunPlan {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut p = RunPlan::new(a, a, n, t);
        p.subscriptions_per_conn = k;
        p
    }

    #[test]
    fn uniform_spreads_evenly() {
        let a = plan(1000, 10, 2).assignments();
        let mut count = [0; 10];
        for subs in &a {
            assert_eq!(subs.len(), 2);
            assert_ne!(subs[0], subs[1]);
            for &t in subs {
                count[t as usize] += 1;
            }
        }
        assert!(count.iter().all(|&c| c == 200), "{count:?}");
    }

    #[test]
    fn zipf_favours_the_first_topics_and_never_repeats() {
        let mut p = plan(5000, 100, 3);
        p.distribution = Distribution::Zipf(1.0);
        let a = p.assignments();
        assert_eq!(a, p.assignments(), "deterministic");
        let mut count = vec![0u32; 100];
        for subs in &a {
            assert_eq!(subs.len(), 3);
            let mut s = subs.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), 3, "distinct topics");
            for &t in subs {
                count[t as usize] += 1;
            }
        }
        assert!(count[0] > 5 * count[50], "{} vs {}", count[0], count[50]);
        assert!(count[0] > count[1] && count[1] > count[10]);
    }

    #[test]
    fn zipf_with_every_topic_taken_still_terminates() {
        let mut p = plan(10, 4, 4);
        p.distribution = Distribution::Zipf(3.0);
        for subs in p.assignments() {
            let mut s = subs.clone();
            s.sort_unstable();
            assert_eq!(s, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn slow_fraction_picks_that_many() {
        let mut p = plan(1000, 10, 1);
        p.slow_fraction = 0.05;
        assert_eq!(p.slow_set().iter().filter(|&&s| s).count(), 50);
        p.slow_fraction = 0.0;
        assert!(p.slow_set().iter().all(|&s| !s));
    }
}

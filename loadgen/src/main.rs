//! `loadgen`: drives a corecast server over loopback and reports honestly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for corecast (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N connections, T topics, K subscriptions each, paced publisher at R msgs/s.
    Fanout(Common),
    /// Open-loop latency run: same engine, defaults of B2 (1,000 connections, 10 topics, 1,000 msgs/s).
    Latency(Common),
    /// Long fanout with churn and slow consumers, periodic reports (B5).
    Soak(SoakArgs),
    /// Steps the publish rate up until delivery falls behind or p99 passes a bound (B1).
    Capacity(CapacityArgs),
    /// Opens N connections as fast as the server takes them; handshake latency (B4).
    Connect(Common),
    /// N idle subscribed connections held for the duration; server RSS per connection (B3).
    Idle(Common),
    /// N clients keeping the order books of a running `corecast demo` (joining at random
    /// times, a fraction resuming once), checking every checksum.
    Book(BookArgs),
}

#[derive(Args, Clone)]
struct BookArgs {
    /// Server WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    server: String,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Books of the demo's first N symbols (`book.BTCUSD`, ...); connection i keeps book i % N.
    #[arg(long, default_value_t = 300)]
    symbols: usize,
    /// Connections join at random times over this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    join_over: Duration,
    /// Fraction of connections that disconnect once at a random time and resume with `since`.
    #[arg(long, default_value_t = 0.2)]
    resume_fraction: f64,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Reader threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct Common {
    /// Wire protocol: corecast, or json-pubsub (the uWebSockets broadcast server of
    /// ../shared/peers; the publisher then connects to --server, not --ingest).
    #[arg(long, value_enum, default_value_t = Proto::Corecast)]
    protocol: Proto,
    /// Server WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    server: String,
    /// Publisher ingest address (loopback only).
    #[arg(long, default_value = "127.0.0.1:9000")]
    ingest: SocketAddr,
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long)]
    topics: Option<usize>,
    /// Subscriptions per connection (0: handshake only).
    #[arg(long)]
    subscriptions_per_conn: Option<usize>,
    /// How connections pick topics: uniform, or zipf (topic 0 most popular).
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    distribution: Dist,
    /// Exponent of the zipf distribution.
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    /// Published messages per second, all topics together.
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Publishing time, e.g. 30s, 500ms, 2m (connect: the time allowed to connect).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency histogram (HdrHistogram percentile text, µs) here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Server process to report CPU and memory for.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Loopback source addresses to spread connections over (127.0.0.2 ...).
    #[arg(long, default_value_t = 4)]
    source_addrs: u8,
    /// New connections per second at most; 0 = as fast as the server takes them.
    #[arg(long)]
    connect_rate: Option<u32>,
    /// Handshakes in progress at most.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Reader threads, the connections partitioned over them, each with its own epoll set
    /// (default: the CPUs loadgen may run on minus those the --server-pid process's threads
    /// are pinned to, at least 1).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Proto {
    Corecast,
    JsonPubsub,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Dist {
    Uniform,
    Zipf,
}

#[derive(Args, Clone)]
struct SoakArgs {
    #[command(flatten)]
    common: Common,
    /// Fraction of the healthy connections closed and reopened each second.
    #[arg(long, default_value_t = 0.01)]
    churn: f64,
    /// Fraction of connections that read slowly.
    #[arg(long, default_value_t = 0.05)]
    slow_fraction: f64,
    /// A slow connection reads this fraction of the bytes its subscriptions need.
    #[arg(long, default_value_t = 0.5)]
    slow_speed: f64,
    /// How often to print a report line.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    report_every: Duration,
    /// RSS growth is judged from this point on (after warm-up).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    warmup: Duration,
}

#[derive(Args, Clone)]
struct CapacityArgs {
    #[command(flatten)]
    common: Common,
    /// Published msgs/s of the first step (default: --rate, else 1000).
    #[arg(long)]
    start_rate: Option<u64>,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Publishing time of each step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    step_duration: Duration,
    /// A step whose p99 passes this bound is not sustainable, ms.
    #[arg(long, default_value_t = 250)]
    p99_bound_ms: u64,
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    }
}

/// `ws://HOST:PORT/PATH` -> (address, path); loopback only.
fn parse_server(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("ws://")
        .context("--server must start with ws://")?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = hostport.parse().context("--server needs an IP:PORT")?;
    let path = if path.is_empty() { "/ws" } else { path };
    Ok((addr, path.to_string()))
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Per-scenario defaults: (connections, topics, subscriptions per connection, rate, duration,
/// connect rate).
struct Defaults(usize, usize, usize, u64, Duration, u32);

fn plan(c: &Common, d: Defaults) -> anyhow::Result<loadgen::RunPlan> {
    let (server, path) = parse_server(&c.server)?;
    if !server.ip().is_loopback() || !c.ingest.ip().is_loopback() {
        bail!("loadgen only targets loopback addresses (127.0.0.0/8)");
    }
    if c.source_addrs == 0 || c.source_addrs > 250 {
        bail!("--source-addrs must be 1..=250");
    }
    let mut p = loadgen::RunPlan::new(
        server,
        c.ingest,
        c.connections.unwrap_or(d.0),
        c.topics.unwrap_or(d.1).max(1),
    );
    p.path = path;
    p.protocol = match c.protocol {
        Proto::Corecast => loadgen::Protocol::Corecast,
        Proto::JsonPubsub => loadgen::Protocol::JsonPubsub,
    };
    p.subscriptions_per_conn = c.subscriptions_per_conn.unwrap_or(d.2);
    p.distribution = match c.distribution {
        Dist::Uniform => loadgen::Distribution::Uniform,
        Dist::Zipf => loadgen::Distribution::Zipf(c.zipf_exponent),
    };
    p.rate = c.rate.unwrap_or(d.3).max(1);
    p.payload_bytes = c.payload_bytes;
    p.duration = c.duration.unwrap_or(d.4);
    p.source_addrs = c.source_addrs;
    p.connect_rate = c.connect_rate.unwrap_or(d.5);
    p.max_in_flight = c.max_in_flight.max(1);
    p.server_pid = c.server_pid;
    p.progress = !c.quiet;
    p.threads = match c.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => 0,
    };
    Ok(p)
}

fn write(path: &Option<PathBuf>, text: String) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_nofile();
    let secs = Duration::from_secs;
    match cli.scenario {
        Scenario::Fanout(c) => run(
            &c,
            plan(&c, Defaults(1000, 100, 1, 10_000, secs(10), 5000))?,
        ),
        Scenario::Latency(c) => run(&c, plan(&c, Defaults(1000, 10, 1, 1000, secs(10), 5000))?),
        Scenario::Soak(s) => {
            let mut p = plan(&s.common, Defaults(10_000, 100, 1, 5000, secs(60), 5000))?;
            if !(0.0..=1.0).contains(&s.churn) || !(0.0..=1.0).contains(&s.slow_fraction) {
                bail!("--churn and --slow-fraction are fractions (0..=1)");
            }
            if !(0.0..=1.0).contains(&s.slow_speed) || s.slow_speed == 0.0 {
                bail!("--slow-speed must be in (0, 1]");
            }
            p.churn_per_sec = s.churn;
            p.slow_fraction = s.slow_fraction;
            p.slow_speed = s.slow_speed;
            p.report_every = Some(s.report_every);
            let r = loadgen::run(&p)?;
            if r.slow_connections > 0 && r.slow.gap_notices == 0 {
                eprintln!(
                    "loadgen: note: the slow connections were never dropped from (their queues and socket buffers held up); lower --slow-speed or run longer to see gap notices"
                );
            }
            if let Some((base, max, growth)) = r.rss_growth(s.warmup) {
                let trend = r.rss_trend(s.warmup).map_or(String::new(), |kib_per_min| {
                    format!(
                        "; trend {:+.2} MiB per 10 min (least squares over the samples)",
                        kib_per_min * 10.0 / 1024.0
                    )
                });
                eprintln!(
                    "loadgen: server RSS after warm-up {:.1} MiB, at most {:.1} MiB later: {growth:+.1}%{trend}",
                    base as f64 / 1024.0,
                    max as f64 / 1024.0
                );
            }
            finish_run(&s.common, &r)
        }
        Scenario::Capacity(a) => {
            let p = plan(&a.common, Defaults(10_000, 100, 1, 1000, secs(5), 5000))?;
            let cap = loadgen::CapacityPlan {
                start_rate: a.start_rate.unwrap_or(p.rate),
                factor: a.step_factor,
                step: a.step_duration,
                p99_bound: Duration::from_millis(a.p99_bound_ms),
                max_steps: a.max_steps.max(1),
            };
            if cap.factor <= 1.0 {
                bail!("--step-factor must be greater than 1");
            }
            let r = loadgen::run_capacity(&p, &cap)?;
            eprint!("{}", r.summary());
            write(&a.common.json, r.json() + "\n")?;
            write(&a.common.hgrm, loadgen::report::hgrm(&r.latency_us))?;
            if r.lost > 0 || r.unexpected_disconnects > 0 || r.connect_failures > 0 {
                bail!("healthy connections lost messages or connections");
            }
            Ok(())
        }
        Scenario::Connect(c) => {
            let p = plan(&c, Defaults(10_000, 1, 0, 1, secs(30), 0))?;
            let r = loadgen::run_connect(&p)?;
            eprint!("{}", r.summary());
            write(&c.json, r.json() + "\n")?;
            write(&c.hgrm, loadgen::report::hgrm(&r.handshake_us))?;
            if r.connect_failures > 0 || r.connections_ok < p.connections as u64 {
                bail!(
                    "{} of {} connections established",
                    r.connections_ok,
                    p.connections
                );
            }
            Ok(())
        }
        Scenario::Book(b) => {
            let (server, path) = parse_server(&b.server)?;
            if !(0.0..=1.0).contains(&b.resume_fraction) {
                bail!("--resume-fraction is a fraction (0..=1)");
            }
            let topics = corecast::demo::symbols(b.symbols.clamp(1, 300))
                .into_iter()
                .map(|s| format!("book.{s}"))
                .collect();
            let r = loadgen::book::run(&loadgen::book::BookPlan {
                server,
                path,
                connections: b.connections,
                topics,
                join_over: b.join_over,
                resume_fraction: b.resume_fraction,
                duration: b.duration,
                threads: b.threads,
            })?;
            let h = &r.resume_ack_us;
            let x = &r.report;
            eprintln!(
                "loadgen book: {} connections ({} failed, {} open at the end) over {:.1} s\n\
                 checked {} checksums: {} failed | snapshots {} | holes {} | gaps {}\n\
                 resumes {} ({} recovered) | resume -> ack p50 {} us p99 {} us max {} us",
                b.connections,
                r.failed_connections,
                r.open_at_end,
                r.wall.as_secs_f64(),
                x.checked,
                x.failed,
                x.snapshots,
                x.holes,
                x.gaps,
                x.resumes,
                x.recovered,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max()
            );
            let json = simd_json::json!({
                "connections": b.connections as u64,
                "failed_connections": r.failed_connections,
                "open_at_end": r.open_at_end,
                "wall_s": r.wall.as_secs_f64(),
                "checked": x.checked,
                "checksum_failures": x.failed,
                "snapshots": x.snapshots,
                "holes": x.holes,
                "gaps": x.gaps,
                "resumes": x.resumes,
                "recovered": x.recovered,
                "resume_to_ack_us": {"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "max": h.max()},
            });
            write(&b.json, simd_json::prelude::Writable::encode(&json) + "\n")?;
            if x.failed > 0 || x.holes > 0 {
                bail!(
                    "{} checksum failures, {} unannounced holes",
                    x.failed,
                    x.holes
                );
            }
            Ok(())
        }
        Scenario::Idle(c) => {
            let p = plan(&c, Defaults(10_000, 100, 1, 1, secs(5), 5000))?;
            let r = loadgen::run_idle(&p)?;
            eprint!("{}", r.summary());
            write(&c.json, r.json() + "\n")?;
            if r.connect_failures > 0 {
                bail!("{} connections failed", r.connect_failures);
            }
            Ok(())
        }
    }
}

fn run(c: &Common, p: loadgen::RunPlan) -> anyhow::Result<()> {
    let r = loadgen::run(&p)?;
    finish_run(c, &r)
}

fn finish_run(c: &Common, r: &loadgen::RunReport) -> anyhow::Result<()> {
    eprint!("{}", r.summary());
    write(&c.json, r.json() + "\n")?;
    write(&c.hgrm, r.hgrm())?;
    if r.lost > 0 || r.unexpected_disconnects > 0 || r.connect_failures > 0 {
        bail!("healthy connections lost messages or connections");
    }
    if r.disorder() > 0 {
        bail!(
            "{} messages repeated, out of order or misrouted",
            r.disorder()
        );
    }
    if r.slow_silent() > 0 {
        bail!(
            "slow connections missed {} messages without a gap notice",
            r.slow_silent()
        );
    }
    Ok(())
}

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
    /// N idle subscribed connections held for the duration; server RSS per connection (B3).
    Idle(Common),
}

#[derive(Args, Clone)]
struct Common {
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
    #[arg(long, default_value_t = 1)]
    subscriptions_per_conn: usize,
    /// Published messages per second, all topics together.
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Publishing time, e.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency histogram (HdrHistogram percentile text, µs) here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Server process to report CPU for.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Loopback source addresses to spread connections over (127.0.0.2 ...).
    #[arg(long, default_value_t = 4)]
    source_addrs: u8,
    /// New connections per second at most.
    #[arg(long, default_value_t = 5000)]
    connect_rate: u32,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (c, defaults, idle) = match cli.scenario {
        Scenario::Fanout(c) => (c, (1000, 100, 10_000), false),
        Scenario::Latency(c) => (c, (1000, 10, 1000), false),
        Scenario::Idle(c) => (c, (10_000, 100, 1), true),
    };
    let (server, path) = parse_server(&c.server)?;
    if !server.ip().is_loopback() || !c.ingest.ip().is_loopback() {
        bail!("loadgen only targets loopback addresses (127.0.0.0/8)");
    }
    raise_nofile();
    let plan = loadgen::RunPlan {
        server,
        path,
        ingest: c.ingest,
        connections: c.connections.unwrap_or(defaults.0),
        topics: c.topics.unwrap_or(defaults.1).max(1),
        subscriptions_per_conn: c.subscriptions_per_conn,
        rate: c.rate.unwrap_or(defaults.2).max(1),
        payload_bytes: c.payload_bytes,
        duration: c.duration,
        source_addrs: c.source_addrs.max(1),
        connect_rate: c.connect_rate.max(1),
        topic_prefix: "lg".into(),
        server_pid: c.server_pid,
        progress: true,
    };
    if idle {
        let r = loadgen::run_idle(&plan)?;
        eprintln!(
            "loadgen: {} idle connections ok, {} failed | server RSS {:?} -> {:?} KiB, {} bytes per connection | kernel TCP pages {:?} -> {:?}",
            r.connections_ok,
            r.connect_failures,
            r.server_rss_before_kib,
            r.server_rss_after_kib,
            r.rss_per_conn().map_or("n/a (no --server-pid)".into(), |v| format!("{v:.0}")),
            r.kernel_tcp_pages_before,
            r.kernel_tcp_pages_after
        );
        if let Some(p) = &c.json {
            std::fs::write(p, r.json() + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
        }
        if r.connect_failures > 0 {
            bail!("{} connections failed", r.connect_failures);
        }
        return Ok(());
    }
    let r = loadgen::run(&plan)?;
    let q = |p: f64| r.latency_us.value_at_quantile(p);
    eprintln!(
        "loadgen: {} connections ok, {} failed | published {} delivered {} of {} expected ({:.0}/s) | lost {} | gap notices {} covering {} | disconnects {}",
        r.connections_ok, r.connect_failures, r.published, r.delivered, r.expected,
        r.delivered_per_sec(), r.lost, r.gap_notices, r.announced, r.unexpected_disconnects
    );
    eprintln!(
        "loadgen: latency from intended send time: p50 {}us p90 {}us p99 {}us p99.9 {}us max {}us | cpu loadgen {:.0}% server {}",
        q(0.5), q(0.9), q(0.99), q(0.999), r.latency_us.max(), r.client_cpu_pct,
        r.server_cpu_pct.map_or("n/a".into(), |v| format!("{v:.0}%"))
    );
    if r.loadgen_saturated {
        eprintln!(
            "loadgen: WARNING: the client thread used over 90% of a core; loadgen may be the limit"
        );
    }
    if let Some(p) = &c.json {
        std::fs::write(p, r.json() + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &c.hgrm {
        std::fs::write(p, r.hgrm()).with_context(|| format!("writing {}", p.display()))?;
    }
    if r.lost > 0 || r.unexpected_disconnects > 0 || r.connect_failures > 0 {
        bail!("healthy connections lost messages or connections");
    }
    Ok(())
}

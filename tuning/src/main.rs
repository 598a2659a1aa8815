//! `sweep`: runs loadgen against a fresh `corecast serve` once per value of one parameter and
//! writes a report folder: each run's JSON and `.hgrm`, the server's log, and `index.html`
//! with the percentile curves side by side and a table of throughput, latency and CPU.
//!
//! ```text
//! sweep run --param shard.batch_window_us --values 0,250,1000 --scenario fanout \
//!     --profile tuning/profiles/throughput.toml --out tuning/reports/batch-window \
//!     -- --connections 2000 --topics 100 --rate 5000 --duration 10s
//! sweep render tuning/reports/batch-window
//! ```
//!
//! A parameter named `section.field` is a server setting (`corecast serve --set`); one named
//! `loadgen.flag` is a loadgen flag (`--flag VALUE`), e.g. `loadgen.payload-bytes`.
//!
//! `--param server --values corecast,uws,corecast,uws,...` puts corecast and uWebSockets'
//! broadcast server (`--uws PATH`, built from ../shared/peers; one thread, pinned with
//! `taskset` to `--uws-core`) through the same loadgen workload, alternating in the order
//! given; loadgen drives uWebSockets with `--protocol json-pubsub`:
//!
//! ```text
//! sweep run --param server --values corecast,uws,corecast,uws,corecast,uws --uws /path/to/uws_broadcast \
//!     --out tuning/reports/versus-b2 -- --connections 1000 --topics 10 --rate 1000 --duration 20s
//! ```

mod report;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sweep", about = "Tuning sweeps for corecast (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one loadgen scenario per parameter value and writes the report folder.
    Run(Box<RunArgs>),
    /// Writes index.html again from a report folder's runs.
    Render {
        /// The report folder.
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// `section.field` of the server configuration, or `loadgen.flag`.
    #[arg(long)]
    param: String,
    /// Comma-separated values, one run each.
    #[arg(long, value_delimiter = ',', required = true)]
    values: Vec<String>,
    /// loadgen scenario: fanout or latency.
    #[arg(long, default_value = "fanout")]
    scenario: String,
    /// Configuration layers for the server (repeatable), e.g. a tuning profile.
    #[arg(long)]
    profile: Vec<PathBuf>,
    /// Extra server settings, `section.field=value` (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// The report folder (created).
    #[arg(long)]
    out: PathBuf,
    /// Title of the report.
    #[arg(long)]
    title: Option<String>,
    /// First port used; run i listens on base+2i and ingests on base+2i+1.
    #[arg(long, default_value_t = 18080)]
    base_port: u16,
    /// The corecast binary (default: next to this one).
    #[arg(long)]
    corecast: Option<PathBuf>,
    /// The loadgen binary (default: next to this one).
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// uWebSockets' broadcast server binary, for `--param server` runs with the value `uws`.
    #[arg(long)]
    uws: Option<PathBuf>,
    /// CPU the uWebSockets server is pinned to (it is one thread). Default 0.
    #[arg(long, default_value_t = 0)]
    uws_core: usize,
    /// Arguments passed to every loadgen run (after `--`).
    #[arg(last = true)]
    loadgen_args: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => run(&args),
        Cmd::Render { dir } => {
            let page = report::render(&dir)?;
            eprintln!("sweep: wrote {}", page.display());
            Ok(())
        }
    }
}

/// A binary next to this executable (cargo puts the workspace's binaries together).
fn sibling(name: &str, given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("locating sweep")?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found; build it first (cargo build --release --workspace) or pass --{name}",
            p.display()
        );
    }
    Ok(p)
}

fn run(a: &RunArgs) -> anyhow::Result<()> {
    if !matches!(a.scenario.as_str(), "fanout" | "latency") {
        bail!("--scenario must be fanout or latency (their reports share one shape)");
    }
    let versus = a.param == "server";
    let (server_param, loadgen_flag) = match a.param.strip_prefix("loadgen.") {
        Some(flag) => (None, Some(flag.to_string())),
        None if versus => (None, None),
        None if a.param.contains('.') => (Some(a.param.clone()), None),
        None => bail!("--param must be section.field (server), loadgen.flag, or server"),
    };
    if versus {
        if let Some(v) = a
            .values
            .iter()
            .find(|v| !matches!(v.as_str(), "corecast" | "uws"))
        {
            bail!("--param server takes the values corecast and uws, not {v:?}");
        }
        if a.values.iter().any(|v| v == "uws") && a.uws.is_none() {
            bail!("--param server with uws needs --uws PATH (../shared/peers/README.md)");
        }
    }
    let corecast = sibling("corecast", &a.corecast)?;
    let loadgen = sibling("loadgen", &a.loadgen)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut manifest = report::Manifest {
        title: a
            .title
            .clone()
            .unwrap_or_else(|| format!("corecast sweep over {}", a.param)),
        param: a.param.clone(),
        machine: report::machine(),
        date: report::today(),
        runs: Vec::new(),
    };
    for (i, value) in a.values.iter().enumerate() {
        let port = a.base_port + 2 * i as u16;
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let ingest: SocketAddr = ([127, 0, 0, 1], port + 1).into();
        let stem = format!("run-{i:02}-{}", sanitize(value));
        let uws = versus && value == "uws";
        let mut server_cmd = if uws {
            let mut c = Command::new("taskset");
            c.args(["-c", &a.uws_core.to_string()])
                .arg(a.uws.as_ref().expect("checked above"))
                .arg(port.to_string());
            c
        } else {
            let mut c = Command::new(&corecast);
            c.arg("serve");
            for p in &a.profile {
                c.arg("--config").arg(p);
            }
            c.args(["--set", &format!("server.listen=\"{listen}\"")])
                .args(["--set", &format!("server.ingest=\"{ingest}\"")]);
            for s in &a.set {
                c.args(["--set", s]);
            }
            c
        };
        if let Some(p) = &server_param {
            server_cmd.args(["--set", &format!("{p}={value}")]);
        }
        // A run that fails before writing its results must not show an earlier sweep's.
        for ext in ["json", "hgrm", "loadgen.txt"] {
            let _ = std::fs::remove_file(a.out.join(format!("{stem}.{ext}")));
        }
        let log = std::fs::File::create(a.out.join(format!("{stem}.server.log")))?;
        server_cmd.stdout(Stdio::null()).stderr(log);
        let server_line = describe(&server_cmd);
        eprintln!(
            "sweep: [{}/{}] {} = {value}",
            i + 1,
            a.values.len(),
            a.param
        );
        let mut server = server_cmd.spawn().context("starting the server")?;
        if let Err(e) = wait_listening(listen, &mut server) {
            stop(&mut server);
            return Err(e);
        }
        let mut lg = Command::new(&loadgen);
        lg.arg(&a.scenario)
            .args(["--server", &format!("ws://{listen}/ws")])
            .args(["--ingest", &ingest.to_string()])
            .args(["--server-pid", &server.id().to_string()])
            .arg("--json")
            .arg(a.out.join(format!("{stem}.json")))
            .arg("--hgrm")
            .arg(a.out.join(format!("{stem}.hgrm")))
            .arg("--quiet")
            .args(&a.loadgen_args);
        if uws {
            lg.args(["--protocol", "json-pubsub"]);
        }
        if let Some(flag) = &loadgen_flag {
            lg.arg(format!("--{flag}")).arg(value);
        }
        let loadgen_line = describe(&lg);
        let out = lg.output();
        stop(&mut server);
        let out = out.context("running loadgen")?;
        std::fs::write(a.out.join(format!("{stem}.loadgen.txt")), &out.stderr)?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        manifest.runs.push(report::RunEntry {
            value: value.clone(),
            stem,
            loadgen_ok: out.status.success(),
            server_command: server_line,
            loadgen_command: loadgen_line,
        });
        std::fs::write(a.out.join("manifest.tsv"), manifest.to_tsv())?;
    }
    let page = report::render(&a.out)?;
    eprintln!("sweep: wrote {}", page.display());
    Ok(())
}

fn sanitize(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Waits until the server accepts connections (at most 15 s) or exits.
fn wait_listening(addr: SocketAddr, server: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = server.try_wait()? {
            bail!("the server exited before listening ({status}); see its log");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the server did not listen on {addr} within 15 s")
}

/// SIGTERM, then SIGKILL after 20 s.
fn stop(server: &mut Child) {
    // SAFETY: kill with a pid we spawned.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
}

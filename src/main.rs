//! The `corecast` binary: reads flags and the config file, then wires the parts together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use corecast::demo::{Feed, FeedConfig};
use corecast::{Config, Server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`, by its place in `mi_option_e` (mimalloc.h; the same in
/// the v2 and v3 sources that libmimalloc-sys bundles, which names no constant for it): how
/// long freed memory is kept before it goes back to the OS, in ms. The bundled v3 defaults to
/// 1,000 (src/options.c; its header's comment still says 10, v2's default).
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Freed memory goes back to the OS at once instead of after a second, unless
/// `MIMALLOC_PURGE_DELAY` is set in the environment (then mimalloc's reading of it stands).
/// Each connection's handshake frees ~2 KiB of buffers, and with the delay much of it stayed
/// resident: at 10,000 connections, 570-590 bytes of RSS per connection against 456-463 with
/// purging at once (475-495 with 10 ms); docs/benchmarks.md (section "The dispatcher on
/// shard 0's executor (two cores), beside uWebSockets", memory table) gives the cost measured.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores the option's value; any thread, any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
    }
}

#[derive(Parser)]
#[command(
    name = "corecast",
    version,
    about = "WebSocket pub/sub broadcaster for market data"
)]
struct Cli {
    /// Log lines on stderr: `text` (human-readable) or `json` (one object per line). Which
    /// lines: `CORECAST_LOG` (a tracing filter such as `info` or `corecast_shards=debug`;
    /// default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the log subscriber: `tracing` events on stderr, filtered by `CORECAST_LOG`,
/// written by a thread of their own (lossy: a stalled stderr drops lines rather than
/// stalling a shard). Keep the guard until exit: dropping it flushes what is buffered.
fn init_logs(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = match std::env::var("CORECAST_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("corecast: CORECAST_LOG={spec:?} is not a filter ({e}); logging at info");
            tracing_subscriber::EnvFilter::new("info")
        }),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("corecast-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server with a built-in synthetic market feed.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Number of symbols in the feed (at most 300).
        #[arg(long, default_value_t = 300)]
        symbols: usize,
        /// Multiplier on the feed's rates (1.0 is about 2,700 messages/s for 300 symbols).
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// Stop by itself after this many seconds.
        #[arg(long)]
        exit_after: Option<u64>,
    },
    /// Print the default configuration file, every field documented.
    PrintConfig,
    /// Mint a signed token for tests and development (docs/security.md); prints it.
    Token(TokenArgs),
    /// Subscribe to topics and print what arrives, checking sequence continuity.
    Watch {
        /// Server URL.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        server: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Keep this topic's order book and check every message's checksum (snapshot
        /// topics of the demo's format, docs/market-data.md); exits non-zero on a failure.
        #[arg(long, value_name = "TOPIC", conflicts_with = "topics")]
        book: Option<String>,
        /// With --book: disconnect and resume (`since`) every this many seconds.
        #[arg(long, value_name = "SECS", requires = "book")]
        reconnect_every: Option<f64>,
        /// With --book: stop after this many seconds.
        #[arg(long, value_name = "SECS", requires = "book")]
        seconds: Option<f64>,
        /// Token to connect with (sent as `Authorization: Bearer`).
        #[arg(long, env = "CORECAST_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Topics or `prefix.*` patterns.
        #[arg(required_unless_present = "book")]
        topics: Vec<String>,
    },
}

#[derive(Args)]
struct TokenArgs {
    /// The user (`sub`): 1 to 64 characters of [A-Za-z0-9_:-].
    #[arg(long)]
    sub: String,
    /// HMAC secret (the server's auth.hmac_secret, at least 32 bytes); HS256 unless --alg
    /// says HS384 or HS512.
    #[arg(
        long,
        env = "CORECAST_HMAC_SECRET",
        hide_env_values = true,
        conflicts_with = "key"
    )]
    secret: Option<String>,
    /// PEM private key file (for RS*, PS*, ES* and EdDSA).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Algorithm: HS256, HS384, HS512 with --secret; RS256, RS384, RS512, PS256, PS384, PS512,
    /// ES256, ES384, EdDSA with --key.
    #[arg(long)]
    alg: Option<String>,
    /// Lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// A pattern for the `topics` claim (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// A role for the `roles` claim (repeatable).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// `iss` claim.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    audience: Option<String>,
    /// `kid` header (a key of the server's JWKS).
    #[arg(long)]
    kid: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see `corecast print-config`); repeat to layer files, later
    /// ones overriding the fields they set (e.g. a profile from tuning/profiles/).
    #[arg(long)]
    config: Vec<PathBuf>,
    /// Override one field, `section.field=value` (repeatable; applied after the files).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    set: Vec<String>,
    /// Client address (overrides server.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Publisher ingest address (overrides server.ingest).
    #[arg(long)]
    ingest: Option<SocketAddr>,
    /// Number of shards, 0 for one per core minus the dispatcher's (overrides server.shards).
    #[arg(long)]
    shards: Option<usize>,
    /// Core of the dispatcher (overrides server.dispatcher_core).
    #[arg(long)]
    dispatcher_core: Option<usize>,
    /// Admin HTTP address: the live dashboard at /, /metrics, /health, /stats (overrides server.admin; the demo's
    /// default is 127.0.0.1:9464).
    #[arg(long)]
    admin: Option<SocketAddr>,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let files: Vec<&std::path::Path> = self.config.iter().map(|p| p.as_path()).collect();
        let mut c = Config::from_layers(&files, &self.set)?;
        if let Some(a) = self.listen {
            c.server.listen = a;
        }
        if let Some(a) = self.ingest {
            c.server.ingest = a;
        }
        if let Some(n) = self.shards {
            c.server.shards = n;
        }
        if let Some(core) = self.dispatcher_core {
            c.server.dispatcher_core = core;
        }
        if let Some(a) = self.admin {
            c.server.admin = Some(a);
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    purge_freed_memory_at_once();
    let cli = Cli::parse();
    let _logs = init_logs(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            let server = start(config)?;
            run_until_signal(server, None)
        }
        Command::Demo {
            serve,
            symbols,
            rate_scale,
            exit_after,
        } => {
            let mut config = serve.config()?;
            corecast::demo::declare_namespaces(&mut config);
            if config.server.admin.is_none() {
                config.server.admin = Some(corecast::demo::ADMIN.parse().expect("a valid literal"));
                config.validate()?;
            }
            let user = corecast::demo::declare_auth(&mut config)?;
            let path = config.shard.path.clone();
            let server = start(config)?;
            let feed = Feed::start(
                server.publisher(),
                FeedConfig {
                    symbols,
                    rate_scale,
                },
            );
            print_demo_help(&server, &path, symbols, user.as_deref());
            let result = run_until_signal(server, exit_after.map(Duration::from_secs));
            let published = feed.stop();
            tracing::info!(published, "the demo feed stopped");
            result
        }
        Command::PrintConfig => {
            print!("{}", include_str!("../corecast.example.toml"));
            Ok(())
        }
        Command::Token(t) => {
            let alg = t
                .alg
                .as_deref()
                .map(corecast::token::algorithm)
                .transpose()?;
            let key = match (t.secret, t.key) {
                (Some(secret), None) => corecast::token::SigningKey::Hmac(
                    secret,
                    alg.unwrap_or(jsonwebtoken::Algorithm::HS256),
                ),
                (None, Some(path)) => corecast::token::SigningKey::Pem(
                    path,
                    alg.ok_or_else(|| anyhow::anyhow!("--key needs --alg"))?,
                ),
                _ => anyhow::bail!("give --secret (HS256/384/512) or --key with --alg"),
            };
            let spec = corecast::token::TokenSpec {
                sub: t.sub,
                ttl_s: t.ttl,
                topics: t.topics,
                roles: t.roles,
                issuer: t.issuer,
                audience: t.audience,
                kid: t.kid,
                not_before_s: None,
            };
            println!("{}", corecast::token::mint(&spec, &key)?);
            Ok(())
        }
        Command::Watch {
            server,
            count: _,
            book: Some(topic),
            reconnect_every,
            seconds,
            token,
            ..
        } => {
            let report = corecast::watch::run_book(&corecast::watch::BookWatch {
                url: server,
                token,
                topic,
                reconnect_every: reconnect_every.map(Duration::from_secs_f64),
                duration: seconds.map(Duration::from_secs_f64),
                print: true,
            })?;
            eprintln!("{report:?}");
            if report.failed > 0 || report.holes > 0 {
                anyhow::bail!(
                    "{} checksum failures, {} unannounced holes",
                    report.failed,
                    report.holes
                );
            }
            Ok(())
        }
        Command::Watch {
            server,
            count,
            topics,
            token,
            ..
        } => corecast::watch::run(&server, token.as_deref(), &topics, count),
    }
}

fn start(config: Config) -> anyhow::Result<Server> {
    let server = Server::start(config).context("starting corecast")?;
    let admin = server
        .admin_addr()
        .map_or(String::new(), |a| format!(", admin on http://{a}"));
    // The addresses are in the message itself (tests and scripts read them from it).
    tracing::info!(
        "corecast: pid {}, {} shard(s); clients on ws://{}, publishers on tcp://{}{admin}",
        std::process::id(),
        server.shards(),
        server.client_addr(),
        server.ingest_addr()
    );
    Ok(server)
}

fn print_demo_help(server: &Server, path: &str, symbols: usize, user_token: Option<&str>) {
    let names = corecast::demo::symbols(symbols.min(300));
    let addr = server.client_addr();
    eprintln!(
        "\ncorecast demo: {} symbols of synthetic tickers, trades and order-book deltas.\n\
         Topics: ticker.<SYMBOL>, trades.<SYMBOL>, book.<SYMBOL>; symbols such as {}.\n\n\
         Watch with the bundled client:\n  \
         cargo run --release -- watch --server ws://{addr}{path} trades.BTCUSD book.ETHUSD\n\
         or any WebSocket client, for example websocat:\n  \
         websocat ws://{addr}{path}\n  \
         {{\"op\":\"subscribe\",\"id\":1,\"topics\":[\"trades.BTCUSD\",\"book.ETHUSD\",\"ticker.*\"]}}\n\
         Publish your own events: echo '{{\"topic\":\"news.demo\",\"data\":{{\"hello\":1}}}}' | nc {} {}\n\
         Ctrl-C stops the server gracefully.\n{}",
        names.len(),
        names.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
        server.ingest_addr().ip(),
        server.ingest_addr().port(),
        server.admin_addr().map_or(String::new(), |a| format!(
            "Live dashboard in a browser: http://{a}/ (msgs/s out and latency move once a client\n\
             such as watch subscribes; the browser client: http://{a}/corecast.js)\n"
        )),
    );
    if let Some(token) = user_token {
        eprintln!(
            "A private stream: the user \"demo\"'s orders and fills on {topic}, readable only with\n\
             its token (HS256, signed with a secret made at this start, valid 12 h):\n  \
             {token}\n\
             Watch it:\n  \
             cargo run --release -- watch --server ws://{addr}{path} --token {token} {topic}\n\
             Without the token that topic is refused (forbidden); docs/security.md explains.\n",
            topic = corecast::demo::USER_TOPIC,
        );
    }
}

/// Serves until SIGINT/SIGTERM (or `limit`), then shuts down gracefully within a bound.
fn run_until_signal(server: Server, limit: Option<Duration>) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let reload = server.jwks_reloader();
    std::thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                match reload() {
                    Ok(n) => tracing::info!(keys = n, "SIGHUP: JWKS keys in force"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: the JWKS did not load; the previous keys stay")
                    }
                }
                continue;
            }
            seen += 1;
            if seen > 1 {
                // Written directly: exit skips the log thread's flush.
                eprintln!("corecast: second signal, exiting now");
                std::process::exit(130);
            }
            let _ = tx.send(sig);
        }
    });
    match limit {
        Some(d) => {
            let _ = rx.recv_timeout(d);
        }
        None => {
            let _ = rx.recv();
        }
    }
    tracing::info!("shutting down (closing clients with 1001 going away)");
    let stats = server.stats();
    if !server.shutdown(Duration::from_secs(15)) {
        anyhow::bail!("shutdown did not finish within 15 s");
    }
    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
    tracing::info!(
        "final: {}",
        corecast::report::summary_line(&s.totals(), &s.dispatcher, None)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: mi_option_get only reads the option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // The option at that place has purge_delay's default in the bundled mimalloc v3
            // (src/options.c): the number is still the right one.
            assert_eq!(get(), 1000);
            purge_freed_memory_at_once();
            assert_eq!(get(), 0);
        }
    }
}

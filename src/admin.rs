//! The admin HTTP endpoint (`server.admin`): Prometheus metrics, health probes and the
//! figures as JSON, served by hyper's HTTP/1 server on a tokio current-thread runtime that
//! lives on one thread of its own, off the shard cores (tokio runs nowhere else). It reads the
//! shards' reports ([`crate::report::Stats`], behind a mutex held only to copy `Arc`s);
//! nothing here touches the fan-out path. docs/operations.md.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text exposition 0.0.4 ([`metrics`]) |
//! | `/health/live` | 200 `{"status":"ok"}` while the process answers |
//! | `/health/ready`, `/health` | 200 `{"status":"ok"}`, or 503 `{"status":"degraded","reasons":[…]}` |
//! | `/stats` | the figures of `/metrics` as one JSON object |
//! | `/topics` | every topic: epoch, seq, subscribers, msgs/s, history held; paginated ([`topics`]) |
//! | `/`, `/dashboard.js`, `/dashboard.css`, `/vendor/uplot.*` | the live dashboard ([`assets`]) |
//! | `/corecast.js`, `/corecast-status.js`, `/corecast.d.ts` | the JavaScript client, its status element and their TypeScript declarations |
//! | `/dashboard.json` | where the dashboard's WebSocket goes: `{"ws_port","ws_path","admin_key_required","admin_key"}` (the key made at start when none is configured; `null` otherwise) |
//!
//! With `server.admin_key`, `/metrics`, `/stats` and `/topics` need `Authorization: Bearer <key>` (401
//! otherwise): load balancers probe health without a key, and it tells nothing. The dashboard's
//! files are open: they hold no figures, which flow over the WebSocket, where the page sends
//! the key. The thread also publishes the reserved topic `_sys.stats` once a second while
//! someone reads it ([`sampler`]).
//!
//! Every connection is a task with a deadline: its request head within [`HEAD_TIMEOUT`], the
//! whole exchange within [`CONNECTION_TIMEOUT`], one request per connection; a request body is
//! never read (the endpoint takes none), and at most [`MAX_CONNECTIONS`] are served at once,
//! [`MAX_PER_ADDRESS`] from one address (more are closed at once), so one address's slow or
//! hostile clients cannot hold up another's probes.

pub mod assets;
pub mod metrics;
pub mod sampler;
pub mod topics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;

use crate::report::SharedStats;

/// Time allowed for a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for a whole connection (one request and its answer).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more are closed when accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// Connections served at once from one address: one address's slow clients cannot take the
/// places of another's probes.
pub const MAX_PER_ADDRESS: usize = 8;

/// A connection's place in its address's count, given back when dropped.
struct PerAddress {
    counts: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(
        counts: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
    ) -> Option<PerAddress> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(PerAddress {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerAddress {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What the admin thread needs to answer.
pub struct Context {
    pub stats: SharedStats,
    /// Number of shards running.
    pub shards: usize,
    /// `shard.report_interval_ms` (`None` when reports are off).
    pub report_interval: Option<Duration>,
    /// `server.admin_key`.
    pub key: Option<String>,
    /// `recovery.history_max_bytes`.
    pub history_max_bytes: u64,
    /// The node's epoch (docs/protocol.md, "Epoch").
    pub epoch: String,
    /// When the server started.
    pub started: Instant,
    /// Publishes `_sys.stats` ([`sampler`]).
    pub publisher: crate::publisher::Publisher,
    /// Where clients connect (`server.listen` as bound), for the dashboard's WebSocket.
    pub clients: SocketAddr,
    /// `shard.path`.
    pub client_path: String,
    /// The key made at start for the reserved `_sys.` topics when `server.admin_key` is unset:
    /// `/dashboard.json` gives it to the dashboard (whoever reaches the endpoint may read its
    /// figures then, `/stats` included).
    pub dashboard_key: Option<String>,
}

/// The running admin endpoint.
pub(crate) struct Admin {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` (a failed bind is the caller's start error) and serves on a thread.
    pub fn start(addr: SocketAddr, ctx: Context) -> std::io::Result<Admin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("corecast-admin".into())
            .spawn(move || runtime.block_on(serve(listener, Arc::new(ctx), stop_rx)))?;
        Ok(Admin {
            stop: Some(stop_tx),
            thread: Some(thread),
            addr: bound,
        })
    }

    /// Stops serving; waits for the thread at most a second (connections still open are
    /// dropped with the runtime).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Accepts until told to stop; each connection a task with its deadlines.
async fn serve(
    listener: std::net::TcpListener,
    ctx: Arc<Context>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let collector = Arc::new(metrics::Collector::new());
    let asked: Arc<topics::Asked> = Arc::default();
    tokio::spawn(sampler::run(ctx.clone(), asked.clone()));
    let mut expiry = tokio::time::interval(Duration::from_secs(5));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            _ = expiry.tick() => {
                topics::expire(&ctx, &asked);
                continue;
            }
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors or a reset before accept: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some(place) = PerAddress::take(&per_address, peer.ip()) else {
            continue; // over MAX_PER_ADDRESS: dropped, closed
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // over MAX_CONNECTIONS: dropped, closed
        };
        let (ctx, collector, asked) = (ctx.clone(), collector.clone(), asked.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (ctx, collector, asked) = (ctx.clone(), collector.clone(), asked.clone());
                async move {
                    let topics = req.uri().path() == "/topics" && authorized(&ctx, &req);
                    let answer = if topics && is_get(&req) {
                        let (status, body) = topics::answer(&ctx, &asked, req.uri().query()).await;
                        json(status, &body)
                    } else {
                        answer(&ctx, &collector, &req)
                    };
                    Ok::<_, Infallible>(answer)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop((permit, place));
        });
    }
}

type Response = hyper::Response<Full<Bytes>>;

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    hyper::Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid status and header")
}

fn json(status: u16, value: &serde_json::Value) -> Response {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn is_get<B>(r: &hyper::Request<B>) -> bool {
    r.method() == hyper::Method::GET || r.method() == hyper::Method::HEAD
}

/// True when `r` may see the path it asks for (the health paths, or the right key).
fn authorized<B>(ctx: &Context, r: &hyper::Request<B>) -> bool {
    let open = matches!(
        r.uri().path(),
        "/health" | "/health/live" | "/health/ready" | "/dashboard.json"
    ) || assets::find(r.uri().path()).is_some();
    let Some(key) = &ctx.key else { return true };
    open || r
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|g| corecast_shards::auth::same_secret(g.as_bytes(), key.as_bytes()))
}

fn answer<B>(ctx: &Context, collector: &metrics::Collector, r: &hyper::Request<B>) -> Response {
    let path = r.uri().path();
    if !is_get(r) {
        let mut response = json(405, &serde_json::json!({"error": "only GET and HEAD"}));
        response.headers_mut().insert(
            "Allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    if !authorized(ctx, r) {
        return json(
            401,
            &serde_json::json!({"error": "send Authorization: Bearer <server.admin_key>"}),
        );
    }
    match path {
        "/metrics" => {
            let text = collector.render(ctx);
            respond(200, prometheus::TEXT_FORMAT, text.into_bytes())
        }
        "/health/live" => json(200, &serde_json::json!({"status": "ok"})),
        "/health" | "/health/ready" => {
            let reasons = {
                let s = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.not_ready(ctx.shards, ctx.report_interval, Instant::now())
            };
            if reasons.is_empty() {
                json(200, &serde_json::json!({"status": "ok"}))
            } else {
                json(
                    503,
                    &serde_json::json!({"status": "degraded", "reasons": reasons}),
                )
            }
        }
        "/stats" => json(200, &metrics::stats_json(ctx, collector)),
        "/dashboard.json" => {
            // The made key only to a page addressed by an IP address or `localhost`: a page
            // of a host name could be another site's, rebound to this address by its DNS.
            let local = addressed_directly(r);
            let note = (ctx.dashboard_key.is_some() && !local).then_some(
                "open the dashboard at an IP address or localhost (a page at a host name could be \
                 another site's, rebound here by DNS), or set server.admin_key",
            );
            let mut answer = json(
                200,
                &serde_json::json!({
                    "ws_port": ctx.clients.port(),
                    "ws_path": ctx.client_path,
                    "admin_key_required": ctx.key.is_some(),
                    "admin_key": ctx.dashboard_key.as_ref().filter(|_| local),
                    "admin_key_note": note,
                }),
            );
            // It may carry a key: no cache keeps it.
            answer.headers_mut().insert(
                "Cache-Control",
                hyper::header::HeaderValue::from_static("no-store"),
            );
            answer
        }
        _ if assets::find(path).is_some() => asset(path),
        _ => json(
            404,
            &serde_json::json!({
                "error": "not found",
                "paths": ["/", "/metrics", "/health/live", "/health/ready", "/health", "/stats", "/topics", "/corecast.js", "/dashboard.json"],
            }),
        ),
    }
}

/// A built-in file ([`assets`]), with headers that keep browsers from guessing its type or
/// framing the page, and from keeping a copy older than the running server's; the client
/// library may be imported by pages of any origin (CORS: a module script is fetched with it).
fn asset(path: &str) -> Response {
    let Some(a) = assets::find(path) else {
        return json(404, &serde_json::json!({"error": "not found"}));
    };
    let mut r = respond(200, a.content_type, a.body.to_vec());
    let h = r.headers_mut();
    use hyper::header::HeaderValue;
    h.insert("Cache-Control", HeaderValue::from_static("no-cache"));
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "Content-Security-Policy",
        HeaderValue::from_static(assets::CONTENT_SECURITY_POLICY),
    );
    h.insert("X-Frame-Options", HeaderValue::from_static("DENY"));
    if a.shared {
        h.insert("Access-Control-Allow-Origin", HeaderValue::from_static("*"));
    }
    r
}

/// True when the request's `Host` is an IP address or `localhost` (with or without a port):
/// a browser page that reached this endpoint through a host name may be a DNS-rebinding
/// page of another site, which a literal address cannot be.
fn addressed_directly<B>(r: &hyper::Request<B>) -> bool {
    let Some(host) = r.headers().get("Host").and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<IpAddr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

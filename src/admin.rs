//! The admin HTTP endpoint (`server.admin`): Prometheus metrics, health probes and the
//! figures as JSON, served by tiny_http on a thread of its own, off the shard cores. It reads
//! the shards' reports ([`crate::report::Stats`], behind a mutex taken once per request);
//! nothing here touches the fan-out path. docs/operations.md.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text exposition 0.0.4 ([`metrics`]) |
//! | `/health/live` | 200 `{"status":"ok"}` while the process answers |
//! | `/health/ready`, `/health` | 200 `{"status":"ok"}`, or 503 `{"status":"degraded","reasons":[…]}` |
//! | `/stats` | the figures of `/metrics` as one JSON object |
//!
//! With `server.admin_key` every path but `/health*` needs `Authorization: Bearer <key>`
//! (401 otherwise): load balancers probe health without a key, and it tells nothing.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::report::SharedStats;

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
    /// When the server started.
    pub started: Instant,
}

/// The running admin endpoint.
pub(crate) struct Admin {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` (a failed bind is the caller's start error) and serves on a thread.
    pub fn start(addr: SocketAddr, ctx: Context) -> std::io::Result<Admin> {
        let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("the admin endpoint is not on an IP address"))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("corecast-admin".into())
            .spawn(move || {
                let collector = metrics::Collector::new();
                for request in serving.incoming_requests() {
                    let response = answer(&ctx, &collector, &request);
                    let _ = request.respond(response);
                }
            })?;
        Ok(Admin {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    let header = tiny_http::Header::from_bytes("Content-Type", content_type)
        .expect("a valid header literal");
    tiny_http::Response::from_data(body)
        .with_status_code(status)
        .with_header(header)
}

fn json(status: u16, value: &serde_json::Value) -> Response {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    respond(status, "application/json", body)
}

/// Constant-time equality (the time taken does not depend on where the inputs differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

fn answer(ctx: &Context, collector: &metrics::Collector, r: &tiny_http::Request) -> Response {
    let path = r.url().split('?').next().unwrap_or("");
    if *r.method() != tiny_http::Method::Get && *r.method() != tiny_http::Method::Head {
        return json(405, &serde_json::json!({"error": "only GET"}));
    }
    if !path.starts_with("/health") {
        if let Some(key) = &ctx.key {
            let given = r
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .and_then(|h| h.value.as_str().strip_prefix("Bearer "));
            if !given.is_some_and(|g| same(g.trim().as_bytes(), key.as_bytes())) {
                return json(
                    401,
                    &serde_json::json!({"error": "send Authorization: Bearer <server.admin_key>"}),
                );
            }
        }
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
        "/stats" => json(200, &metrics::stats_json(ctx)),
        _ => json(
            404,
            &serde_json::json!({
                "error": "not found",
                "paths": ["/metrics", "/health/live", "/health/ready", "/health", "/stats"],
            }),
        ),
    }
}

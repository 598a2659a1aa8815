//! The HTTP upgrade of one accepted socket (RFC 6455 4.2), as a short task of its own: it ends
//! once the connection is open and handed to the readiness loop ([`crate::open`]). Data path:
//! listener -> **upgrade** -> connection.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;

use crate::connection::Conn;
use crate::ctx::{Handler, ShardCtx};
use crate::ending::{end_conn, LINGER};
use crate::handshake::{self, Parsed};
use crate::protocol;
use crate::ratelimit::TokenBucket;
use crate::requests::drain_events;

/// Why a socket did not become a connection.
enum Unopened {
    /// The upgrade failed: a bad request (answered), a timeout, a reset.
    Failed,
    /// Admission refused it (answered 401, 403 or 429, and counted by kind).
    Refused,
}

/// Takes one accepted socket through the handshake, then hands it to the readiness loop.
/// Runs as its own short task on the shard; it ends once the connection is open.
pub(crate) async fn serve(ctx: Rc<ShardCtx>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if ctx.config.send_buffer_bytes > 0 {
        // SAFETY: the fd belongs to `stream`, alive for this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let _ = socket2::SockRef::from(&fd).set_send_buffer_size(ctx.config.send_buffer_bytes);
    }
    // Once upgraded, the socket leaves glommio: its own fd (a duplicate, taken before the
    // upgrade so that running out of descriptors refuses the client before it sees a 101)
    // goes into the shard's epoll set.
    let Ok(sock) = crate::socket::detach(&stream) else {
        ctx.metrics.borrow_mut().counters.handshake_failed += 1;
        return;
    };
    let timeout = Duration::from_millis(ctx.config.handshake_timeout_ms);
    let path = ctx.config.path.clone();
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    // The client's request (and its reads after a refusal) end the shard's nap.
    let waking = crate::executor::WakesNap::new(&ctx.handshaking, stream.as_raw_fd());
    let early = match crate::session::accepted(&ctx, peer) {
        Ok(early) => early,
        Err(refusal) => {
            // Over a per-address limit: answered at once, the request unread (at most one
            // linger, not a whole handshake timeout, per refused socket).
            log_refusal(&ctx, peer, &refusal);
            let _ = stream.write_all(&refusal.response()).await;
            linger_refused(&mut stream).await;
            return;
        }
    };
    let admit = |head: &handshake::Head| {
        let admitted = crate::session::admit(&ctx, early, head);
        if let Err(refusal) = &admitted {
            log_refusal(&ctx, peer, refusal);
        }
        admitted
    };
    let handshake = Box::pin(handshake(&mut stream, path, admit));
    let leftover = handshake
        .or(async {
            glommio::timer::sleep(timeout).await;
            Err(Unopened::Failed)
        })
        .await;
    drop(waking);
    drop(stream);
    let (leftover, session) = match leftover {
        Ok(opened) => opened,
        // Admission refusals are counted under their own kind (limit, auth).
        Err(Unopened::Refused) => return,
        Err(Unopened::Failed) => {
            ctx.metrics.borrow_mut().counters.handshake_failed += 1;
            return;
        }
    };
    let now = Instant::now();
    let conn = Rc::new(Conn::new(
        ctx.next_conn_id(),
        sock,
        TokenBucket::new(&ctx.limits, now),
        now,
    ));
    if ctx.readiness.add(conn.fd(), conn.id()).is_err() {
        // The epoll set refused it (out of memory): the socket closes with `conn`.
        ctx.metrics.borrow_mut().counters.handshake_failed += 1;
        crate::session::opened(&ctx, &conn, session);
        ctx.sessions.closed(conn.id());
        return;
    }
    let who = crate::session::welcome(&ctx, session.as_ref());
    crate::session::opened(&ctx, &conn, session);
    ctx.register(&conn);
    if ctx.handler == Handler::Protocol {
        let welcome = protocol::welcome(
            &format!("{}-{}", ctx.id, conn.id()),
            ctx.config.heartbeat_interval_ms,
            ctx.config.heartbeat_timeout_ms,
            ctx.config.max_message_bytes,
            protocol::WelcomeAuth {
                auth: who.auth_required_ms.map(|_| "required"),
                auth_timeout_ms: who.auth_required_ms,
                sub: who.grant.as_ref().map(|g| &*g.sub),
                expires_at: who.grant.as_ref().map(|g| g.exp),
            },
        );
        conn.push_own(&ctx, welcome);
        ctx.mark_dirty(&conn);
    }

    tracing::debug!(
        shard = ctx.id,
        conn = conn.id(),
        peer = %peer.map_or_else(String::new, |p| p.to_string()),
        "connection open"
    );
    conn.feed(&leftover);
    drop(leftover);
    if let Some(end) = drain_events(&ctx, &conn) {
        end_conn(&ctx, &conn, end);
    }
}

/// Reads the HTTP upgrade request and answers it: a valid request goes through `admit`
/// (Origin, limits, token) before the 101. Boxed by the caller so its buffer is freed as soon
/// as it returns. `Ok` carries bytes the client sent after the request, and what `admit`
/// kept of the connection's identity.
async fn handshake<S>(
    stream: &mut TcpStream,
    path: String,
    admit: impl FnOnce(&handshake::Head) -> Result<S, handshake::Rejection>,
) -> Result<(Vec<u8>, S), Unopened> {
    let mut admit = Some(admit);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Unopened::Failed)?;
        if n == 0 {
            return Err(Unopened::Failed);
        }
        buf.extend_from_slice(&chunk[..n]);
        match handshake::parse(&buf, &path) {
            Parsed::Partial => continue,
            Parsed::Upgrade {
                response,
                consumed,
                head,
            } => {
                let admit = admit.take().expect("one request per handshake");
                let r = match admit(&head) {
                    Ok(session) => {
                        if stream.write_all(&response).await.is_err() {
                            // The session's counts are released as it drops.
                            return Err(Unopened::Failed);
                        }
                        return Ok((buf.split_off(consumed), session));
                    }
                    Err(r) => r,
                };
                let _ = stream.write_all(&r.response()).await;
                linger_refused(stream).await;
                return Err(Unopened::Refused);
            }
            Parsed::Reject(r) => {
                let _ = stream.write_all(&r.response()).await;
                linger_refused(stream).await;
                return Err(Unopened::Failed);
            }
        }
    }
}

/// After refusing an upgrade: half-close, then read and discard until the client closes
/// (bounded by [`LINGER`]), so unread input never turns the refusal into a reset that loses
/// it. (An open connection lingers the same way in the readiness loop, `crate::ending`.)
async fn linger_refused(stream: &mut TcpStream) {
    crate::socket::shutdown_write(stream.as_raw_fd());
    let mut sink = vec![0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    drain.or(glommio::timer::sleep(LINGER)).await;
}

/// Logs an admission refusal (403, 401, 429) within the shard's budget; the token is never in
/// it (the refusal names the rule and the reason only).
fn log_refusal(ctx: &ShardCtx, peer: Option<std::net::IpAddr>, r: &handshake::Rejection) {
    if let Some(suppressed) = ctx.logs.refusals.allow(Instant::now()) {
        let (error, reason) = r.json.unwrap_or(("", None));
        tracing::info!(
            shard = ctx.id,
            peer = %peer.map_or_else(String::new, |p| p.to_string()),
            status = r.status,
            error,
            reason = reason.unwrap_or(""),
            suppressed,
            "upgrade refused"
        );
    }
}

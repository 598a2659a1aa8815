//! One client connection: shard-local (`!Send`). Its task runs the handshake, reads and
//! answers client frames, and writes whatever the shard's fan-out round could not write at once.
//!
//! Writing is shared: the shard's fan-out round writes each touched connection once per round
//! ([`Conn::flush`]); when the socket buffer fills, the connection is marked `blocked` and its
//! own task waits for writability and finishes the job, while new frames keep queueing
//! (drop-oldest) behind it.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;

use crate::handshake::{self, Parsed};
use crate::inbound::{Event, Fatal, Reassembler};
use crate::protocol::{self, close, code, AckTopic, Request};
use crate::queue::{Flushed, Outbound};
use crate::ratelimit::{TokenBucket, Verdict};
use crate::ring::{Interest, Refusal};
use crate::shard::ShardCtx;
use crate::table::Resolved;
use crate::topic::{parse_selector, prefix_matches, Selector};

/// A connection as the shard sees it. Shard-local (`!Send`), shared by `Rc` between the
/// connection's task, the subscription table and the fan-out round.
pub struct Conn {
    /// Shard-local id, shown to the client as `<shard>-<id>`.
    pub(crate) id: u64,
    /// The socket, for direct writes; valid while the connection is registered.
    fd: RawFd,
    /// Frames waiting to be written.
    pub(crate) out: RefCell<Outbound>,
    /// Topics and patterns this connection subscribed to (including requests not yet acked).
    subs: RefCell<Vec<Interest>>,
    /// Stamp of the last frame routed here, so a frame matched twice (topic and pattern) is
    /// queued once.
    pub(crate) last_stamp: Cell<u64>,
    /// In the shard's list of connections to write at the end of this round.
    pub(crate) dirty: Cell<bool>,
    /// The socket buffer is full; the connection's task writes once it is writable.
    blocked: Cell<bool>,
    /// A write failed (peer gone): nothing more is written, the task closes the connection.
    broken: Cell<bool>,
    /// The close frame is queued: nothing else may be queued after it.
    closing: Cell<bool>,
    /// Close requested by the shard (code, reason), acted on by the connection's task.
    close: Cell<Option<(u16, &'static str)>>,
    /// Last time any frame arrived from the client.
    pub(crate) last_heard: Cell<Instant>,
    /// Inbound rate limit.
    bucket: RefCell<TokenBucket>,
    /// Waker of the connection's task.
    waker: RefCell<Option<Waker>>,
}

impl Conn {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Asks the connection's task to close with `code`. The first request wins.
    pub(crate) fn request_close(&self, code: u16, reason: &'static str) {
        if self.close.get().is_none() {
            self.close.set(Some((code, reason)));
        }
        self.wake();
    }

    /// Queues a frame of this connection's own; closes the connection if the client lets
    /// them pile up past `max_control_bytes`.
    pub(crate) fn push_own(&self, ctx: &ShardCtx, frame: Vec<u8>) {
        if self.closing.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        out.push_own(frame);
        if out.control_bytes() > ctx.bounds.max_control_bytes {
            drop(out);
            self.request_close(close::CONTROL_BACKLOG, "control replies not read");
        }
    }

    /// Writes what is queued with one vectored system call (more only past 512 frames).
    /// Does nothing while blocked: the connection's task owns the socket until writable.
    pub(crate) fn flush(&self, ctx: &ShardCtx) {
        if self.blocked.get() || self.broken.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            return;
        }
        let mut m = ctx.metrics.borrow_mut();
        m.queue_depth.saturating_record(out.published_len() as u64);
        let fd = self.fd;
        let result = out.flush(|iov| {
            m.counters.writes += 1;
            m.batch_frames.saturating_record(iov.len() as u64);
            crate::socket::send_vectored(fd, iov)
        });
        match result {
            Ok((state, announced)) => {
                m.counters.gap_notices += announced as u64;
                if state == Flushed::Blocked {
                    self.blocked.set(true);
                    drop(out);
                    self.wake();
                }
            }
            Err(_) => {
                drop(out);
                self.broken.set(true);
                self.request_close(close::NORMAL, "write failed");
            }
        }
    }

    /// True when `topic` is still covered by one of this connection's subscriptions.
    fn covers(&self, topic: &str) -> bool {
        self.subs.borrow().iter().any(|i| match i {
            Interest::Topic(t) => &**t == topic,
            Interest::Prefix(p) => prefix_matches(p, topic),
        })
    }
}

/// How a connection ends.
enum Ending {
    /// The client sent a close frame: echo it.
    ClientClosed(Option<u16>),
    /// EOF or a socket error: nothing more can be said.
    Gone,
    /// We close with this code and reason.
    Close(u16, String),
}

/// Serves one accepted socket until it closes. Runs as its own task on the shard.
pub(crate) async fn serve(ctx: Rc<ShardCtx>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if ctx.config.send_buffer_bytes > 0 {
        // SAFETY: the fd belongs to `stream`, alive for this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let _ = socket2::SockRef::from(&fd).set_send_buffer_size(ctx.config.send_buffer_bytes);
    }
    let timeout = Duration::from_millis(ctx.config.handshake_timeout_ms);
    let path = ctx.config.path.clone();
    let handshake = Box::pin(handshake(&mut stream, path));
    let leftover = match handshake
        .or(async {
            glommio::timer::sleep(timeout).await;
            Err(())
        })
        .await
    {
        Ok(rest) => rest,
        Err(()) => {
            ctx.metrics.borrow_mut().counters.handshake_failed += 1;
            return;
        }
    };
    let now = Instant::now();
    let conn = Rc::new(Conn {
        id: ctx.next_conn_id(),
        fd: stream.as_raw_fd(),
        out: RefCell::default(),
        subs: RefCell::default(),
        last_stamp: Cell::new(0),
        dirty: Cell::new(false),
        blocked: Cell::new(false),
        broken: Cell::new(false),
        closing: Cell::new(false),
        close: Cell::new(None),
        last_heard: Cell::new(now),
        bucket: RefCell::new(TokenBucket::new(&ctx.limits, now)),
        waker: RefCell::new(None),
    });
    ctx.register(&conn);
    let welcome = protocol::welcome(
        &format!("{}-{}", ctx.id, conn.id),
        ctx.config.heartbeat_interval_ms,
        ctx.config.heartbeat_timeout_ms,
        ctx.config.max_message_bytes,
    );
    conn.push_own(&ctx, welcome);
    conn.flush(&ctx);

    let mut reader = Reassembler::default();
    reader.feed(&leftover);
    drop(leftover);
    let ending = match drain_events(&ctx, &conn, &mut reader) {
        Some(end) => end,
        None => poll_fn(|cx| poll_conn(&ctx, &conn, &mut stream, &mut reader, cx)).await,
    };
    // Boxed: its state (timers, buffers) exists only while closing, not in every idle task.
    Box::pin(finish(&ctx, &conn, &mut stream, ending)).await;
    ctx.unregister(&conn);
}

/// Reads the HTTP upgrade request and answers it. Boxed by the caller so its buffer is freed
/// as soon as it returns. `Ok` carries bytes the client sent after the request.
async fn handshake(stream: &mut TcpStream, path: String) -> Result<Vec<u8>, ()> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match handshake::parse(&buf, &path) {
            Parsed::Partial => continue,
            Parsed::Upgrade { response, consumed } => {
                stream.write_all(&response).await.map_err(|_| ())?;
                return Ok(buf.split_off(consumed));
            }
            Parsed::Reject(r) => {
                let _ = stream.write_all(&r.response()).await;
                linger(stream).await;
                return Err(());
            }
        }
    }
}

/// After our last bytes: half-close, then read and discard until the client closes (bounded),
/// so unread input never turns our close into a reset that loses the last frames.
async fn linger(stream: &mut TcpStream) {
    crate::socket::shutdown_write(stream.as_raw_fd());
    let mut sink = vec![0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    drain
        .or(glommio::timer::sleep(Duration::from_millis(1000)))
        .await;
}

/// Most reads served in one poll before yielding to other connections.
const READS_PER_POLL: usize = 16;

fn poll_conn(
    ctx: &ShardCtx,
    conn: &Rc<Conn>,
    stream: &mut TcpStream,
    reader: &mut Reassembler,
    cx: &mut Context<'_>,
) -> Poll<Ending> {
    {
        let mut w = conn.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
    for _ in 0..READS_PER_POLL {
        if let Some((code, reason)) = conn.close.get() {
            return Poll::Ready(Ending::Close(code, reason.into()));
        }
        if let Poll::Ready(Err(())) = poll_blocked_write(ctx, conn, stream, cx) {
            return Poll::Ready(Ending::Gone);
        }
        let mut scratch = ctx.scratch.borrow_mut();
        let n = match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ending::Gone),
            Poll::Ready(Ok(n)) => n,
        };
        reader.feed(&scratch[..n]);
        drop(scratch);
        conn.last_heard.set(Instant::now());
        ctx.activity.bump();
        if let Some(end) = drain_events(ctx, conn, reader) {
            return Poll::Ready(end);
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// While blocked, writes the head of the queue when the socket takes it, then the rest with
/// the usual vectored flush. `Ready(Err)` when the socket failed.
fn poll_blocked_write(
    ctx: &ShardCtx,
    conn: &Rc<Conn>,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ()>> {
    while conn.blocked.get() {
        let mut out = conn.out.borrow_mut();
        let announced = out.announce_gaps();
        ctx.metrics.borrow_mut().counters.gap_notices += announced as u64;
        let Some(head) = out.head() else {
            conn.blocked.set(false);
            break;
        };
        match Pin::new(&mut *stream).poll_write(cx, head) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
            Poll::Ready(Ok(n)) => {
                out.consume(n);
                drop(out);
                conn.blocked.set(false);
                conn.flush(ctx);
            }
        }
    }
    Poll::Ready(Ok(()))
}

/// Handles every complete event in the buffer; `Some` when the connection must end.
fn drain_events(ctx: &ShardCtx, conn: &Rc<Conn>, reader: &mut Reassembler) -> Option<Ending> {
    let end = loop {
        let event = match reader.next_event(ctx.config.max_message_bytes) {
            Ok(Some(e)) => e,
            Ok(None) => break None,
            Err(Fatal { code, reason }) => {
                ctx.metrics.borrow_mut().counters.protocol_errors += 1;
                break Some(Ending::Close(code, reason));
            }
        };
        if let Some(end) = handle_event(ctx, conn, event) {
            break Some(end);
        }
    };
    conn.flush(ctx);
    end
}

fn handle_event(ctx: &ShardCtx, conn: &Rc<Conn>, event: Event) -> Option<Ending> {
    if let Event::Close(code) = event {
        return Some(Ending::ClientClosed(code));
    }
    let verdict = conn.bucket.borrow_mut().take(&ctx.limits, Instant::now());
    match verdict {
        Verdict::Allow => {}
        Verdict::Refuse(strikes) => {
            ctx.metrics.borrow_mut().counters.rate_limited += 1;
            let msg = format!(
                "over {} messages/s (burst {}); refused {strikes} in a row, closing at {}",
                ctx.limits.rate, ctx.limits.burst, ctx.limits.max_strikes
            );
            conn.push_own(ctx, protocol::error(None, code::RATE_LIMITED, &msg));
            return None;
        }
        Verdict::Close => {
            ctx.metrics.borrow_mut().counters.rate_limited += 1;
            return Some(Ending::Close(
                close::POLICY_VIOLATION,
                "rate limit exceeded".into(),
            ));
        }
    }
    match event {
        Event::Text(mut text) => {
            match protocol::parse_request(&mut text, ctx.config.max_topics_per_request) {
                Ok(req) => handle_request(ctx, conn, req),
                Err(r) => reject(ctx, conn, r.id, r.code, &r.message),
            }
            None
        }
        Event::Binary => Some(Ending::Close(
            close::UNSUPPORTED_DATA,
            "binary messages are not supported; send JSON text".into(),
        )),
        Event::Ping(payload) => {
            conn.push_own(
                ctx,
                crate::frame::server_frame(crate::frame::OP_PONG, &payload),
            );
            None
        }
        Event::Pong | Event::Close(_) => None,
    }
}

fn reject(ctx: &ShardCtx, conn: &Rc<Conn>, id: Option<u64>, code: &str, message: &str) {
    ctx.metrics.borrow_mut().counters.rejected_requests += 1;
    conn.push_own(ctx, protocol::error(id, code, message));
}

/// Parses every name of a request into interests, deduplicated; the first bad name refuses all.
fn interests(topics: &[String]) -> Result<Vec<Interest>, String> {
    let mut out: Vec<Interest> = Vec::with_capacity(topics.len());
    for t in topics {
        let i = match parse_selector(t) {
            Ok(Selector::Topic(t)) => Interest::Topic(Arc::from(t)),
            Ok(Selector::Prefix(p)) => Interest::Prefix(Arc::from(p)),
            Err(e) => return Err(format!("topic {t:?}: {e}")),
        };
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

fn interest_name(i: &Interest) -> String {
    match i {
        Interest::Topic(t) => t.to_string(),
        Interest::Prefix(p) => format!("{p}.*"),
    }
}

fn handle_request(ctx: &ShardCtx, conn: &Rc<Conn>, req: Request) {
    match req {
        Request::Ping { id } => conn.push_own(ctx, protocol::pong(id)),
        Request::Subscribe { id, topics } => {
            let wanted = match interests(&topics) {
                Ok(w) => w,
                Err(msg) => return reject(ctx, conn, id, code::BAD_TOPIC, &msg),
            };
            let items: Vec<(Interest, bool)> = {
                let subs = conn.subs.borrow();
                let table = ctx.table.borrow();
                wanted
                    .into_iter()
                    .map(|i| table.intern(i))
                    .map(|i| {
                        let new = !subs.contains(&i);
                        (i, new)
                    })
                    .collect()
            };
            let new = items.iter().filter(|(_, n)| *n).count();
            let have = conn.subs.borrow().len();
            if have + new > ctx.config.max_subscriptions {
                let msg = format!(
                    "{have} subscriptions + {new} new is over the limit of {}",
                    ctx.config.max_subscriptions
                );
                return reject(ctx, conn, id, code::TOO_MANY_SUBSCRIPTIONS, &msg);
            }
            {
                // Exactly as long as needed: this list lives as long as the connection.
                let mut subs = conn.subs.borrow_mut();
                subs.reserve_exact(new);
                subs.extend(items.iter().filter(|(_, n)| *n).map(|(i, _)| i.clone()));
            }
            // Every interest of the request is to be joined when it completes (the table never
            // adds a subscriber twice), even one an earlier pending request also named.
            let items: Vec<(Interest, bool)> = items.into_iter().map(|(i, _)| (i, true)).collect();
            let me = conn.clone();
            let mut to_dispatcher = Vec::new();
            let done = ctx
                .table
                .borrow_mut()
                .subscribe(me, id, items, &mut to_dispatcher);
            ctx.tell_dispatcher(to_dispatcher);
            if let Some(r) = done {
                deliver_resolved(ctx, r);
            }
        }
        Request::Unsubscribe { id, topics } => {
            let gone = match interests(&topics) {
                Ok(w) => w,
                Err(msg) => return reject(ctx, conn, id, code::BAD_TOPIC, &msg),
            };
            if let Some(missing) = gone.iter().find(|i| !conn.subs.borrow().contains(i)) {
                let msg = format!("not subscribed to {:?}", interest_name(missing));
                return reject(ctx, conn, id, code::NOT_SUBSCRIBED, &msg);
            }
            conn.subs.borrow_mut().retain(|i| !gone.contains(i));
            let me = conn.clone();
            let mut to_dispatcher = Vec::new();
            let mut acked = Vec::with_capacity(gone.len());
            {
                let mut table = ctx.table.borrow_mut();
                for i in &gone {
                    let seq = match i {
                        Interest::Topic(t) => Some(table.last_seq(t).unwrap_or(0)),
                        Interest::Prefix(_) => None,
                    };
                    table.unsubscribe(&me, i, &mut to_dispatcher);
                    acked.push((interest_name(i), seq));
                }
            }
            ctx.tell_dispatcher(to_dispatcher);
            conn.out.borrow_mut().retain_published(|t| conn.covers(t));
            conn.push_own(ctx, ack_frame(id, &acked));
        }
    }
}

/// The `ack` frame for topics named as the client wrote them, with their sequences.
fn ack_frame(id: Option<u64>, named: &[(String, Option<u64>)]) -> Vec<u8> {
    let topics: Vec<AckTopic<'_>> = named
        .iter()
        .map(|(topic, seq)| AckTopic { topic, seq: *seq })
        .collect();
    protocol::ack(id, &topics)
}

/// Sends the ack or error of a finished subscribe request to its connection.
pub(crate) fn deliver_resolved(ctx: &ShardCtx, r: Resolved<Conn>) {
    match r {
        Resolved::Ack { sub, id, topics } => {
            let named: Vec<(String, Option<u64>)> =
                topics.iter().map(|(i, s)| (interest_name(i), *s)).collect();
            sub.push_own(ctx, ack_frame(id, &named));
            ctx.mark_dirty(&sub);
        }
        Resolved::Refused {
            sub,
            id,
            interest,
            refusal,
            items,
        } => {
            // Keep what the connection still has or still waits for through another request.
            let table = ctx.table.borrow();
            sub.subs
                .borrow_mut()
                .retain(|i| !items.iter().any(|(x, _)| x == i) || table.wants(&sub, i));
            drop(table);
            let msg = match refusal {
                Refusal::TopicLimit => format!(
                    "cannot subscribe to {:?}: the server tracks its maximum number of topics",
                    interest_name(&interest)
                ),
            };
            ctx.metrics.borrow_mut().counters.rejected_requests += 1;
            sub.push_own(ctx, protocol::error(id, code::TOPIC_LIMIT, &msg));
            ctx.mark_dirty(&sub);
        }
    }
}

/// Says goodbye the way `ending` calls for, flushes within the grace period, and releases
/// the connection's subscriptions.
async fn finish(ctx: &ShardCtx, conn: &Rc<Conn>, stream: &mut TcpStream, ending: Ending) {
    // Leave the table first: nothing may follow our close frame (RFC 6455 5.5.1).
    let mut to_dispatcher = Vec::new();
    {
        let mut table = ctx.table.borrow_mut();
        table.abandon_requests(conn, &mut to_dispatcher);
        for i in conn.subs.borrow_mut().drain(..) {
            table.unsubscribe(conn, &i, &mut to_dispatcher);
        }
    }
    ctx.tell_dispatcher(to_dispatcher);
    conn.closing.set(true);
    let closing = match ending {
        Ending::Gone => None,
        _ if conn.broken.get() => None,
        Ending::ClientClosed(code) => Some((code.unwrap_or(close::NORMAL), String::new())),
        Ending::Close(code, reason) => Some((code, reason)),
    };
    if let Some((code, reason)) = closing {
        conn.out
            .borrow_mut()
            .push_own(crate::frame::close_frame(code, &reason));
        let grace = Duration::from_millis(ctx.config.shutdown_grace_ms.max(100));
        let flushed = poll_fn(|cx| {
            conn.flush(ctx);
            match poll_blocked_write(ctx, conn, stream, cx) {
                Poll::Ready(Err(())) => Poll::Ready(()),
                _ if conn.broken.get() || conn.out.borrow().is_empty() => Poll::Ready(()),
                _ => Poll::Pending,
            }
        });
        flushed.or(glommio::timer::sleep(grace)).await;
        linger(stream).await;
    }
}

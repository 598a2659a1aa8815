//! One client connection: shard-local (`!Send`). A short task runs the handshake; from then on
//! the connection has no task of its own: the shard's readiness loop ([`serve_open`]) reads and
//! answers its frames and finishes its blocked writes, and the shard's fan-out round writes it
//! once per round ([`Conn::flush`]). When it ends, a closing task says goodbye and lingers.
//!
//! Writing is shared: when the socket buffer fills, the connection is marked `blocked` and
//! the fan-out round leaves it alone until the readiness loop sees the socket writable, while
//! new frames keep queueing (drop-oldest) behind it.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;

use crate::handshake::{self, Parsed};
use crate::inbound::{Event, Fatal, MessageKind, Reassembler};
use crate::protocol::{self, close, code, AckTopic, Request};
use crate::queue::{Flushed, Outbound};
use crate::ratelimit::{TokenBucket, Verdict};
use crate::readiness::Ready;
use crate::ring::Interest;
use crate::shard::{Handler, ShardCtx};
use crate::table::Resolved;
use crate::topic::{covering_prefixes, parse_selector, Selector};

/// A connection as the shard sees it. Shard-local (`!Send`), shared by `Rc` between the
/// shard's map of connections, the subscription table and the fan-out round. While the
/// connection is idle this is all it holds (plus its list of subscriptions).
pub struct Conn {
    /// Shard-local id, shown to the client as `<shard>-<id>`.
    pub(crate) id: u64,
    /// The socket, for direct reads and writes; valid while the connection is registered.
    fd: RawFd,
    /// Owner of `fd` while the connection is open; taken by the closing task.
    sock: Cell<Option<OwnedFd>>,
    /// Frames waiting to be written.
    pub(crate) out: RefCell<Outbound>,
    /// Bytes received and not yet whole messages (no heap memory while none are pending).
    reader: RefCell<Reassembler>,
    /// Topics and patterns this connection subscribed to (including requests not yet acked),
    /// sorted (topics, then patterns): a lookup costs O(log n), so no request costs the
    /// product of its size and this list's, and no queued frame costs a scan of it.
    subs: RefCell<Vec<Interest>>,
    /// Stamp of the last frame routed here, so a frame matched twice (topic and pattern) is
    /// queued once.
    pub(crate) last_stamp: Cell<u64>,
    /// In the shard's list of connections to write at the end of this round.
    pub(crate) dirty: Cell<bool>,
    /// The socket buffer is full; written again once the readiness loop sees it writable.
    blocked: Cell<bool>,
    /// A write failed (peer gone), or the socket is closed: nothing more is written.
    broken: Cell<bool>,
    /// The connection is ending: the closing task owns the socket.
    ending: Cell<bool>,
    /// The close frame is queued: nothing else may be queued after it.
    closing: Cell<bool>,
    /// Close requested by the shard, acted on by the readiness loop.
    close: Cell<Option<CloseRequest>>,
    /// A subscribe request of this connection waits for the dispatcher: the requests behind
    /// it stay unread (in the reassembler and the socket) until it is acked, so replies come
    /// in request order and each describes the state after the requests before it.
    awaiting: Cell<bool>,
    /// A frame of the message being reassembled was refused by the rate limit: the whole
    /// message is dropped when it completes (the refusal was already announced).
    refused_message: Cell<bool>,
    /// Last time the client finished something: a whole message or a control frame (bytes
    /// of an unfinished frame, or fragments of an unfinished message, do not count).
    pub(crate) last_heard: Cell<Instant>,
    /// Inbound rate limit.
    bucket: RefCell<TokenBucket>,
}

/// Why the shard closes a connection of its own accord.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseRequest {
    /// The server is shutting down.
    GoingAway,
    /// Nothing heard from the client for the heartbeat timeout.
    HeartbeatTimeout,
    /// The client does not read the replies to its own requests.
    ControlBacklog,
    /// A write failed: the peer is gone (nothing more is sent).
    WriteFailed,
}

impl CloseRequest {
    /// The close frame's code and reason.
    fn code_reason(self) -> (u16, &'static str) {
        match self {
            Self::GoingAway => (close::GOING_AWAY, "going away, reconnect"),
            Self::HeartbeatTimeout => (close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
            Self::ControlBacklog => (close::CONTROL_BACKLOG, "control replies not read"),
            Self::WriteFailed => (close::NORMAL, "write failed"),
        }
    }
}

impl Conn {
    /// Asks for the connection to be closed; the readiness loop acts on it within a pass.
    /// The first request wins.
    pub(crate) fn request_close(&self, ctx: &ShardCtx, why: CloseRequest) {
        if self.close.get().is_none() {
            self.close.set(Some(why));
            ctx.readiness.ask_close(self.id);
        }
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
            self.request_close(ctx, CloseRequest::ControlBacklog);
        }
    }

    /// Writes what is queued with one vectored system call (more only past 512 frames).
    /// Does nothing while blocked: the readiness loop writes again once the socket has room.
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
                }
            }
            Err(_) => {
                drop(out);
                drop(m);
                self.broken.set(true);
                self.request_close(ctx, CloseRequest::WriteFailed);
            }
        }
    }

    /// Tries a blocked write again (the socket reported room, or a periodic retry).
    pub(crate) fn retry_blocked(&self, ctx: &ShardCtx) {
        if self.blocked.replace(false) {
            self.flush(ctx);
        }
    }

    /// True while a subscribe of this connection waits for the dispatcher: its later frames
    /// (pongs included) are unread, so silence is not the client's.
    pub(crate) fn awaiting(&self) -> bool {
        self.awaiting.get()
    }

    /// True when `topic` is still covered by one of this connection's subscriptions.
    /// O(log n) per dot in the topic.
    fn covers(&self, topic: &str) -> bool {
        let subs = self.subs.borrow();
        let patterns = subs.partition_point(|i| matches!(i, Interest::Topic(_)));
        let (topics, patterns) = subs.split_at(patterns);
        let find = |list: &[Interest], name: &str| {
            list.binary_search_by(|i| match i {
                Interest::Topic(t) | Interest::Prefix(t) => (**t).cmp(name),
            })
            .is_ok()
        };
        find(topics, topic) || covering_prefixes(topic).any(|p| find(patterns, p))
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

impl Ending {
    fn requested(why: CloseRequest) -> Self {
        let (code, reason) = why.code_reason();
        Ending::Close(code, reason.into())
    }
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
    let handshake = Box::pin(handshake(&mut stream, path));
    let leftover = handshake
        .or(async {
            glommio::timer::sleep(timeout).await;
            Err(())
        })
        .await;
    drop(stream);
    let Ok(leftover) = leftover else {
        ctx.metrics.borrow_mut().counters.handshake_failed += 1;
        return;
    };
    let now = Instant::now();
    let conn = Rc::new(Conn {
        id: ctx.next_conn_id(),
        fd: sock.as_raw_fd(),
        sock: Cell::new(Some(sock)),
        out: RefCell::default(),
        reader: RefCell::default(),
        subs: RefCell::default(),
        last_stamp: Cell::new(0),
        dirty: Cell::new(false),
        blocked: Cell::new(false),
        broken: Cell::new(false),
        ending: Cell::new(false),
        closing: Cell::new(false),
        close: Cell::new(None),
        awaiting: Cell::new(false),
        refused_message: Cell::new(false),
        last_heard: Cell::new(now),
        bucket: RefCell::new(TokenBucket::new(&ctx.limits, now)),
    });
    if ctx.readiness.add(conn.fd, conn.id).is_err() {
        // The epoll set refused it (out of memory): the socket closes with `conn`.
        ctx.metrics.borrow_mut().counters.handshake_failed += 1;
        return;
    }
    ctx.register(&conn);
    if ctx.handler == Handler::Protocol {
        let welcome = protocol::welcome(
            &format!("{}-{}", ctx.id, conn.id),
            ctx.config.heartbeat_interval_ms,
            ctx.config.heartbeat_timeout_ms,
            ctx.config.max_message_bytes,
        );
        conn.push_own(&ctx, welcome);
        conn.flush(&ctx);
    }

    conn.reader.borrow_mut().feed(&leftover);
    drop(leftover);
    if let Some(end) = drain_events(&ctx, &conn) {
        end_conn(&ctx, &conn, end);
    }
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

/// Most reads of one connection in one pass of the readiness loop, before the others' turn.
const READS_PER_PASS: usize = 16;

/// The shard's readiness loop: serves every open connection, for as long as the shard runs.
/// Each pass handles close requests, then every connection the epoll set reports: readable ->
/// read into the shard's scratch buffer and answer what arrived; writable while blocked ->
/// write again; EOF or error -> end. Then one executor pass for everyone else.
pub(crate) async fn serve_open(ctx: Rc<ShardCtx>) {
    let mut ready: Vec<(u64, Ready)> = Vec::with_capacity(1024);
    let mut closing: Vec<u64> = Vec::new();
    loop {
        ctx.readiness.take_closing(&mut closing);
        for id in closing.drain(..) {
            if let Some(conn) = ctx.conn(id) {
                if let Some(why) = conn.close.get() {
                    end_conn(&ctx, &conn, Ending::requested(why));
                }
            }
        }
        // epoll_wait fails only for a bad set or buffer (EINTR is retried next pass): a bug.
        ctx.readiness
            .take_ready(&mut ready)
            .expect("the shard's epoll set is valid");
        if !ready.is_empty() {
            ctx.activity.bump();
        }
        for (id, r) in ready.drain(..) {
            if let Some(conn) = ctx.conn(id) {
                on_ready(&ctx, &conn, r);
            }
        }
        glommio::timer::sleep(ctx.config.ring_poll()).await;
    }
}

fn on_ready(ctx: &Rc<ShardCtx>, conn: &Rc<Conn>, r: Ready) {
    if conn.ending.get() {
        return;
    }
    if let Some(why) = conn.close.get() {
        return end_conn(ctx, conn, Ending::requested(why));
    }
    if r.write {
        conn.retry_blocked(ctx);
    }
    if !r.read {
        return;
    }
    // Requests left unread while a subscribe of this connection waited come first.
    if conn.reader.borrow().pending() > 0 {
        if let Some(end) = drain_events(ctx, conn) {
            return end_conn(ctx, conn, end);
        }
    }
    if conn.awaiting.get() {
        return; // read again once the subscribe is acked (`deliver_resolved`)
    }
    for _ in 0..READS_PER_PASS {
        let mut scratch = ctx.scratch.borrow_mut();
        let n = match crate::socket::recv(conn.fd, &mut scratch) {
            Ok(0) => return end_conn(ctx, conn, Ending::Gone),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return end_conn(ctx, conn, Ending::Gone),
        };
        conn.reader.borrow_mut().feed(&scratch[..n]);
        let drained = n < scratch.len();
        drop(scratch);
        if let Some(end) = drain_events(ctx, conn) {
            return end_conn(ctx, conn, end);
        }
        if conn.awaiting.get() {
            return;
        }
        if drained && !r.closed {
            // A short read emptied the socket; more input raises a new edge. (After the peer's
            // FIN no edge comes: read on to the EOF.)
            return;
        }
    }
    ctx.readiness.read_again(conn.id);
}

/// Ends an open connection: out of the epoll set, and a closing task takes its socket.
/// Does nothing if it is already ending.
fn end_conn(ctx: &Rc<ShardCtx>, conn: &Rc<Conn>, ending: Ending) {
    if conn.ending.replace(true) {
        return;
    }
    ctx.readiness.remove(conn.fd);
    conn.reader.take();
    let Some(sock) = conn.sock.take() else {
        return;
    };
    let ctx = ctx.clone();
    let conn = conn.clone();
    glommio::spawn_local(async move {
        // SAFETY: the fd is the connection's own, handed over whole.
        let mut stream = unsafe { TcpStream::from_raw_fd(sock.into_raw_fd()) };
        finish(&ctx, &conn, &mut stream, ending).await;
        // The fd closes with `stream`: nothing may write to it afterwards.
        conn.broken.set(true);
        ctx.unregister(&conn);
    })
    .detach();
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

/// Handles every complete event in the buffer, stopping early while a subscribe waits for
/// the dispatcher; `Some` when the connection must end.
fn drain_events(ctx: &ShardCtx, conn: &Rc<Conn>) -> Option<Ending> {
    let end = loop {
        if conn.awaiting.get() {
            break None;
        }
        let next = conn
            .reader
            .borrow_mut()
            .next_event(ctx.config.max_message_bytes);
        let event = match next {
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

/// Acts on one inbound frame. Every frame but a close takes a token from the rate limit,
/// continuation frames included; a refused fragment drops its whole message.
fn handle_event(ctx: &ShardCtx, conn: &Rc<Conn>, event: Event) -> Option<Ending> {
    if let Event::Close(code) = event {
        return Some(Ending::ClientClosed(code));
    }
    let now = Instant::now();
    let verdict = conn.bucket.borrow_mut().take(&ctx.limits, now);
    match verdict {
        Verdict::Allow => {}
        Verdict::Refuse(strikes) => {
            ctx.metrics.borrow_mut().counters.rate_limited += 1;
            let msg = format!(
                "over {} frames/s (burst {}); refused {strikes} in a row, closing at {}",
                ctx.limits.rate, ctx.limits.burst, ctx.limits.max_strikes
            );
            conn.push_own(ctx, protocol::error(None, code::RATE_LIMITED, &msg));
            // A refused fragment refuses its whole message; a refused last frame ends the
            // message (dropped with it). Control frames in between change nothing.
            match event {
                Event::Fragment(_) => conn.refused_message.set(true),
                Event::Text(_) | Event::Binary(_) => conn.refused_message.set(false),
                _ => {}
            }
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
    if !matches!(event, Event::Fragment(_)) {
        conn.last_heard.set(now);
    }
    match event {
        Event::Text(mut text) => {
            if conn.refused_message.replace(false) {
                return None;
            }
            match ctx.handler {
                Handler::Protocol => {
                    match protocol::parse_request(&mut text, ctx.config.max_topics_per_request) {
                        Ok(req) => handle_request(ctx, conn, req),
                        Err(r) => reject(ctx, conn, r.id, r.code, &r.message),
                    }
                }
                Handler::Echo => conn.push_own(
                    ctx,
                    crate::frame::server_frame(crate::frame::OP_TEXT, &text),
                ),
            }
            None
        }
        Event::Fragment(MessageKind::Text) => None,
        Event::Binary(bytes) if ctx.handler == Handler::Echo => {
            if !conn.refused_message.replace(false) {
                conn.push_own(
                    ctx,
                    crate::frame::server_frame(crate::frame::OP_BINARY, &bytes),
                );
            }
            None
        }
        Event::Fragment(MessageKind::Binary) if ctx.handler == Handler::Echo => None,
        Event::Binary(_) | Event::Fragment(MessageKind::Binary) => Some(Ending::Close(
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
                        let new = subs.binary_search(&i).is_err();
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
            let is_pattern = |i: &Interest| matches!(i, Interest::Prefix(_));
            let new_patterns = items.iter().filter(|(i, n)| *n && is_pattern(i)).count();
            let have_patterns = {
                let subs = conn.subs.borrow();
                subs.len() - subs.partition_point(|i| !is_pattern(i))
            };
            if have_patterns + new_patterns > ctx.config.max_patterns {
                let msg = format!(
                    "{have_patterns} patterns + {new_patterns} new is over the limit of {}",
                    ctx.config.max_patterns
                );
                return reject(ctx, conn, id, code::TOO_MANY_PATTERNS, &msg);
            }
            {
                // Exactly as long as needed: this list lives as long as the connection.
                let mut subs = conn.subs.borrow_mut();
                subs.reserve_exact(new);
                subs.extend(items.iter().filter(|(_, n)| *n).map(|(i, _)| i.clone()));
                subs.sort_unstable();
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
            match done {
                Some(r) => deliver_resolved(ctx, r),
                // Later requests wait until the dispatcher's reply completes this one.
                None => conn.awaiting.set(true),
            }
        }
        Request::Unsubscribe { id, topics } => {
            let gone = match interests(&topics) {
                Ok(w) => w,
                Err(msg) => return reject(ctx, conn, id, code::BAD_TOPIC, &msg),
            };
            let missing = {
                let subs = conn.subs.borrow();
                gone.iter()
                    .find(|i| subs.binary_search(i).is_err())
                    .cloned()
            };
            if let Some(missing) = missing {
                let msg = format!("not subscribed to {:?}", interest_name(&missing));
                return reject(ctx, conn, id, code::NOT_SUBSCRIBED, &msg);
            }
            let mut sorted_gone = gone.clone();
            sorted_gone.sort_unstable();
            conn.subs
                .borrow_mut()
                .retain(|i| sorted_gone.binary_search(i).is_err());
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

/// Sends the ack of a finished subscribe request to its connection, and lets the requests
/// that waited behind it be read (on the readiness loop's next pass).
pub(crate) fn deliver_resolved(ctx: &ShardCtx, r: Resolved<Conn>) {
    let Resolved { sub, id, topics } = r;
    let named: Vec<(String, Option<u64>)> =
        topics.iter().map(|(i, s)| (interest_name(i), *s)).collect();
    sub.push_own(ctx, ack_frame(id, &named));
    ctx.mark_dirty(&sub);
    if sub.awaiting.replace(false) {
        ctx.readiness.read_again(sub.id);
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
        // RFC 6455 5.5.1: echo the client's code; an empty close is answered with an empty one.
        Ending::ClientClosed(Some(code)) => Some(crate::frame::close_frame(code, "")),
        Ending::ClientClosed(None) => Some(crate::frame::server_frame(crate::frame::OP_CLOSE, b"")),
        Ending::Close(code, reason) => Some(crate::frame::close_frame(code, &reason)),
    };
    if let Some(frame) = closing {
        conn.out.borrow_mut().push_own(frame);
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
#[cfg(test)]
mod tests {
    /// An idle connection's memory is mostly its `Conn` (see docs/architecture.md, "Memory of
    /// an idle connection"): with the `Rc` counts it must fit the allocator's 256-byte size
    /// class; one byte more and every connection takes the next class, 320 bytes.
    #[test]
    fn conn_fits_a_256_byte_allocation() {
        let rc_box = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<super::Conn>();
        assert!(rc_box <= 256, "Rc<Conn> allocates {rc_box} bytes");
    }
}

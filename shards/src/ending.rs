//! How a connection ends, inside the readiness loop like everything else an open connection
//! does, with the same socket and the same write path. It leaves the subscription table,
//! queues its goodbye (echo the client's close, or our own code and reason), and is written
//! like any dirty connection until its queue is empty or the grace period passes
//! (`Closing`). Then it half-closes and lingers: what the client still sends is read and
//! discarded until its EOF or [`LINGER`] passes (`Lingering`), so unread input never turns the
//! close into a reset that loses our last frames. Then the socket is closed (`Closed`).
//! Data path: connection -> **ending** -> socket closed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::connection::{CloseRequest, Conn, Lifecycle, Wrote};
use crate::ctx::ShardCtx;

/// How long a half-closed connection waits for the client's EOF before it is closed anyway.
pub(crate) const LINGER: Duration = Duration::from_millis(1000);

/// Most reads of one lingering connection in one pass, before the others' turn.
const LINGER_READS_PER_PASS: usize = 16;

/// How a connection ends.
pub(crate) enum Ending {
    /// The client sent a close frame: echo it.
    ClientClosed(Option<u16>),
    /// EOF or a socket error: nothing more can be said.
    Gone,
    /// We close with this code and reason.
    Close(u16, String),
}

impl Ending {
    pub(crate) fn requested(why: CloseRequest) -> Self {
        let (code, reason) = why.code_reason();
        Ending::Close(code, reason.into())
    }
}

/// Ends an open connection: out of the subscription table, then its close frame queued and
/// the connection marked dirty (written at the end of this pass). After the client's EOF no
/// close frame is sent, but replies already queued still go out (the client may read after
/// its FIN); after a failed write, or with nothing queued, the socket is closed at once.
/// Does nothing if it is already ending.
pub(crate) fn end_conn(ctx: &ShardCtx, conn: &Rc<Conn>, ending: Ending) {
    if !conn.begin_ending() {
        return;
    }
    match &ending {
        Ending::Close(code, reason) if *code != crate::close::GOING_AWAY => {
            if let Some(suppressed) = ctx.logs.closes.allow(Instant::now()) {
                tracing::info!(shard = ctx.id, conn = conn.id(), code, reason = %reason, suppressed, "closing a connection");
            }
        }
        Ending::Close(code, _) => tracing::debug!(
            shard = ctx.id,
            conn = conn.id(),
            code,
            "closing a connection"
        ),
        Ending::ClientClosed(code) => {
            tracing::debug!(shard = ctx.id, conn = conn.id(), code, "the client closed")
        }
        Ending::Gone => tracing::debug!(shard = ctx.id, conn = conn.id(), "the client is gone"),
    }
    conn.stop_reading();
    // Leave the table first: nothing may follow our close frame (RFC 6455 5.5.1).
    let mut to_dispatcher = Vec::new();
    {
        let mut table = ctx.table.borrow_mut();
        table.abandon_requests(conn, &mut to_dispatcher);
        let subs = conn.take_subscriptions();
        ctx.metrics.borrow_mut().counters.subscriptions -= subs.len() as u64;
        for i in subs {
            table.unsubscribe(conn, &i, &mut to_dispatcher);
        }
    }
    ctx.tell_dispatcher(to_dispatcher);
    if conn.write_failed() || matches!(ending, Ending::Gone) && conn.drained() {
        return close(ctx, conn);
    }
    let frame = match ending {
        Ending::Gone => None,
        // RFC 6455 5.5.1: echo the client's code; an empty close is answered with an empty one.
        Ending::ClientClosed(Some(code)) => Some(crate::frame::close_frame(code, "")),
        Ending::ClientClosed(None) => Some(crate::frame::server_frame(crate::frame::OP_CLOSE, b"")),
        Ending::Close(code, reason) => Some(crate::frame::close_frame(code, &reason)),
    };
    let grace = Duration::from_millis(ctx.config.shutdown_grace_ms.max(100));
    conn.begin_closing(frame);
    ctx.flushing
        .borrow_mut()
        .push_back((Instant::now() + grace, conn.clone()));
    ctx.mark_dirty(conn);
}

/// A closing connection was just written ([`crate::write::write_dirty`]): once everything is
/// out it lingers; after a failed write it is closed; while blocked it waits for room.
pub(crate) fn after_write(ctx: &ShardCtx, conn: &Rc<Conn>, wrote: Wrote) {
    match wrote {
        Wrote::Failed => close(ctx, conn),
        _ if conn.write_failed() => close(ctx, conn),
        Wrote::Drained | Wrote::Nothing if conn.drained() => linger(ctx, conn),
        _ => {}
    }
}

/// Half-closes and starts discarding input, reading what is already there.
fn linger(ctx: &ShardCtx, conn: &Rc<Conn>) {
    conn.begin_lingering();
    ctx.lingering
        .borrow_mut()
        .push_back((Instant::now() + LINGER, conn.clone()));
    // Input or the EOF may have come while the close frame was written, and its edge is
    // spent: read now.
    discard_input(ctx, conn);
}

/// A lingering connection is readable: reads and discards until the socket would block or
/// the client's EOF (then closes). Looks again next pass past a per-pass bound.
pub(crate) fn discard_input(ctx: &ShardCtx, conn: &Rc<Conn>) {
    for _ in 0..LINGER_READS_PER_PASS {
        let mut scratch = ctx.scratch.borrow_mut();
        match crate::socket::recv(conn.fd(), &mut scratch) {
            Ok(0) => return close(ctx, conn),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return close(ctx, conn),
        }
    }
    ctx.readiness.read_again(conn.id());
}

/// Closes the socket and forgets the connection.
fn close(ctx: &ShardCtx, conn: &Rc<Conn>) {
    if conn.close(ctx) {
        ctx.unregister(conn);
    }
}

/// Moves on every ending connection whose deadline passed by `now`: a closing one that did
/// not get its close frame out within the grace period lingers (not while a batch window
/// holds the shard's writes), a lingering one is closed.
/// Called on every pass of the readiness loop; costs nothing while no deadline is due.
pub(crate) fn expire(ctx: &ShardCtx, now: Instant) {
    // While a batch window holds every write, a close frame waiting for it has not had its
    // chance: the grace period counts once the window closes.
    while let Some(conn) = (!ctx.holding.get())
        .then(|| due(&ctx.flushing, Lifecycle::Closing, now))
        .flatten()
    {
        linger(ctx, &conn);
    }
    while let Some(conn) = due(&ctx.lingering, Lifecycle::Lingering, now) {
        close(ctx, &conn);
    }
}

/// The first connection of `queue` if it is still in `phase` and its deadline passed by
/// `now`. Entries of connections that left `phase` early are dropped on the way.
fn due(
    queue: &RefCell<VecDeque<(Instant, Rc<Conn>)>>,
    phase: Lifecycle,
    now: Instant,
) -> Option<Rc<Conn>> {
    let mut q = queue.borrow_mut();
    loop {
        let (until, conn) = q.front()?;
        if conn.lifecycle() != phase {
            q.pop_front();
        } else if *until <= now {
            return q.pop_front().map(|(_, conn)| conn);
        } else {
            return None;
        }
    }
}

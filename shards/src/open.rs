//! The shard's readiness loop: every connection, from its upgrade to its close, is served from
//! one epoll set ([`crate::readiness`]), without a task of its own. Each pass acts on close
//! requests and ending deadlines, reads what became readable (answering it through
//! [`crate::requests`], or discarding it while lingering, [`crate::ending`]), marks blocked
//! connections that got room, and ends with the one write of every dirty connection
//! ([`crate::write`]). Data path: socket -> **open** -> requests.

use std::io;
use std::rc::Rc;

use crate::connection::{Conn, Lifecycle};
use crate::ctx::ShardCtx;
use crate::ending::{end_conn, Ending};
use crate::readiness::Ready;
use crate::requests::drain_events;

/// Most reads of one connection in one pass of the readiness loop, before the others' turn.
const READS_PER_PASS: usize = 16;

/// The shard's readiness loop: serves every connection, for as long as the shard runs.
/// Each pass handles close requests and due ending deadlines, then every connection the epoll
/// set reports: readable -> read into the shard's scratch buffer and answer what arrived (or
/// discard it, lingering); writable while blocked -> marked dirty; EOF or error -> end. Then
/// every dirty connection is written once, and one executor pass for everyone else.
pub(crate) async fn serve_open(ctx: Rc<ShardCtx>) {
    let mut ready: Vec<(u64, Ready)> = Vec::with_capacity(1024);
    let mut closing: Vec<u64> = Vec::new();
    loop {
        ctx.readiness.take_closing(&mut closing);
        for id in closing.drain(..) {
            if let Some(conn) = ctx.conn(id) {
                if let Lifecycle::CloseRequested(why) = conn.lifecycle() {
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
        let now = std::time::Instant::now();
        crate::ending::expire(&ctx, now);
        crate::session::tick(&ctx, now);
        crate::write::write_dirty(&ctx);
        glommio::timer::sleep(ctx.config.ring_poll()).await;
    }
}

fn on_ready(ctx: &Rc<ShardCtx>, conn: &Rc<Conn>, r: Ready) {
    if r.write && conn.writable() {
        ctx.mark_dirty(conn);
    }
    match conn.lifecycle() {
        Lifecycle::Open => {}
        Lifecycle::CloseRequested(why) => return end_conn(ctx, conn, Ending::requested(why)),
        // Input waits until the close frame is out; it is then read and discarded.
        Lifecycle::Ending | Lifecycle::Closing | Lifecycle::Closed => return,
        Lifecycle::Lingering => {
            if r.read {
                crate::ending::discard_input(ctx, conn);
            }
            return;
        }
    }
    if !r.read {
        return;
    }
    // Requests left unread while a subscribe of this connection waited come first.
    if conn.pending_input() > 0 {
        if let Some(end) = drain_events(ctx, conn) {
            return end_conn(ctx, conn, end);
        }
    }
    if conn.awaiting() {
        return; // read again once the subscribe is acked (`deliver_resolved`)
    }
    for _ in 0..READS_PER_PASS {
        let mut scratch = ctx.scratch.borrow_mut();
        let n = match crate::socket::recv(conn.fd(), &mut scratch) {
            Ok(0) => return end_conn(ctx, conn, Ending::Gone),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return end_conn(ctx, conn, Ending::Gone),
        };
        conn.feed(&scratch[..n]);
        let drained = n < scratch.len();
        drop(scratch);
        if let Some(end) = drain_events(ctx, conn) {
            return end_conn(ctx, conn, end);
        }
        if conn.awaiting() {
            return;
        }
        if drained && !r.closed {
            // A short read emptied the socket; more input raises a new edge. (After the peer's
            // FIN no edge comes: read on to the EOF.)
            return;
        }
    }
    ctx.readiness.read_again(conn.id());
}

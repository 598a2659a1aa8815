//! How a connection ends: it leaves the epoll set, a closing task takes its socket, says
//! goodbye the way the ending calls for (echo the client's close, or our own code and
//! reason), flushes within the grace period and lingers, so unread input never turns the close
//! into a reset. Data path: connection -> **ending** -> socket closed.

use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWrite, FutureExt};
use glommio::net::TcpStream;

use crate::connection::{CloseRequest, Conn, Wrote};
use crate::ctx::ShardCtx;

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

/// Ends an open connection: out of the epoll set, and a closing task takes its socket.
/// Does nothing if it is already ending.
pub(crate) fn end_conn(ctx: &Rc<ShardCtx>, conn: &Rc<Conn>, ending: Ending) {
    if !conn.begin_ending() {
        return;
    }
    ctx.readiness.remove(conn.fd());
    conn.reader.take();
    let Some(sock) = conn.take_socket() else {
        return;
    };
    let ctx = ctx.clone();
    let conn = conn.clone();
    glommio::spawn_local(async move {
        // SAFETY: the fd is the connection's own, handed over whole.
        let mut stream = unsafe { TcpStream::from_raw_fd(sock.into_raw_fd()) };
        finish(&ctx, &conn, &mut stream, ending).await;
        // The fd closes with `stream`: nothing may write to it afterwards.
        conn.closed();
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
    while conn.is_blocked() {
        let mut out = conn.out.borrow_mut();
        let announced = out.announce_gaps();
        ctx.metrics.borrow_mut().counters.gap_notices += announced as u64;
        let Some(head) = out.head() else {
            conn.unblocked();
            break;
        };
        match Pin::new(&mut *stream).poll_write(cx, head) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
            Poll::Ready(Ok(n)) => {
                out.consume(n);
                drop(out);
                conn.unblocked();
                conn.flush(ctx);
            }
        }
    }
    Poll::Ready(Ok(()))
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
    conn.begin_closing();
    let closing = match ending {
        Ending::Gone => None,
        _ if conn.write_failed() => None,
        // RFC 6455 5.5.1: echo the client's code; an empty close is answered with an empty one.
        Ending::ClientClosed(Some(code)) => Some(crate::frame::close_frame(code, "")),
        Ending::ClientClosed(None) => Some(crate::frame::server_frame(crate::frame::OP_CLOSE, b"")),
        Ending::Close(code, reason) => Some(crate::frame::close_frame(code, &reason)),
    };
    if let Some(frame) = closing {
        conn.out.borrow_mut().push_own(frame);
        let grace = Duration::from_millis(ctx.config.shutdown_grace_ms.max(100));
        let flushed = poll_fn(|cx| {
            // Everything out, or the peer gone: nothing left to wait for.
            if matches!(conn.flush(ctx), Wrote::Drained | Wrote::Failed) {
                return Poll::Ready(());
            }
            match poll_blocked_write(ctx, conn, stream, cx) {
                Poll::Ready(Err(())) => Poll::Ready(()),
                _ if conn.write_failed() || conn.out.borrow().is_empty() => Poll::Ready(()),
                _ => Poll::Pending,
            }
        });
        flushed.or(glommio::timer::sleep(grace)).await;
        linger(stream).await;
    }
}

/// After our last bytes: half-close, then read and discard until the client closes (bounded),
/// so unread input never turns our close into a reset that loses the last frames.
pub(crate) async fn linger(stream: &mut TcpStream) {
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

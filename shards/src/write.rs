//! The one place a connection is written: at the end of every fan-out round and every pass
//! of the readiness loop, each connection marked dirty since is written once, with one
//! vectored system call. Whatever queues a frame for a connection (the fan-out, a reply, a
//! ping, its close frame) marks it dirty; a blocked connection is marked again when its socket
//! reports room. Data path: shard -> connection -> **write** -> socket.

use crate::connection::Lifecycle;
use crate::ctx::ShardCtx;

/// Writes every connection marked dirty since the last call, once each; a closing
/// connection's ending moves on by what its write did ([`crate::ending::after_write`]).
/// Writes nothing while the fan-out round holds a batch window open (`ctx.holding`); the
/// round writes when it closes.
pub(crate) fn write_dirty(ctx: &ShardCtx) {
    if ctx.holding.get() || ctx.dirty.borrow().is_empty() {
        return;
    }
    let dirty = std::mem::take(&mut *ctx.dirty.borrow_mut());
    for conn in &dirty {
        conn.clear_dirty();
        let wrote = conn.flush(ctx);
        if let Lifecycle::Closing = conn.lifecycle() {
            crate::ending::after_write(ctx, conn, wrote);
        }
    }
    // Keep the list's allocation for the next round unless one was started meanwhile.
    let mut reuse = dirty;
    reuse.clear();
    if ctx.dirty.borrow().is_empty() {
        *ctx.dirty.borrow_mut() = reuse;
    }
}

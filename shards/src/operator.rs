//! The operator's access to the reserved `_sys.` topics (the server's own figures, which the
//! admin dashboard draws): a connection that sent `{"op":"auth","admin_key":…}` with the
//! server's admin key. That is `server.admin_key`, or, with the admin endpoint on and no key
//! set, a key made at start that the endpoint's `/dashboard.json` hands out (so the figures
//! are exactly as open as the endpoint's `/stats`, and a web page of another origin, which
//! cannot read `/dashboard.json`, cannot read them through a browser on the host). Without an
//! admin endpoint there is no key and nobody reads them. Checked at subscribe time only, never
//! per message. docs/protocol.md, "Reserved topics".
//! Data path: requests -> **operator** -> table.

use std::rc::Rc;

use crate::connection::Conn;
use crate::ctx::ShardCtx;
use crate::protocol::{self, code};
use crate::ring::Interest;

/// `reason` of an `unauthorized` answer to a wrong admin key.
pub(crate) const BAD_ADMIN_KEY: &str = "bad_admin_key";

/// True when the interest names the reserved namespace (`_sys`, `_sys.stats`, `_sys.*`).
pub(crate) fn is_system(i: &Interest) -> bool {
    match i {
        Interest::Topic(t) => crate::topic::is_system(t),
        Interest::Prefix(p) => crate::topic::is_system(p),
    }
}

/// The `auth` message with an admin key: compared in constant time, at most one per
/// connection per second (apart from the limit on token `auth`s, so a client sending both
/// at connect waits for neither); the right key makes the connection the operator's
/// (`{"op":"ack","id":N,"admin":true}`), a wrong one is `unauthorized` with reason
/// `bad_admin_key` and changes nothing. On a server without a key: `bad_request`.
pub(crate) fn on_admin_auth(ctx: &ShardCtx, conn: &Rc<Conn>, id: Option<u64>, key: &str) {
    let Some(expected) = &ctx.admin_key else {
        let msg = "this server has no admin endpoint (server.admin), so no admin key";
        return conn.push_own(ctx, protocol::error(id, code::BAD_REQUEST, msg));
    };
    if !ctx
        .sessions
        .take_turn(conn.id(), |s| &mut s.last_admin_auth)
    {
        let msg = crate::identity::AUTH_TOO_SOON;
        return conn.push_own(ctx, protocol::error(id, code::RATE_LIMITED, msg));
    }
    let mut by_conn = ctx.sessions.by_conn.borrow_mut();
    let session = by_conn.entry(conn.id()).or_default();
    if !crate::auth::same_secret(key.as_bytes(), expected.as_bytes()) {
        drop(by_conn);
        ctx.metrics.borrow_mut().counters.auth_refused += 1;
        let frame = protocol::error_with_reason(
            id,
            code::UNAUTHORIZED,
            BAD_ADMIN_KEY,
            "wrong admin key (docs/protocol.md, \"Reserved topics\")",
        );
        return conn.push_own(ctx, frame);
    }
    session.operator = true;
    drop(by_conn);
    conn.push_own(ctx, protocol::admin_ack(id));
}

/// True when `conn` sent the right admin key.
pub(crate) fn sent_key(ctx: &ShardCtx, conn: &Conn) -> bool {
    ctx.sessions
        .by_conn
        .borrow()
        .get(&conn.id())
        .is_some_and(|s| s.operator)
}

/// Checks a subscribe's reserved interests: `Err((forbidden, message))` naming the first
/// when `conn` did not send the admin key; `Ok` when it names none.
pub(crate) fn check(
    ctx: &ShardCtx,
    conn: &Conn,
    wanted: &[Interest],
) -> Result<(), (&'static str, String)> {
    let Some(first) = wanted.iter().find(|i| is_system(i)) else {
        return Ok(());
    };
    if sent_key(ctx, conn) {
        return Ok(());
    }
    let how = if ctx.admin_key.is_some() {
        "send {\"op\":\"auth\",\"admin_key\":…} first"
    } else {
        "this server has no admin endpoint"
    };
    let name = match first {
        Interest::Topic(t) => t.to_string(),
        Interest::Prefix(p) => format!("{p}.*"),
    };
    Err((
        code::FORBIDDEN,
        format!("{name:?} is a reserved topic of the server's own figures: {how}"),
    ))
}

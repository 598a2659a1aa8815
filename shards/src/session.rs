//! Who a connection is, shard-local: admission at the upgrade (Origin, address limits,
//! token, user limits, in the documented order), the `auth` message and its refresh, the
//! permission check of a subscribe, and the clock (looked at by the readiness loop) that sends
//! `refresh`, and closes with 4003 or 4004. Nothing here runs per published message. docs/security.md.
//! Data path: upgrade -> **session** -> requests.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::admission::Refusal;
use crate::auth::perms::Permissions;
use crate::auth::Grant;
use crate::connection::{CloseRequest, Conn};
use crate::ctx::ShardCtx;
use crate::handshake::{Head, Rejection};
use crate::identity::{Counted, Due, Session};
use crate::protocol::{self, code};
use crate::ring::Interest;
use crate::topic::Selector;

/// Time since the Unix epoch, to the nanosecond.
fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    unix_time().as_secs()
}

/// The instant of Unix time `at` (whole seconds), from the pair `(now, unix)` read together;
/// far futures are capped at a year from now (a token lives at most
/// `auth.max_token_lifetime_s`, itself at most a year).
fn instant_of(at: u64, now: Instant, unix: Duration) -> Instant {
    let at = Duration::from_secs(at);
    let year = Duration::from_secs(366 * 86_400);
    if at >= unix {
        now + (at - unix).min(year)
    } else {
        now.checked_sub(unix - at).unwrap_or(now)
    }
}

fn rejection(r: Refusal) -> Rejection {
    Rejection::json(r.status, r.error, None, r.message, r.retry_after)
}

/// A just-accepted socket's place in the per-address counts, taken before its upgrade
/// request is read so that sockets in their upgrade count too. A socket from a trusted proxy
/// is counted later, under the address its `X-Forwarded-For` names.
pub(crate) struct Early {
    counted: Counted,
    peer: Option<IpAddr>,
}

/// Counts a just-accepted socket from `peer` (see [`Early`]). An address over a limit is
/// refused here, before its request is read (`Err`: the 429 to send at once), so that none of
/// its sockets waits in the upgrade: a client cannot hold more than its share open by never
/// finishing its request.
pub(crate) fn accepted(ctx: &ShardCtx, peer: Option<IpAddr>) -> Result<Early, Rejection> {
    let mut counted = Counted::default();
    counted.admission = Some(ctx.admission.clone());
    if let Some(p) = peer.filter(|p| !ctx.admission.is_trusted(*p)) {
        match ctx.admission.admit_ip(p, Instant::now()) {
            Ok(key) => counted.ip = key,
            Err(r) => {
                ctx.metrics.borrow_mut().counters.limit_refused += 1;
                return Err(rejection(r));
            }
        }
    }
    Ok(Early { counted, peer })
}

/// Admission of an upgrade request, in the documented order (after the per-address limits of
/// a direct client, checked at accept, and the request's own rules, which the handshake
/// checked): Origin (403), per-address limits of a client behind a trusted proxy (429), token
/// (401), per-user limits (429). `Ok` carries the session to keep, if any.
pub(crate) fn admit(
    ctx: &ShardCtx,
    early: Early,
    head: &Head,
) -> Result<Option<Session>, Rejection> {
    let counted = |r: Rejection| {
        ctx.metrics.borrow_mut().counters.limit_refused += 1;
        r
    };
    ctx.admission
        .check_origin(head.origin.as_deref())
        .map_err(|r| counted(rejection(r)))?;
    let Early {
        counted: mut place,
        peer,
    } = early;
    if let Some(peer) = peer.filter(|p| ctx.admission.is_trusted(*p)) {
        let client = ctx.admission.client_ip(peer, head.forwarded_for.as_deref());
        place.ip = ctx
            .admission
            .admit_ip(client, Instant::now())
            .map_err(|r| counted(rejection(r)))?;
    }
    let Some(auth) = &ctx.auth else {
        return Ok(place.ip.is_some().then(|| Session {
            counted: place,
            ..Session::default()
        }));
    };
    let grant = match &head.token {
        None => None,
        Some(Err(what)) => {
            ctx.metrics.borrow_mut().counters.auth_refused += 1;
            return Err(Rejection::json(
                401,
                "unauthorized",
                Some("malformed"),
                *what,
                None,
            ));
        }
        Some(Ok(token)) => match auth.verify(token, unix_now()) {
            Ok(g) => Some(g),
            Err(r) => {
                ctx.metrics.borrow_mut().counters.auth_refused += 1;
                return Err(Rejection::json(
                    401,
                    "unauthorized",
                    Some(r.reason.as_str()),
                    r.message,
                    None,
                ));
            }
        },
    };
    if let Some(g) = &grant {
        if ctx
            .admission
            .admit_user(&g.sub)
            .map_err(|r| counted(rejection(r)))?
        {
            place.user = Some(g.sub.clone());
        }
    }
    Ok(Some(Session {
        grant: grant.map(Rc::new),
        counted: place,
        ..Session::default()
    }))
}

/// What a new connection's `welcome` says of its identity.
pub(crate) struct Welcome {
    /// It must send `auth` within this many ms.
    pub(crate) auth_required_ms: Option<u64>,
    /// Its upgrade carried this valid token.
    pub(crate) grant: Option<Rc<Grant>>,
}

/// The `welcome`'s auth fields of a connection just opened with `session`.
pub(crate) fn welcome(ctx: &ShardCtx, session: Option<&Session>) -> Welcome {
    let grant = session.and_then(|s| s.grant.clone());
    let auth_required_ms = ctx
        .auth
        .as_ref()
        .filter(|a| grant.is_none() && a.anonymous().is_none())
        .map(|a| a.timeout.as_millis() as u64);
    Welcome {
        auth_required_ms,
        grant,
    }
}

/// Keeps the session of a connection just opened and starts its clock: the auth deadline
/// of a connection that must authenticate, the refresh and expiry of a token.
pub(crate) fn opened(ctx: &ShardCtx, conn: &Conn, session: Option<Session>) {
    let Some(auth) = &ctx.auth else {
        if let Some(s) = session {
            ctx.sessions.by_conn.borrow_mut().insert(conn.id(), s);
        }
        return;
    };
    let session = session.unwrap_or_default();
    let now = Instant::now();
    if session.grant.is_none() && auth.anonymous().is_none() {
        ctx.sessions.clock.borrow_mut().push(Reverse((
            now + auth.timeout,
            conn.id(),
            0,
            Due::AuthTimeout,
        )));
    }
    if let Some(g) = &session.grant {
        schedule(ctx, conn.id(), g, session.generation);
    }
    // A connection with no token and not counted anywhere needs no entry (an anonymous
    // one costs nothing more); its first `auth` makes one.
    if session.grant.is_some() || session.counted.ip.is_some() {
        ctx.sessions.by_conn.borrow_mut().insert(conn.id(), session);
    }
}

/// Schedules the `refresh` (at `exp` minus min(30 s, a third of the lifetime), minus up to
/// a quarter of that lead as jitter) and the close (at `exp` plus the leeway).
fn schedule(ctx: &ShardCtx, conn: u64, grant: &Grant, generation: u32) {
    let Some(auth) = &ctx.auth else { return };
    let (now, unix) = (Instant::now(), unix_time());
    let lead = Duration::from_secs(30).min(Duration::from_secs(grant.lifetime) / 3);
    // Jitter spread by connection id (a multiplicative hash), so connections whose tokens
    // share an `exp` do not all refresh in the same instant.
    let spread = (conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64;
    let jitter = lead.mul_f64(0.25 * spread);
    let exp = instant_of(grant.exp, now, unix);
    let refresh_at = exp.checked_sub(lead + jitter).unwrap_or(now).max(now);
    let expire_at = exp + Duration::from_secs(auth.leeway());
    let mut clock = ctx.sessions.clock.borrow_mut();
    clock.push(Reverse((refresh_at, conn, generation, Due::Refresh)));
    clock.push(Reverse((expire_at, conn, generation, Due::Expire)));
}

/// Drops the clock's entries that can no longer do anything (of connections gone, or of a
/// grant since replaced) once the clock has doubled since it was last compacted: entries
/// otherwise stay until due, up to a token's lifetime, and a client reconnecting or
/// re-authenticating in a loop would grow it without bound. Amortised O(1) per entry pushed.
/// Run from [`tick`] only, where every connection it looks at is registered (a connection
/// being opened is not yet, and would lose its deadlines).
fn compact(ctx: &ShardCtx) {
    let mut clock = ctx.sessions.clock.borrow_mut();
    if clock.len() < ctx.sessions.compact_at.get() {
        return;
    }
    let by_conn = ctx.sessions.by_conn.borrow();
    let conns = ctx.conns.borrow();
    clock.retain(|Reverse((_, id, generation, due))| {
        conns.contains_key(id)
            && match due {
                Due::AuthTimeout => by_conn.get(id).is_none_or(|s| s.grant.is_none()),
                Due::Refresh | Due::Expire => {
                    by_conn.get(id).is_some_and(|s| s.generation == *generation)
                }
            }
    });
    ctx.sessions.compact_at.set(2 * clock.len() + 1024);
}

/// The grant in force on `conn`, if any.
fn grant_of(ctx: &ShardCtx, conn: &Conn) -> Option<Rc<Grant>> {
    let by_conn = ctx.sessions.by_conn.borrow();
    by_conn.get(&conn.id()).and_then(|s| s.grant.clone())
}

/// Checks every interest of a subscribe against the connection's permissions (its token's,
/// or anonymous access; the reserved `_sys.` topics against [`crate::operator`]):
/// `Err((code, message))` for the first refused one. With auth off, only reserved topics can
/// be refused.
pub(crate) fn check_subscribe(
    ctx: &ShardCtx,
    conn: &Conn,
    wanted: &[Interest],
) -> Result<(), (&'static str, String)> {
    crate::operator::check(ctx, conn, wanted)?;
    let Some(auth) = &ctx.auth else {
        return Ok(());
    };
    // The operator's topics answer to the admin key alone.
    if wanted.iter().all(crate::operator::is_system) {
        return Ok(());
    }
    let grant = grant_of(ctx, conn);
    let permissions = match (&grant, auth.anonymous()) {
        (Some(g), _) => &g.permissions,
        (None, Some(anonymous)) => anonymous,
        (None, None) => {
            return Err((
                code::AUTH_REQUIRED,
                "send {\"op\":\"auth\",\"token\":…} first: this server has no anonymous access"
                    .into(),
            ))
        }
    };
    for i in wanted.iter().filter(|i| !crate::operator::is_system(i)) {
        if !permissions.allows(auth.private(), selector(i)) {
            return Err((
                code::FORBIDDEN,
                format!("{:?} is not allowed for this connection", name(i)),
            ));
        }
    }
    Ok(())
}

fn selector(i: &Interest) -> Selector<'_> {
    match i {
        Interest::Topic(t) => Selector::Topic(t),
        Interest::Prefix(p) => Selector::Prefix(p),
    }
}

fn name(i: &Interest) -> String {
    match i {
        Interest::Topic(t) => t.to_string(),
        Interest::Prefix(p) => format!("{p}.*"),
    }
}

/// True when a request other than `auth` and `ping` must wait for `auth` (it is refused
/// with `auth_required`): auth is on, anonymous access is off, no token is in force, and the
/// connection did not send the admin key (the operator's requests go on to
/// [`check_subscribe`], which refuses all but the reserved topics).
pub(crate) fn pending(ctx: &ShardCtx, conn: &Conn) -> bool {
    ctx.auth.as_ref().is_some_and(|a| {
        a.anonymous().is_none()
            && grant_of(ctx, conn).is_none()
            && !crate::operator::sent_key(ctx, conn)
    })
}

/// The `auth` message: checks the token (at most once per [`crate::identity::AUTH_INTERVAL`]), keeps it in
/// force, answers with an `ack` or an error, and ends the subscriptions a refreshed token
/// no longer allows. A token for another `sub` than the one in force is refused
/// (`sub_mismatch`) and the old one stays.
pub(crate) fn on_auth(ctx: &ShardCtx, conn: &Rc<Conn>, id: Option<u64>, token: &str) {
    let Some(auth) = &ctx.auth else {
        let msg = "authentication is not configured on this server: every topic is open";
        return conn.push_own(ctx, protocol::error(id, code::BAD_REQUEST, msg));
    };
    if !ctx.sessions.take_turn(conn.id(), |s| &mut s.last_auth) {
        let msg = crate::identity::AUTH_TOO_SOON;
        return conn.push_own(ctx, protocol::error(id, code::RATE_LIMITED, msg));
    }
    let mut by_conn = ctx.sessions.by_conn.borrow_mut();
    let session = by_conn.entry(conn.id()).or_default();
    let grant = match auth.verify(token, unix_now()) {
        Ok(g) => g,
        Err(r) => {
            drop(by_conn);
            ctx.metrics.borrow_mut().counters.auth_refused += 1;
            let frame =
                protocol::error_with_reason(id, code::UNAUTHORIZED, r.reason.as_str(), &r.message);
            return conn.push_own(ctx, frame);
        }
    };
    if let Some(old) = &session.grant {
        if old.sub != grant.sub {
            drop(by_conn);
            let msg = "the token is for another user; the one in force stays until it expires";
            return conn.push_own(ctx, protocol::error(id, code::SUB_MISMATCH, msg));
        }
    } else {
        match ctx.admission.admit_user(&grant.sub) {
            Ok(counted) => {
                if counted {
                    session.counted.admission = Some(ctx.admission.clone());
                    session.counted.user = Some(grant.sub.clone());
                }
            }
            Err(r) => {
                drop(by_conn);
                ctx.metrics.borrow_mut().counters.limit_refused += 1;
                return conn.push_own(
                    ctx,
                    protocol::error(id, code::TOO_MANY_CONNECTIONS, &r.message),
                );
            }
        }
    }
    let narrower = session
        .grant
        .as_ref()
        .is_some_and(|old| !grant.permissions.same_as(&old.permissions));
    session.generation += 1;
    let generation = session.generation;
    let grant = Rc::new(grant);
    session.grant = Some(grant.clone());
    drop(by_conn);
    schedule(ctx, conn.id(), &grant, generation);
    conn.push_own(ctx, protocol::auth_ack(id, &grant.sub, grant.exp));
    if narrower {
        end_forbidden(ctx, conn, &grant.permissions);
    }
}

/// Ends every subscription of `conn` that `permissions` do not allow: out of the table, its
/// queued frames purged, and an `unsubscribed` with reason `forbidden` for each.
fn end_forbidden(ctx: &ShardCtx, conn: &Rc<Conn>, permissions: &Permissions) {
    let private = ctx.auth.as_ref().expect("auth is on").private();
    let mut gone: Vec<Interest> = conn
        .subscriptions()
        .into_iter()
        .filter(|i| !crate::operator::is_system(i) && !permissions.allows(private, selector(i)))
        .collect();
    if gone.is_empty() {
        return;
    }
    gone.sort_unstable();
    conn.remove_subscriptions(&gone);
    ctx.metrics.borrow_mut().counters.subscriptions -= gone.len() as u64;
    let mut to_dispatcher = Vec::new();
    {
        let mut table = ctx.table.borrow_mut();
        for i in &gone {
            table.unsubscribe(conn, i, &mut to_dispatcher);
        }
    }
    ctx.tell_dispatcher(to_dispatcher);
    let placed = conn.retain_covered();
    let mut m = ctx.metrics.borrow_mut();
    m.counters.gap_notices += placed as u64;
    m.counters.revoked += gone.len() as u64;
    drop(m);
    for i in &gone {
        conn.push_own(ctx, protocol::unsubscribed(&name(i), "forbidden"));
    }
    ctx.mark_dirty(conn);
}

/// The shard's auth clock, run on every pass of the readiness loop (no timer of its own):
/// sends due `refresh` messages and closes connections whose `auth` is late (4003) or whose
/// token expired (4004); the loop then writes what it queued. A pass with nothing due costs a
/// look at the earliest deadline. Passes come at least every `idle_nap_max_us` (1 ms by
/// default), so a deadline is met within about that.
pub(crate) fn tick(ctx: &ShardCtx, now: Instant) {
    if ctx.auth.is_none() || ctx.shutting_down.get() {
        return;
    }
    compact(ctx);
    loop {
        let next = {
            let mut clock = ctx.sessions.clock.borrow_mut();
            match clock.peek() {
                Some(Reverse((at, ..))) if *at <= now => clock.pop().map(|Reverse(e)| e),
                _ => None,
            }
        };
        let Some((_, conn_id, generation, due)) = next else {
            return;
        };
        let Some(conn) = ctx.conn(conn_id) else {
            continue;
        };
        // No entry: a connection that never sent a valid `auth`.
        let (current, exp, operator) = {
            let by_conn = ctx.sessions.by_conn.borrow();
            by_conn.get(&conn_id).map_or((0, None, false), |s| {
                (s.generation, s.grant.as_ref().map(|g| g.exp), s.operator)
            })
        };
        match (due, exp) {
            // The operator's connection (the admin key) reads the reserved topics only.
            (Due::AuthTimeout, None) if operator => {}
            (Due::AuthTimeout, None) => {
                ctx.metrics.borrow_mut().counters.auth_closes += 1;
                conn.request_close(ctx, CloseRequest::AuthRequired);
                ctx.activity.bump(); // taken on the next pass, not after a nap
            }
            (Due::Refresh, Some(exp)) if current == generation => {
                conn.push_own(ctx, protocol::refresh(exp));
                ctx.mark_dirty(&conn);
            }
            (Due::Expire, Some(_)) if current == generation => {
                ctx.metrics.borrow_mut().counters.auth_closes += 1;
                conn.request_close(ctx, CloseRequest::TokenExpired);
                ctx.activity.bump();
            }
            _ => {}
        }
    }
}

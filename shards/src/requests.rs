//! What a client's frames do: each whole frame takes a token from the rate limit, then a
//! request is parsed and acted on (subscribe, unsubscribe, ping), answered with an `ack`,
//! `error` or `pong` in request order; a subscribe that waits for the dispatcher holds the
//! requests behind it. Data path: open -> **requests** -> table / dispatcher.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::close;
use crate::connection::Conn;
use crate::ctx::{Handler, ShardCtx};
use crate::ending::Ending;
use crate::inbound::{Event, Fatal, MessageKind};
use crate::protocol::{self, code, AckTopic, Request};
use crate::ratelimit::Verdict;
use crate::ring::{Interest, RecoverItem, Start};
use crate::table::Resolved;
use crate::topic::{parse_selector, Selector};

/// Handles every complete event in the buffer, stopping early while a subscribe waits for
/// the dispatcher; `Some` when the connection must end.
pub(crate) fn drain_events(ctx: &ShardCtx, conn: &Rc<Conn>) -> Option<Ending> {
    let end = loop {
        if conn.awaiting() {
            break None;
        }
        let next = conn.next_event(ctx.config.max_message_bytes);
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
    if !conn.drained() {
        ctx.mark_dirty(conn);
    }
    end
}

/// Acts on one inbound frame. Every frame but a close takes a token from the rate limit,
/// continuation frames included; a refused fragment drops its whole message.
fn handle_event(ctx: &ShardCtx, conn: &Rc<Conn>, event: Event) -> Option<Ending> {
    if let Event::Close(code) = event {
        return Some(Ending::ClientClosed(code));
    }
    let now = Instant::now();
    let verdict = conn.take_token(&ctx.limits, now);
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
                Event::Fragment(_) => {
                    conn.set_refused_message(true);
                }
                Event::Text(_) | Event::Binary(_) => {
                    conn.set_refused_message(false);
                }
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
        conn.heard(now);
    }
    match event {
        Event::Text(mut text) => {
            if conn.set_refused_message(false) {
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
            if !conn.set_refused_message(false) {
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
    if ctx.auth.is_some() && crate::session::pending(ctx, conn) {
        let id = match &req {
            Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::Resync { id, .. } => Some(*id),
            Request::Ping { .. } | Request::Auth { .. } | Request::AdminAuth { .. } => None,
        };
        if let Some(id) = id {
            let msg =
                "send {\"op\":\"auth\",\"token\":…} first: this server has no anonymous access";
            return reject(ctx, conn, id, code::AUTH_REQUIRED, msg);
        }
    }
    match req {
        Request::Ping { id } => conn.push_own(ctx, protocol::pong(id)),
        Request::Auth { id, token } => crate::session::on_auth(ctx, conn, id, &token),
        Request::AdminAuth { id, key } => crate::operator::on_admin_auth(ctx, conn, id, &key),
        Request::Resync { id, topic, fresh } => resync(ctx, conn, id, &topic, fresh),
        Request::Subscribe { id, topics } => {
            let names: Vec<String> = topics.iter().map(|e| e.name.clone()).collect();
            let wanted = match interests(&names) {
                Ok(w) => w,
                Err(msg) => return reject(ctx, conn, id, code::BAD_TOPIC, &msg),
            };
            if let Err((code, msg)) = crate::session::check_subscribe(ctx, conn, &wanted) {
                if code == code::FORBIDDEN {
                    ctx.metrics.borrow_mut().counters.forbidden += 1;
                    if let Some(suppressed) = ctx.logs.refusals.allow(Instant::now()) {
                        tracing::info!(shard = ctx.id, conn = conn.id(), message = %msg, suppressed, "subscribe forbidden");
                    }
                }
                return reject(ctx, conn, id, code, &msg);
            }
            // Topics that need the dispatcher's history: a resume (`since`), or any new
            // subscription to a snapshot topic (it starts from the snapshot).
            let mut recover: Vec<RecoverItem> = Vec::new();
            for entry in &topics {
                match parse_selector(&entry.name) {
                    Ok(Selector::Prefix(_)) if entry.since.is_some() => {
                        let msg = format!(
                            "{:?}: \"since\" names a position in one topic, not a pattern",
                            entry.name
                        );
                        return reject(ctx, conn, id, code::BAD_REQUEST, &msg);
                    }
                    Ok(Selector::Topic(t)) => {
                        if let Some(pattern) =
                            entry.since.as_ref().and_then(|_| conn.pattern_covering(t))
                        {
                            let msg = format!(
                                "{t:?} is delivered to this connection through {pattern}.*: a resume of it could repeat what the pattern sent; unsubscribe the pattern first"
                            );
                            return reject(ctx, conn, id, code::BAD_REQUEST, &msg);
                        }
                        let snapshot = ctx.namespaces.rules(t).snapshots;
                        let already = conn.is_subscribed(&Interest::Topic(Arc::from(t)))
                            || recover.iter().any(|r| &*r.topic == t);
                        if (entry.since.is_some() || snapshot) && !already {
                            recover.push(RecoverItem {
                                topic: Arc::from(t),
                                since: entry
                                    .since
                                    .as_ref()
                                    .map(|s| (s.epoch.clone().into_boxed_str(), s.seq)),
                                snapshot,
                            });
                        }
                    }
                    _ => {}
                }
            }
            let items: Vec<(Interest, bool)> = {
                let table = ctx.table.borrow();
                wanted
                    .into_iter()
                    .map(|i| table.intern(i))
                    .map(|i| {
                        let new = !conn.is_subscribed(&i);
                        (i, new)
                    })
                    .collect()
            };
            let new = items.iter().filter(|(_, n)| *n).count();
            let (have, have_patterns) = conn.subscription_counts();
            if have + new > ctx.config.max_subscriptions {
                let msg = format!(
                    "{have} subscriptions + {new} new is over the limit of {}",
                    ctx.config.max_subscriptions
                );
                return reject(ctx, conn, id, code::TOO_MANY_SUBSCRIPTIONS, &msg);
            }
            let is_pattern = |i: &Interest| matches!(i, Interest::Prefix(_));
            let new_patterns = items.iter().filter(|(i, n)| *n && is_pattern(i)).count();
            if have_patterns + new_patterns > ctx.config.max_patterns {
                let msg = format!(
                    "{have_patterns} patterns + {new_patterns} new is over the limit of {}",
                    ctx.config.max_patterns
                );
                return reject(ctx, conn, id, code::TOO_MANY_PATTERNS, &msg);
            }
            let added: Vec<&Interest> = items.iter().filter(|(_, n)| *n).map(|(i, _)| i).collect();
            ctx.metrics.borrow_mut().counters.subscriptions += added.len() as u64;
            conn.add_subscriptions(added.into_iter());
            // Every interest of the request is to be joined when it completes (the table never
            // adds a subscriber twice), even one an earlier pending request also named.
            let items: Vec<(Interest, bool)> = items.into_iter().map(|(i, _)| (i, true)).collect();
            let me = conn.clone();
            let mut to_dispatcher = Vec::new();
            let done = ctx
                .table
                .borrow_mut()
                .subscribe(me, id, items, recover, &mut to_dispatcher);
            ctx.tell_dispatcher(to_dispatcher);
            match done {
                Some(r) => deliver_resolved(ctx, r),
                // Later requests wait until the dispatcher's reply completes this one.
                None => {
                    conn.set_awaiting(true);
                }
            }
        }
        Request::Unsubscribe { id, topics } => {
            let gone = match interests(&topics) {
                Ok(w) => w,
                Err(msg) => return reject(ctx, conn, id, code::BAD_TOPIC, &msg),
            };
            if let Some(missing) = gone.iter().find(|i| !conn.is_subscribed(i)) {
                let msg = format!("not subscribed to {:?}", interest_name(missing));
                return reject(ctx, conn, id, code::NOT_SUBSCRIBED, &msg);
            }
            let mut sorted_gone = gone.clone();
            sorted_gone.sort_unstable();
            conn.remove_subscriptions(&sorted_gone);
            ctx.metrics.borrow_mut().counters.subscriptions -= sorted_gone.len() as u64;
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
                    let name = interest_name(i);
                    acked.push(AckLine {
                        epoch: seq.is_some(),
                        seq,
                        ..AckLine::new(name)
                    });
                }
            }
            ctx.tell_dispatcher(to_dispatcher);
            let placed = conn.retain_covered();
            ctx.metrics.borrow_mut().counters.gap_notices += placed as u64;
            conn.push_own(ctx, ack_frame(ctx, id, &acked));
        }
    }
}

/// `resync`: the connection's queued frames of a snapshot topic it subscribes to are purged
/// and it starts over from the snapshot, answered with an `ack` like a subscribe's.
fn resync(ctx: &ShardCtx, conn: &Rc<Conn>, id: Option<u64>, topic: &str, fresh: bool) {
    let name = match parse_selector(topic) {
        Ok(Selector::Topic(t)) => t,
        Ok(Selector::Prefix(_)) => {
            let msg = format!("{topic:?}: resync names one topic, not a pattern");
            return reject(ctx, conn, id, code::BAD_REQUEST, &msg);
        }
        Err(e) => {
            return reject(
                ctx,
                conn,
                id,
                code::BAD_TOPIC,
                &format!("topic {topic:?}: {e}"),
            )
        }
    };
    if !ctx.namespaces.rules(name).snapshots {
        let msg = format!("{name:?} is not a snapshot topic: there is no snapshot to start from");
        return reject(ctx, conn, id, code::NO_SNAPSHOT, &msg);
    }
    let interest = ctx.table.borrow().intern(Interest::Topic(Arc::from(name)));
    if !conn.is_subscribed(&interest) {
        let msg = format!("not subscribed to {name:?}");
        return reject(ctx, conn, id, code::NOT_SUBSCRIBED, &msg);
    }
    let placed = conn.purge_topic(name);
    ctx.metrics.borrow_mut().counters.gap_notices += placed as u64;
    if fresh {
        // Ask the publisher for a new snapshot (at most once per the request interval per
        // topic, whoever asks); the held one is sent meanwhile.
        let _ = ctx
            .control
            .try_send(crate::ring::ControlMsg::SnapshotWanted {
                shard: ctx.id,
                topics: vec![Arc::from(name)],
            });
    }
    let item = RecoverItem {
        topic: Arc::from(name),
        since: None,
        snapshot: true,
    };
    let mut to_dispatcher = Vec::new();
    let done =
        ctx.table
            .borrow_mut()
            .resync(conn.clone(), id, interest, item, false, &mut to_dispatcher);
    ctx.tell_dispatcher(to_dispatcher);
    match done {
        Some(r) => deliver_resolved(ctx, r),
        None => {
            conn.set_awaiting(true);
        }
    }
}

/// The gap policy of `topic`'s namespace after drop-oldest dropped frames of it from `conn`'s
/// queue: `notice` (the gap notice already recorded; on a snapshot topic the topic's queued
/// frames are purged too and the connection waits for the next snapshot, so it never gets a
/// delta it cannot apply), `disconnect` (close 4002), or
/// `resnapshot` (the notices are put in place, the topic's queued frames purged, and the held
/// snapshot and the deltas after it follow, as for a resync without an ack). A connection
/// that receives the topic only through a pattern gets notices whatever the policy.
pub(crate) fn apply_gap_policy(ctx: &ShardCtx, conn: &Rc<Conn>, topic: &Arc<str>) {
    use crate::namespace::GapPolicy;
    let rules = ctx.namespaces.rules(topic);
    match rules.gap_policy {
        GapPolicy::Notice if rules.snapshots => {
            // A delta after the gap could not be applied: the topic's queued frames go (the
            // notice stays) and the connection waits for the next snapshot, as a new
            // subscriber with none held would.
            if !conn.is_subscribed(&Interest::Topic(topic.clone())) {
                return;
            }
            let placed = conn.announce_then_purge(topic);
            ctx.metrics.borrow_mut().counters.gap_notices += placed as u64;
            ctx.table.borrow_mut().hold_until_snapshot(conn, topic);
        }
        GapPolicy::Notice => {}
        GapPolicy::Disconnect => {
            conn.request_close(ctx, crate::connection::CloseRequest::SlowConsumer);
        }
        GapPolicy::Resnapshot => {
            let interest = Interest::Topic(topic.clone());
            if !conn.is_subscribed(&interest) {
                return;
            }
            let placed = conn.announce_then_purge(topic);
            ctx.metrics.borrow_mut().counters.gap_notices += placed as u64;
            let item = RecoverItem {
                topic: topic.clone(),
                since: None,
                snapshot: true,
            };
            let mut to_dispatcher = Vec::new();
            let done = ctx.table.borrow_mut().resync(
                conn.clone(),
                None,
                interest,
                item,
                true,
                &mut to_dispatcher,
            );
            ctx.tell_dispatcher(to_dispatcher);
            if let Some(r) = done {
                deliver_resolved(ctx, r);
            }
        }
    }
}

/// Most frames a connection's queue may hold after a resume's replay is added: past it the
/// resume of a stream topic is answered `"recovered":false` (the connection joined at the
/// head, so nothing is lost but the replay). Bounds what a client that resumes many topics without reading can
/// make the shard hold (a replay is never dropped).
pub(crate) const MAX_QUEUED_REPLAY: usize = 20_000;

/// One line of an `ack`, owned until the frame is made.
struct AckLine {
    topic: String,
    seq: Option<u64>,
    /// Carries the node's epoch (every topic does; a pattern does not).
    epoch: bool,
    recovered: Option<bool>,
    start: Option<Start>,
    waiting: bool,
}

impl AckLine {
    fn new(topic: String) -> AckLine {
        AckLine {
            topic,
            seq: None,
            epoch: false,
            recovered: None,
            start: None,
            waiting: false,
        }
    }
}

/// The `ack` frame for topics named as the client wrote them.
fn ack_frame(ctx: &ShardCtx, id: Option<u64>, lines: &[AckLine]) -> Vec<u8> {
    let topics: Vec<AckTopic<'_>> = lines
        .iter()
        .map(|l| AckTopic {
            topic: &l.topic,
            seq: l.seq,
            epoch: l.epoch.then_some(&*ctx.epoch),
            recovered: l.recovered,
            start: l.start.map(|s| match s {
                Start::Next => "next",
                Start::Snapshot => "snapshot",
            }),
            waiting: l.waiting,
        })
        .collect();
    protocol::ack(id, &topics)
}

/// Sends the ack of a finished subscribe request to its connection, then the replay of each
/// topic that has one (history recovered, or a snapshot and its deltas), and lets the
/// requests that waited behind it be read (on the readiness loop's next pass).
pub(crate) fn deliver_resolved(ctx: &ShardCtx, r: Resolved<Conn>) {
    let Resolved {
        sub,
        id,
        topics,
        recovered,
        quiet,
        behind,
    } = r;
    for (other, topic, from, to) in behind {
        other.push_notice(&topic, from, to, protocol::reason::SHARD_OVERFLOW);
        let mut m = ctx.metrics.borrow_mut();
        m.counters.shard_gaps += 1;
        m.counters.overflow_notices += 1;
        ctx.mark_dirty(&other);
    }
    if quiet {
        // A resnapshot: the snapshot and its deltas replace what was dropped; no ack, and
        // the connection's own requests are not held for it.
        for (_, answer) in recovered {
            sub.push_replay(answer.frames);
        }
        ctx.mark_dirty(&sub);
        return;
    }
    // A resume whose replay would make the queue too long is not recovered after all.
    let mut recovered = recovered;
    let mut queued = sub.queued();
    for (topic, a) in &mut recovered {
        // (A snapshot topic keeps its replay: not recovered, it would start from a snapshot,
        // which only the dispatcher can give; its replay is bounded by its history.)
        if a.recovered == Some(true)
            && queued + a.frames.len() > MAX_QUEUED_REPLAY
            && !ctx.namespaces.rules(topic).snapshots
        {
            a.recovered = Some(false);
            a.seq = a.head;
            a.frames.clear();
        }
        queued += a.frames.len();
    }
    let mut lines = Vec::with_capacity(topics.len());
    for (interest, seq) in &topics {
        let mut line = AckLine::new(interest_name(interest));
        line.seq = *seq;
        if let Interest::Topic(t) = interest {
            line.epoch = true;
            line.start = Some(Start::Next);
            if let Some((_, a)) = recovered.iter().find(|(r, _)| r == t) {
                line.seq = Some(a.seq);
                line.recovered = a.recovered;
                line.start = Some(a.start);
                line.waiting = a.waiting;
            }
        }
        lines.push(line);
    }
    sub.push_own(ctx, ack_frame(ctx, id, &lines));
    for (_, answer) in recovered {
        sub.push_replay(answer.frames);
    }
    ctx.mark_dirty(&sub);
    if sub.set_awaiting(false) {
        ctx.readiness.read_again(sub.id());
    }
}

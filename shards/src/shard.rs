//! A shard: one glommio `LocalExecutor` pinned to one core, owning its listener, its sockets,
//! its subscription table and its metrics. Nothing here is shared with another thread except
//! the two rings to the dispatcher.
//!
//! Tasks on a shard, all in glommio's default queue: the acceptor (polls the listener), a
//! short task per handshake, the readiness loop (serves every connection from its upgrade to
//! its close from one epoll set), the ring drain (polls the ring; one fan-out round at a time,
//! then one executor pass for everyone else), the heartbeat, the idle napper, the control pump
//! (shard -> dispatcher), and the reporter.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel;
use glommio::Placement;

use crate::config::ShardConfig;
use crate::connection::{CloseRequest, Conn};
pub use crate::ctx::Handler;
use crate::ctx::ShardCtx;
use crate::ring::{ControlMsg, RingReceiver, RingSender, ShardMsg, TopicId};
use crate::table::Routed;

/// Everything a shard needs to start. Built on the main thread, moved to the shard's thread.
pub struct ShardSpec {
    /// Index of this shard, 0-based.
    pub id: usize,
    /// CPU to pin the shard to; `None` lets the OS place it.
    pub core: Option<usize>,
    /// The shard's own `SO_REUSEPORT` listener, already listening.
    pub listener: std::net::TcpListener,
    /// Dispatcher -> shard ring.
    pub ring: RingReceiver<ShardMsg>,
    /// Shard -> dispatcher ring.
    pub control: RingSender<ControlMsg>,
    pub config: ShardConfig,
    /// What the shard does with clients' messages; [`Handler::Protocol`] for a server.
    pub handler: Handler,
    /// Work that shares this shard's executor and core (the dispatcher, when cores are
    /// scarce); `None` for a shard alone on its executor.
    pub guest: Option<Guest>,
    /// Per-prefix topic rules, shared with the dispatcher.
    pub namespaces: std::sync::Arc<crate::namespace::Namespaces>,
    /// The node's epoch (the dispatcher's, shared): at least 64 random bits as
    /// `[A-Za-z0-9]` text, new at every start.
    pub epoch: std::sync::Arc<str>,
    /// How subscribers waiting for a snapshot are looked after.
    pub waits: crate::namespace::Waits,
    /// Token checks and permissions, shared by every shard; `None`: auth is off (every
    /// topic open to every client).
    pub auth: Option<std::sync::Arc<crate::auth::Auth>>,
    /// The Origin allow-list and connection limits, counted across every shard.
    pub admission: std::sync::Arc<crate::admission::Admission>,
    /// Set while the admin endpoint wants per-topic subscriber counts in the reports
    /// (`/topics`); read once per report, never on the fan-out path.
    pub topics_wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The admin key (`server.admin_key`, or the one made at start for the dashboard): a
    /// connection that sends it in an `auth` message may subscribe to the reserved `_sys.`
    /// topics; `None` (no admin endpoint): nobody may (docs/protocol.md, "Reserved topics").
    pub admin_key: Option<std::sync::Arc<str>>,
}

/// Work run on a shard's executor beside the shard: called once on the shard's thread, before
/// the shard's own tasks start (so it may spawn local tasks), it returns its main future and
/// what keeps the shared executor awake or wakes it (joined into the shard's one napper). The
/// shard runs the future as a task and, when the shard itself has shut down, waits for it to
/// end: the guest should end once it has seen the shard's goodbye.
pub type Guest = Box<
    dyn FnOnce() -> (
            std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
            crate::executor::WakeOn,
        ) + Send,
>;

/// Starts the shard's executor thread. The handle joins when the shard has shut down.
pub fn spawn(spec: ShardSpec) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    let placement = match spec.core {
        Some(core) => Placement::Fixed(core),
        None => Placement::Unbound,
    };
    crate::executor::builder(&format!("shard-{}", spec.id), placement)
        .spawn(move || run(spec))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

async fn run(spec: ShardSpec) {
    let readiness = match crate::readiness::Readiness::new() {
        Ok(r) => r,
        Err(e) => panic!("shard {}: cannot create its epoll set: {e}", spec.id),
    };
    let ShardSpec {
        id,
        listener,
        ring,
        control,
        config,
        handler,
        guest,
        namespaces,
        epoch,
        waits,
        auth,
        admission,
        topics_wanted,
        admin_key,
        ..
    } = spec;
    let (control_tx, control_rx) = local_channel::new_unbounded::<ControlMsg>();
    let ctx = Rc::new(ShardCtx {
        id,
        handler,
        bounds: config.bounds(),
        limits: config.limits(),
        config,
        table: RefCell::default(),
        metrics: RefCell::default(),
        readiness,
        conns: RefCell::default(),
        dirty: RefCell::default(),
        holding: Cell::new(false),
        flushing: RefCell::default(),
        lingering: RefCell::default(),
        scratch: RefCell::new(vec![0u8; 64 * 1024]),
        control: control_tx,
        next_conn: Cell::new(1),
        stamp: Cell::new(0),
        activity: Rc::default(),
        handshaking: Rc::default(),
        namespaces,
        epoch,
        shutting_down: Cell::new(false),
        auth,
        admission,
        admin_key,
        sessions: Default::default(),
        logs: Default::default(),
    });

    let to_dispatcher = control;
    let pump = glommio::spawn_local(async move {
        while let Some(msg) = control_rx.recv().await {
            let last = matches!(msg, ControlMsg::Goodbye { .. });
            if to_dispatcher.push(msg).await.is_err() || last {
                break;
            }
        }
    });

    // The listener ends a nap too while the acceptor waits: a new connection need not wait
    // one out.
    let listening: Rc<RefCell<Vec<std::os::fd::RawFd>>> = Rc::default();
    let acceptor = glommio::spawn_local({
        let ctx = ctx.clone();
        let nap_fds = listening.clone();
        crate::socket::accept_polled(
            listener,
            crate::executor::ACCEPT_POLL,
            nap_fds,
            move |stream| {
                ctx.metrics.borrow_mut().counters.accepted += 1;
                ctx.activity.bump();
                glommio::spawn_local(crate::upgrade::serve(ctx.clone(), stream)).detach();
            },
        )
    });

    glommio::spawn_local(crate::open::serve_open(ctx.clone())).detach();
    glommio::spawn_local(heartbeat(ctx.clone())).detach();
    glommio::spawn_local(snapshot_waiters(ctx.clone(), waits)).detach();
    let (nap, nap_max) = ctx.config.idle_naps();
    // A nap ends when the dispatcher pushes (the ring's doorbell), a client socket has news
    // (the epoll set, or the socket itself during its upgrade) or a client connects (the
    // listener), and lasts no longer than an open batch window. A guest adds its own.
    let window_ends = Rc::new(Cell::new(None));
    let mut wake = crate::executor::WakeOn {
        activity: vec![ctx.activity.clone()],
        fds: vec![ctx.readiness.fd()],
        changing: vec![listening.clone(), ctx.handshaking.clone()],
        wakes: vec![Box::new(ring.wake())],
        deadlines: vec![window_ends.clone()],
    };
    let guest = guest.map(|start| {
        let (main, guest_wake) = start();
        wake = std::mem::take(&mut wake).join(guest_wake);
        glommio::spawn_local(main)
    });
    glommio::spawn_local(crate::executor::nap_when_idle(nap, nap_max, wake)).detach();
    if ctx.config.report_interval_ms > 0 {
        glommio::spawn_local(reporter(ctx.clone(), topics_wanted)).detach();
    }

    let drain = glommio::spawn_local(drain_ring(ctx.clone(), ring, window_ends));
    drain.await;

    // Shutdown: stop accepting, close every connection with "going away", wait for them.
    ctx.shutting_down.set(true);
    drop(acceptor);
    let conns: Vec<Rc<Conn>> = ctx.conns.borrow().values().cloned().collect();
    for c in &conns {
        c.request_close(&ctx, CloseRequest::GoingAway);
    }
    drop(conns);
    let deadline = Instant::now() + Duration::from_millis(ctx.config.shutdown_grace_ms + 1100);
    while !ctx.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let report = ctx.metrics.borrow().report(id);
    ctx.tell_control_report(report);
    let _ = ctx.control.try_send(ControlMsg::Goodbye { shard: id });
    pump.await;
    if let Some(guest) = guest {
        guest.await;
    }
}

impl ShardCtx {
    fn tell_control_report(&self, report: crate::metrics::ShardReport) {
        let _ = self.control.try_send(ControlMsg::Report(Box::new(report)));
    }
}

/// Most ring messages handled in one fan-out round.
const ROUND_LIMIT: usize = 4096;

/// Drains the dispatcher ring in rounds: route every frame into subscriber queues, then
/// write each touched connection once. With a batch window, touched connections are written
/// when the oldest unwritten frame has waited the window, so several rounds share one write.
/// Returns on `Shutdown` or when the dispatcher is gone. `window_ends`: when the open batch
/// window closes (`None`: none is open), for the napper.
async fn drain_ring(
    ctx: Rc<ShardCtx>,
    ring: RingReceiver<ShardMsg>,
    window_ends: Rc<Cell<Option<Instant>>>,
) {
    let mut batch: Vec<ShardMsg> = Vec::with_capacity(256);
    let mut ingest_times: Vec<Instant> = Vec::with_capacity(256);
    // Frames that arrived older than the age bound, per topic, not yet announced.
    let mut late: HashMap<TopicId, Late> = HashMap::new();
    let window = ctx.config.batch_window();
    // When the oldest frame not yet written arrived (only with a window).
    let mut pending_since: Option<Instant> = None;
    loop {
        let open = match pending_since {
            Some(since) => {
                ring.recv_batch_until(
                    &mut batch,
                    ROUND_LIMIT,
                    ctx.config.ring_poll(),
                    since + window,
                )
                .await
            }
            None => {
                ring.recv_batch(&mut batch, ROUND_LIMIT, ctx.config.ring_poll())
                    .await
            }
        };
        if !open && batch.is_empty() && pending_since.is_none() {
            return;
        }
        let received = Instant::now();
        ctx.activity.bump();
        let mut shutdown = false;
        for msg in batch.drain(..) {
            match msg {
                ShardMsg::Frame { frame, sent_at } => {
                    if is_late(&ctx, &frame, received) {
                        skip_late(&ctx, &mut late, frame);
                        continue;
                    }
                    if let Some(skipped) = late.remove(&frame.topic) {
                        announce_late(&ctx, skipped);
                    }
                    if !frame.system {
                        ingest_times.push(frame.ingest_at);
                    }
                    route_frame(&ctx, frame, sent_at, received);
                }
                ShardMsg::Subscribed {
                    interest,
                    nonce,
                    seq,
                } => {
                    let mut asks = Vec::new();
                    let done = ctx
                        .table
                        .borrow_mut()
                        .on_subscribed(&interest, nonce, seq, &mut asks);
                    ctx.tell_dispatcher(asks);
                    for r in done {
                        crate::requests::deliver_resolved(&ctx, r);
                    }
                }
                ShardMsg::Recovered { nonce, items } => {
                    let done = ctx.table.borrow_mut().on_recovered(nonce, items);
                    if let Some(r) = done {
                        crate::requests::deliver_resolved(&ctx, r);
                    }
                }
                ShardMsg::Shutdown => shutdown = true,
            }
        }
        for (_, skipped) in late.drain() {
            announce_late(&ctx, skipped);
        }
        let hold = !window.is_zero() && !shutdown && open && !ctx.dirty.borrow().is_empty() && {
            let since = *pending_since.get_or_insert(received);
            received.saturating_duration_since(since) < window
        };
        ctx.holding.set(hold);
        window_ends.set(pending_since.filter(|_| hold).map(|since| since + window));
        if hold {
            crate::executor::let_the_executor_run().await;
            continue;
        }
        pending_since = None;
        crate::write::write_dirty(&ctx);
        let written = Instant::now();
        {
            let mut m = ctx.metrics.borrow_mut();
            for t in ingest_times.drain(..) {
                let ns = written.saturating_duration_since(t).as_nanos() as u64;
                m.ingest_to_write_ns.saturating_record(ns.max(1));
            }
        }
        if shutdown || !open {
            return;
        }
        // Under sustained load the ring is never empty and taking from it never waits: give
        // the executor a pass (I/O completions, accepts, handshakes, client reads, blocked
        // writes, heartbeats) before the next round, or they starve for as long as the load
        // lasts.
        crate::executor::let_the_executor_run().await;
    }
}

/// Frames of one topic skipped for arriving late: `from..=last.seq`.
struct Late {
    from: u64,
    last: crate::ring::Frame,
}

/// True when `frame` reached the shard already older than `queue_max_age_ms`: the shard
/// itself is behind (its ring backlog), and no connection queue could make it fresh again.
fn is_late(ctx: &ShardCtx, frame: &crate::ring::Frame, received: Instant) -> bool {
    ctx.bounds
        .max_age
        .is_some_and(|age| received.saturating_duration_since(frame.ingest_at) > age)
}

/// Skips a late frame: not routed, remembered to be announced as a gap. Costs a map update
/// instead of a queue push per subscriber, so a shard that fell behind catches up instead of
/// writing ever staler frames.
fn skip_late(ctx: &ShardCtx, late: &mut HashMap<TopicId, Late>, frame: crate::ring::Frame) {
    ctx.metrics.borrow_mut().counters.late_frames += 1;
    match late.get_mut(&frame.topic) {
        Some(skipped) => skipped.last = frame,
        None => {
            let from = frame.seq;
            late.insert(frame.topic, Late { from, last: frame });
        }
    }
}

/// Tells every subscriber of the topic that the skipped frames (and any hole before them)
/// will never arrive: one `gap` notice at the tail of its queue, after the frames it already
/// has and before the topic's next frame. Advances the table's sequence past them.
fn announce_late(ctx: &ShardCtx, skipped: Late) {
    let stamp = ctx.next_stamp();
    let Late { from, mut last } = skipped;
    if let Some(suppressed) = ctx.logs.drops.allow(Instant::now()) {
        tracing::warn!(
            shard = ctx.id,
            topic = last.name(),
            from,
            to = last.seq,
            suppressed,
            "the shard fell behind: frames older than queue_max_age_ms skipped (shard_overflow gap notices follow)"
        );
    }
    // The skipped frame is not delivered: a skipped snapshot must not release the
    // subscribers waiting for one.
    last.snapshot = false;
    let mut notified = false;
    // Subscribers of a snapshot topic told of the hole wait for the next snapshot.
    let snapshots = ctx.namespaces.rules(last.name()).snapshots;
    let mut to_hold: Vec<Rc<Conn>> = Vec::new();
    let mut table = ctx.table.borrow_mut();
    let name = last.name();
    // Routing the last skipped frame reports what the subscribers have not had before it
    // (`missed`: from the table's last sequence on, a hole before the skipped frames
    // included, skipped frames the table already passed left out); without a baseline
    // (nothing seen yet), the skipped run itself.
    let mut overflow_notices = 0u64;
    table.route(&last, |conn, missed| {
        if !conn.first_in_pass(stamp) {
            return;
        }
        let start = missed.map_or(from, |(first, _)| first);
        conn.push_notice(
            name,
            start,
            last.seq,
            crate::protocol::reason::SHARD_OVERFLOW,
        );
        overflow_notices += 1;
        notified = true;
        if snapshots {
            to_hold.push(conn.clone());
        }
        ctx.mark_dirty(conn);
    });
    for conn in &to_hold {
        table.hold_until_snapshot(conn, name);
    }
    let mut m = ctx.metrics.borrow_mut();
    m.counters.shard_gaps += u64::from(notified);
    m.counters.overflow_notices += overflow_notices;
}

/// Fans one frame out to the shard's subscribers. Cost: one `Rc` allocation, then an `Rc`
/// clone and a queue push per subscriber.
fn route_frame(ctx: &ShardCtx, frame: crate::ring::Frame, sent_at: Instant, received: Instant) {
    let stamp = ctx.next_stamp();
    let frame = Rc::new(frame);
    let mut dropped = 0u64;
    let mut notices = 0u64;
    let mut delivered = 0u64;
    let mut overflow_notices = 0u64;
    let mut shard_gap = false;
    // Read out of the frame once, and only if a subscriber has a hole to hear about.
    let mut name: Option<&str> = None;
    // Connections whose queue dropped frames, and the topics dropped (for gap policies).
    let mut dropped_topics: Vec<crate::ring::TopicId> = Vec::new();
    let mut policy_hits: Vec<(Rc<Conn>, crate::ring::TopicId)> = Vec::new();
    // Subscribers of a snapshot topic told of a hole before this delta: it is not theirs to
    // apply; they wait for the next snapshot.
    let mut to_hold: Vec<Rc<Conn>> = Vec::new();
    let hold_on_hole = !frame.snapshot && ctx.namespaces.has_policies();
    let routed = ctx.table.borrow_mut().route(&frame, |conn, missed| {
        if !conn.first_in_pass(stamp) {
            return;
        }
        if let Some((from, to)) = missed {
            let topic = *name.get_or_insert_with(|| frame.name());
            conn.push_notice(topic, from, to, crate::protocol::reason::SHARD_OVERFLOW);
            overflow_notices += 1;
            shard_gap = true;
            if hold_on_hole
                && ctx.namespaces.rules(topic).snapshots
                && conn.is_subscribed(&crate::ring::Interest::Topic(topic.into()))
            {
                to_hold.push(conn.clone());
                ctx.mark_dirty(conn);
                return;
            }
        }
        if let crate::queue::Enqueued::DroppedOldest {
            dropped: n,
            notices: placed,
        } = conn.push_published_noting(frame.clone(), &ctx.bounds, &mut dropped_topics)
        {
            dropped += u64::from(n);
            notices += u64::from(placed);
            if ctx.namespaces.has_policies() {
                dropped_topics.sort_unstable();
                dropped_topics.dedup();
                policy_hits.extend(dropped_topics.iter().map(|&t| (conn.clone(), t)));
            }
        }
        dropped_topics.clear();
        delivered += 1;
        ctx.mark_dirty(conn);
    });
    if !to_hold.is_empty() {
        let mut table = ctx.table.borrow_mut();
        for conn in &to_hold {
            table.hold_until_snapshot(conn, frame.name());
        }
    }
    for (conn, topic) in policy_hits {
        let name = ctx.table.borrow().name_of(topic);
        if let Some(name) = name {
            crate::requests::apply_gap_policy(ctx, &conn, &name);
        }
    }
    let mut m = ctx.metrics.borrow_mut();
    // The server's own figures (`_sys.` topics) stay out of what they report.
    if !frame.system {
        let hop = received.saturating_duration_since(sent_at).as_nanos() as u64;
        m.ring_hop_ns.saturating_record(hop.max(1));
        m.counters.frames_in += 1;
        m.counters.deliveries += delivered;
    }
    m.counters.dropped += dropped;
    if dropped > 0 {
        if let Some(suppressed) = ctx.logs.drops.allow(received) {
            tracing::warn!(
                shard = ctx.id,
                frames = dropped,
                topic = frame.name(),
                suppressed,
                "slow consumers: oldest frames dropped (gap notices follow)"
            );
        }
    }
    m.counters.gap_notices += notices;
    m.counters.shard_gaps += u64::from(shard_gap);
    m.counters.overflow_notices += overflow_notices;
    match routed {
        Routed::Stale => m.counters.stale_frames += 1,
        Routed::Unrouted => m.counters.unrouted_frames += 1,
        Routed::Delivered(_) => {}
    }
}

/// Looks after subscribers waiting for a snapshot, every `request_every`: asks the dispatcher
/// to request snapshots of their topics again, and tells each waiter that has waited `wait`
/// which sequences it will not receive (`gap`, reason `no_snapshot`; it keeps waiting).
async fn snapshot_waiters(ctx: Rc<ShardCtx>, waits: crate::namespace::Waits) {
    loop {
        glommio::timer::sleep(waits.request_every).await;
        let found = ctx
            .table
            .borrow_mut()
            .snapshot_waits(Instant::now(), waits.wait);
        if !found.topics.is_empty() {
            let _ = ctx.control.try_send(ControlMsg::SnapshotWanted {
                shard: ctx.id,
                topics: found.topics,
            });
        }
        for (conn, topic, from, to) in found.overdue {
            conn.push_notice(&topic, from, to, crate::protocol::reason::NO_SNAPSHOT);
            ctx.metrics.borrow_mut().counters.no_snapshot_notices += 1;
            ctx.metrics.borrow_mut().counters.gap_notices += 1;
            ctx.mark_dirty(&conn);
        }
    }
}

/// Heartbeat slices per interval: each connection is pinged once per interval, a slice of them
/// at a time, so a shard of 1,000 connections never writes 1,000 pings in one round (~10 ms of
/// `sendmsg` on one core, which every message behind them would wait for).
const HEARTBEAT_SLICES: u32 = 64;

/// Pings every connection once each interval and closes those silent past the timeout. The
/// interval is cut in [`HEARTBEAT_SLICES`] ticks; a tick takes the connections whose id falls
/// in its slice (`id % HEARTBEAT_SLICES`), so each is pinged once per interval (its first
/// ping within one interval of its opening) and no per-connection state is kept for it.
async fn heartbeat(ctx: Rc<ShardCtx>) {
    let interval = ctx.config.heartbeat_interval();
    let timeout = ctx.config.heartbeat_timeout();
    let tick = interval / HEARTBEAT_SLICES;
    let slices = u64::from(HEARTBEAT_SLICES);
    let ping = crate::frame::server_frame(crate::frame::OP_PING, b"");
    let mut slice_no = 0u64;
    // Ticks keep to a fixed schedule: a tick that ran late (a nap, a busy round) does not
    // push the later ones back.
    let mut due = Instant::now();
    loop {
        due += tick;
        glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
        slice_no = (slice_no + 1) % slices;
        let now = Instant::now();
        let slice: Vec<Rc<Conn>> = ctx
            .conns
            .borrow()
            .iter()
            .filter(|(id, _)| *id % slices == slice_no)
            .map(|(_, conn)| conn.clone())
            .collect();
        for conn in slice {
            if now.saturating_duration_since(conn.last_heard()) > timeout && !conn.awaiting() {
                ctx.metrics.borrow_mut().counters.heartbeat_timeouts += 1;
                conn.request_close(&ctx, CloseRequest::HeartbeatTimeout);
            } else {
                // Writability is reported by an edge; should one ever be missed, a blocked
                // connection waits at most one interval.
                conn.writable();
                conn.push_own(&ctx, ping.clone());
                ctx.mark_dirty(&conn);
            }
        }
    }
}

/// Sends a copy of the shard's metrics to the dispatcher's reporter every interval.
async fn reporter(ctx: Rc<ShardCtx>, topics_wanted: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let every = Duration::from_millis(ctx.config.report_interval_ms);
    loop {
        glommio::timer::sleep(every).await;
        let mut report = ctx.metrics.borrow().report(ctx.id);
        if topics_wanted.load(std::sync::atomic::Ordering::Relaxed) {
            report.topic_subscribers = Some(ctx.table.borrow().subscriber_counts());
        }
        ctx.tell_control_report(report);
    }
}

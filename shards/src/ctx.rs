//! A shard's shared state, one per executor: configuration, the subscription table, the open
//! connections and the round's dirty list, the epoll set, metrics, and the way to the
//! dispatcher. Shard-local (`!Send`); every task of the shard holds an `Rc` to it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use glommio::channels::local_channel::LocalSender;

use crate::config::ShardConfig;
use crate::connection::{CloseRequest, Conn, Host};
use crate::metrics::ShardMetrics;
use crate::queue::Bounds;
use crate::ratelimit::Limits;
use crate::readiness::Readiness;
use crate::ring::ControlMsg;
use crate::table::{Table, ToDispatcher};

/// What a shard does with each whole message a client sends. Everything else (upgrade,
/// framing, reassembly, limits, queues, socket writes) is the same code for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// The corecast protocol (docs/protocol.md): text messages are requests, binary messages
    /// close the connection with 1003.
    Protocol,
    /// Every text and binary message is sent back as it came: the endpoint the Autobahn
    /// conformance suite drives (`examples/echo.rs`, docs/conformance.md).
    Echo,
}

/// State of one shard. Shard-local (`!Send`); every task of the shard holds an `Rc` to it.
pub(crate) struct ShardCtx {
    pub(crate) id: usize,
    pub(crate) handler: Handler,
    pub(crate) config: ShardConfig,
    pub(crate) bounds: Bounds,
    pub(crate) limits: Limits,
    pub(crate) table: RefCell<Table<Conn>>,
    pub(crate) metrics: RefCell<ShardMetrics>,
    /// The epoll set of open connections, with their pending close requests.
    pub(crate) readiness: Readiness,
    /// Open connections by id, for the readiness loop, the heartbeat and shutdown.
    pub(crate) conns: RefCell<HashMap<u64, Rc<Conn>>>,
    /// Connections with frames queued since they were last written: written once each at
    /// the end of the fan-out round or readiness pass ([`crate::write::write_dirty`]).
    pub(crate) dirty: RefCell<Vec<Rc<Conn>>>,
    /// The fan-out round holds its dirty connections for the batch window
    /// (`batch_window_us`): nothing is written until it closes, replies included, so the
    /// window gathers everything a connection is sent.
    pub(crate) holding: Cell<bool>,
    /// Connections in `Closing` with the end of their grace period, in the order they got
    /// there: with one grace period for all, the first deadline is the earliest. Entries of
    /// connections that moved on are dropped when met.
    pub(crate) flushing: RefCell<VecDeque<(Instant, Rc<Conn>)>>,
    /// Connections in `Lingering` with the end of their linger, the same way.
    pub(crate) lingering: RefCell<VecDeque<(Instant, Rc<Conn>)>>,
    /// Read buffer shared by every connection: reads are synchronous once ready, so no
    /// connection holds one while idle.
    pub(crate) scratch: RefCell<Vec<u8>>,
    /// Into the control pump, which forwards to the dispatcher in order.
    pub(crate) control: LocalSender<ControlMsg>,
    pub(crate) next_conn: Cell<u64>,
    /// Counter of frames routed, for per-connection deduplication.
    pub(crate) stamp: Cell<u64>,
    /// Bumped by every ring round and client read; the napper watches it.
    pub(crate) activity: Rc<crate::executor::Activity>,
    /// Per-prefix topic rules (snapshot topics, gap policy).
    pub(crate) namespaces: std::sync::Arc<crate::namespace::Namespaces>,
    /// The node's epoch: every topic's sequence lives in it (docs/protocol.md, "Recovery").
    pub(crate) epoch: std::sync::Arc<str>,
    /// Sockets in their HTTP upgrade: each ends the shard's nap when readable.
    pub(crate) handshaking: Rc<RefCell<Vec<std::os::fd::RawFd>>>,
    /// Set once shutdown began; the acceptor stops and new connections are refused.
    pub(crate) shutting_down: Cell<bool>,
    /// Token checks and permissions; `None` when auth is off.
    pub(crate) auth: Option<std::sync::Arc<crate::auth::Auth>>,
    /// The Origin allow-list and the process-wide connection counts.
    pub(crate) admission: std::sync::Arc<crate::admission::Admission>,
    /// The admin key, for the reserved `_sys.` topics ([`crate::operator`]).
    pub(crate) admin_key: Option<std::sync::Arc<str>>,
    /// Who each connection is (only while auth or a connection limit is on), and the clock
    /// of refreshes and auth deadlines.
    pub(crate) sessions: crate::identity::Sessions,
    /// How many log lines clients may cause, by kind.
    pub(crate) logs: crate::log::Budgets,
}

impl ShardCtx {
    pub(crate) fn next_conn_id(&self) -> u64 {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }

    pub(crate) fn register(&self, conn: &Rc<Conn>) {
        self.conns.borrow_mut().insert(conn.id(), conn.clone());
        self.metrics.borrow_mut().counters.open += 1;
        if self.shutting_down.get() {
            conn.request_close(self, CloseRequest::GoingAway);
        }
    }

    /// A new routing stamp: a connection marked with it during one routing pass is skipped if
    /// the pass meets it again (a topic and a pattern naming the same connection).
    pub(crate) fn next_stamp(&self) -> u64 {
        let stamp = self.stamp.get() + 1;
        self.stamp.set(stamp);
        stamp
    }

    /// The open connection `id`, if it is still registered.
    pub(crate) fn conn(&self, id: u64) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id).cloned()
    }

    pub(crate) fn unregister(&self, conn: &Rc<Conn>) {
        self.conns.borrow_mut().remove(&conn.id());
        self.sessions.closed(conn.id());
        self.metrics.borrow_mut().counters.open -= 1;
    }

    /// Puts `conn` on the list written at the end of the current round or pass.
    pub(crate) fn mark_dirty(&self, conn: &Rc<Conn>) {
        if conn.mark_dirty() {
            self.dirty.borrow_mut().push(conn.clone());
        }
    }

    /// Queues messages for the dispatcher, in order.
    pub(crate) fn tell_dispatcher(&self, msgs: Vec<ToDispatcher>) {
        for m in msgs {
            let msg = match m {
                ToDispatcher::Subscribe { interest, nonce } => ControlMsg::Subscribe {
                    shard: self.id,
                    interest,
                    nonce,
                },
                ToDispatcher::Recover { nonce, items } => ControlMsg::Recover {
                    shard: self.id,
                    nonce,
                    items,
                },
                ToDispatcher::Unsubscribe { interest } => ControlMsg::Unsubscribe {
                    shard: self.id,
                    interest,
                },
            };
            // The pump lives as long as the shard; an unbounded local channel never refuses.
            let _ = self.control.try_send(msg);
        }
    }
}

impl Host for ShardCtx {
    fn readiness(&self) -> &Readiness {
        &self.readiness
    }
    fn metrics(&self) -> &RefCell<ShardMetrics> {
        &self.metrics
    }
    fn max_control_bytes(&self) -> usize {
        self.bounds.max_control_bytes
    }
}

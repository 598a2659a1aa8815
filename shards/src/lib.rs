//! # corecast-shards
//!
//! Everything one core owns in corecast. A shard is a glommio `LocalExecutor` pinned to a core;
//! it accepts WebSocket clients on its own `SO_REUSEPORT` listener, keeps their subscriptions in
//! a local table, and fans out frames that the dispatcher encoded once. Shards share nothing
//! with each other: no locks and no atomics on the fan-out path. A shard talks to the
//! dispatcher only through two single-producer rings ([`ring`]).
//!
//! A frame's life on a shard: the ring drain receives a batch of [`ring::ShardMsg`]s, routes
//! each frame through the [`table`] into the bounded drop-oldest [`queue`] of every subscriber
//! (an `Rc` clone, no copy), then writes each touched connection once with one vectored
//! system call ([`socket`]). A connection whose socket buffer is full is written again when the
//! shard's readiness loop sees it writable; meanwhile its queue drops the oldest frames and
//! remembers the gaps, announced to the client before its next frames.
//!
//! # Layout
//! In data-path order:
//! - [`ring`]: the messages crossing between the dispatcher and a shard.
//! - [`shard`]: the executor, acceptor, ring drain (fan-out round), heartbeat, reporter; its
//!   shared state is `ctx` (configuration, table, open connections, dirty list, metrics).
//! - [`table`]: the shard-local subscription table and frame routing.
//! - `upgrade`: an accepted socket's HTTP upgrade, as a short task; before its `101`, admission
//!   (`session`: Origin, the per-address and per-user counts of [`admission`], the token of
//!   [`auth`]).
//! - `session`: who a connection is (the `auth` message, refresh, permission checks at
//!   subscribe time, the clock of 4003 and 4004); its data is `identity`.
//! - `operator`: who may read the reserved `_sys.` topics (the admin key).
//! - `open`: the readiness loop serving every open connection from one epoll set
//!   (`readiness`): reads, blocked writes, close requests.
//! - `requests`: what a client's frames and requests do (rate limit, subscribe, ack order).
//! - [`connection`]: one client's state, its queue and its write side.
//! - `write`: the one place a connection is written (the dirty list, once per round or pass).
//! - `ending`: a connection's goodbye, grace period and linger, inside the readiness loop.
//! - [`queue`]: a connection's bounded outbound queue with drop-oldest and gap tracking.
//! - [`socket`]: the vectored non-blocking write.
//!
//! Protocol pieces, pure and testable alone: [`topic`] (names and patterns), [`handshake`]
//! (HTTP upgrade), [`frame`] (RFC 6455 framing), [`inbound`] (reassembly), [`protocol`]
//! (client JSON messages, error codes), [`close`] (close codes), [`ratelimit`] (token bucket).
//! Logs: [`log`] (what clients may cause to be logged, per shard and kind).
//! Configuration: [`config`] and [`namespace`] (per-prefix rules: snapshots, history, gap policy); probes: [`metrics`]; executor policy (never park, polling, naps, fairness): [`executor`].

pub mod admission;
pub mod auth;
pub mod close;
pub mod config;
pub mod connection;
mod ctx;
mod ending;
pub mod executor;
pub mod frame;
pub mod handshake;
mod identity;
pub mod inbound;
pub mod log;
pub mod metrics;
pub mod namespace;
mod open;
mod operator;
pub mod protocol;
pub mod queue;
pub mod ratelimit;
mod readiness;
mod requests;
pub mod ring;
mod session;
pub mod shard;
pub mod socket;
pub mod table;
pub mod topic;
mod upgrade;
mod write;

pub use config::ShardConfig;
pub use shard::{spawn, ShardSpec};

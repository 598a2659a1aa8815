//! # corecast
//!
//! A WebSocket pub/sub broadcaster for latency-critical market data. Publishers push events;
//! one dispatcher core sequences them per topic and encodes each outbound frame once; per-core
//! shards fan the frames out to thousands of WebSocket clients, with batching, drop-oldest
//! backpressure announced as sequence gaps, and rate limits, all shard-local.
//!
//! # Layout
//! In data-path order (publisher -> dispatcher -> ring -> shard -> connection -> socket):
//! - [`publisher`]: TCP ingest (newline-delimited JSON) and the in-process [`Publisher`].
//! - [`dispatcher`]: sequencing, encode-once framing, routing into the shard rings; its
//!   history, epochs and recovery answers (`dispatcher::recovery`, docs/protocol.md "Recovery").
//! - `corecast_shards::ring`, `::shard`, `::connection`, `::socket`: the per-core half, in its
//!   own crate (`shards/`).
//!
//! Around them: [`server`] wires the threads together, [`config`] reads the TOML file,
//! [`report`] merges the shards' metrics, [`demo`] is the synthetic market feed (its order
//! books checksummed by [`book`]), [`watch`] the bundled client (`watch --book` keeps a book
//! across disconnects), [`token`] mints test tokens. Authentication, permissions and
//! connection limits are `corecast_shards::auth`, `::admission` and the shard's sessions
//! (docs/security.md).

pub mod admin;
pub mod book;
pub mod config;
pub mod demo;
pub mod dispatcher;
mod dispatcher_thread;
pub mod ingest;
pub mod publisher;
pub mod report;
pub mod server;
pub mod token;
pub mod watch;

pub use config::Config;
pub use publisher::{PublishError, Publisher};
pub use server::{Server, ShutdownHandle, StartError};

//! Wires the parts together: binds the listeners, creates the rings, starts the dispatcher
//! core and the shards, and shuts them down. Main thread.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::Placement;
use socket2::{Domain, Protocol, Socket, Type};

use corecast_shards::ring::{self, ControlMsg, RingSender, ShardMsg};
use corecast_shards::ShardSpec;

use crate::config::Config;
use crate::publisher::{Event, Publisher};
use crate::report::{SharedStats, Stats};

/// Capacity of each shard -> dispatcher ring, messages.
const CONTROL_RING_CAPACITY: usize = 16_384;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("dispatcher_core {core} does not exist; this process may use cores {cores:?}")]
    NoSuchCore { core: usize, cores: Vec<usize> },
    #[error("cannot start the {what} executor: {error}")]
    Executor { what: String, error: std::io::Error },
    #[error("cannot read /dev/urandom for the dashboard's key: {0}")]
    Random(std::io::Error),
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    client_addr: SocketAddr,
    ingest_addr: SocketAddr,
    shards: usize,
    publisher: Publisher,
    shutdown_tx: RingSender<()>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    stats: SharedStats,
    snapshot_requests: Arc<Mutex<Option<crate::dispatcher::SnapshotRequestFn>>>,
    auth: Option<Arc<corecast_shards::auth::Auth>>,
    admin: Option<crate::admin::Admin>,
}

fn listener(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Opts the process in or out of transparent huge pages ([`crate::config::ServerConfig::huge_pages`]); pages
/// already faulted in keep their size. Without the permission to change it, nothing changes.
fn allow_huge_pages(allow: bool) {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory of ours.
    unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            libc::c_ulong::from(!allow),
            0,
            0,
            0,
        );
    }
}

/// Raises the soft limits on open files and locked memory to the hard limits (as root, locked
/// memory to unlimited): 10k connections need descriptors, io_uring needs locked memory.
fn raise_limits() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) != 0
            && libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) == 0
        {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &r);
        }
    }
}

impl Server {
    /// Starts the dispatcher and the shards and returns once every listener is bound.
    pub fn start(config: Config) -> Result<Server, StartError> {
        config.validate()?;
        raise_limits();
        allow_huge_pages(config.server.huge_pages);
        let cores: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|c| c.id).collect())
            .filter(|v: &Vec<usize>| !v.is_empty())
            .unwrap_or_else(|| vec![0]);
        let s = &config.server;
        let n = if s.shards == 0 {
            (cores.len().saturating_sub(1)).max(1)
        } else {
            s.shards
        };
        let dispatcher_at = cores
            .iter()
            .position(|&c| c == s.dispatcher_core)
            .ok_or_else(|| StartError::NoSuchCore {
                core: s.dispatcher_core,
                cores: cores.clone(),
            })?;
        // A shared dispatcher runs on shard 0, which then sits on the dispatcher's core.
        let shared = s.dispatcher_thread.shared(cores.len());
        let first_shard_at = dispatcher_at + usize::from(!shared);
        let core_of = |i: usize| cores[(first_shard_at + i) % cores.len()];

        let bind = |addr: SocketAddr, reuse_port: bool| {
            listener(addr, s.listen_backlog, reuse_port)
                .map_err(|error| StartError::Bind { addr, error })
        };
        // Every shard's listener sets SO_REUSEPORT, which would also let this server share
        // a port another process (of the same user) listens on with it, each taking a random
        // part of the connections. A plain bind first makes a port in use an error.
        if s.listen.port() != 0 {
            Socket::new(Domain::for_address(s.listen), Type::STREAM, None)
                .and_then(|probe| {
                    probe.set_reuse_address(true)?;
                    probe.bind(&s.listen.into())
                })
                .map_err(|error| StartError::Bind {
                    addr: s.listen,
                    error,
                })?;
        }
        let first = bind(s.listen, true)?;
        let client_addr = first.local_addr().map_err(|error| StartError::Bind {
            addr: s.listen,
            error,
        })?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(bind(client_addr, true)?);
        }
        let ingest = bind(s.ingest, false)?;
        let ingest_addr = ingest.local_addr().map_err(|error| StartError::Bind {
            addr: s.ingest,
            error,
        })?;

        let stats: SharedStats = Arc::new(Mutex::new(Stats::default()));
        let topics_wanted = stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .topics_wanted
            .clone();
        let namespaces = Arc::new(
            corecast_shards::namespace::Namespaces::new(&config.namespaces)
                .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e)))?,
        );
        let epoch = crate::dispatcher::new_epoch();
        let invalid = |e| StartError::Config(crate::config::ConfigError::Invalid(e));
        let auth = corecast_shards::auth::Auth::new(&config.auth)
            .map_err(invalid)?
            .map(Arc::new);
        let admission =
            Arc::new(corecast_shards::admission::Admission::new(&config.limits).map_err(invalid)?);
        let snapshot_requests: Arc<Mutex<Option<crate::dispatcher::SnapshotRequestFn>>> =
            Arc::default();
        let (event_tx, event_rx) = ring::ring::<Event>(config.dispatcher.publisher_queue);
        let (shutdown_tx, shutdown_rx) = ring::ring::<()>(1);
        // The key that lets a connection read the reserved `_sys.` topics: `server.admin_key`,
        // or with the admin endpoint on and no key set, one made now, which `/dashboard.json`
        // hands to whoever may read the endpoint's figures anyway (docs/protocol.md,
        // "Reserved topics").
        let made_key = match (&s.admin, &s.admin_key) {
            (Some(_), None) => Some(crate::token::random_hex(16).map_err(StartError::Random)?),
            _ => None,
        };
        // No admin endpoint: nothing publishes the reserved topics, and no key reads them.
        let admin_key: Option<Arc<str>> = s
            .admin_key
            .as_ref()
            .map(|k| k.0.as_str())
            .or(made_key.as_deref())
            .filter(|_| s.admin.is_some())
            .map(Arc::from);
        let admin = match s.admin {
            Some(addr) => Some(
                crate::admin::Admin::start(
                    addr,
                    crate::admin::Context {
                        stats: stats.clone(),
                        shards: n,
                        report_interval: (config.shard.report_interval_ms > 0)
                            .then(|| Duration::from_millis(config.shard.report_interval_ms)),
                        key: s.admin_key.as_ref().map(|k| k.0.clone()),
                        history_max_bytes: config.recovery.history_max_bytes as u64,
                        epoch: epoch.to_string(),
                        started: std::time::Instant::now(),
                        publisher: crate::publisher::Publisher {
                            tx: event_tx.clone(),
                        },
                        clients: client_addr,
                        client_path: config.shard.path.clone(),
                        dashboard_key: made_key.clone(),
                    },
                )
                .map_err(|error| StartError::Bind { addr, error })?,
            ),
            None => None,
        };
        let mut ring_txs = Vec::with_capacity(n);
        let mut control_rxs = Vec::with_capacity(n);
        let mut specs = Vec::with_capacity(n);
        for (id, listener) in listeners.into_iter().enumerate() {
            let (ring_tx, ring_rx) = ring::ring::<ShardMsg>(config.dispatcher.ring_capacity);
            let (control_tx, control_rx) = ring::ring::<ControlMsg>(CONTROL_RING_CAPACITY);
            ring_txs.push(ring_tx);
            control_rxs.push(control_rx);
            specs.push(ShardSpec {
                id,
                core: s.pin_cores.then(|| core_of(id)),
                listener,
                ring: ring_rx,
                control: control_tx,
                config: config.shard.clone(),
                handler: corecast_shards::shard::Handler::Protocol,
                guest: None,
                namespaces: namespaces.clone(),
                epoch: epoch.clone(),
                waits: corecast_shards::namespace::Waits {
                    wait: Duration::from_millis(config.recovery.snapshot_wait_ms),
                    request_every: Duration::from_millis(
                        config.recovery.snapshot_request_interval_ms,
                    ),
                },
                auth: auth.clone(),
                admission: admission.clone(),
                topics_wanted: topics_wanted.clone(),
                admin_key: admin_key.clone(),
            });
        }

        let mut threads = Vec::with_capacity(n + 1);
        let placement = if s.pin_cores {
            Placement::Fixed(s.dispatcher_core)
        } else {
            Placement::Unbound
        };
        let spec = crate::dispatcher_thread::DispatcherSpec {
            config: config.dispatcher.clone(),
            recovery: config.recovery.clone(),
            namespaces,
            epoch,
            snapshot_requests: snapshot_requests.clone(),
            rings: ring_txs,
            controls: control_rxs,
            ingest,
            events: event_rx,
            shutdown: shutdown_rx,
            stats: stats.clone(),
            poll: config.shard.ring_poll(),
        };
        // On its own executor it naps by the shards' settings; a guest naps with shard 0.
        let naps = config.shard.idle_naps();
        if shared {
            specs[0].guest = Some(crate::dispatcher_thread::guest(spec));
        } else {
            let dispatcher = corecast_shards::executor::builder("dispatcher", placement)
                .spawn(move || crate::dispatcher_thread::run(spec, naps))
                .map_err(|e| StartError::Executor {
                    what: "dispatcher".into(),
                    error: std::io::Error::other(e.to_string()),
                })?;
            threads.push(dispatcher);
        }
        for spec in specs {
            let id = spec.id;
            let handle = corecast_shards::spawn(spec).map_err(|error| StartError::Executor {
                what: format!("shard {id}"),
                error,
            })?;
            threads.push(handle);
        }
        Ok(Server {
            client_addr,
            ingest_addr,
            shards: n,
            publisher: Publisher { tx: event_tx },
            shutdown_tx,
            threads,
            stats,
            snapshot_requests,
            auth,
            admin,
        })
    }

    /// Where the admin endpoint listens, when `server.admin` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Reads `auth.jwks_file` again (what SIGHUP does): `Ok(n)` keys now in force, `Ok(0)`
    /// without a JWKS; on an error the previous keys stay in force.
    pub fn reload_jwks(&self) -> Result<usize, String> {
        self.auth.as_ref().map_or(Ok(0), |a| a.reload_jwks())
    }

    /// [`Server::reload_jwks`] as a function for another thread (a signal handler's).
    pub fn jwks_reloader(&self) -> impl Fn() -> Result<usize, String> + Send + 'static {
        let auth = self.auth.clone();
        move || auth.as_ref().map_or(Ok(0), |a| a.reload_jwks())
    }

    /// Where snapshot requests for the in-process publisher go: `f` is called on the
    /// dispatcher's thread with a topic's name when a subscriber waits for a snapshot of a
    /// topic the in-process publisher sent last (or no TCP publisher can be asked), at most
    /// once per `recovery.snapshot_request_interval_ms` per topic. It should publish one with
    /// [`Publisher::publish_snapshot`] (from another thread: it must not block). Replaces any
    /// earlier callback.
    pub fn on_snapshot_request(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self
            .snapshot_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// Where clients connect (`ws://{addr}{path}`).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// Where publishers connect (TCP, newline-delimited JSON).
    pub fn ingest_addr(&self) -> SocketAddr {
        self.ingest_addr
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// An in-process publishing handle.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The live statistics.
    pub fn stats(&self) -> SharedStats {
        self.stats.clone()
    }

    /// A handle that starts a graceful shutdown from any thread (a signal handler's thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone(), self.stats.clone())
    }

    /// Stops accepting, closes every client with 1001 "going away, reconnect", flushes, and
    /// waits for every thread, at most `limit`. Returns false if some thread did not finish.
    pub fn shutdown(self, limit: Duration) -> bool {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutting_down = true;
        let _ = self.shutdown_tx.try_push(());
        self.join(limit)
    }

    /// Waits for the server to stop (after a [`ShutdownHandle::shutdown`]), at most `limit`;
    /// the admin endpoint (which says "shutting down" meanwhile) stops last.
    pub fn join(self, limit: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let threads = self.threads;
        let admin = self.admin;
        std::thread::spawn(move || {
            for t in threads {
                let _ = t.join();
            }
            let _ = done_tx.send(());
        });
        let done = done_rx.recv_timeout(limit).is_ok();
        if let Some(a) = admin {
            a.stop();
        }
        done
    }
}

/// Starts a graceful shutdown; any thread.
#[derive(Clone)]
pub struct ShutdownHandle(RingSender<()>, SharedStats);

impl ShutdownHandle {
    /// Starts the shutdown: `/health/ready` says "shutting down" from now on.
    pub fn shutdown(&self) {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutting_down = true;
        let _ = self.0.try_push(());
    }
}

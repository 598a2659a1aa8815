//! The dispatcher's tasks: everything that runs with the dispatcher (on its own executor, or
//! on shard 0's when it shares one) besides the [`Dispatcher`] itself. Publishers reach it
//! through the TCP ingest ([`crate::ingest`]) and the in-process event ring; shards through
//! their control rings. Data path:
//! publisher -> ingest -> **dispatcher** -> ring -> shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corecast_shards::executor::WakeOn;
use corecast_shards::ring::{ControlMsg, RingReceiver, RingSender, ShardMsg};

use crate::dispatcher::Dispatcher;
use crate::ingest::serve_ingest;
use crate::publisher::Event;
use crate::report::{summary_line, SharedStats};

/// Everything the dispatcher needs. Built on the main thread, moved to the thread it runs on
/// (its own, or shard 0's).
pub(crate) struct DispatcherSpec {
    pub(crate) config: crate::dispatcher::DispatcherConfig,
    pub(crate) recovery: crate::dispatcher::RecoveryConfig,
    pub(crate) namespaces: std::sync::Arc<corecast_shards::namespace::Namespaces>,
    /// The node's epoch, shared with the shards.
    pub(crate) epoch: std::sync::Arc<str>,
    /// The in-process publisher's snapshot requests (set through the server).
    pub(crate) snapshot_requests:
        std::sync::Arc<std::sync::Mutex<Option<crate::dispatcher::SnapshotRequestFn>>>,
    pub(crate) rings: Vec<RingSender<ShardMsg>>,
    pub(crate) controls: Vec<RingReceiver<ControlMsg>>,
    pub(crate) ingest: std::net::TcpListener,
    pub(crate) events: RingReceiver<Event>,
    pub(crate) shutdown: RingReceiver<()>,
    pub(crate) stats: SharedStats,
    /// How often idle inputs are looked at.
    pub(crate) poll: Duration,
}

/// The dispatcher on its own executor: [`start`], with a napper of its own taking naps of
/// `naps` (shortest, longest; zero: never nap).
pub(crate) async fn run(spec: DispatcherSpec, naps: (Duration, Duration)) {
    let (main, wake) = start(spec);
    glommio::spawn_local(corecast_shards::executor::nap_when_idle(
        naps.0, naps.1, wake,
    ))
    .detach();
    main.await;
}

/// The dispatcher as a guest on shard 0's executor ([`corecast_shards::shard::Guest`]): the
/// shard's napper watches the dispatcher's work and wakes too.
pub(crate) fn guest(spec: DispatcherSpec) -> corecast_shards::shard::Guest {
    Box::new(move || {
        let (main, wake) = start(spec);
        (Box::pin(main), wake)
    })
}

/// Starts the dispatcher on the current executor: the ring pumps, one task per shard's control
/// ring, the in-process event drain, the TCP ingest acceptor and the periodic summary. Returns
/// its main future, which waits for shutdown, then tells the shards to close and waits
/// (bounded) for their last reports; and what should keep the executor awake or end its nap.
pub(crate) fn start(spec: DispatcherSpec) -> (impl std::future::Future<Output = ()>, WakeOn) {
    let DispatcherSpec {
        config,
        recovery,
        namespaces,
        epoch,
        snapshot_requests,
        rings,
        controls,
        ingest,
        events,
        shutdown,
        stats,
        poll,
    } = spec;
    let summary_every = config.summary_interval_ms;
    let (mut dispatcher, pumps) = Dispatcher::new(config, recovery, namespaces, epoch, rings);
    dispatcher.set_snapshot_requests(snapshot_requests);
    let dispatcher = Rc::new(RefCell::new(dispatcher));
    for p in pumps {
        glommio::spawn_local(p.run()).detach();
    }
    let activity = dispatcher.borrow().activity.clone();
    // A nap ends when a shard or an in-process publisher pushes, or shutdown is asked for
    // (the rings' doorbells), or a TCP publisher's socket has data.
    let mut wakes: Vec<Box<dyn corecast_shards::executor::NapWake>> =
        vec![Box::new(events.wake()), Box::new(shutdown.wake())];
    wakes.extend(
        controls
            .iter()
            .map(|c| Box::new(c.wake()) as Box<dyn corecast_shards::executor::NapWake>),
    );
    // Each TCP publisher's socket joins the nap's descriptors while its task waits to read;
    // the ingest listener while it accepts.
    let publisher_fds: Rc<RefCell<Vec<std::os::fd::RawFd>>> = Rc::default();
    let listening: Rc<RefCell<Vec<std::os::fd::RawFd>>> = Rc::default();
    let wake = WakeOn {
        activity: vec![activity],
        changing: vec![publisher_fds.clone(), listening.clone()],
        wakes,
        ..Default::default()
    };
    let open_shards = Rc::new(std::cell::Cell::new(controls.len()));
    for rx in controls {
        let (d, stats, open) = (dispatcher.clone(), stats.clone(), open_shards.clone());
        let task = async move {
            while let Some(msg) = rx.recv(poll).await {
                match msg {
                    ControlMsg::Report(r) => {
                        let first = r.shard == 0;
                        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                        s.update(*r);
                        if first && s.topics_wanted.load(std::sync::atomic::Ordering::Relaxed) {
                            let rows = d.borrow().topic_rows();
                            let new = Some((Instant::now(), Arc::new(rows)));
                            s.topic_rows_before = std::mem::replace(&mut s.topic_rows, new);
                        }
                        let d = d.borrow();
                        s.dispatcher = d.stats.clone();
                        s.dispatcher.history_bytes = d.history_bytes() as u64;
                        s.dispatcher.system_subscribed = d.system_subscribed();
                    }
                    ControlMsg::Goodbye { .. } => break,
                    other => d.borrow_mut().on_control(other),
                }
            }
            open.set(open.get() - 1);
        };
        glommio::spawn_local(task).detach();
    }
    {
        let d = dispatcher.clone();
        let task = async move {
            let mut batch = Vec::with_capacity(1024);
            while events.recv_batch(&mut batch, 1024, poll).await {
                {
                    let mut d = d.borrow_mut();
                    for event in batch.drain(..) {
                        if let Err(e) = d.publish(event) {
                            d.stats.rejected_events += 1;
                            d.stats.count_error(e.code());
                        }
                    }
                }
                corecast_shards::executor::let_the_executor_run().await;
            }
        };
        glommio::spawn_local(task).detach();
    }
    let acceptor = {
        let d = dispatcher.clone();
        let budget = crate::ingest::PassBudget::default();
        glommio::spawn_local(corecast_shards::socket::accept_polled(
            ingest,
            corecast_shards::executor::ACCEPT_POLL,
            listening.clone(),
            move |stream| {
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(serve_ingest(
                    d.clone(),
                    stream,
                    publisher_fds.clone(),
                    budget.clone(),
                ))
                .detach();
            },
        ))
    };
    if summary_every > 0 {
        let stats = stats.clone();
        glommio::spawn_local(async move {
            let every = Duration::from_millis(summary_every);
            let mut last: Option<(Instant, u64, u64)> = None;
            loop {
                glommio::timer::sleep(every).await;
                // Copy the reports' Arcs out; merge without the lock.
                let (reports, dispatcher) = {
                    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    (s.shards.clone(), s.dispatcher.clone())
                };
                let totals = crate::report::merge(&reports);
                let now = Instant::now();
                let rates = last.map(|(t, p, d)| {
                    let secs = now.duration_since(t).as_secs_f64().max(1e-9);
                    (
                        (dispatcher.published - p) as f64 / secs,
                        (totals.counters.deliveries - d) as f64 / secs,
                    )
                });
                last = Some((now, dispatcher.published, totals.counters.deliveries));
                tracing::info!("{}", summary_line(&totals, &dispatcher, rates));
            }
        })
        .detach();
    }

    let main = async move {
        let _ = shutdown.recv(Duration::from_millis(10)).await;
        drop(acceptor);
        dispatcher.borrow_mut().shutdown_shards();
        // Shards close their clients, report once more, and drop their control rings.
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_shards.get() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        s.dispatcher = dispatcher.borrow().stats.clone();
    };
    (main, wake)
}

//! How corecast runs its glommio executors, all in one place (docs/runtime.md says why each
//! choice was made, with the measurement behind it):
//! - **parking**: never ([`NEVER_PARK`]); every executor is built by [`builder`];
//! - **polling**: rings are looked at every `shard.ring_poll_us` while empty (crate::ring),
//!   listeners every [`ACCEPT_POLL`];
//! - **napping**: an idle executor sleeps its thread, in growing naps ([`nap_when_idle`]);
//! - **preemption**: glommio's default preemption timer (100 ms) is kept;
//! - **fairness**: a loop that can always find work waits one executor pass after each round
//!   ([`let_the_executor_run`]).
//!
//! Napping while idle, executor-local. Executors never park, so an idle executor would keep
//! its core at 100% and, on a machine shared with other work (a load generator, a laptop),
//! take that core from it. [`nap_when_idle`] watches an activity counter and, when nothing
//! happened since its last look, sleeps the thread for a short nap: the core is free for
//! others, and work arriving meanwhile waits at most one nap. While work keeps arriving it
//! never naps.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

/// Executors never park: glommio 0.9 parks by making one io_uring poll another io_uring's fd,
/// and on the kernels measured here (6.x) that poll does not reliably fire, so a parked executor
/// can miss socket readiness, timers and wake-ups for seconds or for good (glommio issues #326
/// and #547 describe the same hang). Each shard and the dispatcher poll their core instead, as
/// a poll-mode server on a dedicated host does. (A year stands for "never".)
pub const NEVER_PARK: Duration = Duration::from_secs(365 * 24 * 3600);

/// How often a listener is looked at: the most a new connection waits to be accepted.
pub const ACCEPT_POLL: Duration = Duration::from_micros(200);

/// A glommio executor as corecast runs them: named, placed, never parking, with a small
/// registered I/O buffer (no file I/O here: it keeps locked memory low).
pub fn builder(name: &str, placement: Placement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(256 << 10)
        .spin_before_park(NEVER_PARK)
}

/// Waits for one pass of the executor's loop: every other ready task and the I/O reactor run
/// first. A timer is used because a task that merely wakes itself stays in its queue and
/// can run again before the reactor is polled.
pub async fn let_the_executor_run() {
    glommio::timer::sleep(Duration::from_micros(1)).await;
}

/// Counts work done on an executor; bumped by whoever handles input. Executor-local.
#[derive(Default)]
pub struct Activity(Cell<u64>);

impl Activity {
    /// Records that something happened. O(1), no atomics.
    #[inline]
    pub fn bump(&self) {
        self.0.set(self.0.get().wrapping_add(1));
    }
}

/// Runs forever on the current executor: whenever a pass of the executor saw no activity, the
/// thread sleeps for a nap. Naps start at `nap` and double while nothing happens, up to
/// `nap_max`; any activity brings them back to `nap`. A nap costs a context switch (tens of
/// microseconds of CPU on a virtual machine), so short naps alone keep an idle executor
/// nearly as busy as polling; growing them makes a quiet executor cheap while the first
/// message after a short pause waits at most `nap`.
/// `nap` of zero disables napping (pure polling).
pub async fn nap_when_idle(activity: Rc<Activity>, nap: Duration, nap_max: Duration) {
    if nap.is_zero() {
        return;
    }
    let nap_max = nap_max.max(nap);
    // Sleeps as short as asked: the default timer slack (50 µs) would stretch every nap.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0);
    }
    let mut seen = activity.0.get();
    let mut next_nap = nap;
    loop {
        // One pass of the executor's loop: every other task and all I/O run first.
        glommio::timer::sleep(Duration::from_micros(1)).await;
        let now = activity.0.get();
        if now != seen {
            seen = now;
            next_nap = nap;
            continue;
        }
        std::thread::sleep(next_nap);
        next_nap = (next_nap * 2).min(nap_max);
    }
}

//! Napping while idle, executor-local. Executors never park in glommio (see [`crate::shard`]),
//! so an idle executor would keep its core at 100% and, on a machine shared with other work
//! (a load generator, a laptop), take that core from it. This task watches an activity counter
//! and, when nothing happened since its last look, sleeps the thread for a short nap: the
//! core is free for others, and work arriving meanwhile waits at most one nap. While work keeps
//! arriving it never naps.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

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

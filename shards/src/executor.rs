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
//! take that core from it. [`nap_when_idle`] watches activity counters and, when nothing
//! happened since its last look, sleeps the thread for a short nap: the core is free for
//! others. The nap waits on what brings work ([`NapWake`]: the rings' doorbells; and
//! descriptors: the shard's epoll set of client sockets, sockets in their upgrade, the
//! listeners, the dispatcher's TCP publishers), so work arriving meanwhile ends it at once;
//! a timer waits at most one nap, except a batch window's end, which cuts the nap short
//! ([`WakeOn::deadlines`]). While work keeps arriving it never naps.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// Something whose work should end an idle nap. Implemented by a ring's consumer side
/// ([`crate::ring::RingWake`]).
pub trait NapWake {
    /// About to nap: from now on new work must make [`NapWake::fd`] readable. False when work
    /// is already waiting (then there is no nap).
    fn arm(&self) -> bool;
    /// The nap ended; quiet again. `rang`: the nap saw [`NapWake::fd`] readable (false when
    /// there was no nap).
    fn disarm(&self, rang: bool);
    /// The descriptor that becomes readable when work arrives; `None`: none could be made.
    fn fd(&self) -> Option<RawFd>;
}

/// What keeps an executor awake and what ends its nap early: counters of work done (a pass
/// that moved none of them may nap), descriptors whose readability means work (an epoll set,
/// a publisher's socket, a listener), fixed or added and removed while the executor runs
/// (`changing`), [`NapWake`]s to arm before each nap, and deadlines: instants by which a
/// timer that matters must run (a batch window's end), which cut a nap short. Work that
/// shares an executor (the dispatcher on a shard's, see `ShardSpec::guest`) brings its own,
/// [`WakeOn::join`]ed into one napper's.
#[derive(Default)]
pub struct WakeOn {
    pub activity: Vec<Rc<Activity>>,
    pub fds: Vec<RawFd>,
    pub changing: Vec<Rc<std::cell::RefCell<Vec<RawFd>>>>,
    pub wakes: Vec<Box<dyn NapWake>>,
    pub deadlines: Vec<Rc<Cell<Option<Instant>>>>,
}

impl WakeOn {
    /// Both sets in one: the executor naps only when neither saw work, and wakes for either.
    pub fn join(mut self, other: WakeOn) -> WakeOn {
        self.activity.extend(other.activity);
        self.fds.extend(other.fds);
        self.changing.extend(other.changing);
        self.wakes.extend(other.wakes);
        self.deadlines.extend(other.deadlines);
        self
    }

    /// How long a nap of `nap` may last from `now`: cut at the earliest deadline (zero once
    /// one has passed).
    fn nap_until_deadline(&self, nap: Duration, now: Instant) -> Duration {
        self.deadlines
            .iter()
            .filter_map(|d| d.get())
            .fold(nap, |nap, at| nap.min(at.saturating_duration_since(now)))
    }

    /// Sum of the activity counters (wrapping): unchanged over a pass means no work was done.
    fn seen(&self) -> u64 {
        self.activity
            .iter()
            .fold(0u64, |sum, a| sum.wrapping_add(a.0.get()))
    }
}

/// A descriptor in one of [`WakeOn::changing`]'s sets for as long as this lives: its
/// readability ends the executor's nap while a task waits on it through glommio (an io_uring
/// completion does not end a `ppoll`, the socket's readability does). Drop it before the
/// descriptor is closed.
pub struct WakesNap {
    set: Rc<std::cell::RefCell<Vec<RawFd>>>,
    fd: RawFd,
}

impl WakesNap {
    /// Puts `fd` in `set` until the returned guard is dropped.
    pub fn new(set: &Rc<std::cell::RefCell<Vec<RawFd>>>, fd: RawFd) -> WakesNap {
        set.borrow_mut().push(fd);
        WakesNap {
            set: set.clone(),
            fd,
        }
    }
}

impl Drop for WakesNap {
    fn drop(&mut self) {
        let mut set = self.set.borrow_mut();
        if let Some(at) = set.iter().position(|&f| f == self.fd) {
            set.swap_remove(at);
        }
    }
}

/// Runs forever on the current executor: whenever a pass of the executor moved none of
/// `wake`'s activity counters, the thread sleeps for a nap, in `ppoll(2)` on everything in
/// `wake` (readable: the nap ends), never past one of `wake`'s deadlines. Naps start at `nap`
/// and double while nothing happens, up to `nap_max`; any activity brings them back to `nap`.
/// A nap costs a context switch (tens of microseconds of CPU on a virtual machine), so short
/// naps keep an idle executor nearly as busy as polling; since work ends a nap at once, a
/// nap's length only bounds how late a timer runs. `nap` of zero disables napping (pure
/// polling). One napper per executor. The descriptors must stay open while they are in
/// `wake` (they belong to the shard or dispatcher that spawned this).
pub async fn nap_when_idle(nap: Duration, nap_max: Duration, wake: WakeOn) {
    if nap.is_zero() {
        return;
    }
    let mut polled: Vec<libc::pollfd> = Vec::new();
    let nap_max = nap_max.max(nap);
    // Sleeps as short as asked: the default timer slack (50 µs) would stretch every nap.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0);
    }
    let mut seen = wake.seen();
    let mut next_nap = nap;
    loop {
        // One pass of the executor's loop: every other task and all I/O run first.
        glommio::timer::sleep(Duration::from_micros(1)).await;
        let now = wake.seen();
        if now != seen {
            seen = now;
            next_nap = nap;
            continue;
        }
        // Every wake armed, and none with work already waiting: sleep until one rings.
        let mut quiet = true;
        for w in &wake.wakes {
            quiet &= w.arm();
        }
        polled.clear();
        if quiet {
            for changing in &wake.changing {
                polled.extend(changing.borrow().iter().map(|&fd| readable(fd)));
            }
            polled.extend(wake.fds.iter().map(|&fd| readable(fd)));
        }
        let first_wake = polled.len();
        if quiet {
            polled.extend(wake.wakes.iter().filter_map(|w| w.fd()).map(readable));
            sleep_on(
                &mut polled,
                wake.nap_until_deadline(next_nap, Instant::now()),
            );
        }
        // Each wake with a descriptor has its place after `first_wake`, in order.
        let mut at = first_wake;
        for w in &wake.wakes {
            let rang = w.fd().is_some() && {
                at += 1;
                polled
                    .get(at - 1)
                    .is_some_and(|p| p.revents & libc::POLLIN != 0)
            };
            w.disarm(rang);
        }
        next_nap = (next_nap * 2).min(nap_max);
    }
}

fn readable(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Sleeps until one of `fds` is readable or `timeout` passes (`ppoll(2)`, nanosecond timeout;
/// an interrupted sleep just ends early).
fn sleep_on(fds: &mut [libc::pollfd], timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a live, writable array of `fds.len()` pollfd; `ts` lives for the call;
    // a null signal mask keeps the thread's own.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::ring;

    /// A wake with no descriptor (it shifts the places of the ones after it).
    struct NoFd;
    impl NapWake for NoFd {
        fn arm(&self) -> bool {
            true
        }
        fn disarm(&self, _rang: bool) {}
        fn fd(&self) -> Option<RawFd> {
            None
        }
    }

    fn readable_now(fd: RawFd) -> bool {
        let mut p = readable(fd);
        // SAFETY: one live pollfd, no waiting.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_deadline_cuts_a_nap_short_and_a_passed_one_cancels_it() {
        let ms = Duration::from_millis;
        let window_ends = Rc::new(Cell::new(None));
        let other = Rc::new(Cell::new(None));
        let wake = WakeOn {
            deadlines: vec![window_ends.clone()],
            ..Default::default()
        }
        .join(WakeOn {
            deadlines: vec![other.clone()],
            ..Default::default()
        });
        let now = Instant::now();
        assert_eq!(wake.nap_until_deadline(ms(5), now), ms(5), "no deadline");
        window_ends.set(Some(now + ms(2)));
        assert_eq!(wake.nap_until_deadline(ms(5), now), ms(2));
        other.set(Some(now + ms(1)));
        assert_eq!(wake.nap_until_deadline(ms(5), now), ms(1), "the earliest");
        assert_eq!(wake.nap_until_deadline(ms(5), now + ms(3)), Duration::ZERO);
        other.set(None);
        window_ends.set(Some(now + ms(9)));
        assert_eq!(wake.nap_until_deadline(ms(5), now), ms(5), "a later one");
    }

    #[test]
    fn wakes_nap_keeps_its_descriptor_in_the_set_while_it_lives() {
        let set = Rc::new(std::cell::RefCell::new(vec![3]));
        let a = WakesNap::new(&set, 7);
        let b = WakesNap::new(&set, 9);
        assert_eq!(*set.borrow(), vec![3, 7, 9]);
        drop(a);
        assert_eq!(*set.borrow(), vec![3, 9]);
        drop(b);
        assert_eq!(*set.borrow(), vec![3]);
    }

    #[test]
    fn a_nap_ended_by_a_doorbell_reads_that_doorbell_among_joined_wakes() {
        let (a_tx, a_rx) = ring::<u32>(4);
        let (b_tx, b_rx) = ring::<u32>(4);
        let b_fd = b_rx.wake().fd().expect("an eventfd");
        let (a_wake, b_wake) = (a_rx.wake(), b_rx.wake());
        // Ring b while the executor naps (nothing else happens on it).
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            b_tx.try_push(1).unwrap();
            b_tx
        });
        let started = Instant::now();
        builder("nap-test", Placement::Unbound)
            .spawn(move || async move {
                let first = WakeOn {
                    activity: vec![Rc::default()],
                    wakes: vec![Box::new(NoFd), Box::new(a_wake)],
                    ..Default::default()
                };
                let second = WakeOn {
                    activity: vec![Rc::default()],
                    wakes: vec![Box::new(b_wake)],
                    ..Default::default()
                };
                let wake = first.join(second);
                glommio::spawn_local(nap_when_idle(
                    Duration::from_millis(5),
                    Duration::from_millis(5),
                    wake,
                ))
                .detach();
                glommio::timer::sleep(Duration::from_millis(300)).await;
            })
            .unwrap()
            .join()
            .unwrap();
        let _b_tx = pusher.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        // The ring that ended a nap was read away, not left for the others' places.
        assert!(
            !readable_now(b_fd),
            "b's doorbell was read by the nap it ended"
        );
        let mut got = Vec::new();
        b_rx.try_take(&mut got, 4).unwrap();
        assert_eq!(got, vec![1]);
        drop((a_tx, a_rx));
    }
}

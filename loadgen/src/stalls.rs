//! Host stalls: spells in which a CPU ran nothing at all, neither the server nor loadgen.
//!
//! On a virtual machine the hypervisor can take a vCPU away, whole for tens of milliseconds
//! or in slices (the vCPU running a few milliseconds in every ten) for hundreds; every thread
//! pinned there, a server's shard included, stops or crawls, and every reader sees the same
//! late burst afterwards. Such a tail belongs to the host, not to the server or to loadgen,
//! and a report has to say so. One watcher thread per CPU loadgen may run on, pinned to it at
//! real-time priority (SCHED_FIFO 2: ahead of every ordinary thread, the polling server
//! threads included, and of loadgen's own publisher at SCHED_FIFO 1), sleeps [`PERIOD`] at a
//! time. A sleep that ends more than [`PIECE`] late means the watcher could not run: the host
//! took the CPU, or the kernel held it in a section nothing preempts (softirq work runs at most
//! 2 ms at a time before the kernel hands it to `ksoftirqd`). Missing
//! pieces less than [`MERGE`] apart make one spell; spells missing at least [`REPORTED`] are
//! reported. Without the right to real-time priority the watch does not run (an ordinary
//! thread is also late whenever the CPU is merely busy, and would report that).
//!
//! Cost: each watcher wakes 500 times a second for a few microseconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long each watcher sleeps between looks.
pub const PERIOD: Duration = Duration::from_millis(2);

/// A sleep that ends this much later than asked is a piece of time its CPU was missing.
pub const PIECE: Duration = Duration::from_millis(3);

/// Missing pieces closer than this belong to one spell.
pub const MERGE: Duration = Duration::from_millis(20);

/// Spells missing less than this in all are not reported.
pub const REPORTED: Duration = Duration::from_millis(10);

/// One spell in which a CPU ran nothing, whole or in slices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    pub cpu: usize,
    /// When it began, seconds since the watch started.
    pub at_secs: f64,
    /// From its first missing piece to the end of its last.
    pub span: Duration,
    /// The time the CPU was missing within the span (the sum of the pieces).
    pub missing: Duration,
}

impl std::fmt::Display for Stall {
    /// `cpu 1: 93 ms missing over 95 ms at 3.0 s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu {}: {} ms missing over {} ms at {:.1} s",
            self.cpu,
            self.missing.as_millis(),
            self.span.as_millis(),
            self.at_secs
        )
    }
}

/// The running watch; [`StallWatch::finish`] stops it and returns what it saw.
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Option<Vec<Stall>>>>,
}

impl StallWatch {
    /// Starts one watcher per CPU this process may run on.
    pub fn start() -> StallWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = crate::affinity(0)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|cpu| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("loadgen-stall-{cpu}"))
                    .spawn(move || watch(cpu, started, &stop))
                    .ok()
            })
            .collect();
        StallWatch { stop, threads }
    }

    /// Stops the watchers. `None` when the watch could not run (no real-time priority, or no
    /// CPU to pin to); otherwise every stall seen, in time order.
    pub fn finish(mut self) -> Option<Vec<Stall>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut ran = false;
        for t in std::mem::take(&mut self.threads) {
            if let Ok(Some(stalls)) = t.join() {
                ran = true;
                all.extend(stalls);
            }
        }
        all.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
        ran.then_some(all)
    }
}

impl Drop for StallWatch {
    /// Stops the watchers (they end within one period).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One watcher: pinned to `cpu`, SCHED_FIFO 2, until `stop`. `None` if it could not be set
/// up that way.
fn watch(cpu: usize, started: Instant, stop: &AtomicBool) -> Option<Vec<Stall>> {
    // SAFETY: these calls change only the calling thread's affinity, scheduling class and
    // timer slack; cpu_set_t is plain bits.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return None;
        }
        let param = libc::sched_param { sched_priority: 2 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            return None;
        }
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0);
    }
    let mut stalls = Vec::new();
    // The spell being gathered: its first piece's start, its last piece's end, the sum.
    let mut spell: Option<(Instant, Instant, Duration)> = None;
    let close = |spell: Option<(Instant, Instant, Duration)>, stalls: &mut Vec<Stall>| {
        if let Some((from, to, missing)) = spell.filter(|s| s.2 >= REPORTED) {
            stalls.push(Stall {
                cpu,
                at_secs: from.duration_since(started).as_secs_f64(),
                span: to.duration_since(from),
                missing,
            });
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let before = Instant::now();
        std::thread::sleep(PERIOD);
        let now = Instant::now();
        let late = now.duration_since(before).saturating_sub(PERIOD);
        if late > PIECE {
            let from = before + PERIOD;
            spell = match spell {
                Some((first, last, missing)) if from.duration_since(last) < MERGE => {
                    Some((first, now, missing + late))
                }
                other => {
                    close(other, &mut stalls);
                    Some((from, now, late))
                }
            };
        } else if spell.is_some_and(|(_, last, _)| now.duration_since(last) >= MERGE) {
            close(spell.take(), &mut stalls);
        }
    }
    close(spell, &mut stalls);
    Some(stalls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_reads_as_cpu_length_and_time() {
        let s = Stall {
            cpu: 1,
            at_secs: 3.04,
            span: Duration::from_micros(95_100),
            missing: Duration::from_micros(93_400),
        };
        assert_eq!(s.to_string(), "cpu 1: 93 ms missing over 95 ms at 3.0 s");
    }

    #[test]
    fn a_cpu_taken_away_from_the_watcher_is_a_stall_and_a_free_one_is_not() {
        let cpu = crate::affinity(0).unwrap_or_default()[0];
        let w = StallWatch::start();
        std::thread::sleep(Duration::from_millis(100));
        // Stand in for the hypervisor: a thread of higher real-time priority holds `cpu` for
        // 60 ms, and nothing of lower priority, the watcher included, runs there meanwhile.
        let hog = std::thread::spawn(move || {
            // SAFETY: affinity and scheduling class of this thread only.
            let pinned = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                let param = libc::sched_param { sched_priority: 3 };
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
                    && libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
            };
            if pinned {
                let spin = Instant::now();
                while spin.elapsed() < Duration::from_millis(60) {
                    std::hint::spin_loop();
                }
            }
            pinned
        });
        let hogged = hog.join().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let Some(stalls) = w.finish() else {
            // Not allowed real-time priority here: the watch says it did not run.
            assert!(!hogged);
            return;
        };
        assert!(
            hogged,
            "the watch ran, so the hog could take real-time priority too"
        );
        assert!(
            stalls
                .iter()
                .any(|s| s.cpu == cpu && s.missing >= Duration::from_millis(40)),
            "the 60 ms hold of cpu {cpu} is seen: {stalls:?}"
        );
        // A watcher that misfired on every look would report one long spell of everything.
        assert!(
            stalls
                .iter()
                .all(|s| s.missing < Duration::from_millis(150)),
            "{stalls:?}"
        );
    }
}

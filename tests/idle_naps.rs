//! An idle server sleeps instead of polling: the thread that runs its dispatcher (its own, or
//! shard 0's when the dispatcher shares it) uses a small part of a core with no publisher,
//! with a quiet publisher connected, and with a publisher that floods bad lines and never reads
//! the error lines sent back (the server stops reading it; its unread input must not keep the
//! idle nap from sleeping). One test in its own binary, so no other server in the process adds
//! to the thread's CPU time.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use corecast::config::DispatcherThread;

/// CPU seconds used so far by this process's threads whose name starts with `prefix`
/// (`/proc/self/task/*/stat`, utime + stime, in clock ticks of 1/100 s).
fn cpu_seconds(prefix: &str) -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is the 3rd field, utime the 14th.
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        ticks += rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    }
    ticks as f64 / 100.0
}

#[test]
fn an_idle_dispatcher_sleeps_even_beside_a_publisher_that_never_reads_its_errors() {
    naps_on(DispatcherThread::Own, "dispatcher");
    naps_on(DispatcherThread::Shared, "shard-0");
}

/// The checks, with the dispatcher placed by `placement`, on the threads named `thread`.
fn naps_on(placement: DispatcherThread, thread: &str) {
    let server = start(|c| c.server.dispatcher_thread = placement);
    std::thread::sleep(Duration::from_millis(500));
    let named = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|n| n.starts_with(thread))
        })
        .count();
    // glommio names an executor's thread and its blocking-work helper after the executor.
    assert!(named >= 1, "the {thread} threads are found by name");
    // Share of one core those threads used over `secs` seconds.
    let dispatcher_load = |secs: u64| {
        let before = cpu_seconds(thread);
        std::thread::sleep(Duration::from_secs(secs));
        (cpu_seconds(thread) - before) / secs as f64
    };
    let idle = dispatcher_load(2);
    assert!(idle < 0.5, "{placement:?}, idle: {idle:.2} of a core");

    let mut quiet = TcpStream::connect(server.ingest).unwrap();
    quiet
        .write_all(b"{\"topic\":\"q.a\",\"data\":1}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let with_quiet = dispatcher_load(2);
    assert!(
        with_quiet < 0.5,
        "{placement:?}, a quiet publisher: {with_quiet:.2} of a core"
    );

    // Bad lines until the server stops reading: its error lines fill both socket buffers.
    let mut flood = TcpStream::connect(server.ingest).unwrap();
    flood.set_nonblocking(true).unwrap();
    let lines = b"x\n".repeat(4096);
    let mut stalled = 0;
    while stalled < 100 {
        match flood.write(&lines) {
            Ok(_) => stalled = 0,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stalled += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("the server hung up on the publisher: {e}"),
        }
    }
    let stuck = dispatcher_load(2);
    assert!(
        stuck < 0.5,
        "{placement:?}, a publisher that does not read its errors: {stuck:.2} of a core"
    );
    drop(flood);
    drop(quiet);
}

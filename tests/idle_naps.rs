//! An idle server sleeps instead of polling: its dispatcher thread uses a small part of a core
//! with no publisher, with a quiet publisher connected, and with a publisher that floods bad
//! lines and never reads the error lines sent back (the server stops reading it; its unread
//! input must not keep the idle nap from sleeping). One test in its own binary, so no other
//! server in the process adds to the thread's CPU time.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

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

/// Share of one core the dispatcher thread used over `secs` seconds.
fn dispatcher_load(secs: u64) -> f64 {
    let before = cpu_seconds("dispatcher");
    std::thread::sleep(Duration::from_secs(secs));
    (cpu_seconds("dispatcher") - before) / secs as f64
}

#[test]
fn an_idle_dispatcher_sleeps_even_beside_a_publisher_that_never_reads_its_errors() {
    let server = start(|_| {});
    std::thread::sleep(Duration::from_millis(500));
    let named = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|n| n.starts_with("dispatcher"))
        })
        .count();
    // glommio names an executor's thread and its blocking-work helper after the executor.
    assert!(named >= 1, "the dispatcher's threads are found by name");
    let idle = dispatcher_load(2);
    assert!(idle < 0.5, "idle: {idle:.2} of a core");

    let mut quiet = TcpStream::connect(server.ingest).unwrap();
    quiet
        .write_all(b"{\"topic\":\"q.a\",\"data\":1}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let with_quiet = dispatcher_load(2);
    assert!(
        with_quiet < 0.5,
        "a quiet publisher: {with_quiet:.2} of a core"
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
        "a publisher that does not read its errors: {stuck:.2} of a core"
    );
    drop(flood);
    drop(quiet);
}

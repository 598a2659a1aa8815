//! An idle executor's nap ends when work arrives, whatever brings it: a client connecting, a
//! client's upgrade request arriving after its connect, a TCP publisher's line, an in-process
//! publish; and a nap never outlasts an open batch window. The server runs with naps of
//! 400 ms, so anything that waited one out would take 400 ms; each check allows half of that
//! (the margin is for a loaded machine, not a latency target). Both placements of the
//! dispatcher are checked.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use corecast::config::{Config, DispatcherThread};
use simd_json::prelude::ValueAsScalar;

const NAP: Duration = Duration::from_millis(400);
const WELL_WITHIN_A_NAP: Duration = Duration::from_millis(200);

fn long_naps(c: &mut Config, placement: DispatcherThread) {
    c.server.dispatcher_thread = placement;
    c.shard.idle_nap_us = NAP.as_micros() as u64;
    c.shard.idle_nap_max_us = NAP.as_micros() as u64;
}

/// Sends an upgrade request on `s` and returns how long the 101 took to come back.
fn upgrade_answered_in(s: &mut TcpStream) -> Duration {
    let sent = Instant::now();
    s.write_all(UPGRADE).unwrap();
    read_101(s);
    sent.elapsed()
}

/// Publishes one message with `publish` to a subscriber that waited past a nap, and returns
/// how long it took to arrive.
fn delivered_in(server: &TestServer, topic: &str, publish: impl FnOnce()) -> Duration {
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &[topic]);
    std::thread::sleep(NAP / 4);
    let sent = Instant::now();
    publish();
    let msg = next_op(&mut ws, "msg");
    assert_eq!(msg["topic"].as_str(), Some(topic));
    assert_eq!(msg["seq"].as_u64(), Some(ack_seq(&ack, topic) + 1));
    sent.elapsed()
}

#[test]
fn a_napping_server_wakes_for_connections_requests_publishers_and_window_ends() {
    for placement in [DispatcherThread::Own, DispatcherThread::Shared] {
        let server = start(|c| long_naps(c, placement));
        for round in 0..3 {
            // Connect and ask at once: the listener ends the nap.
            std::thread::sleep(NAP / 4);
            let mut s = TcpStream::connect(server.addr).unwrap();
            let took = upgrade_answered_in(&mut s);
            assert!(
                took < WELL_WITHIN_A_NAP,
                "{placement:?} round {round}: a new connection's 101 took {took:?}"
            );
            // Connect, wait, then ask: the socket in its upgrade ends the nap.
            let mut s = TcpStream::connect(server.addr).unwrap();
            std::thread::sleep(NAP / 4);
            let took = upgrade_answered_in(&mut s);
            assert!(
                took < WELL_WITHIN_A_NAP,
                "{placement:?} round {round}: a request sent after the connect took {took:?}"
            );
        }

        let took = delivered_in(&server, "nap.inproc", || server.publish("nap.inproc", 1));
        assert!(
            took < WELL_WITHIN_A_NAP,
            "{placement:?}: an in-process publish took {took:?}"
        );

        let mut publisher = TcpStream::connect(server.ingest).unwrap();
        let took = delivered_in(&server, "nap.tcp", || {
            publisher
                .write_all(b"{\"topic\":\"nap.tcp\",\"data\":{\"i\":1}}\n")
                .unwrap()
        });
        assert!(
            took < WELL_WITHIN_A_NAP,
            "{placement:?}: a TCP publisher's line took {took:?}"
        );
    }
}

#[test]
fn a_nap_ends_when_the_batch_window_closes() {
    let window = Duration::from_millis(30);
    for placement in [DispatcherThread::Own, DispatcherThread::Shared] {
        let server = start(|c| {
            long_naps(c, placement);
            c.shard.batch_window_us = window.as_micros() as u64;
        });
        for round in 0..3 {
            let took = delivered_in(&server, "nap.window", || server.publish("nap.window", 1));
            assert!(
                took < WELL_WITHIN_A_NAP,
                "{placement:?} round {round}: a frame held for a {window:?} window took {took:?}"
            );
        }
    }
}

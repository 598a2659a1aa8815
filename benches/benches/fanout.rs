//! Shard fan-out: route one frame to N subscribers (Rc clone + queue push each), write-side
//! queue drain, drop-oldest under overflow, and the token bucket.

use std::io;
use std::rc::Rc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use corecast_benches::{table_with, table_with_patterns, trade_frame, BOUNDS};
use corecast_shards::queue::{Bounds, Outbound};
use corecast_shards::ratelimit::{Limits, TokenBucket};

fn fanout_per_subscriber(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for n in [1usize, 100, 1000, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("route_and_queue", n), &n, |b, &n| {
            let (mut table, subs) = table_with(n);
            let mut seq = 0u64;
            b.iter(|| {
                seq += 1;
                let f = Rc::new(trade_frame(seq));
                table.route(&f, |s, _| {
                    s.borrow_mut().push_published(f.clone(), &BOUNDS);
                });
                // Drain as a write round would, into a sink (no syscall).
                for s in &subs {
                    let _ = s
                        .borrow_mut()
                        .flush(|iov| Ok::<usize, io::Error>(iov.iter().map(|s| s.len()).sum()));
                }
            })
        });
    }
    g.finish();
}

/// Routing cost against the number of live patterns on the shard: a frame looks up each of
/// its topic's covering prefixes (`trades` for `trades.BTCUSD`) in a hash map, never scans
/// the patterns, so 10,000 unrelated patterns should cost what none do.
fn route_with_patterns(c: &mut Criterion) {
    let mut g = c.benchmark_group("patterns");
    g.throughput(Throughput::Elements(1));
    for others in [0usize, 100, 10_000] {
        g.bench_with_input(
            BenchmarkId::new("route_one_frame", others),
            &others,
            |b, &others| {
                let (mut table, receivers) = table_with_patterns(others);
                let mut seq = 0u64;
                b.iter(|| {
                    seq += 1;
                    let f = Rc::new(trade_frame(seq));
                    let mut reached = 0;
                    table.route(&f, |s, _| {
                        reached += 1;
                        s.borrow_mut().push_published(f.clone(), &BOUNDS);
                    });
                    assert_eq!(reached, 2);
                    for s in &receivers {
                        let _ = s
                            .borrow_mut()
                            .flush(|iov| Ok::<usize, io::Error>(iov.iter().map(|s| s.len()).sum()));
                    }
                })
            },
        );
    }
    g.finish();
}

fn drop_oldest_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_with_drop_oldest", |b| {
        let mut q = Outbound::default();
        let small = Bounds {
            max_messages: 64,
            ..BOUNDS
        };
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            q.push_published(Rc::new(trade_frame(seq)), &small)
        })
    });
    g.finish();
}

fn token_bucket(c: &mut Criterion) {
    let limits = Limits {
        rate: 1_000_000,
        burst: 1000,
        max_strikes: 20,
    };
    let mut bucket = TokenBucket::new(&limits, Instant::now());
    c.bench_function("token_bucket_take", |b| {
        b.iter(|| bucket.take(&limits, Instant::now()))
    });
}

criterion_group!(
    benches,
    fanout_per_subscriber,
    route_with_patterns,
    drop_oldest_queue,
    token_bucket
);
criterion_main!(benches);

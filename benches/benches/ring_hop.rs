//! Ring hop: latency from a producer's push to the consumer task seeing the message, across
//! two cores, with the consumer on a polling glommio executor as a shard runs it.
//! Prints HDR percentiles. `cargo bench -p corecast-benches --bench ring_hop -- [GAP_US] [N]`.

use std::time::{Duration, Instant};

use corecast_shards::executor::NEVER_PARK;
use corecast_shards::ring::ring;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let gap_us = args.first().copied().unwrap_or(1000);
    let n = args.get(1).copied().unwrap_or(5000);
    let poll = corecast_shards::ShardConfig::default().ring_poll();
    let (tx, rx) = ring::<Instant>(1 << 16);
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(1))
        .name("hop-consumer")
        .spin_before_park(NEVER_PARK)
        .spawn(move || async move {
            let drain = glommio::spawn_local(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)
                    .expect("valid histogram");
                let mut batch = Vec::new();
                while rx.recv_batch(&mut batch, 1024, poll).await {
                    let now = Instant::now();
                    for sent in batch.drain(..) {
                        hist.saturating_record(now.duration_since(sent).as_nanos() as u64);
                    }
                }
                hist
            });
            drain.await
        })
        .expect("consumer executor starts");
    // The producer is a plain thread on the other core, pushing every `gap_us`.
    for _ in 0..n {
        std::thread::sleep(Duration::from_micros(gap_us));
        tx.try_push(Instant::now()).expect("ring has room");
    }
    drop(tx);
    let hist = consumer.join().expect("consumer finished");
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "ring_hop gap={gap_us}us n={} poll={}us: p50 {:.1}us p90 {:.1}us p99 {:.1}us p99.9 {:.1}us max {:.1}us",
        hist.len(),
        poll.as_micros(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1000.0
    );
}

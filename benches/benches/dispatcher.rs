//! Dispatcher per-message cost: validate an ingest line (simd-json tape, `data` kept as sent),
//! sequence and frame it.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use corecast::publisher::LineParser;
use corecast_shards::protocol;

use corecast_benches::BOOK_LINE as LINE;

fn ingest_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest_parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("book_delta_line", |b| {
        let mut parser = LineParser::default();
        b.iter(|| {
            parser
                .parse(LINE.as_bytes())
                .expect("valid line")
                .data
                .len()
        })
    });
    g.finish();
}

fn frame_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_build");
    g.throughput(Throughput::Elements(1));
    for size in [100usize, 1000] {
        let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(size - 10));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            let mut seq = 0u64;
            b.iter(|| {
                seq += 1;
                protocol::msg("book.BTCUSD", seq, 1_700_000_000_000_000, data.as_bytes())
            })
        });
    }
    g.finish();
}

fn parse_sequence_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatcher_per_message");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse+sequence+frame", |b| {
        let mut parser = LineParser::default();
        let mut seq = 0u64;
        b.iter(|| {
            let e = parser.parse(LINE.as_bytes()).expect("valid line");
            seq += 1;
            protocol::msg(e.topic, seq, e.ts.unwrap_or(0), e.data)
        })
    });
    g.finish();
}

criterion_group!(benches, ingest_parse, frame_build, parse_sequence_frame);
criterion_main!(benches);

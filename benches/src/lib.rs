//! Benchmarks live in `benches/`: `dispatcher` (ingest parse, frame build) and `fanout`
//! (routing a frame to N subscribers on one shard, drop-oldest queue, token bucket).

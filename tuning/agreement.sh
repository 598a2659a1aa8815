#!/usr/bin/env bash
# Does loadgen measure the server, not itself? Alternating pairs of runs against a fresh
# `corecast serve` each time: loadgen fanout (its own clients) and the independent minimal
# reader (benches/src/bin/minreader.rs) with loadgen publishing only (--connections 0), same
# workload, the order swapped from one pair to the next. Prints each pair's delivered/s, p50
# and p99 from both instruments, the ratios loadgen/reader, and their medians
# (docs/benchmarks.md, "Does loadgen measure the server?"). Loopback only; every run is
# bounded by its duration.
#
#   tuning/agreement.sh B1|B2 [PAIRS=3] [OUTDIR=target/agreement]
#
# B1 and B2 as in tuning/bench-common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bench="${1:?B1 or B2}"
pairs="${2:-3}"
out="${3:-target/agreement}"
. tuning/bench-common.sh

# One side of pair $1: loadgen with its own clients, or minreader with loadgen publishing only.
run_loadgen() {
  serve
  "$bin/loadgen" fanout --connections "$conns" --topics "$topics" --rate "$rate" \
    --payload-bytes 100 --duration "${secs}s" --server-pid "$srv" \
    --json "$out/$bench-$1-loadgen.json" > "$out/$bench-$1-loadgen.txt" 2>&1 || true
  stop
}

run_reader() {
  serve
  "$bin/minreader" --connections "$conns" --topics "$topics" --duration-secs "$secs" --pongs 1 \
    > "$out/$bench-$1-reader.json" 2> "$out/$bench-$1-reader.err" &
  reader=$!
  until grep -q subscribed "$out/$bench-$1-reader.err" 2>/dev/null; do sleep 0.2; done
  sleep 2
  "$bin/loadgen" fanout --connections 0 --topics "$topics" --rate "$rate" \
    --payload-bytes 100 --duration "${secs}s" > "$out/$bench-$1-publisher.txt" 2>&1 || true
  wait "$reader"
  stop
}

# Odd pairs run loadgen first, even pairs minreader first.
alternate "$pairs" run_loadgen run_reader

python3 - "$bench" "$pairs" "$out" <<'PY'
import json, statistics, sys
bench, pairs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows, ratios = [], {"delivered_per_sec": [], "p50": [], "p99": []}
for p in range(1, pairs + 1):
    lg = json.load(open(f"{out}/{bench}-{p}-loadgen.json"))
    rd = json.load(open(f"{out}/{bench}-{p}-reader.json"))
    pair = {
        "delivered_per_sec": (lg["delivered_per_sec"], rd["delivered_per_sec"]),
        "p50": (lg["latency_us"]["p50"], rd["latency_us"]["p50"]),
        "p99": (lg["latency_us"]["p99"], rd["latency_us"]["p99"]),
    }
    for k, (a, b) in pair.items():
        ratios[k].append(a / b if b else float("inf"))
    rows.append((p, pair, lg.get("loadgen_saturated"), lg.get("client_thread_cpu_pct"), rd.get("cpu_pct")))
print(f"| {bench} pair | loadgen delivered/s | reader delivered/s | loadgen p50 / p99 (ms) | reader p50 / p99 (ms) | loadgen saturated | loadgen reader thread CPU | minreader CPU |")
print("|---|---:|---:|---|---|---|---:|---:|")
for p, pair, sat, lcpu, rcpu in rows:
    d, p50, p99 = pair["delivered_per_sec"], pair["p50"], pair["p99"]
    print(f"| {p} | {d[0]:,.0f} | {d[1]:,.0f} | {p50[0]/1000:.2f} / {p99[0]/1000:.2f} | {p50[1]/1000:.2f} / {p99[1]/1000:.2f} | {sat} | {lcpu:.0f}% | {rcpu}% |")
print()
for k, v in ratios.items():
    print(f"- {k} loadgen/reader per pair: {', '.join(f'{x:.3f}' for x in v)}; median {statistics.median(v):.3f}")
PY

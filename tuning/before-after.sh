#!/usr/bin/env bash
# Two corecast builds against each other: the same loadgen and workload (B1 or B2, see
# bench-common.sh), `corecast serve` defaults, alternating runs, the order swapped from one
# pair to the next (the second run of a pair tends to be slower whichever build it is:
# docs/benchmarks.md, "The shard's rooms rearranged"). Prints each run's figures and the
# per-pair ratios after/before. Loopback only; bounded.
#
#   tuning/before-after.sh BEFORE_CORECAST AFTER_CORECAST B1|B2 [PAIRS=3] [OUTDIR=target/before-after]
#
# BEFORE_CORECAST and AFTER_CORECAST are `corecast` binaries, e.g. one built from an older
# commit in a git worktree (`git worktree add /tmp/before COMMIT`, then
# `CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p corecast` there).
set -euo pipefail
cd "$(dirname "$0")/.."
before="${1:?BEFORE_CORECAST: the before build of corecast}"
after="${2:?AFTER_CORECAST: the after build of corecast}"
bench="${3:?B1 or B2}"
pairs="${4:-3}"
out="${5:-target/before-after}"
. tuning/bench-common.sh

# run NAME BINARY PAIR: one run against a fresh server.
run() {
  serve "$2" serve
  "$bin/loadgen" fanout --connections "$conns" --topics "$topics" --rate "$rate" \
    --payload-bytes 100 --duration "${secs}s" --server-pid "$srv" \
    --json "$out/$bench-$3-$1.json" > "$out/$bench-$3-$1.txt" 2>&1 || true
  stop
}

run_before() { run before "$before" "$1"; }
run_after() { run after "$after" "$1"; }
alternate "$pairs" run_before run_after

python3 - "$bench" "$pairs" "$out" <<'PY'
import json, statistics, sys
bench, pairs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"| {bench} pair (first) | build | delivered/s (% of expected) | p50 (ms) | p99 (ms) | server CPU | loadgen saturated |")
print("|---|---|---:|---:|---:|---:|---|")
runs = {"before": [], "after": []}
for p in range(1, pairs + 1):
    first = "before" if p % 2 == 1 else "after"
    for who in ("before", "after"):
        d = json.load(open(f"{out}/{bench}-{p}-{who}.json"))
        pct = 100.0 * d["delivered"] / d["expected"] if d["expected"] else 0.0
        lat = d["latency_us"]
        runs[who].append((d["delivered_per_sec"], lat["p50"], lat["p99"]))
        print(f"| {p} ({first}) | {who} | {d['delivered_per_sec']:,.0f} ({pct:.2f}%) | {lat['p50']/1000:.2f} | {lat['p99']/1000:.2f} | {d['server_cpu_pct']:.0f}% | {d['loadgen_saturated']} |")
print()
for who, rows in runs.items():
    d, p50, p99 = zip(*rows)
    print(f"- {who}: median delivered/s {statistics.median(d):,.0f}, p50 {statistics.median(p50)/1000:.2f} ms, p99 {statistics.median(p99)/1000:.2f} ms")
b, a = runs["before"], runs["after"]
print(f"- per-pair after/before p50: {', '.join(f'{x[1]/y[1]:.2f}' for x, y in zip(a, b))}; p99: {', '.join(f'{x[2]/y[2]:.2f}' for x, y in zip(a, b))}")
PY

#!/usr/bin/env bash
# corecast against uWebSockets (its broadcast server from ../shared/peers/, built from source
# with ../shared/peers/uws-cpp/build.sh), the same loadgen and workload, alternating runs.
# corecast: `corecast serve` defaults (on two cores: one shard with the dispatcher on core 0;
# CORECAST_SET="section.field=value" adds one setting). uWebSockets:
# one thread, pinned to core 0 (`taskset -c 0`). loadgen unpinned (but see CORECAST_CORES), `--protocol json-pubsub`
# against uWebSockets. Prints each run's figures and the medians. Loopback only; bounded.
#
#   UWS_BIN=/path/to/uws_broadcast tuning/versus.sh B1|B2 [PAIRS=3] [OUTDIR=target/versus]
set -euo pipefail
cd "$(dirname "$0")/.."
bench="${1:?B1 or B2}"
pairs="${2:-3}"
out="${3:-target/versus}"
uws="${UWS_BIN:?set UWS_BIN to the uws_broadcast binary (../shared/peers/README.md)}"
. tuning/bench-common.sh

# CORECAST_CORES=1 confines corecast to the one core uWebSockets has (`taskset -c 0`) and
# puts the reader on the other (`taskset -c 1`), for both servers: the "one core" layout of
# docs/benchmarks.md. LOADGEN_CORE=any leaves the reader unpinned there too (it then competes
# for core 0 with whichever server is running). The default is corecast's own placement and an
# unpinned reader.
loadgen=("$bin/loadgen")
if [ "${CORECAST_CORES:-}" = 1 ]; then
  corecast=(taskset -c 0 "$bin/corecast" serve --set server.pin_cores=false)
  if [ "${LOADGEN_CORE:-1}" != any ]; then
    loadgen=(taskset -c "${LOADGEN_CORE:-1}" "$bin/loadgen")
  fi
else
  corecast=("$bin/corecast" serve)
fi
if [ -n "${CORECAST_SET:-}" ]; then
  corecast+=(--set "$CORECAST_SET")
fi

# One side of pair $1.
run_corecast() {
  serve "${corecast[@]}"
  "${loadgen[@]}" fanout --connections "$conns" --topics "$topics" --rate "$rate" \
    --payload-bytes 100 --duration "${secs}s" --server-pid "$srv" \
    --json "$out/$bench-$1-corecast.json" --hgrm "$out/$bench-$1-corecast.hgrm" \
    > "$out/$bench-$1-corecast.txt" 2>&1 || true
  stop
}

run_uws() {
  taskset -c 0 "$uws" 20001 > "$out/uws.log" 2>&1 &
  srv=$!
  wait_port 20001
  "${loadgen[@]}" fanout --protocol json-pubsub --server ws://127.0.0.1:20001/ws \
    --connections "$conns" --topics "$topics" --rate "$rate" \
    --payload-bytes 100 --duration "${secs}s" --server-pid "$srv" \
    --json "$out/$bench-$1-uws.json" --hgrm "$out/$bench-$1-uws.hgrm" \
    > "$out/$bench-$1-uws.txt" 2>&1 || true
  stop TERM
}

# Odd pairs run corecast first, even pairs uWebSockets first.
alternate "$pairs" run_corecast run_uws

python3 - "$bench" "$pairs" "$out" <<'PY'
import json, statistics, sys
bench, pairs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"| {bench} run | server | delivered/s (% of expected) | p50 (ms) | p99 (ms) | p99.9 (ms) | server CPU | loadgen saturated |")
print("|---|---|---:|---:|---:|---:|---:|---|")
med = {"corecast": [], "uws": []}
for p in range(1, pairs + 1):
    for who in ("corecast", "uws"):
        d = json.load(open(f"{out}/{bench}-{p}-{who}.json"))
        pct = 100.0 * d["delivered"] / d["expected"] if d["expected"] else 0.0
        lat = d["latency_us"]
        cpu = d["server_cpu_pct"]
        med[who].append((d["delivered_per_sec"], lat["p50"], lat["p99"]))
        print(f"| {p} | {who} | {d['delivered_per_sec']:,.0f} ({pct:.1f}%) | {lat['p50']/1000:.2f} | {lat['p99']/1000:.2f} | {lat['p999']/1000:.2f} | {cpu:.0f}% | {d['loadgen_saturated']} |")
print()
for who, rows in med.items():
    d, p50, p99 = zip(*rows)
    print(f"- {who}: median delivered/s {statistics.median(d):,.0f}, p50 {statistics.median(p50)/1000:.2f} ms, p99 {statistics.median(p99)/1000:.2f} ms")
c, u = med["corecast"], med["uws"]
print(f"- per-pair p50 ratio corecast/uWebSockets: {', '.join(f'{a[1]/b[1]:.2f}' for a, b in zip(c, u))}; p99: {', '.join(f'{a[2]/b[2]:.2f}' for a, b in zip(c, u))}")
PY

#!/usr/bin/env bash
# Do loadgen and the independent reader agree when they measure the same moments? The
# alternating pairs of tuning/agreement.sh compare runs made a minute apart, and on a shared
# machine a run's tail depends on what the host did in it. Here both instruments read the same
# stream at the same time, from one fresh `corecast serve`: minreader
# (benches/src/bin/minreader.rs) holds the first half of the connections, then
# `loadgen fanout` opens the second half and publishes. Which half a connection is in matters
# by itself (a shard writes a topic's subscribers in the order they subscribed, so the second
# half is written later in every round), so each pair also runs a control: two minreaders,
# first half and second half, with loadgen only publishing. The instrument's own share is the
# ratio loadgen/minreader divided by the control's ratio second/first. Loopback only; every
# run is bounded by its duration.
#
#   tuning/together.sh B1|B2 [PAIRS=3] [OUTDIR=target/together]
#
# B1 and B2 as in tuning/bench-common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bench="${1:?B1 or B2}"
pairs="${2:-3}"
out="${3:-target/together}"
. tuning/bench-common.sh
half=$((conns / 2))

# minreader NAME: the first (or next) half of the connections, answering pings like loadgen.
minreader() {
  "$bin/minreader" --connections "$half" --topics "$topics" --duration-secs "$secs" --pongs 1 \
    > "$out/$1.json" 2> "$out/$1.err" &
  last_reader=$!
  until grep -q subscribed "$out/$1.err" 2>/dev/null; do sleep 0.2; done
}

for p in $(seq "$pairs"); do
  serve
  minreader "$bench-$p-first-reader"
  first=$last_reader
  "$bin/loadgen" fanout --connections "$half" --topics "$topics" --rate "$rate" \
    --payload-bytes 100 --duration "${secs}s" --server-pid "$srv" --quiet \
    --json "$out/$bench-$p-second-loadgen.json" > "$out/$bench-$p-second-loadgen.txt" 2>&1 || true
  wait "$first"
  stop
  serve
  minreader "$bench-$p-control-first"
  first=$last_reader
  minreader "$bench-$p-control-second"
  second=$last_reader
  "$bin/loadgen" fanout --connections 0 --topics "$topics" --rate "$rate" --payload-bytes 100 \
    --duration "${secs}s" --quiet --json "$out/$bench-$p-control-publisher.json" \
    > "$out/$bench-$p-control-publisher.txt" 2>&1 || true
  wait "$first" "$second"
  stop
done

python3 - "$bench" "$pairs" "$out" <<'PY'
import json, statistics, sys
bench, pairs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
load = lambda name: json.load(open(f"{out}/{bench}-{name}.json"))
ms = lambda us: f"{us / 1000:.2f}"
keys = ("p50", "p99", "p999")
own = {k: [] for k in keys}
print(f"| {bench} pair | minreader (first half) p50 / p99 / p99.9 (ms) | loadgen (second half) p50 / p99 / p99.9 (ms) | control: minreader first / second half p99 (ms) | loadgen/minreader p50, p99 | control second/first p50, p99 | loadgen's own share p50, p99 | loadgen saturated | host stalls |")
print("|---|---|---|---|---|---|---|---|---|")
for p in range(1, pairs + 1):
    rd = load(f"{p}-first-reader")["latency_us"]
    lgj = load(f"{p}-second-loadgen")
    lg = lgj["latency_us"]
    c1 = load(f"{p}-control-first")["latency_us"]
    c2 = load(f"{p}-control-second")["latency_us"]
    r = {k: lg[k] / rd[k] for k in keys}
    c = {k: c2[k] / c1[k] for k in keys}
    for k in keys:
        own[k].append(r[k] / c[k])
    stalls = lgj.get("host_stalls")
    print(
        f"| {p} | {ms(rd['p50'])} / {ms(rd['p99'])} / {ms(rd['p999'])} "
        f"| {ms(lg['p50'])} / {ms(lg['p99'])} / {ms(lg['p999'])} "
        f"| {ms(c1['p99'])} / {ms(c2['p99'])} "
        f"| {r['p50']:.3f}, {r['p99']:.3f} | {c['p50']:.3f}, {c['p99']:.3f} "
        f"| {own['p50'][-1]:.3f}, {own['p99'][-1]:.3f} "
        f"| {lgj.get('loadgen_saturated')} | {len(stalls) if stalls is not None else 'not watched'} |"
    )
print()
for k in keys:
    print(f"- loadgen's own share of {k} (loadgen/minreader over control second/first), per pair: "
          f"{', '.join(f'{x:.3f}' for x in own[k])}; median {statistics.median(own[k]):.3f}")
PY

#!/bin/bash
# Instructions per delivered message (shard fan-out, user space) and per published message
# (dispatcher: parse + sequence + frame), counted by callgrind: runs each stage with N and 2N
# messages and divides the difference by N, so setup cancels out.
# Usage: tuning/instructions.sh [N]   (needs valgrind: apt-get install valgrind)
set -euo pipefail
N=${1:-200}
cd "$(dirname "$0")/.."
cargo bench -p corecast-benches --bench instructions --no-run 2>/dev/null
BIN=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for stage in fanout ingest; do
    a=$(count $stage "$N"); b=$(count $stage $((2 * N)))
    per=$(( (b - a) / N ))
    if [ "$stage" = fanout ]; then
        echo "fanout: $(( per / 1000 )) instructions per delivered message (1,000 subscribers, route + queue + drain)"
    else
        echo "ingest: $per instructions per published message (parse + sequence + frame)"
    fi
done

#!/bin/bash
set -u
B=/work/main/target/release/corecast
L=/work/main/target/release/loadgen
OUT=${OUT:-/tmp/authbench}
SECRET=bench-secret-0123456789abcdef0123456789
for pair in 1 2 3 4; do
  if [ $((pair % 2)) = 1 ]; then ORDER="off on"; else ORDER="on off"; fi
  for mode in $ORDER; do
    if [ $mode = on ]; then EXTRA=(--set "auth.hmac_secret=\"$SECRET\"" --set 'auth.anonymous_topics=["*"]'); else EXTRA=(); fi
    $B serve --listen 127.0.0.1:18480 --ingest 127.0.0.1:19480 --set dispatcher.summary_interval_ms=0 "${EXTRA[@]}" 2>$OUT/server-$mode-$pair.log &
    PID=$!
    sleep 1
    $L fanout --server ws://127.0.0.1:18480/ws --ingest 127.0.0.1:19480 --connections 1000 --topics 100 --subscriptions-per-conn 1 --rate 10000 --duration 10s --server-pid $PID --json $OUT/$mode-$pair.json --quiet > $OUT/$mode-$pair.txt 2>&1
    kill -TERM $PID; wait $PID
    sleep 2
  done
done

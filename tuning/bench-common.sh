# Sourced by agreement.sh, together.sh and versus.sh (not run alone): the workloads they share,
# the build, and a fresh server per run. Expects `bench` and `out` to be set, and the current
# directory to be the repository root.
#
# B1: 10,000 connections, 100 topics, 10,000 msgs/s (1M deliveries/s), 100-byte payloads, 20 s.
# B2: 1,000 connections, 10 topics, 1,000 msgs/s (100k deliveries/s), 100-byte payloads, 20 s.
case "$bench" in
  B1) conns=10000 topics=100 rate=10000 ;;
  B2) conns=1000 topics=10 rate=1000 ;;
  *) echo "unknown benchmark $bench (B1 or B2)" >&2; exit 2 ;;
esac
secs=20
bin=target/release
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p corecast -p loadgen -p corecast-benches --bin minreader

# wait_port PORT: until something listens on 127.0.0.1:PORT (5 s at most).
wait_port() {
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

# serve [COMMAND...]: a fresh server (default `corecast serve`) on 8080, its pid in `srv`.
serve() {
  if [ $# = 0 ]; then set -- "$bin/corecast" serve; fi
  "$@" > "$out/server.log" 2>&1 &
  srv=$!
  wait_port 8080
}

# alternate PAIRS FIRST SECOND: runs `FIRST p` and `SECOND p` for each pair p, the order
# swapped from one pair to the next: the second run of a pair tends to be slower whichever
# server it is (docs/benchmarks.md, "The shard's rooms rearranged").
alternate() {
  for p in $(seq "$1"); do
    if [ $((p % 2)) = 1 ]; then "$2" "$p"; "$3" "$p"; else "$3" "$p"; "$2" "$p"; fi
  done
}

# stop [SIGNAL]: ends the server (SIGINT: corecast shuts down gracefully), then lets the
# kernel release its sockets before the next run.
stop() {
  kill "-${1:-INT}" "$srv" 2>/dev/null || true
  wait "$srv" 2>/dev/null || true
  sleep 2
}

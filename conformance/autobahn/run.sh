#!/usr/bin/env bash
# Run the Autobahn TestSuite (wstest -m fuzzingclient) against the corecast echo
# example and print a Markdown summary of the results.
#
#   bash conformance/autobahn/run.sh
#
# Environment:
#   CORECAST_ECHO_RUNNING=1  do not build or start the echo server; something is already
#                            listening on the spec's address (e.g. another implementation)
#   AUTOBAHN_SPEC=FILE       fuzzingclient spec to use (default: conformance/autobahn/fuzzingclient.json)
#   AUTOBAHN_PYTHON=FILE     Python 2.7 interpreter (default: ~/.pyenv/versions/2.7.18/bin/python)
#   AUTOBAHN_READY_TIMEOUT=N seconds to wait for the echo server's port (default: 30)
#
# Everything it installs stays under target/: autobahn-bootstrap (virtualenv for 2.7),
# autobahn-venv (wstest). Reports go to the spec's outdir (target/autobahn-reports),
# which is emptied first; wstest's output is kept in target/autobahn-wstest.log.
# Exit status: summarise.py's (1 if any case FAILED), or non-zero on any setup error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

die() { echo "autobahn: $*" >&2; exit 1; }

spec="${AUTOBAHN_SPEC:-$here/fuzzingclient.json}"
py27="${AUTOBAHN_PYTHON:-$HOME/.pyenv/versions/2.7.18/bin/python}"
ready_timeout="${AUTOBAHN_READY_TIMEOUT:-30}"
venv="target/autobahn-venv"
bootstrap="target/autobahn-bootstrap"
log="target/autobahn-wstest.log"

command -v python3 >/dev/null || die "python3 is needed for the spec parsing and summarise.py"
[ -f "$spec" ] || die "spec not found: $spec"

# --- Python 2.7 virtualenv with wstest ------------------------------------------------
if [ ! -x "$py27" ]; then
    die "Python 2.7 interpreter not found at $py27 (the Autobahn TestSuite runs only on Python 2.7).
Install it (e.g. 'pyenv install 2.7.18') or point AUTOBAHN_PYTHON at one."
fi
"$py27" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' \
    || die "$py27 is not Python 2.7"

# The venv is (re)made when missing or when requirements.txt changed since it was made.
if [ ! -x "$venv/bin/wstest" ] || ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt"; then
    echo "autobahn: creating $venv from conformance/autobahn/requirements.txt" >&2
    if [ ! -f "$bootstrap/virtualenv/__init__.py" ]; then
        rm -rf "$bootstrap"
        "$py27" -m pip install --disable-pip-version-check --no-warn-script-location \
            --no-deps --target "$bootstrap" -r "$here/bootstrap-requirements.txt"
    fi
    rm -rf "$venv"
    PYTHONPATH="$bootstrap" "$py27" -m virtualenv --no-periodic-update "$venv" >/dev/null
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps \
        -r "$here/requirements.txt"
    "$venv/bin/python" -m pip check --disable-pip-version-check
    "$venv/bin/wstest" --autobahnversion
    cp "$here/requirements.txt" "$venv/.requirements.txt"
fi

# --- spec: where the server must listen, where the reports go -------------------------
read -r host port outdir < <(python3 - "$spec" <<'EOF'
import json, sys
from urllib.parse import urlsplit
spec = json.load(open(sys.argv[1]))
servers = spec["servers"]
if len(servers) != 1:
    sys.exit("autobahn: run.sh expects exactly one server in the spec")
u = urlsplit(servers[0]["url"])
if u.scheme != "ws" or u.hostname is None or u.port is None:
    sys.exit("autobahn: server url must be ws://HOST:PORT/...: %s" % servers[0]["url"])
print(u.hostname, u.port, spec.get("outdir", "./reports/servers/"))
EOF
)
case "$host" in
    127.*|localhost|::1) ;;
    *) die "refusing to test a non-loopback address: $host" ;;
esac

port_open() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

# --- echo server ---------------------------------------------------------------------
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "${CORECAST_ECHO_RUNNING:-0}" = "1" ]; then
    port_open || die "CORECAST_ECHO_RUNNING=1 but nothing accepts connections on $host:$port"
    echo "autobahn: using the server already listening on $host:$port" >&2
else
    port_open && die "$host:$port is already in use; stop that process or set CORECAST_ECHO_RUNNING=1 to test it"
    cargo build --release -p corecast-shards --example echo
    "${CARGO_TARGET_DIR:-target}/release/examples/echo" "$host:$port" &
    server_pid=$!
    tries=$((ready_timeout * 5))
    until port_open; do
        kill -0 "$server_pid" 2>/dev/null || die "the echo server exited before accepting connections"
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || die "the echo server did not accept connections on $host:$port within ${ready_timeout}s"
        sleep 0.2
    done
    echo "autobahn: echo server (pid $server_pid) listening on $host:$port" >&2
fi

# --- the suite -----------------------------------------------------------------------
rm -rf "$outdir"
mkdir -p "$outdir"
start=$SECONDS
# wstest exits 0 whatever the results; the verdict comes from summarise.py.
"$venv/bin/wstest" -m fuzzingclient -s "$spec" 2>&1 | tee "$log"
echo "autobahn: wstest took $((SECONDS - start))s; log in $log" >&2

if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then
    echo "autobahn: WARNING: the echo server died during the run" >&2
fi

# wstest stops at the first refused connection and reports only the cases it ran, so
# tell summarise.py how many it meant to run.
expected="$(sed -n 's/^Ok, will run \([0-9][0-9]*\) test cases.*/\1/p' "$log" | head -n 1)"
python3 "$here/summarise.py" ${expected:+--expect-cases "$expected"} "$outdir"

#!/usr/bin/env bash
# Instructions per hello-world request of a whole yimmo server process
# (loop thread and worker) under callgrind: the server runs for N and then
# for 2N requests on one keep-alive connection, and the difference of the
# two totals divided by N is printed, so start-up and shutdown cancel out.
#
#   bash bench/callgrind.sh [N] [KEYWORD=VALUE ...]   # e.g. timeout=0
#
# Uses the yimmo importable from PYTHONPATH (default: this checkout) and
# $PYTHON (default python3); needs valgrind.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=${1:-2000}
shift || true
py=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:-$here/..}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

total() {                       # total N -> instructions of a run
    local portfile=$tmp/port.$1
    valgrind --tool=callgrind --callgrind-out-file="$tmp/out.$1" \
        "$py" - "$portfile" "$here" "${@:2}" >/dev/null 2>&1 <<'PY' &
import sys
sys.path.insert(0, sys.argv[2])
import yimmo
from hello import app
kw = dict(bind="127.0.0.1:0", workers=1)
for arg in sys.argv[3:]:
    k, v = arg.split("=", 1)
    kw[k] = float(v)
server = yimmo.Server(app, **kw)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.address[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
PY
    local pid=$!
    for _ in $(seq 600); do [ -s "$portfile" ] && break; sleep 0.1; done
    "$py" - "$(cat "$portfile")" "$1" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=60)
for _ in range(n):
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while not got.endswith(b"Hello, World!"):
        got += s.recv(4096)
s.close()
PY
    kill -TERM "$pid"
    wait "$pid" || true
    callgrind_annotate "$tmp/out.$1" | awk '/PROGRAM TOTALS/ {
        gsub(",", "", $1); print $1 }'
}

a=$(total "$n" "$@")
b=$(total "$((2 * n))" "$@")
echo "$(( (b - a) / n )) instructions per request ($n vs $((2 * n)) requests: $a, $b)"

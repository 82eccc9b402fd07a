#!/usr/bin/env bash
# Build the libFuzzer targets and run each for a bounded number of
# executions: bash fuzz/run.sh [RUNS] (default 200000), first the HTTP
# parser (fuzz_parser.c), then a whole connection (fuzz_conn.c: conn.c
# with the parser, bodies, pipelining, response writing and timers, no
# socket and no Python), then the PROXY protocol parser and the forwarding
# field parsers (fuzz_proxy.c). Exits non-zero when a fuzzer finds a crash; the
# repository is left untouched (the corpora are copied to a temporary
# directory, new inputs stay there).
set -euo pipefail

runs="${1:-200000}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
work="$(mktemp -d "${TMPDIR:-/tmp}/yimmo-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz/run.sh: clang is required" >&2
    exit 2
fi
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I"$root/ext" \
    "$here/fuzz_parser.c" "$root/ext/http_parser.c" -o "$work/fuzz_parser"

# The connection target takes conn.c as built for production: the linker
# sends its socket calls, libev's timers, and the loop's exchange creation
# and release to the harness (see the opening of fuzz_conn.c).
wraps=read,sendmsg,sendfile,shutdown,close,ev_timer_start
wraps=$wraps,ev_timer_stop,ev_timer_remaining,ymo_exchange_new
wraps=$wraps,ymo_exchange_release
# A small YMO_FLUSH_TURN (bytes conn_flush writes per turn of the loop),
# so that the responses of a few KB the harness makes take several turns.
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -std=gnu11 -D_GNU_SOURCE -DYMO_FLUSH_TURN=3000 -Wall -Wextra -Werror \
    -I"$root/ext" "$here/fuzz_conn.c" "$root/ext/conn.c" "$root/ext/server.c" \
    "$root/ext/exchange.c" "$root/ext/bucket.c" "$root/ext/queue.c" \
    "$root/ext/http_parser.c" "$root/ext/http_response.c" \
    "$root/ext/proxy_protocol.c" "$root/ext/trust.c" \
    -lev -lpthread -Wl,--wrap="${wraps//,/,--wrap=}" -o "$work/fuzz_conn"

clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I"$root/ext" \
    "$here/fuzz_proxy.c" "$root/ext/proxy_protocol.c" "$root/ext/trust.c" \
    "$root/ext/forwarded.c" -o "$work/fuzz_proxy"

cp -r "$here/corpus" "$work/corpus"
cp -r "$here/corpus_proxy" "$work/corpus_proxy"
cp -r "$here/corpus_conn" "$work/corpus_conn"
# Inputs that once failed, replayed first on every run (never written to).
regressions=()
if [ -d "$here/regressions_conn" ]; then
    regressions=("$here/regressions_conn")
fi
# Tokens that help the mutator reach the deeper states.
cat > "$work/http.dict" <<'DICT'
"GET"
"POST"
"OPTIONS"
"CONNECT"
" HTTP/1.1\x0d\x0a"
" HTTP/1.0\x0d\x0a"
"HTTP/2.0"
"\x0d\x0a"
"\x0d\x0a\x0d\x0a"
"http://"
"https://"
"Host: "
"Content-Length: "
"Transfer-Encoding: "
"chunked"
"gzip"
"Connection: "
"close"
"keep-alive"
"Expect: "
"100-continue"
"PROXY TCP4 "
"PROXY TCP6 "
"PROXY UNKNOWN"
"\x0d\x0a\x0d\x0a\x00\x0d\x0aQUIT\x0a"
"\x21\x11\x00\x0c"
"\x21\x21\x00\x24"
"for="
"proto=https"
"host="
"_hidden"
"Content-Type: "
"Authorization: "
"If-Modified-Since: "
"Trailer: "
"0\x0d\x0aHost: x\x0d\x0a"
", ,"
"[::1]"
":8080"
";ext=\"v\""
"0\x0d\x0a\x0d\x0a"
"ffffffffffffffff"
"%2F"
DICT

# Crash reproducers go to a directory outside the repository that is kept
# only when something was found.
artifacts="${FUZZ_ARTIFACTS:-$(mktemp -d "${TMPDIR:-/tmp}/yimmo-fuzz-crash.XXXXXX")}"
mkdir -p "$artifacts"
status=0
"$work/fuzz_parser" -runs="$runs" -max_len=2048 -dict="$work/http.dict" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$work/corpus" \
    || status=$?
conn_status=0
"$work/fuzz_conn" -runs="$runs" -max_len=20000 -dict="$work/http.dict" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$work/corpus_conn" \
    "${regressions[@]}" || conn_status=$?
if [ "$status" -eq 0 ]; then
    status=$conn_status
fi
proxy_status=0
"$work/fuzz_proxy" -runs="$runs" -max_len=1024 -dict="$work/http.dict" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$work/corpus_proxy" \
    || proxy_status=$?
if [ "$status" -eq 0 ]; then
    status=$proxy_status
fi
if [ "$status" -ne 0 ]; then
    echo "fuzz/run.sh: fuzzer failed (exit $status); see $artifacts" >&2
elif [ -z "${FUZZ_ARTIFACTS:-}" ]; then
    rm -rf "$artifacts"
fi
exit "$status"

#!/usr/bin/env bash
# Build the libFuzzer target for the HTTP parser and run it for a bounded
# number of executions: bash fuzz/run.sh [RUNS] (default 200000). Exits
# non-zero when the fuzzer finds a crash; the repository is left untouched
# (the corpus is copied to a temporary directory, new inputs stay there).
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

cp -r "$here/corpus" "$work/corpus"
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
if [ "$status" -ne 0 ]; then
    echo "fuzz/run.sh: fuzzer failed (exit $status); see $artifacts" >&2
elif [ -z "${FUZZ_ARTIFACTS:-}" ]; then
    rm -rf "$artifacts"
fi
exit "$status"

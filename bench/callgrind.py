#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: a hot-path change judged
without timing noise.

    python bench/callgrind.py [--server yimmo] [--app hello:app]
                              [--requests 2000] [--runs 1] [--top 15]
                              [--header 'Name: value' ...] [--browser]
                              [--bare]
                              [--toggle FUNCTION] [--repo DIR]
                              [--upload BYTES --app matrix_app:upload]
                              [--server-arg=--timeout=0 ...]
                              [--load SECONDS [--connections 50]]

The whole server process (every thread) runs under
`valgrind --tool=callgrind` and answers N requests sent one at a time on
one keep-alive connection; a second run answers 2N. The difference of the
two totals over N is the cost of one request: start-up, imports and
shutdown cancel out. With --top the same difference is taken per function
(self cost), so the output says where a request's instructions go.

Servers (bench.py's commands): `yimmo` (`python -m yimmo --workers 1`, the
yimmo of --repo, default this checkout built in place:
`python setup.py build_ext --inplace`), `yimmo-w4`, `bjoern`, and the
reference servers `ceiling` (C only), `pyfloor` (app inline on the loop)
and `pyfloor-w4`, built from ../shared/reference-servers next to the
repository (skipped with a note when it is not there). Python and the
peers come from --venv (default bench/.venv, made by bench.py).

Whole-process totals drift by a few hundred instructions per request from
run to run (thread wake-ups, the GC); --toggle FUNCTION counts only inside
one function and what it calls (e.g. ymo_wsgi_environ), which is exact;
several, comma-separated, add up (ev_run,worker_main: all the serving a
yimmo process does, on the loop thread and in the workers).

--header 'Connection: close' sends each request on a new connection (the
server closes it after the response): the accept and close path, the
matrix's second row; with --load too, where wrk does the same.

--load SECONDS counts under load instead: wrk (-t1, --connections, 50 by
default) drives the server for that long, and the instructions inside
--toggle (default ev_run,worker_main: yimmo's loop and workers, start-up
left out) are divided by the requests wrk got answered. Requests then
arrive in turns of tens, as in bench.py, and costs that one request at a
time never shows appear: glibc's per-thread cache of freed memory keeps
7 chunks of a size, and a turn that frees tens of them sends the rest
through the arena. (Not for the reference servers or bjoern, whose
functions the default toggle does not name: give --toggle.)
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench

SERVERS = ("yimmo", "yimmo-w4", "bjoern", "ceiling", "pyfloor",
           "pyfloor-w4")


def server_argv(name, app, python, venv_bin, ref_dir, extra):
    """(argv, cwd) of bench.py's command for name, serving app on {port}."""
    lookup = {"yimmo": "yimmo-w1"}.get(name, name)
    for s in bench.all_servers(python, venv_bin, 4, app):
        if s.name == lookup:
            # bench.py's "{host}" (the address a server binds: loopback
            # here); "{port}" is filled per run.
            argv = [a.replace("{ref}", str(ref_dir)).replace(
                "{host}", bench.HOST) for a in s.argv]
            if name.startswith("yimmo"):
                argv[-1:-1] = extra  # options before the app
            return argv, s.cwd.replace("{ref}", str(ref_dir))
    raise ValueError(name)


# What a browser adds to Host, User-Agent and Accept when it asks for a
# page (Firefox-like, with two fields outside yimmo's common names).
BROWSER_HEADERS = [
    "Accept-Language: en-US,en;q=0.5", "Accept-Encoding: gzip, deflate, br",
    "Connection: keep-alive", "Cookie: session=abc123; theme=dark",
    "Referer: http://bench.test/", "Sec-Fetch-Mode: navigate",
    "Cache-Control: max-age=0", "Upgrade-Insecure-Requests: 1",
    "X-Request-Id: 1234", "Sec-Ch-Ua-Mobile: ?0",
]


def request_bytes(headers, bare=False, upload=0):
    """A GET, or with upload a POST of that many body bytes."""
    common = "" if bare else "User-Agent: bench\r\nAccept: */*\r\n"
    if upload:
        headers = list(headers) + ["Content-Length: %d" % upload]
    return (("POST" if upload else "GET")
            + " / HTTP/1.1\r\nHost: bench.test\r\n" + common
            + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + (
                b"x" * upload)


def connect(port, proc, end):
    """A connection to the server, once it accepts (bounded by end)."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the server exited before accepting")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.settimeout(120)
            return sock
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def drive(port, n, request, proc, deadline=600.0):
    """n requests, one at a time, on one connection (on a new one each
    when the request says Connection: close, and the server closes after
    the response); every response must be a 200 with a Content-Length."""
    end = time.monotonic() + deadline
    close = re.search(rb"(?im)^connection: *close\r$", request) is not None
    sock = connect(port, proc, end)
    buf = b""
    try:
        for i in range(n):
            if close and i > 0:
                sock.close()
                sock = connect(port, proc, end)
                buf = b""
            sock.sendall(request)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    m = re.search(rb"(?i)content-length: *(\d+)",
                                  buf[:head_end])
                    if m is None:
                        raise RuntimeError("no Content-Length: %r"
                                           % buf[:200])
                    total = head_end + 4 + int(m.group(1))
                    if len(buf) >= total:
                        if not buf.startswith(b"HTTP/1.1 200"):
                            raise RuntimeError("bad response %r" % buf[:100])
                        buf = buf[total:]
                        break
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buf += chunk
            if close and sock.recv(1):      # the server's close
                raise RuntimeError("bytes after a Connection: close "
                                   "response")
    finally:
        sock.close()


def under_callgrind(argv, cwd, env, toggle, out, work):
    """Run the server under callgrind (only inside `toggle`'s functions
    when given), call work(port, proc) once it is started, stop it; the
    instructions collected and what work returned."""
    port = bench.free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
         *["--toggle-collect=" + f for f in (toggle or "").split(",") if f],
         *argv],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        result = work(port, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
    m = re.search(rb"Collected : (\d+)", err)
    if m is None:
        raise RuntimeError(err.decode(errors="replace")[-2000:])
    return int(m.group(1)), result


def run(argv, cwd, env, n, request, toggle, out):
    """One callgrind run of n requests; the total instructions."""
    return under_callgrind(argv, cwd, env, toggle, out,
                           lambda port, proc: drive(port, n, request,
                                                    proc))[0]


def run_load(argv, cwd, env, seconds, connections, request, toggle, out):
    """One callgrind run under wrk; (instructions inside toggle, requests
    answered)."""
    def work(port, proc):
        drive(port, 10, request, proc)      # up, and warm
        extra = []      # the same header fields (wrk sends its own Host)
        head = request.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n")[1:]:
            if not line.lower().startswith(b"host:"):
                extra += ["-H", line.decode("latin-1")]
        return bench.run_wrk(port, seconds, connections, extra)

    total, result = under_callgrind(argv, cwd, env, toggle, out, work)
    if result.errors or not result.requests:
        raise RuntimeError("wrk: %d errors, %d requests"
                           % (result.errors, result.requests))
    return total, result.requests + 10


def functions(out):
    """{function: self instructions} of one callgrind output."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no",
         "--show-percs=no", out], stdout=subprocess.PIPE,
        universal_newlines=True, check=True).stdout
    costs = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if m and ":" in m.group(2) and "PROGRAM TOTALS" not in line:
            name = m.group(2).strip()
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",",
                                                                     ""))
    return costs


def short(name):
    """'file:function [object]' as 'function (object's file name)'."""
    m = re.match(r"(.*?):(.*?)(?: \[(.*)\])?$", name)
    if not m:
        return name
    obj = os.path.basename(m.group(3) or m.group(1))
    return "%s (%s)" % (m.group(2), obj)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="yimmo",
                   help="comma-separated: " + ", ".join(SERVERS)
                   + " (default yimmo)")
    p.add_argument("--app", default="hello:app",
                   help="MODULE:CALLABLE in bench/ (default hello:app)")
    p.add_argument("--requests", type=int, default=2000,
                   help="N: runs of N and 2N requests (default 2000)")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat the N/2N pair, to see the drift")
    p.add_argument("--header", action="append", default=[],
                   help="a request header 'Name: value' (repeatable)")
    p.add_argument("--browser", action="store_true",
                   help="also send the ten more fields a browser sends "
                   "with a page request (BROWSER_HEADERS)")
    p.add_argument("--bare", action="store_true",
                   help="send only a Host header (by default also "
                   "User-Agent and Accept, like a client)")
    p.add_argument("--upload", type=int, default=0, metavar="BYTES",
                   help="POST a body of BYTES with each request (the "
                   "matrix's upload row: --upload 1048576 "
                   "--app matrix_app:upload)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="one more yimmo option (repeatable), e.g. "
                   "--server-arg=--timeout=0")
    p.add_argument("--toggle", help="count only inside these functions "
                   "(comma-separated; callgrind --toggle-collect), e.g. "
                   "ymo_wsgi_environ, or ev_run,worker_main for the loop "
                   "thread and the workers without start-up")
    p.add_argument("--top", type=int, default=0,
                   help="also list the K functions with the most "
                   "instructions per request (self cost)")
    p.add_argument("--load", type=int, default=0, metavar="SECONDS",
                   help="count under wrk's load for SECONDS instead of N "
                   "requests one at a time (see above)")
    p.add_argument("--connections", type=int, default=50,
                   help="wrk connections with --load (default 50)")
    p.add_argument("--repo", type=Path, default=bench.REPO,
                   help="the yimmo checkout to measure, built in place "
                   "(default this one)")
    p.add_argument("--venv", type=Path, default=bench.DEFAULT_VENV,
                   help="Python and peers (default bench/.venv)")
    args = p.parse_args(argv)
    if args.load and args.upload:
        p.error("--load sends no body: use --upload without --load")
    names = [n for n in args.server.split(",") if n]
    for name in names:
        if name not in SERVERS:
            p.error("unknown server %r (known: %s)"
                    % (name, ", ".join(SERVERS)))
    if shutil.which("valgrind") is None:
        print("callgrind: valgrind not found (apt-get install valgrind)",
              file=sys.stderr)
        return 1
    venv = args.venv.resolve()
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="yimmo-callgrind-"))
    notes, ref_dir = [], None
    if any(n in ("ceiling", "pyfloor", "pyfloor-w4") for n in names):
        ref_dir = bench.build_reference(python, tmp, notes)
        if ref_dir is None:
            names = [n for n in names
                     if n not in ("ceiling", "pyfloor", "pyfloor-w4")]
    request = request_bytes(
        (BROWSER_HEADERS if args.browser else []) + args.header, args.bare,
        args.upload)
    # bench/ for the apps, then the checkout: its yimmo wins over any in
    # the venv.
    env = dict(os.environ, PYTHONPATH="%s%s%s" % (
        bench.BENCH_DIR, os.pathsep, args.repo.resolve()),
        PYTHONDONTWRITEBYTECODE="1")
    n = args.requests
    try:
        for name in names:
            argv, cwd = server_argv(name, args.app, python, venv / "bin",
                                    ref_dir, args.server_arg)
            if args.load:
                if shutil.which("wrk") is None:
                    print("callgrind: wrk not found", file=sys.stderr)
                    return 1
                for _ in range(args.runs):
                    out = tmp / ("%s.load" % name)
                    total, served = run_load(
                        argv, cwd, env, args.load, args.connections, request,
                        args.toggle or "ev_run,worker_main", str(out))
                    print("%-10s %8.0f instructions/request under load  "
                          "(%d requests, -c%d)" % (name, total / served,
                                                   served, args.connections),
                          flush=True)
                    if args.top:
                        costs = functions(str(out))
                        for f in sorted(costs, key=costs.get,
                                        reverse=True)[:args.top]:
                            print("    %8.0f  %s"
                                  % (costs[f] / served, short(f)))
                continue
            for _ in range(args.runs):
                one, two = tmp / ("%s.1" % name), tmp / ("%s.2" % name)
                a = run(argv, cwd, env, n, request, args.toggle, str(one))
                b = run(argv, cwd, env, 2 * n, request, args.toggle,
                        str(two))
                print("%-10s %8.0f instructions/request  (N=%d: %d, 2N: %d)"
                      % (name, (b - a) / n, n, a, b), flush=True)
            if args.top:
                first, second = functions(str(one)), functions(str(two))
                diff = {f: (second.get(f, 0) - first.get(f, 0)) / n
                        for f in set(first) | set(second)}
                for f in sorted(diff, key=diff.get, reverse=True)[:args.top]:
                    print("    %8.0f  %s" % (diff[f], short(f)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if ref_dir is not None:
            shutil.rmtree(ref_dir.parent, ignore_errors=True)
    for note in notes:
        print("note: " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

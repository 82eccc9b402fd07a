"""Overload benchmark (run on demand, not in CI): does a server stay useful
when offered far more work than it can do?

An app that sleeps 50 ms per request is served with 4 threads (capacity 80
requests/s). 2,000 clients run a closed loop against it for 30 s, each
giving up on a request after 5 s (then reconnecting). Reported per server:

* completed requests (200) as a share of capacity (goal: >= 95%);
* 503s, client timeouts and other errors;
* peak RSS of the server;
* "late starts": requests the app began after their client had given up
  (the request was sent more than 5 s earlier), and by how much at most
  (goal for yimmo: no more than its queue timeout);
* once the load stops, how long a fresh request takes (goal: < 100 ms).

yimmo runs with --queue-timeout 2 (its default is off). The peers
(gunicorn gthread, waitress, granian) run with 4 threads the same way, in
the same run, from bench/.venv (bench.py creates it).

    python bench/overload.py [--duration 30] [--clients 2000]
        [--only yimmo,gunicorn]

Only 127.0.0.1 is used; every run is bounded by --duration.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

APP_SLEEP = 0.05
THREADS = 4
CLIENT_TIMEOUT = 5.0
QUEUE_TIMEOUT = 2.0


def servers(python, venv_bin):
    app = "overload_app:app"
    bind = "127.0.0.1:{port}"
    return [
        bench.Server("yimmo", "yimmo",
                     [python, "-m", "yimmo", "--bind", bind, "--workers",
                      str(THREADS), "--queue-timeout", str(QUEUE_TIMEOUT),
                      "--log-level", "warning", app], str(bench.BENCH_DIR)),
        bench.Server("gunicorn", "gunicorn",
                     [str(venv_bin / "gunicorn"), "-k", "gthread",
                      "--threads", str(THREADS), "-w", "1", "--bind", bind,
                      "--log-level", "warning", app], str(bench.BENCH_DIR)),
        bench.Server("waitress", "waitress",
                     [str(venv_bin / "waitress-serve"),
                      "--threads=%d" % THREADS, "--listen=" + bind, app],
                     str(bench.BENCH_DIR)),
        bench.Server("granian", "granian",
                     [str(venv_bin / "granian"), "--interface", "wsgi",
                      "--http", "1", "--host", "127.0.0.1", "--port",
                      "{port}", "--workers", "1", "--runtime-threads", "1",
                      "--blocking-threads", str(THREADS), "--log-level",
                      "warning", "--no-ws", app], str(bench.BENCH_DIR)),
    ]


class Stats:
    def __init__(self):
        self.ok = self.unavailable = self.timeouts = self.errors = 0


async def one_client(port, stop_at, stats):
    reader = writer = None
    while time.monotonic() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port),
                    CLIENT_TIMEOUT)
            sent = time.time()
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Sent: %.6f\r\n\r\n"
                         % sent)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          CLIENT_TIMEOUT)
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and \
                        value.strip().lower() == b"close":
                    close = True
            if length:
                await asyncio.wait_for(reader.readexactly(length),
                                       CLIENT_TIMEOUT)
            if time.monotonic() > stop_at:
                break               # after the measured period
            if status == 200:
                stats.ok += 1
            elif status == 503:
                stats.unavailable += 1
                close = True
            else:
                stats.errors += 1
                close = True
            if close:
                writer.close()
                writer = None
        except asyncio.TimeoutError:
            stats.timeouts += 1
            if writer is not None:
                writer.close()
            writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.1)
    if writer is not None:
        writer.close()


async def load(port, clients, duration):
    stats = Stats()
    stop_at = time.monotonic() + duration
    await asyncio.gather(*(one_client(port, stop_at, stats)
                           for _ in range(clients)))
    return stats


def rss_mb(pid):
    """RSS of the process and its children, MB."""
    total = 0
    for p in [pid] + children(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid):
    out = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def probe_latency(port):
    """Seconds one fresh request takes; waits (bounded) for the server to
    answer at all once the load is gone."""
    import http.client
    deadline = time.monotonic() + 30
    while True:
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/stats")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status == 200:
                return time.monotonic() - t0, json.loads(body)
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return None, {}
        time.sleep(0.2)


def run_one(server, args, logs, ref_dir):
    port = bench.free_port()
    proc = bench.start(server, port, logs, ref_dir)
    try:
        if not bench.wait_ready(proc, port, 30):
            return {"server": server.name, "error": "did not start"}
        peak = [0.0]
        done = [False]

        async def sample():
            while not done[0]:
                peak[0] = max(peak[0], rss_mb(proc.pid))
                await asyncio.sleep(0.5)

        async def main():
            sampler = asyncio.ensure_future(sample())
            stats = await load(port, args.clients, args.duration)
            done[0] = True
            await sampler
            return stats

        stats = asyncio.run(main())
        # Let requests still queued in the server drain before probing:
        # the probe measures an idle server's answer, after the flood.
        time.sleep(CLIENT_TIMEOUT + QUEUE_TIMEOUT + 1)
        latency, app_stats = probe_latency(port)
        capacity = THREADS / APP_SLEEP * args.duration
        return {
            "server": server.name,
            "ok": stats.ok, "capacity_pct": 100.0 * stats.ok / capacity,
            "503": stats.unavailable, "timeouts": stats.timeouts,
            "errors": stats.errors, "peak_rss_mb": peak[0],
            "late_starts": app_stats.get("late", None),
            "max_late_s": app_stats.get("max_late", None),
            "probe_ms": None if latency is None else latency * 1000,
        }
    finally:
        bench.stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--only", default="")
    ap.add_argument("--venv", default=str(bench.DEFAULT_VENV))
    ap.add_argument("--no-reinstall", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logs = Path(tempfile.mkdtemp(prefix="yimmo-overload-"))
    venv = Path(args.venv)
    python = str(venv / "bin" / "python")
    chosen = servers(python, venv / "bin")
    if args.only:
        names = set(args.only.split(","))
        chosen = [s for s in chosen if s.name in names]
    notes = []
    usable = bench.prepare_venv(venv, sorted({s.package for s in chosen}),
                                not args.no_reinstall, logs, notes)
    results = []
    for server in chosen:
        if server.package not in usable:
            continue
        bench.log("-- %s" % server.name)
        results.append(run_one(server, args, logs, None))
        bench.log(json.dumps(results[-1]))
    print("| server | completed (% of capacity) | 503 | client timeouts | "
          "errors | peak RSS MB | late starts (max s) | fresh request ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print("| %s | %s |" % (r["server"], r["error"]))
            continue
        late = "?" if r["late_starts"] is None else "%d (%.2f)" % (
            r["late_starts"], r["max_late_s"])
        probe = "?" if r["probe_ms"] is None else "%.0f" % r["probe_ms"]
        print("| %s | %d (%.0f%%) | %d | %d | %d | %.0f | %s | %s |"
              % (r["server"], r["ok"], r["capacity_pct"], r["503"],
                 r["timeouts"], r["errors"], r["peak_rss_mb"], late, probe))
    for note in notes:
        print(note, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Free-threaded CPython against the GIL, with yimmo's worker threads.

Questions, each answered by interleaved rounds of wrk runs (a benchmark,
not a test: nothing here runs in CI); --modes picks among them:

* scaling: does a CPU-bound pure-Python app (bench/ft_app.py, about 2 ms
  per request) scale with workers in one process? req/s of workers=2 over
  workers=1, on a free-threaded interpreter (goal: >= 1.8x on 2 cores) and
  on a GIL one (expected: about 1.0x).
* granian: the same app on granian, on the free-threaded interpreter, one
  process with 1 and then 2 blocking threads (--granian: the granian
  executable installed for --ft).
* hello: what does free-threading cost the server's own path? Server CPU
  time per hello-world request, free-threaded over GIL (goal: within
  1.2x).
* django: one free-threaded process with 2 workers against 2 GIL
  processes of 1 worker each (--processes 2, plus their supervisor), for
  the Django app of bench/django_site.py: throughput and the summed RSS of
  every process of the server (after the run). Django must be installed
  for both interpreters.

wrk runs unpinned (`wrk -t1 -c8`), as does the server: on a 2-core machine
pinning the server to one core would hide exactly what is measured. Server
CPU per request comes from /proc (all threads, all processes of the
server), as in bench/bench.py; "machine cores" is the whole machine's busy
time over the run and "load" /proc/loadavg's 1-minute figure around it:
other load on the machine skews every figure. Ratios are taken per round
(the configurations of a round ran back to back) and given as the median
with every round's value.

    python bench/freethreading.py --ft /tmp/ft-bench-venv/bin/python \\
        --gil /tmp/gil-bench-venv/bin/python \\
        --granian /tmp/ft-bench-venv/bin/granian --duration 10 --rounds 5

Each interpreter must import the yimmo of this checkout: build it in place
with each (`python setup.py build_ext --inplace`; the two builds have
different file names and live side by side) or install it in its venv.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from bench import (free_port, machine_busy_seconds, parse_wrk,  # noqa: E402
                   stop, tree_cpu_seconds, wait_ready)


def server_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), str(BENCH_DIR)]), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHON_GIL", None)   # the interpreter's own default
    return env


def start(argv, log):
    return subprocess.Popen(argv, cwd=str(BENCH_DIR), env=server_env(),
                            stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def yimmo_argv(python, target, workers, processes, port):
    argv = [python, "-m", "yimmo", "--bind", "127.0.0.1:%s" % port,
            "--workers", str(workers), target]
    if processes > 1:
        argv[3:3] = ["--processes", str(processes)]
    return argv


def granian_argv(granian, target, threads, port):
    # One process (granian's --workers are processes), its WSGI app run
    # by `threads` blocking threads: on 3.13t they run Python in
    # parallel, as yimmo's workers do.
    return [granian, "--interface", "wsgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--runtime-threads", "1",
            "--blocking-threads", str(threads), "--no-ws",
            "--log-level", "warning", target]


def tree_pids(root):
    """root and its live descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(parents.get(pid, ()))
    return pids


def rss_mb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def measure(argv, seconds, connections, log):
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    proc = start(argv, log)
    try:
        if not wait_ready(proc, port, 60):
            raise RuntimeError("server did not come up (see the log)")
        url = "http://127.0.0.1:%d/" % port
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200
        # Warm-up, unmeasured.
        subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d2s", url],
                       stdout=subprocess.DEVNULL, timeout=60, check=True)
        load0 = loadavg()
        cpu0 = tree_cpu_seconds(proc.pid)
        busy0 = machine_busy_seconds()
        t0 = time.monotonic()
        out = subprocess.run(
            ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds,
             "--latency", url], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, universal_newlines=True,
            timeout=seconds + 60, check=True).stdout
        wall = time.monotonic() - t0
        cpu = tree_cpu_seconds(proc.pid) - cpu0
        busy = machine_busy_seconds() - busy0
        # Memory once it has served: every process of the server's tree
        # (a supervisor and its server processes with --processes).
        pids = tree_pids(proc.pid)
        rss = sum(rss_mb(pid) for pid in pids)
        load = (load0 + loadavg()) / 2
    finally:
        stop(proc)
    w = parse_wrk(out)
    # machine_cores includes wrk's own CPU (not separated here): the
    # machine's busy time over the run, for judging how loaded it was.
    return {"rps": w.rps, "p99_ms": w.p99_ms, "errors": w.errors,
            "cpu_us": cpu / max(w.requests, 1) * 1e6,
            "server_cores": cpu / wall,
            "machine_cores": busy / wall,
            "rss_mb": rss, "processes": len(pids), "loadavg": load}


def configurations(args):
    """(label, server, app, workers, argv) for each mode asked for; argv
    has {port} where the port goes."""
    pys = (("3.13t", args.ft), ("3.13-GIL", args.gil))
    modes = args.modes.split(",")
    configs = []
    if "scaling" in modes:
        for label, py in pys:
            for workers in (1, 2):
                configs.append((label, "yimmo", "app", workers,
                                yimmo_argv(py, "ft_app:app", workers, 1,
                                           "{port}")))
    if "granian" in modes and args.granian:
        for threads in (1, 2):
            configs.append(("3.13t", "granian", "app", threads,
                            granian_argv(args.granian, "ft_app:app",
                                         threads, "{port}")))
    if "hello" in modes:
        for label, py in pys:
            configs.append((label, "yimmo", "hello", 1,
                            yimmo_argv(py, "ft_app:hello", 1, 1, "{port}")))
    if "django" in modes:
        # One free-threaded process with 2 workers against 2 processes
        # with the GIL, 1 worker each (and their supervisor).
        configs.append(("3.13t", "yimmo", "django", 2,
                        yimmo_argv(args.ft, "django_site:application", 2, 1,
                                   "{port}")))
        configs.append(("3.13-GIL", "yimmo 2 proc", "django", 1,
                        yimmo_argv(args.gil, "django_site:application", 1,
                                   2, "{port}")))
    return configs


def spread(values):
    return "%.0f-%.0f" % (min(values), max(values)) if max(values) >= 100 \
        else "%.1f-%.1f" % (min(values), max(values))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ft", required=True, help="free-threaded python")
    p.add_argument("--gil", required=True, help="python with the GIL")
    p.add_argument("--granian", help="granian executable installed for "
                   "the free-threaded python (mode granian)")
    p.add_argument("--modes", default="scaling,hello,granian,django",
                   help="comma-separated: scaling (ft_app:app, workers 1 "
                   "and 2), hello (ft_app:hello, CPU per request), granian "
                   "(ft_app:app with 1 and 2 blocking threads, needs "
                   "--granian), django (bench/django_site.py: 1 process "
                   "with 2 workers on --ft against --processes 2 "
                   "--workers 1 on --gil; both need Django)")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--json", help="write every sample here")
    p.add_argument("--log", default="/tmp/yimmo-bench-ft.log")
    args = p.parse_args(argv)
    configs = configurations(args)
    samples = {c[:4]: [] for c in configs}
    with open(args.log, "ab") as log:
        for rnd in range(args.rounds):
            for c in configs:
                label, server, app, workers, cmd = c
                s = measure(cmd, args.duration, args.connections, log)
                samples[c[:4]].append(s)
                print("round %d %-8s %-12s %-6s w%d: %8.1f req/s  %7.1f us "
                      "CPU/req  server %.2f cores  machine %.2f cores  "
                      "RSS %.0f MB (%d proc)  load %.2f  err %d"
                      % (rnd + 1, label, server, app, workers, s["rps"],
                         s["cpu_us"], s["server_cores"],
                         s["machine_cores"], s["rss_mb"], s["processes"],
                         s["loadavg"], s["errors"]), flush=True)
    med = {c: {k: statistics.median(s[k] for s in v)
               for k in v[0]} for c, v in samples.items()}
    print()
    print("Medians of %d rounds (min-max in brackets):" % args.rounds)
    print()
    print("| interpreter | server | app | workers | req/s | server CPU "
          "us/req | server cores | machine cores | RSS MB (processes) "
          "| loadavg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, v in samples.items():
        m = med[c]
        print("| %s | %s | %s | %d | %.0f (%s) | %.1f (%s) | %.2f | %.2f "
              "| %.0f (%d) | %.2f |"
              % (c[0], c[1], c[2], c[3], m["rps"],
                 spread([s["rps"] for s in v]), m["cpu_us"],
                 spread([s["cpu_us"] for s in v]), m["server_cores"],
                 m["machine_cores"], m["rss_mb"], m["processes"],
                 m["loadavg"]))
    print()

    def ratios(a, b, key):
        """Per-round ratio a/b of key, as median (min-max)."""
        r = [x[key] / y[key] for x, y in zip(samples[a], samples[b])]
        return "%.2fx (rounds: %s)" % (statistics.median(r),
                                       ", ".join("%.2f" % x for x in r))
    for label in ("3.13t", "3.13-GIL"):
        a, b = (label, "yimmo", "app", 2), (label, "yimmo", "app", 1)
        if a in samples:
            print("%s: CPU-bound app, workers=2 / workers=1 throughput: %s"
                  % (label, ratios(a, b, "rps")))
    a, b = ("3.13t", "granian", "app", 2), ("3.13t", "granian", "app", 1)
    if a in samples:
        print("granian on 3.13t: CPU-bound app, 2 / 1 blocking threads: %s"
              % ratios(a, b, "rps"))
    a, b = ("3.13t", "yimmo", "hello", 1), ("3.13-GIL", "yimmo", "hello", 1)
    if a in samples:
        print("hello world server CPU per request, 3.13t / 3.13-GIL: %s"
              % ratios(a, b, "cpu_us"))
    a, b = ("3.13t", "yimmo", "django", 2), \
        ("3.13-GIL", "yimmo 2 proc", "django", 1)
    if a in samples:
        print("Django, 1 free-threaded process x 2 workers / 2 GIL "
              "processes x 1 worker: throughput %s, summed RSS %s"
              % (ratios(a, b, "rps"), ratios(a, b, "rss_mb")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"config": list(c), "samples": v}
                       for c, v in samples.items()], f, indent=1)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())

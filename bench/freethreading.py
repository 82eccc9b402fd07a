"""Free-threaded CPython against the GIL, with yimmo's worker threads.

Two questions, each answered by interleaved rounds of wrk runs (a benchmark,
not a test: nothing here runs in CI):

* Does a CPU-bound pure-Python app (bench/ft_app.py, about 2 ms per
  request) scale with workers in one process? req/s of workers=2 over
  workers=1, on a free-threaded interpreter (goal: >= 1.8x on 2 cores) and
  on a GIL one (expected: about 1.0x).
* What does free-threading cost the server's own path? Server CPU time
  per hello-world request, free-threaded over GIL (goal: within 1.2x).

wrk runs unpinned (`wrk -t1 -c8`), as does the server: on a 2-core machine
pinning the server to one core would hide exactly what is measured. Server
CPU per request comes from /proc (all threads), as in bench/bench.py; the
"other %" column is CPU that neither the server nor wrk used, in % of one
core: other load on the machine, which skews every figure.

    python bench/freethreading.py --ft /tmp/ft-venv/bin/python \\
        --gil /tmp/venv-3.13.0/bin/python --duration 10 --rounds 3

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


def start(python, app, workers, port, log):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), str(BENCH_DIR)]), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHON_GIL", None)   # the interpreter's own default
    argv = [python, "-m", "yimmo", "--bind", "127.0.0.1:%d" % port,
            "--workers", str(workers), "ft_app:%s" % app]
    return subprocess.Popen(argv, cwd=str(BENCH_DIR), env=env,
                            stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def measure(python, app, workers, seconds, connections, log):
    port = free_port()
    proc = start(python, app, workers, port, log)
    try:
        if not wait_ready(proc, port, 30):
            raise RuntimeError("server did not come up (see the log)")
        url = "http://127.0.0.1:%d/" % port
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200
        # Warm-up, unmeasured.
        subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d2s", url],
                       stdout=subprocess.DEVNULL, timeout=60, check=True)
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
    finally:
        stop(proc)
    w = parse_wrk(out)
    # machine_cores includes wrk's own CPU (not separated here): the
    # machine's busy time over the run, for judging how loaded it was.
    return {"rps": w.rps, "p99_ms": w.p99_ms, "errors": w.errors,
            "cpu_us": cpu / max(w.requests, 1) * 1e6,
            "server_cores": cpu / wall,
            "machine_cores": busy / wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ft", required=True, help="free-threaded python")
    p.add_argument("--gil", required=True, help="python with the GIL")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--json", help="write every sample here")
    p.add_argument("--log", default="/tmp/yimmo-bench-ft.log")
    args = p.parse_args(argv)
    configs = []
    for label, py in (("3.13t", args.ft), ("3.13-GIL", args.gil)):
        for workers in (1, 2):
            configs.append((label, py, "app", workers))
        configs.append((label, py, "hello", 1))
    samples = {c: [] for c in configs}
    with open(args.log, "ab") as log:
        for rnd in range(args.rounds):
            for c in configs:
                label, py, app, workers = c
                s = measure(py, app, workers, args.duration,
                            args.connections, log)
                samples[c].append(s)
                print("round %d %-8s %-5s w%d: %8.1f req/s  %7.1f us CPU/req"
                      "  server %.2f cores  machine %.2f cores  err %d"
                      % (rnd + 1, label, app, workers, s["rps"],
                         s["cpu_us"], s["server_cores"],
                         s["machine_cores"], s["errors"]), flush=True)
    med = {c: {k: statistics.median(s[k] for s in v)
               for k in v[0]} for c, v in samples.items()}
    print()
    print("| interpreter | app | workers | req/s | server CPU us/req "
          "| server cores | machine cores |")
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        m = med[c]
        print("| %s | %s | %d | %.0f | %.0f | %.2f | %.2f |"
              % (c[0], c[2], c[3], m["rps"], m["cpu_us"],
                 m["server_cores"], m["machine_cores"]))
    print()
    for label, py in (("3.13t", args.ft), ("3.13-GIL", args.gil)):
        r = med[(label, py, "app", 2)]["rps"] / med[(label, py, "app", 1)]["rps"]
        print("%s: CPU-bound app, workers=2 / workers=1 throughput: %.2fx"
              % (label, r))
    h = (med[("3.13t", args.ft, "hello", 1)]["cpu_us"] /
         med[("3.13-GIL", args.gil, "hello", 1)]["cpu_us"])
    print("hello world server CPU per request, 3.13t / 3.13-GIL: %.2fx" % h)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"config": list(c[:1]) + list(c[2:]), "samples": v}
                       for c, v in samples.items()], f, indent=1)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())

#!/usr/bin/env python3
"""Measure what --processes buys (bench/README.md, "Processes").

    python bench/processes.py throughput [--duration 10] [--rounds 3]
    python bench/processes.py balance [--duration 10]
    python bench/processes.py pss

throughput: bench/cpu_app.py (about 200 us of Python per request) under
    wrk, --processes 1 against --processes 2, measured round-robin;
    the medians and their ratio.
balance: the share of requests each of 2 processes answered, with the
    shared listener and with --reuse-port, over keep-alive connections
    and over a new connection per request.
pss: summed PSS (/proc/PID/smaps_rollup) of the 4 server processes of
    a Django app (bench/django_site.py), with and without --preload,
    after each process answered requests.

Runs this checkout (PYTHONPATH set to it; build it in place first) with the
Python running the script, which must have Django for `pss`. wrk must be
installed. A benchmark, not a test.
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(app, port, args, env=None):
    full_env = dict(os.environ, PYTHONPATH=REPO)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "yimmo", "--bind", "127.0.0.1:%d" % port,
         "--log-level", "warning"] + args + [app],
        cwd=BENCH, env=full_env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/" % port,
                                   timeout=5).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("server did not start: %r" % args)
            time.sleep(0.1)
    if "--processes" in args:
        # Every process up (not only the first that answered).
        time.sleep(1.0)
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wrk(port, duration, connections, threads=2, script=None):
    cmd = ["wrk", "-t%d" % threads, "-c%d" % connections,
           "-d%ds" % duration, "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append("http://127.0.0.1:%d/" % port)
    out = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+(\S+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99.group(1) if p99 else "?", (
        errors.group(1) if errors else "") + (
        " non-2xx %s" % non2xx.group(1) if non2xx else "")


def throughput(opts):
    configs = [("--processes 1", ["--processes", "1"]),
               ("--processes 2", ["--processes", "2"]),
               ("--processes 2 --reuse-port",
                ["--processes", "2", "--reuse-port"])]
    results = {name: [] for name, _ in configs}
    for r in range(opts.rounds):
        for name, args in configs:
            port = free_port()
            proc = start("cpu_app:app", port,
                         args + ["--workers", str(opts.workers)])
            try:
                wrk(port, 2, opts.connections)      # warm-up
                rps, p99, errors = wrk(port, opts.duration,
                                       opts.connections)
            finally:
                stop(proc)
            log("round %d %s: %.0f req/s p99 %s %s"
                % (r + 1, name, rps, p99, errors))
            results[name].append(rps)
    one = statistics.median(results["--processes 1"])
    print("| config | req/s (median of %d) | samples |" % opts.rounds)
    print("|---|---|---|")
    for name, _ in configs:
        print("| %s | %.0f | %s |" % (
            name, statistics.median(results[name]),
            ", ".join("%.0f" % x for x in results[name])))
    print()
    for name, _ in configs[1:]:
        print("ratio %s / --processes 1: %.2fx"
              % (name, statistics.median(results[name]) / one))


CLOSE_SCRIPT = """
wrk.headers["Connection"] = "close"
"""


def balance(opts):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "close.lua")
        with open(script, "w") as f:
            f.write(CLOSE_SCRIPT)
        for listener, extra in (("shared listener", []),
                                ("--reuse-port", ["--reuse-port"])):
            for conns, wrk_script in (("keep-alive, 50 connections", None),
                                      ("new connection per request",
                                       script)):
                counts = os.path.join(tmp, "counts-%d" % len(rows))
                os.mkdir(counts)
                port = free_port()
                proc = start("cpu_app:app", port,
                             ["--processes", "2", "--workers", "4"] + extra,
                             env={"COUNT_DIR": counts, "CPU_US": "50"})
                try:
                    rps, _, errors = wrk(port, opts.duration, 50,
                                         script=wrk_script)
                finally:
                    stop(proc)
                per = sorted((int(open(os.path.join(counts, n)).read())
                              for n in os.listdir(counts)), reverse=True)
                total = sum(per)
                shares = " / ".join("%.1f%%" % (100.0 * n / total)
                                    for n in per)
                log("%s, %s: %s (%d requests) %s"
                    % (listener, conns, shares, total, errors))
                rows.append((listener, conns, shares, total, rps))
    print("| listener | load | share per process | requests | req/s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| %s | %s | %s | %d | %.0f |" % row)


def pss_kb(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def pss(opts):
    print("| config | 4 server processes, summed PSS | supervisor PSS | "
          "per process |")
    print("|---|---|---|---|")
    for name, extra in (("without --preload", []),
                        ("--preload", ["--preload"])):
        port = free_port()
        proc = start("django_site:application", port,
                     ["--processes", "4", "--workers", "4"] + extra)
        try:
            # Every process serves (and so imports what a request needs);
            # keep-alive off so connections spread.
            for _ in range(400):
                urllib.request.urlopen("http://127.0.0.1:%d/" % port,
                                       timeout=5).read()
            time.sleep(1)
            kids = children(proc.pid)
            per = [pss_kb(k) for k in kids]
            sup = pss_kb(proc.pid)
        finally:
            stop(proc)
        print("| %s | %.1f MB | %.1f MB | %s |" % (
            name, sum(per) / 1024, sup / 1024,
            ", ".join("%.1f" % (p / 1024) for p in per)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("throughput", "balance", "pss"))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    opts = parser.parse_args()
    {"throughput": throughput, "balance": balance, "pss": pss}[opts.what](
        opts)


if __name__ == "__main__":
    main()

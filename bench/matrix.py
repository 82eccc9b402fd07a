#!/usr/bin/env python3
"""The benchmark matrix: yimmo against its peers on the workloads users
run, not only hello world.

    python bench/matrix.py [--duration 5] [--rounds 3] [--rows hello,file]
                           [--only yimmo,bjoern] [--venv DIR]
                           [--no-reinstall] [--out bench/results]

Rows (see ROWS and bench/README.md): hello world keep-alive and with a new
connection per request, 64 KB as a list of 16 KB chunks, 1 MB from a
generator, a 10 MB file through wsgi.file_wrapper (nginx serving the same
file is the ceiling), 1 MB uploads read by the app, a Flask JSON endpoint,
a Django view with the default middleware, an app sleeping 10 ms on 64
threads with 64 connections, 1,000 and 10,000 keep-alive connections, and
16-deep pipelining.

Everything else is bench.py's: the same servers and venv, the server
pinned to CPU 1 and wrk to CPU 0, a fresh server per measurement, CPU time
from /proc. Measurements are interleaved over rows and servers (round 1:
every row, every server; then round 2, ...). Writes every sample and the
machine to OUT/matrix.json and one PNG chart per metric to OUT/ (with the
bench venv's matplotlib: `pip install yimmo[bench]`).
"""

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, NamedTuple, Tuple

import bench
from bench import BENCH_DIR, Load, Server, log

MB = 1 << 20
FILE_SIZE = 10 * MB
UPLOAD_SIZE = MB
SLEEP_IDEAL = 64 / 0.010  # 64 threads, 10 ms each: 6,400 req/s
DEFAULT_OUT = BENCH_DIR / "results"
SERVERS = ("yimmo", "gunicorn", "waitress", "bjoern", "granian", "uwsgi")
# Descriptors for 10,000 connections in one process (wrk, or the server),
# plus its own.
NOFILE = 10240


class Row(NamedTuple):
    name: str
    title: str
    app: str  # MODULE:CALLABLE in bench/
    connections: int = 50
    extra: Tuple[str, ...] = ()  # more wrk arguments
    threads: int = 4  # yimmo workers, threads of the thread-pool peers
    expect: bytes = b"Hello, World!"  # body of the check request...
    expect_len: int = 0  # ...or only its length, when non-zero
    unit_bytes: int = 0  # throughput in MB/s of this many bytes a request
    nginx: bool = False  # nginx serves the same file as the ceiling
    method: str = "GET"
    path: str = "/"


LUA = BENCH_DIR / "wrk"
ROWS = [
    Row("hello", "hello, keep-alive, 50 conns", "matrix_app:hello"),
    Row("close", "hello, new connection each", "matrix_app:hello",
        extra=("-H", "Connection: close")),
    Row("chunks64k", "64 KB as 4 x 16 KB", "matrix_app:chunks64k",
        expect=b"", expect_len=65536, unit_bytes=65536),
    Row("gen1m", "1 MB from a generator", "matrix_app:gen1m",
        connections=16, expect=b"", expect_len=MB, unit_bytes=MB),
    Row("file10m", "10 MB file_wrapper", "matrix_app:file10m",
        connections=16, expect=b"", expect_len=FILE_SIZE,
        unit_bytes=FILE_SIZE, nginx=True, path="/big.bin"),
    Row("upload1m", "1 MB uploads", "matrix_app:upload", connections=16,
        extra=("-s", str(LUA / "upload.lua")), expect=str(MB).encode(),
        unit_bytes=UPLOAD_SIZE, method="POST"),
    Row("flask", "Flask JSON", "flask_app:app", expect=b"",
        expect_len=-1),
    Row("django", "Django view, default middleware",
        "django_site:application", expect=b"hello\n"),
    Row("sleep10ms", "sleep 10 ms, 64 threads, 64 conns",
        "matrix_app:sleep10", connections=64, threads=64),
    Row("conns1k", "1,000 keep-alive conns", "matrix_app:hello",
        connections=1000),
    Row("conns10k", "10,000 keep-alive conns", "matrix_app:hello",
        connections=10000),
    Row("pipeline16", "16-deep pipelining", "matrix_app:hello",
        extra=("-s", str(LUA / "pipeline.lua"))),
]


# -- servers ------------------------------------------------------------------


def servers_for(row, python, venv_bin, nginx_dir):
    """bench.py's servers serving row.app; yimmo is its recommended
    configuration (bench.py's yimmo-w4), with row.threads workers."""
    chosen = []
    for s in bench.all_servers(python, venv_bin, row.threads, row.app):
        if s.name == "yimmo-w4":
            argv = list(s.argv)
            argv[argv.index("--workers") + 1] = str(row.threads)
            s = s._replace(name="yimmo", argv=argv)
        if s.name in SERVERS:
            chosen.append(s)
    if row.nginx and nginx_dir is not None:
        # exec: the process bench.start() started is nginx's master, whose
        # process group bench.stop() signals.
        conf = "%s/nginx.{port}.conf" % nginx_dir
        chosen.append(Server("nginx", "nginx", [
            "sh", "-c", "sed s/@PORT@/{port}/g %s/nginx.conf.in > %s && "
            "exec nginx -p %s/ -c %s" % (nginx_dir, conf, nginx_dir, conf)],
            str(nginx_dir)))
    return chosen


NGINX_CONF = """\
# One worker, like the other servers' one process; sendfile like
# wsgi.file_wrapper.
worker_processes 1;
daemon off;
user root;
pid %(dir)s/nginx.@PORT@.pid;
error_log %(dir)s/nginx-error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    client_body_temp_path %(dir)s/tmp-body;
    proxy_temp_path %(dir)s/tmp-proxy;
    fastcgi_temp_path %(dir)s/tmp-fastcgi;
    uwsgi_temp_path %(dir)s/tmp-uwsgi;
    scgi_temp_path %(dir)s/tmp-scgi;
    server {
        listen %(host)s:@PORT@;
        location / { root %(dir)s/files; }
    }
}
"""


def prepare_files(work, notes):
    """The 10 MB file (for the apps and nginx) and nginx's config; returns
    nginx's directory, or None without nginx."""
    files = work / "files"
    files.mkdir()
    big = files / "big.bin"
    big.write_bytes(os.urandom(FILE_SIZE))
    os.environ["YIMMO_BENCH_FILE"] = str(big)
    if shutil.which("nginx") is None:
        notes.append("nginx skipped: not installed (apt-get install nginx)")
        return None
    (work / "nginx.conf.in").write_text(NGINX_CONF % {
        "dir": work, "host": bench.HOST})
    return work


# -- checks -------------------------------------------------------------------


def checker(row):
    """check(port) for bench.measure: one request, the right answer."""
    def check(port):
        conn = http.client.HTTPConnection(bench.HOST, port, timeout=30)
        try:
            body = b"u" * UPLOAD_SIZE if row.method == "POST" else None
            conn.request(row.method, row.path, body=body)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError("status %d %r" % (response.status, data[:60]))
        if row.expect_len > 0 and len(data) != row.expect_len:
            raise RuntimeError("%d bytes, not %d" % (len(data),
                                                     row.expect_len))
        if row.expect and data != row.expect:
            raise RuntimeError("unexpected body %r" % data[:60])
        if row.expect_len < 0 and not data:
            raise RuntimeError("empty body")
    return check


# -- the machine --------------------------------------------------------------


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(),
            "kernel": platform.release(),
            "python": subprocess.run(
                [sys.executable, "-c", "import sys; print(sys.version)"],
                stdout=subprocess.PIPE, universal_newlines=True
            ).stdout.strip()}


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- results ------------------------------------------------------------------


def summary(row, samples):
    """Medians over the rounds of the numbers the table and charts show."""
    def med(key):
        return statistics.median(s[key] for s in samples)
    rps = med("rps")
    out = {"rps": rps, "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
           "cpu_us": med("cpu_us"),
           "rss_mb": max(s["rss_peak_kb"] for s in samples) / 1024,
           "errors": sum(s["errors"] for s in samples),
           "unaccepted": max(s.get("unaccepted", 0) for s in samples),
           "waiting": statistics.median(s.get("waiting", 0)
                                        for s in samples),
           "other_pct": max(s["other_pct"] for s in samples)}
    if row.unit_bytes:
        out["mbps"] = med("rps") * row.unit_bytes / 1e6
        # CPU per MB (10^6 bytes), in microseconds.
        out["cpu_per_mb_us"] = med("cpu_us") * 1e6 / row.unit_bytes
    if row.name == "sleep10ms":
        out["ideal_pct"] = rps * 100 / SLEEP_IDEAL
    if row.name.startswith("conns"):
        out["rss_per_conn_b"] = statistics.median(
            (s["rss_peak_kb"] - s["rss_idle_kb"]) * 1024 / row.connections
            for s in samples)
    return out


def run_xcpu(results):
    """The run's lower quartile of cross-CPU probes (bench.cross_cpu_us),
    over every row: the cost of the machine's usual state."""
    return bench.xcpu_reference(s for by in results.values()
                                for ss in by.values() for s in ss)


def compared(results, row):
    """The row's samples ({server: [samples]}) that the tables and charts
    compare: those taken in the machine's usual state, when every server
    of the row has some; nginx, the file row's ceiling, does not decide
    (bench.same_state)."""
    return bench.same_state(results.get(row.name, {}), run_xcpu(results),
                            optional=("nginx",))


def left_out(results, rows):
    """Notes on what compared() did, one per row where it mattered."""
    return ["%s: %s" % (row.title, note) for row in rows
            for note in bench.left_out(results.get(row.name, {}),
                                       compared(results, row),
                                       run_xcpu(results))]


def throughput_text(row, m):
    if row.unit_bytes:
        return "%.0f MB/s" % m["mbps"]
    text = "%.0f req/s" % m["rps"]
    if "ideal_pct" in m:
        text += " (%.0f%% of 6,400)" % m["ideal_pct"]
    return text


def cpu_text(row, m):
    if row.unit_bytes:
        return "%.0f us/MB" % m["cpu_per_mb_us"]
    return "%.1f us/req" % m["cpu_us"]


def markdown(results, rows):
    lines = ["| row | server | throughput | p50 ms | p99 ms | server CPU "
             "| peak RSS MB | errors | waiting conns | other % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for name, samples in compared(results, row).items():
            m = summary(row, samples)
            rss = "%.0f" % m["rss_mb"]
            if "rss_per_conn_b" in m:
                rss += " (%.0f B/conn)" % m["rss_per_conn_b"]
            p99 = "n/a" if row.name in NO_P99 else "%.2f" % m["p99_ms"]
            lines.append("| %s | %s | %s | %.2f | %s | %s | %s | %d | %.0f "
                         "| %.0f |"
                         % (row.title, name, throughput_text(row, m),
                            m["p50_ms"], p99, cpu_text(row, m), rss,
                            m["errors"], m["waiting"], m["other_pct"]))
    return "\n".join(lines)


NET_TITLES = {
    "lo": "Over loopback; server CPU: the server's processes' CPU time.",
    "veth": "Over a veth pair to wrk's network namespace (--net veth); "
            "server CPU: the busy time of the server's CPU.",
}


# wrk records one latency per batch of 16 pipelined requests and prints 0
# for their p99: only p50 (of a batch) is kept for this row.
NO_P99 = ("pipeline16",)


def ratios(results, rows):
    """yimmo against the best peer per row: CPU per request and p99 (below
    1.00x: yimmo is better). A peer that left many connections waiting in
    its accept queue is not a candidate for the best p99: wrk measured
    only the connections it served."""
    lines = ["| row | yimmo CPU / best peer | best peer (CPU) | yimmo p99 / "
             "best peer | best peer (p99) | yimmo throughput / best peer |",
             "|---|---:|---|---:|---|---:|"]
    for row in rows:
        by = {n: summary(row, s) for n, s in compared(results, row).items()}
        if "yimmo" not in by:
            continue
        y = by.pop("yimmo")
        has_p99 = row.name not in NO_P99
        if not (y["cpu_us"] > 0 and (y["p99_ms"] > 0 or not has_p99)):
            continue
        by.pop("nginx", None)
        # A server whose CPU rounds to 0 ticks (bjoern sleeping) or that
        # answered nothing has no ratio.
        peers = {n: m for n, m in by.items()
                 if m["rps"] > 0 and m["cpu_us"] > 0
                 and (m["p99_ms"] > 0 or not has_p99)}
        if not peers:
            continue
        # Some queueing is every server's lot while connections churn (the
        # new-connection row); a median of 40% of the connections, or of
        # 100 (a full default backlog), is a server serving only some: it
        # did not run the row's workload (uWSGI with 4 threads serves 4
        # connections and never closes them), so it is no candidate for
        # best CPU, p99 or throughput. When no peer served them all, CPU
        # and throughput compare with every peer (marked *), p99 with none.
        limit = min(0.4 * row.connections, 100)
        fair = {n: m for n, m in peers.items() if m["waiting"] < limit}
        mark = "" if fair else "*"
        pool = fair or peers
        cpu = min(pool, key=lambda n: peers[n]["cpu_us"])
        rps = max(pool, key=lambda n: peers[n]["rps"])
        if not has_p99 or not fair:
            p99_text = "n/a | -"
        else:
            p99 = min(fair, key=lambda n: peers[n]["p99_ms"])
            p99_text = "%.2fx | %s" % (y["p99_ms"] / peers[p99]["p99_ms"],
                                       p99)
        lines.append("| %s | %.2fx | %s%s | %s | %.2fx (%s%s) |" % (
            row.title, y["cpu_us"] / peers[cpu]["cpu_us"], cpu, mark,
            p99_text, y["rps"] / peers[rps]["rps"], rps, mark))
    return "\n".join(lines)


# -- charts -------------------------------------------------------------------

CHARTS = [
    # file, metric key, title, "max" (higher is better) or "min"
    ("throughput.png", "throughput",
     "Throughput, share of the best server in each row (higher is better)",
     "max"),
    ("cpu.png", "cpu_us",
     "Server CPU per request (or per MB), x the cheapest server "
     "(lower is better)", "min"),
    ("p99.png", "p99_ms", "p99 latency, x the lowest (lower is better)",
     "min"),
    ("p50.png", "p50_ms", "p50 latency, x the lowest (lower is better)",
     "min"),
    ("rss.png", "rss_mb", "Peak RSS of the server's processes, MB "
     "(lower is better)", None),
    ("errors.png", "errors", "Errors (socket errors + non-2xx), all rounds "
     "(lower is better)", None),
]


def charts(data, out):
    """One PNG per metric: a group of bars per row, a bar per server."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if r.name in data["results"]]
    names = []
    for r in rows:
        for n in data["results"][r.name]:
            if n not in names:
                names.append(n)
    colors = dict(zip(names, plt.get_cmap("tab10").colors))
    for filename, key, title, norm in CHARTS:
        fig, ax = plt.subplots(figsize=(15, 6.5))
        width = 0.8 / len(names)
        labels = []
        for i, row in enumerate(rows):
            by = {n: summary(row, s)
                  for n, s in compared(data["results"], row).items()}
            value = {n: (m["rps"] if key == "throughput" else m[key])
                     for n, m in by.items()}
            if key == "p99_ms" and row.name in NO_P99:
                value = {}
            live = [v for n, v in value.items() if by[n]["rps"] > 0 and v > 0]
            ref = (max(live) if norm == "max" else min(live)) \
                if live and norm else None
            label = row.title
            if key == "throughput" and live:
                best = max(by, key=lambda n: by[n]["rps"])
                label += "\nbest: " + throughput_text(row, by[best])
            labels.append(label)
            for j, n in enumerate(names):
                if n not in value:
                    continue
                v = value[n]
                if ref:
                    v = v / ref if by[n]["rps"] > 0 else 0
                ax.bar(i + (j - (len(names) - 1) / 2) * width, v, width,
                       color=colors[n])
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[n])
                   for n in names]
        ax.legend(handles, names, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        if norm == "min" or key == "rss_mb":
            ax.set_yscale("log")
        if key == "errors":
            ax.set_yscale("symlog")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        fig.text(0.01, 0.01, "%s; %s" % (data["command"],
                                          data["machine"]["cpu"]),
                 fontsize=7, alpha=0.7)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=80)
        plt.close(fig)
        log("wrote %s" % (out / filename))


def write_charts(json_path, venv_python):
    """Draw with this interpreter's matplotlib, or the venv's."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # Its tables are the ones main() has just printed.
        return subprocess.run([venv_python, __file__, "--charts",
                               str(json_path)],
                              stdout=subprocess.DEVNULL).returncode == 0
    data = json.loads(json_path.read_text())
    charts(data, json_path.parent)
    return True


# -- main ---------------------------------------------------------------------


def save(data, out):
    """Written after every row of every round: an interrupted run keeps
    what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "matrix.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=5,
                   help="seconds of load per measurement (default 5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved measurements per row and server "
                        "(default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="seconds of unmeasured load first (default 1)")
    p.add_argument("--rows", default="",
                   help="comma-separated rows (default all): "
                        + ",".join(r.name for r in ROWS))
    p.add_argument("--only", default="",
                   help="comma-separated servers (default all): "
                        + ",".join(SERVERS + ("nginx",)))
    p.add_argument("--venv", type=Path, default=bench.DEFAULT_VENV)
    p.add_argument("--no-reinstall", action="store_true",
                   help="use the yimmo already in the venv")
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--net", choices=("lo", "veth"), default="lo",
                   help="lo: server and wrk on 127.0.0.1 (default); veth: "
                        "wrk in a network namespace of its own (needs root; "
                        "see bench/README.md)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="directory for matrix.json and the charts "
                        "(default bench/results)")
    p.add_argument("--charts", type=Path, metavar="JSON",
                   help="only draw the charts (and print the tables) of an "
                        "earlier run's JSON")
    args = p.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    args.only = [s for s in args.only.split(",") if s]
    unknown = set(args.rows) - {r.name for r in ROWS}
    unknown |= set(args.only) - set(SERVERS + ("nginx",))
    if unknown:
        p.error("unknown row or server: %s" % ", ".join(sorted(unknown)))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # SIGTERM and SIGHUP unwind like ^C: bench.measure() stops the server
    # it started, bench.two_hosts() removes the namespace.
    bench.exit_on_signals()
    if args.charts:
        data = json.loads(args.charts.read_text())
        rows = [r for r in ROWS if r.name in data["results"]]
        print(NET_TITLES[data.get("net", "lo")])
        print()
        print(markdown(data["results"], rows))
        print()
        print(ratios(data["results"], rows))
        for note in left_out(data["results"], rows):
            print("note: " + note)
        charts(data, args.charts.parent)
        return 0
    if shutil.which("wrk") is None:
        log("matrix: wrk not found (apt-get install wrk)")
        return 1
    try:
        bench.check_net(args.net)
        with bench.network(args.net):
            return run(args, argv)
    except bench.NetError as exc:
        log("matrix: %s" % exc)
        return 1


def run(args, argv):
    """Every measurement of the matrix, the report and the charts."""
    # Inherited by the servers and wrk (10,000 connections each side).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(soft, 65536), max(hard, 65536)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            pass  # raising the hard limit needs CAP_SYS_RESOURCE
    notes = []
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < NOFILE:
        notes.append("could not raise the descriptor limit to %d: the "
                     "10,000-connection row will fail" % NOFILE)
    if not bench.can_pin():
        notes.append("not pinned: needs taskset and CPUs 0 and 1")
    rows = [r for r in ROWS if not args.rows or r.name in args.rows]
    logs = Path(tempfile.mkdtemp(prefix="yimmo-matrix-logs-"))
    work = Path(tempfile.mkdtemp(prefix="yimmo-matrix-"))
    venv = args.venv.resolve()
    python = str(venv / "bin" / "python")
    nginx_dir = prepare_files(work, notes)
    plan = {r.name: [s for s in servers_for(r, python, venv / "bin",
                                            nginx_dir)
                     if not args.only or s.name in args.only]
            for r in rows}
    packages = sorted({s.package for ss in plan.values() for s in ss}
                      - {"nginx"})
    if any(r.name == "flask" for r in rows):
        packages.append("flask")
    if any(r.name == "django" for r in rows):
        packages.append("django")
    packages.append("matplotlib")  # the charts
    usable = bench.prepare_venv(venv, packages, not args.no_reinstall, logs,
                                notes) | {"nginx"}
    usable.discard("matplotlib")
    if "flask" not in usable:
        rows = [r for r in rows if r.name != "flask"]
    if "django" not in usable:
        rows = [r for r in rows if r.name != "django"]
    args.ref_dir = None
    args.connections = 50
    command = "python bench/matrix.py " + " ".join(argv)
    data = {"command": command.strip(), "machine": machine(),
            "net": args.net,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "loadavg_start": loadavg(),
            "rows": {r.name: dict(r._asdict(), expect=r.expect.decode())
                     for r in rows},
            "results": {}, "loadavg": [], "notes": notes}
    results: Dict[str, Dict[str, list]] = data["results"]
    dropped = set()
    log("%d rows, %d round(s) of %ds; logs in %s" % (
        len(rows), args.rounds, args.duration, logs))
    try:
        for round_no in range(1, args.rounds + 1):
            for row in rows:
                load = Load(row.connections, row.extra, checker(row),
                            row.path)
                data["loadavg"].append([round_no, row.name, loadavg()])
                for server in plan[row.name]:
                    if server.package not in usable or \
                            (row.name, server.name) in dropped:
                        continue
                    log("round %d/%d, %s: %s" % (round_no, args.rounds,
                                                  row.name, server.name))
                    try:
                        sample = bench.measure(server, args, logs, load)
                    except Exception as exc:
                        notes.append("%s on %s dropped in round %d: %s" % (
                            server.name, row.name, round_no,
                            str(exc)[:500]))
                        dropped.add((row.name, server.name))
                        log("  dropped: %s" % str(exc)[:300])
                        continue
                    log("  %.0f req/s, p50 %.2f ms, p99 %.2f ms, %.1f us "
                        "CPU/req (processes %.1f, server CPU %.1f), RSS %d "
                        "KB, %d errors, other %.0f%%, cross-CPU %.1f us"
                        % (sample.rps, sample.p50_ms, sample.p99_ms,
                           sample.cpu_us, sample.proc_us, sample.core_us,
                           sample.rss_peak_kb, sample.errors,
                           sample.other_pct, sample.xcpu_us))
                    d = sample._asdict()
                    d["round"] = round_no
                    results.setdefault(row.name, {}).setdefault(
                        server.name, []).append(d)
                save(data, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    data["loadavg_end"] = loadavg()
    json_path = save(data, args.out)
    print(NET_TITLES[args.net])
    print()
    print(markdown(results, rows))
    print()
    print(ratios(results, rows))
    for note in notes + left_out(results, rows):
        print("note: " + note)
    if not write_charts(json_path, python):
        print("note: charts not drawn (matplotlib missing: pip install "
              "matplotlib into %s)" % venv)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())

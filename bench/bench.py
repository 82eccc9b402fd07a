#!/usr/bin/env python3
"""Benchmark yimmo against other WSGI servers on a hello-world app.

    python bench/bench.py [--duration 10] [--rounds 3] [--connections 50]
                          [--threads 4] [--only yimmo,gunicorn,...]
                          [--reference] [--net lo|veth]

Each server serves bench/hello.py pinned to CPU 1 while wrk, pinned to CPU
0, loads it over keep-alive connections on 127.0.0.1. Servers are measured
round-robin, a fresh process for each measurement, and the medians over the
rounds are reported: requests/s, p99 latency and server CPU time per
request (user + system time of the server and all its child processes,
from /proc). With --net veth, wrk runs in a network namespace of its own
behind a veth pair, and the server CPU per request is CPU 1's busy time
(two_hosts() below). See bench/README.md for how to read the table.

The servers are installed into bench/.venv (created on first use): this
checkout of yimmo, gunicorn, waitress, bjoern, granian and uWSGI. A server that
fails to install or start is skipped with a note.
"""

import argparse
import contextlib
import fcntl
import json
import mmap
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import List, NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_VENV = BENCH_DIR / ".venv"
# Only next to the repository: no machine's absolute path in here. Without
# them the benchmark runs the peers only.
REFERENCE_DIRS = (REPO.parent / "shared" / "reference-servers",)

SERVER_CPU = "1"
CLIENT_CPU = "0"
# Where the servers listen, and the network namespace wrk runs in (None:
# this one) and its address. two_hosts() sets them for the length of a run.
HOST = "127.0.0.1"
CLIENT_NETNS = None
CLIENT_HOST = None
EXPECTED_BODY = b"Hello, World!"
PEERS = ("gunicorn", "waitress", "bjoern", "granian", "uwsgi")
# 'other %' above this (CPU of unrelated processes, % of one core) gets a
# warning under the table.
BUSY_WARNING = 15.0
# Ratios in the table are taken against these, when they ran.
BASELINES = ("yimmo-w4", "yimmo-w1")

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message):
    print(message, file=sys.stderr, flush=True)


# -- the servers --------------------------------------------------------------


class Server(NamedTuple):
    name: str
    package: str  # what must be installed: a pip name, "yimmo" or "ref"
    argv: List[str]  # "{host}", "{port}" and "{ref}": filled in by start()
    cwd: str  # likewise


def all_servers(python, venv_bin, threads, app="hello:app"):
    """Every server the benchmark knows, in table order. "{ref}" is the
    directory where the reference servers were built. app is MODULE:NAME
    in bench/ (bench/matrix.py serves other apps with the same commands)."""
    module, name = app.split(":")
    bind = "{host}:{port}"
    servers = [
        Server("yimmo-w4", "yimmo",
               [python, "-m", "yimmo", "--bind", bind, "--workers", "4",
                "--log-level", "warning", app], str(BENCH_DIR)),
        Server("yimmo-w1", "yimmo",
               [python, "-m", "yimmo", "--bind", bind, "--workers", "1",
                "--log-level", "warning", app], str(BENCH_DIR)),
        Server("gunicorn", "gunicorn",
               [str(venv_bin / "gunicorn"), "-k", "gthread", "--threads",
                str(threads), "-w", "1", "--bind", bind, "--log-level",
                "warning", app], str(BENCH_DIR)),
        Server("waitress", "waitress",
               [str(venv_bin / "waitress-serve"), "--threads=%d" % threads,
                "--listen=" + bind, app], str(BENCH_DIR)),
        # bjoern has no CLI and no threads: one process, one thread.
        Server("bjoern", "bjoern",
               [python, "-c", "import bjoern, %s as m; "
                "bjoern.run(m.%s, '{host}', {port})" % (module, name)],
               str(BENCH_DIR)),
        Server("granian", "granian",
               [str(venv_bin / "granian"), "--interface", "wsgi", "--http",
                "1", "--host", "{host}", "--port", "{port}", "--workers",
                "1", "--runtime-threads", "1", "--blocking-threads",
                str(threads), "--log-level", "warning", "--no-ws", app],
               str(BENCH_DIR)),
        # One process, no master, a thread pool; --http11-socket keeps
        # connections alive (--http-socket closes each one).
        Server("uwsgi", "uwsgi",
               [str(venv_bin / "uwsgi"), "--http11-socket", bind,
                "--module", app, "--processes", "1", "--threads",
                str(threads), "--disable-logging", "--die-on-term",
                "--need-app"], str(BENCH_DIR)),
        # C only, no Python: the ceiling for a libev server on this machine.
        Server("ceiling", "ref", ["{ref}/ceiling", "{port}"], "{ref}"),
        # The app called inline on the loop thread: the floor cost of Python.
        Server("pyfloor", "ref", [python, "-m", "pyfloor", app, "{port}"],
               "{ref}"),
        # A naive handoff to 4 worker threads: yimmo must beat this.
        Server("pyfloor-w4", "ref",
               [python, "-m", "pyfloor", app, "{port}", "--workers=4"],
               "{ref}"),
    ]
    return servers


def select(servers, only, reference):
    """Apply --only (names or prefixes such as "yimmo") and --reference."""
    if not only:
        return [s for s in servers if s.package != "ref" or reference]
    wanted = set(only)
    chosen = [s for s in servers
              if s.name in wanted or s.name.split("-")[0] in wanted]
    known = {s.name for s in servers} | {s.name.split("-")[0]
                                         for s in servers}
    for name in sorted(wanted - known):
        log("note: unknown server %r ignored (known: %s)"
            % (name, ", ".join(s.name for s in servers)))
    return chosen


# -- installing ---------------------------------------------------------------


def run_logged(argv, logfile, **kwargs):
    """Run argv with its output in logfile; True if it succeeded."""
    with open(logfile, "ab") as out:
        out.write(("\n$ %s\n" % " ".join(argv)).encode())
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                **kwargs)
    return result.returncode == 0


def tail(path, lines=5):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def import_error(python, module):
    """None if python can import module, else the last line of the error."""
    if module == "uwsgi":
        # uwsgi's module exists only inside its own binary.
        binary = Path(python).parent / "uwsgi"
        return None if binary.exists() else "no %s" % binary
    # From bench/, so a source tree on the cwd cannot shadow the venv.
    result = subprocess.run([python, "-c", "import " + module], cwd=BENCH_DIR,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            universal_newlines=True)
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else "exit status %d" % result.returncode


def copy_checkout(logs):
    """This checkout without build output, so pip builds it from scratch
    and leaves no build/ or *.egg-info behind in the work tree."""
    target = logs / "yimmo-src"
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", ".venv*", "__pycache__",
        "*.so", "*.o"))
    return target


def install(python, package, pip_log, logs):
    """pip install package (yimmo: this checkout) into the venv."""
    if package != "yimmo":
        return run_logged([python, "-m", "pip", "install", package], pip_log)
    source = copy_checkout(logs)
    try:
        return run_logged([python, "-m", "pip", "install", "--force-reinstall",
                           "--no-deps", str(source)], pip_log)
    finally:
        shutil.rmtree(source, ignore_errors=True)


def prepare_venv(venv, packages, reinstall_yimmo, logs, notes):
    """Create venv if needed and install what the chosen servers need.

    Returns the set of packages that are usable.
    """
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        log("creating %s" % venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    ok = set()
    for package in packages:
        module = "yimmo._yimmo" if package == "yimmo" else package
        # yimmo is reinstalled every run so the numbers are for this
        # checkout, not for a build left from an earlier run.
        fresh = package == "yimmo" and reinstall_yimmo
        if not fresh and import_error(python, module) is None:
            ok.add(package)
            continue
        log("installing %s" % (package if package != "yimmo"
                               else "yimmo from %s" % REPO))
        pip_log = logs / ("pip-%s.log" % package)
        if not install(python, package, pip_log, logs):
            hint = " (bjoern needs libev headers: apt-get install " \
                "libev-dev)" if package == "bjoern" else ""
            notes.append("%s skipped: pip install failed%s; see %s\n%s"
                         % (package, hint, pip_log, tail(pip_log)))
            continue
        error = import_error(python, module)
        if error is None:
            ok.add(package)
        else:
            notes.append("%s skipped: installed, but import %s failed: %s"
                         % (package, module, error))
    return ok


def build_reference(python, logs, notes):
    """Copy shared/reference-servers to a temp dir and build it there
    (shared/ may be read-only)."""
    source = next((d for d in REFERENCE_DIRS if d.is_dir()), None)
    if source is None:
        notes.append("reference servers skipped: no shared/"
                     "reference-servers next to the repository")
        return None
    target = Path(tempfile.mkdtemp(prefix="yimmo-bench-ref-")) / "ref"
    shutil.copytree(source, target)
    if not run_logged(["make", "PYTHON=" + python], logs / "make.log",
                      cwd=target):
        notes.append("reference servers skipped: make failed; see %s\n%s"
                     % (logs / "make.log", tail(logs / "make.log")))
        return None
    return target


# -- running a server ---------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def can_pin():
    """taskset exists and this process may run on both CPUs we pin to."""
    allowed = os.sched_getaffinity(0)
    return bool(shutil.which("taskset")) and \
        {int(SERVER_CPU), int(CLIENT_CPU)} <= allowed


# -- two hosts on one machine -------------------------------------------------
#
# Over loopback the CPU that sends a segment also runs the receiver's side
# of TCP for it (in a softirq, charged to whatever process that CPU is
# running): a server that transmits from its own CPU is charged for part
# of the client's work, and one that leaves its segments to go out on the
# client's ACKs is charged for less than its own (bench/README.md, "The
# file row, the whole machine and a fair client"). With --net veth, wrk
# runs in a network namespace of its own, joined to this one by a veth
# pair whose two ends steer their receive processing (RPS) to their own
# side's CPU: each CPU does the network work its host would do on a real
# network, and no more.


class NetError(RuntimeError):
    """--net veth could not be set up."""


NETNS_PREFIX = "yimmo-bench-"


def _tool_env():
    """The environment for iproute2: without a sanitizer preloaded into
    this process (the test suite's ASan stage), which `ip route get`
    trips over."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def _ip(*argv):
    result = subprocess.run(["ip", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            universal_newlines=True, env=_tool_env())
    if result.returncode != 0:
        raise NetError("ip %s: %s" % (" ".join(argv),
                                      result.stdout.strip()))
    return result.stdout


def check_net(net):
    """Raise NetError, before anything slow, when --net cannot work here."""
    if net != "veth":
        return
    if shutil.which("ip") is None:
        raise NetError("--net veth needs iproute2 (apt-get install "
                       "iproute2)")
    if os.geteuid() != 0:
        raise NetError("--net veth needs root (network namespaces)")
    if not can_pin():
        # Its server CPU is CPU SERVER_CPU's busy time: only meaningful
        # with the server pinned there and nothing of wrk's.
        raise NetError("--net veth needs taskset and CPUs %s and %s"
                       % (SERVER_CPU, CLIENT_CPU))


def _remove_pair(ns, server_end):
    """Delete the pair (at once: deleting the namespace alone leaves the
    pair to the kernel for some milliseconds more) and the namespace."""
    for argv in (["ip", "link", "del", server_end],
                 ["ip", "netns", "del", ns]):
        subprocess.run(argv, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=_tool_env())


def _remove_stale():
    """The namespaces (and pairs) of runs whose process is gone: killed
    with SIGKILL, or by a signal bench did not catch."""
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, universal_newlines=True,
                         env=_tool_env()).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        pid = name[len(NETNS_PREFIX):]
        if name.startswith(NETNS_PREFIX) and pid.isdigit() and \
                (int(pid) == os.getpid() or
                 not os.path.exists("/proc/%s" % pid)):
            _remove_pair(name, "ybs" + pid)


def _free_net():
    """A /30 of 10.254.0.0/16 that no address of this namespace is in,
    from the pid's: (server address, client address)."""
    used = set()
    out = _ip("-o", "-4", "addr", "show")
    for word in out.split():
        if word.startswith("10.254.") and "/" in word:
            a, b = (int(x) for x in word.split("/")[0].split(".")[2:])
            used.add(((a << 8) | b) >> 2)
    for k in range(16384):
        net = (os.getpid() + k) % 16384
        if net not in used:
            base = net * 4
            return ("10.254.%d.%d" % (base >> 8, (base & 255) + 1),
                    "10.254.%d.%d" % (base >> 8, (base & 255) + 2))
    raise NetError("no free /30 in 10.254.0.0/16")


@contextlib.contextmanager
def two_hosts():
    """Servers listen on HOST, wrk runs in the namespace CLIENT_NETNS and
    connects from CLIENT_HOST, for the length of the with block. Needs
    root (CAP_NET_ADMIN), iproute2 and CPUs 0 and 1; raises NetError
    without them. Everything is removed when the block ends, by an
    exception or by a signal that ends the process through Python
    (SIGINT; SIGTERM and SIGHUP with exit_on_signals()); a run killed
    otherwise leaves its namespace to the next run, which removes it."""
    global HOST, CLIENT_NETNS, CLIENT_HOST
    check_net("veth")
    pid = os.getpid()
    ns, server_end, client_end = (NETNS_PREFIX + str(pid), "ybs%d" % pid,
                                  "ybc%d" % pid)
    # No signal between creating a piece and noting it: they wait.
    stop = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    made = False
    try:
        try:
            # Two runs at once must not pick the same /30.
            with open("/run/yimmo-bench-net.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                _remove_stale()
                server_host, client_host = _free_net()
                made = True
                _ip("netns", "add", ns)
                _ip("link", "add", server_end, "mtu", "1500", "type",
                    "veth", "peer", "name", client_end, "netns", ns)
                _ip("addr", "add", server_host + "/30", "dev", server_end)
                _ip("link", "set", server_end, "up")
                _ip("-n", ns, "addr", "add", client_host + "/30", "dev",
                    client_end)
                _ip("-n", ns, "link", "set", client_end, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            # What arrives at the server's end is the server host's work,
            # what arrives at wrk's end the client host's. (ip netns exec
            # mounts the namespace's own /sys.)
            _ip("netns", "exec", ns, "sh", "-c",
                "echo %x > /sys/class/net/%s/queues/rx-0/rps_cpus"
                % (1 << int(CLIENT_CPU), client_end))
            try:
                with open("/sys/class/net/%s/queues/rx-0/rps_cpus"
                          % server_end, "w") as f:
                    f.write("%x\n" % (1 << int(SERVER_CPU)))
            except OSError as exc:
                raise NetError("RPS for %s: %s" % (server_end, exc)) \
                    from exc
            route = _ip("route", "get", client_host).split()
            if route[route.index("dev") + 1] != server_end:
                raise NetError("%s is routed through %s, not %s"
                               % (client_host,
                                  route[route.index("dev") + 1],
                                  server_end))
            HOST, CLIENT_NETNS, CLIENT_HOST = server_host, ns, client_host
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        yield
    finally:
        HOST, CLIENT_NETNS, CLIENT_HOST = "127.0.0.1", None, None
        if made:
            _remove_pair(ns, server_end)


def exit_on_signals():
    """SIGTERM and SIGHUP end the process as ^C does, through Python, so
    that what a run made (servers, the namespace) is undone on the way
    out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))


def network(net):
    """The context a run's measurements take place in: two_hosts() for
    "veth", nothing for "lo"."""
    return two_hosts() if net == "veth" else contextlib.nullcontext()


# -- the machine's cross-CPU cost -----------------------------------------------
#
# On a virtual machine the host decides where the two CPUs run, and moves
# them: here (2 vCPUs of a Firecracker VM on an AMD host) handing 64 KB
# written on one CPU to a reader on the other costs about 10 us for
# seconds or minutes at a time, then about 35-45 us (presumably no longer
# sharing a cache), then 10 again, with nothing else running. Every response
# crosses from the server's CPU to wrk's, so a 5-second sample of a
# bulk-transfer row (64 KB, 1 MB, the file) taken in the slow state costs
# the server up to 1.8x the CPU per request of one taken in the fast state,
# whatever the server (bench/README.md, "The machine's two states"). The
# probe below measures that cost just before each server starts and just
# after it is gone; the reports compare servers over the samples taken in
# the same state.

XCPU_BYTES = 65536
# A sample counts as taken in the machine's usual state when both its
# probes cost at most this many times the run's lower quartile of probes
# (the usual state is the cheaper one; a quartile, not the median, so that
# a run spending half its time in the slow state still has its cut between
# the two).
XCPU_SLACK = 2.0


def cross_cpu_us(seconds=0.2):
    """Microseconds to hand XCPU_BYTES written on SERVER_CPU to a reader
    copying them out on CLIENT_CPU, through shared memory, both spinning
    (no system call, no wake-up: only the caches). Run it with no server
    up: a server's own work on these CPUs (closing 10,000 connections, say)
    would count. 0.0, "not measured", when the two CPUs cannot be pinned
    or the probe could not run."""
    if not can_pin():
        return 0.0
    # SIGINT and SIGTERM wait until the probe is over (`seconds`, or 1 s
    # more without a reader): the reader must be stopped and this
    # process's CPUs given back whatever happens, and CPython 3.13.0 was
    # seen to skip the `finally` below when a handler raised in the
    # middle of the spinning loop (the reader then spun on, and the
    # process stayed pinned to one CPU). The reader inherits the mask.
    stops = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        return _cross_cpu_us(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _cross_cpu_us(seconds):
    size = XCPU_BYTES
    lo, hi = 64, 64 + size
    # Byte 0: 1 = written (the reader copies it out, then sets 0).
    # Byte 1: 1 = stop (only the writer sets it).
    try:
        shared = mmap.mmap(-1, hi)
    except OSError:
        return 0.0
    # The reader runs no handler of ours (SIGINT and SIGTERM are blocked):
    # it ends on byte 1, or on its own deadline if the writer is gone.
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:  # the reader
        code = 1
        try:
            os.sched_setaffinity(0, {int(CLIENT_CPU)})
            deadline = time.monotonic() + seconds + 5
            while code and time.monotonic() < deadline:
                for _ in range(1000):
                    if shared[1]:
                        code = 0
                        break
                    if shared[0] == 1:
                        shared[lo:hi]  # a copy of it all
                        shared[0] = 0
        finally:
            os._exit(code)
    if pid < 0:
        shared.close()
        return 0.0
    old = os.sched_getaffinity(0)
    count = 0
    elapsed = 0.0
    try:
        os.sched_setaffinity(0, {int(SERVER_CPU)})
        data = [bytes([i + 1]) * size for i in range(2)]
        started = time.perf_counter()
        end = started + seconds
        gone = False
        while count < 1 << 20 and not gone:
            spins = 0
            while shared[0] != 0:
                spins += 1
                if spins % 4096 == 0 and time.perf_counter() > end + 1:
                    gone = True  # the reader is gone: no measure
                    break
            if gone or (count % 16 == 0 and time.perf_counter() >= end):
                break
            shared[lo:hi] = data[count & 1]
            shared[0] = 1
            count += 1
        elapsed = time.perf_counter() - started
        if gone:
            count = 0
    finally:
        shared[1] = 1
        # The affinity first: a second signal during the wait below must
        # not leave this process pinned to one CPU.
        os.sched_setaffinity(0, old)
        os.waitpid(pid, 0)
        shared.close()
    return elapsed * 1e6 / count if count else 0.0


def xcpu_of(sample):
    if isinstance(sample, dict):
        return sample.get("xcpu_us", 0.0)
    return sample.xcpu_us


def xcpu_reference(samples):
    """The lower quartile of the probes of samples (Sample or its dict):
    the cost of the machine's usual, cheaper state. 0.0 without probes."""
    probes = sorted(xcpu_of(s) for s in samples if xcpu_of(s) > 0)
    return probes[(len(probes) - 1) // 4] if probes else 0.0


def same_state(by_server, reference=None, optional=()):
    """by_server ({name: [samples]}) restricted to the samples taken in the
    machine's usual state: probes at most XCPU_SLACK times `reference` (by
    default xcpu_reference of these samples), or not measured. When that
    leaves a server without a sample, all the samples of every server
    instead, unchanged; except for the servers named in `optional` (a
    ceiling such as nginx, compared with no one), which then keep all of
    theirs without undoing the choice for the others."""
    if reference is None:
        reference = xcpu_reference(s for ss in by_server.values() for s in ss)
    if reference <= 0:
        return by_server
    kept = {name: [s for s in ss if xcpu_of(s) <= XCPU_SLACK * reference]
            for name, ss in by_server.items()}
    for name in optional:
        if name in kept and not kept[name]:
            kept[name] = by_server[name]
    return kept if all(kept.values()) else by_server


def left_out(by_server, kept, reference=None):
    """What same_state() did, in words: [] when it kept every sample."""
    if reference is None:
        reference = xcpu_reference(s for ss in by_server.values()
                                   for s in ss)
    if reference <= 0:
        return []
    limit = "cross-CPU probe over %gx the run's lower quartile, %.1f us" % (
        XCPU_SLACK, reference)
    out = ["%s %d of %d" % (n, len(ss) - len(kept[n]), len(ss))
           for n, ss in by_server.items() if len(kept[n]) < len(ss)]
    if out:
        return ["left out (%s): %s" % (limit, ", ".join(out))]
    def slow(s):
        return xcpu_of(s) > XCPU_SLACK * reference
    none = [n for n, ss in by_server.items() if all(map(slow, ss))]
    if not none:
        return []
    return ["all samples compared, though some were taken in the slow state "
            "(%s), as %s had none in the usual one: %s"
            % (limit, " and ".join(none), ", ".join(
                "%s %d of %d" % (n, sum(map(slow, ss)), len(ss))
                for n, ss in by_server.items() if any(map(slow, ss))))]


def pinned(argv, cpu):
    return ["taskset", "-c", cpu] + argv if can_pin() else argv


def start(server, port, logs, ref_dir):
    def fill(text):
        return text.replace("{port}", str(port)).replace(
            "{ref}", str(ref_dir)).replace("{host}", HOST)
    argv = [fill(a) for a in server.argv]
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR),
               PYTHONDONTWRITEBYTECODE="1")
    logfile = open(logs / ("%s.log" % server.name), "ab")
    # Own session = own process group: stop() signals exactly this server
    # and the workers it forks, nothing else.
    proc = subprocess.Popen(pinned(argv, SERVER_CPU), cwd=fill(server.cwd),
                            env=env,
                            stdin=subprocess.DEVNULL, stdout=logfile,
                            stderr=subprocess.STDOUT, start_new_session=True)
    logfile.close()
    return proc


def stop(proc, timeout=10.0):
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        # Wait for the leader (poll reaps it) and for workers it forked.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None and not group_alive(proc.pid):
                return
            time.sleep(0.05)


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_ready(proc, port, timeout):
    """Wait until the port accepts connections; False if the server died
    or did not come up in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def check_response(port):
    """One request before measuring: a server that answers wrongly is not
    benchmarked."""
    url = "http://%s:%d/" % (HOST, port)
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read()
        if response.status != 200 or body != EXPECTED_BODY:
            raise RuntimeError("unexpected response %d %r"
                               % (response.status, body[:60]))


# -- CPU accounting -----------------------------------------------------------


def read_stat(pid):
    """(ppid, utime + stime, cutime + cstime, utime, cutime) in clock
    ticks, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after it.
    fields = data[data.rindex(")") + 2:].split()
    ppid = int(fields[1])
    own = int(fields[11]) + int(fields[12])
    reaped = int(fields[13]) + int(fields[14])
    return ppid, own, reaped, int(fields[11]), int(fields[13])


def all_stats():
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    return stats


def tree(root, stats):
    """root and its live descendants (pids), from all_stats()."""
    children = {}
    for pid, stat in stats.items():
        children.setdefault(stat[0], []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root, user=False):
    """CPU time of root and every live descendant, plus children root has
    already reaped (user: only their time in user space). /proc/PID/stat
    sums all threads of a process."""
    stats = all_stats()
    own, reaped = (3, 4) if user else (1, 2)
    total = sum(stats[pid][own] for pid in tree(root, stats))
    if root in stats:
        total += stats[root][reaped]
    return total / CLK_TCK


def tree_rss_kb(root):
    """Resident memory of root and its live descendants (sum of VmRSS)."""
    total = 0
    for pid in tree(root, all_stats()):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def listen_queue(port):
    """Connections waiting in the accept queue of the listener on
    HOST:port (rx_queue of a listening socket in /proc/net/tcp), or
    0. wrk never counts a request on a connection the server does not
    accept, neither in latency nor in errors: this shows such
    connections."""
    suffix = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "0A":
                    return int(fields[4].split(":")[1], 16)
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples tree_rss_kb(root) (and, given a port, listen_queue(port))
    every 0.1 s until stopped; .peak is the highest sum seen (a per-process
    VmHWM would count each process's own peak, which need not be
    simultaneous), .queued the longest accept queue and .waiting its
    median (connections left waiting all along, not only while a burst of
    new connections is being accepted)."""

    def __init__(self, root, port=None):
        super().__init__(daemon=True)
        self.root = root
        self.port = port
        self.peak = 0
        self.queues = []
        self.done = threading.Event()

    def run(self):
        while True:
            self.peak = max(self.peak, tree_rss_kb(self.root))
            if self.port:
                self.queues.append(listen_queue(self.port))
            if self.done.wait(0.1):
                return

    def stop(self):
        self.done.set()
        self.join()
        self.peak = max(self.peak, tree_rss_kb(self.root))
        return self.peak

    @property
    def queued(self):
        return max(self.queues, default=0)

    @property
    def waiting(self):
        return statistics.median(self.queues) if self.queues else 0


def _stat_fields(name):
    """The fields of /proc/stat's line `name` ("cpu", "cpu1"): user nice
    system idle iowait irq softirq steal [guest guest_nice], in ticks."""
    with open("/proc/stat") as f:
        for line in f:
            if line.split(None, 1)[0] == name:
                return [int(v) for v in line.split()[1:]]
    raise RuntimeError("no %s line in /proc/stat" % name)


def machine_busy_seconds():
    """CPU time all CPUs spent not idle since boot (from /proc/stat)."""
    fields = _stat_fields("cpu")
    # Guest time is already inside user and nice.
    total = sum(fields[:8])
    return (total - fields[3] - fields[4]) / CLK_TCK


def cpu_not_busy_seconds(cpu):
    """Time CPU number cpu spent idle, waiting for I/O, or stolen by the
    host, since boot. Its busy time over an interval is the interval's
    wall time minus this one's growth: the busy fields undercount it,
    as a softirq that runs while the CPU is idle is charged to no field
    without IRQ time accounting (this guest's kernel has none), though
    nohz still ends the idle time at the interrupt."""
    fields = _stat_fields("cpu%s" % cpu)
    return (fields[3] + fields[4] + fields[7]) / CLK_TCK


def other_processes_seconds(exclude):
    """pid -> CPU time (user + system) of every process other than the
    pids in exclude and the kernel's threads (pid 2 and its children: a
    ksoftirqd doing the network's work is not another load)."""
    return {pid: t for pid, (ppid, t, *_) in all_stats().items()
            if pid not in exclude and pid != 2 and ppid != 2}


def children_cpu_seconds():
    """CPU time of this script's reaped children (wrk, once it exits)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- wrk ----------------------------------------------------------------------


class WrkResult(NamedTuple):
    requests: int
    rps: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx responses
    p50_ms: float = 0.0


def parse_duration_ms(text):
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0),
                        ("m", 60000.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError("bad wrk duration %r" % text)


def parse_wrk(output):
    requests = rps = p99 = p50 = None
    errors = 0
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "99%":
            p99 = parse_duration_ms(words[1])
        elif words[0] == "50%":
            p50 = parse_duration_ms(words[1])
        elif len(words) > 1 and words[1] == "requests" and words[2] == "in":
            requests = int(words[0])
        elif words[0] == "Requests/sec:":
            rps = float(words[1])
        elif words[0] == "Socket" and words[1] == "errors:":
            # "Socket errors: connect 0, read 0, write 0, timeout 0"
            errors += sum(int(w.rstrip(",")) for w in words[3::2])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            errors += int(words[-1])
    if requests == 0 and rps is not None:
        # No response at all: wrk prints no latency distribution.
        return WrkResult(0, rps, 0.0, errors, 0.0)
    if requests is None or rps is None or p99 is None or p50 is None:
        raise RuntimeError("could not parse wrk output:\n" + output)
    return WrkResult(requests, rps, p99, errors, p50)


def run_wrk(port, seconds, connections, extra=(), path="/"):
    """wrk -t1 on CLIENT_CPU; extra: more wrk arguments (-s script.lua,
    -H header)."""
    argv = pinned(["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds,
                   "--latency", *extra,
                   "http://%s:%d%s" % (HOST, port, path)], CLIENT_CPU)
    if CLIENT_NETNS is not None:
        argv = ["ip", "netns", "exec", CLIENT_NETNS] + argv
    result = subprocess.run(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=seconds + 60,
                            universal_newlines=True)
    if result.returncode != 0:
        raise RuntimeError("wrk failed:\n" + result.stdout)
    return parse_wrk(result.stdout)


# -- one measurement ----------------------------------------------------------


class Sample(NamedTuple):
    rps: float
    p99_ms: float
    # Server CPU microseconds per request: of the server's processes over
    # loopback (proc_us); of the whole server CPU with --net veth (core_us).
    cpu_us: float
    errors: int
    # CPU used by processes other than the server and wrk during the run,
    # in % of one core: other load on the machine skews the comparison.
    other_pct: float
    p50_ms: float = 0.0
    requests: int = 0
    # Resident memory of the server's processes (sum), once it answered
    # its first request and at the highest point during the measured run.
    rss_idle_kb: int = 0
    rss_peak_kb: int = 0
    # The longest accept queue seen during the run: connections wrk opened
    # that the server left waiting (their requests count nowhere in wrk).
    unaccepted: int = 0
    waiting: float = 0  # the median of the same samples
    # cross_cpu_us() just before the server started and just after it
    # stopped, the higher one (0.0: not measured).
    xcpu_us: float = 0.0
    xcpu_before_us: float = 0.0  # the first of the two (the load's effect
    # on the host's placement, if any, shows in the second)
    proc_us: float = 0.0  # the server's processes' CPU, us per request
    # SERVER_CPU's busy time per request (the run's wall time less its
    # idle, iowait and steal time in /proc/stat): with --net veth, the
    # server host's whole work, its network receive path included.
    core_us: float = 0.0
    # The part of proc_us spent in user space: the rest is the kernel's
    # (over loopback most of it TCP, the client's receive path included),
    # much the same for every server (bench/README.md, "Last measured").
    user_us: float = 0.0


class Load(NamedTuple):
    """What one measurement sends: wrk's connections and extra arguments,
    and a check of one response before any load (raises if wrong)."""
    connections: int
    extra: tuple = ()
    check: object = None  # check(port); None: check_response
    path: str = "/"


def measure(server, args, logs, load=None):
    load = load or Load(args.connections)
    port = free_port()
    # The machine's state just before this server starts and just after it
    # is gone (cross_cpu_us: not while it may still be busy).
    xcpu_before = cross_cpu_us()
    harness = os.sched_getaffinity(0)   # given back whatever happens
    proc = start(server, port, logs, args.ref_dir)
    try:
        if not wait_ready(proc, port, args.start_timeout):
            if proc.poll() is not None:
                raise RuntimeError("exited before accepting connections%s"
                                   % exited(proc, logs, server))
            raise RuntimeError("did not accept connections within %gs"
                               % args.start_timeout)
        (load.check or check_response)(port)
        rss_idle = tree_rss_kb(proc.pid)
        if args.warmup:
            run_wrk(port, args.warmup, load.connections, load.extra,
                    load.path)
        # This script's own work during the run (the sampler below, the
        # wait for wrk) goes on wrk's CPU, not the server's: unpinned, the
        # scheduler put it on the server's CPU too, where the sampler's
        # scans of /proc (2.5 ms every 0.1 s) delayed the server's
        # responses (p99 of the new-connection row 0.3-0.4 ms higher for
        # yimmo; bench/README.md, "The harness on wrk's CPU"). The sampler
        # thread inherits this thread's CPUs.
        if can_pin():
            os.sched_setaffinity(0, {int(CLIENT_CPU)})
        sampler = RssSampler(proc.pid, port)
        sampler.start()
        # Not this script nor what it runs (wrk, ip), nor the server.
        mine = set(tree(os.getpid(), all_stats()))
        others = other_processes_seconds(
            mine | set(tree(proc.pid, all_stats())))
        started = time.monotonic()
        before = (tree_cpu_seconds(proc.pid), children_cpu_seconds(),
                  machine_busy_seconds(), cpu_not_busy_seconds(SERVER_CPU),
                  tree_cpu_seconds(proc.pid, user=True))
        try:
            wrk = run_wrk(port, args.duration, load.connections, load.extra,
                          load.path)
        finally:
            after = (tree_cpu_seconds(proc.pid), children_cpu_seconds(),
                     machine_busy_seconds(),
                     cpu_not_busy_seconds(SERVER_CPU),
                     tree_cpu_seconds(proc.pid, user=True))
            wall = time.monotonic() - started
            others_after = other_processes_seconds(
                mine | set(tree(proc.pid, all_stats())))
            rss_peak = sampler.stop()
        if proc.poll() is not None:
            raise RuntimeError("exited during the run%s"
                               % exited(proc, logs, server))
    finally:
        os.sched_setaffinity(0, harness)
        stop(proc)
    xcpu = max(xcpu_before, cross_cpu_us())
    server_cpu, wrk_cpu, busy, not_busy, server_user = (
        a - b for a, b in zip(after, before))
    core = max(0.0, wall - not_busy)
    proc_us = server_cpu * 1e6 / wrk.requests if wrk.requests else 0.0
    core_us = core * 1e6 / wrk.requests if wrk.requests else 0.0
    user_us = server_user * 1e6 / wrk.requests if wrk.requests else 0.0
    # With --net veth the server's CPU does the server host's network
    # work and nothing of the client's; part of it runs in softirqs while
    # the CPU is otherwise idle, charged to no process: its busy time is
    # the server's cost. Over loopback it also runs the client's receive
    # path, so there the processes' own time is (bench/README.md).
    cpu_us = core_us if CLIENT_NETNS is not None else proc_us
    if CLIENT_NETNS is not None:
        # The machine's busy time minus the server's and wrk's would be
        # mostly the network work no process is charged for (a third of
        # a core for gunicorn's hello world): count the other processes
        # instead. (One that started and ended within the run is missed.)
        other_s = sum(t - others.get(pid, 0)
                      for pid, t in others_after.items()) / CLK_TCK
    else:
        # What neither the server nor wrk was charged for (loopback's
        # softirqs land here too: 0-10% on a quiet machine).
        other_s = busy - server_cpu - wrk_cpu
    other = max(0.0, other_s) * 100 / wall
    return Sample(wrk.rps, wrk.p99_ms, cpu_us, wrk.errors, other,
                  wrk.p50_ms, wrk.requests, rss_idle, rss_peak,
                  sampler.queued, sampler.waiting, xcpu, xcpu_before,
                  proc_us, core_us, user_us)


def exited(proc, logs, server):
    if proc.poll() is None:
        return ""
    return " (exit status %s); log %s:\n%s" % (
        proc.returncode, logs / ("%s.log" % server.name),
        tail(logs / ("%s.log" % server.name)))


def run_rounds(servers, args, logs, notes):
    samples = {s.name: [] for s in servers}
    active = list(servers)
    for round_no in range(1, args.rounds + 1):
        for server in list(active):
            log("round %d/%d: %s" % (round_no, args.rounds, server.name))
            try:
                sample = measure(server, args, logs)
            except Exception as exc:  # one broken server must not end it all
                notes.append("%s dropped in round %d: %s"
                             % (server.name, round_no, exc))
                active.remove(server)
                continue
            log("  %.0f req/s, p99 %.2f ms, %.1f us CPU/request, other "
                "processes %.0f%% of a core, cross-CPU %.1f us%s"
                % (sample.rps, sample.p99_ms, sample.cpu_us, sample.other_pct,
                   sample.xcpu_us,
                   ", %d errors" % sample.errors if sample.errors else ""))
            samples[server.name].append(sample)
    return {name: s for name, s in samples.items() if s}


# -- the report ---------------------------------------------------------------


def medians(samples):
    return Sample(statistics.median(s.rps for s in samples),
                  statistics.median(s.p99_ms for s in samples),
                  statistics.median(s.cpu_us for s in samples),
                  sum(s.errors for s in samples),
                  max(s.other_pct for s in samples),
                  statistics.median(s.p50_ms for s in samples),
                  sum(s.requests for s in samples),
                  statistics.median(s.rss_idle_kb for s in samples),
                  max(s.rss_peak_kb for s in samples),
                  max(s.unaccepted for s in samples),
                  max(s.waiting for s in samples),
                  max(xcpu_of(s) for s in samples),
                  max(s.xcpu_before_us for s in samples),
                  statistics.median(s.proc_us for s in samples),
                  statistics.median(s.core_us for s in samples),
                  statistics.median(s.user_us for s in samples))


def ratio(value, base):
    return "%.2fx" % (value / base) if base else "-"


def format_table(results, order):
    rows = [(name, medians(results[name])) for name in order
            if name in results]
    baselines = [b for b in BASELINES if b in results]
    header = ["server", "req/s", "p99 ms", "CPU us/req", "user us/req",
              "errors", "other %"]
    for base in baselines:
        header += ["req/s vs " + base, "CPU vs " + base]
    lines = [header]
    for name, m in rows:
        line = [name, "%.0f" % m.rps, "%.2f" % m.p99_ms, "%.1f" % m.cpu_us,
                "%.1f" % m.user_us, str(m.errors), "%.0f" % m.other_pct]
        for base in baselines:
            b = medians(results[base])
            line += [ratio(m.rps, b.rps), ratio(m.cpu_us, b.cpu_us)]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = []
    for n, row in enumerate(lines):
        text.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                              for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


# -- main ---------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark yimmo against other WSGI servers.")
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds of load per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per server, interleaved; the "
                             "median is reported (default 3)")
    parser.add_argument("--connections", type=int, default=50,
                        help="wrk keep-alive connections (default 50)")
    parser.add_argument("--threads", type=int, default=4,
                        help="threads for the thread-pool peers (default 4)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--only", default="",
                        help="comma-separated servers, e.g. yimmo,gunicorn "
                             "(yimmo means yimmo-w1 and yimmo-w4)")
    parser.add_argument("--reference", action="store_true",
                        help="also run the reference servers (ceiling, "
                             "pyfloor) from shared/reference-servers")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="virtualenv for the servers (default "
                             "bench/.venv)")
    parser.add_argument("--no-reinstall", action="store_true",
                        help="use the yimmo already in the venv instead of "
                             "reinstalling this checkout")
    parser.add_argument("--start-timeout", type=float, default=30.0,
                        help="seconds a server gets to start (default 30)")
    parser.add_argument("--json", type=Path,
                        help="also write every sample to this file")
    parser.add_argument("--net", choices=("lo", "veth"), default="lo",
                        help="lo: server and wrk on 127.0.0.1 (default); "
                             "veth: wrk in a network namespace of its own "
                             "(needs root; see bench/README.md)")
    args = parser.parse_args(argv)
    if min(args.duration, args.rounds, args.connections, args.threads) < 1:
        parser.error("--duration, --rounds, --connections and --threads "
                     "must be >= 1")
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    exit_on_signals()
    if shutil.which("wrk") is None:
        log("bench: wrk not found (apt-get install wrk)")
        return 1
    try:
        check_net(args.net)
    except NetError as exc:
        log("bench: %s" % exc)
        return 1
    notes = []
    if not can_pin():
        notes.append("not pinned: needs taskset and CPUs %s and %s; server "
                     "and wrk share the CPUs, so numbers are noisier"
                     % (SERVER_CPU, CLIENT_CPU))
    logs = Path(tempfile.mkdtemp(prefix="yimmo-bench-logs-"))
    venv = args.venv.resolve()
    python = str(venv / "bin" / "python")
    chosen = select(all_servers(python, venv / "bin", args.threads),
                    args.only, args.reference)
    packages = sorted({s.package for s in chosen} - {"ref"})
    usable = prepare_venv(venv, packages, not args.no_reinstall, logs, notes)
    args.ref_dir = None
    if any(s.package == "ref" for s in chosen):
        args.ref_dir = build_reference(python, logs, notes)
        if args.ref_dir is not None:
            usable.add("ref")
    servers = [s for s in chosen if s.package in usable]
    if not servers:
        log("bench: no server to run")
        for note in notes:
            log("note: " + note)
        return 1

    log("%d server(s), %d round(s) of %ds, %d connections; logs in %s"
        % (len(servers), args.rounds, args.duration, args.connections, logs))
    try:
        with network(args.net):
            results = run_rounds(servers, args, logs, notes)
    except NetError as exc:
        log("bench: %s" % exc)
        return 1
    finally:
        if args.ref_dir is not None:
            shutil.rmtree(args.ref_dir.parent, ignore_errors=True)

    print()
    compared = same_state(results)
    print("hello world, wrk -t1 -c%d -d%ds, server on CPU %s, wrk on CPU %s, "
          "over %s, medians of %d round(s)"
          % (args.connections, args.duration, SERVER_CPU, CLIENT_CPU,
             "loopback" if args.net == "lo" else "a veth pair", args.rounds))
    print(format_table(compared, [s.name for s in servers]))
    for note in left_out(results, compared):
        print("note: " + note)
    busiest = max((max(s.other_pct for s in v) for v in results.values()),
                  default=0.0)
    if busiest > BUSY_WARNING:
        print("note: other processes used up to %.0f%% of a core during "
              "some runs ('other %%' column): the machine was not quiet, "
              "so these numbers are skewed; rerun when it is idle" % busiest)
    for note in notes:
        print("note: " + note)
    if args.json:
        args.json.write_text(json.dumps(
            {name: [dict(s._asdict(), net=args.net) for s in samples]
             for name, samples in results.items()}, indent=2))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())

"""Memory per idle keep-alive connection, yimmo against bjoern.

For each server: start it on 127.0.0.1 serving bench/hello.py, warm it up,
read its RSS (VmRSS of the server process and every process under it),
open N keep-alive connections that each send one request and read the
whole response, then stay open and silent; read the RSS again once it has
settled, and report (after - before) / N bytes per connection. Then the
same for N more: the first batch may partly reuse memory the server had
freed before (RSS does not grow for that), the second shows the full
cost of a connection. The client is this process, so its own memory is
not counted.

    python bench/idle_memory.py                       # both, 10,000 each
    python bench/idle_memory.py --only yimmo -n 2000 --rounds 3
    python bench/idle_memory.py --yimmo-python /path/to/python \\
        --bjoern-python bench/.venv/bin/python

yimmo is imported from this checkout (built in place: setup.py build_ext
--inplace) with --yimmo-python (default: this interpreter); bjoern from
--bjoern-python (default bench/.venv/bin/python, where bench.py installs
it); a server that cannot start is reported and skipped. Raises
RLIMIT_NOFILE for the servers and for itself (the hard limit too where
that is allowed: root with CAP_SYS_RESOURCE); the second batch is smaller
than N when the limit does not leave room for 2N connections. Every wait
is bounded; the script stops only the processes it started.
"""

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"Hello, World!"
START_TIMEOUT = 30
IO_TIMEOUT = 10

# The server scripts get the port to bind as argv[1] and this checkout's
# bench directory (for hello.py) as argv[2].
YIMMO = """
import sys
sys.path.insert(0, sys.argv[2])
import yimmo
from hello import app
yimmo.serve(app, bind="127.0.0.1:" + sys.argv[1], workers=int(sys.argv[3]),
            keepalive_timeout=3600, backlog=4096)
"""

BJOERN = """
import sys
sys.path.insert(0, sys.argv[2])
import bjoern
from hello import app
bjoern.listen(app, "127.0.0.1", int(sys.argv[1]), listen_backlog=4096)
bjoern.run()
"""


def raise_nofile(n):
    """Raise RLIMIT_NOFILE towards n (the hard limit too where allowed:
    as root with CAP_SYS_RESOURCE); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
            return n
        except (ValueError, OSError):
            n = hard
    if soft != resource.RLIM_INFINITY and soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
        soft = n
    return soft


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid):
    """pid and every process below it (from /proc/*/stat)."""
    parent = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces: fields start after its ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        parent[int(name)] = int(fields[1])
    found = [pid]
    for p in found:
        found.extend(c for c, pp in parent.items() if pp == p)
    return found


def rss_bytes(pid):
    total = 0
    for p in children_of(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def read_response(sock):
    """Read one hello-world response (its body ends with BODY)."""
    got = b""
    while not got.endswith(BODY):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed after %r" % got[:80])
        got += chunk
    return got


def open_idle(port, n, deadline):
    """n connections, each with one request answered, left open."""
    socks = []
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                raise TimeoutError("opened only %d connections" % len(socks))
            s = socket.create_connection(("127.0.0.1", port),
                                         timeout=IO_TIMEOUT)
            socks.append(s)
            s.sendall(REQUEST)
            read_response(s)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks):
    for s in socks:
        s.close()


def settle(pid, timeout=5.0):
    """RSS once two readings 0.5 s apart agree (or at the timeout)."""
    last = rss_bytes(pid)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.5)
        now = rss_bytes(pid)
        if now == last:
            break
        last = now
    return last


def measure(name, cmd, n, n2, nofile, budget):
    """One round for one server: a dict of results (or an error)."""
    port = free_port()
    log = open(os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "idle_memory.%s.log" % name), "w+")
    proc = subprocess.Popen(
        cmd + [str(port), HERE] + (["4"] if name == "yimmo" else []),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: raise_nofile(nofile))
    try:
        end = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                log.seek(0)
                return {"error": "exited %s: %s" % (proc.returncode,
                                                    log.read()[-500:])}
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > end:
                    return {"error": "did not listen in %ds" % START_TIMEOUT}
                time.sleep(0.1)
        with s:
            for _ in range(100):        # warm up: first-use allocations
                s.sendall(REQUEST)
                read_response(s)
        warm = open_idle(port, 100, time.monotonic() + budget)
        close_all(warm)
        time.sleep(0.5)
        before = settle(proc.pid)
        t0 = time.monotonic()
        socks = open_idle(port, n, t0 + budget)
        opened = time.monotonic() - t0
        try:
            after = settle(proc.pid)
            # A second batch: its growth is the cost of a connection once
            # the memory the server had freed before (and reuses for the
            # first batch without growing) is used up.
            socks += open_idle(port, n2, time.monotonic() + budget)
            after2 = settle(proc.pid)
            # Still all there: every connection answers a second request.
            alive = 0
            for s in socks[:: max(1, n // 100)]:
                s.sendall(REQUEST)
                read_response(s)
                alive += 1
        finally:
            close_all(socks)
        return {"before": before, "after": after, "connections": n,
                "per_connection": (after - before) / n,
                "after_second": after2,
                "second": n2,
                "marginal": (after2 - after) / n2,
                "open_seconds": round(opened, 2), "checked_alive": alive}
    except (OSError, TimeoutError) as e:
        return {"error": "%s: %s" % (type(e).__name__, e)}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--connections", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="yimmo,bjoern",
                    help="comma-separated: yimmo, bjoern")
    ap.add_argument("--yimmo-python", default=sys.executable)
    ap.add_argument("--bjoern-python",
                    default=os.path.join(HERE, ".venv", "bin", "python"))
    ap.add_argument("--budget", type=float, default=120,
                    help="seconds allowed to open the connections")
    ap.add_argument("--json", help="write every sample to this file")
    args = ap.parse_args()
    nofile = raise_nofile(2 * args.connections + 256)
    # The second batch as large as the first if the limit allows (only
    # root can raise the hard limit, and only where it is allowed to).
    second = min(args.connections, nofile - args.connections - 256)
    if second < 100:
        ap.error("RLIMIT_NOFILE (%d) is too low for %d connections"
                 % (nofile, args.connections))
    servers = {
        "yimmo": [args.yimmo_python, "-c", YIMMO],
        "bjoern": [args.bjoern_python, "-c", BJOERN],
    }
    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = REPO + (os.pathsep + env_path
                                       if env_path else "")
    names = [x for x in args.only.split(",") if x]
    for x in names:
        if x not in servers:
            ap.error("unknown server %r" % x)
    results = {x: [] for x in names}
    for r in range(args.rounds):
        for name in names:
            res = measure(name, servers[name], args.connections, second,
                          nofile, args.budget)
            results[name].append(res)
            if "error" in res:
                print("%-7s round %d: %s" % (name, r + 1, res["error"]))
            else:
                print("%-7s round %d: %6.0f bytes/connection, then %6.0f "
                      "for %d more (RSS %.1f -> %.1f -> %.1f MB)" % (
                          name, r + 1, res["per_connection"],
                          res["marginal"], second,
                          res["before"] / 2**20, res["after"] / 2**20,
                          res["after_second"] / 2**20))
            sys.stdout.flush()
    for name in names:
        ok = [x for x in results[name] if "error" not in x]
        if ok:
            first = sorted(x["per_connection"] for x in ok)
            more = sorted(x["marginal"] for x in ok)
            print("%-7s median %6.0f bytes per idle keep-alive connection "
                  "(%6.0f for the second %d; %d rounds)" % (
                      name, first[len(ok) // 2], more[len(ok) // 2],
                      second, len(ok)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"connections": args.connections,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

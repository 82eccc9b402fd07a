"""bench/bench.py's --net veth (two_hosts): wrk's side of the connection
lives in a network namespace of its own, joined by a veth pair whose two
ends do their receive processing on their own side's CPU, with an
address no other run holds, and nothing of it is left behind after the
run, however it ends (bench/README.md, "Two hosts on one machine")."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import bench  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None
        or not os.path.isdir("/sys/class/net") or not bench.can_pin(),
        reason="network namespaces need root, iproute2 and CPUs 0 and 1"),
    # The harness runs iproute2 and wrk, which are not built for the
    # sanitizer the ASan stage preloads (`ip route get` trips it): what
    # it checks is the harness, not yimmo's C code.
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="the benchmark harness under ASan"),
]

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None,
                               reason="needs wrk")

# The client, run inside the namespace: one request; prints the body.
CLIENT = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
conn.request("GET", "/")
print(conn.getresponse().read().decode())
"""


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name):
    return os.path.exists("/sys/class/net/%s" % name)


def in_namespace(ns, *argv):
    return subprocess.run(["ip", "netns", "exec", ns, *argv],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=20)


def rps_mask(path, ns=None):
    text = in_namespace(ns, "cat", path).stdout if ns else open(path).read()
    return int(text.strip().replace(",", ""), 16)


def remote_addr_app(seen):
    def app(environ, start_response):
        seen.add(environ["REMOTE_ADDR"])
        body = environ["REMOTE_ADDR"].encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    return app


def test_the_client_is_another_host_and_nothing_is_left(yimmo_server):
    pid = os.getpid()
    with bench.two_hosts():
        ns = bench.CLIENT_NETNS
        assert ns == "yimmo-bench-%d" % pid
        assert bench.HOST.startswith("10.254.")
        server = yimmo_server(remote_addr_app(set()),
                              bind="%s:0" % bench.HOST, workers=1)
        port = server.address[1]
        got = in_namespace(ns, sys.executable, "-c", CLIENT, bench.HOST,
                           str(port))
        assert got.returncode == 0, got.stdout
        assert got.stdout.strip() == bench.CLIENT_HOST
        # Each end's receive processing on its own side's CPU.
        assert rps_mask("/sys/class/net/ybc%d/queues/rx-0/rps_cpus" % pid,
                        ns) == 1 << int(bench.CLIENT_CPU)
        assert rps_mask("/sys/class/net/ybs%d/queues/rx-0/rps_cpus"
                        % pid) == 1 << int(bench.SERVER_CPU)
        server.stop(timeout=5)
    assert bench.HOST == "127.0.0.1" and bench.CLIENT_NETNS is None
    assert bench.CLIENT_HOST is None
    # Gone on return, not some milliseconds later.
    assert ns not in namespaces()
    assert not link_exists("ybs%d" % pid)


def test_a_failed_set_up_leaves_nothing(monkeypatch):
    # The second step fails (a link name the kernel refuses): the
    # namespace the first made goes again, and the error says what failed.
    real = bench._ip
    made = []

    def failing(*argv):
        if argv[:2] == ("netns", "add"):
            made.append(argv[2])
        if argv[:2] == ("link", "add"):
            argv = ("link", "add", "x" * 40) + argv[3:]
        return real(*argv)

    monkeypatch.setattr(bench, "_ip", failing)
    with pytest.raises(bench.NetError, match="ip link add"):
        with bench.two_hosts():
            pass
    assert made and made[0] not in namespaces()
    assert bench.HOST == "127.0.0.1" and bench.CLIENT_NETNS is None


def test_a_taken_address_is_skipped(yimmo_server):
    # Another interface already has the /30 this process would take
    # first: the pair gets the next one, and the traffic goes through it.
    pid = os.getpid()
    base = (pid % 16384) * 4
    taken = "10.254.%d.%d" % (base >> 8, (base & 255) + 1)
    dummy = "ydum%d" % pid
    subprocess.run(["ip", "link", "add", dummy, "type", "veth", "peer",
                    "name", "ydup%d" % pid], check=True)
    try:
        subprocess.run(["ip", "addr", "add", taken + "/30", "dev", dummy],
                       check=True)
        with bench.two_hosts():
            assert bench.HOST != taken
            server = yimmo_server(remote_addr_app(set()),
                                  bind="%s:0" % bench.HOST, workers=1)
            got = in_namespace(bench.CLIENT_NETNS, sys.executable, "-c",
                               CLIENT, bench.HOST, str(server.address[1]))
            assert got.stdout.strip() == bench.CLIENT_HOST, got.stdout
            server.stop(timeout=5)
    finally:
        subprocess.run(["ip", "link", "del", dummy])


def test_a_killed_runs_namespace_is_removed_by_the_next():
    # A run killed with SIGKILL cannot clean up: the next run removes its
    # namespace and pair (its pid is gone).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ns, end = "yimmo-bench-%d" % dead.pid, "ybs%d" % dead.pid
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", end, "type", "veth", "peer", "name",
                    "ybc%d" % dead.pid, "netns", ns], check=True)
    try:
        with bench.two_hosts():
            assert ns not in namespaces() and not link_exists(end)
    finally:
        subprocess.run(["ip", "link", "del", end], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


# A run in a process of its own, stopped by a signal while it holds the
# namespace (what ^C, `kill` or a closed terminal do to bench.py).
RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, %r)
    import bench
    bench.exit_on_signals()
    with bench.two_hosts():
        print(bench.CLIENT_NETNS, flush=True)
        time.sleep(30)
""" % str(BENCH))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM,
                                    signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_removes_the_namespace(signum):
    proc = subprocess.Popen([sys.executable, "-c", RUN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    try:
        ns = proc.stdout.readline().strip()
        assert ns == "yimmo-bench-%d" % proc.pid, proc.stderr.read()
        assert ns in namespaces()
        proc.send_signal(signum)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ns not in namespaces()
    assert not link_exists("ybs%d" % proc.pid)


@needs_wrk
def test_wrk_runs_in_the_namespace(yimmo_server):
    seen = set()
    with bench.two_hosts():
        server = yimmo_server(remote_addr_app(seen),
                              bind="%s:0" % bench.HOST, workers=1)
        result = bench.run_wrk(server.address[1], 1, 2)
        client = bench.CLIENT_HOST
        server.stop(timeout=5)
    assert result.requests > 0 and result.errors == 0
    assert seen == {client}


def test_the_server_cpu_is_charged_its_busy_time():
    # Two spinning processes pinned to the server's CPU for 0.6 s: its
    # busy time over that wall time is (nearly) all of it, whatever the
    # processes' own accounting says.
    spin = ("import time\nt = time.monotonic() + 0.6\n"
            "while time.monotonic() < t: pass")
    t0, idle0 = time.monotonic(), bench.cpu_not_busy_seconds(bench.SERVER_CPU)
    procs = [subprocess.Popen(["taskset", "-c", bench.SERVER_CPU,
                               sys.executable, "-c", spin]) for _ in range(2)]
    for p in procs:
        p.wait(timeout=20)
    wall = time.monotonic() - t0
    idle = bench.cpu_not_busy_seconds(bench.SERVER_CPU) - idle0
    assert idle < 0.25 * wall, (idle, wall)
    # The other CPU was mostly idle meanwhile: the measure is per CPU.
    other = "0" if bench.SERVER_CPU != "0" else "1"
    assert bench.cpu_not_busy_seconds(other) > 0


@needs_wrk
def test_a_measurement_charges_the_server_its_cpu(tmp_path):
    # bench.measure over the pair: a fresh server on the namespace's
    # address, its CPU per request the busy time of the server's CPU,
    # which holds the server's own (pinned there).
    server = bench.Server("yimmo", "yimmo", [
        sys.executable, "-m", "yimmo", "--bind", "{host}:{port}",
        "--workers", "1", "--log-level", "warning", "hello:app"],
        str(bench.BENCH_DIR))
    args = types.SimpleNamespace(duration=1, warmup=0, start_timeout=20,
                                 ref_dir=None)
    with bench.two_hosts():
        sample = bench.measure(server, args, tmp_path,
                               bench.Load(connections=2))
    assert sample.requests > 0 and sample.errors == 0
    assert sample.core_us > 0 and sample.cpu_us == sample.core_us
    assert sample.proc_us > 0
    assert sample.core_us > 0.8 * sample.proc_us

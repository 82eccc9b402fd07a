"""bench/bench.py's --net veth (two_hosts): wrk's side of the connection
lives in a network namespace of its own, joined by a veth pair whose two
ends do their receive processing on their own side's CPU, and nothing of
it is left behind after the run (bench/README.md, "Two hosts on one
machine")."""

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None
    or not os.path.isdir("/sys/class/net"),
    reason="network namespaces need root and iproute2")

# The client, run inside the namespace: one request, the address the
# server saw it come from, and the body.
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


def in_namespace(ns, *argv):
    return subprocess.run(["ip", "netns", "exec", ns, *argv],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=20)


def test_the_client_is_another_host_and_nothing_is_left(yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["REMOTE_ADDR"].encode()]

    before = namespaces()
    with bench.two_hosts():
        ns = bench.CLIENT_NETNS
        assert ns is not None and ns not in before
        assert bench.HOST.startswith("10.254.")
        server = yimmo_server(app, bind="%s:0" % bench.HOST, workers=1)
        port = server.address[1]
        # Only over the pair: the namespace has no route to this side's
        # loopback.
        got = in_namespace(ns, sys.executable, "-c", CLIENT, bench.HOST,
                           str(port))
        assert got.returncode == 0, got.stdout
        assert got.stdout.strip() == bench.CLIENT_HOST
        # Each end's receive processing on its own side's CPU.
        links = in_namespace(ns, "ip", "-o", "link", "show", "type", "veth")
        client_end = links.stdout.split(":")[1].strip().split("@")[0]
        mask = in_namespace(ns, "cat", "/sys/class/net/%s/queues/rx-0/"
                            "rps_cpus" % client_end).stdout
        assert int(mask.strip().replace(",", ""), 16) == \
            1 << int(bench.CLIENT_CPU)
        server_end = "ybs" + client_end[3:]
        with open("/sys/class/net/%s/queues/rx-0/rps_cpus"
                  % server_end) as f:
            assert int(f.read().strip().replace(",", ""), 16) == \
                1 << int(bench.SERVER_CPU)
        server.stop(timeout=5)
    assert bench.HOST == "127.0.0.1" and bench.CLIENT_NETNS is None
    assert bench.CLIENT_HOST is None
    assert ns not in namespaces()
    assert not os.path.exists("/sys/class/net/%s" % server_end)


def test_a_failed_set_up_leaves_nothing(monkeypatch):
    # The second step fails (a link name the kernel refuses): the
    # namespace the first made goes again, and the error says what failed.
    before = namespaces()
    real = bench._ip

    def failing(*argv):
        if argv[:2] == ("link", "add"):
            argv = ("link", "add", "x" * 40) + argv[3:]
        return real(*argv)

    monkeypatch.setattr(bench, "_ip", failing)
    with pytest.raises(bench.NetError, match="ip link add"):
        with bench.two_hosts():
            pass
    assert namespaces() == before
    assert bench.HOST == "127.0.0.1" and bench.CLIENT_NETNS is None


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_wrk_runs_in_the_namespace(yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "13")])
        return [b"Hello, World!"]

    with bench.two_hosts():
        server = yimmo_server(app, bind="%s:0" % bench.HOST, workers=1)
        result = bench.run_wrk(server.address[1], 1, 2)
        server.stop(timeout=5)
    assert result.requests > 0 and result.errors == 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_a_measurement_charges_the_server_its_cpu(tmp_path):
    # bench.measure over the pair: a fresh server on the namespace's
    # address, its CPU per request the busy time of the server's CPU.
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

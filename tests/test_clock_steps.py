"""Timeouts while the wall clock steps (an administrator's `date -s`, NTP
stepping the clock at boot, a virtual machine resumed from a snapshot).

Every timeout counts on a clock that never steps: a step forward must not
close connections early or answer waiting requests with 503, and a step
back must not turn a timeout off for as long as the step (an hour here:
slow clients would hold connections, and a stuck request its worker, for
that long).

The server runs with tests/clock/clockstep.c preloaded, which moves the
process's wall clock (CLOCK_REALTIME, gettimeofday, time) by an offset
the test writes into a file while the server runs; the machine's clock is
not touched. The C library's own waits on an absolute CLOCK_REALTIME
deadline are the kernel's and are not moved, so a wait computed from a
clock moved forward sleeps that much longer: what a real step back does
to such a wait.
"""

import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from helpers import (ServerProcess, connect, parse_response, read_until_close,
                     request, subprocess_env, wait_readable)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(ROOT, "tests", "clock", "clockstep.c")
HOUR = 3600

APP = textwrap.dedent("""
    import time

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/sleep/"):
            time.sleep(float(path[len("/sleep/"):]))
        body = path.encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = str(tmp_path_factory.mktemp("clockstep") / "clockstep.so")
    proc = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror",
                           "-O2", "-shared", "-fPIC", SHIM, "-o", out,
                           "-ldl"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


class Clock:
    """The offset of the server's wall clock, in seconds."""

    def __init__(self, path):
        self.path = str(path)
        with open(self.path, "wb") as f:
            f.write(struct.pack("=q", 0))

    def step(self, seconds):
        with open(self.path, "r+b") as f:
            f.write(struct.pack("=q", int(seconds * 1e9)))


@pytest.fixture
def clock_server(shim, tmp_path):
    """start(*options) -> (address, Clock): a server whose wall clock the
    test moves."""
    (tmp_path / "clockapp.py").write_text(APP)
    clock = Clock(tmp_path / "offset")
    servers = []

    def start(*options):
        env = subprocess_env(YMO_TEST_CLOCK_FILE=clock.path)
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = (preload + " " + shim).strip()
        server = ServerProcess([sys.executable, "-m", "yimmo", "-b",
                                "127.0.0.1:0", *options, "clockapp:app"],
                               cwd=str(tmp_path), env=env)
        servers.append(server)
        return server.wait_listening(), clock

    yield start
    for server in servers:
        server.kill()


def test_the_shim_moves_the_wall_clock_only(shim, tmp_path):
    clock = Clock(tmp_path / "offset")
    clock.step(-HOUR)
    env = dict(os.environ, YMO_TEST_CLOCK_FILE=clock.path,
               LD_PRELOAD=(os.environ.get("LD_PRELOAD", "") + " " +
                           shim).strip())
    out = subprocess.run(
        [sys.executable, "-c",
         "import time; print(time.time(), time.monotonic())"],
        env=env, capture_output=True, text=True, timeout=30).stdout.split()
    wall, mono = float(out[0]), float(out[1])
    assert abs(wall - (time.time() - HOUR)) < 60, (wall, time.time())
    assert abs(mono - time.monotonic()) < 60


def _open_idle(addr, target="/"):
    """A keep-alive connection that has had one response."""
    sock = connect(addr)
    assert request(sock, target=target).body == target.encode()
    return sock


def test_a_step_back_does_not_keep_idle_connections_open(clock_server):
    addr, clock = clock_server("--keepalive-timeout", "1",
                               "--header-timeout", "1")
    idle = _open_idle(addr)
    never_used = connect(addr)
    partial = connect(addr)
    partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.2)
    clock.step(-HOUR)
    t0 = time.monotonic()
    assert read_until_close(idle, timeout=8) == b""
    assert read_until_close(never_used, timeout=8) == b""
    resp = parse_response(read_until_close(partial, timeout=8))
    assert resp.status == 408
    assert time.monotonic() - t0 < 6


def test_a_step_forward_does_not_close_idle_connections_early(clock_server):
    addr, clock = clock_server("--keepalive-timeout", "3")
    first = _open_idle(addr, "/first")
    time.sleep(1.5)
    second = _open_idle(addr, "/second")
    t_second = time.monotonic()
    clock.step(HOUR)
    # The first connection's timeout fires in about 1.5 s: the second,
    # 1.5 s younger, must outlive it.
    assert read_until_close(first, timeout=8) == b""
    assert time.monotonic() - t_second < 2.5, "the first closed late"
    assert not wait_readable(second, 0.3), "the second closed with the first"
    assert request(second, target="/again").body == b"/again"
    second.close()


def test_a_step_forward_does_not_time_out_queued_requests(clock_server):
    addr, clock = clock_server("--workers", "1", "--queue-timeout", "3")
    results = {}

    def get(name, target):
        sock = connect(addr, timeout=15)
        results[name] = request(sock, target=target).status
        sock.close()

    busy = threading.Thread(target=get, args=("busy", "/sleep/1.5"))
    busy.start()
    time.sleep(0.3)
    queued = threading.Thread(target=get, args=("queued", "/queued"))
    queued.start()
    time.sleep(0.3)
    clock.step(HOUR)
    busy.join(15)
    queued.join(15)
    # It waited about 1.2 s for the worker, well under its 3 s.
    assert results == {"busy": 200, "queued": 200}


def test_a_step_back_does_not_turn_the_request_timeout_off(clock_server):
    addr, clock = clock_server("--timeout", "1")
    sock = connect(addr, timeout=15)
    # Forward for the server is what a step back does to a wait on an
    # absolute wall-clock deadline (see the module's docstring).
    clock.step(HOUR)
    time.sleep(0.5)
    t0 = time.monotonic()
    assert request(sock, target="/sleep/6").status == 503
    assert time.monotonic() - t0 < 4.5

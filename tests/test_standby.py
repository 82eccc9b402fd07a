"""With the GIL, the requests the loop reads in one turn go to one worker,
and it wakes one idle peer at a time to stand by for the GIL (ext/server.c
dispatch, ext/wsgi_worker.c stand_by): the others must still run at once
when the app blocks (a query, a sleep) with the GIL released, rather than
wait behind it.

The server runs in a child process that is stopped (SIGSTOP) while the
requests are sent, so that its loop reads them all in one turn."""

import os
import signal
import statistics
import sys
import sysconfig
import textwrap
import time

import pytest

from helpers import (ServerProcess, build_request, connect, read_response,
                     skip_if_gil_off)

APP = textwrap.dedent("""
    import threading
    import time

    lock = threading.Lock()
    running = 0
    most = 0


    def app(environ, start_response):
        global running, most
        with lock:
            running += 1
            most = max(most, running)
        if environ["PATH_INFO"] == "/sleep":
            time.sleep(1.0)     # the GIL is released meanwhile
        with lock:
            running -= 1
            body = str(most).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")


def send_in_one_turn(server, socks, target):
    """Send GET target on every socket while the server process is
    stopped, so that its loop reads them all in one turn."""
    server.pause()
    try:
        for s in socks:
            s.sendall(build_request("GET", target))
        time.sleep(0.2)
    finally:
        server.signal(signal.SIGCONT)


@pytest.mark.parametrize("workers,n", [(4, 4), (16, 16), (4, 8)])
def test_one_turn_of_blocking_requests_runs_at_once(tmp_path, workers, n):
    (tmp_path / "standby_app.py").write_text(APP)
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", str(workers), "standby_app:app"],
                       cwd=tmp_path) as server:
        addr = server.wait_listening()
        socks = [connect(addr, 15) for _ in range(n)]
        # Every connection accepted before the loop stops, so that one
        # turn reads every request.
        for s in socks:
            s.sendall(build_request("GET", "/"))
            assert read_response(s).status == 200
        send_in_one_turn(server, socks, "/sleep")
        t0 = time.monotonic()
        bodies = [read_response(s).body for s in socks]
        elapsed = time.monotonic() - t0
        for s in socks:
            s.close()
        # One after another they take n seconds; min(workers, n) at once
        # take ceil(n / workers).
        rounds = -(-n // workers)
        assert elapsed < rounds + 0.8, (elapsed, bodies)
        assert max(int(b) for b in bodies) == min(workers, n), bodies


# A free-threaded build turns the GIL on when a module without Py_mod_gil
# is imported. A worker asleep since before that started its wait in the
# free-threaded mode (it takes its exchange before attaching), so it must
# still call a standby for the rest of the turn once attached: here two
# requests that each wait for the other, read in one turn, must meet.
NEEDS_GIL_C = """
#include <Python.h>
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "needs_gil", NULL,
                                 -1, NULL};
PyMODINIT_FUNC PyInit_needs_gil(void) { return PyModule_Create(&def); }
"""

MEET_APP = textwrap.dedent("""
    import sys
    import threading

    meet = threading.Barrier(2)


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/import":
            import needs_gil  # noqa: F401 (turns the GIL on)
            body = str(sys._is_gil_enabled())
        elif environ["PATH_INFO"] == "/meet":
            try:
                meet.wait(4.0)      # the GIL is released meanwhile
                body = "met"
            except threading.BrokenBarrierError:
                body = "alone"
        else:
            body = "hi"
        body = body.encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")


def _build_needs_gil(tmp_path):
    import importlib.machinery
    import shlex
    import subprocess
    import sysconfig
    (tmp_path / "needs_gil.c").write_text(NEEDS_GIL_C)
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    out = tmp_path / ("needs_gil" + importlib.machinery.EXTENSION_SUFFIXES[0])
    r = subprocess.run(cc + ["-shared", "-fPIC",
                             "-I" + sysconfig.get_paths()["include"],
                             str(tmp_path / "needs_gil.c"), "-o", str(out)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("no C compiler for the test module: %r" % r.stderr[-200:])


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", None),
                    reason="free-threaded builds only")
def test_gil_turned_on_at_run_time_still_calls_a_standby(tmp_path):
    from helpers import subprocess_env
    _build_needs_gil(tmp_path)
    (tmp_path / "meet_app.py").write_text(MEET_APP)
    env = subprocess_env()
    env.pop("PYTHON_GIL", None)     # the GIL must start off
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", "2", "meet_app:app"],
                       cwd=tmp_path, env=env) as server:
        addr = server.wait_listening()
        socks = [connect(addr, 15) for _ in range(3)]
        for s in socks[1:]:
            s.sendall(build_request("GET", "/"))
            assert read_response(s).status == 200
        # One worker runs the import; the other has slept since before.
        socks[0].sendall(build_request("GET", "/import"))
        assert read_response(socks[0]).body == b"True"
        time.sleep(0.2)
        send_in_one_turn(server, socks[1:], "/meet")
        bodies = [read_response(s).body for s in socks[1:]]
        for s in socks:
            s.close()
        assert bodies == [b"met", b"met"], bodies


# Blocking requests read in one loop turn must start at once even when the
# app's threads keep the GIL busy (a background job, a metrics exporter).
# A standby that wakes the next one only once it holds the GIL waits a
# switch interval (5 ms) for each hand-off then: the 31st sleeping request
# started up to half a second after the first, with 32 workers idle. A
# worker that waited that long for the GIL wakes one for every exchange
# still queued (stand_by's eager case), and they start within a few ms.
HOG_APP = textwrap.dedent("""
    import threading
    import time


    def spin():
        while True:             # holds the GIL but for switch intervals
            end = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                pass


    for _ in range(2):
        threading.Thread(target=spin, daemon=True).start()


    def app(environ, start_response):
        t0 = time.monotonic()   # CLOCK_MONOTONIC: the test's clock too
        if environ["PATH_INFO"] == "/sleep":
            time.sleep(1.0)     # the GIL is released meanwhile
        body = repr(t0).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")

WORKERS = 32
ROUNDS = 3


@pytest.mark.skipif(bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
                    reason="free-threaded: with the GIL off the premise is "
                           "gone; with PYTHON_GIL=1 the spread is 0.1-0.15 s "
                           "either way, too close to tell apart")
def test_one_turn_of_blocking_requests_starts_at_once_with_gil_hog(
        tmp_path):
    (tmp_path / "hog_app.py").write_text(HOG_APP)
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", str(WORKERS), "hog_app:app"],
                       cwd=tmp_path) as server:
        addr = server.wait_listening()
        socks = [connect(addr, 15) for _ in range(WORKERS - 1)]
        try:
            for s in socks:
                s.sendall(build_request("GET", "/"))
                assert read_response(s).status == 200
            spreads = []
            for _ in range(ROUNDS):
                send_in_one_turn(server, socks, "/sleep")
                starts = sorted(float(read_response(s).body)
                                for s in socks)
                spreads.append(starts[-1] - starts[0])
        finally:
            for s in socks:
                s.close()
        # Waking every idle worker at once: at most ~45 ms on a busy 2-core
        # machine. One standby at a time: 0.2 to 0.8 s in most rounds. The
        # median of the rounds: the chain is slow every round, while one
        # round in a CI run on 3.9 took 0.18 s with the others at 0.02 and
        # 0.05 s (the machine, not the server).
        assert statistics.median(spreads) < 0.15, spreads


ORDER_APP = textwrap.dedent("""
    import threading

    started = []
    lock = threading.Lock()


    def app(environ, start_response):
        with lock:
            started.append(environ["PATH_INFO"])
            body = ",".join(started).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")


# libev runs the callbacks of one turn in the reverse of the order epoll
# reported the sockets in, so requests read in one turn were handed out
# newest first (and with --queue-timeout the oldest were the ones refused).
@pytest.mark.parametrize("workers",
                         [1, pytest.param(3, marks=skip_if_gil_off)])
def test_one_turn_runs_in_arrival_order(tmp_path, workers):
    (tmp_path / "order_app.py").write_text(ORDER_APP)
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", str(workers), "order_app:app"],
                       cwd=tmp_path) as server:
        addr = server.wait_listening()
        socks = [connect(addr, 15) for _ in range(8)]
        for s in socks:
            s.sendall(build_request("GET", "/warm"))
            assert read_response(s).status == 200
        server.pause()
        try:
            for i, s in enumerate(socks):
                s.sendall(build_request("GET", "/%d" % i))
                time.sleep(0.01)    # in this order on the wire
            time.sleep(0.2)
        finally:
            server.signal(signal.SIGCONT)
        last = max((read_response(s).body.decode() for s in socks), key=len)
        for s in socks:
            s.close()
        order = [p for p in last.split(",") if p != "/warm"]
        assert order == ["/%d" % i for i in range(8)], order


STALL_APP = textwrap.dedent("""
    import os
    import threading
    import time

    started = []
    lock = threading.Lock()


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/hold":
            while not os.path.exists("go"):
                time.sleep(0.005)
        with lock:
            started.append(environ["PATH_INFO"])
            body = ",".join(started).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")


# Connections that waited for room (--max-pending) go on oldest first
# (server_unstall), several in one loop turn when several exchanges finish
# in one batch of a worker's output: they must run in that order, not be
# numbered down as if libev had handed them over newest first. The server
# shares one CPU with its worker, so that the loop (SCHED_BATCH) drains
# both held exchanges in one batch.
def test_unstalled_in_one_turn_run_in_arrival_order(tmp_path):
    (tmp_path / "stall_app.py").write_text(STALL_APP)
    cpu = min(os.sched_getaffinity(0))
    pin = ("import os, sys; os.sched_setaffinity(0, {%d}); "
           "os.execv(sys.executable, [sys.executable] + sys.argv[1:])" % cpu)
    with ServerProcess([sys.executable, "-c", pin, "-m", "yimmo",
                        "-b", "127.0.0.1:0", "--workers", "1",
                        "--max-pending", "2", "stall_app:app"],
                       cwd=tmp_path) as server:
        addr = server.wait_listening()
        holds = [connect(addr, 15) for _ in range(2)]
        waits = [connect(addr, 15) for _ in range(6)]
        for s in holds + waits:
            s.sendall(build_request("GET", "/warm"))
            assert read_response(s).status == 200
        for s in holds:
            s.sendall(build_request("GET", "/hold"))
        time.sleep(0.3)
        for i, s in enumerate(waits):
            s.sendall(build_request("GET", "/%d" % i))
            time.sleep(0.03)    # stalled in this order
        time.sleep(0.2)
        (tmp_path / "go").write_text("")
        bodies = [read_response(s).body.decode() for s in holds + waits]
        for s in holds + waits:
            s.close()
        last = max(bodies, key=len)
        order = [p for p in last.split(",") if p not in ("/warm", "/hold")]
        assert order == ["/%d" % i for i in range(6)], order


# With most recent requests cut (the GIL changed hands while each ran: the
# app blocks with it released), the loop gives each request of a turn an
# idle worker of its own instead of one worker and a chain of standbys,
# each woken only as the one before blocks (ext/server.c, dispatch: 64
# connections to an app that sleeps 10 ms had a p99 of 11.9 ms, 11.3 with
# each woken at once). Requests one at a time are never cut, and the share
# falls back below half within a few of them.
BLOCKS_APP = textwrap.dedent("""
    import sys
    import time

    import yimmo

    server = None


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/sleep":
            time.sleep(0.05)    # the GIL is released meanwhile
        body = repr(server._core.app_blocks).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]


    if __name__ == "__main__":
        server = yimmo.Server(app, bind="127.0.0.1:0", workers=8)
        print("port", server.address[1], flush=True)
        server.serve_forever()
""")


@skip_if_gil_off
def test_an_app_that_blocks_is_seen_to_and_one_that_does_not_is_not(
        tmp_path):
    (tmp_path / "blocks_app.py").write_text(BLOCKS_APP)
    with ServerProcess([sys.executable, "blocks_app.py"],
                       cwd=tmp_path) as server:
        m = server.wait_for_line(r"^port (\d+)$", "stdout", 20)
        addr = ("127.0.0.1", int(m.group(1)))
        one = connect(addr, 15)
        one.sendall(build_request("GET", "/"))
        assert read_response(one).body == b"False"
        socks = [connect(addr, 15) for _ in range(8)]
        for _ in range(4):
            for s in socks:
                s.sendall(build_request("GET", "/sleep"))
            for s in socks:
                assert read_response(s).status == 200
        one.sendall(build_request("GET", "/"))
        assert read_response(one).body == b"True"
        seen = []
        for _ in range(20):
            one.sendall(build_request("GET", "/"))
            seen.append(read_response(one).body)
        for s in socks + [one]:
            s.close()
        assert seen[-1] == b"False", seen

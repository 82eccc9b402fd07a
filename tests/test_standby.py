"""With the GIL, the requests the loop reads in one turn go to one worker,
and it wakes one idle peer at a time to stand by for the GIL (ext/server.c
dispatch, ext/wsgi_worker.c stand_by): the others must still run at once
when the app blocks (a query, a sleep) with the GIL released, rather than
wait behind it.

The server runs in a child process that is stopped (SIGSTOP) while the
requests are sent, so that its loop reads them all in one turn."""

import signal
import sys
import textwrap
import time

import pytest

from helpers import ServerProcess, build_request, connect, read_response

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
        server.signal(signal.SIGSTOP)
        try:
            for s in socks:
                s.sendall(build_request("GET", "/sleep"))
            time.sleep(0.2)
        finally:
            server.signal(signal.SIGCONT)
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
        server.signal(signal.SIGSTOP)
        try:
            for s in socks[1:]:
                s.sendall(build_request("GET", "/meet"))
            time.sleep(0.2)
        finally:
            server.signal(signal.SIGCONT)
        bodies = [read_response(s).body for s in socks[1:]]
        for s in socks:
            s.close()
        assert bodies == [b"met", b"met"], bodies

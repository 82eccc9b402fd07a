"""Free-threaded CPython (3.13t): the GIL stays off with yimmo imported and
serving, a waiting worker never blocks a stop-the-world pause (the GC) of
the others, and the objects an app's threads share with its worker
(wsgi.input, write(), start_response) stay consistent when those threads
really run at once.

The GIL test runs only on a free-threaded build; the others run on every
build (with the GIL they check the same contracts, less sharply). Servers
that could hang on a regression run in a subprocess, so that a hang is a
bounded failure."""

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest

from helpers import (ServerProcess, build_request, connect, get,
                     read_response, subprocess_env)

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
# A ThreadSanitizer build of CPython (.ci/tsan) runs Python several times
# slower: the GC-heavy app does less work there.
TSAN = "thread-sanitizer" in (sysconfig.get_config_var("CONFIG_ARGS") or "")


def serve_app(tmp_path, source, gil=None, **options):
    """A subprocess serving the WSGI app `app` defined by source; returns
    (process, (host, port)). PYTHON_GIL is removed from its environment
    (the interpreter's own default applies), or set to `gil`."""
    opts = "".join(", %s=%r" % kv for kv in options.items())
    script = tmp_path / "ftapp.py"
    script.write_text(textwrap.dedent(source) + textwrap.dedent('''
        import yimmo
        yimmo.serve(app, bind="127.0.0.1:0"%s)
    ''' % opts))
    env = subprocess_env()
    env.pop("PYTHON_GIL", None)
    if gil is not None:
        env["PYTHON_GIL"] = gil
    proc = ServerProcess([sys.executable, str(script)], env=env)
    return proc, proc.wait_listening()


def stop(proc):
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0, proc.stderr


# -- the GIL stays disabled ---------------------------------------------------

GIL_APP = '''
    import sys
    def app(environ, start_response):
        body = repr(sys._is_gil_enabled()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
'''


@pytest.mark.skipif(not FREE_THREADED,
                    reason="needs a free-threaded CPython (3.13t)")
def test_gil_stays_disabled_while_importing_and_serving(tmp_path):
    # Import alone: a module without Py_mod_gil = Py_MOD_GIL_NOT_USED would
    # turn the GIL on here (with a RuntimeWarning).
    env = subprocess_env()
    env.pop("PYTHON_GIL", None)
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         "import sys, yimmo, yimmo._yimmo; print(sys._is_gil_enabled())"],
        env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    # Serving: the app itself reports, from several workers.
    proc, addr = serve_app(tmp_path, GIL_APP, workers=4)
    with proc:
        for _ in range(8):
            resp = get(addr, "/")
            assert resp.status == 200
            assert resp.body == b"False"
        stop(proc)
    assert "GIL" not in proc.stderr


# -- the GIL back on at run time: the GIL's order ----------------------------

ORDER_APP = '''
    import os, sys, time
    DIR = %r
    started = []
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        started.append(path)
        name = path.strip("/")
        open(os.path.join(DIR, "started-" + name), "w").close()
        if name in ("a", "b"):
            # Hold this worker (sleeping: the GIL is released) until the
            # test opens the gate.
            deadline = time.monotonic() + 30
            while (not os.path.exists(os.path.join(DIR, "gate-" + name))
                   and time.monotonic() < deadline):
                time.sleep(0.01)
        body = ("%%d %%s" %% (started.index(path),
                              sys._is_gil_enabled())).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
'''


def check_gils_order(tmp_path, source, gil, warm_up=False):
    """Requests queued to two blocked workers (/a, /b) of ORDER_APP's kind
    run oldest first once /b's worker is free, each seeing the GIL on.
    With warm_up, first a request to each (idle) worker, so that both have
    started (and looked at the GIL) before /a."""
    def began(name):
        deadline = time.monotonic() + 15
        while not (tmp_path / ("started-" + name)).exists():
            assert time.monotonic() < deadline, name
            time.sleep(0.01)

    proc, addr = serve_app(tmp_path, source, gil=gil, workers=2,
                           max_pending=16)
    with proc:
        if warm_up:
            # Concurrent requests until both workers have answered one.
            workers = set()
            deadline = time.monotonic() + 15
            while len(workers) < 2:
                assert time.monotonic() < deadline, workers
                warm = [connect(addr) for _ in range(4)]
                for sock in warm:
                    sock.sendall(build_request("GET", "/warm"))
                for sock in warm:
                    workers.add(read_response(sock).body)
                    sock.close()
        socks = []
        try:
            for name in ("a", "b"):
                sock = connect(addr, timeout=30)
                sock.sendall(build_request("GET", "/" + name))
                socks.append(sock)
                began(name)
            # Queued behind the two busy workers, alternating between
            # their queues.
            later = ["/%d" % i for i in range(6)]
            for path in later:
                sock = connect(addr, timeout=30)
                sock.sendall(build_request("GET", path))
                socks.append(sock)
                time.sleep(0.05)
            (tmp_path / "gate-b").touch()   # one worker free: runs them all
            bodies = [read_response(sock).body for sock in socks[1:]]
            assert bodies[0] == b"1 True", bodies
            assert bodies[1:] == [b"%d True" % (2 + i)
                                  for i in range(len(later))], bodies
            (tmp_path / "gate-a").touch()
            assert read_response(socks[0]).body == b"0 True"
        finally:
            (tmp_path / "gate-a").touch()
            (tmp_path / "gate-b").touch()
            for sock in socks:
                sock.close()
        stop(proc)


@pytest.mark.skipif(not FREE_THREADED,
                    reason="needs a free-threaded CPython (3.13t)")
def test_gil_turned_on_at_run_time_restores_the_gils_order(tmp_path):
    # A free-threaded build with the GIL back on (PYTHON_GIL=1 here; an
    # extension module without Py_mod_gil does the same) runs one worker at
    # a time, like a GIL build, so the worker that holds the GIL must take
    # the oldest request queued to any worker (test_overload's
    # test_queued_requests_run_in_the_order_they_came), not its own queue
    # first: that let requests queued to a blocked worker wait behind
    # later ones.
    check_gils_order(tmp_path, ORDER_APP % str(tmp_path), "1")


# An extension module without Py_mod_gil, from CPython's own test modules
# (_testmultiphase's "null slots" variant declares no slot at all).
TURN_GIL_ON = '''
    import importlib.util, threading, warnings
    import _testmultiphase
    def turn_gil_on():
        spec = importlib.util.spec_from_file_location(
            "_testmultiphase_null_slots", _testmultiphase.__file__)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    _order_app = app
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/warm":
            body = str(threading.get_ident()).encode()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if environ["PATH_INFO"] == "/a":
            turn_gil_on()       # before /a's worker reports it started
        return _order_app(environ, start_response)
'''


def _has_testmultiphase():
    try:
        import _testmultiphase  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not FREE_THREADED,
                    reason="needs a free-threaded CPython (3.13t)")
@pytest.mark.skipif(not _has_testmultiphase(),
                    reason="needs CPython's _testmultiphase test module")
def test_gil_turned_on_by_a_request_restores_the_gils_order(tmp_path):
    # The GIL off at start, turned on by a request (/a) importing an
    # extension without Py_mod_gil while both workers are busy: when /b's
    # worker is free, it must already take the oldest request, not wait
    # for a run of exchanges to end (none does while requests are queued).
    check_gils_order(tmp_path, ORDER_APP % str(tmp_path) + TURN_GIL_ON,
                     None, warm_up=True)


# -- waiting workers are detached: the GC's stop-the-world goes on ------------

GC_APP = '''
    import gc, time
    class Node:
        def __init__(self, other=None):
            self.other = other
            self.pad = [object() for _ in range(4)]
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/wait":
            # Blocks in wsgi.input.read() until the client's body comes:
            # the worker waits on the loop, detached.
            body = environ["wsgi.input"].read()
        else:
            # GC-heavy: cycles and explicit collections (each a
            # stop-the-world pause on a free-threaded build).
            for _ in range(ROUNDS):
                a = Node()
                b = Node(a)
                a.other = b
                junk = [Node() for _ in range(2000)]
                del a, b, junk
                gc.collect()
            body = b"gc"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
'''


def test_gc_heavy_app_while_other_workers_wait(tmp_path):
    # 6 workers: 2 block reading a body that has not come yet, 2 or more
    # sit idle in their queue, 2 run gc.collect() in a loop. A waiting
    # worker that stayed attached would stall every collection (and so the
    # requests that collect) until its client sends.
    source = "ROUNDS = %d\n" % (3 if TSAN else 20) + textwrap.dedent(GC_APP)
    proc, addr = serve_app(tmp_path, source, workers=6)
    with proc:
        waiting = []
        for _ in range(2):
            s = connect(addr, timeout=30)
            s.sendall(b"POST /wait HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 5\r\n\r\n")
            waiting.append(s)
        time.sleep(0.3)          # the two requests are in the app now
        t0 = time.monotonic()
        socks = [connect(addr, timeout=30) for _ in range(8)]
        for s in socks:
            s.sendall(build_request("GET", "/gc"))
        for s in socks:
            resp = read_response(s)
            assert (resp.status, resp.body) == (200, b"gc")
            s.close()
        elapsed = time.monotonic() - t0
        # Unloaded, 8 such requests take well under a second on 2 cores;
        # the bound is loose for a shared machine, and far below "forever".
        assert elapsed < 20, elapsed
        for s in waiting:
            s.sendall(b"hello")
            resp = read_response(s)
            assert (resp.status, resp.body) == (200, b"hello")
            s.close()
        stop(proc)


# -- objects shared between the worker and the app's threads -----------------

TWO_READERS_APP = '''
    import threading
    def app(environ, start_response):
        stream = environ["wsgi.input"]
        chunks = []
        lock = threading.Lock()
        def reader():
            while True:
                data = stream.read(1000)
                if not data:
                    return
                with lock:
                    chunks.append(data)
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        body = b"".join(chunks)
        # What the readers got between them, in some order: its length,
        # and how often each byte value came (order-free).
        counts = [0] * 256
        for b in body:
            counts[b] += 1
        out = ("%d %s" % (len(body), ",".join(map(str, counts)))).encode()
        start_response("200 OK", [("Content-Length", str(len(out)))])
        return [out]
'''


def test_wsgi_input_read_from_several_threads_at_once(tmp_path):
    proc, addr = serve_app(tmp_path, TWO_READERS_APP, workers=2)
    with proc:
        payload = os.urandom(300 * 1024)
        want = collections.Counter(payload)
        for _ in range(3):
            with connect(addr, timeout=30) as s:
                s.sendall(build_request("POST", "/", body=payload))
                resp = read_response(s)
            assert resp.status == 200
            n, counts = resp.body.decode().split(" ")
            assert int(n) == len(payload)
            got = [int(c) for c in counts.split(",")]
            assert got == [want.get(i, 0) for i in range(256)]
        stop(proc)


WRITERS_APP = '''
    import threading
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        def writer(t):
            for i in range(200):
                write(b"<%d:%03d>" % (t, i))
        threads = [threading.Thread(target=writer, args=(t,))
                   for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [b"<end>"]
'''


def test_write_from_several_threads_at_once(tmp_path):
    proc, addr = serve_app(tmp_path, WRITERS_APP, workers=2)
    with proc:
        for _ in range(3):
            resp = get(addr, "/", timeout=30)
            assert resp.status == 200
            tokens = re.findall(rb"<[^<>]*>", resp.body)
            # Every write arrives whole, once, and nothing else.
            assert b"".join(tokens) == resp.body
            assert tokens[-1] == b"<end>"
            assert sorted(tokens[:-1]) == sorted(
                b"<%d:%03d>" % (t, i) for t in range(4) for i in range(200))
            # Each thread's writes keep their order.
            for t in range(4):
                mine = [x for x in tokens if x.startswith(b"<%d:" % t)]
                assert mine == [b"<%d:%03d>" % (t, i) for i in range(200)]
        stop(proc)


START_RESPONSE_RACE_APP = '''
    import threading
    def app(environ, start_response):
        results = []
        barrier = threading.Barrier(4)
        def call(i):
            barrier.wait()
            try:
                start_response("200 OK", [("Content-Length", "2"),
                                          ("X-Caller", str(i))])
                results.append(i)
            except RuntimeError:
                pass
        threads = [threading.Thread(target=call, args=(i,))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 1, results
        return [b"ok"]
'''


def test_start_response_from_several_threads_at_once(tmp_path):
    # Exactly one call wins; the others get "called again" errors.
    proc, addr = serve_app(tmp_path, START_RESPONSE_RACE_APP, workers=2)
    with proc:
        for _ in range(20):
            resp = get(addr, "/", timeout=30)
            assert (resp.status, resp.body) == (200, b"ok")
            # The winner's headers, whole: one X-Caller, one length.
            assert resp.headers.get_all("x-caller") in (
                ["0"], ["1"], ["2"], ["3"])
            assert resp.headers.get_all("content-length") == ["2"]
        stop(proc)


def test_stop_from_many_threads_while_serving(yimmo_server):
    """Server.stop() from several threads at once, with requests in
    flight: one clean stop, no error."""
    import threading

    def app(environ, start_response):
        time.sleep(0.05)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=4)
    addr = server.address
    socks = []
    for _ in range(4):
        s = socket.create_connection(addr, timeout=10)
        s.sendall(build_request("GET", "/"))
        socks.append(s)
    errors = []

    def stopper():
        try:
            server.stop(timeout=5)
        except Exception as exc:  # pragma: no cover - the failure shown
            errors.append(exc)

    threads = [threading.Thread(target=stopper) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert server.stopped
    for s in socks:
        s.close()


# -- an app that replaces sys._is_gil_enabled ---------------------------------

REPLACING_APP = '''
    import sys, threading
    class Answer:
        def __init__(self):
            self.pad = [None] * 8
        def __call__(self):
            return False
    def churn():
        # Each assignment frees the object the previous one stored (the
        # built-in first), while workers may be about to call it.
        while True:
            sys._is_gil_enabled = Answer()
            sys._is_gil_enabled = lambda: False
            del sys._is_gil_enabled
            junk = [bytearray(64) for _ in range(4)]
    threading.Thread(target=churn, daemon=True).start()
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
'''


@pytest.mark.skipif(not FREE_THREADED,
                    reason="needs a free-threaded CPython (3.13t)")
def test_app_replacing_sys_is_gil_enabled_does_not_crash_the_workers(
        tmp_path):
    # A worker that asks whether the GIL is on must hold its own reference
    # to what it calls: sys's entry may be replaced (and the old object
    # freed) by another thread at any moment when the GIL is off.
    import http.client
    import threading
    proc, addr = serve_app(tmp_path, REPLACING_APP, workers=4)
    with proc:
        answered = collections.Counter()
        deadline = time.monotonic() + 5

        def client():
            conn = None
            while time.monotonic() < deadline and proc.proc.poll() is None:
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(*addr, timeout=5)
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    answered[resp.read()] += 1
                except (OSError, http.client.HTTPException):
                    conn = None
                    time.sleep(0.01)
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert proc.proc.poll() is None, (proc.proc.poll(), answered,
                                          proc.stderr)
        assert answered[b"ok"] > 0, answered
        stop(proc)

"""Hostile clients and unusual apps against the order of close(): the
exchange ends once the response iterable's close() returned, its bytes
going out first (test_close_order.py). Written by a reviewer who tried to
break it; the defects that review found are in test_close_defects.py."""

import os
import signal
import sys
import threading
import time

import pytest

from helpers import (ServerProcess, build_request, connect, get,
                     read_response, read_until_close, subprocess_env,
                     wait_until)

from test_close_order import TEXT, WAIT, ok


class Body:
    """An iterable with a close() that runs `on_close` (counted)."""

    def __init__(self, pieces, on_close=None):
        self.pieces = pieces
        self.on_close = on_close
        self.closes = 0

    def __iter__(self):
        return iter(self.pieces)

    def close(self):
        self.closes += 1
        if self.on_close is not None:
            self.on_close()


def assert_still_serving(server):
    resp = get(server.address, "/ok")
    assert resp.status == 200, resp


@pytest.mark.parametrize("framing", ["length", "chunked", "head"])
def test_pipelined_requests_each_wait_for_the_previous_close(yimmo_server,
                                                              framing):
    events = []
    lock = threading.Lock()

    def log(what):
        with lock:
            events.append(what)

    def app(environ, start_response):
        n = environ["PATH_INFO"]
        log("request " + n)
        headers = list(TEXT)
        if framing != "chunked":
            headers.append(("Content-Length", "6"))
        start_response("200 OK", headers)

        def closing():
            time.sleep(0.1)
            log("closed " + n)
        return Body([b"ab", b"cd", b"ef"], closing)

    server = yimmo_server(app, workers=4)
    method = "HEAD" if framing == "head" else "GET"
    paths = ["/%d" % i for i in range(4)]
    with connect(server.address) as sock:
        sock.sendall(b"".join(build_request(method, p) for p in paths))
        for _ in paths:
            resp = read_response(sock, method=method)
            assert resp.status == 200
            assert resp.body == (b"" if method == "HEAD" else b"abcdef")
        # The last close() may still run; wait for it with the next one.
        sock.sendall(build_request("GET", "/last"))
        read_response(sock)
    expected = []
    for p in paths:
        expected += ["request " + p, "closed " + p]
    assert events[:len(expected)] == expected, events


def test_chunked_end_arrives_before_close_returns(yimmo_server):
    """The terminating chunk is out while close() still blocks."""
    release = threading.Event()
    bodies = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/gen":
            return ok(start_response)
        start_response("200 OK", TEXT)
        b = Body([b"one", b"two"], lambda: release.wait(WAIT))
        bodies.append(b)
        return b

    server = yimmo_server(app, workers=2)
    try:
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/gen"))
            resp = read_response(sock)
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            assert resp.body == b"onetwo"
            assert not release.is_set()
            release.set()
            sock.sendall(build_request("GET", "/ok"))
            assert read_response(sock).body == b"ok"
    finally:
        release.set()


def test_head_of_endless_generator_with_slow_close(yimmo_server):
    closed = []

    def endless(start_response):
        start_response("200 OK", TEXT)
        try:
            while True:
                yield b"x" * 100
        finally:
            time.sleep(0.2)
            closed.append(1)

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/stream":
            return ok(start_response)
        return endless(start_response)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("HEAD", "/stream") +
                     build_request("GET", "/ok"))
        resp = read_response(sock, method="HEAD")
        assert resp.status == 200 and resp.body == b""
        assert read_response(sock).body == b"ok"
        assert closed == [1]


def test_close_that_raises(yimmo_server, log_watcher):
    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] != "/boom":
            return ok(start_response)
        start_response("200 OK", TEXT + [("Content-Length", "4")])

        def boom():
            raise ValueError("close failed on purpose")
        return Body([b"body"], boom)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/boom") +
                     build_request("GET", "/ok"))
        assert read_response(sock).body == b"body"
        assert read_response(sock).body == b"ok"
    log_watcher.wait_for("close failed on purpose")
    assert seen == ["/boom", "/ok"]


def test_close_reads_the_rest_of_the_body(yimmo_server):
    """close() may read what the app left of the request body; the next
    request on the connection is not taken for body bytes."""
    got = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/upload":
            return ok(start_response)
        inp = environ["wsgi.input"]
        first = inp.read(3)
        start_response("200 OK", TEXT + [("Content-Length", "2")])

        def drain():
            got.append(first + inp.read())
        return Body([b"hi"], drain)

    server = yimmo_server(app, workers=2)
    body = b"0123456789" * 10
    with connect(server.address) as sock:
        sock.sendall(build_request("POST", "/upload", body=body) +
                     build_request("GET", "/ok"))
        assert read_response(sock).body == b"hi"
        assert read_response(sock).body == b"ok"
    assert got == [body]


def test_client_disconnects_while_close_runs(yimmo_server):
    in_close = threading.Event()
    release = threading.Event()
    bodies = []
    gone = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/slow":
            return ok(start_response)
        start_response("200 OK", TEXT + [("Content-Length", "4")])

        def closing():
            in_close.set()
            release.wait(WAIT)
            gone.append(environ["yimmo.client_gone"]())
        b = Body([b"data"], closing)
        bodies.append(b)
        return b

    server = yimmo_server(app, workers=1)
    try:
        sock = connect(server.address)
        sock.sendall(build_request("GET", "/slow") +
                     build_request("GET", "/ok"))
        assert read_response(sock).body == b"data"
        assert in_close.wait(WAIT)
        sock.close()
        time.sleep(0.2)
        release.set()
        assert_still_serving(server)
        assert [b.closes for b in bodies] == [1]
        assert gone == [True]
    finally:
        release.set()


def test_app_thread_write_during_close_does_not_reach_the_wire(
        yimmo_server):
    """A thread of the app writing after the response is complete (while
    close() runs): the client's bytes are exactly the response, and the
    next request on the connection is intact."""
    wrote = threading.Event()
    results = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/w":
            return ok(start_response)
        write = start_response("200 OK", TEXT)

        def writer():
            try:
                for _ in range(3):
                    write(b"late bytes")
                results.append("no error")
            except Exception as exc:
                results.append(type(exc).__name__)
            wrote.set()

        def closing():
            t = threading.Thread(target=writer)
            t.start()
            t.join(WAIT)
        return Body([b"early"], closing)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/w") + build_request("GET", "/ok"))
        resp = read_response(sock)
        assert resp.body == b"early"
        assert read_response(sock).body == b"ok"
    assert wrote.wait(WAIT)
    assert results and results[0] != "no error", results


def test_server_stop_while_close_runs(yimmo_server):
    in_close = threading.Event()
    bodies = []

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "4")])

        def closing():
            in_close.set()
            time.sleep(0.5)
        b = Body([b"data"], closing)
        bodies.append(b)
        return b

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"data"
        assert in_close.wait(WAIT)
        t0 = time.monotonic()
        server.stop(timeout=5)
        assert time.monotonic() - t0 < 4
        assert server.stopped
        # The connection closes, with nothing more on it.
        assert read_until_close(sock, timeout=WAIT) == b""
    assert [b.closes for b in bodies] == [1]


def test_server_stop_grace_shorter_than_close(yimmo_server):
    """The grace ends while close() runs: the worker is abandoned, and
    its done post after close() returns, on a stopped server, is
    harmless."""
    in_close = threading.Event()
    finished = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "4")])

        def closing():
            in_close.set()
            time.sleep(1.0)
            finished.set()
        return Body([b"data"], closing)

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"data"
        assert in_close.wait(WAIT)
        server.stop(timeout=0.1)
        assert finished.wait(WAIT)
        time.sleep(0.3)     # the worker's post after close()
    # Still alive (no crash) and a new server works.
    server2 = yimmo_server(lambda e, s: ok(s), workers=1)
    assert get(server2.address, "/").body == b"ok"


APP_SLOW_CLOSE = '''
import time

class Body:
    def __iter__(self):
        return iter([b"data"])
    def close(self):
        with open(%(marker)r, "a") as f:
            f.write("begin\\n")
        time.sleep(1.0)
        with open(%(marker)r, "a") as f:
            f.write("end\\n")

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "4")])
    return Body()
'''
APP_SLOWER_THAN_GRACE = APP_SLOW_CLOSE.replace("time.sleep(1.0)",
                                               "time.sleep(2.0)")


@pytest.mark.parametrize("grace", [None, 0.3])
def test_sigterm_while_close_runs(tmp_path, grace):
    """SIGTERM while close() runs: the connection closes and the process
    exits 0, with close() run to its end; with --graceful-timeout shorter
    than close(), the worker is abandoned, without a crash."""
    marker = str(tmp_path / "marker")
    app = APP_SLOW_CLOSE if grace is None else APP_SLOWER_THAN_GRACE
    (tmp_path / "slowclose.py").write_text(app % {"marker": marker})
    args = [sys.executable, "-m", "yimmo", "--bind", "127.0.0.1:0",
            "--workers", "2"]
    if grace is not None:
        args += ["--graceful-timeout", str(grace)]
    with ServerProcess(args + ["slowclose:app"], cwd=str(tmp_path),
                       env=subprocess_env(PYTHONPATH=str(tmp_path))) as proc:
        addr = proc.wait_listening()
        with connect(addr) as sock:
            sock.sendall(build_request("GET", "/"))
            assert read_response(sock).body == b"data"
            deadline = time.monotonic() + WAIT
            while not (os.path.exists(marker) and
                       "begin" in open(marker).read()):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            proc.signal(signal.SIGTERM)
            assert read_until_close(sock, timeout=WAIT) == b""
        assert proc.wait(WAIT) == 0, proc._describe()
        assert "Fatal" not in proc.stderr and "Segmentation" not in \
            proc.stderr, proc._describe()
    if grace is None:
        assert open(marker).read() == "begin\nend\n"


@pytest.mark.parametrize("framing", ["length", "chunked", "head"])
def test_close_overruns_timeout_then_returns(yimmo_server, log_watcher,
                                             framing):
    """close() stuck past --timeout (and past the watchdog's one second
    more, so a standby thread replaces the worker), then it returns: the
    late done post is refused quietly, the worker goes on serving."""
    release = threading.Event()
    bodies = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/stuck":
            return ok(start_response)
        headers = list(TEXT)
        if framing != "chunked":
            headers.append(("Content-Length", "8"))
        start_response("200 OK", headers)
        b = Body([b"comp", b"lete"], lambda: release.wait(WAIT))
        bodies.append(b)
        return b

    server = yimmo_server(app, workers=1, timeout=0.3)
    method = "HEAD" if framing == "head" else "GET"
    try:
        with connect(server.address) as sock:
            sock.sendall(build_request(method, "/stuck") +
                         build_request("GET", "/ok"))
            resp = read_response(sock, method=method)
            assert resp.body == (b"" if method == "HEAD" else b"complete")
            assert read_until_close(sock, timeout=WAIT) == b""
        log_watcher.wait_for("request timeout")
        time.sleep(1.5)
        assert_still_serving(server)
    finally:
        release.set()
    time.sleep(0.2)
    for _ in range(3):
        assert_still_serving(server)
    assert [b.closes for b in bodies] == [1]


def test_expect_continue_unread_body_slow_close(yimmo_server):
    """The app answers without reading a body the client waits to send
    (Expect: 100-continue); the client gets the response (Connection:
    close) and no 100, and the connection closes once close() returns."""
    closed = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/ok":
            return ok(start_response)
        start_response("403 Forbidden", TEXT + [("Content-Length", "2")])
        return Body([b"no"], lambda: (time.sleep(0.3), closed.append(1)))

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request(
            "PUT", "/", headers=[("Expect", "100-continue"),
                                 ("Content-Length", "100000")]))
        resp = read_response(sock)
        assert resp.status == 403 and resp.body == b"no"
        assert resp.headers.get("Connection") == "close"
        assert read_until_close(sock, timeout=WAIT) == b""
    wait_until(lambda: closed == [1])
    assert_still_serving(server)


def test_connection_close_request_slow_close(yimmo_server):
    closed = []

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "4")])
        return Body([b"data"], lambda: (time.sleep(0.2), closed.append(1)))

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/",
                                   headers=[("Connection", "close")]) +
                     build_request("GET", "/ignored"))
        resp = read_response(sock)
        assert resp.body == b"data"
        assert read_until_close(sock, timeout=WAIT) == b""
    wait_until(lambda: closed == [1])


def test_file_wrapper_with_slow_close(yimmo_server, tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(200000)
    path.write_bytes(data)
    events = []

    class Slow:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            return self.f.read(n)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            time.sleep(0.2)
            events.append("closed")
            self.f.close()

    def app(environ, start_response):
        events.append("request " + environ["PATH_INFO"])
        if environ["PATH_INFO"] != "/file":
            return ok(start_response)
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](Slow(open(str(path), "rb")))

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/file") +
                     build_request("GET", "/ok"))
        assert read_response(sock).body == data
        assert read_response(sock).body == b"ok"
    assert events == ["request /file", "closed", "request /ok"]


def test_cut_short_response_with_slow_close(yimmo_server):
    """Fewer bytes than Content-Length: the connection closes after them
    (once close() returned), and the pipelined request is not served on
    it."""
    seen = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/ok":
            return ok(start_response)
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", TEXT + [("Content-Length", "10")])
        return Body([b"short"], lambda: time.sleep(0.2))

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/cut") +
                     build_request("GET", "/next"))
        data = read_until_close(sock, timeout=WAIT)
    assert data.endswith(b"\r\n\r\nshort"), data
    assert seen == ["/cut"]
    assert_still_serving(server)


@pytest.mark.parametrize("workers", [1, 4])
def test_many_connections_with_slow_close(yimmo_server, workers):
    lock = threading.Lock()
    closes = []

    def app(environ, start_response):
        n = environ["PATH_INFO"]
        start_response("200 OK", TEXT + [("Content-Length",
                                          str(len(n)))])

        def closing():
            time.sleep(0.02)
            with lock:
                closes.append(n)
        return Body([n.encode()], closing)

    server = yimmo_server(app, workers=workers)
    errors = []

    def client(i):
        try:
            with connect(server.address, timeout=30) as sock:
                paths = ["/%d-%d" % (i, k) for k in range(3)]
                sock.sendall(b"".join(build_request("GET", p)
                                      for p in paths))
                for p in paths:
                    resp = read_response(sock)
                    assert resp.body == p.encode(), (p, resp)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    deadline = time.monotonic() + WAIT
    while len(closes) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(closes) == sorted("/%d-%d" % (i, k) for i in range(20)
                                    for k in range(3))


def test_close_property_that_raises(yimmo_server, log_watcher):
    class Bad:
        def __iter__(self):
            return iter([b"ok"])

        @property
        def close(self):
            raise RuntimeError("no close for you")

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "2")])
        return Bad()

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        for _ in range(3):
            sock.sendall(build_request("GET", "/"))
            assert read_response(sock).body == b"ok"
    log_watcher.wait_for("no close for you")


def test_half_close_after_pipelined_requests_behind_slow_close(
        yimmo_server):
    """The client sends two requests and shuts down its sending side
    (nc -N): both are answered, the second after the first's close(), and
    then the connection closes."""
    events = []

    def app(environ, start_response):
        events.append("request " + environ["PATH_INFO"])
        start_response("200 OK", TEXT + [("Content-Length", "2")])
        return Body([b"ok"], lambda: (time.sleep(0.2),
                                      events.append("closed")))

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/a") + build_request("GET", "/b"))
        sock.shutdown(1)    # SHUT_WR
        assert read_response(sock).body == b"ok"
        assert read_response(sock).body == b"ok"
        assert read_until_close(sock, timeout=WAIT) == b""
    assert events == ["request /a", "closed", "request /b", "closed"]


def test_disconnects_while_close_runs_leave_nothing_behind(yimmo_server):
    """Many clients that go away while close() runs: close() is called
    once each, and the iterables, environs and start_response objects are
    all freed (no reference kept by the held done post)."""
    import gc
    import weakref
    refs = []
    closes = []
    lock = threading.Lock()
    entered = threading.Semaphore(0)

    class Tracked(Body):
        pass

    class Marker:       # in the environ: freed with it
        pass

    def app(environ, start_response):
        marker = Marker()
        environ["test.marker"] = marker
        start_response("200 OK", TEXT + [("Content-Length", "4")])

        def closing():
            entered.release()
            time.sleep(0.15)
            with lock:
                closes.append(1)
        b = Tracked([b"data"], closing)
        with lock:
            refs.append(weakref.ref(b))
            refs.append(weakref.ref(marker))
        return b

    server = yimmo_server(app, workers=4)
    n = 12
    for _ in range(n):
        sock = connect(server.address)
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"data"
        assert entered.acquire(timeout=WAIT)
        sock.close()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        gc.collect()
        with lock:
            if len(closes) == n and all(r() is None for r in refs):
                break
        time.sleep(0.05)
    assert len(closes) == n
    assert len(refs) == 2 * n
    assert [r for r in refs if r() is not None] == []
    assert_still_serving(server)


def test_stop_while_close_runs_with_a_pipelined_request_behind(
        yimmo_server):
    """Stopping while close() runs with the client's next request already
    sent: the first response stays whole (no reset destroys it), and the
    connection ends without a second response or with a complete one."""
    in_close = threading.Event()
    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", TEXT + [("Content-Length", "4")])

        def closing():
            in_close.set()
            time.sleep(0.4)
        return Body([b"data"], closing)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/a") + build_request("GET", "/b"))
        assert read_response(sock).body == b"data"
        assert in_close.wait(WAIT)
        server.stop(timeout=5)
        rest = read_until_close(sock, timeout=WAIT)
    if rest == b"":
        assert seen == ["/a"], seen
    else:
        # Served in the stop's last call (/a promised keep-alive): whole,
        # and the last on the connection.
        assert seen == ["/a", "/b"], (seen, rest)
        head, _, body = rest.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), rest
        assert b"\r\nconnection: close" in head.lower(), rest
        assert body == b"data", rest





@pytest.mark.parametrize("chunk_size", [None, 7000])
def test_big_pipelined_upload_behind_slow_close(yimmo_server, chunk_size):
    """While close() runs the client goes on sending its next request, a
    body bigger than the read buffer: it arrives whole once close() has
    returned."""
    import hashlib
    body = os.urandom(300000)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/echo":
            data = environ["wsgi.input"].read()
            out = hashlib.sha256(data).hexdigest().encode()
            start_response("200 OK", TEXT + [("Content-Length",
                                              str(len(out)))])
            return [out]
        start_response("200 OK", TEXT + [("Content-Length", "4")])
        return Body([b"slow"], lambda: time.sleep(0.5))

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        data = build_request("GET", "/slow") + build_request(
            "POST", "/echo", body=body, chunk_size=chunk_size)
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        assert read_response(sock).body == b"slow"
        resp = read_response(sock)
        sender.join(WAIT)
        assert resp.body == hashlib.sha256(body).hexdigest().encode()

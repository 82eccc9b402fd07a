"""The response iterable's close() and the connection's next request: the
response's bytes go out before close() is called, the next request on
the same connection runs only once close() returned (other connections
do not wait), a connection that closes after the response does not wait
for close(), and a close() that overruns the request timeout has its
connection closed after the complete response."""

import sys
import threading
import time

import pytest

from helpers import (build_request, connect, get, read_response,
                     read_until_close)

TEXT = [("Content-Type", "text/plain")]
WAIT = 10


def ok(start_response, body=b"ok"):
    start_response("200 OK", TEXT + [("Content-Length", str(len(body)))])
    return [body]


class SlowClose:
    """An iterable whose close() takes `delay` seconds; it appends to
    `events` when close() begins and ends, and sets `began` as it
    begins."""

    def __init__(self, pieces, delay, events=None, began=None):
        self.pieces = pieces
        self.delay = delay
        self.events = events if events is not None else []
        self.began = began or threading.Event()

    def __iter__(self):
        return iter(self.pieces)

    def close(self):
        self.began.set()
        self.events.append(("close begins", time.monotonic()))
        time.sleep(self.delay)
        self.events.append(("close ends", time.monotonic()))


@pytest.mark.parametrize("framing", ["length", "chunked", "head"])
def test_next_request_on_a_connection_waits_for_close(yimmo_server,
                                                      framing):
    """The client has its response while close() still runs, and the next
    request on the same connection starts only after close() returned, as
    on servers that run a connection's requests one after another (what
    close() finishes, a session saved or a lock let go, is done before
    the client's next request runs). Other connections do not wait."""
    events = []
    delay = 0.4

    def app(environ, start_response):
        events.append(("request " + environ["PATH_INFO"], time.monotonic()))
        if environ["PATH_INFO"] != "/slow-close":
            return ok(start_response)
        headers = list(TEXT)
        if framing != "chunked":
            headers.append(("Content-Length", "6"))
        start_response("200 OK", headers)
        return SlowClose([b"abc", b"def"], delay, events=events)

    server = yimmo_server(app, workers=4)
    method = "HEAD" if framing == "head" else "GET"
    with connect(server.address) as sock, connect(server.address) as other:
        t0 = time.monotonic()
        sock.sendall(build_request(method, "/slow-close") +
                     build_request("GET", "/next"))
        resp = read_response(sock, method=method)
        got_first = time.monotonic() - t0
        assert resp.status == 200
        assert resp.body == (b"" if framing == "head" else b"abcdef")
        # Another connection is served while close() runs.
        other.sendall(build_request("GET", "/other"))
        assert read_response(other).body == b"ok"
        got_other = time.monotonic() - t0
        assert read_response(sock).body == b"ok"
    names = [name for name, _ in events]
    assert names.index("close ends") < names.index("request /next"), events
    assert names.index("request /other") < names.index("close ends"), events
    # The bytes did not wait for close(); neither did the other client.
    assert got_first < delay, got_first
    assert got_other < delay, got_other


def test_close_that_overruns_the_timeout_closes_a_complete_response(
        yimmo_server, log_watcher):
    """close() running past the request timeout: the client keeps the
    whole response it has, and the connection closes after it (its next
    request must not wait for an app that may never come back)."""
    release = threading.Event()

    class StuckClose:
        def __iter__(self):
            return iter([b"complete"])

        def close(self):
            release.wait(WAIT)      # one C call: RequestTimeout waits

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/stuck":
            return ok(start_response)
        start_response("200 OK", TEXT + [("Content-Length", "8")])
        return StuckClose()

    server = yimmo_server(app, workers=2, timeout=0.5)
    try:
        with connect(server.address) as sock:
            t0 = time.monotonic()
            sock.sendall(build_request("GET", "/stuck") +
                         build_request("GET", "/ok"))
            resp = read_response(sock)
            assert resp.status == 200 and resp.body == b"complete"
            assert time.monotonic() - t0 < 0.5
            # Closed, not reset, and not left waiting for close().
            assert sock.recv(100) == b""
            assert time.monotonic() - t0 < 0.5 + WAIT / 2
        log_watcher.wait_for("request timeout", "already complete")
    finally:
        release.set()
    assert get(server.address, "/ok").status == 200


class Closer:
    """A callable that outlives the request (one reference per
    `close` attribute that points to it)."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


class WithCloseAttr:
    """An iterable whose close is a plain instance attribute: looking it
    up returns the same object each time, so its reference count shows
    how many references yimmo took and gave back."""

    def __init__(self, pieces, closer):
        self.pieces = pieces
        self.close = closer

    def __iter__(self):
        return iter(self.pieces)


def test_close_reference_released_once(yimmo_server):
    """yimmo takes a reference to close while the exchange holds its end
    for it, and gives back exactly that one (one too many was released,
    a use after free for a bound method such as a generator's close)."""
    closer = Closer()
    keep = [closer] * 20        # so that the lost references free nothing
    n = 5

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/close":
            return ok(start_response)
        start_response("200 OK", TEXT + [("Content-Length", "2")])
        return WithCloseAttr([b"hi"], closer)

    server = yimmo_server(app, workers=1)
    before = sys.getrefcount(closer)
    with connect(server.address) as sock:
        for _ in range(n):
            sock.sendall(build_request("GET", "/close"))
            assert read_response(sock).body == b"hi"
        # The next request on the connection runs after close() returned
        # and the exchange ended: the references are settled by then.
        sock.sendall(build_request("GET", "/ok"))
        assert read_response(sock).body == b"ok"
    assert closer.calls == n
    after = sys.getrefcount(closer)
    del keep
    assert after == before, (before, after)


def test_close_delimited_response_does_not_wait_for_close(yimmo_server):
    """An HTTP/1.0 request with a streamed body (no Content-Length): the
    end of the body is the connection's close, and there is no next
    request to hold back, so the close does not wait for close()."""
    delay = 3.0

    def app(environ, start_response):
        start_response("200 OK", TEXT)
        return SlowClose([b"abc", b"def"], delay)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        t0 = time.monotonic()
        sock.sendall(build_request("GET", "/", version="HTTP/1.0"))
        data = read_until_close(sock, timeout=WAIT)
        took = time.monotonic() - t0
    assert data.endswith(b"\r\n\r\nabcdef"), data
    assert took < delay / 2, took


def test_connection_close_response_closes_without_waiting_for_close(
        yimmo_server):
    """The same with "Connection: close" from the client (HTTP/1.1,
    Content-Length): no next request, no wait."""
    delay = 3.0

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "6")])
        return SlowClose([b"abc", b"def"], delay)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        t0 = time.monotonic()
        sock.sendall(build_request("GET", "/",
                                   headers=[("Connection", "close")]))
        data = read_until_close(sock, timeout=WAIT)
        took = time.monotonic() - t0
    assert data.endswith(b"\r\n\r\nabcdef"), data
    assert took < delay / 2, took


def test_write_from_close_is_refused_as_before(yimmo_server):
    """write() once the response is complete (here from close(); a thread
    of the app is the same) raises RuntimeError("write() after the
    response has finished"), whether or not the exchange has ended: its
    bytes are never silently dropped."""
    seen = []
    holder = {}

    class WritesInClose:
        def __iter__(self):
            return iter([b"abc"])

        def close(self):
            for _ in range(2):
                try:
                    holder["write"](b"late")
                    seen.append(None)
                except Exception as e:     # noqa: BLE001
                    seen.append(type(e).__name__)

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/w":
            return ok(start_response)
        holder["write"] = start_response("200 OK", TEXT)  # chunked
        return WritesInClose()

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/w"))
        assert read_response(sock).body == b"abc"
        sock.sendall(build_request("GET", "/ok"))
        assert read_response(sock).body == b"ok"
    assert seen == ["RuntimeError", "RuntimeError"], seen


def test_graceful_stop_waits_for_close_then_closes(yimmo_server):
    began = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "6")])
        return SlowClose([b"abc", b"def"], 1.0, began=began)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"abcdef"
        assert began.wait(5)
        t0 = time.monotonic()
        server.stop(timeout=5)
        took = time.monotonic() - t0
        assert server.stopped
        assert read_until_close(sock, timeout=5) == b""
    assert 0.5 < took < 4, took


def test_keepalive_timer_starts_after_close(yimmo_server):
    """close() longer than keepalive_timeout: the connection is not
    closed under it, and the next request is served."""
    began = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "6")])
        return SlowClose([b"abc", b"def"], 1.5, began=began)

    server = yimmo_server(app, workers=2, keepalive_timeout=0.5,
                          write_timeout=0.5)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"abcdef"
        time.sleep(1.0)  # past keepalive/write timeouts, inside close()
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"abcdef"


def test_body_read_in_close_fails_at_once_after_the_response(yimmo_server):
    """Once the response is complete, wsgi.input returns what had arrived
    and then raises, in close() too (README): an Expect: 100-continue
    client waiting for its 100 gets none after the final response, and
    close() does not wait for a body that will not come."""
    results = []

    class ReadsInClose:
        def __init__(self, environ):
            self.environ = environ

        def __iter__(self):
            return iter([b"no"])

        def close(self):
            t0 = time.monotonic()
            try:
                results.append(("read", self.environ["wsgi.input"].read()))
            except OSError as e:
                results.append(("OSError", str(e)))
            results.append(time.monotonic() - t0)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/ok":
            return ok(start_response)
        start_response("403 Forbidden", TEXT + [("Content-Length", "2")])
        return ReadsInClose(environ)

    server = yimmo_server(app, workers=2, body_timeout=5)
    with connect(server.address) as sock:
        sock.sendall(build_request(
            "PUT", "/", headers=[("Expect", "100-continue"),
                                 ("Content-Length", "100000")]))
        resp = read_response(sock)
        assert resp.status == 403 and resp.body == b"no"
        rest = read_until_close(sock, timeout=WAIT, require_close=False)
        assert b"100 Continue" not in rest, rest
    deadline = time.monotonic() + WAIT
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert results and results[0][0] == "OSError", results
    assert results[1] < 2, results

"""Defects a hostile review found in the first version of the order of
close() (518eca2: the done post waits for the iterable's close()); each
failed on it."""

import sys
import threading

from helpers import (build_request, connect, read_response, read_until_close,
                     wait_until)

from test_close_order import TEXT, WAIT


def test_close_method_reference_is_not_stolen(yimmo_server):
    """ymo_wsgi_run_exchange drops the reference lookup_close returned
    twice: close_result already does Py_DECREF(close), and the caller does
    it again. A close that is a shared object (a staticmethod, a builtin or
    functools.partial as a class attribute, an instance attribute) loses
    one reference per request until it is freed while still in use
    (use-after-free; a fresh bound method is freed twice)."""
    calls = []

    def on_close():
        calls.append(1)

    class Body:
        close = staticmethod(on_close)   # getattr gives on_close itself

        def __iter__(self):
            return iter([b"ok"])

    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "2")])
        return Body()

    # Enough references that the stolen ones do not free it (that
    # crashes the interpreter: a segfault on the third request here).
    keep = [on_close] * 100
    server = yimmo_server(app, workers=1)
    before = sys.getrefcount(on_close)
    n = 5
    with connect(server.address) as sock:
        for _ in range(n):
            sock.sendall(build_request("GET", "/"))
            assert read_response(sock).body == b"ok"
    assert len(calls) == n
    # The response's end is posted after close(), but the worker may still
    # be finishing its last exchange (a free-threaded CI run saw 105 for
    # 103 right after the last response): stolen references stay missing
    # and leaked ones stay extra, so wait (bounded) for the count to settle.
    try:
        wait_until(lambda: sys.getrefcount(on_close) == before, timeout=5,
                   what="the references to close() back to their count")
    except AssertionError:
        pass
    after = sys.getrefcount(on_close)
    assert after == before, (before, after)
    del keep


class ClosingBody:
    def __init__(self, pieces, on_close):
        self.pieces = pieces
        self.on_close = on_close

    def __iter__(self):
        return iter(self.pieces)

    def close(self):
        self.on_close()


def test_write_during_close_raises_like_after_the_end(yimmo_server):
    """write() once the response is complete raises RuntimeError (as it
    does for a list body, test_zerocopy's
    test_app_thread_write_after_the_end_gives_the_bytes_back). From inside
    close() (or from an app thread while close() runs), 518eca2 returns
    None for the first write(): the bytes are dropped silently (post()
    refuses them after emit() counted them), and only a second write()
    raises, ClientDisconnected though the client is still there."""
    results = []

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/w":
            start_response("200 OK", TEXT + [("Content-Length", "2")])
            return [b"ok"]
        write = start_response("200 OK", TEXT)      # chunked

        def closing():
            for _ in range(2):
                try:
                    write(b"late")
                    results.append(None)
                except Exception as exc:
                    results.append(type(exc).__name__)
        return ClosingBody([b"early"], closing)

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/w") + build_request("GET", "/ok"))
        assert read_response(sock).body == b"early"
        assert read_response(sock).body == b"ok"
    assert results == ["RuntimeError", "RuntimeError"], results


def test_close_delimited_body_ends_while_close_runs(yimmo_server):
    """README: "the client has the whole response while close() runs".
    An HTTP/1.0 request with a streamed body (no Content-Length) has its
    end told by the close of the connection, and 518eca2 closes it only
    after close() returned (the DONE_CLOSE is held with the done post):
    such a client waits for close(), up to --timeout. The connection
    closes anyway, so there is no next request to hold back."""
    release = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", TEXT)              # no Content-Length
        return ClosingBody([b"abc", b"def"], lambda: release.wait(WAIT))

    server = yimmo_server(app, workers=2)
    try:
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/", version="HTTP/1.0"))
            data = read_until_close(sock, timeout=3)
            assert data.endswith(b"\r\n\r\nabcdef"), data
    finally:
        release.set()


def test_access_log_counts_only_bytes_sent(yimmo_server, tmp_path):
    """The access log's %(B)s is the body bytes sent. A write() refused
    while close() runs is counted anyway on 518eca2 (emit() adds to
    body_sent before post() refuses the chain)."""
    import time
    from yimmo import _logging
    path = str(tmp_path / "access.log")

    def app(environ, start_response):
        write = start_response("200 OK", TEXT)      # chunked

        def closing():
            try:
                write(b"late bytes")
            except Exception:
                pass
        return ClosingBody([b"early"], closing)

    _logging.configure_access_log(path)
    try:
        server = yimmo_server(app, workers=1, access_log=path,
                              access_log_format="%(B)s")
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/"))
            assert read_response(sock).body == b"early"
        deadline = time.monotonic() + WAIT
        lines = []
        while not lines and time.monotonic() < deadline:
            with open(path) as f:
                lines = f.read().split()
            time.sleep(0.02)
    finally:
        _logging.configure_access_log(None)
    assert lines == ["5"], lines

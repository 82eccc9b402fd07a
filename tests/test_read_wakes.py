"""wsgi.input reads that wait in C until they have what they asked for
(ymo_exchange_read, ex->in_want): several threads of the app reading one
body at once, in lines and in reads of every size around the low-water
mark, with the body arriving slowly, chunked or not, with Expect:
100-continue; none may sleep through the bytes it waits for."""

import json
import random
import socket
import threading
import time

import pytest

from helpers import build_request, chunked, connect, read_response
from test_body_direct import _body

WAIT = 20
KB = 1024


def many_readers_app(environ, start_response):
    inp = environ["wsgi.input"]
    sizes = [1, 7, 1000, 16 * KB + 1, 128 * KB - 1, 128 * KB + 1,
             200 * KB, 300 * KB]
    counts = [0] * 4
    errors = []

    def reader(k):
        rng = random.Random(k)
        try:
            while True:
                if k % 2 == 0:
                    piece = inp.readline(rng.choice([-1, 5, 100000]))
                else:
                    piece = inp.read(rng.choice(sizes))
                if not piece:
                    return
                counts[k] += len(piece)
        except Exception as e:      # reported to the client
            errors.append(repr(e))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    body = json.dumps({"total": sum(counts), "errors": errors,
                       "alive": sum(t.is_alive() for t in threads)}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("kind", ["length", "chunked", "continue"])
@pytest.mark.parametrize("size", [5, 130 * KB, 700 * KB])
def test_several_threads_read_a_slow_body(yimmo_server, kind, size):
    server = yimmo_server(many_readers_app, workers=1, buffer_body=0)
    body = _body(size, size)
    if kind == "chunked":
        payload = chunked(body, chunk_size=3000)
        head = (b"POST / HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        payload = body
        extra = [("Expect", "100-continue")] if kind == "continue" else []
        head = build_request("POST", "/", headers=extra,
                             body=body)[:-len(body)]
    rng = random.Random(size)
    deadline = time.monotonic() + WAIT
    with connect(server.address, WAIT) as sock:
        sock.sendall(head)
        if kind == "continue":
            got = b""
            while b"\r\n\r\n" not in got:
                got += sock.recv(100)
            assert got.startswith(b"HTTP/1.1 100"), got
        pos = 0
        while pos < len(payload):
            step = rng.choice([1, 100, 5000, 40 * KB, 140 * KB])
            sock.sendall(payload[pos:pos + step])
            pos += step
            if rng.random() < 0.2:
                time.sleep(0.005)
        resp = read_response(sock)
    assert time.monotonic() < deadline
    got = json.loads(resp.body)
    assert got == {"total": size, "errors": [], "alive": 0}, got


def test_watchdog_ends_a_read_waiting_for_a_trickling_body(yimmo_server,
                                                          log_watcher):
    # The body trickles in faster than min_body_rate (so the loop never
    # fails it), and read(n) waits in C for all n: the watchdog's cut
    # must wake it, so the worker leaves the app (its RequestTimeout
    # lands) and is not declared stuck.
    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=1, buffer_body=0, timeout=1,
                          min_body_rate=100)
    size = 200 * KB
    head = build_request("POST", "/", body=b"x" * size)[:-size]
    t0 = time.monotonic()
    with connect(server.address, WAIT) as sock:
        sock.sendall(head)
        status = None
        sent = 0
        sock.settimeout(0.05)
        while time.monotonic() - t0 < 6 and sent < size:
            sock.sendall(b"x" * 1000)
            sent += 1000
            try:
                data = sock.recv(100)
            except socket.timeout:      # (TimeoutError only from 3.10)
                continue
            status = data[:12]
            break
    elapsed = time.monotonic() - t0
    assert status == b"HTTP/1.1 503", (status, elapsed)
    assert elapsed < 3, elapsed
    time.sleep(1.5)                 # past the watchdog's STUCK_AFTER
    msgs = list(log_watcher.texts)
    assert not [m for m in msgs if "is still in" in m], msgs
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).status == 200


def test_a_read_waiting_when_another_thread_ends_the_response(yimmo_server):
    # A background thread waits in read(n) for bytes that never come;
    # the app answers meanwhile: the read returns what it had, then
    # raises, at once.
    result = []
    started = threading.Event()

    def app(environ, start_response):
        inp = environ["wsgi.input"]

        def bg():
            started.set()
            t0 = time.monotonic()
            try:
                result.append(("data", len(inp.read(100 * KB))))
                result.append(("data", len(inp.read(100 * KB))))
            except OSError as e:
                result.append(("error", str(e)[:20]))
            result.append(("took", time.monotonic() - t0))

        threading.Thread(target=bg, daemon=True).start()
        started.wait(WAIT)
        time.sleep(0.2)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=1, buffer_body=0)
    head = build_request("POST", "/", body=b"y" * (200 * KB))[:-(200 * KB)]
    with connect(server.address, WAIT) as sock:
        sock.sendall(head + b"y" * 5000)
        resp = read_response(sock)
    assert resp.status == 200
    # The thread ends with "took" (after one "data" or none, and an
    # "error"): wait for that, not for a count of entries.
    deadline = time.monotonic() + WAIT
    while not (result and result[-1][0] == "took") and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    assert result and result[-1][0] == "took" and result[-1][1] < 2, result

"""Hostile clients and unusual apps against request bodies read straight
into the exchange (a review's probes of the direct upload path): odd read
styles, exact bucket sizes, half-close, resets, slowloris, a refused
100-continue, many uploads with one worker."""

import hashlib
import json
import socket
import struct
import threading
import time

import pytest

from helpers import (build_request, connect, read_response,
                     read_until_close)

KB = 1024
MB = 1024 * 1024
WAIT = 20


def h(d):
    return hashlib.sha256(d).hexdigest()


def app(environ, start_response):
    p = environ["PATH_INFO"]
    inp = environ["wsgi.input"]
    n = int(environ.get("CONTENT_LENGTH") or 0)
    if p == "/readline":
        parts = []
        while True:
            line = inp.readline()
            if not line:
                break
            parts.append(line)
        data = b"".join(parts)
    elif p == "/readline-limit":
        parts = []
        while True:
            line = inp.readline(7)
            if not line:
                break
            parts.append(line)
        data = b"".join(parts)
    elif p == "/read0":
        assert inp.read(0) == b""
        data = inp.read(-1)
        assert inp.read(0) == b""
        assert inp.read(10) == b""
        assert inp.read() == b""
        assert inp.readline() == b""
    elif p == "/pastend":
        data = inp.read(n + 100000)
        assert inp.read(5) == b""
    elif p == "/thread":
        out = []

        def rd():
            out.append(inp.read())
        t = threading.Thread(target=rd)
        t.start()
        t.join(WAIT)
        data = out[0]
    elif p == "/twothreads":
        chunks = []
        lock = threading.Lock()

        def rd(tag):
            while True:
                c = inp.read(4096)
                if not c:
                    return
                with lock:
                    chunks.append(c)
        ts = [threading.Thread(target=rd, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT)
        data = b"x" * sum(len(c) for c in chunks)
        body = json.dumps({"length": len(data)}).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    elif p == "/noread-big":
        start_response("200 OK", [("Content-Length", str(4 * MB))])
        return [b"z" * (4 * MB)]
    elif p == "/noread":
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    elif p == "/slowread":
        parts = []
        while True:
            c = inp.read(1000)
            if not c:
                break
            parts.append(c)
            time.sleep(0.0005)
        data = b"".join(parts)
    else:
        data = inp.read()
    body = json.dumps({"length": len(data), "sha": h(data)}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def expect(resp, data):
    assert resp.status == 200, resp
    assert json.loads(resp.body) == {"length": len(data), "sha": h(data)}


def body(n, nl=True):
    import random
    b = bytearray(random.Random(n).randbytes(n))
    if not nl:
        b = b.replace(b"\n", b"a")
    return bytes(b)


@pytest.mark.parametrize("path", ["/readline", "/readline-limit", "/read0",
                                  "/pastend", "/thread", "/slowread"])
@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 300 * KB,
                                  2 * MB])
@pytest.mark.parametrize("nl", [True, False])
def test_app_read_modes(yimmo_server, path, size, nl):
    if path == "/readline-limit" and size > 300 * KB:
        pytest.skip("slow")
    s = yimmo_server(app, workers=2)
    data = body(size, nl)
    with connect(s.address, WAIT) as sock:
        sock.sendall(build_request("POST", path, body=data) +
                     build_request("POST", "/", body=b"abc"))
        expect(read_response(sock), data)
        expect(read_response(sock), b"abc")


@pytest.mark.parametrize("size", [65536, 65537, 300 * KB, 2 * MB])
def test_two_threads_read(yimmo_server, size):
    s = yimmo_server(app, workers=2)
    data = body(size)
    with connect(s.address, WAIT) as sock:
        sock.sendall(build_request("POST", "/twothreads", body=data))
        r = read_response(sock)
        assert json.loads(r.body) == {"length": size}


@pytest.mark.parametrize("size", [100 * KB, 3 * MB])
def test_half_close_after_body(yimmo_server, size):
    s = yimmo_server(app, workers=2)
    data = body(size)
    with connect(s.address, WAIT) as sock:
        sock.sendall(build_request("POST", "/slowread", body=data))
        sock.shutdown(socket.SHUT_WR)
        expect(read_response(sock), data)


def test_extra_bytes_after_body_are_next_request(yimmo_server):
    s = yimmo_server(app, workers=2)
    data = body(200 * KB)
    with connect(s.address, WAIT) as sock:
        sock.sendall(build_request("POST", "/", body=data) + b"GARBAGE\r\n\r\n")
        expect(read_response(sock), data)
        r = read_response(sock)
        assert r.status == 400


@pytest.mark.parametrize("size", [200 * KB, 3 * MB])
def test_reset_mid_body_then_server_fine(yimmo_server, size):
    s = yimmo_server(app, workers=1, body_timeout=3)
    data = body(size)
    for i in range(20):
        sock = connect(s.address, WAIT)
        sock.sendall(build_request("POST", "/slowread", body=data)[:size // 2 + i * 997])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
        sock.close()
    with connect(s.address, WAIT) as sock:
        sock.sendall(build_request("POST", "/", body=data))
        expect(read_response(sock), data)


@pytest.mark.parametrize("path", ["/noread", "/noread-big"])
@pytest.mark.parametrize("size", [10, 64 * KB, 300 * KB, 5 * MB])
def test_app_never_reads(yimmo_server, path, size):
    s = yimmo_server(app, workers=2)
    data = body(size)
    with connect(s.address, WAIT) as sock:
        # send in a thread: the server may stop reading
        req = build_request("POST", path, body=data) + build_request(
            "POST", "/", body=b"abc")

        def send():
            try:
                sock.sendall(req)
            except OSError:
                pass
        t = threading.Thread(target=send)
        t.start()
        r = read_response(sock)
        assert r.status == 200
        if r.headers.get("connection", "").lower() == "close":
            read_until_close(sock, WAIT)
        else:
            expect(read_response(sock), b"abc")
        t.join(WAIT)


def test_many_concurrent_uploads_one_worker(yimmo_server):
    s = yimmo_server(app, workers=1, max_pending=2, queue_timeout=30)
    datas = [body(n) for n in (70 * KB, 1 * MB, 300 * KB, 64 * KB, 2 * MB,
                               5, 65537, 400 * KB)] * 4
    results = [None] * len(datas)

    def one(i):
        try:
            with connect(s.address, WAIT * 2) as sock:
                sock.sendall(build_request("POST", "/slowread" if i % 3 == 0
                                           else "/", body=datas[i]))
                r = read_response(sock)
                if r.status == 200:
                    results[i] = json.loads(r.body) == {
                        "length": len(datas[i]), "sha": h(datas[i])}
                else:
                    results[i] = r.status
        except Exception as e:
            results[i] = repr(e)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(datas))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT * 3)
    assert all(r is True or r == 503 for r in results), results


@pytest.mark.parametrize("size", [1, 65536, 65537, 200 * KB])
def test_expect_continue(yimmo_server, size):
    s = yimmo_server(app, workers=2, buffer_body=0)
    data = body(size)
    req = build_request("POST", "/", headers=[("Expect", "100-continue")],
                        body=data)
    head, rest = req[:-len(data)], data
    with connect(s.address, WAIT) as sock:
        sock.sendall(head)
        r = read_response(sock)
        assert r.status == 100
        sock.sendall(rest)
        expect(read_response(sock), data)


def test_http10(yimmo_server):
    s = yimmo_server(app, workers=2)
    data = body(300 * KB)
    req = (b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(data)) + data
    with connect(s.address, WAIT) as sock:
        sock.sendall(req)
        out = read_until_close(sock, WAIT)
    assert b'"length": %d' % len(data) in out


def test_slowloris_body_then_timeout(yimmo_server):
    s = yimmo_server(app, workers=2, body_timeout=1)
    with connect(s.address, WAIT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nab")
        for i in range(3):
            time.sleep(0.3)
            sock.sendall(b"c")
        t0 = time.monotonic()
        out = read_until_close(sock, WAIT)
        assert time.monotonic() - t0 < 5
    # Either a 408 or just a close; the app got an error.
    assert out == b"" or out.startswith(b"HTTP/1.1 ")


@pytest.mark.parametrize("size", [65536, 65536 * 2, 65537, 70000])
def test_exact_bucket_sizes_separate_head(yimmo_server, size):
    s = yimmo_server(app, workers=2)
    data = body(size)
    req = build_request("POST", "/slowread", body=data)
    head = req[:-size]
    with connect(s.address, WAIT) as sock:
        sock.sendall(head)
        time.sleep(0.05)
        sock.sendall(data)
        sock.sendall(build_request("POST", "/", body=b"q"))
        expect(read_response(sock), data)
        expect(read_response(sock), b"q")


def test_interleaved_small_writes_concurrent_reader(yimmo_server):
    # The loop commits into the same bucket the worker is reading from.
    import random
    s = yimmo_server(app, workers=4)
    rng = random.Random(5)
    errors = []

    def one(k):
        try:
            data = body(150 * KB + k)
            req = build_request("POST", "/readline" if k % 2 else "/slowread",
                                body=data)
            with connect(s.address, WAIT) as sock:
                pos = 0
                while pos < len(req):
                    step = rng.choice([1, 7, 300, 4096, 20000])
                    sock.sendall(req[pos:pos + step])
                    pos += step
                    if rng.random() < 0.01:
                        time.sleep(0.001)
                r = read_response(sock)
                if json.loads(r.body) != {"length": len(data), "sha": h(data)}:
                    errors.append((k, r.body))
        except Exception as e:
            errors.append((k, repr(e)))
    ts = [threading.Thread(target=one, args=(k,)) for k in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors


def test_watchdog_while_reading_body(yimmo_server):
    def slowapp(environ, start_response):
        inp = environ["wsgi.input"]
        try:
            while inp.read(1000):
                time.sleep(0.01)
        except Exception:
            pass
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    s = yimmo_server(slowapp, workers=1, timeout=1)
    data = body(3 * MB)
    with connect(s.address, WAIT) as sock:
        def send():
            try:
                sock.sendall(build_request("POST", "/", body=data))
            except OSError:
                pass
        t = threading.Thread(target=send)
        t.start()
        out = read_until_close(sock, WAIT, require_close=False)
        t.join(WAIT)
    assert out.startswith(b"HTTP/1.1 503") or out == b"", out[:200]
    with connect(s.address, WAIT) as sock:
        sock.sendall(build_request("POST", "/", body=b"abc"))
        r = read_response(sock)
        assert r.status == 200


def test_reader_thread_outlives_response(yimmo_server):
    # A thread of the app goes on reading wsgi.input after the response is
    # complete, while the loop is still receiving the body into the tail.
    results = []
    started = threading.Event()

    def bgapp(environ, start_response):
        inp = environ["wsgi.input"]

        def rd():
            got = 0
            started.set()
            try:
                while True:
                    c = inp.read(777)
                    if not c:
                        break
                    got += len(c)
                results.append(("eof", got))
            except Exception as e:
                results.append((type(e).__name__, got))
        threading.Thread(target=rd, daemon=True).start()
        started.wait(5)
        start_response("200 OK", [("Content-Length", "2"),
                                  ("Connection", "close")])
        return [b"ok"]
    s = yimmo_server(bgapp, workers=2)
    for i in range(20):
        data = body(500 * KB + i)
        with connect(s.address, WAIT) as sock:
            req = build_request("POST", "/", body=data)
            pos = 0
            try:
                while pos < len(req):
                    sock.sendall(req[pos:pos + 3000])
                    pos += 3000
            except OSError:
                pass
            read_until_close(sock, WAIT, require_close=False)
    # Every reader has finished within 0.5 s of the last response.
    deadline = time.monotonic() + 0.5
    while len(results) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) == 20, results


def test_stalled_connections_do_not_spin(yimmo_server):
    # The app holds the only worker until the measurement is over; then
    # every request waiting for room is answered at once (a fixed sleep
    # per request made the test wait 21 of them one after the other).
    measured = threading.Event()

    def sleepy(environ, start_response):
        environ["wsgi.input"].read()
        measured.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    s = yimmo_server(sleepy, workers=1, max_pending=0, queue_timeout=30)
    first = connect(s.address, WAIT)
    first.sendall(build_request("POST", "/", body=b"a" * 100))
    time.sleep(0.2)
    socks = [connect(s.address, WAIT) for _ in range(20)]
    for k in socks:
        k.sendall(build_request("POST", "/", body=b"b" * 100))
    time.sleep(0.1)
    for k in socks:    # more bytes while they wait for room
        k.sendall(build_request("POST", "/", body=b"c" * 5000) * 3)
    c0 = time.process_time()
    time.sleep(1.0)
    used = time.process_time() - c0
    measured.set()
    assert read_response(first).status == 200
    for k in socks:
        assert read_response(k).status == 200
    for k in socks + [first]:
        k.close()
    assert used < 0.3, used


@pytest.mark.parametrize("size", [10, 65536, 65537, 300 * KB])
@pytest.mark.parametrize("bb", [0, 65536])
def test_expect_app_refuses_then_client_sends_anyway(yimmo_server, size, bb):
    s = yimmo_server(app, workers=2, buffer_body=bb)
    data = body(size)
    req = build_request("POST", "/noread", headers=[("Expect", "100-continue")],
                        body=data)
    head = req[:-len(data)]
    with connect(s.address, WAIT) as sock:
        sock.sendall(head)
        r = read_response(sock)
        if r.status == 100:
            sock.sendall(data + build_request("POST", "/", body=b"zz"))
            r = read_response(sock)
            assert r.status == 200 and r.body == b"ok"
            expect(read_response(sock), b"zz")
            return
        assert r.status == 200 and r.body == b"ok"
        try:
            sock.sendall(data + build_request("POST", "/", body=b"zz"))
        except OSError:
            return
        if r.headers.get("connection", "").lower() == "close":
            read_until_close(sock, WAIT, require_close=False)
        else:
            # the body must not be taken for a request
            r2 = read_response(sock)
            assert r2.status in (200, 400), r2
            if r2.status == 200:
                expect(r2, b"zz")

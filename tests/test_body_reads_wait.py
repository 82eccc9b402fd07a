"""Hostile clients and unusual apps against a wsgi.input read that waits in
C for all its bytes (a read wakes per low-water mark's worth, not per
packet): trickles, stalls one byte short, timeouts, stop, disconnects,
two reader threads, long lines split across packets, 100-continue,
keep-alive after the body."""

import hashlib
import json
import socket
import threading
import time

import pytest

from helpers import build_request, chunked, connect, read_response

KB = 1024
WAIT = 15


def _body(n, seed=1):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d-%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:n])


def _head(method, body_len, headers=()):
    req = build_request(method, "/", headers=list(headers),
                        body=b"x" * body_len)
    return req[:-body_len] if body_len else req


def reader_app(environ, start_response):
    inp = environ["wsgi.input"]
    n = int(environ.get("CONTENT_LENGTH") or -1)
    # A failed read raises out of the app: the server answers for it.
    data = inp.read(n) if n >= 0 else inp.read()
    body = json.dumps({"len": len(data),
                       "sha": hashlib.sha256(data).hexdigest()}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def test_trickle_one_byte_per_50ms_gets_every_byte(yimmo_server):
    s = yimmo_server(reader_app, workers=1, min_body_rate=0,
                     body_timeout=5, buffer_body=0)
    body = _body(40)
    with connect(s.address, WAIT) as sock:
        sock.sendall(_head("POST", len(body)))
        for i in range(len(body)):
            sock.sendall(body[i:i + 1])
            time.sleep(0.05)
        r = read_response(sock)
    got = json.loads(r.body)
    assert got == {"len": 40, "sha": hashlib.sha256(body).hexdigest()}


def test_chunked_trickle_unbounded_read(yimmo_server):
    s = yimmo_server(reader_app, workers=1, min_body_rate=0,
                     body_timeout=5, buffer_body=0)
    body = _body(3000)
    wire = chunked(body, chunk_size=7, trailers=b"X-T: 1\r\n")
    head = build_request("POST", "/", headers=[
        ("Transfer-Encoding", "chunked")])
    with connect(s.address, WAIT) as sock:
        sock.sendall(head)
        for i in range(0, len(wire), 97):
            sock.sendall(wire[i:i + 97])
            time.sleep(0.005)
        r = read_response(sock)
    assert json.loads(r.body)["sha"] == hashlib.sha256(body).hexdigest()


def test_body_one_byte_short_gets_408_on_time(yimmo_server):
    # The reader waits for 128 KB, the client stops one byte short.
    s = yimmo_server(reader_app, workers=1, min_body_rate=0,
                     body_timeout=1, buffer_body=0)
    n = 300 * KB
    body = _body(n)
    with connect(s.address, WAIT) as sock:
        sock.sendall(_head("POST", n))
        sock.sendall(body[:-1])
        t = time.monotonic()
        r = read_response(sock)
        took = time.monotonic() - t
    assert r.status == 408, r
    assert took < 3, took


def test_request_timeout_while_blocked_in_read(yimmo_server):
    s = yimmo_server(reader_app, workers=1, timeout=1, min_body_rate=0,
                     body_timeout=30, buffer_body=0)
    n = 300 * KB
    with connect(s.address, WAIT) as sock:
        sock.sendall(_head("POST", n))
        sock.sendall(_body(100 * KB))
        t = time.monotonic()
        r = read_response(sock)
        took = time.monotonic() - t
    assert r.status == 503
    assert took < 3, took
    # The worker is free again.
    with connect(s.address, WAIT) as sock:
        body = _body(200 * KB)
        sock.sendall(_head("POST", len(body)) + body)
        assert read_response(sock).status == 200


def test_client_gone_mid_body_frees_the_worker(yimmo_server):
    s = yimmo_server(reader_app, workers=1, min_body_rate=0,
                     body_timeout=30, buffer_body=0)
    sock = connect(s.address, WAIT)
    sock.sendall(_head("POST", 500 * KB))
    sock.sendall(_body(50 * KB))
    time.sleep(0.2)
    sock.close()
    t = time.monotonic()
    with connect(s.address, WAIT) as sock:
        body = _body(10 * KB)
        sock.sendall(_head("POST", len(body)) + body)
        assert read_response(sock).status == 200
    assert time.monotonic() - t < 3


def test_stop_while_reader_waits(yimmo_server):
    started = threading.Event()

    def app(environ, start_response):
        started.set()
        return reader_app(environ, start_response)

    s = yimmo_server(app, workers=1, min_body_rate=0, body_timeout=30,
                     buffer_body=0)
    with connect(s.address, WAIT) as sock:
        sock.sendall(_head("POST", 500 * KB))
        sock.sendall(_body(50 * KB))
        assert started.wait(5)
        time.sleep(0.2)
        t = time.monotonic()
        s.stop(timeout=2)
        assert time.monotonic() - t < 5
        assert s.stopped


def test_two_threads_read_one_input_trickled(yimmo_server):
    def app(environ, start_response):
        inp = environ["wsgi.input"]
        parts = [[], []]

        def rd(k):
            while True:
                b = inp.read(200 * KB if k == 0 else 3000)
                if not b:
                    break
                parts[k].append(b)

        ts = [threading.Thread(target=rd, args=(k,)) for k in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        total = sum(len(b) for p in parts for b in p)
        body = json.dumps({"total": total,
                           "alive": any(t.is_alive() for t in ts)}).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    s = yimmo_server(app, workers=1, min_body_rate=0, body_timeout=10,
                     buffer_body=0)
    n = 700 * KB
    body = _body(n)
    with connect(s.address, WAIT + 10) as sock:
        sock.sendall(_head("POST", n))
        for i in range(0, n, 7 * KB):
            sock.sendall(body[i:i + 7 * KB])
            time.sleep(0.001)
        r = read_response(sock)
    assert json.loads(r.body) == {"total": n, "alive": False}


def test_readline_long_lines_split_across_packets(yimmo_server):
    def app(environ, start_response):
        inp = environ["wsgi.input"]
        lines = []
        while True:
            ln = inp.readline()
            if not ln:
                break
            lines.append(len(ln))
        body = json.dumps(lines).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    s = yimmo_server(app, workers=1, min_body_rate=0, body_timeout=5,
                     buffer_body=0)
    lines = [b"a" * 300 * KB + b"\n", b"b\n", b"\n", b"c" * 70000 + b"\n",
             b"tail-without-newline"]
    body = b"".join(lines)
    with connect(s.address, WAIT) as sock:
        sock.sendall(_head("POST", len(body)))
        for i in range(0, len(body), 4093):
            sock.sendall(body[i:i + 4093])
        r = read_response(sock)
    assert json.loads(r.body) == [len(x) for x in lines]


def test_expect_continue_big_body_then_keepalive_pipelined(yimmo_server):
    s = yimmo_server(reader_app, workers=1, min_body_rate=0, body_timeout=5)
    n = 600 * KB
    body = _body(n)
    with connect(s.address, WAIT) as sock:
        sock.sendall(_head("POST", n, [("Expect", "100-continue")]))
        sock.settimeout(5)
        got = sock.recv(100)
        assert got.startswith(b"HTTP/1.1 100"), got
        small = _body(1000, 2)
        # The body, then a pipelined request right behind it.
        sock.sendall(body + _head("POST", len(small)) + small)
        r1 = read_response(sock)
        r2 = read_response(sock)
    assert json.loads(r1.body)["sha"] == hashlib.sha256(body).hexdigest()
    assert json.loads(r2.body)["sha"] == hashlib.sha256(small).hexdigest()


@pytest.mark.parametrize("round_", range(8))
def test_line_reader_and_big_reader_share_one_input(yimmo_server, round_):
    # One thread reads lines (woken per byte), one reads 200 KB at a time
    # (woken per low-water mark): the fewest-bytes-wanted bookkeeping of
    # the two must never leave either asleep with its bytes there.
    def app(environ, start_response):
        inp = environ["wsgi.input"]
        counts = [0, 0]

        def rd(k):
            while True:
                b = inp.readline() if k == 0 else inp.read(200 * KB)
                if not b:
                    break
                counts[k] += len(b)

        ts = [threading.Thread(target=rd, args=(k,)) for k in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        body = json.dumps({"total": sum(counts),
                           "alive": any(t.is_alive() for t in ts)}).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    s = yimmo_server(app, workers=1, min_body_rate=0, body_timeout=10,
                     buffer_body=0)
    n = 900 * KB
    body = (b"0123456789" * 50 + b"\n") * (n // 501) + b"z" * (n % 501)
    chunk = 5 * KB + 3 * round_
    with connect(s.address, WAIT + 10) as sock:
        sock.sendall(_head("POST", n))
        for i in range(0, n, chunk):
            sock.sendall(body[i:i + chunk])
            if i % (64 * KB) < chunk:
                time.sleep(0.002)
        r = read_response(sock)
    assert json.loads(r.body) == {"total": n, "alive": False}


def test_echo_while_reading_with_output_back_pressure(yimmo_server):
    # Full duplex: the app echoes each 64 KB it reads (its writes block
    # while the client is slow to read), the client sends the whole body
    # and reads the echo on another thread, slowly at first.
    def app(environ, start_response):
        inp = environ["wsgi.input"]
        start_response("200 OK", [("Content-Length",
                                   environ["CONTENT_LENGTH"])])

        def gen():
            while True:
                b = inp.read(64 * KB)
                if not b:
                    return
                yield b
        return gen()

    s = yimmo_server(app, workers=1, min_body_rate=0, body_timeout=10,
                     buffer_body=0)
    n = 3 * 1024 * KB
    body = _body(n, 3)
    got = bytearray()
    with connect(s.address, WAIT + 10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KB)

        def recv():
            time.sleep(0.5)
            while True:
                b = sock.recv(65536)
                if not b:
                    return
                got.extend(b)
                if len(got) >= n + 100 and b"\r\n\r\n" in got:
                    head = got.index(b"\r\n\r\n") + 4
                    if len(got) - head >= n:
                        return

        t = threading.Thread(target=recv)
        t.start()
        sock.sendall(_head("POST", n) + body)
        t.join(WAIT)
        assert not t.is_alive()
    head = got.index(b"\r\n\r\n") + 4
    assert got.startswith(b"HTTP/1.1 200")
    assert bytes(got[head:]) == body


def test_waiting_reader_under_max_pending_overload(yimmo_server):
    # One worker waits in read() for a slow upload while more requests
    # queue (max_pending) and stall behind it; once the upload ends every
    # one of them is answered.
    s = yimmo_server(reader_app, workers=1, max_pending=1, min_body_rate=0,
                     body_timeout=10, buffer_body=0, queue_timeout=10)
    n = 400 * KB
    body = _body(n)
    up = connect(s.address, WAIT)
    up.sendall(_head("POST", n) + body[:100 * KB])
    time.sleep(0.2)
    others = []
    for k in range(3):
        small = _body(5000, k + 10)
        c = connect(s.address, WAIT)
        c.sendall(_head("POST", len(small)) + small)
        others.append((c, small))
    time.sleep(0.3)
    for i in range(100 * KB, n, 50 * KB):
        up.sendall(body[i:i + 50 * KB])
        time.sleep(0.05)
    r = read_response(up)
    assert json.loads(r.body)["sha"] == hashlib.sha256(body).hexdigest()
    up.close()
    for c, small in others:
        r = read_response(c)
        c.close()
        assert r.status in (200, 503), r
        if r.status == 200:
            assert json.loads(r.body)["sha"] == \
                hashlib.sha256(small).hexdigest()


def test_request_timeout_while_blocked_in_chunked_readline(yimmo_server):
    def app(environ, start_response):
        line = environ["wsgi.input"].readline()
        start_response("200 OK", [("Content-Length", str(len(line)))])
        return [line]

    s = yimmo_server(app, workers=1, timeout=1, min_body_rate=0,
                     body_timeout=30, buffer_body=0)
    head = build_request("POST", "/", headers=[
        ("Transfer-Encoding", "chunked")])
    with connect(s.address, WAIT) as sock:
        sock.sendall(head + b"10000\r\n" + b"q" * 40000)
        t = time.monotonic()
        r = read_response(sock)
        took = time.monotonic() - t
    assert r.status == 503
    assert took < 3, took

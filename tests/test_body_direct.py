"""Content-Length bodies read straight into the exchange's input (one copy,
into the app's bytes): every size around the buffers' edges, in odd
splits, with a request pipelined right behind the body, read every way
wsgi.input reads; slow clients, clients that leave mid-body, apps that
read only part of the body."""

import ctypes
import hashlib
import json
import random
import socket
import sys
import threading
import time

import pytest

from helpers import (build_request, connect, read_response,
                     read_until_close, skip_under_asan)
from test_idle_connections import has_mallinfo2


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost")]

WAIT = 30
KB = 1024
MB = 1024 * 1024

# Around the input buckets (16 KB copied, 64 KB received into), the
# loop's read buffer (64 KB), --buffer-body (64 KB) and the input high
# water (256 KB).
SIZES = [0, 1, 2, 16 * KB - 1, 16 * KB, 16 * KB + 1, 64 * KB - 1, 64 * KB,
         64 * KB + 1, 256 * KB - 1, 256 * KB, 256 * KB + 1, MB, 10 * MB]


def _read_all(inp, mode, length):
    if mode == "read":
        return inp.read()
    if mode == "read-length":
        return inp.read(length)
    if mode == "read-n":
        parts = []
        n = 1
        while True:
            piece = inp.read(n)
            if not piece:
                return b"".join(parts)
            parts.append(piece)
            n = n * 3 + 1 if n < 70000 else 7   # odd sizes, small and big
    if mode == "readline":
        parts = []
        while True:
            line = inp.readline()
            if not line:
                return b"".join(parts)
            parts.append(line)
    if mode == "iter":
        return b"".join(inp)
    raise AssertionError(mode)


def digest_app(environ, start_response):
    mode = environ["PATH_INFO"].strip("/") or "read"
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if mode == "hello":
        body = b"hello"
    else:
        data = _read_all(environ["wsgi.input"], mode, length)
        body = json.dumps({"length": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()
                           }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _body(size, seed):
    rng = random.Random(seed)
    # Line breaks now and then, so that readline returns many lines.
    data = bytearray(rng.randbytes(size))
    for i in range(0, size, 997):
        data[i] = 10
    return bytes(data)


def _expect(data):
    return {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _send_split(sock, data, rng, byte_at_a_time):
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        step = 1 if byte_at_a_time else rng.choice(
            [1, 3, 1000, 16 * KB - 1, 64 * KB + 1, 300000])
        sock.sendall(view[pos:pos + step])
        pos += step


@pytest.mark.parametrize("size", SIZES)
def test_body_then_pipelined_request(yimmo_server, size):
    server = yimmo_server(digest_app, workers=2)
    body = _body(size, size)
    data = (build_request("POST", "/read-n", body=body)
            + build_request("GET", "/hello"))
    with connect(server.address, WAIT) as sock:
        # Byte at a time for the small ones (bodies around the 16 KB
        # bucket included); odd splits that straddle the body's end for
        # the others; whole for the biggest.
        if size > 10 * KB:
            sock.sendall(data)
        else:
            _send_split(sock, data, random.Random(size), size <= 20 * KB)
        first, second = read_response(sock), read_response(sock)
    assert first.status == 200
    assert json.loads(first.body) == _expect(body)
    assert (second.status, second.body) == (200, b"hello")


@pytest.mark.parametrize("size", [1, 16 * KB + 1, 64 * KB + 1, MB + 3])
@pytest.mark.parametrize("mode", ["read", "read-length", "read-n",
                                  "readline", "iter"])
@pytest.mark.parametrize("buffer_body", [0, 65536])
def test_every_way_of_reading(yimmo_server, size, mode, buffer_body):
    server = yimmo_server(digest_app, workers=2, buffer_body=buffer_body)
    body = _body(size, size + 1)
    rng = random.Random(size)
    data = (build_request("POST", "/" + mode, body=body)
            + build_request("POST", "/" + mode, body=body[:5])
            + build_request("GET", "/hello"))
    with connect(server.address, WAIT) as sock:
        _send_split(sock, data, rng, False)
        r1, r2, r3 = (read_response(sock), read_response(sock),
                      read_response(sock))
    assert json.loads(r1.body) == _expect(body)
    assert json.loads(r2.body) == _expect(body[:5])
    assert (r3.status, r3.body) == (200, b"hello")


def test_several_bodies_back_to_back_on_one_connection(yimmo_server):
    server = yimmo_server(digest_app, workers=2)
    bodies = [_body(n, n) for n in (MB, 0, 70000, 5, 300000)]
    data = b"".join(build_request("POST", "/read", body=b) for b in bodies)
    with connect(server.address, WAIT) as sock:
        _send_split(sock, data, random.Random(7), False)
        for b in bodies:
            assert json.loads(read_response(sock).body) == _expect(b)


def test_body_sent_slowly(yimmo_server):
    server = yimmo_server(digest_app, workers=2)
    body = _body(300 * KB, 3)
    head = build_request("POST", "/read-n", body=body)[:-len(body)]
    with connect(server.address, WAIT) as sock:
        sock.sendall(head)
        for i in range(0, len(body), 20 * KB):
            time.sleep(0.01)
            sock.sendall(body[i:i + 20 * KB])
        sock.sendall(build_request("GET", "/hello"))
        first, second = read_response(sock), read_response(sock)
    assert json.loads(first.body) == _expect(body)
    assert second.body == b"hello"


def test_client_leaves_mid_body(yimmo_server):
    seen = []
    done = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/hello":
            return digest_app(environ, start_response)
        got = 0
        try:
            while True:
                piece = environ["wsgi.input"].read(65536)
                if not piece:
                    break
                got += len(piece)
        except Exception as e:      # the client went away
            seen.append(("error", got, type(e).__name__))
        else:
            seen.append(("eof", got))
        finally:
            done.set()
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    server = yimmo_server(app, workers=2)
    body = b"x" * (2 * MB)
    head = build_request("POST", "/up", body=body)[:-len(body)]
    sock = connect(server.address, WAIT)
    sock.sendall(head + body[:MB // 2 + 17])
    time.sleep(0.2)
    sock.close()
    assert done.wait(WAIT)
    assert seen[0][0] == "error" and seen[0][1] <= MB // 2 + 17, seen
    # The server goes on.
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/hello"))
        assert read_response(sock).body == b"hello"


@pytest.mark.parametrize("size", [100, 64 * KB + 1, MB])
def test_app_reads_part_of_the_body(yimmo_server, size):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/hello":
            return digest_app(environ, start_response)
        part = environ["wsgi.input"].read(10)
        start_response("200 OK", [("Content-Length", str(len(part)))])
        return [part]

    server = yimmo_server(app, workers=2)
    body = _body(size, 11)
    data = build_request("POST", "/part", body=body) + build_request(
        "GET", "/hello")
    with connect(server.address, WAIT) as sock:
        sock.sendall(data)
        first = read_response(sock)
        assert (first.status, first.body) == (200, body[:10])
        # The rest of the body is not taken for a request: either it was
        # all in and the pipelined request is answered, or the server said
        # it closes, and does.
        if first.headers.get("connection", "").lower() == "close":
            read_until_close(sock)
        else:
            assert read_response(sock).body == b"hello"


# The body bytes that arrive in one read with the head: 16 KB or more of
# them, with nothing after, and the loop's read buffer becomes the
# exchange's first input bucket (no copy); the rest of the body may then
# be received into the room left in it.
@pytest.mark.parametrize("first", [16 * KB - 1, 16 * KB, 16 * KB + 1,
                                   30 * KB, "fill"])
@pytest.mark.parametrize("rest", [0, 1, 30 * KB, MB])
@pytest.mark.parametrize("buffer_body", [0, 65536])
def test_body_that_came_with_the_head(yimmo_server, first, rest,
                                      buffer_body):
    server = yimmo_server(digest_app, workers=2, buffer_body=buffer_body)
    if first == "fill":
        # Head and body fill the buffer (64 KB) exactly.
        first = 64 * KB
        for _ in range(3):
            n = first + rest
            head_len = len(build_request("POST", "/read-n", body=b"x" * n)) - n
            first = 64 * KB - head_len
    body = _body(first + rest, first + rest)
    data = build_request("POST", "/read-n", body=body)
    cut = len(data) - rest
    with connect(server.address, WAIT) as sock:
        sock.sendall(data[:cut])
        if rest:
            time.sleep(0.05)            # its own read
            sock.sendall(data[cut:])
        assert json.loads(read_response(sock).body) == _expect(body)
        # The connection goes on.
        sock.sendall(build_request("GET", "/hello"))
        assert read_response(sock).body == b"hello"


@skip_under_asan
@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    not has_mallinfo2(), reason="needs glibc's mallinfo2")
@pytest.mark.parametrize("buffer_body", [0, 16 * KB])
def test_a_waiting_upload_holds_no_more_than_its_body(yimmo_server,
                                                      buffer_body):
    # A body that came whole with its head becomes the exchange's input
    # as the loop's 64 KB read buffer; while the request waits for a
    # worker that buffer must not stay 64 KB (300 waiting 16-20 KB
    # uploads held 65 KB each, against 17-21 KB when copied).
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2

    def in_use():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd

    gate = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/block":
            gate.wait(WAIT)
        else:
            environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    size, n = 20000, 200
    server = yimmo_server(app, workers=1, buffer_body=buffer_body,
                          max_pending=400)
    blocker = connect(server.address, WAIT)
    socks = []
    try:
        blocker.sendall(build_request("GET", "/block"))
        time.sleep(0.2)
        req = build_request("POST", "/x", body=b"x" * size)
        before = in_use()
        for i in range(n):
            s = connect(server.address, WAIT)
            s.sendall(req)
            socks.append(s)
        # Until the loop has read every one (each a head and its body).
        deadline = time.monotonic() + WAIT
        while in_use() - before < n * size and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        per_request = (in_use() - before) / n
        assert per_request < size + 16 * KB, per_request
    finally:
        gate.set()
        for s in socks:
            s.close()
        blocker.close()


def _switches():
    with open("/proc/thread-self/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_a_big_read_sleeps_per_low_water_mark_not_per_packet(yimmo_server):
    # read(n) on a body that arrives 16 KB at a time: the worker sleeps
    # until a low-water mark's worth (128 KB) is there, not once per read
    # of the socket (it was woken, and went back to the app for more,
    # 64 times for this 1 MB).
    def app(environ, start_response):
        length = int(environ["CONTENT_LENGTH"])
        before = _switches()
        data = environ["wsgi.input"].read(length)
        body = json.dumps({"switches": _switches() - before,
                           "length": len(data)}).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = yimmo_server(app, workers=1)
    body = _body(MB, 5)
    head = build_request("POST", "/", body=body)[:-len(body)]
    with connect(server.address, WAIT) as sock:
        sock.sendall(head)
        time.sleep(0.05)            # the app is waiting in read()
        for i in range(0, len(body), 16 * KB):
            sock.sendall(body[i:i + 16 * KB])
            time.sleep(0.003)
        got = json.loads(read_response(sock).body)
    assert got["length"] == MB
    # 13-16 here; 89-95 before (one wake per packet, and the GIL again).
    assert got["switches"] <= 32, got

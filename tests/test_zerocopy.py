"""Big response bytes are sent from the app's own objects, not copied
(ext/bucket.h, reference buckets): the body is still exact in every
framing, and every reference the server takes is given back once the loop
has written the bytes, after a disconnect, and at shutdown, with the
server idle (nobody else's request needed to release them)."""

import socket
import struct
import sys
import threading
import time

import pytest

from helpers import (build_request, connect, read_response,
                     read_until_close, reader_for)

WAIT = 10
BIG = 64 * 1024        # well above the server's 8 KB threshold


def pattern(n, seed):
    """n bytes that differ from position to position and from seed to
    seed, so a misplaced or repeated piece shows."""
    unit = bytes((seed * 31 + i * 7) & 0xFF for i in range(251))
    return (unit * (n // len(unit) + 1))[:n]


def refs(obj):
    return sys.getrefcount(obj)


def wait_refs(obj, expected, timeout=WAIT):
    """Wait until obj has `expected` references (as sys.getrefcount
    counts them from here); return the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        n = sys.getrefcount(obj)
        if n == expected or time.monotonic() > deadline:
            return n
        time.sleep(0.01)


def test_list_of_big_items_with_content_length(yimmo_server):
    items = [pattern(16 * 1024, i) for i in range(4)]
    body = b"".join(items)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return items

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        for _ in range(3):
            sock.sendall(build_request("GET", "/"))
            resp = read_response(sock)
            assert resp.status == 200
            assert resp.body == body


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_generator_of_big_and_small_items(yimmo_server, version):
    """Chunked (1.1) or close-delimited (1.0): small items copied, big ones
    referenced, in the order given."""
    sizes = [10, BIG, 1, 8 * 1024, 8 * 1024 - 1, 300 * 1024, 5, BIG]
    items = [pattern(n, i) for i, n in enumerate(sizes)]

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/x")])
        return iter(items)

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(("GET / HTTP/%s\r\nHost: x\r\n\r\n" % version).encode())
        if version == "1.1":
            resp = read_response(sock)
            assert resp.headers.get("Transfer-Encoding") == "chunked"
        else:
            resp = read_response(sock)
        assert resp.body == b"".join(items)


def test_write_callable_with_big_bytes(yimmo_server):
    parts = [pattern(BIG, 1), b"tail", pattern(200 * 1024, 2)]

    def app(environ, start_response):
        write = start_response("200 OK", [])
        for p in parts:
            write(p)
        return []

    server = yimmo_server(app, workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"".join(parts)


def test_content_length_shorter_than_a_big_item(yimmo_server):
    big = pattern(BIG, 3)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "20000")])
        return [big, big]

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock)
        assert resp.body == big[:20000]
    assert wait_refs(big, refs(big)) == refs(big)


def test_head_of_a_big_body(yimmo_server):
    big = pattern(BIG, 4)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [big]

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("HEAD", "/"))
        resp = read_response(sock, method="HEAD")
        assert resp.headers.get("Content-Length") == str(BIG)
        assert resp.body == b""
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == big


def test_bytes_subclass_is_sent_right(yimmo_server):
    class Tagged(bytes):
        pass

    big = Tagged(pattern(BIG, 5))

    def app(environ, start_response):
        start_response("200 OK", [])
        return [big]

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == bytes(big)


def test_pipelined_big_responses(yimmo_server):
    bodies = {"/%d" % i: pattern(BIG + i * 1000, i) for i in range(8)}

    def app(environ, start_response):
        start_response("200 OK", [])
        return [bodies[environ["PATH_INFO"]]]

    server = yimmo_server(app, workers=4)
    with connect(server.address) as sock:
        sock.sendall(b"".join(build_request("GET", p) for p in bodies))
        reader = reader_for(sock)
        for path, body in bodies.items():
            assert reader.read_response().body == body


def test_references_are_given_back_with_the_server_idle(yimmo_server):
    """A 200 KB body is below the back-pressure mark: the worker posts it
    and is done, often before the loop has written it and freed its
    bucket. The bytes are released although no request follows (the
    loop wakes a worker for them). Without that wake this fails in most
    rounds."""
    current = {}

    def app(environ, start_response):
        start_response("200 OK", [])
        return [current["big"]]

    server = yimmo_server(app, workers=2)
    for i in range(5):
        big = pattern(200 * 1024, 6 + i)
        base = refs(big)
        current["big"] = big
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/"))
            time.sleep(0.2)             # the worker is idle by now
            del current["big"]
            assert read_response(sock).body == big
            assert wait_refs(big, base) == base


def test_references_are_given_back_after_a_late_read(yimmo_server):
    """The loop finishes writing long after the worker's last post (the
    client reads late); nothing is kept once it has read."""
    big = pattern(16 * 1024 * 1024, 13)     # more than the socket buffers
    base = refs(big)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [big, big]

    server = yimmo_server(app, workers=3)
    with connect(server.address, 30) as sock:
        for _ in range(2):
            sock.sendall(build_request("GET", "/"))
            time.sleep(0.3)
            assert read_response(sock).body == big * 2
            assert wait_refs(big, base) == base


def test_a_slow_reader_holds_the_bytes_not_a_copy(yimmo_server):
    """While the client has not read the response the server holds a
    reference (the proof that it is not a copy); once read, none."""
    big = pattern(32 * 1024 * 1024, 7)      # more than the socket buffers
    base = refs(big)
    answered = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(big)))])
        answered.set()
        return [big]

    server = yimmo_server(app, workers=1)
    with connect(server.address, 30) as sock:
        sock.sendall(build_request("GET", "/"))
        assert answered.wait(WAIT)
        time.sleep(0.3)
        assert refs(big) > base        # in flight, by reference
        resp = read_response(sock)
        assert resp.body == big
    assert wait_refs(big, base) == base


def test_disconnect_mid_response_gives_the_bytes_back(yimmo_server):
    big = pattern(4 * 1024 * 1024, 8)
    base = refs(big)
    answered = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [])
        answered.set()
        return [big, big]

    server = yimmo_server(app, workers=1)
    sock = connect(server.address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(build_request("GET", "/"))
    assert answered.wait(WAIT)
    sock.recv(1000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()                        # a reset
    assert wait_refs(big, base) == base
    # And the server goes on serving.
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert len(read_response(sock).body) == 2 * len(big)
    assert wait_refs(big, base) == base


def test_stop_with_a_response_in_flight_gives_the_bytes_back(yimmo_server):
    big = pattern(32 * 1024 * 1024, 9)
    base = refs(big)
    answered = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [])
        answered.set()
        return [big]

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert answered.wait(WAIT)
        time.sleep(0.2)
        assert refs(big) > base
        server.stop(timeout=0.2)
        assert server.stopped
        read_until_close(sock, require_close=False)
    assert wait_refs(big, base) == base


def test_two_servers_in_one_process(yimmo_server):
    """Each server has its own release list and gives back its own."""
    big_a = pattern(BIG, 10)
    big_b = pattern(BIG, 11)
    base_a, base_b = refs(big_a), refs(big_b)

    def app_a(environ, start_response):
        start_response("200 OK", [])
        return [big_a]

    def app_b(environ, start_response):
        start_response("200 OK", [])
        return [big_b]

    a = yimmo_server(app_a, workers=2)
    b = yimmo_server(app_b, workers=2)

    def hammer(server, body):
        with connect(server.address) as sock:
            for _ in range(30):
                sock.sendall(build_request("GET", "/"))
                assert read_response(sock).body == body

    threads = [threading.Thread(target=hammer, args=args)
               for args in [(a, big_a), (b, big_b)] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
        assert not t.is_alive()
    assert wait_refs(big_a, base_a) == base_a
    assert wait_refs(big_b, base_b) == base_b


def test_app_thread_write_after_the_end_gives_the_bytes_back(yimmo_server):
    """A background thread of the app that calls write() with big bytes
    after the response is over gets an error, and no reference is kept."""
    big = pattern(BIG, 12)
    base = refs(big)
    saved = {}
    done = threading.Event()

    def app(environ, start_response):
        saved["write"] = start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=1)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"ok"

    def late():
        try:
            saved["write"](big)
        except Exception as e:          # the response is over
            saved["error"] = e
        done.set()

    threading.Thread(target=late).start()
    assert done.wait(WAIT)
    assert isinstance(saved.get("error"), RuntimeError)
    saved.clear()
    assert wait_refs(big, base) == base


def drain(sock):
    total = 0
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return total
        total += len(data)


@pytest.mark.parametrize("how", ["generator", "write"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_long_stream_does_not_keep_all_its_items(yimmo_server, how,
                                                  workers):
    """A body streamed as 200 fresh 1 MB objects (a file read in 1 MB
    blocks): what the loop has written is let go of while the response
    goes on, not when it ends."""
    import tracemalloc
    n = 200
    peak = [0]

    def app(environ, start_response):
        write = start_response("200 OK", [])

        def gen():
            for i in range(n):
                yield bytes([i & 0xFF]) * (1 << 20)
                peak[0] = max(peak[0], tracemalloc.get_traced_memory()[0])
        if how == "generator":
            return gen()
        for item in gen():
            write(item)
        return []

    tracemalloc.start()
    try:
        server = yimmo_server(app, workers=workers)
        with connect(server.address, 60) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert drain(sock) > n << 20
    finally:
        tracemalloc.stop()
    assert peak[0] < 32 << 20, "%d MB alive at once" % (peak[0] >> 20)


def test_bytes_given_back_while_another_worker_is_in_a_long_request(
        yimmo_server):
    """One worker sits in a long poll; the other serves a 200 KB body and
    is idle before the loop has written it: the idle one is woken to let
    go of it, the long poll does not hold it up."""
    big = pattern(200 * 1024, 14)
    base = refs(big)
    release = threading.Event()
    entered = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/poll":
            entered.set()
            release.wait(30)
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        start_response("200 OK", [("Content-Length", str(len(big)))])
        return [big]

    server = yimmo_server(app, workers=2)
    poll = connect(server.address, 30)
    poll.sendall(build_request("GET", "/poll"))
    assert entered.wait(WAIT)
    held = []
    try:
        for _ in range(3):
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(30)
                sock.connect(server.address)
                sock.sendall(build_request("GET", "/big"))
                time.sleep(0.3)         # the worker is idle by now
                assert read_response(sock).body == big
            held.append(wait_refs(big, base, timeout=2) - base)
    finally:
        release.set()
        read_response(poll)
        poll.close()
    assert held == [0, 0, 0], held

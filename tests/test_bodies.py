"""Request and response bodies: large chunked uploads, Content-Length kept
exactly, bodiless statuses, empty chunks, and prompt streaming."""

import hashlib
import json
import random
import socket
import struct
import threading
import time
from wsgiref.validate import validator

import pytest

from helpers import (build_request, connect, read_response,
                     read_until_close, reader_for, request, sha256)

TEXT = [("Content-Type", "text/plain")]
WAIT = 10


def hash_body(environ, start_response):
    inp = environ["wsgi.input"]
    digest = hashlib.sha256()
    total = 0
    while True:
        piece = inp.read(65536)
        if not piece:
            break
        digest.update(piece)
        total += len(piece)
    body = json.dumps({"length": total,
                       "sha256": digest.hexdigest()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("size", [1024 * 1024, 10 * 1024 * 1024],
                         ids=["1MB", "10MB"])
def test_chunked_upload_with_irregular_chunks(yimmo_server, size):
    server = yimmo_server(validator(hash_body), workers=2)
    rng = random.Random(size)
    body = rng.randbytes(size)
    sizes = [1, 7, 4096, 65536, 1000003, 3, 250000]
    data = build_request("POST", "/", body=body, chunk_size=sizes)
    with connect(server.address, 60) as sock:
        # many small sends, so chunk framing straddles reads
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 13, 1500, 65536, 300000])
            sock.sendall(view[pos:pos + step])
            pos += step
        resp = read_response(sock)
    assert resp.status == 200
    assert json.loads(resp.body) == {"length": size, "sha256": sha256(body)}


def test_two_chunked_uploads_on_one_connection(yimmo_server):
    server = yimmo_server(validator(hash_body), workers=2)
    first, second = b"a" * 100000, b"b" * 70000
    with connect(server.address, 30) as sock:
        sock.sendall(build_request("POST", "/", body=first, chunk_size=9999)
                     + build_request("POST", "/", body=second,
                                     chunk_size=4096))
        r1, r2 = read_response(sock), read_response(sock)
    assert json.loads(r1.body)["sha256"] == sha256(first)
    assert json.loads(r2.body)["sha256"] == sha256(second)


# -- Content-Length is honoured exactly --------------------------------------


def test_body_shorter_than_content_length_closes_connection(yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "10")])
        return [b"12345"]

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock, allow_incomplete=True)
        assert resp.status == 200
        assert resp.body == b"12345"
        assert not resp.complete
        assert reader_for(sock).eof


def test_body_longer_than_content_length_is_cut_and_connection_closed(
        yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "10")])
        return [b"0123456789", b"EXTRA-BYTES"]

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock)
        assert resp.body == b"0123456789"
        assert read_until_close(sock) == b""


def test_single_chunk_longer_than_content_length_is_cut(yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", TEXT + [("Content-Length", "4")])
        return [b"abcdefgh"]

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"abcd"
        assert read_until_close(sock) == b""


# -- statuses without a body -------------------------------------------------


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_bodiless_status_sends_no_body_even_if_app_returns_one(
        yimmo_server, status):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            start_response("200 OK", TEXT + [("Content-Length", "4")])
            return [b"next"]
        start_response(status, [])
        return [b"this must not be sent"]

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock)
        assert resp.status == int(status[:3])
        assert "transfer-encoding" not in resp.headers
        # Stray body bytes would be read here as the next status line;
        # a server that closes instead must not have sent them either.
        sock.sendall(build_request("GET", "/next", [("Connection", "close")]))
        rest = read_until_close(sock)
    assert b"must not be sent" not in rest
    if rest:
        assert rest.startswith(b"HTTP/1.1 200 ")
        assert rest.endswith(b"\r\n\r\nnext")


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_bodiless_status_stops_asking_an_endless_generator(yimmo_server,
                                                           status):
    """Nothing of a 204's or 304's body goes out, so an endless generator
    behind one is not iterated for ever: it was, until --timeout, where a
    HEAD's stops at once (hostile review s24). It is closed, and the
    connection goes on."""
    pulled, closed = [0], threading.Event()

    def endless():
        try:
            while True:
                pulled[0] += 1
                yield b"tick"
        finally:
            closed.set()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            start_response("200 OK", TEXT + [("Content-Length", "4")])
            return [b"next"]
        start_response(status, [])
        return endless()

    server = yimmo_server(app, workers=1, timeout=30)
    with connect(server.address) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).status == int(status[:3])
        assert closed.wait(WAIT)
        assert pulled[0] == 1
        sock.sendall(build_request("GET", "/next"))
        assert read_response(sock).body == b"next"


# -- chunked response framing ------------------------------------------------


def test_empty_chunks_from_generator_are_skipped(yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", TEXT)
        return iter([b"", b"a", b"", b"", b"b", b"", b"c", b""])

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address) as sock:
        resp = request(sock, "GET", "/")
        assert resp.framing == "chunked"
        assert resp.body == b"abc"
        assert all(size > 0 for size in resp.chunks)
        # nothing left over from a premature last-chunk
        resp2 = request(sock, "GET", "/")
        assert resp2.body == b"abc"


def test_generator_of_only_empty_chunks_gives_empty_body(yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", TEXT)
        return iter([b"", b"", b""])

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address) as sock:
        assert request(sock, "GET", "/").body == b""
        assert request(sock, "GET", "/").body == b""


def test_each_chunk_reaches_client_before_next_is_produced(yimmo_server):
    received = [threading.Event() for _ in range(3)]
    timed_out = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            for i in range(3):
                yield b"data: event %d\n\n" % i
                # the next event only once the client has this one
                if not received[i].wait(WAIT):
                    timed_out.append(i)
        return events()

    server = yimmo_server(validator(app), workers=2)
    try:
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/events"))
            reader = reader_for(sock)
            head = reader.read_head()
            assert head["status"] == 200
            assert head["headers"]["Transfer-Encoding"].lower() == "chunked"
            for i in range(3):
                size_line = reader.readline()
                event = reader.read(int(size_line, 16))
                assert event == b"data: event %d\n\n" % i
                assert reader.read(2) == b"\r\n"
                received[i].set()
            assert reader.readline() == b"0\r\n"
            assert reader.readline() == b"\r\n"
    finally:
        for event in received:
            event.set()
    assert timed_out == []


def test_large_write_then_iterable_streams_in_order(yimmo_server):
    big = random.Random(5).randbytes(3 * 1024 * 1024)

    def app(environ, start_response):
        write = start_response("200 OK", TEXT)
        write(big)
        return [b"-end"]

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address, 30) as sock:
        resp = request(sock, "GET", "/")
    assert resp.body == big + b"-end"


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_many_small_items_of_mixed_sizes_arrive_whole_and_in_order(
        yimmo_server, framing):
    # Small items posted one by one share the bucket the loop has not
    # taken yet (wsgi_worker.c, merge_into_tail); big ones go by reference
    # or in buckets of their own, and write() mixes in. A slow reader in
    # the middle lets items wait for the loop, so they are merged.
    rng = random.Random(17)
    items = []
    for i in range(20000):
        kind = rng.random()
        size = (rng.randint(1, 40) if kind < 0.9 else
                rng.randint(1000, 5000) if kind < 0.99 else
                rng.randint(20000, 200000))
        items.append(rng.randbytes(size))
    body = b"".join(items)
    headers = list(TEXT)
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))

    def app(environ, start_response):
        write = start_response("200 OK", headers)

        def gen():
            for i, item in enumerate(items):
                if i % 997 == 0:
                    write(item)     # between the items of the iterable
                else:
                    yield item
        return gen()

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address, 30) as sock:
        sock.sendall(build_request("GET", "/"))
        time.sleep(0.3)             # let output pile up meanwhile
        resp = read_response(sock)
        assert resp.framing == framing
        assert resp.body == body
        # And the connection is still good for the next one.
        assert request(sock, "GET", "/").body == body


def test_stalled_client_gets_whole_response_without_server_buffering_it(
        yimmo_server):
    pieces = [random.Random(i).randbytes(65536) for i in range(256)]
    expected = b"".join(pieces)
    yielded = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type",
                                   "application/octet-stream"),
                                  ("Content-Length", str(len(expected)))])

        def body():
            for i, piece in enumerate(pieces):
                yielded.append(i)
                yield piece
        return body()

    server = yimmo_server(validator(app), workers=2)
    with connect(server.address, 30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(build_request("GET", "/"))
        reader = reader_for(sock)
        assert reader.read_head()["status"] == 200
        # Not reading for a moment fills the socket buffers, so the server
        # has to wait for the client (the data must arrive intact anyway).
        time.sleep(0.5)
        assert len(yielded) < len(pieces), \
            "the whole 16 MB body was buffered for a client not reading"
        got = bytearray(reader.buf)
        reader.buf.clear()
        while len(got) < len(expected):
            piece = sock.recv(65536)
            assert piece, "connection closed early"
            got += piece
    assert len(got) == len(expected)
    assert sha256(bytes(got)) == sha256(expected)


def test_response_survives_a_request_body_the_app_never_read(yimmo_server):
    """The app answers without reading an 8 MB upload. Closing the socket
    with unread input would make the kernel reset the connection and
    destroy the response in flight; the server must shut down its side
    and drain instead, so the client gets every byte."""
    size = 3 << 20

    def app(environ, start_response):
        start_response("413 Content Too Large",
                       [("Content-Length", str(size))])
        return [b"y" * size]

    server = yimmo_server(app, workers=2)
    for _ in range(3):
        with connect(server.address, 30) as sock:
            body = b"x" * (8 << 20)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))

            def send():
                try:
                    sock.sendall(body)
                except OSError:
                    pass            # the server may stop reading: fine
            sender = threading.Thread(target=send)
            sender.start()
            resp = read_response(sock)
            sender.join(30)
        assert resp.status == 413
        assert resp.headers.get("Connection") == "close"
        assert len(resp.body) == size


def test_app_is_not_run_for_a_request_whose_client_left(yimmo_server):
    """workers=1 is busy; a POST arrives and its client resets the
    connection before a worker is free. Nobody could see the answer (and
    the client may retry), so the app must not run for it. (A client that
    only closes, with a FIN, may be one that shut down its sending side
    and waits for the answer: see test_client_close.py.)"""
    gate = threading.Event()
    busy = threading.Event()
    calls = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/busy":
            busy.set()
            gate.wait(20)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=1)
    first = connect(server.address, 30)
    try:
        first.sendall(build_request("GET", "/busy"))
        assert busy.wait(5)
        with connect(server.address, 5) as sock:
            sock.sendall(build_request("POST", "/charge", body=b"hi"))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack("ii", 1, 0))
        # The server sees the reset once it tries to read more;
        # a third request on a fresh connection proves ordering below.
        time.sleep(0.2)
        gate.set()
        assert read_response(first).status == 200
        with connect(server.address, 10) as sock:
            sock.sendall(build_request("GET", "/after"))
            assert read_response(sock).status == 200
    finally:
        gate.set()
        first.close()
    assert calls == ["/busy", "/after"]


def test_huge_read_size_does_not_allocate_it(yimmo_server):
    def app(environ, start_response):
        data = environ["wsgi.input"].read(1 << 40)
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]

    server = yimmo_server(app, workers=1)
    with connect(server.address, 10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        resp = read_response(sock)
    assert resp.status == 200 and resp.body == b"hello"

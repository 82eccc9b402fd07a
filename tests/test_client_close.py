"""Clients that close: a client that shuts down its sending side after a
complete request still gets its answer; a client that disconnects while
the app reads its body makes wsgi.input raise yimmo.ClientDisconnected (an
OSError), logged as one INFO line when the app lets it propagate; and
environ["yimmo.client_gone"]() tells a long computation that nobody waits
for it any more."""

import json
import os
import logging
import socket
import stat
import struct
import threading
import time

import pytest

import yimmo
from helpers import (build_request, connect, read_response,
                     read_until_close)

WAIT = 10


def hello(environ, start_response):
    body = ("hello %s" % environ["PATH_INFO"]).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def reset(sock):
    """Close with a reset (RST) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


# -- half-closed clients ----------------------------------------------------


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_half_closed_client_gets_its_response(yimmo_server, version):
    # printf 'GET / HTTP/1.1...' | nc -N host port
    server = yimmo_server(hello, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/x", version=version))
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_close(sock, WAIT)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"hello /x")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("tail", [b"\r\n", b"\r\n\r\n"])
def test_half_closed_client_after_a_stray_crlf(yimmo_server, method, tail):
    # Some clients send a CRLF after a request (RFC 9112 2.2 has the server
    # ignore it); shut down after it, the client has sent all it will: the
    # connection closes after the response, not at the keep-alive timeout
    # (it did, the empty line still counted as input when the close was
    # decided).
    server = yimmo_server(hello, workers=2, keepalive_timeout=60)
    body = b"xyz" if method == "POST" else None
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request(method, "/x", body=body) + tail)
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_close(sock, WAIT)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"hello /x")


def test_half_closed_client_gets_all_pipelined_responses(yimmo_server):
    server = yimmo_server(hello, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/a") + build_request("GET", "/b")
                     + build_request("POST", "/c", body=b"xyz"))
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_close(sock, WAIT)
    assert raw.count(b"HTTP/1.1 200 ") == 3
    assert raw.endswith(b"hello /c")
    assert raw.index(b"hello /a") < raw.index(b"hello /b")


def test_half_closed_client_with_slow_app(yimmo_server):
    def app(environ, start_response):
        time.sleep(0.5)         # the EOF arrives while the app works
        return hello(environ, start_response)

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/slow"))
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_close(sock, WAIT)
    assert raw.endswith(b"hello /slow")


def test_half_closed_in_the_middle_of_a_request_is_closed(yimmo_server):
    calls = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    server = yimmo_server(app, workers=2)
    for partial in [b"GET /head HTTP/1.1\r\nHost: x\r\n",
                    build_request("GET", "/ok") + b"GET /next HTTP/1.1\r\n"]:
        with connect(server.address, WAIT) as sock:
            sock.sendall(partial)
            sock.shutdown(socket.SHUT_WR)
            raw = read_until_close(sock, WAIT)
        # Whatever was complete is answered; the rest can never complete.
        assert raw.count(b"HTTP/1.1") == partial.count(b"\r\n\r\n")
    assert calls == ["/ok"]


# -- a client that leaves while the app reads its body ----------------------


def test_disconnect_during_body_raises_client_disconnected(yimmo_server,
                                                           log_watcher):
    seen = []
    done = threading.Event()

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            seen.append((type(exc), isinstance(exc, OSError)))
            done.set()
            raise
        return hello(environ, start_response)

    log_watcher.logger.setLevel(logging.INFO)
    # Streamed, so that the app reads while the body arrives.
    server = yimmo_server(app, workers=2, buffer_body=0)
    sock = connect(server.address, WAIT)
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 10\r\n\r\nabc")
    time.sleep(0.2)
    sock.close()
    assert done.wait(WAIT)
    assert seen == [(yimmo.ClientDisconnected, True)]
    record = log_watcher.wait_for("client disconnected", "/upload")
    assert "3 of 10 body bytes" in record
    assert " INFO " in record
    time.sleep(0.2)
    # One INFO line, and no traceback at ERROR for it.
    assert not [t for t in log_watcher.texts if " ERROR " in t], \
        log_watcher.texts
    assert "Traceback" not in record


def test_disconnect_during_chunked_body_is_logged_quietly(yimmo_server,
                                                          log_watcher):
    def app(environ, start_response):
        environ["wsgi.input"].read()
        return hello(environ, start_response)

    log_watcher.logger.setLevel(logging.INFO)
    # Streamed, so that the app reads while the body arrives.
    server = yimmo_server(app, workers=2, buffer_body=0)
    sock = connect(server.address, WAIT)
    sock.sendall(b"POST /chunks HTTP/1.1\r\nHost: x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    time.sleep(0.2)
    reset(sock)
    record = log_watcher.wait_for("client disconnected", "/chunks")
    assert "5 body bytes received, chunked" in record
    assert not [t for t in log_watcher.texts if " ERROR " in t]


# -- yimmo.client_gone ---------------------------------------------------


@pytest.mark.parametrize("how", ["reset", "close"])
def test_client_gone_tells_a_long_computation_to_stop(yimmo_server, how):
    result = {}
    done = threading.Event()

    def app(environ, start_response):
        gone = environ["yimmo.client_gone"]
        result["before"] = gone()
        started = time.monotonic()
        while not gone() and time.monotonic() - started < 5:
            time.sleep(0.01)
        result["after"] = gone()
        result["waited"] = time.monotonic() - started
        done.set()
        return hello(environ, start_response)

    server = yimmo_server(app, workers=2)
    sock = connect(server.address, WAIT)
    sock.sendall(build_request("GET", "/long"))
    time.sleep(0.3)
    if how == "reset":
        reset(sock)
    else:
        sock.close()
    assert done.wait(WAIT)
    assert result["before"] is False
    assert result["after"] is True
    assert result["waited"] < 2


def test_client_gone_is_false_while_the_client_waits(yimmo_server):
    def app(environ, start_response):
        time.sleep(0.3)
        body = json.dumps(environ["yimmo.client_gone"]()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"false"


# -- the server's side of a connection (found in this process) ---------------


def _server_sockets(client):
    """This process's sockets whose peer is `client` (a connected socket):
    the server's end of its connection, while the server has it open."""
    found = []
    me = client.getsockname()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        with s:
            try:
                if s.getpeername() == me:
                    found.append(s.getsockopt(socket.IPPROTO_TCP,
                                              socket.TCP_NODELAY))
            except OSError:
                pass
    return found


def _gated_app():
    """An app that says it is inside (an Event) and answers "ok" once
    released (another Event)."""
    inside = threading.Event()
    release = threading.Event()

    def app(environ, start_response):
        inside.set()
        release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app, inside, release


def test_accepted_connections_have_nodelay(yimmo_server):
    # Set on the listener and copied by the kernel into each accepted
    # socket (no setsockopt per accept): a response written in pieces
    # must not wait for the client's delayed ACK (Nagle).
    app, inside, release = _gated_app()

    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        assert inside.wait(WAIT)
        try:
            assert _server_sockets(sock) == [1]
        finally:
            release.set()
        assert read_response(sock).body == b"ok"


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_the_last_request_closes_without_lingering(yimmo_server, version):
    # A request that says it is the last (Connection: close; HTTP/1.0
    # without keep-alive) is answered and the connection closed at once:
    # the client sends nothing more (RFC 9112 9.6), so there is nothing
    # to discard and the lingering close's shutdown, wait for the
    # client's FIN and read would be spent for nothing.
    server = yimmo_server(hello, workers=1)
    with connect(server.address, WAIT) as sock:
        headers = [("Connection", "close")] if version == "HTTP/1.1" else []
        sock.sendall(build_request("GET", "/x", headers=headers,
                                   version=version))
        raw = read_until_close(sock, WAIT)
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"hello /x")
        # The server no longer has the socket although this client has
        # not closed its side. (The FIN leaves with the response, from the
        # shutdown() just before the close(): the client may see it a
        # moment before the close, so wait for it, but far less than a
        # lingering close would wait for the client's FIN.)
        deadline = time.monotonic() + 0.5
        while _server_sockets(sock) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _server_sockets(sock) == []


def test_bytes_after_the_last_request_are_discarded_not_reset(yimmo_server):
    # A client that sends more after a request that said it was the last
    # (against RFC 9112 9.6) gets the lingering close: its extra bytes
    # are read and dropped, and the response arrives whole, ended by a
    # FIN rather than destroyed by a reset.
    release = threading.Event()

    def app(environ, start_response):
        release.wait(WAIT)
        body = b"y" * (8 << 20)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/", headers=[("Connection",
                                                         "close")]))
        time.sleep(0.2)
        # More than the server buffers: some stays unread in its kernel.
        # (sendall from a thread: the server stops reading, so it may
        # block until the lingering close discards the rest.)
        extra = threading.Thread(target=_send_quietly, daemon=True,
                                 args=(sock, b"GET /more HTTP/1.1\r\n"
                                       b"Host: x\r\n\r\n" * 100000))
        extra.start()
        time.sleep(0.2)
        release.set()
        # Read only once the server is done writing: much of the body
        # then still waits in its socket, which a reset would drop.
        time.sleep(0.5)
        raw = read_until_close(sock, WAIT)
        extra.join(WAIT)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\n" + b"y" * (8 << 20))


def _send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


def test_bytes_sent_after_the_response_is_written_do_not_reset_it(
        yimmo_server):
    # The response to a Connection: close request is all in the server's
    # kernel (the server is done writing) but the client, reading slowly,
    # has not received most of it yet, when a stray CRLF arrives (old
    # clients send one after a POST body). Closed at once, the server's
    # socket answers that byte with a reset that drops the megabytes still
    # queued in it: the lingering close reads and discards it instead.
    size = 16 << 20

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(size))])
        return [b"y" * size]

    server = yimmo_server(app, workers=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window: the rest of the response waits in the
    # server's send queue.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with sock:
        sock.settimeout(WAIT)
        sock.connect(server.address)
        sock.sendall(build_request("GET", "/", headers=[("Connection",
                                                         "close")]))
        got = bytearray()
        # Read until what is left fits in the server's send buffer (4 MB
        # at most on Linux): the server has written it all by then.
        while len(got) < size - (1 << 20):
            chunk = sock.recv(65536)
            assert chunk, len(got)
            got += chunk
        time.sleep(0.3)
        sock.sendall(b"\r\n")
        time.sleep(0.2)
        try:
            got += read_until_close(sock, WAIT)
        except ConnectionResetError:
            pass
    assert got.startswith(b"HTTP/1.1 200 ")
    assert len(got) == got.index(b"\r\n\r\n") + 4 + size, len(got)


def test_a_connection_queued_before_the_server_started_has_nodelay(
        yimmo_server):
    # TCP_NODELAY is set on the listener and copied into each socket the
    # kernel creates from it after that; a connection that was already in
    # the backlog (systemd socket activation: the connection that
    # activates the service; the supervisor's children loading the app)
    # was created without it and must get it on accept.
    app, inside, release = _gated_app()

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    client = socket.create_connection(lsock.getsockname(), WAIT)
    with client:
        yimmo_server(app, workers=1, bind="fd://%d" % lsock.detach())
        client.sendall(build_request("GET", "/"))
        assert inside.wait(WAIT)
        try:
            assert _server_sockets(client) == [1]
        finally:
            release.set()
        assert read_response(client).body == b"ok"


# -- writers learn of a client gone when nothing of the body goes out --------


@pytest.mark.parametrize("how", ["reset", "close"])
@pytest.mark.parametrize("case", ["HEAD write", "304 write", "CL write",
                                  "304 generator"])
def test_writer_learns_the_client_left_when_no_body_goes_out(
        yimmo_server, case, how):
    """A HEAD, a 204/304 or a reached Content-Length sends none of what
    the app writes, so no append ever told it the client had left: a
    write() loop (server-sent events) or a generator behind one ran on for
    ever with --timeout 0, and a client could pin every worker that way
    (hostile review s20)."""
    result = {}
    done = threading.Event()

    def app(environ, start_response):
        status = "304 Not Modified" if "304" in case else "200 OK"
        headers = [("Content-Length", "3")] if case == "CL write" else []
        write = start_response(status, headers)
        started = time.monotonic()

        def ticks():
            try:
                while time.monotonic() - started < 5:
                    yield b"data: tick\n\n"
                    time.sleep(0.01)
                result["end"] = "ran out"
            finally:
                result.setdefault("end", "closed")
                result["waited"] = time.monotonic() - started
                done.set()

        if case.endswith("generator"):
            return ticks()
        try:
            while time.monotonic() - started < 5:
                write(b"data: tick\n\n")
                time.sleep(0.01)
            result["end"] = "ran out"
        except yimmo.ClientDisconnected:
            result["end"] = "ClientDisconnected"
        result["waited"] = time.monotonic() - started
        done.set()
        return []

    server = yimmo_server(app, workers=2, timeout=0)
    sock = connect(server.address, WAIT)
    method = "HEAD" if case.startswith("HEAD") else "GET"
    sock.sendall(build_request(method, "/events"))
    time.sleep(0.3)
    if how == "reset":
        reset(sock)
    else:
        sock.close()
    assert done.wait(WAIT)
    expected = "closed" if case.endswith("generator") else \
        "ClientDisconnected"
    assert result["end"] == expected, result
    assert result["waited"] < 2, result


@pytest.mark.parametrize("first", ["HEAD /write", "GET /gen304"])
def test_half_closed_client_with_pipelined_requests_gets_every_answer(
        yimmo_server, first):
    """A client that shuts down its sending side after pipelining two
    requests waits for both answers: the first's writer, none of whose
    bytes go out, must not take the EOF for a client gone (a regression of
    the fix above, found by review: the second request went unanswered)."""
    ended = []

    def app(environ, start_response):
        started = time.monotonic()
        if environ["PATH_INFO"] == "/write":
            write = start_response("200 OK", [])
            try:
                while time.monotonic() - started < 5:
                    write(b"part\n")
                    time.sleep(0.02)
            finally:
                ended.append(time.monotonic() - started)
            return []
        if environ["PATH_INFO"] == "/gen304":
            start_response("304 Not Modified", [("ETag", '"x"')])

            def gen():
                try:
                    while time.monotonic() - started < 5:
                        yield b"x"
                        time.sleep(0.02)
                finally:
                    ended.append(time.monotonic() - started)
            return gen()
        return hello(environ, start_response)

    server = yimmo_server(app, workers=2, timeout=0)
    method, path = first.split()
    sock = connect(server.address, WAIT)
    sock.sendall(build_request(method, path) + build_request("GET", "/last"))
    time.sleep(0.02)
    sock.shutdown(socket.SHUT_WR)
    first_resp = read_response(sock, method=method)
    last = read_response(sock)
    assert first_resp.status in (200, 304)
    assert last.status == 200 and last.body == b"hello /last"
    read_until_close(sock)
    # Stopped once its client had shut down its side (nothing of it could
    # go out), not run to its end: a writer behind a client that closed
    # for good, pipelined request or not, held its worker until --timeout
    # (review s20).
    assert len(ended) == 1 and ended[0] < 2, ended

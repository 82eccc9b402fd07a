"""A response cut short must look cut to its client. A body framed by
Content-Length or chunked shows it by its framing, and the connection
closes after what was sent. A body that ends at the close (an HTTP/1.0
client, no Content-Length) cannot: a FIN would end it as if whole, for
the client and for a proxy that passes it on as a complete response
(nginx speaks HTTP/1.0 to its upstream by default). RFC 9112 section 8:
only an abortive close tells. So such a cut is a reset: an app error
after the head, a client that stops reading (the write timeout), the
stop's deadline (hostile review s24)."""

import select
import socket
import threading
import time

import pytest

from helpers import build_request, connect

WAIT = 10


def read_to_end(sock, timeout=WAIT):
    """(how the connection ended: "fin" or "reset", the bytes before)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "not closed within %ss: %r" % (
            timeout, bytes(data[:300]))
        if not select.select([sock], [], [], remaining)[0]:
            continue
        try:
            piece = sock.recv(1 << 18)
        except ConnectionResetError:
            return "reset", bytes(data)
        if not piece:
            return "fin", bytes(data)
        data += piece


def failing_app(framing):
    def app(environ, start_response):
        headers = [("Content-Type", "text/plain")]
        if framing == "length":
            headers.append(("Content-Length", "1000"))
        start_response("200 OK", headers)

        def body():
            yield b"first half of the report\n"
            raise RuntimeError("database went away")
        return body()
    return app


@pytest.mark.parametrize("version, framing, ending", [
    ("HTTP/1.0", "close", "reset"),     # the close is the body's end
    ("HTTP/1.1", "close", "fin"),       # chunked: no last chunk
    ("HTTP/1.0", "length", "fin"),      # short of its Content-Length
    ("HTTP/1.1", "length", "fin"),
])
def test_an_app_error_after_the_head(yimmo_server, version, framing,
                                     ending):
    server = yimmo_server(failing_app(framing), workers=1,
                          error_log="/dev/null")
    with connect(server.address, WAIT) as sock:
        sock.sendall(("GET / %s\r\nHost: x\r\n\r\n" % version).encode())
        how, data = read_to_end(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert how == ending, (how, data)
    if ending == "fin":
        # The framing tells the client the body is short.
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"first half" in body and not body.endswith(b"0\r\n\r\n")
        assert b"Content-Length: 1000" in head or \
            b"Transfer-Encoding: chunked" in head


def endless_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body():
        chunk = b"x" * 65536
        for _ in range(1 << 14):        # 1 GB: never read to the end
            yield chunk
    return body()


def stalled_http10_client(address):
    sock = connect(address, WAIT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    return sock


def test_a_client_that_stops_reading_a_body_that_ends_at_the_close(
        yimmo_server):
    server = yimmo_server(endless_app, workers=1, write_timeout=0.5)
    with stalled_http10_client(server.address) as sock:
        time.sleep(1.5)     # the write timeout passes
        how, data = read_to_end(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
    assert b"Connection: close" in data.partition(b"\r\n\r\n")[0]
    assert how == "reset", (how, len(data))


def test_the_stops_deadline_cutting_a_body_that_ends_at_the_close(
        yimmo_server):
    server = yimmo_server(endless_app, workers=1)
    with stalled_http10_client(server.address) as sock:
        time.sleep(0.3)     # the response has begun and stalled
        stopper = threading.Thread(target=server.stop, args=(0.3,))
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        how, data = read_to_end(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
    assert how == "reset", (how, len(data))


def test_a_whole_response_still_ends_with_a_fin(yimmo_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"all ", b"of ", b"it"])

    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        how, data = read_to_end(sock)
    assert how == "fin" and data.endswith(b"\r\n\r\nall of it"), (how, data)


def slow_reader(address):
    """A client with a small receive buffer that has sent a GET and reads
    nothing yet: the server's kernel holds what it cannot take."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(WAIT)
    sock.connect(address)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


class SlowClose:
    """A whole body whose close() takes a while (a session saved, a pool
    given back)."""

    def __init__(self, body, seconds):
        self.it, self.seconds = iter([body]), seconds

    def __iter__(self):
        return self.it

    def close(self):
        time.sleep(self.seconds)


def lingering_generator(body, seconds):
    yield body
    time.sleep(seconds)     # its Content-Length is reached: whole


@pytest.mark.parametrize("late", ["close", "generator"])
def test_a_whole_response_whose_app_runs_on_at_the_deadline_is_kept(
        yimmo_server, late):
    """Every byte handed to the kernel, the worker in the iterable's
    close() (or in a generator past its Content-Length) when the stop's
    deadline comes: the response is whole, and a reset dropped what the
    kernel still held for a client reading slowly (reviews s24)."""
    size = 65536

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(size))])
        if late == "close":
            return SlowClose(b"y" * size, 3)
        return lingering_generator(b"y" * size, 3)

    server = yimmo_server(app, workers=1)
    with slow_reader(server.address) as sock:
        time.sleep(0.8)     # written; close() sleeps; nothing read yet
        stopper = threading.Thread(target=server.stop, args=(0.3,))
        stopper.start()
        stopper.join(WAIT)
        how, data = read_to_end(sock)
    body = data.partition(b"\r\n\r\n")[2]
    assert (how, len(body)) == ("fin", size)


def test_a_reset_after_a_failed_request_body_sends_the_head_first(
        yimmo_server):
    """A request body that failed (408 here) marks the connection to close
    after the response: the reset post's last write went out with
    MSG_MORE, held for a FIN that the reset replaced, and the client saw a
    bare reset without the head (C review s24)."""
    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except OSError:
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"first half of the report\n", "not bytes"]  # TypeError

    server = yimmo_server(app, workers=1, body_timeout=0.5, buffer_body=0,
                          error_log="/dev/null")
    with connect(server.address, WAIT) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 100\r\n\r\nabc")
        how, data = read_to_end(sock)
    assert how == "reset" and data.startswith(b"HTTP/1.1 200 OK\r\n"), \
        (how, data)


def test_a_response_not_begun_is_not_reset_after_a_100_continue(
        yimmo_server):
    """The server's 100 Continue is not the response: the stop's deadline
    closes such a connection as any other whose response has not begun
    (review round 2, s24)."""
    def app(environ, start_response):
        environ["wsgi.input"].read(1)
        time.sleep(3)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=1, buffer_body=0)
    with connect(server.address, WAIT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"x")
        time.sleep(0.3)
        stopper = threading.Thread(target=server.stop, args=(0.3,))
        stopper.start()
        stopper.join(WAIT)
        how, data = read_to_end(sock)
    assert how == "fin", (how, data)


def test_the_watchdog_leaves_a_whole_response_whole(yimmo_server):
    """A generator that gave its whole Content-Length and then ran on past
    --timeout: the watchdog reset the connection, and a client reading
    slowly lost what the kernel still held of a whole response (C review
    s24). It closes after it instead."""
    size = 65536

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(size))])
        return lingering_generator(b"y" * size, 4)

    server = yimmo_server(app, workers=1, timeout=1, error_log="/dev/null")
    with slow_reader(server.address) as sock:
        time.sleep(2.5)     # the watchdog has acted; nothing read yet
        how, data = read_to_end(sock)
    body = data.partition(b"\r\n\r\n")[2]
    assert (how, len(body)) == ("fin", size)


def test_a_client_gone_mid_body_cuts_a_body_that_ends_at_the_close(
        yimmo_server):
    """The client shut down its side before its request body was whole:
    the request can never complete, and the response begun for it (one
    that ends at the close) was closed with a FIN, as if whole (C review
    s24)."""
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"first half of the report\n")
        try:
            environ["wsgi.input"].read()
        except OSError:
            pass
        return [b"second half\n"]

    server = yimmo_server(app, workers=1, buffer_body=0,
                          error_log="/dev/null")
    with connect(server.address, WAIT) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 100\r\n\r\nabc")
        time.sleep(0.3)
        sock.shutdown(socket.SHUT_WR)
        how, data = read_to_end(sock)
    assert how == "reset" and data.startswith(b"HTTP/1.1 200 OK\r\n"), \
        (how, data)

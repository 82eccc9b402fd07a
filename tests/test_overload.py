"""Overload without collapse: slow request bodies cannot tie up workers
(small bodies are read whole before the app runs; every body must keep a
minimum rate), the number of requests waiting for a worker is bounded (the
loop stops reading new requests when it is reached), and a request that
waited too long for a worker gets 503 with Retry-After without running the
app."""

import socket
import threading
import time

import pytest

from helpers import (build_request, connect, read_response,
                     read_until_close, send_get, skip_if_gil_off)

WAIT = 10


def hello(environ, start_response):
    body = environ["wsgi.input"].read() or b"hello"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def blocking_app(gate, calls=None, wait=5):
    """hello, except that /block waits for gate (at most `wait` seconds);
    every path is recorded in calls."""
    def app(environ, start_response):
        if calls is not None:
            calls.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/block":
            gate.wait(wait)
        return hello(environ, start_response)
    return app


def timed_get(addr, path="/"):
    t0 = time.monotonic()
    with connect(addr, WAIT) as sock:
        sock.sendall(build_request("GET", path))
        resp = read_response(sock)
    return resp, time.monotonic() - t0


def trickle(addr, head, body, interval, stop):
    """Send head, then body one byte per interval until stop is set; the
    socket is returned (open)."""
    sock = connect(addr, 30)
    sock.sendall(head)
    # The thread sends through a socket object of its own (the same
    # connection): the test reads, and closes, the one returned, and two
    # threads using one socket object race on its fields (timeout, fd).
    out = sock.dup()

    def run():
        try:
            for i in range(len(body)):
                if stop.wait(interval):
                    return
                out.sendall(body[i:i + 1])
        except OSError:
            pass
        finally:
            out.close()
    threading.Thread(target=run, daemon=True).start()
    return sock


# -- slow bodies ------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True],
                         ids=["content-length", "chunked"])
def test_slow_posts_do_not_starve_workers(yimmo_server, chunked):
    """As many slow-POST clients as workers, plus normal traffic: normal
    requests keep being answered promptly."""
    calls = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    server = yimmo_server(app, workers=2)
    stop = threading.Event()
    body = b"x" * 10000
    if chunked:
        head = (b"POST /slow HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    else:
        head = (b"POST /slow HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
    slow = [trickle(server.address, head, body, 0.2, stop)
            for _ in range(2)]
    try:
        time.sleep(0.5)
        for _ in range(10):
            resp, took = timed_get(server.address, "/fast")
            assert resp.status == 200
            assert took < 1.0, "a normal request waited behind slow POSTs"
        assert "/slow" not in calls       # the app never waited for them
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_streamed_slow_post_would_starve_without_buffering(yimmo_server):
    """The same attack with buffering off (buffer_body=0) does tie up the
    workers: what the test above guards against."""
    server = yimmo_server(hello, workers=1, buffer_body=0)
    stop = threading.Event()
    head = (b"POST /slow HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 10000\r\n\r\n")
    sock = trickle(server.address, head, b"x" * 10000, 0.2, stop)
    try:
        time.sleep(0.5)
        with connect(server.address, WAIT) as other:
            other.settimeout(1.0)
            other.sendall(build_request("GET", "/fast"))
            with pytest.raises(socket.timeout):
                other.recv(1)
    finally:
        stop.set()
        sock.close()


def test_body_below_min_rate_gets_408(yimmo_server):
    """A body that keeps trickling (each gap shorter than body_timeout)
    but averages less than min_body_rate over a 10 s window gets 408: the
    buffered case is answered by the loop, the streamed one through the
    app's read."""
    seen = []

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            seen.append(str(exc))
            raise
        return hello(environ, start_response)

    buffered = yimmo_server(app, workers=2, min_body_rate=100)
    streamed = yimmo_server(app, workers=2, min_body_rate=100,
                            buffer_body=0)
    stop = threading.Event()
    socks = []
    t0 = time.monotonic()
    try:
        for server, size in ((buffered, 5000), (streamed, 500000)):
            head = (b"POST /crawl HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: %d\r\n\r\n" % size)
            # 20 bytes/s: under the 100 bytes/s minimum
            socks.append(trickle(server.address, head, b"y" * size, 0.05,
                                 stop))
        for sock in socks:
            data = read_until_close(sock, 20)
            assert data.startswith(b"HTTP/1.1 408 "), data[:100]
        assert 9 < time.monotonic() - t0 < 16
        assert len(seen) == 1 and "408" in seen[0]
    finally:
        stop.set()
        for sock in socks:
            sock.close()


def test_body_at_a_steady_rate_is_accepted(yimmo_server):
    server = yimmo_server(hello, workers=2, min_body_rate=100,
                          buffer_body=0)
    body = b"z" * 3000
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("POST", "/", [("Content-Length",
                                                  str(len(body)))]))
        for i in range(0, len(body), 100):     # 1000 bytes/s for 3 s
            sock.sendall(body[i:i + 100])
            time.sleep(0.1)
        resp = read_response(sock)
    assert resp.status == 200 and resp.body == body


# -- bounded waiting ----------------------------------------------------------


def server_rx_queue(server_port, client_port):
    """Bytes the kernel holds unread on the server's end of a loopback TCP
    connection (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.split(":")[1], 16) == server_port
                    and int(remote.split(":")[1], 16) == client_port):
                return int(fields[4].split(":")[1], 16)
    raise AssertionError("connection not found")


def test_full_server_stops_reading_new_requests(yimmo_server):
    gate = threading.Event()
    calls = []

    app = blocking_app(gate, calls, wait=20)

    # One worker and one waiting request: two in hand at most.
    server = yimmo_server(app, workers=1, max_pending=1)
    socks = []
    try:
        for path in ("/block", "/queued", "/stalled"):
            sock = connect(server.address, WAIT)
            sock.sendall(build_request("GET", path))
            socks.append(sock)
            time.sleep(0.2)
        # The stalled connection's next (pipelined) request stays in the
        # kernel: the loop reads no more from it while the server is full.
        extra = build_request("GET", "/pipelined")
        socks[2].sendall(extra)
        time.sleep(0.3)
        port = server.address[1]
        assert server_rx_queue(port, socks[2].getsockname()[1]) == \
            len(extra)
        assert calls == ["/block"]
        gate.set()
        assert read_response(socks[0]).status == 200
        assert read_response(socks[1]).status == 200
        assert read_response(socks[2]).body == b"hello"
        assert read_response(socks[2]).body == b"hello"
        assert calls == ["/block", "/queued", "/stalled", "/pipelined"]
    finally:
        gate.set()
        for sock in socks:
            sock.close()


def test_queue_timeout_answers_503_without_the_app(yimmo_server):
    gate = threading.Event()
    calls = []

    app = blocking_app(gate, calls, wait=1.5)

    # /late waits in the worker's queue; /stalled waits for room.
    server = yimmo_server(app, workers=1, max_pending=1, queue_timeout=0.5)
    socks = []
    try:
        for path in ("/block", "/late", "/stalled"):
            sock = connect(server.address, WAIT)
            sock.sendall(build_request("GET", path))
            socks.append(sock)
            time.sleep(0.05)
        t0 = time.monotonic()
        stalled = read_until_close(socks[2], WAIT)
        assert time.monotonic() - t0 < 1.2    # at the queue timeout
        late = read_until_close(socks[1], WAIT)
        assert read_response(socks[0]).status == 200
        for data in (late, stalled):
            assert data.startswith(b"HTTP/1.1 503 "), data[:100]
            assert b"\r\nRetry-After: 1\r\n" in data
        assert calls == ["/block"]
        # Once the flood is over, a new request is served at once.
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/after"))
            assert read_response(sock).status == 200
    finally:
        gate.set()
        for sock in socks:
            sock.close()


# -- found by review ----------------------------------------------------------


def test_queue_timeout_does_not_count_the_upload(yimmo_server):
    """A buffered body that takes its time to arrive has not waited for a
    worker: an idle server does not answer it 503."""
    server = yimmo_server(hello, workers=1, queue_timeout=0.5)
    with connect(server.address, WAIT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 10\r\n\r\nhello")
        time.sleep(1.0)
        sock.sendall(b"world")
        resp = read_response(sock)
    assert resp.status == 200 and resp.body == b"helloworld"


def test_max_pending_bounds_requests_whose_bodies_come_later(yimmo_server):
    """Requests whose bodies arrive after their heads wait for room too:
    with one worker busy and room for one more, two of three such POSTs
    wait (and get the loop's 503 at the queue timeout)."""
    gate = threading.Event()
    calls = []

    app = blocking_app(gate, calls, wait=5)

    server = yimmo_server(app, workers=1, max_pending=1, queue_timeout=0.8)
    socks = []
    try:
        sock = connect(server.address, WAIT)
        sock.sendall(build_request("GET", "/block"))
        socks.append(sock)
        time.sleep(0.1)
        for i in range(3):
            sock = connect(server.address, WAIT)
            sock.sendall(b"POST /p%d HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 4\r\n\r\n" % i)
            socks.append(sock)
        time.sleep(0.2)
        for sock in socks[1:]:
            sock.sendall(b"body")
        t0 = time.monotonic()
        early = 0
        for sock in socks[1:]:
            sock.settimeout(max(0.1, 1.5 - (time.monotonic() - t0)))
            try:
                data = sock.recv(200)
            except socket.timeout:
                continue
            assert data.startswith(b"HTTP/1.1 503 "), data
            early += 1
        assert early == 2
        assert calls == ["/block"]
    finally:
        gate.set()
        for sock in socks:
            sock.close()


def test_waiting_for_room_does_not_count_against_the_head_timeout(
        yimmo_server):
    gate = threading.Event()

    app = blocking_app(gate, wait=5)

    server = yimmo_server(app, workers=1, max_pending=0, header_timeout=1)
    with connect(server.address, WAIT) as busy, \
            connect(server.address, WAIT) as sock:
        busy.sendall(build_request("GET", "/block"))
        time.sleep(0.1)
        data = build_request("GET", "/later")
        sock.sendall(data[:10])         # half a head: it waits for room
        time.sleep(0.3)
        sock.sendall(data[10:])
        time.sleep(1.5)                 # past header_timeout, stalled
        gate.set()
        assert read_response(busy).status == 200
        resp = read_response(sock)
    assert resp.status == 200 and resp.body == b"hello"


def test_stop_does_not_wait_for_clients_that_keep_a_closed_connection(
        yimmo_server):
    server = yimmo_server(hello, workers=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/", [("Connection", "close")]))
        assert read_response(sock).status == 200
        time.sleep(0.1)
        # The client keeps its end open (a pooled client): the server
        # lingers, but a stop need not wait for it.
        t0 = time.monotonic()
        server.stop(10)
        assert time.monotonic() - t0 < 0.5


def test_503_to_a_head_request_has_no_body(yimmo_server):
    gate = threading.Event()

    app = blocking_app(gate, wait=5)

    server = yimmo_server(app, workers=1, queue_timeout=0.3)
    try:
        with connect(server.address, WAIT) as busy, \
                connect(server.address, WAIT) as sock:
            busy.sendall(build_request("GET", "/block"))
            time.sleep(0.1)
            sock.sendall(build_request("HEAD", "/late"))
            time.sleep(0.5)
            gate.set()
            data = read_until_close(sock, WAIT)
        assert data.startswith(b"HTTP/1.1 503 ")
        assert data.endswith(b"\r\n\r\n")     # the head, and no body
    finally:
        gate.set()


def test_stop_closes_a_lingering_connection_once_its_client_has_all(
        yimmo_server):
    """A response that goes out during the stop (Connection: close), read
    by a client that keeps its socket open: the stop ends once the client
    has it, not after the 2 s linger."""
    def app(environ, start_response):
        time.sleep(0.3)
        return hello(environ, start_response)

    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        time.sleep(0.1)
        t0 = time.monotonic()
        stopper = threading.Thread(target=server.stop, args=(10,))
        stopper.start()
        assert read_response(sock).body == b"hello"
        stopper.join(WAIT)
        assert time.monotonic() - t0 < 1.0


def test_credit_for_waiting_does_not_carry_over_to_a_later_request(
        yimmo_server):
    """A connection waits for room with only stray line breaks after its
    request; its next request, much later, starts its queue wait afresh."""
    gate = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/block":
            gate.wait(5)
        if environ["PATH_INFO"].startswith("/slow"):
            time.sleep(0.4)
        return hello(environ, start_response)

    server = yimmo_server(app, workers=1, max_pending=1, queue_timeout=1.0)
    with connect(server.address, WAIT) as b, \
            connect(server.address, WAIT) as c, \
            connect(server.address, WAIT) as d, \
            connect(server.address, WAIT) as e:
        b.sendall(build_request("GET", "/slow") + b"\r\n")
        time.sleep(0.1)
        c.sendall(build_request("GET", "/block"))
        time.sleep(0.1)
        d.sendall(build_request("GET", "/d"))
        time.sleep(0.9)             # b's line breaks wait ~0.8 s for room
        gate.set()
        for sock in (b, c, d):
            assert read_response(sock).status == 200
        time.sleep(1.5)             # idle
        e.sendall(build_request("GET", "/slow2"))
        time.sleep(0.05)
        b.sendall(build_request("GET", "/y"))   # waits ~0.4 s: fine
        assert read_response(b).status == 200


def test_loops_503_to_a_waiting_head_request_has_no_body(yimmo_server):
    gate = threading.Event()

    def app(environ, start_response):
        gate.wait(5)
        return hello(environ, start_response)

    server = yimmo_server(app, workers=1, max_pending=0, queue_timeout=0.3)
    try:
        with connect(server.address, WAIT) as busy, \
                connect(server.address, WAIT) as sock:
            busy.sendall(build_request("GET", "/block"))
            time.sleep(0.1)
            sock.sendall(build_request("HEAD", "/late"))
            data = read_until_close(sock, WAIT)
        assert data.startswith(b"HTTP/1.1 503 ")
        assert data.endswith(b"\r\n\r\n")
    finally:
        gate.set()


@skip_if_gil_off
def test_queued_requests_run_in_the_order_they_came(yimmo_server):
    # With the GIL one worker runs Python at a time, so it takes the oldest
    # request queued to any worker, not its own queue first: requests
    # queued to a worker blocked in the app waited behind later ones.
    gates = {"/a": threading.Event(), "/b": threading.Event()}
    started = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        started.append(path)
        if path in gates:
            gates[path].wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=2, max_pending=16)
    socks = []
    try:
        # Both workers busy, one in /a, one in /b (the GIL released).
        for path in ("/a", "/b"):
            socks.append(send_get(server.address, path, WAIT, started))
        # Queued behind them, one at a time, alternating between their
        # queues (the worker with fewer requests in hand gets the next).
        later = ["/%d" % i for i in range(6)]
        for path in later:
            socks.append(send_get(server.address, path, WAIT))
            time.sleep(0.05)
        assert started == ["/a", "/b"]
        gates["/b"].set()       # one worker is free: it runs them all
        for s in socks[1:]:
            assert read_response(s).status == 200
        assert started[2:] == later
    finally:
        for gate in gates.values():
            gate.set()
        for s in socks:
            s.close()

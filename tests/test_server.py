"""The Server object and serve(): start and stop, several servers at once,
IPv6 and unix-socket listeners, graceful shutdown, and signals (in
subprocesses, where serve() runs on the main thread as it would for real).
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from wsgiref.validate import validator

import pytest

import yimmo
from yimmo import _yimmo
from helpers import (LogWatcher, ServerProcess, assert_closed,
                     build_request, connect, get, read_response, reader_for,
                     refuses, request, wait_readable, wait_until)

WAIT = 10


def make_app(body):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return validator(app)


def refuses_connections(addr):
    try:
        with connect(addr, timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# -- Server in this process --------------------------------------------------


def test_server_context_manager_starts_and_stops():
    with yimmo.Server(make_app(b"hi"), bind="127.0.0.1:0", workers=2) as s:
        host, port = s.address
        assert host == "127.0.0.1"
        assert port > 0
        assert s.url == "http://127.0.0.1:%d" % port
        assert s.addresses == [s.address]
        # serving as soon as __enter__ returns: no retry needed
        assert get(s.address).body == b"hi"
    assert refuses_connections((host, port))


def test_server_binds_in_constructor_and_start_returns_when_serving():
    server = yimmo.Server(make_app(b"started"), bind="127.0.0.1:0",
                          workers=1)
    try:
        assert server.address[1] > 0  # known before start()
        server.start()
        assert get(server.address).body == b"started"
    finally:
        server.stop()
    assert refuses_connections(server.address)


def test_serve_forever_in_a_thread_returns_after_stop():
    server = yimmo.Server(make_app(b"forever"), bind="127.0.0.1:0",
                          workers=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # the listener exists since the constructor: the request waits in
        # the backlog until serve_forever() accepts it
        assert get(server.address, timeout=WAIT).body == b"forever"
    finally:
        server.stop()
        thread.join(WAIT)
    assert not thread.is_alive(), "serve_forever() did not return"


def test_port_in_use_raises_oserror_from_constructor():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            yimmo.Server(make_app(b"x"), bind="127.0.0.1:%d" % port)


@pytest.mark.parametrize("options, error", [
    ({"workers": 0}, ValueError),
    ({"bind": "127.0.0.1:notaport"}, ValueError),
    ({"no_such_option": 1}, TypeError),
])
def test_bad_option_values_raise(options, error):
    kw = {"bind": "127.0.0.1:0"}
    kw.update(options)
    with pytest.raises(error):
        yimmo.Server(make_app(b"x"), **kw)


def test_two_servers_in_one_process(yimmo_server):
    one = yimmo_server(make_app(b"one"), workers=1)
    two = yimmo_server(make_app(b"two"), workers=2)
    assert one.address != two.address
    with connect(one.address) as s1, connect(two.address) as s2:
        for _ in range(3):
            assert request(s1, "GET", "/").body == b"one"
            assert request(s2, "GET", "/").body == b"two"


def test_fixture_server_listens_on_loopback_ephemeral_port(yimmo_server):
    server = yimmo_server(make_app(b"x"))
    assert server.address[0] == "127.0.0.1"
    assert server.address[1] > 0
    assert server.url == "http://127.0.0.1:%d" % server.address[1]


def _has_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_bind(yimmo_server):
    def app(environ, start_response):
        body = environ["REMOTE_ADDR"].encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    server = yimmo_server(validator(app), bind="[::1]:0", workers=1)
    host, port = server.address[:2]
    assert host == "::1"
    assert server.url == "http://[::1]:%d" % port
    with connect(("::1", port)) as sock:
        assert sock.family == socket.AF_INET6
        assert request(sock, "GET", "/").body == b"::1"


def test_unix_socket_bind(yimmo_server, tmp_path):
    path = str(tmp_path / "s.sock")
    server = yimmo_server(make_app(b"over unix"), bind="unix:" + path,
                          workers=1)
    assert server.address == path
    assert server.url == "unix:" + path
    with connect(path) as sock:
        assert sock.family == socket.AF_UNIX
        assert request(sock, "GET", "/").body == b"over unix"
        assert request(sock, "GET", "/again").body == b"over unix"


def test_tcp_and_unix_listeners_together(yimmo_server, tmp_path):
    path = str(tmp_path / "both.sock")
    server = yimmo_server(make_app(b"both"),
                          bind=["127.0.0.1:0", "unix:" + path], workers=1)
    assert len(server.addresses) == 2
    assert path in server.addresses
    assert server.address == server.addresses[0]
    assert get(server.address).body == b"both"
    with connect(path) as sock:
        assert request(sock, "GET", "/").body == b"both"


def test_stop_lets_in_flight_request_finish(yimmo_server):
    entered = threading.Event()
    release = threading.Event()

    def app(environ, start_response):
        entered.set()
        release.wait(WAIT)
        body = b"finished"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    server = yimmo.Server(validator(app), bind="127.0.0.1:0", workers=2)
    server.start()
    stopper = None
    try:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/slow"))
            assert entered.wait(WAIT)
            stopper = threading.Thread(target=server.stop, daemon=True)
            stopper.start()
            # stop() waits for the request in flight
            stopper.join(0.5)
            assert stopper.is_alive(), "stop() did not wait for the request"
            release.set()
            resp = read_response(sock)
            assert resp.status == 200
            assert resp.body == b"finished"
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop() did not return"
    finally:
        release.set()
        if stopper is None:
            server.stop()
    assert refuses_connections(server.address)


def wait_refused(addr, timeout=3):
    """True once connecting to addr is refused, polling until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if refuses_connections(addr):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_new_clients_are_refused_during_the_grace_period(tmp_path):
    """Once stop() begins, the listeners are closed: a client connecting
    during the grace period is refused at once (it used to be accepted by
    the kernel, hang, and be reset at exit), while the request in flight
    still finishes; the unix socket file is removed at exit."""
    entered = threading.Event()
    release = threading.Event()

    def app(environ, start_response):
        entered.set()
        release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "8")])
        return [b"finished"]

    path = str(tmp_path / "grace.sock")
    server = yimmo.Server(app, bind=["127.0.0.1:0", "unix:" + path],
                          workers=2, graceful_timeout=WAIT)
    tcp = server.address
    server.start()
    stopper = threading.Thread(target=server.stop, daemon=True)
    try:
        with connect(tcp, WAIT) as sock:
            sock.sendall(build_request("GET", "/"))
            assert entered.wait(WAIT)
            stopper.start()
            assert wait_refused(tcp), "TCP clients accepted while stopping"
            assert wait_refused(path), "unix clients accepted while stopping"
            assert stopper.is_alive()       # still in the grace period
            release.set()
            resp = read_response(sock)
            assert resp.status == 200
            assert resp.body == b"finished"
        stopper.join(WAIT)
        assert not stopper.is_alive(), "stop() did not return"
    finally:
        release.set()
        if not stopper.is_alive():
            server.stop(timeout=0)
    assert server.stopped
    assert not os.path.exists(path), "unix socket file left behind"


def test_server_that_never_ran_closes_its_listeners_on_stop(tmp_path):
    path = str(tmp_path / "never.sock")
    server = yimmo.Server(make_app(b"x"),
                          bind=["127.0.0.1:0", "unix:" + path], workers=1)
    assert os.path.exists(path)
    server.stop()
    assert refuses_connections(server.address)
    assert not os.path.exists(path)
    # It is stopped, and says so: a later start() or serve_forever() raises
    # (start() returned as if serving, with its listeners closed, before a
    # hostile review).
    assert server.stopped
    with pytest.raises(RuntimeError, match="stopped before it started"):
        server.start()
    with pytest.raises(RuntimeError, match="stopped before it started"):
        server.serve_forever()
    threads = [t for t in threading.enumerate() if t.name == "yimmo-server"]
    assert threads == []


def test_core_owns_listener_fds_only_once_constructed():
    """A Core that fails to construct leaves the descriptors to the caller;
    a constructed one closes them when stopped, even if it never ran."""
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        listeners = [(sock.fileno(), False, "127.0.0.1", "0")]
        with pytest.raises(ValueError):
            _yimmo.Core(app, listeners, print, sys.stderr, workers=0)
        sock.getsockname()          # still open: the caller's to close
        core = _yimmo.Core(app, listeners, print, sys.stderr, workers=1)
        fd = sock.detach()
        inode = os.fstat(fd).st_ino
        core.stop(0)
        try:                        # closed by the core (or even reused)
            assert os.fstat(fd).st_ino != inode, "the core left it open"
        except OSError:
            pass


def serve_stuck_request(yimmo_server, **options):
    """A server whose one request is stuck in the app until the returned
    event is set (the caller must set it)."""
    entered = threading.Event()
    release = threading.Event()

    def app(environ, start_response):
        entered.set()
        release.wait(60)
        start_response("200 OK", [("Content-Length", "0")])
        return []

    server = yimmo_server(app, **options)
    sock = connect(server.address, WAIT)
    sock.sendall(build_request("GET", "/"))
    assert entered.wait(WAIT)
    return server, sock, release


def test_grace_period_is_applied_once(yimmo_server):
    """stop(2.0) with a request stuck in the app returns after about 2 s:
    the workers are joined until the loop's deadline, not for another
    grace period after it (that took 4 s)."""
    server, sock, release = serve_stuck_request(yimmo_server, workers=2)
    try:
        t0 = time.monotonic()
        server.stop(2.0)
        spent = time.monotonic() - t0
        assert server.stopped
        assert 1.8 < spent < 3.5, "stop(2.0) took %.2fs" % spent
    finally:
        release.set()
        sock.close()


def test_repeated_stop_does_not_postpone_the_deadline(yimmo_server):
    """stop(3) again every 0.5 s (as repeated SIGTERMs do) must not re-arm
    the grace period: the first stop fixed the deadline."""
    server, sock, release = serve_stuck_request(yimmo_server, workers=1)
    try:
        t0 = time.monotonic()
        stoppers = []
        while not server.stopped and time.monotonic() - t0 < 8:
            t = threading.Thread(target=server.stop, args=(3,), daemon=True)
            t.start()
            stoppers.append(t)
            time.sleep(0.5)
        spent = time.monotonic() - t0
        assert server.stopped, "still not stopped after %.1fs" % spent
        assert spent < 4.5, "stopped after %.2fs, not ~3s" % spent
        for t in stoppers:
            t.join(WAIT)
    finally:
        release.set()
        sock.close()


def test_a_later_stop_may_shorten_the_deadline(yimmo_server):
    server, sock, release = serve_stuck_request(yimmo_server, workers=1)
    try:
        t0 = time.monotonic()
        first = threading.Thread(target=server.stop, args=(30,),
                                 daemon=True)
        first.start()
        time.sleep(0.3)
        server.stop(0.5)
        assert server.stopped
        assert time.monotonic() - t0 < 2.5
        first.join(WAIT)
        assert not first.is_alive()
    finally:
        release.set()
        sock.close()


def test_stop_without_grace_joins_idle_workers():
    """stop(0), as at interpreter exit or on a second Ctrl-C, with nothing
    in flight: idle workers need a moment to wake and exit, and must not
    be given up on as "still running the app" (which also keeps the core
    allocated for good)."""
    for _ in range(5):
        server = yimmo.Server(make_app(b"idle"), bind="127.0.0.1:0",
                              workers=4)
        server.start()
        assert get(server.address).body == b"idle"
        server.stop(timeout=0)
        assert server.stopped
        assert server._core.abandoned_workers == 0


def test_stop_from_inside_a_request_handler():
    """An app may call server.stop(): from one of the server's own worker
    threads it only begins the graceful stop and returns at once (waiting
    would mean waiting for itself), and the request that called it still
    gets its response."""
    holder = []

    def app(environ, start_response):
        t0 = time.monotonic()
        holder[0].stop()
        body = b"stop returned in %.3f" % (time.monotonic() - t0)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=2,
                          graceful_timeout=10)
    holder.append(server)
    server.start()
    try:
        resp = get(server.address, timeout=5)
        assert resp.status == 200
        assert resp.body.startswith(b"stop returned in ")
        assert float(resp.body.split()[-1]) < 0.5, resp.body
        server._thread.join(3)
        assert not server._thread.is_alive(), "the server did not finish"
        assert server.stopped
        assert server._core.abandoned_workers == 0
    finally:
        server.stop(timeout=0)
    assert refuses_connections(server.address)


def test_stop_rejects_nan():
    server = yimmo.Server(make_app(b"still fine"), bind="127.0.0.1:0",
                          workers=1)
    try:
        with pytest.raises(ValueError):
            server.stop(float("nan"))
        with pytest.raises(ValueError):
            server._core.stop(float("nan"))
        # Nothing was stopped: the server still starts and serves.
        server.start()
        assert get(server.address).body == b"still fine"
    finally:
        server.stop(-1)             # negative: no grace, like 0
    assert server.stopped


# -- serve() in a subprocess -------------------------------------------------

SERVE_SCRIPT = textwrap.dedent("""
    import logging, signal, sys
    import yimmo

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            print("entered", flush=True)
            line = sys.stdin.readline()
            body = b"finished:" + line.strip().encode()
        elif environ["PATH_INFO"] == "/stream":
            # Its head (keep-alive) goes out with the first part; the
            # second waits for a line on stdin.
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", "10")])
            return stream()
        else:
            body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def stream():
        yield b"part1"
        print("streaming", flush=True)
        sys.stdin.readline()
        yield b"part2"

    def on_usr1(signum, frame):
        print("usr1 handled", flush=True)

    signal.signal(signal.SIGUSR1, on_usr1)
    try:
        yimmo.serve(app, bind="127.0.0.1:0", workers=2)
    except KeyboardInterrupt:
        print("KeyboardInterrupt raised", flush=True)
        sys.exit(42)
    print("serve returned", flush=True)
""")


def start_serve_script():
    return ServerProcess([sys.executable, "-c", SERVE_SCRIPT],
                         stdin=subprocess.PIPE)


def test_serve_stops_on_sigterm_with_exit_0_after_in_flight_request():
    with start_serve_script() as proc:
        addr = proc.wait_listening()
        assert get(addr).body == b"ok"
        with connect(addr, WAIT) as sock:
            sock.sendall(build_request("GET", "/slow"))
            proc.wait_for_line("^entered$", stream="stdout")
            proc.signal(signal.SIGTERM)
            # still finishing the request in flight
            with pytest.raises(subprocess.TimeoutExpired):
                proc.proc.wait(0.5)
            proc.proc.stdin.write(b"go\n")
            proc.proc.stdin.flush()
            resp = read_response(sock)
            assert resp.status == 200
            assert resp.body == b"finished:go"
        assert proc.wait(WAIT) == 0
        assert "serve returned" in proc.stdout
        assert "Traceback" not in proc.stderr


def test_keep_alive_promised_before_a_stop_is_kept_for_the_next_request():
    """A response whose head said keep-alive before SIGTERM, and that ends
    after it: its client may send the next request at once, which gets an
    answer with Connection: close, not a closed connection (the old loop
    closed such a connection as soon as the response ended: a reload
    failed one request in a CI run)."""
    with start_serve_script() as proc:
        addr = proc.wait_listening()
        with connect(addr, WAIT) as sock:
            sock.sendall(build_request("GET", "/stream"))
            proc.wait_for_line("^streaming$", stream="stdout", timeout=WAIT)
            proc.signal(signal.SIGTERM)
            proc.wait_for_line("(?i)shutting down", timeout=WAIT)
            proc.proc.stdin.write(b"go\n")
            proc.proc.stdin.flush()
            resp = read_response(sock)
            assert resp.status == 200 and resp.body == b"part1part2"
            assert "connection" not in resp.headers, resp.raw_head
            sock.sendall(build_request("GET", "/"))
            resp = read_response(sock)
            assert resp.status == 200 and resp.body == b"ok"
            assert resp.headers["Connection"].lower() == "close"
        assert proc.wait(WAIT) == 0, proc.stderr


def gated_app(gate, seen):
    """/stream sends its head (keep-alive) and a first part, then waits for
    `gate`; every request's path is appended to `seen`."""
    def app(environ, start_response):
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        environ["wsgi.input"].read()
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Length", "10")])

            def stream():
                yield b"part1"
                gate.wait(WAIT)
                yield b"part2"
            return stream()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    return app


def test_stray_crlf_after_a_body_leaves_the_connection_idle():
    """A CRLF sent after a request's body (RFC 9112 2.2: ignored before a
    request line) leaves the connection idle: it closes quietly at the
    keep-alive timeout, not with a 408 at the header timeout."""
    with yimmo.Server(gated_app(threading.Event(), []),
                      bind="127.0.0.1:0", workers=2, keepalive_timeout=1,
                      header_timeout=5) as server:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("POST", "/", body=b"abc") + b"\r\n")
            assert read_response(sock).body == b"ok"
            t0 = time.monotonic()
            assert_closed(sock, WAIT)
            assert time.monotonic() - t0 < 3


def test_empty_lines_do_not_keep_a_connection_alive():
    """Empty lines sent every 0.3 s to a kept-alive connection do not
    renew its keep-alive wait: it still closes after 1 s, quietly."""
    with yimmo.Server(gated_app(threading.Event(), []),
                      bind="127.0.0.1:0", workers=2,
                      keepalive_timeout=1) as server:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/"))
            assert read_response(sock).body == b"ok"
            t0 = time.monotonic()
            with pytest.raises(OSError):
                while time.monotonic() - t0 < 5:
                    sock.sendall(b"\r\n")
                    if wait_readable(sock, 0.3):
                        assert_closed(sock, WAIT)
                        raise OSError("closed")
            assert time.monotonic() - t0 < 3


def test_slow_reader_gets_its_whole_response_after_the_last_call():
    """A client still reading a big keep-alive response when its last call
    ends (the kernel holds the rest), which then sends its next request:
    the connection is not closed over that request (a reset, which would
    destroy the rest of the response), it lingers."""
    size = 8 << 20
    body = b"x" * size

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(size))])
        return [body]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=2)
    server.start()
    try:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/big"))
            reader = reader_for(sock)
            assert reader.read_head()["status"] == 200
            got = len(reader.buf)
            reader.buf.clear()
            stopper = threading.Thread(target=server.stop, args=(30,))
            stopper.start()
            sent = False
            while got < size:       # about 2 MB/s: 4 s
                if not sent and not stopper.is_alive():
                    # The stop is over: the server's side is closed.
                    sock.sendall(build_request("GET", "/"))
                    sent = True
                data = sock.recv(65536)
                assert data, "closed after %d of %d bytes" % (got, size)
                got += len(data)
                time.sleep(len(data) / 2e6)
            stopper.join(WAIT)
            assert not stopper.is_alive()
    finally:
        server.stop(0)


@pytest.mark.parametrize("when", ["after a response", "while idle"])
def test_stray_crlf_does_not_hold_up_a_stop(when):
    """A connection with nothing but empty lines in gets the last call of
    an idle one (1 s) when the server stops, not the header timeout."""
    gate = threading.Event()
    seen = []
    server = yimmo.Server(gated_app(gate, seen), bind="127.0.0.1:0",
                          workers=2, header_timeout=10)
    server.start()
    try:
        with connect(server.address, WAIT) as sock:
            if when == "after a response":
                sock.sendall(build_request("POST", "/stream", body=b"x")
                             + b"\r\n")
                wait_until(lambda: seen == [("POST", "/stream")])
            stopper = threading.Thread(target=server.stop, args=(30,))
            t0 = time.monotonic()
            stopper.start()
            wait_until(lambda: refuses(server.address))
            if when == "after a response":
                gate.set()
                assert read_response(sock).body == b"part1part2"
                assert_closed(sock, WAIT)
            else:
                try:
                    sock.sendall(b"\r\n")
                except (ConnectionResetError, BrokenPipeError):
                    # Seen on ThreadSanitizer's slow build: the connection
                    # was closed before the CRLF went out, at the end of
                    # its last call or (never accepted yet) by the kernel
                    # as the listener closed. Either way nothing renewed
                    # its wait: the stop's time is checked below.
                    pass
                else:
                    assert_closed(sock, WAIT)
            stopper.join(WAIT)
            assert not stopper.is_alive()
            assert time.monotonic() - t0 < 4
    finally:
        gate.set()
        server.stop(0)


def test_no_last_call_that_the_deadline_would_cut_off():
    """A keep-alive response that ends less than two last calls (2 s)
    before the stop's deadline closes its connection: a request sent on it
    would reach the app and be cut off there, after it ran, with no
    answer."""
    gate = threading.Event()
    seen = []
    server = yimmo.Server(gated_app(gate, seen), bind="127.0.0.1:0",
                          workers=2)
    server.start()
    try:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/stream"))
            wait_until(lambda: seen == [("GET", "/stream")])
            stopper = threading.Thread(target=server.stop, args=(1.5,))
            stopper.start()
            wait_until(lambda: refuses(server.address))
            gate.set()
            resp = read_response(sock)
            assert resp.body == b"part1part2"
            try:
                sock.sendall(build_request("POST", "/next", body=b"x"))
                assert_closed(sock, WAIT)
            except ConnectionResetError:
                pass
            stopper.join(WAIT)
            assert not stopper.is_alive()
        assert seen == [("GET", "/stream")]
    finally:
        gate.set()
        server.stop(0)


def test_an_idle_connection_gets_no_last_call_the_deadline_would_cut_off():
    """The same for a connection idle (its response long sent) when a stop
    with less than two last calls to its deadline begins: it closes at
    once, so a request sent on it never reaches the app. (It had the last
    call: a request of 1 s sent into it ran and was cut off unanswered at
    the 1.5 s deadline.)"""
    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/slow":
            time.sleep(1.0)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=2)
    server.start()
    try:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/first"))
            assert read_response(sock).body == b"ok"
            time.sleep(0.2)     # idle: on an idle list
            stopper = threading.Thread(target=server.stop, args=(1.5,))
            stopper.start()
            # The listeners close in the same turn of the loop as the
            # connections are drained.
            wait_until(lambda: refuses(server.address))
            try:
                sock.sendall(build_request("GET", "/slow"))
                assert_closed(sock, WAIT)
            except ConnectionResetError:
                pass
            stopper.join(WAIT)
            assert not stopper.is_alive()
        assert seen == ["/first"]
    finally:
        server.stop(0)


def test_a_later_stop_that_leaves_no_room_ends_the_last_calls():
    """stop(10) gives an idle connection a last call of 1 s; a stop(1.2)
    0.3 s into it brings the deadline so close that a request sent in
    the rest of the window would be cut off in the app: the connection
    closes then, not when the window ends."""
    server = yimmo.Server(make_app(b"ok"), bind="127.0.0.1:0", workers=2)
    server.start()
    try:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/"))
            assert read_response(sock).body == b"ok"
            time.sleep(0.2)
            first = threading.Thread(target=server.stop, args=(10,))
            first.start()
            wait_until(lambda: refuses(server.address))
            t_first = time.monotonic()
            time.sleep(0.3)
            second = threading.Thread(target=server.stop, args=(1.2,))
            second.start()
            assert_closed(sock, WAIT)
            # The window of the first stop ends about 1 s after it.
            assert time.monotonic() - t_first < 0.75
            first.join(WAIT)
            second.join(WAIT)
            assert not first.is_alive() and not second.is_alive()
    finally:
        server.stop(0)


def test_serve_raises_keyboard_interrupt_on_sigint():
    with start_serve_script() as proc:
        addr = proc.wait_listening()
        assert get(addr).body == b"ok"
        proc.signal(signal.SIGINT)
        assert proc.wait(WAIT) == 42, proc.stderr
        assert "KeyboardInterrupt raised" in proc.stdout
        assert "serve returned" not in proc.stdout


SERVE_ON_A_THREAD = textwrap.dedent("""
    import threading, yimmo
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    thread = threading.Thread(target=yimmo.serve, args=(app,),
                              kwargs=dict(bind="127.0.0.1:0"),
                              name="serving")
    thread.start()
    thread.join()
""")


def test_serve_off_the_main_thread_warns_that_signals_are_not_handled():
    # It installed no handler and said nothing: a SIGTERM ended the
    # process at once, cutting requests in flight.
    with ServerProcess([sys.executable, "-c", SERVE_ON_A_THREAD]) as proc:
        addr = proc.wait_listening()
        assert get(addr).body == b"ok"
        line = proc.wait_for_line("WARNING").string
        assert "serve() runs on thread 'serving', not the main thread: " \
               "signals are not handled" in line, line
        assert line.index("WARNING") < proc.stderr.index("Listening at")
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == -signal.SIGTERM


def test_a_started_server_says_nothing_about_signals():
    # start() serves on a thread of its own by design: no warning.
    with LogWatcher() as logs:
        with yimmo.Server(make_app(b"hi"), bind="127.0.0.1:0",
                          workers=1) as server:
            assert get(server.address).body == b"hi"
    assert not [t for t in logs.texts if "WARNING" in t], logs.texts


def test_app_signal_handler_runs_while_serving():
    with start_serve_script() as proc:
        addr = proc.wait_listening()
        proc.signal(signal.SIGUSR1)
        proc.wait_for_line("^usr1 handled$", stream="stdout", timeout=WAIT)
        assert get(addr).body == b"ok"
        assert proc.proc.poll() is None
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_stop_does_not_wait_forever_for_an_app_that_never_returns(
        yimmo_server, log_watcher):
    release = threading.Event()
    entered = threading.Event()

    def app(environ, start_response):
        entered.set()
        release.wait(30)        # far longer than the grace period
        start_response("200 OK", [("Content-Length", "0")])
        return []

    server = yimmo_server(app, workers=1)
    try:
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert entered.wait(5)
            t0 = time.monotonic()
            server.stop(timeout=0.5)
            assert time.monotonic() - t0 < 5
            assert server.stopped
    finally:
        release.set()
    log_watcher.wait_for("still running the app", timeout=5)


STUCK_APP = textwrap.dedent("""
    import sys, threading, yimmo

    def app(environ, start_response):
        print("entered", flush=True)
        threading.Event().wait(60)      # stuck far beyond any grace
        start_response("200 OK", [])
        return [b""]

    try:
        yimmo.serve(app, bind="127.0.0.1:0", workers=1,
                    graceful_timeout=60)
    except KeyboardInterrupt:
        print("KeyboardInterrupt raised", flush=True)
        sys.exit(42)
""")


def test_second_sigint_cuts_the_wait_for_a_stuck_worker_short():
    """Ctrl-C waits up to graceful_timeout for a worker stuck in the app;
    a second Ctrl-C stops waiting, even once all connections are gone and
    only the worker is left to join."""
    with ServerProcess([sys.executable, "-c", STUCK_APP]) as proc:
        addr = proc.wait_listening()
        with socket.create_connection(addr, timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            proc.wait_for_line("^entered$", stream="stdout", timeout=WAIT)
        # The client is gone: its exchange is aborted, the loop has no
        # connection left, and only the stuck worker keeps serve() busy.
        proc.signal(signal.SIGINT)
        proc.wait_for_line("Shutting down", timeout=WAIT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.proc.wait(0.5)         # still waiting for the worker
        t0 = time.monotonic()
        proc.signal(signal.SIGINT)
        assert proc.wait(WAIT) == 42, proc.stderr
        assert time.monotonic() - t0 < 5
        assert "still running the app" in proc.stderr


def test_repeated_sigterm_does_not_postpone_the_exit():
    """SIGTERM every 0.5 s while a request is stuck: the server still
    gives up on it (and exits) about graceful_timeout (3 s) after the
    first one. (The signals
    stop before that deadline: once serve() returns, SIGTERM has its
    default action again.)"""
    script = STUCK_APP.replace("graceful_timeout=60", "graceful_timeout=3")
    with ServerProcess([sys.executable, "-c", script]) as proc:
        addr = proc.wait_listening()
        with socket.create_connection(addr, timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            proc.wait_for_line("^entered$", stream="stdout", timeout=WAIT)
            t0 = time.monotonic()
            for _ in range(6):          # the last one 2.5 s in
                proc.signal(signal.SIGTERM)
                time.sleep(0.5)
            # The line logged at the deadline, not the exit (the
            # interpreter's own exit is slow under TSan): postponed by
            # each SIGTERM, it would come 5.5 s in.
            proc.wait_for_line("still running the app", timeout=WAIT)
            spent = time.monotonic() - t0
            assert proc.wait(WAIT) == 0, proc.stderr
        assert spent < 4.5, "gave up %.2fs after the first SIGTERM" % spent


def test_server_sets_up_the_log_files_it_is_given(tmp_path):
    # Server(access_log=, error_log=, log_level=) works as serve() does:
    # both files written, not left to the root logger.
    import logging
    from yimmo import _logging

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom in the app")
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    access, errors = tmp_path / "a.log", tmp_path / "e.log"
    error_logger = logging.getLogger("yimmo")
    saved = (list(error_logger.handlers), error_logger.level,
             error_logger.propagate)
    # Nothing set up before (other tests may have left access handlers).
    access_logger = logging.getLogger("yimmo.access")
    saved_access = (list(access_logger.handlers), access_logger.propagate)
    for h in saved_access[0]:
        access_logger.removeHandler(h)
    try:
        with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                          access_log=str(access), error_log=str(errors),
                          log_level="debug") as server:
            assert get(server.address, "/", timeout=WAIT).status == 200
            assert get(server.address, "/boom", timeout=WAIT).status == 500
            deadline = time.monotonic() + WAIT
            while True:
                text = access.read_text() if access.exists() else ""
                if text.count("\n") >= 2:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
        assert '"GET / HTTP/1.1" 200 2' in text
        assert '"GET /boom HTTP/1.1" 500' in text
        assert "boom in the app" in errors.read_text()
        assert error_logger.level == logging.DEBUG
    finally:
        _logging.configure_access_log(None)
        for h in list(error_logger.handlers):
            if h not in saved[0]:
                error_logger.removeHandler(h)
                h.close()
        error_logger.setLevel(saved[1])
        error_logger.propagate = saved[2]
        for h in saved_access[0]:
            access_logger.addHandler(h)
        access_logger.propagate = saved_access[1]

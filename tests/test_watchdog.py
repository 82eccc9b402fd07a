"""The request watchdog (--timeout): a request that runs longer than the
timeout in the app gets 503 (or a closed connection once its response has
begun), its worker's stack is logged, yimmo.RequestTimeout is raised in the
worker thread, and a worker stuck outside Python is replaced by a new
thread. Nothing else in the process is touched.

Apps that block "in C" wait on a threading.Event the test sets at its end,
so no thread is left sleeping after the test (an Event's wait, like
time.sleep, is one C call that an asynchronous exception cannot break).
"""

import logging
import os
import socket
import sys
import threading
import time

import pytest

import yimmo
from helpers import (LogWatcher, build_request, connect, get, read_response,
                     read_until_close, send_get, skip_if_gil_off)

SLACK = 1.0     # the watchdog's answer comes within timeout + SLACK
WAIT = 10       # bound for what must simply happen


def thread_alive(native_id):
    """Whether a thread of this process still runs (worker threads are C
    threads, not in threading.enumerate())."""
    return os.path.exists("/proc/self/task/%d" % native_id)


class App:
    """A WSGI app whose paths misbehave in the ways the watchdog handles;
    it records what ran (and on which thread) in `events`."""

    def __init__(self):
        self.events = []
        self.release = threading.Event()

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        me = threading.get_ident()
        if path == "/spin":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Body(self, me, spin_before=True)
        if path == "/stream-then-spin":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Body(self, me, spin_before=False)
        if path == "/block":
            self.events.append(("block", me, threading.get_native_id()))
            self.release.wait(WAIT * 3)
            self.events.append(("after block", me))
        if path == "/sleep":
            t0 = time.monotonic()
            try:
                time.sleep(float(environ["QUERY_STRING"]))
                self.events.append("after sleep")
            finally:
                self.events.append(("sleep finally",
                                    time.monotonic() - t0))
        if path == "/catch":
            try:
                spin()
            except yimmo.RequestTimeout:
                self.events.append(("caught", me))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"too late"]
        if path == "/work":
            # Some bytecode: a RequestTimeout left pending by an earlier
            # request would land here (at the first backward jump). Short
            # enough to stay well under the 0.5 s timeouts below on the
            # ThreadSanitizer build too (200000 rounds overran there).
            total = 0
            for i in range(20000):
                total += i
            self.events.append(("work done", me))
        if path == "/fifo":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return open(self.fifo, "rb")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(me).encode()]


def spin():
    while True:
        pass


class Body:
    """An iterable with close(); it spins forever before its first item
    (no head sent yet) or after it (head and a chunk out)."""

    def __init__(self, app, ident, spin_before):
        self.app = app
        self.ident = ident
        self.spin_before = spin_before

    def __iter__(self):
        try:
            if not self.spin_before:
                yield b"first"
            spin()
            yield b"never"
        finally:
            self.app.events.append(("finally", self.ident))

    def close(self):
        self.app.events.append(("close", self.ident))


@pytest.fixture
def serve():
    servers = []
    apps = []

    def start(**options):
        app = App()
        server = yimmo.Server(app, bind="127.0.0.1:0", **options)
        server.start()
        servers.append(server)
        apps.append(app)
        return server, app

    yield start
    for app in apps:
        app.release.set()
    for server in servers:
        server.stop(timeout=5)


def timed_get(server, target, timeout=WAIT):
    t0 = time.monotonic()
    resp = get(server.address, target, timeout=timeout)
    return resp, time.monotonic() - t0


def test_python_loop_gets_503_and_the_same_worker_serves_next(serve,
                                                              log_watcher):
    server, app = serve(workers=1, timeout=1)
    before, _ = timed_get(server, "/")
    worker = int(before.body)
    resp, took = timed_get(server, "/spin")
    assert resp.status == 503
    assert resp.headers.get("connection") == "close"
    assert 0.9 <= took <= 1 + SLACK
    text = log_watcher.wait_for("request timeout", "GET /spin HTTP/1.1",
                                "worker 0", "RequestTimeout raised")
    assert "WARNING" in text
    # The stack, as faulthandler writes it: file, line and function.
    # (the loop's line, `while` or `pass` depending on the Python)
    first = spin.__code__.co_firstlineno
    assert any('test_watchdog.py", line %d in spin' % n in text
               for n in (first + 1, first + 2)), text
    assert "in __iter__" in text
    # The next request runs on the same worker: the loop was broken, and
    # the iterable's finally and close() ran.
    after, _ = timed_get(server, "/")
    assert after.status == 200
    assert int(after.body) == worker
    assert ("finally", worker) in app.events
    assert ("close", worker) in app.events
    assert not any("error handling request" in t for t in log_watcher.texts)
    assert not server._core.recycle_requested


def test_worker_blocked_in_c_is_replaced(serve, log_watcher):
    server, app = serve(workers=1, timeout=0.5)
    worker = int(get(server.address, "/").body)
    resp, took = timed_get(server, "/block")
    assert resp.status == 503
    assert took <= 0.5 + SLACK
    log_watcher.wait_for("request timeout", "GET /block")
    log_watcher.wait_for("worker 0 is still in", "started in its place")
    # A new thread answers while the first one is still blocked.
    resp, took = timed_get(server, "/")
    assert resp.status == 200
    assert int(resp.body) != worker
    assert took < 0.5
    [(_, blocked, native_id)] = app.events
    assert blocked == worker
    assert thread_alive(native_id)
    # Released, the stuck thread leaves the app (its RequestTimeout lands
    # as soon as it runs Python again) and retires: the pool is back to
    # its size.
    app.release.set()
    deadline = time.monotonic() + WAIT
    while thread_alive(native_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not thread_alive(native_id)
    assert ("after block", worker) not in app.events
    for _ in range(3):
        assert get(server.address, "/").status == 200
    assert not server._core.recycle_requested


def test_time_sleep_is_not_interrupted_but_the_exception_follows(
        serve, log_watcher):
    server, app = serve(workers=1, timeout=0.5)
    resp, took = timed_get(server, "/sleep?3")
    assert resp.status == 503
    assert took <= 0.5 + SLACK
    # The replacement thread serves meanwhile.
    log_watcher.wait_for("started in its place")
    assert get(server.address, "/").status == 200
    deadline = time.monotonic() + WAIT
    while not app.events and time.monotonic() < deadline:
        time.sleep(0.05)
    # time.sleep ran its full course (no bytecode runs inside it); the
    # exception came at the next bytecode, so the line after it never ran
    # while the finally block did.
    [(what, slept)] = app.events
    assert what == "sleep finally"
    assert slept >= 2.9


def test_response_begun_then_loop_closes_connection(serve, log_watcher):
    server, app = serve(workers=1, timeout=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/stream-then-spin"))
        t0 = time.monotonic()
        data = read_until_close(sock, WAIT)
        took = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in data.lower()
    assert b"first" in data
    assert not data.endswith(b"0\r\n\r\n")     # cut short, visibly
    assert 0.9 <= took <= 1 + SLACK
    log_watcher.wait_for("GET /stream-then-spin", "connection closed")
    assert get(server.address, "/").status == 200


def test_other_requests_are_untouched(serve):
    server, app = serve(workers=2, timeout=1)
    results = []

    def spinner():
        results.append(get(server.address, "/spin", timeout=WAIT).status)

    t = threading.Thread(target=spinner)
    t.start()
    # Meanwhile, on one keep-alive connection, requests go on: until the
    # spinner has its 503 (the timeout, 1 s, and the RequestTimeout
    # raised in its worker), and 10 more after that.
    with connect(server.address, WAIT) as sock:
        deadline = time.monotonic() + WAIT
        n = after = 0
        while n < 10 or after < 10:
            assert time.monotonic() < deadline, (n, after, results)
            sock.sendall(build_request("GET", "/work"))
            resp = read_response(sock)
            assert resp.status == 200
            n += 1
            if not t.is_alive():
                after += 1
    t.join(WAIT)
    assert results == [503]
    assert n >= 10


def test_timeout_zero_turns_it_off(serve, log_watcher):
    server, app = serve(workers=1, timeout=0)
    resp, took = timed_get(server, "/sleep?1.2")
    assert resp.status == 200
    assert took >= 1.2
    assert app.events[0] == "after sleep"
    assert not any("timeout" in t for t in log_watcher.texts)


def test_past_the_cap_a_recycle_is_requested(serve, log_watcher):
    server, app = serve(workers=1, timeout=0.5)
    assert server._core.recycle_requested is False
    assert get(server.address, "/block").status == 503
    log_watcher.wait_for("worker 0 is still in", "started in its place")
    assert not server._core.recycle_requested
    # The replacement gets stuck too: no third thread for one worker.
    assert get(server.address, "/block").status == 503
    log_watcher.wait_for("no replacement thread is left",
                         "asking for this process to be recycled")
    assert server._core.recycle_requested is True
    # Once one comes back, it serves again (it was not replaced).
    app.release.set()
    resp, took = timed_get(server, "/")
    assert resp.status == 200


def test_stop_while_workers_are_stuck_keeps_the_grace_deadline(
        serve, log_watcher):
    server, app = serve(workers=1, timeout=0.5)
    assert get(server.address, "/block").status == 503
    deadline = time.monotonic() + WAIT
    while threads_blocked(app) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    log_watcher.wait_for("worker 0 is still in", "started in its place")
    assert get(server.address, "/block").status == 503
    t0 = time.monotonic()
    server.stop(timeout=1)
    took = time.monotonic() - t0
    assert took < 1 + SLACK
    assert server.stopped
    assert server._core.abandoned_workers >= 1


def threads_blocked(app):
    return sum(1 for e in app.events if e[0] == "block")


def test_app_that_catches_the_timeout_and_returns(serve, log_watcher):
    server, app = serve(workers=1, timeout=0.5)
    resp, _ = timed_get(server, "/catch")
    assert resp.status == 503
    assert resp.body == b"Service Unavailable\n"
    # Its late response is dropped, and nothing is logged as an error.
    resp = get(server.address, "/work")
    assert resp.status == 200
    worker = int(get(server.address, "/").body)
    assert ("caught", worker) in app.events
    assert ("work done", worker) in app.events
    assert not any("ERROR" in t for t in log_watcher.texts)


def test_pending_exception_never_lands_in_the_next_request(serve,
                                                           log_watcher,
                                                           tmp_path):
    # The response iterable is a file reading a FIFO: the worker blocks in
    # C (no bytecode runs in it) when the exception is raised, and leaves
    # the request without running any bytecode (the file's lines and
    # close() are C too). The exception must be cleared then, not kept
    # for the next request, which runs Python.
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)   # (a reader's open won't block)
    server, app = serve(workers=1, timeout=0.5)
    server.app.fifo = fifo
    try:
        resp = get(server.address, "/fifo")
        assert resp.status == 503
        log_watcher.wait_for("GET /fifo", "answered 503",
                             "RequestTimeout raised")
        os.write(writer, b"late line\n")
    finally:
        os.close(writer)
    for _ in range(3):
        resp = get(server.address, "/work")
        assert resp.status == 200
    assert sum(1 for e in app.events if e[0] == "work done") == 3
    assert not any("ERROR" in t for t in log_watcher.texts)


def test_access_log_has_the_503(serve):
    # The app had called start_response("200 OK") before it spun: the
    # client got the watchdog's 503, and so says the access log. (Watched
    # on yimmo.access itself: once logging is configured it does not
    # propagate to "yimmo".)
    logger = logging.getLogger("yimmo.access")
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        with LogWatcher("yimmo.access") as watcher:
            server, app = serve(workers=1, timeout=0.5, access_log="-")
            assert get(server.address, "/spin").status == 503
            # With its 20 bytes ("Service Unavailable\n").
            watcher.wait_for("yimmo.access", '"GET /spin HTTP/1.1" 503 20 ')
    finally:
        logger.setLevel(old)


# -- Review fixes: each test below failed before its fix. --------------------


def ntasks():
    """Threads of this process, C threads included."""
    return len(os.listdir("/proc/self/task"))


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


STOP_FROM_WATCHDOG_LOG = r"""
import logging, os, sys, threading
import yimmo
from helpers import get

server = None

class StopOnTimeout(logging.Handler):
    def emit(self, record):
        if "request timeout" in record.getMessage():
            server.stop(1)
            # One string per print: the arguments of two threads' prints
            # interleave (seen on 3.13t: "stop returned onstatus  ...").
            print("stop returned on %s" % threading.current_thread().name,
                  flush=True)

logger = logging.getLogger("yimmo")
logger.addHandler(StopOnTimeout())
logger.setLevel(logging.WARNING)
logger.propagate = False

def app(environ, start_response):
    while True:
        pass

server = yimmo.Server(app, bind="127.0.0.1:0", workers=1, timeout=0.2)
server.start()
print("status %s" % get(server.address, "/", timeout=5).status, flush=True)
server._thread.join(5)
print("serve thread alive %s" % server._thread.is_alive(), flush=True)
os._exit(0)
"""


def test_stop_from_a_log_handler_of_the_watchdog(tmp_path):
    # The watchdog's reports run the app's log handlers on the watchdog
    # thread; a stop() there must only begin the stop (the stop joins that
    # thread), as from a worker. A deadlock cannot be undone in-process:
    # the server runs in a child, bounded by a timeout.
    import subprocess
    import sys
    script = tmp_path / "stop_from_log.py"
    script.write_text(STOP_FROM_WATCHDOG_LOG)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__))] +
        [p for p in sys.path if p])
    proc = subprocess.run([sys.executable, str(script)], env=env,
                          capture_output=True, text=True, timeout=30)
    assert "status 503" in proc.stdout, proc.stderr
    assert "stop returned" in proc.stdout
    assert "serve thread alive False" in proc.stdout, proc.stdout


class SlowHandler(logging.Handler):
    """A log handler that takes `seconds` of pure Python per record, so
    that a RequestTimeout raised meanwhile would land in it."""

    def __init__(self, seconds):
        super().__init__(logging.DEBUG)
        self.seconds = seconds
        self.emitted = []

    def emit(self, record):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            pass
        self.emitted.append(record.getMessage())


def test_timeout_stays_out_of_yimmos_error_logging(log_watcher, capfd):
    # The app fails at once; yimmo's logging of its error takes longer
    # than the timeout. That time is yimmo's, not the app's: the client
    # gets the 500, the error is logged whole, nothing is timed out.
    def app(environ, start_response):
        raise ValueError("the app's real bug")

    handler = SlowHandler(0.4)
    logger = logging.getLogger("yimmo")
    logger.addHandler(handler)
    server = yimmo.Server(app, bind="127.0.0.1:0", workers=1, timeout=0.1)
    server.start()
    try:
        resp = get(server.address, "/", timeout=WAIT)
        assert resp.status == 500
        text = log_watcher.wait_for("error handling request")
        assert "ValueError: the app's real bug" in text
        assert wait_until(lambda: handler.emitted)
        time.sleep(0.5)         # a late overrun report would come by now
    finally:
        server.stop(timeout=5)
        logger.removeHandler(handler)
    assert handler.emitted == ["error handling request: GET /"]
    assert not any("request timeout" in t for t in log_watcher.texts)
    assert "RequestTimeout" not in capfd.readouterr().err


def test_a_retiring_worker_is_not_replaced_twice(log_watcher):
    # Worker 0 is stuck in /A and replaced; an exchange queued to it (/Q)
    # runs when it comes back, and gets stuck too. Its place is taken
    # already: no second replacement, and once everything returns the
    # pool is back to `workers` threads.
    ev_a, ev_q = threading.Event(), threading.Event()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/A":
            ev_a.wait(WAIT * 3)
        elif path == "/Q":
            ev_q.wait(WAIT * 3)
        elif path == "/S":
            time.sleep(1.2)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=2, timeout=0.3)
    clients = []

    def client(path):
        t = threading.Thread(target=get, args=(server.address, path, (),
                                               WAIT * 2), daemon=True)
        t.start()
        clients.append(t)

    server.start()
    try:
        time.sleep(0.2)
        base = ntasks()     # the server's threads, two workers among them
        client("/A")
        time.sleep(0.05)
        for _ in range(3):
            client("/S")
            time.sleep(0.05)
        time.sleep(0.2)
        client("/Q")
        log_watcher.wait_for("worker 0 is still in", "GET /A",
                             "started in its place")
        ev_a.set()
        text = log_watcher.wait_for("is still in", "GET /Q")
        ev_q.set()
        for t in clients:
            t.join(WAIT)
        assert wait_until(lambda: ntasks() <= base, timeout=3), \
            (ntasks(), base)
        # (a /S may be caught stuck too, on worker 1: the sleep and the
        # stuck delay are close)
        assert sum("worker 0 is still in" in t and "started in its place"
                   in t for t in log_watcher.texts) == 1
        if "worker 0 is still in" in text:
            # /Q ran on the retiring worker 0 (the usual case): its place
            # is taken, so it is only logged. (Under load /Q can be
            # stolen by another worker first; the thread count above is
            # what must hold either way.)
            assert "replaced already" in text
    finally:
        ev_a.set()
        ev_q.set()
        server.stop(timeout=5)


def test_stuck_worker_replaced_once_a_slot_frees(log_watcher):
    # workers=1: A stuck, B takes its place; B stuck with no replacement
    # left. When A returns and retires, its slot must serve in B's place
    # (before the fix nothing served until B came back).
    ev_a, ev_b = threading.Event(), threading.Event()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/A":
            ev_a.wait(WAIT * 3)
        elif path == "/B":
            ev_b.wait(WAIT * 3)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=1, timeout=0.2)
    server.start()
    try:
        assert get(server.address, "/A", timeout=WAIT).status == 503
        log_watcher.wait_for("worker 0 is still in", "started in its place")
        assert get(server.address, "/B", timeout=WAIT).status == 503
        log_watcher.wait_for("worker 1 is still in",
                             "no replacement thread is left")
        ev_a.set()
        log_watcher.wait_for("worker 1 is still in", "has retired",
                             "started in its place")
        resp, took = timed_get(server, "/", timeout=3)
        assert resp.status == 200
        assert took < 1
    finally:
        ev_a.set()
        ev_b.set()
        server.stop(timeout=5)


def test_stuck_report_message_is_not_leaked(monkeypatch):
    # Every message handed to the log function is released afterwards: a
    # captured one is referenced by the capture list (and getrefcount's
    # argument) only, the stuck-worker report as the overrun report.
    import sys
    import yimmo._server
    msgs = []
    monkeypatch.setattr(yimmo._server, "_log_warning", msgs.append)
    release = threading.Event()

    def is_stuck(msg):
        return msg.startswith("worker 0 is still in ")

    def app(environ, start_response):
        release.wait(WAIT * 3)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=1, timeout=0.2)
    server.start()
    try:
        assert get(server.address, "/", timeout=WAIT).status == 503
        assert wait_until(lambda: any(is_stuck(m) for m in msgs))
    finally:
        release.set()
        server.stop(timeout=5)
    # The stuck report by its opening words: on a free-threaded build the
    # overrun report says why it has no stack ("... of a worker still in
    # the app ..."), which a bare "still in" also matched.
    assert (sum(m.startswith("request timeout") for m in msgs) == 1 and
            sum(is_stuck(m) for m in msgs) == 1), msgs
    [overrun] = [m for m in msgs if m.startswith("request timeout")]
    [stuck] = [m for m in msgs if is_stuck(m)]
    assert sys.getrefcount(overrun) == 3    # msgs, the name, the argument
    assert sys.getrefcount(stuck) == 3



def test_a_trace_function_left_by_a_timed_out_request_does_no_harm():
    # A request that set a trace function (a coverage tool, a debugger)
    # and overran: on 3.11, clearing an exception that was never pending
    # left the interpreter's "async exception" signal set, and a traced
    # thread then spun at every function entry, so each later request on
    # that worker ran into the timeout too.
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/trace":
            def tracer(frame, event, arg):
                return tracer
            sys.settrace(tracer)
            while True:
                pass
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                      timeout=0.5) as server:
        assert get(server.address, "/trace", timeout=WAIT).status == 503
        for _ in range(3):
            t0 = time.monotonic()
            assert get(server.address, "/", timeout=WAIT).status == 200
            assert time.monotonic() - t0 < 0.4


# A RequestTimeout still pending when the exchange ends must not land in
# the log function that writes the overrun line (free-threaded builds write
# it then): it did, as an "Exception ignored in _log_warning".
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_cut_response_resets_a_slow_reader_at_once(log_watcher):
    # The app streams faster than its client reads, then overruns: what is
    # still queued is dropped and the connection reset, so the client
    # learns at once that the response is incomplete (before: the cut-off
    # body went on trickling out until the write timeout).
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/ok":
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            chunk = b"x" * 65536
            while True:
                yield chunk
        return body()

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1, timeout=0.5,
                      write_timeout=30) as server:
        with connect(server.address, WAIT) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(build_request("GET", "/"))
            # The watchdog has cut it once it reports so.
            log_watcher.wait_for("request timeout", "GET / HTTP/1.1",
                                 "connection closed (the response had "
                                 "begun)", timeout=WAIT)
            t0 = time.monotonic()
            ended = None
            while time.monotonic() - t0 < 3:
                try:
                    data = sock.recv(16384)
                except ConnectionResetError:
                    ended = "reset"
                    break
                if not data:
                    ended = "eof"
                    break
                time.sleep(0.05)    # a slow reader: 320 KB/s
            assert ended is not None, "the cut response was still arriving"
        assert get(server.address, "/ok", timeout=WAIT).status == 200


@skip_if_gil_off
def test_requests_queued_to_stuck_workers_run_in_order_on_the_spares():
    # Both workers stuck in C with requests queued to each: the threads
    # started in their places take them from the retired workers' queues,
    # oldest first (take_oldest looks at retired slots, not at spares).
    gates = {"/a": threading.Event(), "/b": threading.Event()}
    started = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        started.append(path)
        if path in gates:
            gates[path].wait(WAIT * 3)
        start_response("200 OK", [("Content-Length", str(len(path)))])
        return [path.encode()]

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=2, timeout=0.3,
                          max_pending=16)
    server.start()
    socks = []
    try:
        for path in ("/a", "/b"):
            socks.append(send_get(server.address, path, WAIT * 2, started))
        later = ["/%d" % i for i in range(6)]
        for path in later:
            socks.append(send_get(server.address, path, WAIT * 2))
            time.sleep(0.03)
        for s in socks[:2]:
            assert read_response(s).status == 503
        for s, path in zip(socks[2:], later):
            resp = read_response(s)
            assert (resp.status, resp.body) == (200, path.encode())
        assert [p for p in started if p not in gates] == later
    finally:
        for gate in gates.values():
            gate.set()
        for s in socks:
            s.close()
        server.stop(timeout=5)

"""Edges found by trying to break the server from several threads at once
(the way free-threaded CPython runs them truly in parallel; each test runs
on every build): Server objects started and stopped concurrently, and what
an app's own threads do with the objects of a request."""

import logging
import threading
import time

import yimmo
from helpers import build_request, connect, read_response, \
    read_until_close


def ok_app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def test_stop_racing_start_neither_raises_nor_hangs():
    # stop() on one thread while start() runs on another: stop() used to
    # find the server thread recorded but not started yet and fail with
    # RuntimeError("cannot join thread before it is started").
    errors = []
    for _ in range(60):
        server = yimmo.Server(ok_app, bind="127.0.0.1:0", workers=1)
        barrier = threading.Barrier(4, timeout=10)

        def starter():
            barrier.wait()
            try:
                server.start()
            except RuntimeError as e:
                # Another starter won, or a stopper came first (the
                # listeners are closed then: start() must not pretend).
                if "already started" not in str(e) and \
                        "stopped before it started" not in str(e):
                    errors.append(("start", repr(e)))
            except Exception as e:      # noqa: BLE001 - collected
                errors.append(("start", repr(e)))

        def stopper():
            barrier.wait()
            try:
                server.stop(timeout=1)
            except Exception as e:      # noqa: BLE001 - collected
                errors.append(("stop", repr(e)))

        threads = [threading.Thread(target=f)
                   for f in (starter, starter, stopper, stopper)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
            assert not t.is_alive(), "start/stop hung"
        server.stop(timeout=1)
        assert server.stopped
    assert errors == []


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_error_log_holds_its_own_references_to_environ_values():
    # The error line names the request from environ, which is the app's:
    # formatting REQUEST_METHOD (a str subclass here; on a free-threaded
    # build simply a thread of the app writing to environ meanwhile) may
    # replace RAW_URI. The server used to hold RAW_URI borrowed, and
    # logged whatever string took its freed memory.
    decoys = []
    seen = []

    def app(environ, start_response):
        class Method(str):
            def __str__(self):
                environ["RAW_URI"] = "/replaced"
                # Same-sized strings: one takes the freed slot.
                decoys.append(["v" * 150 + "%03d" % i for i in range(200)])
                return "GET"
        # Made at run time: a constant would stay alive in the code.
        environ["RAW_URI"] = "/" + "u" * 150 + str(len(seen))
        seen.append(environ["RAW_URI"][-3:])
        environ["REQUEST_METHOD"] = Method("GET")
        raise ValueError("boom")

    records = _Records()
    logger = logging.getLogger("yimmo.error")
    logger.addHandler(records)
    try:
        with yimmo.Server(app, bind="127.0.0.1:0", workers=1) as server:
            for _ in range(5):
                with connect(server.address) as sock:
                    sock.sendall(build_request("GET", "/"))
                    assert read_response(sock).status == 500
    finally:
        logger.removeHandler(records)
    lines = [line for line in records.lines
             if line.startswith("error handling request")]
    assert len(lines) == 5, records.lines
    for n, line in enumerate(lines):
        assert line in ("error handling request: GET /" + "u" * 150 + str(n),
                        "error handling request: GET /replaced"), line[:80]


def test_start_response_from_two_threads_at_once_accepts_one():
    # Two threads of the app call start_response() at once (no exc_info)
    # while a third changes the headers list they pass. Exactly one call
    # may succeed. On a free-threaded build, copying the contended list
    # suspended start_response's critical section between its "called
    # already?" check and setting `called`, and both calls succeeded.
    outcomes = []

    def app(environ, start_response):
        headers = [("X-A", "1")] * 50
        done = threading.Event()
        barrier = threading.Barrier(2, timeout=10)
        accepted = []

        def mutate():
            while not done.is_set():
                headers.append(("X-B", "2"))
                headers.pop()

        def call(status):
            barrier.wait()
            try:
                start_response(status, headers)
                accepted.append(status)
            except RuntimeError:
                pass

        mutator = threading.Thread(target=mutate)
        mutator.start()
        callers = [threading.Thread(target=call, args=(s,))
                   for s in ("200 OK", "201 Created")]
        for t in callers:
            t.start()
        for t in callers:
            t.join(10)
        done.set()
        mutator.join(10)
        outcomes.append(len(accepted))
        return [b"x"]

    with yimmo.Server(app, bind="127.0.0.1:0", workers=2) as server:
        for _ in range(200):
            with connect(server.address) as sock:
                sock.sendall(build_request("GET", "/"))
                assert read_response(sock).status in (200, 201)
    assert len(outcomes) == 200
    assert [n for n in outcomes if n != 1] == []


def test_write_from_a_thread_while_file_wrapper_reads_sends_one_head(
        tmp_path):
    # The app returns a wsgi.file_wrapper; while the server runs the
    # file-like object's code, a thread of the app calls write(). The
    # server once went on to send the file with a head of its own: two
    # status lines in one response, on every build. (It asked fileno()
    # then; a file-like object that is not one of open()'s binary files
    # is now iterated, and never asked: hostile review s20.)
    path = tmp_path / "f"
    path.write_bytes(b"F" * 100)
    asked_fileno = []

    def app(environ, start_response):
        write = start_response("200 OK", [])
        f = open(path, "rb")
        asked = threading.Event()

        class SlowFile:
            def fileno(self):
                asked_fileno.append(1)
                return f.fileno()

            def tell(self):
                return f.tell()

            def read(self, n):
                if not asked.is_set():
                    asked.set()
                    time.sleep(0.2)
                return f.read(n)

            def close(self):
                f.close()

        def writer():
            asked.wait(5)
            write(b"WRITTEN")

        threading.Thread(target=writer).start()
        return environ["wsgi.file_wrapper"](SlowFile())

    with yimmo.Server(app, bind="127.0.0.1:0", workers=2) as server:
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/", [("Connection", "close")]))
            data = read_until_close(sock)
    assert data.count(b"HTTP/1.1 ") == 1, data
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"7\r\nWRITTEN\r\n64\r\n" + b"F" * 100 + b"\r\n0\r\n\r\n"
    assert asked_fileno == []

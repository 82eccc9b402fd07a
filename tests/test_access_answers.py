"""Access-log lines for the requests the server answers itself, without the
app: a malformed head's 400, a 408 for a head that never completed, 413,
414, 431 and 501, a 503 for a connection that waited too long for room.
The loop thread writes those answers and cannot log (it never touches
Python); it leaves a record of each for a worker, which logs it between
exchanges through the same format as the app's requests. The same way
the error log learns of a response the loop cut because its file ended
early.

Real servers on 127.0.0.1 port 0; every wait is bounded.
"""

import logging
import socket
import sys
import threading
import time

import pytest

import yimmo
from helpers import (build_request, connect, raw_request, read_response,
                     wait_until)
from test_access_format import wait_lines
from yimmo import _logging

WAIT = 10


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def access_file(tmp_path):
    """The "yimmo.access" logger writing to a file, as --access-log FILE
    sets it up; off again afterwards."""
    path = str(tmp_path / "access.log")
    _logging.configure_access_log(path)
    yield path
    _logging.configure_access_log(None)


def lines_of(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def held_app(release, only=None):
    """An app that holds its worker until release is set (only for the
    path `only`, when given), then answers "ok"."""
    def app(environ, start_response):
        if only is None or environ["PATH_INFO"] == only:
            release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    return app


def occupy(server):
    """The connection of a GET /busy, which the one worker is now
    running."""
    busy = connect(server.address)
    busy.sendall(build_request("GET", "/busy"))
    time.sleep(0.2)
    return busy


def status_of(data):
    return int(data.split(b" ", 2)[1])


def answered(access_file, data, fmt='%(h)s "%(r)s" %(s)s %(b)s', **options):
    """Send data on one connection to a fresh server, return (status, the
    one access line)."""
    options.setdefault("workers", 1)
    with yimmo.Server(app, bind="127.0.0.1:0", access_log=access_file,
                      access_log_format=fmt, **options) as server:
        status = status_of(raw_request(server.address, data))
        line = wait_lines(access_file, 1)
        time.sleep(0.1)         # no second line follows
        assert lines_of(access_file) == line
    return status, line[0]


def test_a_malformed_head_has_the_combined_line_of_what_it_said(
        access_file):
    """The request line, the referer and the user agent come from what
    the client sent, in the default (Combined) format."""
    status, line = answered(
        access_file,
        b"GET /x?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/1.0\r\n"
        b"Referer: http://r/\r\nNo colon here\r\n\r\n", fmt=None)
    assert status == 400
    assert line.startswith('127.0.0.1 - - [') and \
        line.endswith('] "GET /x?q=1 HTTP/1.1" 400 12 "http://r/" '
                      '"ua/1.0"'), line


def test_the_atoms_of_a_refused_request(access_file):
    fmt = ("%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%({x-trace}i)s|"
           "%({content-length}i)s|%(h)s|%({remote_port}e)s")
    status, line = answered(
        access_file,
        b"POST /p/a?x=1 HTTP/1.1\r\nHost: h\r\nX-Trace: t-1\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        fmt=fmt)
    assert status == 400
    method, path, query, proto, code, length, trace, clen, host, port = \
        line.split("|")
    assert (method, path, query, proto, code, length, trace, clen,
            host) == ("POST", "/p/a", "x=1", "HTTP/1.1", "400", "12",
                      "t-1", "5", "127.0.0.1"), line
    assert 1024 <= int(port) < 65536


def test_binary_garbage_is_escaped_and_logged(access_file):
    status, line = answered(access_file, b"\x00\x01\xff\x1b[31m\r\n\r\n")
    assert status == 400
    assert line == '127.0.0.1 "\\x00\\x01\\xff\\x1b[31m - -" 400 12', line


def test_a_head_request_refused_has_no_body_bytes(access_file):
    status, line = answered(
        access_file, b"HEAD /h HTTP/1.1\r\nHost: h\r\nBad\r\n\r\n")
    assert status == 400
    assert line == '127.0.0.1 "HEAD /h HTTP/1.1" 400 -', line


def test_a_long_uri_is_logged_in_part(access_file):
    """414: the line keeps at most 8 KB of what the client sent."""
    status, line = answered(
        access_file, b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n",
        limit_request_line=4094)
    assert status == 414
    assert line.startswith('127.0.0.1 "GET /aaaa') and \
        line.endswith(' -" 414 13'), line[:60] + "..." + line[-40:]
    assert 8000 < len(line) < 8300


def test_too_many_headers_431(access_file):
    head = b"GET /many HTTP/1.1\r\n" + b"".join(
        b"X-%d: v\r\n" % i for i in range(20)) + b"\r\n"
    status, line = answered(access_file, head, limit_request_fields=10)
    assert status == 431
    assert line.startswith('127.0.0.1 "GET /many HTTP/1.1" 431 '), line


def test_an_unknown_transfer_coding_501(access_file):
    status, line = answered(
        access_file, b"POST /te HTTP/1.1\r\nHost: h\r\n"
        b"Transfer-Encoding: gzip\r\n\r\n")
    assert status == 501
    assert line.startswith('127.0.0.1 "POST /te HTTP/1.1" 501 '), line


def test_a_body_over_the_limit_413(access_file):
    status, line = answered(
        access_file, b"POST /big HTTP/1.1\r\nHost: h\r\n"
        b"Content-Length: 2000\r\n\r\n", max_body_size=1000)
    assert status == 413
    assert line.startswith('127.0.0.1 "POST /big HTTP/1.1" 413 '), line


def test_a_buffered_chunked_body_over_the_limit_413(access_file):
    """A small chunked body is read whole before a worker sees it: past
    the limit the loop answers for the exchange it never dispatched."""
    status, line = answered(
        access_file, b"POST /chunks HTTP/1.1\r\nHost: h\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + b"x" * 2048 +
        b"\r\n0\r\n\r\n", max_body_size=1000)
    assert status == 413
    assert line.startswith('127.0.0.1 "POST /chunks HTTP/1.1" 413 '), line


def test_empty_lines_before_the_request_are_skipped(access_file):
    """The exchange's copy of the head keeps the empty lines the parser
    skipped before it when a CR came in a read of its own: the line read
    "- - -" (C review s27)."""
    with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                      max_body_size=1000, access_log=access_file,
                      access_log_format='"%(r)s" %(s)s') as server:
        with connect(server.address) as sock:
            sock.sendall(b"\r")
            time.sleep(0.2)
            sock.sendall(b"\n\r\nPOST /chunks HTTP/1.1\r\nHost: h\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n800\r\n" +
                         b"x" * 2048 + b"\r\n0\r\n\r\n")
            assert read_response(sock).status == 413
        lines = wait_lines(access_file, 1)
    assert lines == ['"POST /chunks HTTP/1.1" 413'], lines


def test_the_time_is_when_it_was_answered(access_file):
    """Logged by a worker once it is free, the line says when the server
    answered: it said when the worker got round to it (6 s late in the
    review's case; hostile and C review s27)."""
    release = threading.Event()
    app = held_app(release)

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                      access_log=access_file,
                      access_log_format="%(t)s %(U)s %(s)s") as server:
        busy = occupy(server)
        answered_at = time.time()
        assert status_of(raw_request(server.address,
                                     b"GET /bad HTTP/1.1\r\nBad\r\n\r\n")) \
            == 400
        time.sleep(2.5)
        release.set()
        assert read_response(busy).status == 200
        busy.close()
        lines = wait_lines(access_file, 2)
    bad = [line for line in lines if "/bad" in line][0]
    stamp = time.mktime(time.strptime(bad.split("]")[0][1:],
                                      "%d/%b/%Y:%H:%M:%S %z"))
    # (mktime reads it as local time: the server writes local time too.)
    assert abs(stamp - answered_at) <= 1.5, (bad, answered_at)


def test_a_backlog_of_lines_does_not_hold_up_requests(access_file):
    """A worker logs the records in batches of 32 between exchanges: a
    request queued behind a backlog of 1,000 runs after one batch, not
    after the whole backlog (hostile review s27: a flood's lines, all
    logged at once, held the app up for seconds)."""
    release = threading.Event()
    app = held_app(release, "/busy")

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                      access_log=access_file,
                      access_log_format="%(U)s %(s)s") as server:
        busy = occupy(server)
        for i in range(1000):
            raw_request(server.address, b"GET /bad%d HTTP/1.1\r\nB\r\n\r\n"
                        % i)
        queued = connect(server.address)
        queued.sendall(build_request("GET", "/queued"))
        time.sleep(0.2)
        release.set()
        assert read_response(busy).status == 200
        assert read_response(queued).status == 200
        busy.close()
        queued.close()
        lines = wait_lines(access_file, 1002)
    assert lines[0] == "/busy 200", lines[:3]
    assert lines.index("/queued 200") <= 1 + 2 * 32, lines.index(
        "/queued 200")
    bad = [line for line in lines if line.startswith("/bad")]
    assert bad == ["/bad%d 400" % i for i in range(1000)], bad[:3]


def test_a_head_that_never_completes_408(access_file):
    with yimmo.Server(app, bind="127.0.0.1:0", workers=1, header_timeout=0.3,
                      access_log=access_file,
                      access_log_format='"%(r)s" %(s)s') as server:
        with connect(server.address) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\n")
            assert read_response(sock).status == 408
        lines = wait_lines(access_file, 1)
    assert lines == ['"GET /slow HTTP/1.1" 408'], lines


def test_a_connection_that_waited_too_long_for_room_503(access_file):
    """With the server full, a new request waits unparsed; past
    queue_timeout the loop answers 503 (it never reached a worker)."""
    release = threading.Event()
    app = held_app(release)

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1, max_pending=0,
                      queue_timeout=0.3, access_log=access_file,
                      access_log_format='"%(r)s" %(s)s') as server:
        busy = occupy(server)
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/waits"))
            assert read_response(sock).status == 503
        release.set()
        assert read_response(busy).status == 200
        busy.close()
        lines = wait_lines(access_file, 2)
    assert sorted(lines) == ['"GET /busy HTTP/1.1" 200',
                             '"GET /waits HTTP/1.1" 503'], lines


def test_no_access_log_no_line_and_no_record(tmp_path, capfd):
    """Without an access log nothing is kept for the answers: a flood of
    them leaves no warning of lines dropped either."""
    with yimmo.Server(app, bind="127.0.0.1:0", workers=1) as server:
        for _ in range(YMO_ANSWERS_MAX + 50):
            status_of(raw_request(server.address, b"BAD\r\n\r\n"))
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/"))
            assert read_response(sock).status == 200
    out, err = capfd.readouterr()
    assert "no access log line" not in err, err


YMO_ANSWERS_MAX = 1024      # server.h


def test_a_flood_beyond_the_bound_is_counted(access_file, log_watcher):
    """While the only worker is busy, the records wait for it: at most
    1,024; the rest are counted, and one warning says how many."""
    release = threading.Event()
    app = held_app(release)

    extra = 30
    with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                      access_log=access_file,
                      access_log_format="%(s)s %(U)s") as server:
        busy = occupy(server)
        for i in range(YMO_ANSWERS_MAX + extra):
            data = raw_request(server.address,
                               b"GET /bad%d HTTP/1.1\r\nBad\r\n\r\n" % i)
            assert status_of(data) == 400
        time.sleep(0.2)
        assert lines_of(access_file) == []      # the worker is busy
        release.set()
        assert read_response(busy).status == 200
        busy.close()
        lines = wait_lines(access_file, YMO_ANSWERS_MAX + 1)
        time.sleep(0.2)
        lines = lines_of(access_file)
    bad = [line for line in lines if line.startswith("400 ")]
    # Logged oldest first, the first 1,024 sent.
    assert bad == ["400 /bad%d" % i for i in range(YMO_ANSWERS_MAX)], \
        bad[:3] + bad[-3:]
    assert "200 /busy" in lines
    # (log_watcher, not caplog: an earlier test in the same process may
    # have stopped "yimmo" propagating, as configure_logging does.)
    assert log_watcher.wait_for(
        "WARNING", "%d request(s) the server answered itself" % extra)
    assert len([t for t in log_watcher.texts
                if "the server answered itself" in t]) == 1


def test_a_failing_log_handler_does_not_stop_the_server(access_file):
    """A handler that raises costs its line (reported as unraisable), not
    the worker that logs it."""
    class Boom(logging.Handler):
        def emit(self, record):
            raise RuntimeError("handler broke")

    access = logging.getLogger("yimmo.access")
    with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                      access_log=access_file) as server:
        unraisable = []
        # Set here, not by a fixture: pytest sets its own for the test's
        # call.
        hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
        access.addHandler(Boom())
        try:
            for _ in range(3):
                assert status_of(raw_request(server.address,
                                             b"BAD\r\n\r\n")) == 400
            wait_lines(access_file, 3)
            with connect(server.address) as sock:
                sock.sendall(build_request("GET", "/"))
                assert read_response(sock).status == 200
            wait_lines(access_file, 4)
            time.sleep(0.1)
        finally:
            access.handlers.pop()
            sys.unraisablehook = hook
    assert [(str(u.exc_value), u.object.__name__) for u in unraisable] == \
        [("handler broke", "log_answer")] * 3 + \
        [("handler broke", "log_access")], unraisable


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="unix sockets")
def test_a_unix_socket_peer(access_file, tmp_path):
    path = str(tmp_path / "s.sock")
    with yimmo.Server(app, bind="unix:" + path, workers=1,
                      access_log=access_file,
                      access_log_format='[%(h)s] "%(r)s" %(s)s'):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(path)
            sock.sendall(b"GET /u HTTP/1.1\r\nBad\r\n\r\n")
            assert read_response(sock).status == 400
        lines = wait_lines(access_file, 1)
    assert lines == ['[-] "GET /u HTTP/1.1" 400'], lines


def test_answer_environ_reads_what_it_can():
    env = _logging.answer_environ(
        b"\r\nGET /a%20b/%C3%A9 c?d=%20 HTTP/1.0\r\nUser-Agent: x\r\n"
        b"user-agent:  y \r\nBad Name: z\r\nContent-Type: t/p\r\n"
        b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\n", "10.0.0.1", -1, 12.5)
    assert dict(env) == {
        "REMOTE_ADDR": "10.0.0.1", "REMOTE_PORT": "", "REQUEST_METHOD": "GET",
        "RAW_URI": "/a%20b/%C3%A9 c?d=%20",
        "QUERY_STRING": "d=%20", "SERVER_PROTOCOL": "HTTP/1.0"}
    assert env.answered_at == 12.5
    # The path is decoded when asked for (latin-1, as the environ has it;
    # a raw non-ASCII byte stays one character).
    assert env.get("PATH_INFO") == "/a b/\xc3\xa9 c"
    raw = _logging.answer_environ(b"GET /caf\xe9%41 HTTP/1.1\r\n", "", 1)
    assert raw.get("PATH_INFO") == "/caf\xe9A"
    # Headers are found when asked for, as the app's environ has them:
    # repeated lines joined, a name with "_" never one.
    assert env.get("HTTP_USER_AGENT") == "x,y"
    assert env.get("CONTENT_TYPE") == "t/p"
    assert env.get("HTTP_X_FORWARDED_FOR") == "1.2.3.4"
    assert env.get("HTTP_COOKIE") == "a=1; b=2"
    assert env.get("HTTP_BAD_NAME") is None
    assert env.get("HTTP_REFERER", "-") == "-"
    assert env.get("HTTP_REFERER", "-") == "-"     # a miss, asked again
    assert env.get("http_user_agent") == "x,y"     # %({name}e)s's case
    assert env.get("HTTP_", "-") == "-"
    assert env.get(1, "-") == "-"
    absolute = _logging.answer_environ(
        b"POST http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: h\r\n",
        "", 5)
    assert (absolute.get("HTTP_HOST"), absolute.get("PATH_INFO"),
            absolute["QUERY_STRING"]) == ("example.com:8080", "/p", "q=1")
    assert dict(_logging.answer_environ(b"", "", 5)) == {
        "REMOTE_ADDR": "", "REMOTE_PORT": "5"}
    assert _logging.status_line(431) == \
        "431 Request Header Fields Too Large"
    assert _logging.status_line(599) == "599"


def test_a_head_of_many_short_lines_is_not_split():
    """8 KB of "a:" lines made the line cost 3.5 ms of Python with the GIL
    (every line was split into a key), for a request that cost the client
    nothing: a flood of them starved the app (hostile review s27). The
    head is now searched only for the fields the format asks for."""
    head = (b"GET / HTTP/1.1\n" + b"a:\n" * 2725)[:8192]
    asked = []

    class Watched(_logging._AnswerEnviron):
        def _header(self, name):
            asked.append(name)
            return super()._header(name)

    env = _logging.answer_environ(head, "127.0.0.1", 1, time.time())
    env = Watched(dict(env), env._headers, env._path, env.answered_at)
    assert sorted(env) == ["QUERY_STRING", "RAW_URI",
                           "REMOTE_ADDR", "REMOTE_PORT", "REQUEST_METHOD",
                           "SERVER_PROTOCOL"]
    line = _logging.compile_access_format(None)(env, "400 Bad Request", 12,
                                                0.0, None)
    assert line.endswith('"GET / HTTP/1.1" 400 12 "-" "-"'), line
    assert sorted(asked) == ["REFERER", "USER-AGENT"], asked


def test_a_path_of_percent_signs_is_not_decoded_for_the_default_format():
    """8 KB of "%" cost 3.2 ms of Python to decode for every refused
    request, whether the format showed the path or not (review s27)."""
    env = _logging.answer_environ(b"GET /" + b"%" * 8000, "127.0.0.1", 1)
    line = _logging.compile_access_format(None)(env, "414 URI Too Long", 13,
                                                0.0, None)
    assert '"GET /%%%%' in line
    assert "PATH_INFO" not in env


def test_idle_workers_do_not_spin_while_one_logs(access_file):
    """While a worker logged a batch, its records still counted as
    waiting: a worker done with its request found none to take and spun,
    a core each for as long as the log handler took (review s27)."""
    import resource

    blocked, leave = [], threading.Event()

    class Slow(logging.Handler):
        # handle(), not emit(): without the handler's lock, which would
        # hold up every other line.
        def handle(self, record):
            text = record.getMessage()
            if '"GET /a ' in text or '"GET /b0 ' in text:
                blocked.append(text)
                leave.wait(WAIT)
            return True

    def slow_app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.6)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    access = logging.getLogger("yimmo.access")
    with yimmo.Server(slow_app, bind="127.0.0.1:0", workers=3,
                      access_log=access_file) as server:
        access.addHandler(Slow())
        try:
            # One worker blocks logging /a; the two others run /slow while
            # /b0../b4 wait, then one takes them as a batch and blocks at
            # /b0 with four left in hand; the last one is then idle.
            raw_request(server.address, b"GET /a HTTP/1.1\r\nB\r\n\r\n")
            wait_until(lambda: len(blocked) == 1)
            slow = [connect(server.address) for _ in range(2)]
            for sock in slow:
                sock.sendall(build_request("GET", "/slow"))
            time.sleep(0.2)
            for i in range(5):
                raw_request(server.address,
                            b"GET /b%d HTTP/1.1\r\nB\r\n\r\n" % i)
            for sock in slow:
                assert read_response(sock).status == 200
                sock.close()
            wait_until(lambda: len(blocked) == 2)
            time.sleep(0.2)
            before = resource.getrusage(resource.RUSAGE_SELF)
            time.sleep(1.0)
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            leave.set()
            access.handlers.pop()
        lines = wait_lines(access_file, 8)
    cpu = (after.ru_utime - before.ru_utime) + \
        (after.ru_stime - before.ru_stime)
    assert cpu < 0.3, cpu
    assert len(lines) == 8, lines


def test_the_lines_survive_a_stop_right_after(access_file):
    """Answers the loop gave just before a stop are logged by the thread
    that stops the server if no worker took them: here the one worker is
    still in the app when the stop gives up on it."""
    release = threading.Event()
    server = yimmo.Server(held_app(release, "/busy"), bind="127.0.0.1:0",
                          workers=1, access_log=access_file,
                          access_log_format="%(s)s %(U)s")
    server.start()
    try:
        with occupy(server):
            with connect(server.address) as sock:
                sock.sendall(b"BAD\r\n\r\n")
                assert read_response(sock).status == 400
            server.stop(0.2)
            # Before the worker could have logged it: still in the app.
            assert lines_of(access_file) == ["400 -"]
            release.set()
    finally:
        release.set()
        server.stop()
    wait_lines(access_file, 2)
    assert sorted(lines_of(access_file)) == ["200 /busy", "400 -"]


def test_a_worker_given_up_on_while_logging_answers_is_said(log_watcher):
    """A worker logging a batch of the server's own answers when the
    graceful stop gave up on it, stuck in the access log's handler (a
    stalled stream: the handler's lock held): its lines were lost without
    a word, and the stopping thread then logged the answers no worker had
    taken through that same handler, waiting on its lock past the
    deadline (C review s28). stop() now returns at the deadline, and the
    warning counts the lines that may never be written."""
    entered, release = threading.Event(), threading.Event()

    class Stalled(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            if not entered.is_set():
                entered.set()
                release.wait(WAIT)
            self.lines.append(record.getMessage())

    _logging.configure_access_log(None)
    access = logging.getLogger("yimmo.access")
    stalled = Stalled()
    access.addHandler(stalled)
    # access_log="-" leaves a handler already there in place.
    server = yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                          access_log="-", access_log_format="%(s)s")
    server.start()
    try:
        with connect(server.address) as sock:
            sock.sendall(b"BAD\r\n\r\n")
            assert read_response(sock).status == 400
        assert entered.wait(WAIT)
        with connect(server.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            assert read_response(sock).status == 400
        t0 = time.monotonic()
        server.stop(0.2)
        assert time.monotonic() - t0 < 5
        log_watcher.wait_for(
            "1 worker thread(s) still running the app",
            "2 log line(s) about requests the server answered itself or "
            "cut short")
    finally:
        release.set()
        server.stop()
        access.removeHandler(stalled)
        _logging.configure_access_log(None)
    # The one it was writing, once let go; the other was never logged.
    wait_until(lambda: stalled.lines == ["400"], WAIT, "the late line")


def test_a_file_that_shrinks_while_sent_is_logged(tmp_path, log_watcher):
    """sendfile finds the end of a file before the length the response
    was sent with: the loop closes the connection, and the error log now
    says so (it said nothing: the loop cannot log, and the access line
    counts the whole file). Logged with the access log off too."""
    total, kept = 16 << 20, 6 << 20
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * total)

    def app(environ, start_response):
        f = open(path, "rb")
        start_response("200 OK", [("Content-Length", str(total))])
        return environ["wsgi.file_wrapper"](f)

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1) as server:
        sock = socket.socket()
        # A small window: the server cannot have sent 6 MB before the
        # file is cut.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.settimeout(WAIT)
        sock.connect(server.address)
        with sock:
            sock.sendall(build_request("GET", "/file"))
            got = sock.recv(65536)
            with open(path, "r+b") as f:
                f.truncate(kept)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
        head, body = got.split(b"\r\n\r\n", 1)
        assert len(body) == kept
        assert log_watcher.wait_for(
            "WARNING", "its file ended %d bytes early" % (total - kept),
            "connection closed: GET /file")


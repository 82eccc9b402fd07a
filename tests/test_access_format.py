"""--access-log-format (gunicorn's atoms), the log files (one write per
record, so processes sharing a file never interleave inside a line) and
reopening them on SIGUSR1.

Real servers on 127.0.0.1 port 0; every wait is bounded.
"""

import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
import time

import pytest

import yimmo
from helpers import (APPS_DIR, ServerProcess, build_request, connect, get,
                     read_response, request, run_cli)
from yimmo import _logging
from yimmo._logging import (DEFAULT_ACCESS_FORMAT, compile_access_format,
                            format_access)

WAIT = 10


def app(environ, start_response):
    start_response("201 Created", [("Content-Type", "text/plain"),
                                   ("X-Out", "out-value"),
                                   ("X-Out", "second")])
    return [b"hello world"]


@pytest.fixture
def access_file(tmp_path):
    """The "yimmo.access" logger writing to a file (as --access-log FILE
    sets it up); restored to off afterwards."""
    path = str(tmp_path / "access.log")
    _logging.configure_access_log(path)
    yield path
    _logging.configure_access_log(None)


def wait_lines(path, count, timeout=WAIT):
    """The file's lines once it has at least count of them (the access
    line is written after the response went out, so it may lag)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError("%s has %d lines, expected %d: %r"
                                 % (path, len(lines), count, lines))
        time.sleep(0.02)


def serve_one(access_file, fmt, target="/p/a?x=1&y=2", headers=()):
    with yimmo.Server(app, bind="127.0.0.1:0", workers=1,
                      access_log=access_file,
                      access_log_format=fmt) as server:
        with connect(server.address) as sock:
            resp = request(sock, "GET", target, headers=list(headers))
            assert resp.status == 201
        return wait_lines(access_file, 1)[0]


# -- the default ---------------------------------------------------------------


def test_default_format_is_combined_log_format_byte_for_byte(access_file):
    line = serve_one(access_file, None,
                     headers=[("Referer", "http://r/"),
                              ("User-Agent", 'ua "quoted"')])
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
        r'"GET /p/a\?x=1&y=2 HTTP/1\.1" 201 11 "http://r/" '
        r'"ua \\"quoted\\""', line), line


def test_gunicorn_default_string_gives_the_same_line_as_format_access():
    environ = {"REMOTE_ADDR": "10.0.0.1", "REQUEST_METHOD": "POST",
               "RAW_URI": "/x?q", "SERVER_PROTOCOL": "HTTP/1.0",
               "HTTP_REFERER": "ref", "HTTP_USER_AGENT": "agent\x01",
               "REMOTE_USER": "bob"}
    fmt = compile_access_format(DEFAULT_ACCESS_FORMAT)
    # A format that differs only in an unused way takes the generic path.
    generic = compile_access_format(DEFAULT_ACCESS_FORMAT + "%(l)s")
    for length in (0, 1234):
        expected = format_access(environ, "404 Not Found", length,
                                 time.time() - 0.5)
        assert fmt(environ, "404 Not Found", length, 0.5, []) == expected
        assert generic(environ, "404 Not Found", length, 0.5, []) \
            == expected + "-"


# -- the atoms -----------------------------------------------------------------


def test_every_atom(access_file):
    fmt = ("h=%(h)s l=%(l)s u=%(u)s r=[%(r)s] m=%(m)s U=%(U)s q=%(q)s "
           "H=%(H)s s=%(s)s B=%(B)s b=%(b)s f=%(f)s a=%(a)s T=%(T)s "
           "M=%(M)s D=%(D)s L=%(L)s p=%(p)s i=%({x-in}i)s "
           "ct=%({content-type}o)s o=%({X-OUT}o)s none=%({x-none}o)s "
           "e=%({REQUEST_METHOD}e)s e2=%({wsgi.url_scheme}e)s "
           "t=%(t)s")
    line = serve_one(access_file, fmt, headers=[("X-In", "in-value"),
                                                ("User-Agent", "ua")])
    fields = dict(re.findall(r"(\w+)=(\[[^\]]*\]|\S+)", line))
    assert fields["h"] == "127.0.0.1"
    assert fields["l"] == "-"
    assert fields["u"] == "-"
    assert fields["r"] == "[GET /p/a?x=1&y=2 HTTP/1.1]"
    assert fields["m"] == "GET"
    assert fields["U"] == "/p/a"
    assert fields["q"] == "x=1&y=2"
    assert fields["H"] == "HTTP/1.1"
    assert fields["s"] == "201"
    assert fields["B"] == "11"
    assert fields["b"] == "11"
    assert fields["f"] == "-"
    assert fields["a"] == "ua"
    assert fields["T"] == "0"
    assert 0 <= int(fields["M"]) < 5000
    assert 0 < int(fields["D"]) < 5000000
    assert re.fullmatch(r"\d+\.\d{6}", fields["L"])
    assert fields["p"] == "<%d>" % os.getpid()
    assert fields["i"] == "in-value"
    assert fields["ct"] == "text/plain"
    assert fields["o"] == "out-value,"  # two X-Out values joined
    assert "o=out-value, second " in line
    assert fields["none"] == "-"
    assert fields["e"] == "GET"
    assert fields["e2"] == "http"
    assert re.fullmatch(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]",
                        fields["t"])


def test_request_values_are_escaped(access_file):
    line = serve_one(access_file, "%({x-in}i)s|%(a)s",
                     headers=[("X-In", 'a"b\\c\xff'),
                              ("User-Agent", "caf\xe9")])
    assert line == 'a\\"b\\\\c\\xff|caf\\xe9'


class Odd:
    """A value whose truth test and comparison raise (an array, a lazy
    proxy) but which has a text."""

    def __bool__(self):
        raise ValueError("truth value is ambiguous")

    def __eq__(self, other):
        raise ValueError("no comparison")

    __hash__ = object.__hash__

    def __str__(self):
        return "odd"


def environ_app(environ, start_response):
    # What auth middleware and apps do to environ after parsing: a user id
    # that is not a str, a user name and a path decoded as UTF-8, values
    # whose truth test raises.
    environ["x.odd"] = Odd()
    if environ["PATH_INFO"] == "/odd":
        environ["REMOTE_USER"] = Odd()
    elif environ["PATH_INFO"] == "/int":
        environ["REMOTE_USER"] = 42
        environ["SCRIPT_NAME"] = None
    else:
        environ["REMOTE_USER"] = "\u0141ukasz"
        environ["PATH_INFO"] = \
            environ["PATH_INFO"].encode("latin-1").decode("utf-8")
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


@pytest.mark.parametrize("fmt", [None, "%(u)s %(U)s %(r)s %({x.odd}e)s"])
def test_values_the_app_put_in_environ_keep_the_line(access_file, capfd,
                                                     fmt):
    # REMOTE_USER = 42 cost the request its line (a traceback through the
    # unraisable hook instead), and U+0141 was logged as \x41, an "A"
    # (hostile review); a value whose truth test raised did too (the
    # review of that fix).
    with yimmo.Server(environ_app, bind="127.0.0.1:0", workers=1,
                      access_log=access_file,
                      access_log_format=fmt) as server:
        for count, target in enumerate(("/int", "/%C5%A0", "/odd"), 1):
            with connect(server.address) as sock:     # ("/Š")
                resp = request(sock, "GET", target)
                assert resp.status == 200
            wait_lines(access_file, count)
        lines = wait_lines(access_file, 3)
    assert "Exception ignored" not in capfd.readouterr().err
    if fmt is None:
        assert ' - 42 [' in lines[0], lines
        assert '"GET /int HTTP/1.1" 200 2' in lines[0], lines
        assert ' - \\xc5\\x81ukasz [' in lines[1], lines
        assert '"GET /%C5%A0 HTTP/1.1" 200 2' in lines[1], lines
        assert ' - odd [' in lines[2], lines
    else:
        assert lines[0] == "42 /int GET /int HTTP/1.1 odd", lines
        assert lines[1] == ("\\xc5\\x81ukasz /\\xc5\\xa0 "
                            "GET /%C5%A0 HTTP/1.1 odd"), lines
        assert lines[2] == "odd /odd GET /odd HTTP/1.1 odd", lines


def test_numeric_atoms_take_numeric_conversions(access_file):
    line = serve_one(access_file, "%(B)05d %(D)d")
    b, d = line.split()
    assert b == "00011" and int(d) > 0


@pytest.mark.parametrize("fmt, message", [
    ("%(zz)s", "unknown atom %(zz)s"),
    ("%(h)s %({x}z)s", "unknown atom %({x}z)s"),
    ("%(h)", "incomplete format"),
    ("%(h)d", "bad access log format"),
    ("100%", "bad access log format"),
    # %c writes a code point raw (no escaping) and fails at run time on a
    # number above 0x10ffff: %(D)c of a request slower than 1.12 s.
    ("%(D)c", "conversion 'c' not allowed"),
    ("%(a)c", "conversion 'c' not allowed"),
    ("%(h)r", "conversion 'r' not allowed"),
    ("%(h)s %s", "names no atom"),
    ("%(h)99999999999s", "width and precision must be numbers up to"),
    ("%(D).*f", "width and precision must be numbers up to"),
])
def test_bad_format_is_refused(fmt, message):
    with pytest.raises(ValueError) as info:
        yimmo.Server(app, bind="127.0.0.1:0", access_log_format=fmt)
    assert message in str(info.value)


def test_bad_format_on_the_command_line_is_one_line_exit_2():
    result = run_cli(["--access-log-format", "%(h)s %(nope)s", "hello:app"],
                     cwd=APPS_DIR)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("yimmo: error: ")
    assert "unknown atom %(nope)s" in lines[0]


def test_c_conversion_on_the_command_line_is_one_line_exit_2():
    result = run_cli(["--access-log-format", "D=%(D)c", "hello:app"],
                     cwd=APPS_DIR)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yimmo: error: "), \
        result.stderr
    assert "conversion 'c' not allowed" in lines[0]


def test_format_from_the_command_line(tmp_path):
    log = tmp_path / "a.log"
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--access-log", str(log), "--access-log-format",
                        "%(m)s %(U)s %(s)s %({content-type}o)s",
                        "hello:app"], cwd=APPS_DIR) as proc:
        addr = proc.wait_listening()
        assert get(addr, "/where").status == 200
        lines = wait_lines(str(log), 1)
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert re.fullmatch(r"GET /where 200 \S+", lines[0]), lines


# -- whole lines from several processes ----------------------------------------


def _write_long_lines(path, tag, count, size):
    # In a forked child: the logger set up as the server sets it up.
    _logging.configure_access_log(path)
    logger = logging.getLogger(_logging.ACCESS_LOGGER)
    body = tag * size
    for i in range(count):
        logger.info("%s %d %s end", tag, i, body)
    os._exit(0)


def test_processes_appending_long_lines_never_interleave(tmp_path):
    path = str(tmp_path / "shared.log")
    ctx = multiprocessing.get_context("fork")
    # 300 KB lines: far past any stdio buffer (8 KB) and past a pipe's
    # atomic size; a handler that split a record into several writes
    # would interleave them.
    count, size = 40, 300000
    procs = [ctx.Process(target=_write_long_lines,
                         args=(path, tag, count, size))
             for tag in "ABCD"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == 4 * count
    seen = set()
    for line in lines:
        m = re.fullmatch(r"([A-D]) (\d+) ([A-D]+) end", line)
        assert m, line[:80] + "..." + line[-80:]
        tag = m.group(1)
        assert m.group(3) == tag * size, "a line was mixed with another"
        seen.add((tag, int(m.group(2))))
    assert len(seen) == 4 * count


def test_two_servers_share_an_access_log_without_mixing_lines(tmp_path):
    path = str(tmp_path / "access.log")
    long_path = "/" + "x" * 30000
    procs = [ServerProcess([sys.executable, "-m", "yimmo", "-b",
                            "127.0.0.1:0", "-w", "4", "--access-log", path,
                            "--limit-request-line", "0",
                            "--limit-request-field-size", "65000",
                            "--limit-request-head-size", "131072",
                            "hello:app"], cwd=APPS_DIR)
             for _ in range(2)]
    try:
        addrs = [p.wait_listening() for p in procs]
        ctx = multiprocessing.get_context("fork")
        clients = [ctx.Process(target=_client, args=(addr, long_path, n))
                   for n, addr in enumerate(addrs * 2)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(60)
            assert c.exitcode == 0
        lines = wait_lines(path, 4 * 25)
    finally:
        for p in procs:
            p.signal(signal.SIGTERM)
            p.wait(WAIT)
            p.kill()
    assert len(lines) == 100
    agents = set()
    for line in lines:
        m = re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET %s\?(\d+) '
                         r'HTTP/1\.1" 200 \d+ "-" "(a(\d+)-(\d+) z+)"'
                         % re.escape(long_path), line)
        assert m, line[:100] + "..." + line[-100:]
        agents.add(m.group(2)[:12])
    assert len(agents) == 100


def _client(addr, long_path, n):
    for i in range(25):
        ua = "a%d-%d %s" % (n, i, "z" * 30000)
        resp = get(addr, "%s?%d" % (long_path, i),
                   headers=[("User-Agent", ua)])
        if resp.status != 200:
            os._exit(1)
    os._exit(0)


# -- reopening -------------------------------------------------------------------


def test_sigusr1_reopens_the_log_files(tmp_path):
    access = tmp_path / "access.log"
    errors = tmp_path / "error.log"
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--access-log", str(access), "--error-log",
                        str(errors), "hello:app"], cwd=APPS_DIR) as proc:
        deadline = time.monotonic() + WAIT
        while "Listening at" not in _read(errors):
            assert time.monotonic() < deadline, _read(errors)
            time.sleep(0.05)
        port = int(re.search(r"Listening at http://127\.0\.0\.1:(\d+)",
                             _read(errors)).group(1))
        addr = ("127.0.0.1", port)
        assert get(addr, "/before").status == 200
        wait_lines(str(access), 1)
        # What logrotate does: rename, then signal.
        os.rename(access, str(access) + ".1")
        os.rename(errors, str(errors) + ".1")
        proc.signal(signal.SIGUSR1)
        deadline = time.monotonic() + WAIT
        while not access.exists():
            assert time.monotonic() < deadline, "no new access.log"
            time.sleep(0.05)
        assert get(addr, "/after").status == 200
        new_lines = wait_lines(str(access), 1)
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    old_lines = wait_lines(str(access) + ".1", 1)
    assert len(old_lines) == 1 and "/before" in old_lines[0]
    assert len(new_lines) == 1 and "/after" in new_lines[0]
    # The line goes to the file being rotated, as under a supervisor.
    assert "reopening log files" in _read(str(errors) + ".1")
    assert "reopening log files" not in _read(errors)
    assert "shutting down" in _read(errors)
    assert "Listening at" not in _read(errors)


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_an_apps_own_sigusr1_handler_is_kept(tmp_path):
    (tmp_path / "usr1app.py").write_text(
        "import signal, sys\n"
        "def on_usr1(signum, frame):\n"
        "    print('app got USR1', file=sys.stderr, flush=True)\n"
        "signal.signal(signal.SIGUSR1, on_usr1)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'ok']\n")
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "usr1app:app"], cwd=str(tmp_path)) as proc:
        proc.wait_listening()
        proc.signal(signal.SIGUSR1)
        proc.wait_for_line("app got USR1")
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert "reopening" not in proc.stderr


def test_reopen_log_files_reopens_stdlib_file_handlers(tmp_path):
    path = tmp_path / "std.log"
    logger = logging.getLogger("yimmo.test.reopen")
    handler = logging.FileHandler(str(path))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("one")
        os.rename(path, str(path) + ".1")
        _logging.reopen_log_files()
        logger.warning("two")
        handler.flush()
        assert path.read_text() == "two\n"
        assert (tmp_path / "std.log.1").read_text() == "one\n"
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_response_header_atom_when_the_app_failed(access_file):
    def failing(environ, start_response):
        raise RuntimeError("boom before start_response")

    with yimmo.Server(failing, bind="127.0.0.1:0", workers=1,
                      access_log=access_file,
                      access_log_format="%(s)s %({content-type}o)s %(b)s"
                      ) as server:
        with connect(server.address) as sock:
            assert request(sock, "GET", "/").status == 500
        line = wait_lines(access_file, 1)[0]
    # No headers from the app: "-" (the 500 the server sent is logged).
    assert re.fullmatch(r"500 - \S+", line), line


def test_the_line_of_an_app_that_failed_after_start_response(access_file):
    """start_response("200 OK") and then a body that fails before any byte
    (a lazy generator, a str item): the client gets the server's 500, and
    the line said 200 with the app's headers (hostile review s24)."""
    def lazy(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html")])
        if environ["PATH_INFO"] == "/str":
            return ["not bytes"]

        def body():
            raise RuntimeError("the template failed")
            yield b""
        return body()

    with yimmo.Server(lazy, bind="127.0.0.1:0", workers=1,
                      access_log=access_file, error_log=os.devnull,
                      access_log_format="%(U)s %(s)s %(b)s "
                      "%({content-type}o)s") as server:
        with connect(server.address) as sock:
            for path in ("/gen", "/str"):
                assert request(sock, "GET", path).status == 500
                sock.close()
                sock = connect(server.address)
        lines = wait_lines(access_file, 2)
    # 22 bytes: "Internal Server Error\n".
    assert lines == ["/gen 500 22 -", "/str 500 22 -"], lines


def test_a_queue_timeout_503_has_its_line(access_file):
    """The 503 of a request that waited longer than queue_timeout for a
    worker was never logged: under overload the access log left out
    exactly the errors it should show (hostile review s24)."""
    release = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1, queue_timeout=0.3,
                      access_log=access_file,
                      access_log_format="%(U)s %(s)s %(b)s") as server:
        slow = connect(server.address)
        slow.sendall(build_request("GET", "/slow"))
        time.sleep(0.2)         # the one worker is busy with it
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/queued"))
            time.sleep(0.5)     # past queue_timeout, still waiting
            release.set()
            assert read_response(sock).status == 503
        assert read_response(slow).status == 200
        slow.close()
        lines = wait_lines(access_file, 2)
    assert sorted(lines) == ["/queued 503 20", "/slow 200 2"], lines


def test_the_watchdogs_503_counts_its_bytes(access_file):
    """The line of a request the watchdog answered said "-" bytes for the
    20 the 503 carried (the queue-timeout 503's said 20; C review s24)."""
    def app(environ, start_response):
        time.sleep(1.5)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with yimmo.Server(app, bind="127.0.0.1:0", workers=1, timeout=0.5,
                      access_log=access_file, error_log=os.devnull,
                      access_log_format="%(U)s %(s)s %(b)s") as server:
        with connect(server.address) as sock:
            resp = request(sock, "GET", "/slow")
        lines = wait_lines(access_file, 1)
    assert resp.status == 503
    assert lines == ["/slow 503 %d" % len(resp.body)], lines


def test_a_file_handler_whose_directory_is_gone_keeps_logging(
        tmp_path, capfd):
    # reopen_log_files() must open the new file before closing the old
    # stream: a failed open used to leave a closed stream, and every
    # later record was lost with "--- Logging error ---".
    logdir = tmp_path / "logs"
    logdir.mkdir()
    path = logdir / "std.log"
    logger = logging.getLogger("yimmo.test.reopen.gone")
    handler = logging.FileHandler(str(path))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("one")
        os.unlink(path)
        os.rmdir(logdir)
        _logging.reopen_log_files()
        err = capfd.readouterr().err
        assert "cannot reopen log file %s" % path in err
        logger.warning("two")  # to the old (deleted) file, not an error
        assert "Logging error" not in capfd.readouterr().err
        logdir.mkdir()
        _logging.reopen_log_files()
        logger.warning("three")
        handler.flush()
        assert path.read_text() == "three\n"
        assert "Logging error" not in capfd.readouterr().err
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_an_error_log_file_that_cannot_be_reopened_is_said_on_stderr(
        tmp_path, capfd):
    # The error log may be the file that is gone: the operator must see
    # the failure somewhere, so it goes to stderr as well.
    logdir = tmp_path / "logs"
    logdir.mkdir()
    error_log = logging.getLogger("yimmo")
    saved = (list(error_log.handlers), error_log.level, error_log.propagate)
    for h in saved[0]:
        error_log.removeHandler(h)
    try:
        _logging.configure_error_log("info", str(logdir / "e.log"))
        _logging.configure_access_log(str(logdir / "a.log"))
        os.unlink(logdir / "e.log")
        os.unlink(logdir / "a.log")
        os.rmdir(logdir)
        _logging.reopen_log_files()
        err = capfd.readouterr().err
        assert "cannot reopen log file %s" % (logdir / "e.log") in err, err
        assert "cannot reopen log file %s" % (logdir / "a.log") in err, err
    finally:
        _logging.configure_access_log(None)
        for h in list(error_log.handlers):
            error_log.removeHandler(h)
            h.close()
        for h in saved[0]:
            error_log.addHandler(h)
        error_log.setLevel(saved[1])
        error_log.propagate = saved[2]

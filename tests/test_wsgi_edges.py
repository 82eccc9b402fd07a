"""WSGI edges: statuses an app may not send, readline() with large
limits, and wsgi.file_wrapper over files whose size cannot be trusted."""

import io
import os
import signal
import socket
import sys
import textwrap

import pytest

from helpers import (ServerProcess, build_request, connect, read_response,
                     read_until_close, subprocess_env)

WAIT = 10


# -- statuses an app may not send -----------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_apps_content_length_goes_out_once_as_a_number(yimmo_server,
                                                          method):
    """"5" and "05" (or "5" twice) from the app went out as they were: two
    Content-Length fields, which a strict recipient refuses (RFC 9112
    6.3). One field, in the app's place, the number start_response read
    (hostile review s20)."""
    def app(environ, start_response):
        start_response("200 OK", [("X-Before", "1"),
                                  ("Content-Length", "005"),
                                  ("content-length", "5"),
                                  ("X-After", "2")])
        return [b"hello"]

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request(method, "/"))
        resp = read_response(sock, method=method)
    assert resp.body == (b"hello" if method == "GET" else b"")
    data = resp.raw_head
    head = data.partition(b"\r\n\r\n")[0]
    fields = head.split(b"\r\n")[1:]
    assert [f for f in fields if f.lower().startswith(b"content-length")] \
        == [b"Content-Length: 5"], head
    names = [f.split(b":")[0] for f in fields]
    assert names.index(b"X-Before") < names.index(b"Content-Length") < \
        names.index(b"X-After"), head


@pytest.mark.parametrize("length", ["0", "5"])
def test_no_content_length_in_a_204(yimmo_server, length):
    # RFC 9110 8.6: a server must not send Content-Length in a 204 (an app
    # that sets one anyway, "0" as some frameworks do, or a wrong one):
    # it is dropped, and the connection goes on.
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            start_response("200 OK", [("Content-Length", "4")])
            return [b"next"]
        start_response("204 No Content", [("Content-Length", length),
                                          ("X-Kept", "yes")])
        return [b""]

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/") + build_request("GET", "/next"))
        first = read_response(sock)
        second = read_response(sock)
    names = [k.lower() for k, v in first.headers]
    assert first.status == 204
    assert "content-length" not in names and "x-kept" in names
    assert second.status == 200 and second.body == b"next"


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("length", [None, "0", "4"])
def test_a_205_goes_out_without_content(yimmo_server, length, version):
    """RFC 9110 15.3.6: a server must not send content in a 205 Reset
    Content. It went out with the app's body and Content-Length. Its
    status does not tell a client there is no body (RFC 9112 6.3), so
    the head says Content-Length: 0, and the connection goes on (hostile
    review s24)."""
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            start_response("200 OK", [("Content-Length", "4")])
            return [b"next"]
        headers = [("X-Kept", "yes")]
        if length is not None:
            headers.append(("Content-Length", length))
        start_response("205 Reset Content", headers)
        return [b"body"]

    server = yimmo_server(app, workers=2)
    keep = "Connection: keep-alive\r\n" if version == "HTTP/1.0" else ""
    req = "GET /%%s %s\r\nHost: x\r\n%s\r\n" % (version, keep)
    with connect(server.address, WAIT) as sock:
        sock.sendall((req % "" + req % "next").encode())
        first = read_response(sock)
        second = read_response(sock)
    assert first.status == 205 and first.body == b""
    assert first.headers.get_all("Content-Length") == ["0"]
    assert first.headers.get("X-Kept") == "yes"
    assert second.status == 200 and second.body == b"next"


@pytest.mark.parametrize("status", [
    "100 Continue", "101 Switching Protocols", "103 Early Hints",
    "199 Whatever", "600 Too Far", "999 Weird",
])
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_informational_or_out_of_range_status_is_an_app_error(
        yimmo_server, log_watcher, status, version):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            start_response("200 OK", [("Content-Length", "4")])
            return [b"next"]
        start_response(status, [])
        return [b"x"]

    server = yimmo_server(app, workers=2)
    # The next request is pipelined: had the 1xx gone out as the answer,
    # the 200 that follows would be read as this request's response.
    data = build_request("GET", "/", version=version) + \
        build_request("GET", "/next", version=version)
    with connect(server.address, WAIT) as sock:
        sock.sendall(data)
        raw = read_until_close(sock, WAIT)
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:200]
    assert status.encode() not in raw
    assert b"next" not in raw           # closed after the error
    log_watcher.wait_for("error handling request", status.split()[0])


# -- readline with a limit larger than the first buffer ---------------------


def test_readline_with_large_size_returns_whole_line(yimmo_server):
    line = b"a" * 70000 + b"\n"
    body = line + b"b" * 100 + b"\n" + b"tail"

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        first = inp.readline(100000)        # longer than the line
        second = inp.readline(50)           # shorter than the line
        rest = inp.read()
        out = b"%d %d %d %d" % (len(first), first.endswith(b"\n"),
                                len(second), len(rest))
        start_response("200 OK", [("Content-Length", str(len(out)))])
        return [out]

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("POST", "/", body=body))
        resp = read_response(sock)
    assert resp.body == b"70001 1 50 %d" % (101 - 50 + 4)


# -- file_wrapper over files whose size says nothing ------------------------


@pytest.mark.parametrize("path", ["/proc/self/status", "/proc/cpuinfo"])
def test_file_wrapper_on_zero_size_proc_file_sends_its_content(
        yimmo_server, path):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 4096)

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock)
    assert resp.status == 200
    with open(path, "rb") as f:
        first_line = f.readline()
    assert len(resp.body) > 0
    assert resp.body.split(b"\n")[0].split(b":")[0] == \
        first_line.split(b":")[0]


def test_file_wrapper_on_regular_file_still_uses_its_size(yimmo_server,
                                                           tmp_path):
    data = bytes(range(256)) * 1000
    (tmp_path / "f.bin").write_bytes(data)

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](open(tmp_path / "f.bin", "rb"))

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock)
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.body == data


# -- a body that does not match its Content-Length -------------------------


def test_a_body_that_does_not_match_its_content_length_is_logged(
        yimmo_server, log_watcher):
    # The client sees the connection close after the body (cut at the
    # Content-Length when longer); the app's bug is one WARNING line, and
    # a body that matches, a HEAD, or a 304 logs nothing.
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/short":
            start_response("200 OK", [("Content-Length", "10")])
            return [b"abc"]
        if path == "/long":
            start_response("200 OK", [("Content-Length", "3")])
            return [b"abcdefghijkl"]
        if path == "/not-modified":
            start_response("304 Not Modified", [("Content-Length", "10")])
            return [b""]
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = yimmo_server(app, workers=2)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/short"))
        assert read_until_close(sock, WAIT, require_close=True).endswith(
            b"\r\n\r\nabc")
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/long"))
        assert read_until_close(sock, WAIT).endswith(b"\r\n\r\nabc")
    with connect(server.address, WAIT) as sock:
        for method, target in [("GET", "/fine"), ("HEAD", "/short"),
                               ("GET", "/not-modified"), ("GET", "/fine")]:
            sock.sendall(build_request(method, target))
            read_response(sock, method)
    short = log_watcher.wait_for("WARNING", "shorter than its Content-Length",
                                 "(3 of 10 bytes)", "GET /short")
    long = log_watcher.wait_for("WARNING", "longer than its Content-Length",
                                "(3)", "GET /long")
    assert short and long
    others = [t for t in log_watcher.texts if "Content-Length" in t]
    assert len(others) == 2, others


def test_the_length_warning_when_the_app_emptied_environ(yimmo_server,
                                                         log_watcher):
    # The request's method and URI are gone from environ: the line names
    # none (and the server neither crashes nor leaves an error set).
    def app(environ, start_response):
        environ.clear()
        start_response("200 OK", [("Content-Length", "10")])
        return [b"abc"]

    server = yimmo_server(app, workers=1)
    for _ in range(2):
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/gone"))
            assert read_until_close(sock, WAIT,
                                    require_close=True).endswith(b"abc")
    assert log_watcher.wait_for("WARNING", "(3 of 10 bytes), connection "
                                "closed:  ")
    assert not any("/gone" in t for t in log_watcher.texts)

# -- a fileno() out of range -----------------------------------------------


def test_a_fileno_beyond_int_is_not_cut_down_to_another_descriptor(
        yimmo_server, tmp_path):
    # 2**32 + n, cut to an int, would be descriptor n: the server sent
    # that (here a file the app never meant to serve) with sendfile. Out
    # of range, the wrapper is read instead.
    secret = open(tmp_path / "secret", "wb+")
    secret.write(b"secret" * 100)
    secret.flush()

    class Odd:
        def __init__(self):
            self.chunks = [b"public"]

        def fileno(self):
            return 2 ** 32 + secret.fileno()

        def read(self, size=-1):
            return self.chunks.pop() if self.chunks else b""

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](Odd())

    server = yimmo_server(app, workers=2)
    try:
        with connect(server.address, WAIT) as sock:
            sock.sendall(build_request("GET", "/"))
            r = read_response(sock)
        assert r.status == 200 and r.body == b"public"
    finally:
        secret.close()

# -- a file the server cannot take a descriptor of ------------------------

EMFILE_APP = textwrap.dedent("""
    import os
    import resource
    import sys

    import yimmo

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    PATH = sys.argv[1]
    hogs = []


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/release":
            while hogs:
                os.close(hogs.pop())
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        # Every descriptor taken but the one the file gets: the server's
        # own copy of it (for sendfile) fails with EMFILE.
        try:
            while True:
                hogs.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        os.close(hogs.pop())
        f = open(PATH, "rb")
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](f, 8192)


    server = yimmo.Server(app, bind="127.0.0.1:0", workers=1)
    print("port", server.address[1], flush=True)
    server.serve_forever()
""")


def test_file_wrapper_when_no_descriptor_is_left(tmp_path):
    # The server's copy of the file's descriptor is made before the head:
    # when it fails (EMFILE), the file is read through the wrapper instead.
    # (The head went out first, with a Content-Length, and the client got
    # a 200 with no body and a close.)
    data = bytes(range(256)) * 400
    (tmp_path / "data.bin").write_bytes(data)
    (tmp_path / "emfile_app.py").write_text(EMFILE_APP)
    with ServerProcess([sys.executable, "emfile_app.py",
                        str(tmp_path / "data.bin")], cwd=tmp_path,
                       env=subprocess_env()) as proc:
        m = proc.wait_for_line(r"^port (\d+)$", "stdout", WAIT)
        addr = ("127.0.0.1", int(m.group(1)))
        with connect(addr, WAIT) as sock:
            sock.sendall(build_request("GET", "/file"))
            first = read_response(sock)
            sock.sendall(build_request("GET", "/release"))
            second = read_response(sock)
        assert first.status == 200
        assert first.body == data
        assert second.body == b"ok"
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


# -- file_wrapper and the rest of the response -----------------------------

WRITE_AFTER_FILE_APP = textwrap.dedent("""
    import gc, sys, yimmo

    PATH = sys.argv[1]
    state = {"armed": False, "write": None}

    def collecting(phase, info):
        # A collection while the worker takes the response apart (here:
        # set off by an allocation of the server's own): an app's __del__
        # or gc callback that calls the write() it kept.
        if phase == "start" and state["armed"]:
            state["armed"] = False
            state["write"](b"W" * 64)

    gc.callbacks.append(collecting)

    def app(environ, start_response):
        # The Content-Length promises more than the file has: the file's
        # bucket is the last of the pending output when write() comes.
        state["write"] = start_response("200 OK",
                                        [("Content-Length", "100000")])
        wrapper = environ["wsgi.file_wrapper"](open(PATH, "rb"))
        gc.set_threshold(1)
        state["armed"] = True
        return wrapper

    server = yimmo.Server(app, bind="127.0.0.1:0", workers=1)
    print("port", server.address[1], flush=True)
    server.serve_forever()
""")


def test_a_write_after_a_file_wrapper_is_its_own_bytes(tmp_path):
    """A write() that ran after send_file had put the file's bucket last
    in the pending output copied its bytes into that bucket: a file
    bucket has no room, but cap - len wrapped round (a heap overflow, a
    crash or a corrupt response), and the loop was asked for more of the
    file than it has (C review s24)."""
    (tmp_path / "f.bin").write_bytes(b"F" * 10)
    (tmp_path / "app.py").write_text(WRITE_AFTER_FILE_APP)
    with ServerProcess([sys.executable, "app.py", str(tmp_path / "f.bin")],
                       cwd=tmp_path, env=subprocess_env()) as proc:
        m = proc.wait_for_line(r"^port (\d+)$", "stdout", WAIT)
        with connect(("127.0.0.1", int(m.group(1))), WAIT) as sock:
            sock.sendall(build_request("GET", "/"))
            data = read_until_close(sock, WAIT)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK"), data
        # The file, then what write() gave; short of the promised length,
        # so the connection closes. (Where the collection comes at another
        # moment -- CPython 3.13 collects otherwise than 3.11, on which
        # this reached the window every time -- the write() misses the
        # window: the file alone. Never other bytes, and never a crash.)
        assert body in (b"F" * 10 + b"W" * 64, b"F" * 10), data
        proc.wait_for_line(r"shorter than its Content-Length \(%d of "
                           r"100000 bytes\)" % len(body), "stderr", WAIT)
        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_file_wrapper_on_a_write_only_file_is_a_500(yimmo_server, tmp_path,
                                                    log_watcher):
    """io.FileIO opened for writing only was sent with sendfile, which
    failed (EBADF) after the head: the client got a 200 with no body and
    a close, and nothing was logged. Iterated, its read() raises before
    the head (C review s24)."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)

    def app(environ, start_response):
        start_response("200 OK", [])
        f = io.FileIO(path, "a")     # O_WRONLY | O_APPEND, not emptied
        f.seek(0)
        return environ["wsgi.file_wrapper"](f)

    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock)
    assert resp.status == 500
    log_watcher.wait_for("File not open for reading")


def test_file_wrapper_on_an_o_direct_file_is_not_cut(yimmo_server, tmp_path,
                                                     log_watcher):
    """O_DIRECT: sendfile refuses its unaligned reads (EINVAL) after the
    head is out, and the client got a 200 with none of its bytes and a
    close, with nothing logged. Iterated, it gives what read() gives: here
    an error before the head, a 500 and its traceback (hostile review
    s24)."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError as exc:
        pytest.skip("no O_DIRECT on %s: %s" % (tmp_path, exc))

    def app(environ, start_response):
        start_response("200 OK", [])
        f = open(os.open(path, os.O_RDONLY | os.O_DIRECT), "rb")
        return environ["wsgi.file_wrapper"](f)

    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        resp = read_response(sock)
    if resp.status == 200:
        # A kernel whose O_DIRECT reads take any buffer: the whole file.
        assert resp.body == b"a" * 1000
    else:
        assert resp.status == 500
        log_watcher.wait_for("error handling request")

"""Helpers for the server tests: raw HTTP/1.1 over real sockets, a strict
response reader that works across pipelined responses on one socket, a log
watcher, and a subprocess runner that learns the port from the log line.

Everything here is bounded in time: sockets always carry a timeout, and
every wait takes one.
"""

import hashlib
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import pytest

DEFAULT_TIMEOUT = 5.0
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(REPO_ROOT, "tests")
APPS_DIR = os.path.join(TESTS_DIR, "apps")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- connecting and sending ---------------------------------------------------


def connect(addr, timeout=DEFAULT_TIMEOUT):
    """A connected socket with a timeout. addr is (host, port) for TCP, or a
    unix socket path (with or without a "unix:" prefix)."""
    if isinstance(addr, str):
        path = addr[len("unix:"):] if addr.startswith("unix:") else addr
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = addr[0], addr[1]
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def chunked(data, chunk_size=65536, extensions=b"", trailers=b""):
    """data in the chunked transfer coding (RFC 9112 7.1). chunk_size may
    be an int or an iterable of sizes (cycled until data is used up)."""
    out = bytearray()
    sizes = _cycle_sizes(chunk_size)
    pos = 0
    while pos < len(data):
        n = next(sizes)
        piece = data[pos:pos + n]
        pos += len(piece)
        out += b"%x%s\r\n%s\r\n" % (len(piece), extensions, piece)
    out += b"0\r\n" + trailers + b"\r\n"
    return bytes(out)


def _cycle_sizes(chunk_size):
    if isinstance(chunk_size, int):
        while True:
            yield chunk_size
    sizes = list(chunk_size)
    while True:
        yield from sizes


def build_request(method="GET", target="/", headers=(), body=None,
                  version="HTTP/1.1", host="127.0.0.1", chunk_size=None):
    """Bytes of one request. headers: (name, value) pairs (str or bytes).
    host=None leaves the Host header out. With a body, Content-Length is
    added unless chunk_size is given (then the body is sent chunked) or the
    headers already frame it."""
    def b(x):
        return x if isinstance(x, bytes) else str(x).encode("latin-1")

    lines = [b"%s %s %s" % (b(method), b(target), b(version))]
    names = {b(n).lower() for n, _ in headers}
    if host is not None and b"host" not in names:
        lines.append(b"Host: " + b(host))
    for name, value in headers:
        lines.append(b(name) + b": " + b(value))
    payload = b""
    if body is not None:
        if chunk_size is not None:
            if b"transfer-encoding" not in names:
                lines.append(b"Transfer-Encoding: chunked")
            payload = chunked(body, chunk_size)
        else:
            if b"content-length" not in names and \
                    b"transfer-encoding" not in names:
                lines.append(b"Content-Length: %d" % len(body))
            payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def raw_request(addr, data, timeout=DEFAULT_TIMEOUT, require_close=True):
    """Send data on a fresh connection and return everything received until
    the server closes it. If the server has not closed the connection within
    `timeout` seconds: raise AssertionError when require_close, else return
    what arrived."""
    with connect(addr, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; read what it sent
        return read_until_close(sock, timeout, require_close)


# -- reading responses --------------------------------------------------------


class ProtocolError(AssertionError):
    """The server sent something that is not valid HTTP/1.1."""


class NoResponse(AssertionError):
    """The connection closed before a response began."""


class IncompleteResponse(AssertionError):
    """The connection closed in the middle of a response body."""

    def __init__(self, message, response):
        super().__init__(message)
        self.response = response


class Headers:
    """Response header fields in order, looked up case-insensitively."""

    def __init__(self, items):
        self._items = list(items)

    def get(self, name, default=None):
        name = name.lower()
        for k, v in self._items:
            if k.lower() == name:
                return v
        return default

    def get_all(self, name):
        name = name.lower()
        return [v for k, v in self._items if k.lower() == name]

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name):
        return self.get(name) is not None

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def names(self):
        return [k.lower() for k, _ in self._items]

    def __repr__(self):
        return "Headers(%r)" % (self._items,)


class Response(tuple):
    """(status, headers, body), with more detail as attributes: reason,
    version, framing ("length", "chunked", "close" or "none"), complete,
    chunks (the data sizes of the chunks received), trailers, raw_head."""

    def __new__(cls, status, headers, body, **details):
        self = tuple.__new__(cls, (status, headers, body))
        self.__dict__.update(details)
        return self

    status = property(lambda self: self[0])
    headers = property(lambda self: self[1])
    body = property(lambda self: self[2])

    def __repr__(self):
        return "<Response %s %r %s %d bytes%s>" % (
            self.status, self.reason, self.framing, len(self.body),
            "" if self.complete else " INCOMPLETE")


_STATUS_LINE = re.compile(rb"(HTTP/\d\.\d) (\d{3})(?: ([^\r\n]*))?\r\n\Z")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


class _BytesSource:
    """Stands in for a socket over bytes already received."""

    def __init__(self, data):
        self._data = data

    def recv(self, n):
        out, self._data = self._data[:n], self._data[n:]
        return out


class Reader:
    """Buffered reading from one socket. Keep one per socket (reader_for)
    so bytes of the next pipelined response are not lost."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _recv(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 18)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def readline(self, limit=1 << 17):
        """One line including its LF; at EOF whatever was left (maybe b"")."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            start = len(self.buf)
            if len(self.buf) > limit:
                raise ProtocolError("line longer than %d bytes: %r..."
                                    % (limit, bytes(self.buf[:200])))
            if not self._recv():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read(self, n):
        """n bytes; fewer only if the connection closed first."""
        while len(self.buf) < n and self._recv():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def wait_for_bytes(self, n):
        """Buffer at least n unread bytes; False if EOF came first."""
        while len(self.buf) < n:
            if not self._recv():
                return False
        return True

    def read_to_eof(self):
        while self._recv():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def read_head(self):
        """Status line and header fields of the next response, strictly."""
        line = self.readline()
        if not line:
            raise NoResponse("connection closed before a response")
        m = _STATUS_LINE.match(line)
        if not m:
            rest = bytes(self.buf[:300])
            raise ProtocolError("bad status line %r (followed by %r)"
                                % (line, rest))
        raw = [line]
        headers = []
        while True:
            line = self.readline()
            raw.append(line)
            if not line.endswith(b"\r\n"):
                raise ProtocolError("header line not ended by CRLF: %r "
                                    "(head so far %r)" % (line, b"".join(raw)))
            if line == b"\r\n":
                break
            name, sep, value = line[:-2].partition(b":")
            if not sep or not _TOKEN.match(name):
                raise ProtocolError("bad header line %r" % line)
            value = value.strip(b" \t")
            if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
                raise ProtocolError("control character in header %r" % line)
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        return dict(version=m.group(1).decode(), status=int(m.group(2)),
                    reason=(m.group(3) or b"").decode("latin-1"),
                    headers=Headers(headers), raw_head=b"".join(raw))

    def read_body(self, head, method="GET", allow_incomplete=False):
        """The body following head (from read_head), framed per RFC 9112
        6.3. Returns a Response."""
        status, headers = head["status"], head["headers"]
        chunks, trailers = [], Headers([])
        complete = True
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            framing, body = "none", b""
        elif "transfer-encoding" in headers:
            codings = [c.strip().lower() for c in
                       ",".join(headers.get_all("transfer-encoding"))
                       .split(",")]
            if codings[-1] == "chunked":
                framing = "chunked"
                body, chunks, trailers, complete = self._read_chunked()
            else:
                framing, body = "close", self.read_to_eof()
        elif "content-length" in headers:
            values = {v.strip() for v in
                      ",".join(headers.get_all("content-length")).split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise ProtocolError("bad Content-Length %r"
                                    % headers.get_all("content-length"))
            n = int(values.pop())
            framing, body = "length", self.read(n)
            complete = len(body) == n
        else:
            framing, body = "close", self.read_to_eof()
        resp = Response(status, headers, body, framing=framing,
                        complete=complete, chunks=chunks, trailers=trailers,
                        **{k: head[k] for k in ("version", "reason",
                                                "raw_head")})
        if not complete and not allow_incomplete:
            raise IncompleteResponse(
                "connection closed inside the body: %r" % (resp,), resp)
        return resp

    def _read_chunked(self):
        body = bytearray()
        chunks = []
        trailers = []
        while True:
            line = self.readline()
            if not line.endswith(b"\r\n"):
                return bytes(body), chunks, Headers(trailers), False
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            if not re.match(rb"[0-9A-Fa-f]+\Z", size_text):
                raise ProtocolError("bad chunk size line %r" % line)
            size = int(size_text, 16)
            if size == 0:
                break
            data = self.read(size)
            body += data
            if len(data) < size:
                return bytes(body), chunks, Headers(trailers), False
            crlf = self.read(2)
            if crlf != b"\r\n":
                if len(crlf) < 2:
                    return bytes(body), chunks, Headers(trailers), False
                raise ProtocolError("chunk data not followed by CRLF: %r"
                                    % crlf)
            chunks.append(size)
        while True:
            line = self.readline()
            if not line.endswith(b"\r\n"):
                return bytes(body), chunks, Headers(trailers), False
            if line == b"\r\n":
                return bytes(body), chunks, Headers(trailers), True
            name, _, value = line[:-2].partition(b":")
            trailers.append((name.decode("latin-1"),
                             value.strip().decode("latin-1")))

    def read_response(self, method="GET", allow_incomplete=False,
                      skip_interim=False):
        while True:
            head = self.read_head()
            resp = self.read_body(head, method, allow_incomplete)
            if skip_interim and 100 <= resp.status < 200:
                continue
            return resp


_readers = weakref.WeakKeyDictionary()


def reader_for(sock):
    """The one Reader of this socket (created on first use)."""
    reader = _readers.get(sock)
    if reader is None:
        reader = _readers[sock] = Reader(sock)
    return reader


def read_response(sock, method="GET", allow_incomplete=False,
                  skip_interim=False):
    """Read one response from sock: (status, headers, body) plus details
    (see Response). Bodies framed by Content-Length, chunked coding or
    connection close are all handled; bytes after the response stay
    buffered for the next call on the same socket. method="HEAD" for a
    response to HEAD. An interim 1xx response is returned like any other
    unless skip_interim. Raises IncompleteResponse if the connection closes
    inside the body, unless allow_incomplete (then .complete is False)."""
    return reader_for(sock).read_response(method, allow_incomplete,
                                          skip_interim)


def parse_responses(data, methods=(), allow_incomplete=False):
    """Every response in data (all bytes a connection delivered until it
    closed). methods: request methods in order, where some were HEAD."""
    reader = Reader(_BytesSource(data))
    methods = list(methods)
    out = []
    while reader.wait_for_bytes(1):
        method = methods[len(out)] if len(out) < len(methods) else "GET"
        out.append(reader.read_response(method, allow_incomplete))
    return out


def parse_response(data, method="GET"):
    """The single response in data; anything after it is an error."""
    responses = parse_responses(data, [method])
    assert len(responses) == 1, "expected one response, got %r" % (responses,)
    return responses[0]


def read_until_close(sock, timeout=DEFAULT_TIMEOUT, require_close=True):
    """Bytes until the peer closes (including any that a Reader buffered).
    If it has not closed within timeout: AssertionError when require_close,
    else return what arrived. The deadline is kept with select(), never by
    changing the socket's timeout: a test's sender thread may be in
    sendall() on the same socket, and settimeout() under it is a data race
    (ThreadSanitizer reported it on 3.13t) that could also cut its send
    short."""
    reader = reader_for(sock)
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            if not select.select([sock], [], [], remaining)[0]:
                continue
            if not reader._recv():
                break
    except socket.timeout:
        if require_close:
            raise AssertionError(
                "server did not close the connection within %ss; received "
                "%r" % (timeout, bytes(reader.buf[:1000])))
    data = bytes(reader.buf)
    reader.buf.clear()
    return data


def assert_closed(sock, timeout=DEFAULT_TIMEOUT):
    """Assert the server closes sock within timeout without sending any
    further bytes."""
    rest = read_until_close(sock, timeout)
    assert rest == b"", "unexpected bytes before close: %r" % rest[:500]


def request(sock, method="GET", target="/", headers=(), body=None,
            version="HTTP/1.1", **kw):
    """Send one request on an open socket and read its response."""
    sock.sendall(build_request(method, target, headers, body, version, **kw))
    return read_response(sock, method)


def get(addr, target="/", headers=(), timeout=DEFAULT_TIMEOUT):
    """GET on a fresh connection (Connection: close); the Response."""
    with connect(addr, timeout) as sock:
        sock.sendall(build_request("GET", target,
                                   list(headers) + [("Connection", "close")]))
        return read_response(sock)


# -- logs ---------------------------------------------------------------------


class LogWatcher(logging.Handler):
    """Collects the formatted records (traceback included) of a logger and
    its children, and lets a test wait for one."""

    def __init__(self, logger_name="yimmo"):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s "
                                            "%(message)s"))
        self.logger = logging.getLogger(logger_name)
        self.texts = []
        self._cond = threading.Condition()

    def emit(self, record):
        try:
            text = self.format(record)
        except Exception as exc:  # never break the server's logging
            text = "unformattable record %r: %r" % (record, exc)
        with self._cond:
            self.texts.append(text)
            self._cond.notify_all()

    def __enter__(self):
        self._old_level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.ERROR:
            self.logger.setLevel(logging.ERROR)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self._old_level)

    def wait_for(self, *substrings, timeout=10):
        """The first record containing every one of substrings."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for text in self.texts:
                    if all(s in text for s in substrings):
                        return text
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        "no log record containing %r within %ss; got %r"
                        % (substrings, timeout, self.texts))
                self._cond.wait(remaining)


# -- subprocesses -------------------------------------------------------------

LISTENING_RE = re.compile(
    r"Listening at http://(?P<host>\[[^\]]+\]|[^\s:/\[]+):(?P<port>\d+)")


def subprocess_env(**extra):
    """The environment for a child Python that must import the same yimmo
    as this process (an in-place build or an installed one)."""
    import yimmo

    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(
        yimmo.__file__)))
    path = [pkg_parent]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    for key in [k for k in env if k.startswith("YIMMO_")]:
        del env[key]
    env.update(extra)
    return env


def _restore_signals():
    # A child of a process that ignores SIGINT (a background job of a
    # non-interactive shell) would ignore it too, and Python would not
    # install its KeyboardInterrupt handler. Likewise SIGHUP under nohup:
    # the server leaves an ignored SIGHUP alone (it may be the app's). So
    # the test process takes the dispositions of an interactive run, once,
    # on import (the main thread), and its children inherit them through
    # exec. Not in a preexec_fn: Python code between fork and exec can
    # deadlock in a threaded parent (under ASan, on the allocator's lock
    # that a pump thread held at the fork: seen in a CI run).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


_restore_signals()


class ServerProcess:
    """A child process whose stdout and stderr lines are collected by
    threads, so a test can wait for a line with a timeout. Use as a context
    manager: the process is killed on exit if it is still running."""

    def __init__(self, args, cwd=None, env=None, stdin=subprocess.DEVNULL,
                 pass_fds=(), start_new_session=False):
        self.args = args
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env if env is not None else subprocess_env(),
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=pass_fds, start_new_session=start_new_session)
        self.stdout_lines = []
        self.stderr_lines = []
        self._cond = threading.Condition()
        self._open = 2
        self._threads = [
            threading.Thread(target=self._pump,
                             args=(self.proc.stdout, self.stdout_lines),
                             daemon=True),
            threading.Thread(target=self._pump,
                             args=(self.proc.stderr, self.stderr_lines),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, lines):
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    @property
    def stdout(self):
        with self._cond:
            return "\n".join(self.stdout_lines)

    @property
    def stderr(self):
        with self._cond:
            return "\n".join(self.stderr_lines)

    def _describe(self):
        return "%r exit=%r\n--- stdout:\n%s\n--- stderr:\n%s" % (
            self.args, self.proc.poll(), self.stdout, self.stderr)

    def wait_for_line(self, pattern, stream="stderr", timeout=15):
        """The re.Match of the first line (of stderr or stdout) matching
        pattern. Fails if the output ends or timeout passes first."""
        regex = re.compile(pattern)
        lines = self.stderr_lines if stream == "stderr" else self.stdout_lines
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in lines:
                    m = regex.search(line)
                    if m:
                        return m
                if self._open == 0:
                    raise AssertionError("output ended without a line "
                                         "matching %r: %s"
                                         % (pattern, self._describe()))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("no line matching %r within %ss: %s"
                                         % (pattern, timeout,
                                            self._describe()))
                self._cond.wait(remaining)

    def wait_listening(self, timeout=20):
        """(host, port) from the "Listening at http://HOST:PORT" log line."""
        m = self.wait_for_line(LISTENING_RE, "stderr", timeout)
        host = m.group("host").strip("[]")
        return host, int(m.group("port"))

    def wait(self, timeout=15):
        """The exit status; fails if the process is still running after
        timeout. Waits (bounded) for the output to be collected."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("process did not exit within %ss: %s"
                                 % (timeout, self._describe())) from None
        for t in self._threads:
            t.join(5)
        return code

    def signal(self, signum):
        self.proc.send_signal(signum)

    def pause(self, timeout=10):
        """SIGSTOP, and wait until every thread of the process has stopped:
        the signal only asks, and a thread that runs on (a busy machine) or
        sits in a system call stops a moment later. What arrives after this
        returns finds the process's loop between two turns."""
        self.proc.send_signal(signal.SIGSTOP)
        task_dir = "/proc/%d/task" % self.proc.pid
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for tid in os.listdir(task_dir):
                try:
                    with open(os.path.join(task_dir, tid, "stat")) as f:
                        states.append(f.read().rsplit(")", 1)[1].split()[0])
                except FileNotFoundError:
                    continue            # a thread that just ended
            if all(state in "tTZX" for state in states):
                return
            if time.monotonic() > deadline:
                raise AssertionError("process %d did not stop within %ss: "
                                     "thread states %s"
                                     % (self.proc.pid, timeout, states))
            time.sleep(0.002)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def run_bounded(args, timeout, env=None, cwd=None, input=None):
    """subprocess.run(args, capture_output=True, text=True) for a child
    Python, bounded by timeout. A child still running then is a hang, and
    the test fails with where it hangs: the native stacks of its threads
    (gdb, when there is one) and Python's tracebacks of them (faulthandler,
    on SIGABRT), with what it printed. A bare TimeoutExpired said nothing
    of where (a CI run's hang inside stop(), under ASan: no line to go
    on)."""
    env = dict(env if env is not None else subprocess_env())
    env.setdefault("PYTHONFAULTHANDLER", "1")
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        native = _native_stacks(proc.pid)
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(
            "the child did not finish within %ss: %r\n--- its stdout:\n%s"
            "\n--- its stderr (then Python's tracebacks, on SIGABRT):\n%s"
            "\n--- its native stacks:\n%s"
            % (timeout, args, out, err, native)) from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _native_stacks(pid):
    gdb = shutil.which("gdb")
    if gdb is None:
        return "(no gdb)"
    try:
        return subprocess.run(
            [gdb, "-p", str(pid), "-batch", "-nx",
             "-ex", "thread apply all bt 30"],
            capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "(gdb: %s)" % exc


def run_python(code, timeout=30, env=None, cwd=None, args=()):
    """Run `python -c CODE ARGS` (run_bounded): the CompletedProcess."""
    return run_bounded([sys.executable, "-c", code] + list(args), timeout,
                       env=env, cwd=cwd)


def run_cli(args, cwd=None, env=None, timeout=30):
    """Run `python -m yimmo ARGS` to completion (run_bounded); returns the
    CompletedProcess with text stdout/stderr."""
    return run_bounded([sys.executable, "-m", "yimmo"] + list(args),
                       timeout, env=env, cwd=cwd)


def wait_until(cond, timeout=DEFAULT_TIMEOUT, what="a condition"):
    """Poll cond() every 20 ms until it is true; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


def refuses(addr):
    """Whether a TCP connection to addr is refused (the server closed its
    listening socket)."""
    try:
        socket.create_connection(addr, DEFAULT_TIMEOUT).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # A reset during the handshake: the listening socket closed while
        # this connection waited in its queue (seen once under ASan, in
        # test_no_last_call_that_the_deadline_would_cut_off).
        return True
    return False


def wait_readable(sock, timeout):
    """True if sock becomes readable (data or EOF) within timeout."""
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def send_get(addr, target, timeout=DEFAULT_TIMEOUT, started=None):
    """A new connection that has sent GET target; with `started` (a list
    the app appends each PATH_INFO it begins to), once the app began it."""
    sock = connect(addr, timeout)
    sock.sendall(build_request("GET", target))
    if started is not None:
        deadline = time.monotonic() + timeout
        while target not in started:
            assert time.monotonic() < deadline, started
            time.sleep(0.01)
    return sock


# With the GIL off (a free-threaded build's default), workers run at once
# and each takes its own queue first; with the GIL (any other build, or a
# free-threaded one with PYTHON_GIL=1) the oldest request runs first.
skip_if_gil_off = pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="the GIL is off: workers run at once and take their own queue "
           "first (with the GIL back on, see test_free_threading)")


# AddressSanitizer keeps freed memory in quarantine (up to 256 MB), so RSS
# grows under it whether or not anything leaks: RSS-based checks only mean
# something in an ordinary build.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
skip_under_asan = pytest.mark.skipif(
    UNDER_ASAN, reason="RSS is meaningless under ASan's quarantine")


# systemd socket activation, as systemd does it: `python -c ACTIVATE ARGS`
# moves the listening socket whose number is in TEST_FD to descriptor 3,
# sets LISTEN_PID to its own pid (which exec keeps) and LISTEN_FDS=1, then
# execs `python ARGS` (for example `-m yimmo --workers 2 app:app`).
ACTIVATE = """
import os, sys
fd = int(os.environ.pop("TEST_FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


# -- Network namespaces: other "hosts" on this machine ------------------------

def _sh(*args, timeout=10):
    return subprocess.run(args, check=True, capture_output=True, text=True,
                          timeout=timeout)


def netns_usable():
    """None when this process can create network namespaces; else why not
    (a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    name = "ymo-probe-%d" % os.getpid()
    try:
        _sh("ip", "netns", "add", name)
    except (OSError, subprocess.SubprocessError) as exc:
        return "cannot create a network namespace: %s" % (
            getattr(exc, "stderr", None) or exc)
    _sh("ip", "netns", "del", name)
    return None


def _subnet(index):
    """A /30 of 10.213.0.0/16 for host `index` (1-3) of this test run: the
    root namespace's routes are shared, and suites run side by side
    (.ci/side-by-side) must not both route the same subnet."""
    block = (os.getpid() % 4096) * 4 + index
    return "10.213.%d.%d" % (block // 64, block % 64 * 4)


class NetnsHost:
    """A network namespace with a veth pair to the root namespace: the
    first address of its /30 (_subnet) on our side (`outer_address`, on
    the interface `outer`), the second inside (`address`). Test programs
    run in it under `exec_prefix`."""

    def __init__(self, index, tag):
        self.index = index
        self.name = "ymo-%s-%d" % (tag, os.getpid())
        self.outer = "ymo%d%d" % (index, os.getpid() % 100000)
        self.inner = "ymi%d%d" % (index, os.getpid() % 100000)
        net = _subnet(index).rsplit(".", 1)
        self.outer_address = "%s.%d" % (net[0], int(net[1]) + 1)
        self.address = "%s.%d" % (net[0], int(net[1]) + 2)
        self.exec_prefix = ("ip", "netns", "exec", self.name)

    def create(self):
        _sh("ip", "netns", "add", self.name)
        _sh("ip", "link", "add", self.outer, "type", "veth", "peer", "name",
            self.inner)
        _sh("ip", "link", "set", self.inner, "netns", self.name)
        _sh("ip", "addr", "add", self.outer_address + "/30", "dev",
            self.outer)
        _sh("ip", "link", "set", self.outer, "up")
        ns = self.exec_prefix
        _sh(*ns, "ip", "addr", "add", self.address + "/30", "dev",
            self.inner)
        _sh(*ns, "ip", "link", "set", self.inner, "up")
        _sh(*ns, "ip", "link", "set", "lo", "up")

    def destroy(self):
        subprocess.run(["ip", "link", "del", self.outer],
                       capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name],
                       capture_output=True, timeout=10)

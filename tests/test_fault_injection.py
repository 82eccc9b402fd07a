"""Allocation failures in the C core (issue 8): with the extension built
with YIMMO_FAULT_INJECTION=1 (see .ci/fault-injection), every allocation
site a representative workload reaches is made to fail, one allocation at a
time, and each time:

* the request that lost its allocation gets a 500/503 (with the connection
  closed after it) or its connection is closed: never a wrong answer (a
  200 with a short body) and never a hang (every wait is bounded);
* the server goes on: a control request on a fresh connection gets 200;
* nothing crashes, and under ASan nothing leaks (the CI script checks the
  leak report for yimmo's frames).

The sweep is exhaustive per scenario ("fail the nth allocation" for every n
the scenario makes), then a second pass fails pairs of sites, for the sites
that are reached only on a failure path (the 500 an environ failure
answers with). The last test asserts that every site compiled in was
reached and failed at least once, and reports the list.

Skipped unless the extension has the private _fault_injection() function,
which only a fault-injection build has.
"""

import gc
import logging
import os
import socket
import sys
import threading
import time

import pytest

from yimmo import _logging, _yimmo
from yimmo._server import Server

from helpers import (IncompleteResponse, NoResponse, build_request,
                     chunked, connect, read_response, read_until_close)

fi = getattr(_yimmo, "_fault_injection", None)
pytestmark = pytest.mark.skipif(
    fi is None, reason="extension built without YIMMO_FAULT_INJECTION=1")

TIMEOUT = 3.0
BIG_CHUNK = 64 * 1024
BIG_CHUNKS = 16
FILE_SIZE = 300 * 1000

# site key -> [reached, failed], summed over every test of this module.
TALLY = {}


def key(site):
    return "%s:%d %s (%s)" % (site["file"], site["line"], site["func"],
                              site["what"])


def tally():
    """Add the injector's counters to TALLY, then reset (and disarm) it."""
    for site in fi("sites"):
        t = TALLY.setdefault(key(site), [0, 0])
        t[0] += site["reached"]
        t[1] += site["failed"]
    fi("reset")


# -- the app -----------------------------------------------------------------


def make_app(file_path):
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/slowecho":
            time.sleep(0.1)
            path = "/echo"
        if path == "/echo":
            body = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/big":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (bytes([65 + i]) * BIG_CHUNK for i in range(BIG_CHUNKS))
        if path == "/write":
            write = start_response("200 OK", [("Content-Length", "6000")])
            write(b"a" * 3000)
            write(b"b" * 3000)
            return []
        if path == "/file":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return environ["wsgi.file_wrapper"](open(file_path, "rb"))
        if path == "/boom":
            raise RuntimeError("boom (expected by the test)")
        if path == "/slow":
            time.sleep(0.6)
        if path == "/spin":
            # Past the watch server's timeout: its watchdog answers 503
            # and raises RequestTimeout here (bounded all the same).
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3 * TIMEOUT:
                pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]
    return app


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The main server, and one with a single worker and a queue timeout
    (for the 503 a worker answers a request that waited too long)."""
    path = tmp_path_factory.mktemp("fi") / "file.bin"
    path.write_bytes(bytes(range(256)) * (FILE_SIZE // 256) +
                     b"z" * (FILE_SIZE % 256))
    app = make_app(str(path))
    # App exceptions (ours and the MemoryErrors we cause) are expected and
    # kept off the console; what the server logs is checked at the end.
    logger = logging.getLogger("yimmo")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    old = logger.propagate
    logger.propagate = False
    logger.addHandler(handler)
    # With an access log: the loop's own answers (s_errors) then leave a
    # record for the log (conn.c, conn_log_answer), an allocation too.
    main = Server(app, bind="127.0.0.1:0", workers=2, max_body_size=600000,
                  body_timeout=2.0, header_timeout=2.0,
                  access_log=os.devnull).start()
    queued = Server(app, bind="127.0.0.1:0", workers=1, queue_timeout=0.2,
                    body_timeout=2.0, header_timeout=2.0).start()
    watch = Server(app, bind="127.0.0.1:0", workers=1, timeout=0.3,
                   body_timeout=2.0, header_timeout=2.0).start()
    yield {"main": main.address, "queue": queued.address,
           "watch": watch.address}
    main.stop(timeout=5)
    queued.stop(timeout=5)
    watch.stop(timeout=5)
    logger.removeHandler(handler)
    logger.propagate = old
    _logging.configure_access_log(None)
    assert main.stopped and queued.stopped and watch.stopped
    tally()
    # A failure path that returned NULL without an exception, or left one
    # set for later, shows as a SystemError in the error log.
    bad = [r for r in records if r.exc_info and r.exc_info[0] is not None
           and not issubclass(r.exc_info[0], (MemoryError, RuntimeError,
                                             OSError))]
    assert not bad, [(r.getMessage(), r.exc_info[:2]) for r in bad[:5]]


# -- checking one exchange -----------------------------------------------------


class Failed(Exception):
    """The server refused the request the way it should under memory
    pressure (a 5xx, then a close), or closed the connection."""


def expect(sock, check, method="GET", statuses=(200,)):
    """Read one response. A status in `statuses` must pass check(resp); a
    500 or 503 must close the connection after it; a close (with or without
    part of a response) is also a clean failure. A hang is not: the read's
    timeout propagates and fails the test."""
    try:
        resp = read_response(sock, method)
    except (NoResponse, IncompleteResponse, ConnectionResetError,
            BrokenPipeError) as exc:
        raise Failed("closed: %s" % type(exc).__name__)
    if resp.status in statuses:
        check(resp)
        return resp
    assert resp.status in (500, 503), resp.status
    rest = read_until_close(sock, TIMEOUT)
    if method != "HEAD":
        # (The server's own error responses carry their short text body
        # even for HEAD; the close after them keeps that harmless. Known,
        # not fixed here.)
        assert rest == b"", rest[:200]
    raise Failed(resp.status)


def send(sock, data):
    try:
        sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        raise Failed("closed while sending")


def body_is(expected):
    def check(resp):
        assert resp.body == expected, (len(resp.body), len(expected))
    return check


HELLO = body_is(b"hello")


# -- the scenarios ---------------------------------------------------------------
# Each drives a real connection; it returns when all went right and raises
# Failed when the server failed the request cleanly.

def s_get_keepalive(addr):
    with connect(addr, TIMEOUT) as sock:
        for _ in range(3):
            send(sock, build_request("GET", "/"))
            expect(sock, HELLO)


def s_pipelined(addr):
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("GET", "/") * 2 +
             build_request("POST", "/echo", body=b"p" * 3000) +
             build_request("GET", "/"))
        expect(sock, HELLO)
        expect(sock, HELLO)
        expect(sock, body_is(b"p" * 3000))
        expect(sock, HELLO)


def s_post_small(addr):
    body = os.urandom(5000)
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("POST", "/echo", body=body))
        expect(sock, body_is(body))


def s_post_with_head(addr):
    # 16 KB or more of body in one read with the head, nothing after: the
    # loop's read buffer becomes the exchange's input (then shrunk to the
    # body, which is whole).
    body = os.urandom(20000)
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("POST", "/echo", body=body))
        expect(sock, body_is(body))


def s_post_in_pieces(addr):
    # The body arrives after the head was kept: the connection's buffer
    # grows to body size.
    body = os.urandom(20000)
    req = build_request("POST", "/echo", body=body)
    with connect(addr, TIMEOUT) as sock:
        send(sock, req[:len(req) - len(body) + 1000])
        time.sleep(0.03)
        send(sock, req[len(req) - len(body) + 1000:])
        expect(sock, body_is(body))


def s_post_large(addr):
    # Beyond buffer_body: dispatched at once, streamed to the app.
    body = os.urandom(300000)
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("POST", "/echo", body=body))
        expect(sock, body_is(body))


def s_post_chunked(addr):
    # Cut inside the first chunk-size line: the connection keeps those
    # bytes, and its buffer grows to body size when the rest comes.
    body = os.urandom(40000)
    req = build_request("POST", "/echo", body=body,
                        chunk_size=[1000, 7000, 13])
    cut = req.index(b"\r\n\r\n") + 6
    with connect(addr, TIMEOUT) as sock:
        send(sock, req[:cut])
        time.sleep(0.03)
        send(sock, req[cut:])
        expect(sock, body_is(body))


def s_post_paused(addr):
    # A chunked body past the input high-water mark while the app has not
    # started reading: the loop pauses with chunks still in the
    # connection's buffer, which it keeps and grows when reading resumes.
    body = os.urandom(450000)
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("POST", "/slowecho", body=body,
                                 chunk_size=1000))
        expect(sock, body_is(body))


def s_expect_continue(addr):
    body = os.urandom(100000)
    with connect(addr, TIMEOUT) as sock:
        head = build_request("POST", "/echo", body=body,
                             headers=[("Expect", "100-continue")])
        send(sock, head[:-len(body)])
        # A client that waits for the 100 before sending (as RFC 9110
        # allows) must get it, or a final answer: never silence.
        interim = expect(sock, lambda r: None, statuses=(100,))
        assert interim.status == 100
        send(sock, body)
        expect(sock, body_is(body))


def s_expect_continue_small(addr):
    # Small enough to buffer: the loop sends the 100 itself.
    body = os.urandom(1000)
    with connect(addr, TIMEOUT) as sock:
        head = build_request("POST", "/echo", body=body,
                             headers=[("Expect", "100-continue")])
        send(sock, head[:-len(body)])
        interim = expect(sock, lambda r: None, statuses=(100,))
        assert interim.status == 100
        send(sock, body)
        expect(sock, body_is(body))


def s_big_stream(addr):
    expected = b"".join(bytes([65 + i]) * BIG_CHUNK
                        for i in range(BIG_CHUNKS))
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("GET", "/big"))
        expect(sock, body_is(expected))
        send(sock, build_request("HEAD", "/big"))
        expect(sock, body_is(b""), method="HEAD")


def s_write(addr):
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("GET", "/write"))
        expect(sock, body_is(b"a" * 3000 + b"b" * 3000))


def s_file(addr):
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("GET", "/file"))
        expect(sock, lambda r: len(r.body) == FILE_SIZE or pytest.fail(
            "file body of %d bytes" % len(r.body)))


def s_errors(addr):
    # 400 (a bad head) and 413 (a body over max_body_size): the loop's
    # own answers, each followed by a close.
    for req, status in ((b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
                        (b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 700000\r\n\r\n", 413)):
        with connect(addr, TIMEOUT) as sock:
            send(sock, req)
            expect(sock, lambda r: None, statuses=(status,))
            read_until_close(sock, TIMEOUT)


def s_app_exception(addr):
    with connect(addr, TIMEOUT) as sock:
        send(sock, build_request("GET", "/boom"))
        expect(sock, lambda r: None, statuses=(500,))


def s_long_head(addr):
    # A head over the first buffer, in two pieces (the buffer grows), with
    # a path and a header name long enough to need buffers in environ.
    req = build_request("GET", "/" + "p" * 2000,
                        headers=[("X-" + "n" * 300, "v"),
                                 ("X-Pad", "q" * 5000),
                                 ("X-Pad2", "r" * 5000)])
    with connect(addr, TIMEOUT) as sock:
        send(sock, req[:6000])
        time.sleep(0.03)
        send(sock, req[6000:])
        expect(sock, HELLO)


def s_queue_timeout(addrs):
    # One worker busy for 0.6 s; a request behind it waits past the
    # queue timeout and the worker answers 503 without the app.
    with connect(addrs["queue"], TIMEOUT) as slow, \
            connect(addrs["queue"], TIMEOUT) as late:
        send(slow, build_request("GET", "/slow"))
        time.sleep(0.1)
        send(late, build_request("GET", "/"))
        try:
            # (A 200 when the slow request is the one that failed.)
            expect(late, lambda r: r.status == 503 or HELLO(r),
                   statuses=(503, 200))
        finally:
            try:
                expect(slow, HELLO)
            except Failed:
                pass


def s_watchdog(addrs):
    # A request past the request timeout: the watchdog's 503 (its error
    # response is an allocation of its own; failed, the client sees the
    # connection close instead).
    with connect(addrs["watch"], TIMEOUT) as sock:
        send(sock, build_request("GET", "/spin"))
        expect(sock, lambda r: None, statuses=(503,))
        assert read_until_close(sock, TIMEOUT) == b""


SCENARIOS = [s_get_keepalive, s_pipelined, s_post_small, s_post_with_head,
             s_post_in_pieces,
             s_post_large, s_post_chunked, s_post_paused, s_expect_continue,
             s_expect_continue_small,
             s_big_stream, s_write, s_file, s_errors, s_app_exception,
             s_long_head, s_queue_timeout, s_watchdog]


def run(scenario, addrs):
    """Run a scenario; True when it went right, False when it failed
    cleanly."""
    try:
        if scenario in (s_queue_timeout, s_watchdog):
            scenario(addrs)
        else:
            scenario(addrs["main"])
    except Failed:
        return False
    return True


def control(addrs):
    """Both servers still answer."""
    for addr in addrs.values():
        with connect(addr, TIMEOUT) as sock:
            sock.sendall(build_request("GET", "/"))
            resp = read_response(sock)
            assert resp.status == 200 and resp.body == b"hello"


# -- the sweeps ------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_nth_allocation_fails(servers, scenario):
    """Fail each allocation the scenario makes, one run per allocation."""
    fi("reset")
    assert run(scenario, servers), "fails with nothing armed"
    checks, _ = fi("totals")
    tally()
    assert checks > 0
    # A few more than the dry run: the count varies with how reads split.
    failed_any = 0
    for n in range(1, checks + 3):
        fi("reset")
        fi("nth", n)
        ok = run(scenario, servers)
        _, failures = fi("totals")
        tally()
        failed_any += failures
        if failures and ok:
            # The failure was absorbed (a buffer that could not grow, a
            # Date line) or hit what the client does not see: allowed,
            # the checks in the scenario passed.
            pass
        control(servers)
    assert failed_any > 0


def test_failure_on_failure_path(servers):
    """Sites reached only once another allocation has failed (the error
    response a worker makes when environ could not be built): fail both."""
    # Which site, failing, leads to which others: found by failing each
    # site reached by the scenarios and looking at what else was reached.
    pairs = []
    for scenario in SCENARIOS:
        fi("reset")
        run(scenario, servers)
        base = {s["id"] for s in fi("sites") if s["reached"]}
        tally()
        for first in sorted(base):
            fi("reset")
            fi("site", first)
            run(scenario, servers)
            now = {s["id"] for s in fi("sites") if s["reached"]}
            tally()
            for extra in sorted(now - base):
                pairs.append((scenario, first, extra))
            control(servers)
    assert pairs, "no failure path reaches a site of its own"
    for scenario, first, extra in pairs:
        fi("reset")
        fi("site", first)
        fi("site", extra)
        # Whether `extra` is reached again depends on timing (how reads
        # split): the coverage test at the end checks it was, somewhere.
        run(scenario, servers)
        tally()
        control(servers)


def test_random_failures(servers):
    """Every scenario under 5% random failures, reproducibly seeded: any
    mix of failures, on the loop and the workers at once."""
    for seed in range(3):
        fi("reset")
        fi("random", 0.05, seed)
        threads = [threading.Thread(target=run, args=(s, servers))
                   for s in SCENARIOS if s is not s_queue_timeout]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a scenario hung"
        tally()
        control(servers)


def open_fds():
    # Sockets that earlier tests dropped are closed when the garbage
    # collector gets to them: collect first, so that only this test's
    # descriptors can change the count.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def test_server_construction_fails_cleanly():
    """Fail each allocation of building a server (its buffers, each
    worker's locks, the listener tables): the constructor raises, keeps no
    descriptor, and the next server works."""
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"hello"]

    # The counts are the process's: the servers of the other tests (the
    # module's fixture) allocate too when a connection an earlier test
    # closed wakes them (conn_wake). Counted in the dry run, such an
    # allocation left the last n with nothing to fail (seen once in CI):
    # count until two dry runs agree.
    counts = []
    while len(counts) < 2 or counts[-1] != counts[-2]:
        assert len(counts) < 10, counts
        time.sleep(0.1)
        fi("reset")
        Server(app, bind="127.0.0.1:0", workers=2).stop(timeout=1)
        counts.append(fi("totals")[0])
        tally()
    checks = counts[-1]
    assert checks > 0
    for n in range(1, checks + 1):
        before = open_fds()
        fi("reset")
        fi("nth", n)
        try:
            server = Server(app, bind="127.0.0.1:0", workers=2)
        except (OSError, MemoryError):
            pass
        else:
            server.stop(timeout=1)
        _, failures = fi("totals")
        tally()
        assert failures == 1
        assert open_fds() == before
    server = Server(app, bind="127.0.0.1:0", workers=2).start()
    try:
        control({"main": server.address})
    finally:
        server.stop(timeout=5)


SUBPROCESS_SERVER = """
import socket
from yimmo import _yimmo
from yimmo._server import Server

def app(environ, start_response):
    start_response("200 OK", [])
    return [b"hi"]

server = Server(app, bind="127.0.0.1:0", workers=1).start()
got = []
for _ in range(2):
    with socket.create_connection(server.address, timeout=3) as c:
        try:
            c.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            got.append(c.recv(12))
        except ConnectionResetError:
            got.append(b"")
server.stop(timeout=3)
print(got)
print([s["failed"] for s in _yimmo._fault_injection("sites")
       if s["func"] == "ymo_conn_new"])
"""


def test_env_var_arms_a_subprocess_server():
    """YIMMO_FAULT_ALLOC arms a server in another process: the first
    connection's allocation fails (it is closed), the second is served."""
    import subprocess
    site = [s for s in fi("sites") if s["func"] == "ymo_conn_new"][0]
    spec = "site=%s:%d@1" % (site["file"], site["line"])
    out = subprocess.run([sys.executable, "-c", SUBPROCESS_SERVER],
                         env=dict(os.environ, YIMMO_FAULT_ALLOC=spec),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[b'', b'HTTP/1.1 200']", "[1]"]
    bad = subprocess.run([sys.executable, "-c", "import yimmo._yimmo"],
                         env=dict(os.environ, YIMMO_FAULT_ALLOC="bogus"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "YIMMO_FAULT_ALLOC" in bad.stderr


def site_id(func, what):
    for s in fi("sites"):
        if s["func"] == func and s["what"] == what:
            return s["id"]
    raise LookupError((func, what))


@pytest.mark.parametrize("which", ["reference", "crlf"])
def test_failed_write_of_a_referenced_chunk_leaves_nothing(which):
    """write() of a 64 KB bytes object in a chunked body (sent by
    reference: size line, reference bucket, CRLF bucket) that fails with
    MemoryError, caught by the app, leaves no part of the chunk behind:
    the body is the two writes that succeeded, framed right."""
    big = b"x" * (64 * 1024)
    caught = {}

    def app(environ, start_response):
        write = start_response("200 OK", [])
        write(b"head")
        if which == "reference":
            fi("site", site_id("pend_ref", "reference bucket"))
        else:
            # the 2nd bucket: the size line's, then the CRLF's
            fi("site", site_id("pend_reserve_in", "bucket"), 2)
        try:
            write(big)
        except MemoryError as e:
            caught["e"] = e
        tally()
        write(b"tail")
        return []

    with Server(app, bind="127.0.0.1:0", workers=1) as server:
        with connect(server.address) as sock:
            sock.sendall(build_request("GET", "/", headers=[
                ("Connection", "close")]))
            raw = read_until_close(sock, require_close=False)
    assert "e" in caught
    assert raw.split(b"\r\n\r\n", 1)[1] == \
        b"4\r\nhead\r\n4\r\ntail\r\n0\r\n\r\n"


def test_every_site_reached_and_failed():
    """The coverage report: every site compiled in was reached and made to
    fail at least once by the tests above."""
    tally()
    lines = ["%-70s reached %7d failed %5d" % (k, r, f)
             for k, (r, f) in sorted(TALLY.items())]
    missed = [k for k, (r, f) in TALLY.items() if f == 0]
    report = ("allocation sites: %d compiled in, %d reached, %d failed\n%s"
              % (len(TALLY), sum(1 for r, f in TALLY.values() if r),
                 sum(1 for r, f in TALLY.values() if f), "\n".join(lines)))
    path = os.environ.get("YIMMO_FI_REPORT")
    if path:
        with open(path, "w") as f:
            f.write(report + "\n")
    assert len(TALLY) == len(fi("sites"))
    assert not missed, report

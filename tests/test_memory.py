"""Memory stays bounded whatever the body size: 1 GB uploads (Content-Length
and chunked) and a 1 GB download to a client that is slow to read, served
by a server in a subprocess whose RSS (VmRSS) is sampled throughout. And a
client that stops reading a huge response occupies one worker, not the
server."""

import re
import signal
import sys
import textwrap
import threading
import time

import pytest

from helpers import (ServerProcess, build_request, connect, get,
                     read_response, reader_for, skip_under_asan,
                     subprocess_env, wait_readable)

pytestmark = skip_under_asan

GB = 1 << 30
BLOCK_SIZE = 65536
N_BLOCKS = GB // BLOCK_SIZE
MAX_GROWTH_KB = 32 * 1024
BLOCK = bytes(range(256)) * (BLOCK_SIZE // 256)
DOUBLE = BLOCK * 2
IO_TIMEOUT = 30

APP = textwrap.dedent('''
    import threading

    BLOCK = bytes(range(256)) * 256          # 64 KB, as in the test
    DOUBLE = BLOCK * 2
    stats = {"yielded": 0, "closed": 0, "tiny": 0}


    def tiny(n):
        for _ in range(n):
            stats["tiny"] += 1
            yield b"x"


    class Download:
        """n blocks; counts what it yielded and whether close() came."""

        def __init__(self, n):
            self.left = n

        def __iter__(self):
            return self

        def __next__(self):
            if self.left <= 0:
                raise StopIteration
            self.left -= 1
            stats["yielded"] += 1
            return BLOCK

        def close(self):
            stats["closed"] += 1


    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/upload":
            # 64 KB reads; each piece is checked against the repeating
            # block at its offset (a cheap integrity check of 1 GB).
            inp = environ["wsgi.input"]
            total = bad = 0
            while True:
                piece = inp.read(65536)
                if not piece:
                    break
                off = total % 65536
                if piece != DOUBLE[off:off + len(piece)]:
                    bad += 1
                total += len(piece)
            body = b"%d %d" % (total, bad)
        elif path == "/download":
            n = int(environ["QUERY_STRING"])
            start_response("200 OK", [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(n * len(BLOCK)))])
            return Download(n)
        elif path == "/stats":
            body = b"%d %d" % (stats["yielded"], stats["closed"])
        elif path == "/tiny":
            # A stream of one-byte items (chunked), as an SSE or a
            # per-token endpoint sends: each is posted on its own.
            start_response("200 OK", [("Content-Type", "text/plain")])
            return tiny(int(environ["QUERY_STRING"]))
        elif path == "/tinystats":
            body = b"%d" % stats["tiny"]
        else:
            body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
''')

SERVE = ("import memapp, yimmo; yimmo.serve(memapp.app, "
         "bind='127.0.0.1:0', workers=2, graceful_timeout=5)")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)\s+kB", f.read()).group(1))


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread."""

    def __init__(self, pid, interval=0.2):
        self.pid = pid
        self.interval = interval
        self.samples = [rss_kb(pid)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(rss_kb(self.pid))
            except (OSError, AttributeError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.samples.append(rss_kb(self.pid))

    def assert_bounded(self, baseline, what):
        peak = max(self.samples)
        assert peak - baseline < MAX_GROWTH_KB, (
            "RSS of the server grew by %.1f MB during %s (baseline %.1f MB, "
            "peak %.1f MB, %d samples)" % ((peak - baseline) / 1024, what,
                                          baseline / 1024, peak / 1024,
                                          len(self.samples)))


@pytest.fixture
def mem_server(tmp_path):
    """(process, address) of a server in a subprocess, warmed up; SIGTERM
    at the end must stop it cleanly."""
    (tmp_path / "memapp.py").write_text(APP)
    with ServerProcess([sys.executable, "-c", SERVE], cwd=str(tmp_path),
                       env=subprocess_env()) as proc:
        addr = proc.wait_listening()
        # Warm up every path once (small), so the baseline includes what
        # any first request allocates for good.
        assert get(addr).body == b"ok"
        with connect(addr) as sock:
            sock.sendall(build_request("POST", "/upload", body=BLOCK * 16))
            assert read_response(sock).body == b"%d 0" % (16 * BLOCK_SIZE)
            sock.sendall(build_request("GET", "/download?16"))
            assert len(read_response(sock).body) == 16 * BLOCK_SIZE
        # close() of that download's iterable may come just after the
        # client has the whole response: wait for it, so tests start from
        # settled counters.
        deadline = time.monotonic() + 10
        while stats(addr) != (16, 1):
            assert time.monotonic() < deadline, stats(addr)
            time.sleep(0.02)
        yield proc, addr
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr


def stats(addr):
    """(blocks yielded by all downloads, close() calls of their iterables)."""
    yielded, closed = get(addr, "/stats").body.split()
    return int(yielded), int(closed)


def wait_stalled(look, what, timeout=20):
    """Wait (bounded) until what look() returns (the app's count of items
    asked for) has not changed for 0.5 s: the response stalls on a client
    that reads nothing. Returns the last value."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        value = look()
        now = time.monotonic()
        if value != last:
            last, since = value, now
        elif now - since > 0.5:
            return value
        assert now < deadline, "%s never stalled" % what
        time.sleep(0.05)


def settle_baseline(pid):
    """RSS once idle (the warm-up responses have been freed)."""
    return rss_kb(pid)


def test_upload_1gb_content_length_bounded_memory(mem_server):
    proc, addr = mem_server
    pid = proc.proc.pid
    baseline = settle_baseline(pid)
    with connect(addr, IO_TIMEOUT) as sock, RssSampler(pid) as rss:
        sock.sendall(build_request("POST", "/upload",
                                   [("Content-Length", str(GB))]))
        for _ in range(N_BLOCKS):
            sock.sendall(BLOCK)
        resp = read_response(sock)
    assert resp.status == 200, resp
    assert resp.body == b"%d 0" % GB
    rss.assert_bounded(baseline, "a 1 GB upload")


def test_upload_1gb_chunked_bounded_memory(mem_server):
    proc, addr = mem_server
    pid = proc.proc.pid
    baseline = settle_baseline(pid)
    chunk = b"%x\r\n%s\r\n" % (BLOCK_SIZE, BLOCK)
    with connect(addr, IO_TIMEOUT) as sock, RssSampler(pid) as rss:
        sock.sendall(build_request("POST", "/upload",
                                   [("Transfer-Encoding", "chunked")]))
        for _ in range(N_BLOCKS):
            sock.sendall(chunk)
        sock.sendall(b"0\r\n\r\n")
        resp = read_response(sock)
    assert resp.status == 200, resp
    assert resp.body == b"%d 0" % GB
    rss.assert_bounded(baseline, "a 1 GB chunked upload")


def test_download_1gb_to_slow_starting_client_bounded_memory(mem_server):
    proc, addr = mem_server
    pid = proc.proc.pid
    baseline = settle_baseline(pid)
    with connect(addr, IO_TIMEOUT) as sock, RssSampler(pid) as rss:
        sock.sendall(build_request("GET", "/download?%d" % N_BLOCKS))
        # Not reading at all for a while: the server must wait, not buffer.
        assert wait_readable(sock, 5)
        time.sleep(0.5)
        reader = reader_for(sock)
        head = reader.read_head()
        assert head["status"] == 200
        assert int(head["headers"]["Content-Length"]) == GB
        got = 0
        bad = 0
        pending = bytes(reader.buf)
        reader.buf.clear()
        buf = bytearray(BLOCK_SIZE)
        view = memoryview(buf)
        while got < GB:
            if pending:
                n = min(len(pending), BLOCK_SIZE)
                view[:n] = pending[:n]
                pending = pending[n:]
            else:
                n = sock.recv_into(buf, min(BLOCK_SIZE, GB - got))
                assert n, "connection closed after %d bytes" % got
            off = got % BLOCK_SIZE
            if bytes(view[:n]) != DOUBLE[off:off + n]:
                bad += 1
            got += n
        # nothing after the body: the connection stays usable
        sock.sendall(build_request("GET", "/"))
        assert read_response(sock).body == b"ok"
    assert got == GB and bad == 0
    rss.assert_bounded(baseline, "a 1 GB download")


def test_small_items_to_clients_that_do_not_read_bounded_memory(mem_server):
    # Every item posted on its own took a 4 KB bucket, and the output's
    # high-water mark counted only its bytes: one client that read nothing
    # of a stream of one-byte items pinned 175 MB (hostile review). The
    # mark now counts the buckets' memory.
    proc, addr = mem_server
    pid = proc.proc.pid
    baseline = settle_baseline(pid)
    # One of the two workers; the other answers /tinystats.
    clients = [connect(addr, IO_TIMEOUT)]
    try:
        with RssSampler(pid, interval=0.1) as rss:
            for sock in clients:
                sock.sendall(build_request("GET", "/tiny?100000000"))
            for sock in clients:
                assert wait_readable(sock, 5), "no response head"
            wait_stalled(lambda: int(get(addr, "/tinystats").body),
                         "the stream")
        rss.assert_bounded(baseline, "a stalled stream of 1-byte items")
    finally:
        for sock in clients:
            sock.close()


def test_paused_download_does_not_block_other_clients(mem_server):
    proc, addr = mem_server
    pid = proc.proc.pid
    baseline = settle_baseline(pid)
    yielded0, closed0 = stats(addr)
    slow = connect(addr, IO_TIMEOUT)
    try:
        with RssSampler(pid) as rss:
            slow.sendall(build_request("GET", "/download?%d" % N_BLOCKS))
            assert wait_readable(slow, 5), "no response head"
            # Each look is itself a request served while the slow client
            # is not reading.
            yielded, closed = wait_stalled(lambda: stats(addr),
                                           "the download")
            assert closed == closed0
            assert yielded - yielded0 < N_BLOCKS
            # Others are served meanwhile, uploads included.
            for i in range(3):
                assert get(addr, "/%d" % i).body == b"ok"
            with connect(addr, IO_TIMEOUT) as other:
                other.sendall(build_request("POST", "/upload",
                                            body=BLOCK * 64))
                assert read_response(other).body == b"%d 0" % (
                    64 * BLOCK_SIZE)
            assert stats(addr) == (yielded, closed0), \
                "the stalled download moved or ended during the test"
        rss.assert_bounded(baseline, "a stalled 1 GB download")
    finally:
        slow.close()
    # The client went away without reading: the iterable is closed.
    deadline = time.monotonic() + 10
    while stats(addr)[1] == closed0:
        assert time.monotonic() < deadline, \
            "close() not called after the slow client disconnected"
        time.sleep(0.05)

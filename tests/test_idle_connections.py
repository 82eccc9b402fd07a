"""Idle keep-alive connections cost little memory: between requests a
connection keeps only a small struct (no buffers, no parser, no timer of
its own), so thousands of idle clients fit where a few hundred busy ones
would. And the shared timer that replaces the per-connection ones still
closes each idle connection at its own time: a kept-alive connection after
keepalive_timeout from its last response, a connection that never sent a
request after header_timeout from its accept."""

import resource
import socket
import sys
import textwrap
import time

import pytest

from helpers import (ServerProcess, connect, read_response, read_until_close,
                     request, skip_under_asan, subprocess_env)

# Heap bytes per idle connection: about 130 today (one 128-byte malloc
# chunk, plus libev's per-fd entry); 576 before idle connections gave
# back their busy part. bjoern's whole RSS cost is about 270 bytes.
MAX_HEAP_PER_CONN = 300
N_CONNS = 1000
IO_TIMEOUT = 10
SLACK = 2.5     # how late a timer may fire on a busy 2-core machine

APP = textwrap.dedent('''
    import ctypes


    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost")]


    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/heap":
            # Bytes in use in malloc's chunks and mmapped blocks, all
            # arenas (all threads).
            m = libc.mallinfo2()
            body = b"%d" % (m.uordblks + m.hblkhd)
        else:
            body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
''')

SERVE = ("import heapapp, yimmo; yimmo.serve(heapapp.app, "
         "bind='127.0.0.1:0', workers=2, keepalive_timeout=600, "
         "graceful_timeout=5)")


def has_mallinfo2():
    import ctypes
    try:
        ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return False
    return True


def heap(sock):
    sock.sendall(b"GET /heap HTTP/1.1\r\nHost: x\r\n\r\n")
    return int(read_response(sock).body)


@skip_under_asan
@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    not has_mallinfo2(), reason="needs glibc's mallinfo2")
def test_idle_keepalive_connection_costs_little_heap(tmp_path):
    # This process and the server (which inherits the limit) each hold a
    # descriptor per connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = N_CONNS + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, need))
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    (tmp_path / "heapapp.py").write_text(APP)
    socks = []
    try:
        with ServerProcess([sys.executable, "-c", SERVE], cwd=str(tmp_path),
                           env=subprocess_env()) as proc:
            addr = proc.wait_listening()
            with connect(addr, IO_TIMEOUT) as probe:
                # Warm up: whatever the first requests allocate for good.
                for _ in range(20):
                    heap(probe)
                warm = [connect(addr, IO_TIMEOUT) for _ in range(20)]
                for s in warm:
                    assert request(s).body == b"ok"
                    s.close()
                before = heap(probe)
                for _ in range(N_CONNS):
                    s = connect(addr, IO_TIMEOUT)
                    socks.append(s)
                    assert request(s).body == b"ok"
                # The last response may be written a moment before its
                # connection goes idle: settle on a stable reading.
                after = heap(probe)
                for _ in range(20):
                    time.sleep(0.05)
                    again = heap(probe)
                    if again == after:
                        break
                    after = again
                per_conn = (after - before) / N_CONNS
                assert per_conn < MAX_HEAP_PER_CONN, (
                    "%d idle keep-alive connections hold %.0f heap bytes "
                    "each (before %d, after %d)" % (N_CONNS, per_conn,
                                                    before, after))
                # All of them still work.
                for s in socks[::50]:
                    assert request(s).body == b"ok"
            for s in socks:
                s.close()
            socks = []
            proc.signal(15)
            assert proc.wait(15) == 0, proc.stderr
    finally:
        for s in socks:
            s.close()


def ok_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", "2")])
    return [b"ok"]


def closed_after(sock, t0, timeout):
    """Seconds from t0 until the server closed sock (with nothing sent)."""
    assert read_until_close(sock, timeout) == b""
    return time.monotonic() - t0


def test_each_idle_connection_closes_at_its_own_time(yimmo_server):
    """Kept-alive connections idle since different moments, and one that
    never sent a request (its own, longer, timeout), all on the one shared
    timer: each closes at its own deadline, not at another's."""
    server = yimmo_server(ok_app, workers=2, keepalive_timeout=0.6,
                          header_timeout=2.4)
    t0 = time.monotonic()
    fresh = connect(server.address, IO_TIMEOUT)
    early = connect(server.address, IO_TIMEOUT)
    late = connect(server.address, IO_TIMEOUT)
    with fresh, early, late:
        assert request(early).body == b"ok"
        t_early = time.monotonic()
        time.sleep(0.4)
        assert request(late).body == b"ok"
        t_late = time.monotonic()
        # early: idle since t_early; late went idle 0.4 s later.
        e = closed_after(early, t_early, IO_TIMEOUT)
        lt = closed_after(late, t_late, IO_TIMEOUT)
        # The fresh connection is still open: its timeout is the header
        # timeout, from its accept.
        fresh.settimeout(0)
        with pytest.raises(BlockingIOError):
            fresh.recv(1)
        fresh.settimeout(IO_TIMEOUT)
        f = closed_after(fresh, t0, IO_TIMEOUT)
    # (late closing with early would make lt about 0.2 s.)
    assert 0.6 * 0.6 <= e <= 0.6 + SLACK, e
    assert 0.6 * 0.6 <= lt <= 0.6 + SLACK, lt
    assert 0.6 * 2.4 <= f <= 2.4 + SLACK, f


def test_idle_connection_woken_by_a_request_is_not_closed_by_its_old_wait(
        yimmo_server):
    """A connection that was idle, became busy and went idle again waits
    its full keep-alive timeout from its last response: the shared timer
    set for its first wait closes nothing that is no longer idle then."""
    server = yimmo_server(ok_app, workers=2, keepalive_timeout=0.6)
    with connect(server.address, IO_TIMEOUT) as sock:
        assert request(sock).body == b"ok"
        time.sleep(0.4)
        assert request(sock).body == b"ok"
        t1 = time.monotonic()
        # The first wait would have ended 0.2 s from now.
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(1)
        sock.settimeout(IO_TIMEOUT)
        assert request(sock).body == b"ok"
        t2 = time.monotonic()
        assert t2 - t1 >= 0.45
        assert 0.6 * 0.6 <= closed_after(sock, t2, IO_TIMEOUT) <= 0.6 + SLACK


def test_many_proxy_headers_alone_keep_the_idle_list_in_order(yimmo_server):
    """Connections from a trusted proxy that send only their PROXY header,
    oldest first: each goes back to the fresh list behind younger ones
    (its wait began at its accept). Past a bounded walk its wait counts
    from the tail's start; every one still closes at about
    header_timeout, none early and none left open."""
    n = 100
    server = yimmo_server(ok_app, workers=1, proxy_protocol=True,
                          header_timeout=1.5)
    socks = []
    try:
        t0 = time.monotonic()
        for _ in range(n):
            socks.append(connect(server.address, IO_TIMEOUT))
        opened = time.monotonic() - t0
        time.sleep(0.3)
        for i, s in enumerate(socks):
            s.sendall(b"PROXY TCP4 192.0.2.%d 192.0.2.1 %d 80\r\n"
                      % (i % 250 + 1, 1000 + i))
        times = [closed_after(s, t0, IO_TIMEOUT) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert min(times) >= 1.5 * 0.6, times
    assert max(times) <= 1.5 + opened + SLACK, (opened, times)
    # And the server still answers after all that.
    with connect(server.address, IO_TIMEOUT) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.9 192.0.2.1 1 80\r\n")
        assert request(sock).body == b"ok"

"""System calls the loop makes per request, counted with strace: none that
fails. (Skipped where strace is missing or may not trace.)"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from helpers import (APPS_DIR, ServerProcess, connect, read_response,
                     subprocess_env)

WAIT = 20

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                 reason="needs strace")


def _can_trace():
    try:
        r = subprocess.run(["strace", "-o", os.devnull, "true"],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_waiting_for_room_costs_no_failing_epoll_ctl(tmp_path):
    # One worker and no pending slots: of 6 keep-alive connections that
    # send at once, 5 wait for room for each request. Their read watchers
    # used to go off and on around each wait, and libev re-adds a
    # restarted fd to epoll, which it never took out: an
    # epoll_ctl(EPOLL_CTL_ADD) failing with EEXIST per request.
    if not _can_trace():
        pytest.skip("strace cannot trace here (ptrace refused)")
    out = tmp_path / "strace.txt"
    conns, rounds = 6, 30
    with _traced_yimmo(out, "epoll_ctl",
                       ["-b", "127.0.0.1:0", "--workers", "1",
                        "--max-pending", "0", "hello:app"]) as proc:
        addr = proc.wait_listening(WAIT)
        socks = [connect(addr) for _ in range(conns)]
        req = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
        for _ in range(rounds):
            for s in socks:
                s.sendall(req)
            for s in socks:
                resp = read_response(s)
                assert resp.status == 200 and resp.body == b"hello from /x"
        for s in socks:
            s.close()
    lines = out.read_text().splitlines()
    calls = [ln for ln in lines if "epoll_ctl(" in ln]
    failed = [ln for ln in calls if "= -1" in ln]
    assert calls, "strace saw no epoll_ctl at all"
    # At most the one of the signal that stops the server: run() starts
    # its wake-up fd's watcher again (once per signal, not per request).
    assert len(failed) <= 1, "%d of %d epoll_ctl failed, e.g. %s" % (
        len(failed), len(calls), failed[:3])
    # A watcher goes on once per connection, not once per request.
    assert len(calls) < conns * rounds // 2, len(calls)


@contextlib.contextmanager
def _traced_yimmo(out, trace, args, env=None):
    """`python -m yimmo ARGS` under `strace -e trace=TRACE` (written to
    out); yields the ServerProcess once the server (strace's child) has
    logged, which gets SIGTERM after the with body and must exit 0."""
    with ServerProcess(["strace", "-f", "-qq", "-o", str(out),
                        "-e", "trace=" + trace, "-e", "signal=none",
                        sys.executable, "-m", "yimmo"] + args,
                       cwd=APPS_DIR, env=env) as proc:
        # The server's pid (strace's child) from its log line.
        server = int(proc.wait_for_line(r"\[(\d+)\] \[INFO\] Listening at",
                                        timeout=WAIT).group(1))
        try:
            yield proc
            os.kill(server, signal.SIGTERM)
            assert proc.wait(WAIT) == 0
        finally:
            try:
                os.kill(server, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _serve_files_traced(tmp_path, bind):
    """Run the files app under strace on `bind` and fetch, on one
    keep-alive connection, files (sent with sendfile under TCP_CORK) mixed
    with small responses; returns strace's setsockopt lines."""
    files = tmp_path / "files"
    files.mkdir()
    small = os.urandom(700)
    big = os.urandom(3 << 20)
    (files / "small").write_bytes(small)
    (files / "big").write_bytes(big)
    out = tmp_path / "strace.txt"
    env = subprocess_env(YIMMO_TEST_FILES=str(files))
    plan = [("/f/small", small), ("/hello", b"hello from /hello"),
            ("/f/big", big), ("/f/small?chunked", small),
            ("/f/big?chunked", big), ("/hello", b"hello from /hello")]
    with _traced_yimmo(out, "setsockopt",
                       ["--workers", "2", "-b", bind, "files:app"],
                       env) as proc:
        addr = (bind if bind.startswith("unix:")
                else proc.wait_listening(WAIT))
        s = connect(addr)
        for _ in range(3):
            for target, body in plan:
                s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
                          % target.encode())
                resp = read_response(s)
                assert resp.status == 200 and resp.body == body, target
        # Pipelined: a file between two small responses.
        s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
                           % t.encode()
                           for t in ("/hello", "/f/big", "/hello")))
        for body in (b"hello from /hello", big, b"hello from /hello"):
            assert read_response(s).body == body
        s.close()
    return out.read_text().splitlines()


def test_a_file_goes_out_corked_and_the_cork_comes_off(tmp_path):
    # A wsgi.file_wrapper response is written with TCP_CORK on (the head
    # shares the file's first segment, segments are full, and over
    # loopback the sender's CPU transmits, not the reader's), and the cork
    # comes off once the response is written: left on, the next small
    # response would wait up to 200 ms for the kernel to let it go.
    if not _can_trace():
        pytest.skip("strace cannot trace here (ptrace refused)")
    lines = _serve_files_traced(tmp_path, "127.0.0.1:0")
    corks = [ln for ln in lines if "TCP_CORK" in ln]
    assert not [ln for ln in corks if "= -1" in ln], corks
    by_fd = {}
    for ln in corks:
        fd = ln.split("setsockopt(", 1)[1].split(",", 1)[0]
        by_fd.setdefault(fd, []).append("[1]" in ln)
    # One client connection (the probe that waits for the listener may
    # be another, which asks for no file).
    on_off = [v for v in by_fd.values() if v]
    assert len(on_off) == 1, corks
    seq = on_off[0]
    # On, off, on, off...: 4 files in each of 3 rounds, then 1 pipelined
    # (which may share its cork with nothing else).
    assert seq == [True, False] * (len(seq) // 2), corks
    assert len(seq) == 2 * (4 * 3 + 1), corks


def test_no_cork_on_a_unix_socket(tmp_path):
    if not _can_trace():
        pytest.skip("strace cannot trace here (ptrace refused)")
    sock = tmp_path / "s.sock"
    lines = _serve_files_traced(tmp_path, "unix:%s" % sock)
    assert not [ln for ln in lines if "TCP_" in ln], lines


def test_no_write_takes_more_than_a_turn(tmp_path):
    # conn_flush writes at most YMO_FLUSH_TURN (512 KB) per connection per
    # turn of the loop, so that a response to a reader as fast as the
    # server does not hold up the others. A big item from memory went out
    # in one sendmsg as large as the socket's send buffer (loopback
    # autotunes it to several MB: 9.5 MB seen). (A write of one piece is
    # a send, which strace shows as sendto.)
    if not _can_trace():
        pytest.skip("strace cannot trace here (ptrace refused)")
    files = tmp_path / "files"
    files.mkdir()
    big = os.urandom(24 << 20)
    (files / "big").write_bytes(big)
    out = tmp_path / "strace.txt"
    env = subprocess_env(YIMMO_TEST_FILES=str(files))
    with _traced_yimmo(out, "sendmsg,sendto,sendfile",
                       ["--workers", "1", "-b", "127.0.0.1:0", "files:app"],
                       env) as proc:
        addr = proc.wait_listening(WAIT)
        with connect(addr, WAIT) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            for target in ("/f/big?memory", "/f/big", "/f/big?memory"):
                s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
                          % target.encode())
                resp = read_response(s)
                assert resp.status == 200 and resp.body == big, target
    sizes = [int(m.group(1)) for m in
             (re.search(r"(?:sendmsg|sendto|sendfile)\b.*= (\d+)\s*$", ln)
              for ln in out.read_text().splitlines()) if m]
    assert sum(sizes) >= 3 * len(big), "strace saw too few writes"
    assert max(sizes) <= 512 * 1024, sorted(sizes)[-5:]

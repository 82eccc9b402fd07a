"""System calls the loop makes per request, counted with strace: none that
fails. (Skipped where strace is missing or may not trace.)"""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import APPS_DIR, ServerProcess, connect, read_response

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
    with ServerProcess(["strace", "-f", "-qq", "-o", str(out),
                        "-e", "trace=epoll_ctl", "-e", "signal=none",
                        sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", "1", "--max-pending", "0",
                        "hello:app"], cwd=APPS_DIR) as proc:
        # The server's pid (strace's child) from its log line.
        server = int(proc.wait_for_line(r"\[(\d+)\] \[INFO\] Listening at",
                                        timeout=WAIT).group(1))
        try:
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
            os.kill(server, signal.SIGTERM)
            assert proc.wait(WAIT) == 0
        finally:
            try:
                os.kill(server, signal.SIGKILL)
            except ProcessLookupError:
                pass
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

"""Blocking requests read in one loop turn must start at once even when an
app's threads keep the GIL busy (a background job, a metrics exporter).

With the GIL, the loop hands a turn's requests to one worker, which wakes
one idle peer at a time to stand by (ext/server.c dispatch, ext/wsgi_worker.c
stand_by). Each standby wakes the next only once it holds the GIL, and
while app threads compute, each of those hand-offs waits for a switch
interval (5 ms): the 31st sleeping request started up to half a second
after the first, with 32 workers idle. Waking every idle worker (as before)
they all started within a few milliseconds."""

import signal
import sys
import textwrap
import time

from helpers import ServerProcess, build_request, connect, read_response

APP = textwrap.dedent("""
    import threading
    import time


    def spin():
        while True:             # holds the GIL but for switch intervals
            end = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                pass


    for _ in range(2):
        threading.Thread(target=spin, daemon=True).start()


    def app(environ, start_response):
        t0 = time.monotonic()   # CLOCK_MONOTONIC: the test's clock too
        if environ["PATH_INFO"] == "/sleep":
            time.sleep(1.0)     # the GIL is released meanwhile
        body = repr(t0).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")

WORKERS = 32
ROUNDS = 3


def test_one_turn_of_blocking_requests_starts_at_once_with_gil_hog(
        tmp_path):
    (tmp_path / "hog_app.py").write_text(APP)
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", str(WORKERS), "hog_app:app"],
                       cwd=tmp_path) as server:
        addr = server.wait_listening()
        socks = [connect(addr, 15) for _ in range(WORKERS - 1)]
        try:
            for s in socks:
                s.sendall(build_request("GET", "/"))
                assert read_response(s).status == 200
            spreads = []
            for _ in range(ROUNDS):
                server.signal(signal.SIGSTOP)
                try:
                    for s in socks:
                        s.sendall(build_request("GET", "/sleep"))
                    time.sleep(0.2)
                finally:
                    server.signal(signal.SIGCONT)
                starts = sorted(float(read_response(s).body)
                                for s in socks)
                spreads.append(starts[-1] - starts[0])
        finally:
            for s in socks:
                s.close()
        # Before the chain: at most ~20 ms on a busy 2-core machine. With
        # the chain: 0.1 to 0.5 s in most rounds.
        assert max(spreads) < 0.1, spreads

"""With the GIL, the requests the loop reads in one turn go to one worker,
and it wakes one idle peer at a time to stand by for the GIL (ext/server.c
dispatch, ext/wsgi_worker.c stand_by): the others must still run at once
when the app blocks (a query, a sleep) with the GIL released, rather than
wait behind it.

The server runs in a child process that is stopped (SIGSTOP) while the
requests are sent, so that its loop reads them all in one turn."""

import signal
import sys
import textwrap
import time

import pytest

from helpers import ServerProcess, build_request, connect, read_response

APP = textwrap.dedent("""
    import threading
    import time

    lock = threading.Lock()
    running = 0
    most = 0


    def app(environ, start_response):
        global running, most
        with lock:
            running += 1
            most = max(most, running)
        if environ["PATH_INFO"] == "/sleep":
            time.sleep(1.0)     # the GIL is released meanwhile
        with lock:
            running -= 1
            body = str(most).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")


@pytest.mark.parametrize("workers,n", [(4, 4), (16, 16), (4, 8)])
def test_one_turn_of_blocking_requests_runs_at_once(tmp_path, workers, n):
    (tmp_path / "standby_app.py").write_text(APP)
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", str(workers), "standby_app:app"],
                       cwd=tmp_path) as server:
        addr = server.wait_listening()
        socks = [connect(addr, 15) for _ in range(n)]
        # Every connection accepted before the loop stops, so that one
        # turn reads every request.
        for s in socks:
            s.sendall(build_request("GET", "/"))
            assert read_response(s).status == 200
        server.signal(signal.SIGSTOP)
        try:
            for s in socks:
                s.sendall(build_request("GET", "/sleep"))
            time.sleep(0.2)
        finally:
            server.signal(signal.SIGCONT)
        t0 = time.monotonic()
        bodies = [read_response(s).body for s in socks]
        elapsed = time.monotonic() - t0
        for s in socks:
            s.close()
        # One after another they take n seconds; min(workers, n) at once
        # take ceil(n / workers).
        rounds = -(-n // workers)
        assert elapsed < rounds + 0.8, (elapsed, bodies)
        assert max(int(b) for b in bodies) == min(workers, n), bodies

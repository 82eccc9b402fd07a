"""Edges found by trying to break the server from several threads at once
(the way free-threaded CPython runs them truly in parallel; each test runs
on every build): Server objects started and stopped concurrently, and what
an app's own threads do with the objects of a request."""

import threading

import yimmo


def ok_app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def test_stop_racing_start_neither_raises_nor_hangs():
    # stop() on one thread while start() runs on another: stop() used to
    # find the server thread recorded but not started yet and fail with
    # RuntimeError("cannot join thread before it is started").
    errors = []
    for _ in range(60):
        server = yimmo.Server(ok_app, bind="127.0.0.1:0", workers=1)
        barrier = threading.Barrier(4, timeout=10)

        def starter():
            barrier.wait()
            try:
                server.start()
            except RuntimeError as e:
                if "already started" not in str(e):
                    errors.append(("start", repr(e)))
            except Exception as e:      # noqa: BLE001 - collected
                errors.append(("start", repr(e)))

        def stopper():
            barrier.wait()
            try:
                server.stop(timeout=1)
            except Exception as e:      # noqa: BLE001 - collected
                errors.append(("stop", repr(e)))

        threads = [threading.Thread(target=f)
                   for f in (starter, starter, stopper, stopper)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
            assert not t.is_alive(), "start/stop hung"
        server.stop(timeout=1)
        assert server.stopped
    assert errors == []

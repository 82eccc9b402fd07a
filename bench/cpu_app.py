"""The app of bench/freethreading.py: pure-Python CPU work per request
(about 2 ms on this machine's CPython 3.13 with or without the GIL; the
loop count is YIMMO_BENCH_LOOPS, 25000 by default), and hello world.

Nothing is shared between requests but the code: the work a request does
touches only its own locals, as a CPU-bound view function would."""

import os

LOOPS = int(os.environ.get("YIMMO_BENCH_LOOPS", "25000"))


def work(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def app(environ, start_response):
    body = b"%d\n" % work(LOOPS)
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", "13")])
    return [b"Hello, World!"]

"""The app of bench/freethreading.py: pure-Python CPU work per request
(about 2 ms on this machine's CPython 3.13 with or without the GIL; the
loop count is YIMMO_BENCH_LOOPS, 25000 by default), and hello world.

Nothing is shared between requests but the code: the work a request does
touches only its own locals, as a CPU-bound view function would (see
work() for the one thing on 3.13t that is not as local as it looks)."""

import os

LOOPS = int(os.environ.get("YIMMO_BENCH_LOOPS", "25000"))


def work(n):
    # The modulus is made per call, not a constant: on CPython 3.13t a
    # constant of an imported module that is not a small int (-5..256)
    # is an ordinary shared object, and two threads running this loop
    # each INCREF/DECREF it per iteration: the cache line bounces between
    # cores and each call took 2 to 4 times the CPU with 2 threads
    # (measured; a pure-Python thread pool shows the same, no server
    # involved). Locals are the thread's own.
    m = int("1000003")
    x = 0
    for i in range(n):
        x = (x * 31 + i) % m
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

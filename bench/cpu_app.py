"""Benchmark app for bench/processes.py: each request spends about
CPU_US microseconds (default 200) running Python (a busy loop holding the
GIL), then answers "PID\n". With COUNT_DIR set, each process also keeps
the number of requests it answered in COUNT_DIR/PID (for the balance
measurement)."""

import os
import time

CPU_SECONDS = float(os.environ.get("CPU_US", "200")) / 1e6
COUNT_DIR = os.environ.get("COUNT_DIR")
_count = 0
_fd = None


def app(environ, start_response):
    global _count, _fd
    end = time.perf_counter() + CPU_SECONDS
    x = 0
    while time.perf_counter() < end:
        x += 1
    if COUNT_DIR:
        _count += 1
        if _fd is None:
            _fd = os.open(os.path.join(COUNT_DIR, str(os.getpid())),
                          os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(_fd, b"%12d\n" % _count, 0)
    body = b"%d\n" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]

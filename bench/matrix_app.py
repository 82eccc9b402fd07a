"""The applications of bench/matrix.py, one callable per workload. Every
server runs the same callable; the request path is ignored.

The file row serves the file named by $YIMMO_BENCH_FILE (matrix.py writes
10 MB of random bytes to a temporary directory and sets it).
"""

import os
import time

from hello import app as hello  # noqa: F401  (rows name it matrix_app:hello)

CHUNK_16K = b"x" * 16384
CHUNK_64K = b"y" * 65536
MB = 1 << 20


def chunks64k(environ, start_response):
    """64 KB as a list of four 16 KB strings."""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(4 * len(CHUNK_16K)))])
    return [CHUNK_16K] * 4


def gen1m(environ, start_response):
    """1 MB from a generator of 64 KB pieces (with Content-Length, so every
    server can keep the connection open)."""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(MB))])

    def pieces():
        for _ in range(MB // len(CHUNK_64K)):
            yield CHUNK_64K
    return pieces()


def file10m(environ, start_response):
    """The file through wsgi.file_wrapper (sendfile where the server has
    it); a plain read loop where the server offers no wrapper."""
    path = os.environ["YIMMO_BENCH_FILE"]
    f = open(path, "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length",
                               str(os.fstat(f.fileno()).st_size))])
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(f, 65536)
    return _read_loop(f)


def _read_loop(f):
    with f:
        while True:
            block = f.read(65536)
            if not block:
                return
            yield block


def upload(environ, start_response):
    """Reads the whole request body (wsgi.input, by CONTENT_LENGTH) and
    answers its length."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    answer = str(len(body)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(answer)))])
    return [answer]


def sleep10(environ, start_response):
    """Waits 10 ms (a database or an API call), then answers hello."""
    time.sleep(0.010)
    return hello(environ, start_response)

"""The benchmark application: the smallest useful WSGI response.

Every server in bench/bench.py serves this same callable (and the reference
servers serve an equivalent one), so the numbers compare the servers' own
per-request cost.
"""

BODY = b"Hello, World!"
LENGTH = str(len(BODY))


def app(environ, start_response):
    # A fresh header list per call: a server may legally extend it.
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", LENGTH)])
    return [BODY]


application = app

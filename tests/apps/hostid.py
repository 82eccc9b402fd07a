"""An app that says which host and which generation of it answered
(YIMMO_TEST_HOST, YIMMO_TEST_GEN), and which process: the rolling-restart
test counts answers by them."""

import os
import time

HOST = os.environ.get("YIMMO_TEST_HOST", "?")
GEN = os.environ.get("YIMMO_TEST_GEN", "0")


def app(environ, start_response):
    # A POST's body is read whole and its length echoed; a short pause
    # keeps requests in flight when a host is told to stop.
    length = len(environ["wsgi.input"].read())
    time.sleep(float(environ.get("HTTP_X_SLEEP", "0")))
    body = ("%s %s %d %d" % (HOST, GEN, os.getpid(), length)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]

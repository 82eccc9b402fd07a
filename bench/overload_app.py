"""The app of bench/overload.py: 50 ms of waiting per request, and a
/stats endpoint that tells how many requests the app began after their
client had given up (sent more than CLIENT_TIMEOUT seconds earlier, from
the client's X-Sent header) and by how much at most."""

import json
import threading
import time

CLIENT_TIMEOUT = 5.0

_lock = threading.Lock()
_late = 0
_max_late = 0.0


def app(environ, start_response):
    global _late, _max_late
    if environ["PATH_INFO"] == "/stats":
        with _lock:
            body = json.dumps({"late": _late, "max_late": _max_late})
        body = body.encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    sent = environ.get("HTTP_X_SENT")
    if sent:
        waited = time.time() - float(sent)
        if waited > CLIENT_TIMEOUT:
            with _lock:
                _late += 1
                _max_late = max(_max_late, waited - CLIENT_TIMEOUT)
    time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", "2")])
    return [b"ok"]

"""References to the app's bytes (zero-copy output, ext/bucket.h) are not
kept longer than the loop needs them: not for a whole streamed response,
not while another worker is in a long request, not after the watchdog
retired a stuck worker. A review found each of these retained (the
release was tied to "a worker in the app will look soon"); each test
failed before the fix."""

import sys
import threading
import time

from helpers import build_request, connect, read_response
from test_zerocopy import pattern, refs, wait_refs

WAIT = 5


# Over a unix socket, whose send buffer is fixed (wmem_default, 208 KB
# of memory, less payload), and below out_high_water (256 KB): the worker
# posts the whole body and is done at once, and the loop can write only
# part of it until the client reads.
LATE = 240 * 1024


def small_window_client(address):
    return connect(address, 30)


def unix_bind(tmp_path):
    return "unix:%s" % (tmp_path / "s.sock")


def test_streaming_response_lets_go_of_written_items(yimmo_server):
    """A generator streaming big items: the worker is in the app for the
    whole response (in_app = 1), so server_release_wake never wakes
    anyone and the worker drains only after the exchange: every item the
    loop already wrote stays referenced. A stream of N fresh 64 KB items
    keeps N * 64 KB alive (unbounded memory), where the copying server
    kept at most out_high_water (256 KB)."""
    big = pattern(64 * 1024, 1)
    base = sys.getrefcount(big)
    N = 1000                       # 64 MB streamed
    seen = {"max": 0}

    def app(environ, start_response):
        start_response("200 OK", [])

        def gen():
            for _ in range(N):
                seen["max"] = max(seen["max"], sys.getrefcount(big) - base)
                yield big
        return gen()

    server = yimmo_server(app, workers=2)
    with connect(server.address, 30) as sock:
        sock.sendall(build_request("GET", "/"))
        body = read_response(sock).body
        assert len(body) == N * len(big)
    # At most out_high_water plus what the socket buffers hold: a few
    # dozen items, not N.
    assert seen["max"] < 64, seen


def test_owners_released_while_a_peer_is_in_the_app(yimmo_server, tmp_path):
    """Worker A runs a long request (a long poll); worker B answers a big
    response whose bytes the loop writes after B went idle. The push that
    makes the release list non-empty sees A's in_app and does not wake
    anyone; A drains only when its request ends. The bytes stay
    referenced for as long as A's request lasts (indefinitely with the
    server otherwise idle)."""
    big = pattern(LATE, 2)
    base = refs(big)
    release = threading.Event()
    entered = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            release.wait(20)
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        start_response("200 OK", [])
        return [big]

    server = yimmo_server(app, workers=2, bind=unix_bind(tmp_path))
    slow = connect(server.address, 30)
    try:
        slow.sendall(build_request("GET", "/slow"))
        assert entered.wait(WAIT)
        with small_window_client(server.address) as sock:
            sock.sendall(build_request("GET", "/big"))
            time.sleep(0.3)             # worker B is idle by now
            assert read_response(sock).body == big
        got = wait_refs(big, base, 3)
    finally:
        release.set()
        slow.close()
    assert got == base, "still %d references 3 s after the read" % (
        got - base)


def test_owners_released_after_the_watchdog_retires_a_worker(
        yimmo_server, tmp_path):
    """A worker stuck in C is retired by the watchdog and keeps in_app = 1
    for good: from then on server_release_wake returns early on every
    push, so the owners of whatever the loop writes after the worker's
    exchange ended wait for the next request, forever on an idle server."""
    big = pattern(LATE, 3)
    base = refs(big)
    unstick = threading.Event()
    stuck = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/stuck":
            stuck.set()
            unstick.wait(30)            # in C: the RequestTimeout waits
            start_response("200 OK", [])
            return [b"late"]
        start_response("200 OK", [])
        return [big]

    server = yimmo_server(app, workers=1, timeout=0.5,
                          bind=unix_bind(tmp_path))
    s1 = connect(server.address, 30)
    try:
        s1.sendall(build_request("GET", "/stuck"))
        assert stuck.wait(WAIT)
        # The 503 for the stuck one, then the replacement thread.
        time.sleep(2.5)
        with small_window_client(server.address) as sock:
            sock.sendall(build_request("GET", "/big"))
            time.sleep(0.3)
            assert read_response(sock).body == big
        got = wait_refs(big, base, 3)
    finally:
        unstick.set()
        s1.close()
    assert got == base, "still %d references 3 s after the read" % (
        got - base)


def test_owners_released_with_no_peer_in_the_app(yimmo_server, tmp_path):
    """Control for the two tests above (passes on the branch): the same
    late read with no other worker in the app is released (the loop's
    wake works); only a peer's in_app defeats it."""
    big = pattern(LATE, 4)
    base = refs(big)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [big]

    server = yimmo_server(app, workers=2, bind=unix_bind(tmp_path))
    with small_window_client(server.address) as sock:
        sock.sendall(build_request("GET", "/big"))
        time.sleep(0.3)
        assert read_response(sock).body == big
    assert wait_refs(big, base, 3) == base

"""Header values in environ come from each worker's cache of recent value
strings (ext/wsgi_environ.c value_str): the same bytes give the same str,
different bytes never do, and the strings go when the worker does."""

import sys

from helpers import build_request, connect, read_response, wait_until

WAIT = 10

# Same length, same bytes where the cache's hash looks (the first and the
# last eight), different elsewhere: one slot, two values.
ALIKE = ["abcdefgh-X-stuvwxyz", "abcdefgh-Y-stuvwxyz"]
NAMES = ["User-Agent", "X-Value", "Content-Type", "Accept"]
KEYS = ["HTTP_USER_AGENT", "HTTP_X_VALUE", "CONTENT_TYPE", "HTTP_ACCEPT"]


def echo_app(environ, start_response):
    """The environ entries of KEYS and the host, latin-1, one per line."""
    lines = [environ.get(k, "-") for k in KEYS + ["HTTP_HOST"]]
    body = "\n".join(lines).encode("latin-1")
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def ask(sock, value, host="127.0.0.1"):
    sock.sendall(build_request("GET", "/", [(n, value) for n in NAMES],
                               host=host))
    status, _, body = read_response(sock)
    assert status == 200
    return body.decode("latin-1").split("\n")


def test_values_alike_in_the_hash_stay_apart(yimmo_server):
    server = yimmo_server(echo_app, workers=1)
    values = ALIKE + [
        "ab", "a" * 256, "b" * 257, "x" * 256, "caf\xe9 au lait",
        "caf\xe8 au lait", "*/*", "*/+", "+/*", "abcdefgh", "abcdefgi",
        "abcdefghabcdefgh", "abcdefghXabcdefgh",
    ]
    with connect(server.address, WAIT) as sock:
        for _ in range(3):
            for v in values:
                # Host only where the value is a valid host name.
                host = v if v.isalnum() and len(v) < 200 else "h"
                assert ask(sock, v, host=host) == [v] * 4 + [host]


def test_a_joined_field_leaves_the_cached_value_alone(yimmo_server):
    def app(environ, start_response):
        body = ("%s|%s" % (environ.get("HTTP_X_A"),
                           environ.get("HTTP_COOKIE"))).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = yimmo_server(app, workers=1)

    def send(sock, headers):
        sock.sendall(build_request("GET", "/", headers))
        return read_response(sock)[2]

    with connect(server.address, WAIT) as sock:
        one = [("X-A", "first"), ("Cookie", "a=1")]
        assert send(sock, one) == b"first|a=1"
        assert send(sock, one + [("X-A", "second"), ("Cookie", "b=2")]) == \
            b"first,second|a=1; b=2"
        assert send(sock, one) == b"first|a=1"


def test_repeated_values_share_one_str_until_the_worker_ends(yimmo_server):
    kept = []

    def app(environ, start_response):
        kept.append(environ["HTTP_X_PROBE"])
        start_response("204 No Content", [])
        return []

    server = yimmo_server(app, workers=1)
    # The cache has one slot per hash: a probe whose slot is that of
    # "127.0.0.1" (Host and REMOTE_ADDR; about one in 64 probes, its
    # text varies from run to run) is evicted by them in every request.
    # Another probe then, with a slot of its own.
    for attempt in range(4):
        kept.clear()
        probe = "probe-%d-value-%d" % (id(kept), attempt)
        with connect(server.address, WAIT) as sock:
            for _ in range(3):
                sock.sendall(build_request("GET", "/", [("X-Probe", probe)]))
                assert read_response(sock)[0] == 204
        assert kept == [probe] * 3
        if kept[0] is kept[1] is kept[2]:
            break
    assert kept[0] is kept[1] is kept[2]
    # The list's three references, the cache's and getrefcount's own:
    # the environ of the last request is gone by the time the worker takes
    # its next one, so wait for it.
    wait_until(lambda: sys.getrefcount(kept[0]) == 5,
               what="the last environ to go (%d references)"
               % sys.getrefcount(kept[0]))
    server.stop(timeout=5)
    assert server.stopped
    # The worker emptied its cache as it ended.
    wait_until(lambda: sys.getrefcount(kept[0]) == 4, what="the cache's reference to go (%d)" % sys.getrefcount(kept[0]))


def test_credentials_are_not_kept(yimmo_server):
    seen = []
    keys = ["HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION",
            "HTTP_USER_AGENT"]

    def app(environ, start_response):
        seen.append([environ[k] for k in keys])
        start_response("204 No Content", [])
        return []

    server = yimmo_server(app, workers=1)
    headers = [("Cookie", "session=0123456789abcdef"),
               ("Authorization", "Bearer 0123456789abcdef"),
               ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
               ("User-Agent", "agent/1.0")]
    with connect(server.address, WAIT) as sock:
        for _ in range(2):
            sock.sendall(build_request("GET", "/", headers))
            assert read_response(sock)[0] == 204
    first, second = seen
    assert first == second == [v for _, v in headers]
    # A new str for each request's secrets; the user agent is shared.
    assert [a is b for a, b in zip(first, second)] == \
        [False, False, False, True]

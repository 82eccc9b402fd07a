"""Field names in environ (ext/wsgi_environ.c): the common ones are found
by their length and a case-folded compare and get the key yimmo interned
at import; any other gets its key built, then shared from the worker's
cache of keys (slots of their own, apart from the cache of values)."""

import sys

import pytest

from helpers import build_request, connect, read_response

WAIT = 10

# The common fields that a GET without a body may carry as they are (Host,
# Content-Type, Content-Length, Transfer-Encoding and Expect have their
# own tests and meanings), by their keys.
COMMON = {
    "User-Agent": "HTTP_USER_AGENT", "Accept": "HTTP_ACCEPT",
    "Accept-Encoding": "HTTP_ACCEPT_ENCODING",
    "Accept-Language": "HTTP_ACCEPT_LANGUAGE",
    "Connection": "HTTP_CONNECTION", "Cookie": "HTTP_COOKIE",
    "Referer": "HTTP_REFERER", "Cache-Control": "HTTP_CACHE_CONTROL",
    "Origin": "HTTP_ORIGIN", "Authorization": "HTTP_AUTHORIZATION",
    "Upgrade-Insecure-Requests": "HTTP_UPGRADE_INSECURE_REQUESTS",
    "X-Forwarded-For": "HTTP_X_FORWARDED_FOR",
    "X-Forwarded-Proto": "HTTP_X_FORWARDED_PROTO",
    "X-Forwarded-Host": "HTTP_X_FORWARDED_HOST",
    "Forwarded": "HTTP_FORWARDED",
    "X-Requested-With": "HTTP_X_REQUESTED_WITH",
    "If-None-Match": "HTTP_IF_NONE_MATCH",
    "If-Modified-Since": "HTTP_IF_MODIFIED_SINCE", "Pragma": "HTTP_PRAGMA",
    "Sec-Fetch-Mode": "HTTP_SEC_FETCH_MODE",
    "Sec-Fetch-Site": "HTTP_SEC_FETCH_SITE",
    "Sec-Fetch-Dest": "HTTP_SEC_FETCH_DEST",
    "Content-Encoding": "HTTP_CONTENT_ENCODING",
    "Keep-Alive": "HTTP_KEEP_ALIVE", "Range": "HTTP_RANGE",
    "Proxy-Authorization": "HTTP_PROXY_AUTHORIZATION",
}


def recorder():
    """An app that keeps each request's environ items (key objects
    included) and answers 204."""
    seen = []

    def app(environ, start_response):
        seen.append(dict((k, (k, v)) for k, v in environ.items()))
        start_response("204 No Content", [])
        return []

    return app, seen


def send(sock, headers, host="127.0.0.1"):
    sock.sendall(build_request("GET", "/", headers, host=host))
    assert read_response(sock)[0] == 204


def spellings(name):
    return [name, name.lower(), name.upper(), name.swapcase()]


@pytest.mark.parametrize("case", range(4),
                         ids=["as-is", "lower", "upper", "swapped"])
def test_each_common_field_gets_the_interned_key(yimmo_server, case):
    app, seen = recorder()
    server = yimmo_server(app, workers=1)
    headers = [(spellings(name)[case], "v-" + name)
               for name in COMMON if name != "Connection"]
    with connect(server.address, WAIT) as sock:
        send(sock, headers)
    env = seen[0]
    for name, key in COMMON.items():
        if name == "Connection":
            continue
        assert key in env, name
        k, v = env[key]
        assert v == "v-" + name
        # yimmo interned the key at import: one built for this request
        # would not be the interned one.
        assert k is sys.intern(k), key
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_HOST" in env


@pytest.mark.parametrize("name,key", [
    ("Cooki3", "HTTP_COOKI3"), ("Cookiee", "HTTP_COOKIEE"),
    ("Accept-Encodinf", "HTTP_ACCEPT_ENCODINF"),
    ("Hosu", "HTTP_HOSU"), ("Hos", "HTTP_HOS"),
    ("X-Forwarded-Fox", "HTTP_X_FORWARDED_FOX"),
    ("Content-Typf", "HTTP_CONTENT_TYPF"),
    ("Content-Lengtg", "HTTP_CONTENT_LENGTG"),
    ("Proxy-Authorizatiom", "HTTP_PROXY_AUTHORIZATIOM"),
    ("Upgrade-Insecure-Requestz", "HTTP_UPGRADE_INSECURE_REQUESTZ"),
    ("Upgrade-Insecure-Requests-", "HTTP_UPGRADE_INSECURE_REQUESTS_"),
    ("Sec+Fetch-Mode", "HTTP_SEC+FETCH_MODE"),
    ("Sec-Fetch-Mod~", "HTTP_SEC_FETCH_MOD~"),
    ("Refere^", "HTTP_REFERE^"),
    ("Range!", "HTTP_RANGE!"),
])
def test_a_name_one_byte_off_a_common_one_is_not_taken_for_it(
        yimmo_server, name, key):
    app, seen = recorder()
    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        send(sock, [(name, "odd")])
    env = seen[0]
    assert env[key][1] == "odd"
    others = {k for k, (_, v) in env.items() if v == "odd"}
    assert others == {key}
    assert "CONTENT_TYPE" not in env and "CONTENT_LENGTH" not in env
    assert env["HTTP_HOST"][1] == "127.0.0.1"


def test_secrets_are_known_in_any_case(yimmo_server):
    # Cookie, Authorization and Proxy-Authorization stay out of the
    # worker's cache however the client spells them.
    app, seen = recorder()
    server = yimmo_server(app, workers=1)
    names = ["cookie", "AUTHORIZATION", "pROXY-aUTHORIZATION", "user-agent"]
    headers = [(n, "secret-0123456789-" + n) for n in names]
    with connect(server.address, WAIT) as sock:
        send(sock, headers)
        send(sock, headers)
    keys = ["HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION",
            "HTTP_USER_AGENT"]
    first, second = ([env[k][1] for k in keys] for env in seen)
    assert first == second == [v for _, v in headers]
    assert [a is b for a, b in zip(first, second)] == \
        [False, False, False, True]


def test_a_line_repeated_with_the_same_value_is_joined(yimmo_server):
    # The cache gives both lines the very same str: the second must still
    # be joined to the first, not taken for it.
    app, seen = recorder()
    server = yimmo_server(app, workers=1)
    headers = [("Accept", "*/*"), ("X-Dup", "same"), ("Accept", "*/*"),
               ("X-Dup", "same"), ("Cookie", "a=1"), ("cookie", "a=1")]
    with connect(server.address, WAIT) as sock:
        for _ in range(2):
            send(sock, headers)
    for env in seen:
        assert env["HTTP_ACCEPT"][1] == "*/*,*/*"
        assert env["HTTP_X_DUP"][1] == "same,same"
        assert env["HTTP_COOKIE"][1] == "a=1; a=1"
    # The joined value did not replace the cached one.
    with connect(server.address, WAIT) as sock:
        send(sock, [("Accept", "*/*"), ("X-Dup", "same")])
    assert seen[-1]["HTTP_ACCEPT"][1] == "*/*"
    assert seen[-1]["HTTP_X_DUP"][1] == "same"


def _slot(text, bits=6):
    """The cache slot of a string (value_str's hash in wsgi_environ.c:
    the length and the first and last eight bytes)."""
    b = text.encode("latin-1")
    m = (1 << 64) - 1
    if len(b) >= 8:
        a, c = (int.from_bytes(b[:8], "little"),
                int.from_bytes(b[-8:], "little"))
    else:
        a, c = int.from_bytes(b, "little"), 0
    h = ((a ^ ((c * 0xff51afd7ed558ccd) & m) ^ len(b)) *
         0x9e3779b97f4a7c15) & m
    return h >> (64 - bits)


def test_uncommon_keys_are_shared_and_evict_no_value(yimmo_server):
    # The key of an uncommon field is built once and then shared, from
    # slots of its own: a value in the slot the key would take in the
    # values' table stays shared as well.
    key = "HTTP_X_PROBE_NAME"
    value = next(v for v in ("value-%d" % i for i in range(10000))
                 if _slot(v) == _slot(key) and
                 _slot(v) != _slot("127.0.0.1"))
    app, seen = recorder()
    server = yimmo_server(app, workers=1)
    with connect(server.address, WAIT) as sock:
        for _ in range(3):
            send(sock, [("X-Probe-Name", value)])
    keys = [env[key][0] for env in seen]
    values = [env[key][1] for env in seen]
    assert keys == [key] * 3 and values == [value] * 3
    assert keys[0] is keys[1] is keys[2]
    assert values[0] is values[1] is values[2]


def test_many_uncommon_names_get_their_own_keys(yimmo_server):
    # More names than slots, some alike where the hash looks: every key
    # is right on every request, whatever the cache held.
    app, seen = recorder()
    server = yimmo_server(app, workers=1)
    names = ["X-Name-%03d-Same-Tail" % i for i in range(150)]
    with connect(server.address, WAIT) as sock:
        for lo in range(0, 150, 50):
            for _ in range(2):
                send(sock, [(n, n.lower()) for n in names[lo:lo + 50]])
    for i, env in enumerate(seen):
        lo = (i // 2) * 50
        for n in names[lo:lo + 50]:
            key = "HTTP_" + n.upper().replace("-", "_")
            assert env[key] == (key, n.lower())

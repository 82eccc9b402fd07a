"""--forwarded-allow-ips and --proxy-headers: the forwarding fields that
--proxy-headers names (X-Forwarded-For and -Proto by default; -Host, or
Forwarded (RFC 7239) alone, when named) change the environ only when the
peer is a trusted proxy; from anyone else, and when not named, they stay
plain HTTP_* headers. Malformed values are ignored (the request is served
as if they were absent), never a 500."""

import json
import os
import socket

import pytest

from helpers import connect, read_response

KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTPS",
        "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "HTTP_X_FORWARDED_FOR",
        "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_FORWARDED")


def environ_app(environ, start_response):
    body = json.dumps({k: environ.get(k) for k in KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def ask(addr, headers, source=None, family=socket.AF_INET):
    """GET / with the given header lines; the app's view of the environ."""
    if source is not None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(addr)
    else:
        sock = connect(addr)
    with sock:
        head = "GET / HTTP/1.1\r\nHost: app.test:8000\r\n"
        head += "".join("%s: %s\r\n" % h for h in headers)
        sock.sendall((head + "\r\n").encode("latin-1"))
        resp = read_response(sock)
    assert resp.status == 200, resp
    return json.loads(resp.body)


@pytest.fixture
def trusted(yimmo_server):
    """A server that trusts 127.0.0.1 (the default) and a client on it."""
    return yimmo_server(environ_app, workers=2).address


@pytest.fixture
def trusted_xfh(yimmo_server):
    """As trusted, believing X-Forwarded-Host too."""
    return yimmo_server(environ_app, workers=2,
                        proxy_headers="x-forwarded-for,x-forwarded-proto,"
                                      "x-forwarded-host").address


@pytest.fixture
def trusted_fwd(yimmo_server):
    """As trusted, believing Forwarded (and so no X-Forwarded-* field)."""
    return yimmo_server(environ_app, workers=2,
                        proxy_headers=["Forwarded"]).address


NGINX_LIKE = [("X-Forwarded-For", "203.0.113.7"),
              ("X-Forwarded-Proto", "https")]


def test_x_forwarded_from_trusted_peer(trusted_xfh):
    env = ask(trusted_xfh, NGINX_LIKE + [("X-Forwarded-Host", "example.org")])
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["REMOTE_PORT"] == ""
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert env["HTTP_HOST"] == "example.org"
    assert env["SERVER_NAME"] == "example.org"
    assert env["SERVER_PORT"] == "443"
    # The fields themselves stay visible.
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"


def test_fields_not_named_are_not_believed(trusted):
    """By default X-Forwarded-Host and Forwarded are plain headers: a proxy
    that sets only X-Forwarded-For and -Proto (the README's nginx block)
    passes the client's own on, and they named any host, address and
    scheme the client liked (wire review s18)."""
    env = ask(trusted, [("X-Forwarded-For", "203.0.113.7"),
                        ("Forwarded",
                         "for=6.6.6.6;proto=https;host=admin.internal"),
                        ("X-Forwarded-Host", "admin.internal")])
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"] == "app.test:8000"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["HTTP_FORWARDED"].startswith("for=6.6.6.6")
    assert env["HTTP_X_FORWARDED_HOST"] == "admin.internal"


@pytest.mark.parametrize("proxy_headers", ["none", [], "", ["None"],
                                           "none, none"])
def test_no_field_named_believes_none(yimmo_server, proxy_headers):
    addr = yimmo_server(environ_app, proxy_headers=proxy_headers).address
    env = ask(addr, NGINX_LIKE)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == \
        ("127.0.0.1", "http")


def test_no_forwarding_fields_leave_the_socket_address(trusted):
    env = ask(trusted, [])
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTPS"] is None
    assert env["HTTP_HOST"] == "app.test:8000"


def test_untrusted_peer_fields_stay_plain_headers(yimmo_server):
    addr = yimmo_server(environ_app, forwarded_allow_ips="10.0.0.0/8").address
    env = ask(addr, NGINX_LIKE + [("X-Forwarded-Host", "evil.test"),
                                  ("Forwarded", "for=1.2.3.4;proto=https")])
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTPS"] is None
    assert env["HTTP_HOST"] == "app.test:8000"
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"
    assert env["HTTP_FORWARDED"] == "for=1.2.3.4;proto=https"


def test_untrusted_second_loopback_address(yimmo_server):
    """The default trusts 127.0.0.1 and ::1 only: a client on 127.0.0.2 is
    not a proxy."""
    addr = yimmo_server(environ_app, bind="127.0.0.1:0").address
    try:
        env = ask(addr, NGINX_LIKE, source="127.0.0.2")
    except OSError as exc:
        pytest.skip("cannot bind 127.0.0.2: %s" % exc)
    assert env["REMOTE_ADDR"] == "127.0.0.2"
    assert env["wsgi.url_scheme"] == "http"
    # Now trust it through a network.
    addr = yimmo_server(environ_app,
                        forwarded_allow_ips="127.0.0.0/30").address
    env = ask(addr, NGINX_LIKE, source="127.0.0.2")
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_star_trusts_everyone(yimmo_server):
    addr = yimmo_server(environ_app, forwarded_allow_ips="*").address
    env = ask(addr, NGINX_LIKE)
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_unix_socket_peers_are_trusted(yimmo_server, tmp_path):
    path = str(tmp_path / "s.sock")
    yimmo_server(environ_app, bind="unix:" + path,
                 forwarded_allow_ips="10.1.2.3")
    env = ask(path, NGINX_LIKE)
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("xff, expected", [
    # The rightmost address that is not itself a trusted proxy.
    ("203.0.113.7, 127.0.0.1", "203.0.113.7"),
    ("198.51.100.1, 203.0.113.7", "203.0.113.7"),
    ("198.51.100.1, 203.0.113.7, 10.0.0.5, 127.0.0.1", "10.0.0.5"),
    # Every hop trusted: the leftmost is the client.
    ("127.0.0.1, ::1", "127.0.0.1"),
    (" 203.0.113.7 ,, ", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ("203.0.113.7:4711", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("2001:DB8:0::1", "2001:db8::1"),
])
def test_x_forwarded_for_walk(trusted, xff, expected):
    env = ask(trusted, [("X-Forwarded-For", xff)])
    assert env["REMOTE_ADDR"] == expected


def test_x_forwarded_for_multiple_lines_join(trusted):
    env = ask(trusted, [("X-Forwarded-For", "198.51.100.1"),
                        ("X-Forwarded-For", "203.0.113.9, 127.0.0.1")])
    assert env["REMOTE_ADDR"] == "203.0.113.9"


def test_x_forwarded_for_port_is_kept(trusted):
    env = ask(trusted, [("X-Forwarded-For", "[2001:db8::1]:4711")])
    assert env["REMOTE_PORT"] == "4711"


MALFORMED = [
    ("X-Forwarded-For", "not-an-ip"),
    ("X-Forwarded-For", "203.0.113.7, bogus"),
    ("X-Forwarded-For", "999.1.1.1"),
    ("X-Forwarded-For", "1.2.3.4:99999"),
    ("X-Forwarded-For", "[1.2.3.4]"),
    ("X-Forwarded-For", "fe80::1%eth0"),
    ("X-Forwarded-For", ""),
    ("X-Forwarded-For", ",,,"),
    ("X-Forwarded-For", "\xe9\xe9"),
    ("X-Forwarded-Proto", "ftp"),
    ("X-Forwarded-Proto", "https extra"),
    ("X-Forwarded-Proto", ""),
    ("X-Forwarded-Host", "a b"),
    ("X-Forwarded-Host", "host/path"),
    ("X-Forwarded-Host", "user@host"),
    ("X-Forwarded-Host", "host:port"),
    ("X-Forwarded-Host", "[::1"),
    ("X-Forwarded-Host", "x" * 300),
    ("Forwarded", "for"),
    ("Forwarded", "for="),
    ("Forwarded", "for=1.2.3.4;for=5.6.7.8"),
    ("Forwarded", 'for="[2001:db8::1'),
    ("Forwarded", 'for="unterminated'),
    ("Forwarded", "for=2001:db8::1"),
    ("Forwarded", "for=1.2.3.4 proto=https"),
    ("Forwarded", "=x"),
    ("Forwarded", "for=1.2.3.4;proto=https," * 100),
    ("Forwarded", "for=999.0.0.1"),
    ("Forwarded", 'for="\\'),
    # A proto= too long to read after the address was found: nothing of
    # the element may stay (review D1).
    ("Forwarded", 'for=203.0.113.66;proto="%s"' % ("x" * 300)),
    ("Forwarded", 'for=203.0.113.66;proto="%s";host=evil.test'
     % ("\\x" * 257)),
]


BELIEVED_BY = {"X-Forwarded-For": "trusted", "X-Forwarded-Proto": "trusted",
               "X-Forwarded-Host": "trusted_xfh", "Forwarded": "trusted_fwd"}


@pytest.mark.parametrize("name, value", MALFORMED)
def test_malformed_values_are_ignored(request, name, value):
    # By a server that believes the field.
    env = ask(request.getfixturevalue(BELIEVED_BY[name]), [(name, value)])
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"] == "app.test:8000"
    assert env["SERVER_NAME"] == "127.0.0.1"


@pytest.mark.parametrize("value, addr, port, scheme, host", [
    ("for=192.0.2.60;proto=https;by=203.0.113.43",
     "192.0.2.60", "", "https", None),
    ('For="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17", "4711",
     "http", None),
    ('for=192.0.2.43, for="[2001:db8:cafe::17]"', "2001:db8:cafe::17", "",
     "http", None),
    # Past trusted hops, and the element of the chosen hop gives proto
    # and host.
    ("for=192.0.2.43;proto=https;host=shop.test, for=127.0.0.1;proto=http",
     "192.0.2.43", "", "https", "shop.test"),
    ('for=198.51.100.17;host="shop.test:8443";proto=HTTPS',
     "198.51.100.17", "", "https", "shop.test:8443"),
    # Obfuscated and unknown nodes: no address, but the element counts.
    ("for=_hidden;proto=https", "127.0.0.1", None, "https", None),
    ("for=unknown, for=127.0.0.1", "127.0.0.1", None, "http", None),
    ('for="_gazonk:_port"', "127.0.0.1", None, "http", None),
    # No for= at all: nothing about the address.
    ("proto=https", "127.0.0.1", None, "https", None),
    ('for=192.0.2.1;ext="a,b;c"', "192.0.2.1", "", "http", None),
    ("for=192.0.2.1 ; proto=https , ", "192.0.2.1", "", "https", None),
])
def test_forwarded_rfc7239(trusted_fwd, value, addr, port, scheme, host):
    env = ask(trusted_fwd, [("Forwarded", value)])
    assert env["REMOTE_ADDR"] == addr
    if port is not None:
        assert env["REMOTE_PORT"] == port
    assert env["wsgi.url_scheme"] == scheme
    assert env["HTTPS"] == ("on" if scheme == "https" else None)
    assert env["HTTP_HOST"] == (host or "app.test:8000")
    if host:
        name, _, p = host.partition(":")
        assert env["SERVER_NAME"] == name
        assert env["SERVER_PORT"] == (p or "443")


def test_believing_forwarded_ignores_x_forwarded(trusted_fwd):
    env = ask(trusted_fwd, [("X-Forwarded-For", "198.51.100.1"),
                            ("X-Forwarded-Proto", "https"),
                            ("X-Forwarded-Host", "evil.test"),
                            ("Forwarded", "for=192.0.2.9")])
    assert env["REMOTE_ADDR"] == "192.0.2.9"
    # Not mixed: X-Forwarded-Proto and -Host are not looked at either.
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"] == "app.test:8000"


@pytest.mark.parametrize("forwarded", [
    "for=;;;",
    # A client's stray quote, the proxy's element appended after it.
    'for="x, for=203.0.113.7;proto=http',
])
def test_malformed_forwarded_does_not_fall_back_to_x_forwarded(trusted_fwd,
                                                               forwarded):
    """The X-Forwarded-* fields are the client's when the proxy manages
    Forwarded: a malformed Forwarded made them count (wire review s18)."""
    env = ask(trusted_fwd, [("X-Forwarded-For", "198.51.100.1"),
                            ("X-Forwarded-Proto", "https"),
                            ("Forwarded", forwarded)])
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"


@pytest.mark.parametrize("value", [
    "Forwarded,X-Forwarded-For", ["forwarded", "x-forwarded-host"],
    "X-Real-IP", "x-forwarded-for,bogus", 42, [42],
    ["none", "x-forwarded-for"],
])
def test_bad_proxy_headers_option(yimmo_server, value):
    with pytest.raises((ValueError, TypeError)):
        yimmo_server(environ_app, proxy_headers=value)


@pytest.mark.parametrize("value", [
    ["Forwarded", "X-Forwarded-For"], ["X-Real-IP"], ("x-forwarded-for\0",),
    "X-Forwarded-For", [1],
])
def test_core_refuses_bad_proxy_headers(value):
    import sys
    from yimmo import _yimmo
    with pytest.raises((ValueError, TypeError)):
        _yimmo.Core(environ_app, [], print, sys.stderr,
                    proxy_headers=value)


def test_proxy_headers_from_flag_and_environment():
    from yimmo._options import parse_args
    _, opts = parse_args(["--proxy-headers",
                          "x-forwarded-for, X-FORWARDED-HOST", "m:app"], {})
    assert opts["proxy_headers"] == ["X-Forwarded-For", "X-Forwarded-Host"]
    _, opts = parse_args(["m:app"], {"YIMMO_PROXY_HEADERS": "forwarded"})
    assert opts["proxy_headers"] == ["Forwarded"]
    _, opts = parse_args(["m:app"], {"YIMMO_PROXY_HEADERS": "none"})
    assert opts["proxy_headers"] == []
    _, opts = parse_args(["m:app"], {})
    assert opts["proxy_headers"] == ["X-Forwarded-For", "X-Forwarded-Proto"]
    with pytest.raises(SystemExit):
        parse_args(["m:app"], {"YIMMO_PROXY_HEADERS": "x-real-ip"})


def test_bad_proxy_headers_flag_one_line(tmp_path):
    import subprocess
    import sys
    from helpers import subprocess_env
    proc = subprocess.run(
        [sys.executable, "-m", "yimmo", "--proxy-headers",
         "forwarded,x-forwarded-for", "m:app"], cwd=str(tmp_path),
        env=subprocess_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[-1].startswith("yimmo: error:"), \
        proc.stderr
    assert "Forwarded cannot be believed together" in proc.stderr


def test_x_forwarded_proto_rightmost_and_http(trusted):
    env = ask(trusted, [("X-Forwarded-Proto", "http, HTTPS")])
    assert env["wsgi.url_scheme"] == "https"
    env = ask(trusted, [("X-Forwarded-Proto", "https, http")])
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTPS"] is None


def test_x_forwarded_host_with_port_and_ipv6(trusted_xfh):
    env = ask(trusted_xfh, [("X-Forwarded-Host", "[2001:db8::1]:8080")])
    assert env["HTTP_HOST"] == "[2001:db8::1]:8080"
    assert env["SERVER_NAME"] == "[2001:db8::1]"
    assert env["SERVER_PORT"] == "8080"
    env = ask(trusted_xfh, [("X-Forwarded-Host", "a.test, b.test")])
    assert env["HTTP_HOST"] == "b.test"
    assert env["SERVER_PORT"] == "80"


def test_keep_alive_each_request_judged_on_its_own(trusted):
    with connect(trusted) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n"
                     b"X-Forwarded-For: 192.0.2.1\r\n\r\n"
                     b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        first = json.loads(read_response(sock).body)
        second = json.loads(read_response(sock).body)
    assert first["REMOTE_ADDR"] == "192.0.2.1"
    assert second["REMOTE_ADDR"] == "127.0.0.1"


def _have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_peer_trust(yimmo_server):
    addr = yimmo_server(environ_app, bind="[::1]:0").address
    env = ask(addr, NGINX_LIKE, family=socket.AF_INET6, source="::1")
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    addr = yimmo_server(environ_app, bind="[::1]:0",
                        forwarded_allow_ips="127.0.0.1,fd00::/8").address
    env = ask(addr, NGINX_LIKE, family=socket.AF_INET6, source="::1")
    assert env["REMOTE_ADDR"] == "::1"
    addr = yimmo_server(environ_app, bind="[::1]:0",
                        forwarded_allow_ips="::/0").address
    env = ask(addr, NGINX_LIKE, family=socket.AF_INET6, source="::1")
    assert env["REMOTE_ADDR"] == "203.0.113.7"


@pytest.mark.parametrize("value", ["10.0.0.0/33", "1", "foo", "::1/129",
                                   "fe80::1%eth0", "10.0.0.0/", "10.0.0.0/a"])
def test_bad_allow_ips_option(value, yimmo_server):
    with pytest.raises(ValueError, match="bad address or network"):
        yimmo_server(environ_app, forwarded_allow_ips=value)


def test_bad_allow_ips_flag_one_line(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-m", "yimmo", "--forwarded-allow-ips",
         "10.0.0.0/99", "examples.hello:app"],
        capture_output=True, text=True, timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yimmo: error: "), lines
    assert "10.0.0.0/99" in lines[0]


def test_options_from_flags_and_environment():
    from yimmo._options import parse_args
    _, opts = parse_args(["--proxy-protocol", "--forwarded-allow-ips",
                          "10.0.0.0/8, fd00::/8", "m:app"], {})
    assert opts["proxy_protocol"] is True
    assert opts["forwarded_allow_ips"] == ["10.0.0.0/8", "fd00::/8"]
    _, opts = parse_args(["m:app"], {"YIMMO_PROXY_PROTOCOL": "yes",
                                     "YIMMO_FORWARDED_ALLOW_IPS": "*"})
    assert opts["proxy_protocol"] is True
    assert opts["forwarded_allow_ips"] == ["*"]
    _, opts = parse_args(["m:app"], {"YIMMO_PROXY_PROTOCOL": "0"})
    assert opts["proxy_protocol"] is False
    with pytest.raises(SystemExit):
        parse_args(["m:app"], {"YIMMO_PROXY_PROTOCOL": "maybe"})


# -- found by review ----------------------------------------------------------

def ask_raw(addr, head):
    """Send a raw request head on a fresh connection; the app's environ."""
    with connect(addr) as sock:
        sock.sendall(head.encode("latin-1"))
        resp = read_response(sock)
    assert resp.status == 200, resp
    return json.loads(resp.body)


@pytest.mark.parametrize("head, port", [
    ("GET / HTTP/1.1\r\nHost: app.example\r\n"
     "X-Forwarded-Proto: https\r\n\r\n", "443"),
    ("GET / HTTP/1.1\r\nHost: app.example:\r\n"
     "X-Forwarded-Proto: https\r\n\r\n", "443"),
    ("GET / HTTP/1.1\r\nHost: app.example\r\n"
     "Forwarded: proto=https\r\n\r\n", "443"),
    ("GET / HTTP/1.0\r\nX-Forwarded-Proto: https\r\n\r\n", "443"),
    # A port of the request's own stays; plain http keeps 80.
    ("GET / HTTP/1.1\r\nHost: app.example:8443\r\n"
     "X-Forwarded-Proto: https\r\n\r\n", "8443"),
    ("GET / HTTP/1.1\r\nHost: [::1]\r\n"
     "X-Forwarded-Proto: https\r\n\r\n", "443"),
    ("GET / HTTP/1.1\r\nHost: [::1]:8443\r\n"
     "X-Forwarded-Proto: https\r\n\r\n", "8443"),
    ("GET / HTTP/1.1\r\nHost: app.example\r\n"
     "X-Forwarded-Proto: http\r\n\r\n", "80"),
])
def test_unix_listener_forwarded_https_default_port(yimmo_server, tmp_path,
                                                    head, port):
    """On a unix listener SERVER_PORT comes from the request's host; with
    no port there it is the scheme's default, also when the scheme is a
    trusted proxy's https (review D4)."""
    path = str(tmp_path / "s.sock")
    yimmo_server(environ_app, bind="unix:" + path,
                 proxy_headers=("Forwarded" if "Forwarded:" in head
                                else "X-Forwarded-Proto"))
    env = ask_raw(path, head)
    assert env["SERVER_PORT"] == port
    assert env["wsgi.url_scheme"] == ("http" if port == "80" else "https")


@pytest.mark.parametrize("allow, trusted_peer", [
    ("::ffff:0:0/96", True),            # every IPv4 address
    ("::ffff:127.0.0.0/104", True),     # 127.0.0.0/8
    ("::ffff:127.0.0.1/128", True),
    ("::ffff:127.0.0.1", True),
    ("::ffff:127.0.0.2/128", False),
    ("::ffff:10.0.0.0/104", False),
])
def test_ipv4_mapped_networks(yimmo_server, allow, trusted_peer):
    """An IPv4-mapped network is its IPv4 network, its prefix counting the
    96 bits of ::ffff:0:0/96 (review D3: the option check accepted it and
    the core refused it)."""
    addr = yimmo_server(environ_app, forwarded_allow_ips=allow).address
    env = ask(addr, NGINX_LIKE)
    assert env["REMOTE_ADDR"] == ("203.0.113.7" if trusted_peer
                                  else "127.0.0.1")


def test_ipv4_mapped_network_prefix_below_96_is_refused(yimmo_server):
    with pytest.raises(ValueError, match="IPv4-mapped"):
        yimmo_server(environ_app, forwarded_allow_ips="::ffff:0:0/95")


def test_core_refuses_a_bare_str_of_networks():
    """The core wants a list: a str would be read as its characters."""
    import sys
    from yimmo import _yimmo

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        listeners = [(sock.fileno(), False, "127.0.0.1", "0")]
        for value in ("*", "127.0.0.1"):
            with pytest.raises(TypeError, match="list or a tuple"):
                _yimmo.Core(app, listeners, print, sys.stderr, workers=1,
                            forwarded_allow_ips=value)
        core = _yimmo.Core(app, listeners, print, sys.stderr, workers=1,
                           forwarded_allow_ips=("*",))
        sock.detach()
        core.stop(0)


@pytest.mark.parametrize("value", [
    "::ffff:0:0/96", "::ffff:0:0/95", "::ffff:0:0/0", "::ffff:10.0.0.0/104",
    "::ffff:127.0.0.1/128", "::ffff:127.0.0.1/129", "::ffff:127.0.0.1",
    "::/0", "::/96", "10.0.0.0/8", "10.0.0.0/33", "fd00::/8", "::1/129",
    "1.2.3.4/", "fe80::1%eth0", "::ffff:1.2.3.4/0096",
])
def test_option_check_and_core_agree(value):
    """What the option check accepts the core takes, and what it refuses
    the core refuses too (review D3: ::ffff:0:0/96 passed the one and
    failed the other, with a second, differently worded error)."""
    import sys
    from yimmo import _yimmo
    from yimmo._options import check_network

    try:
        check_network(value)
        checked = True
    except ValueError:
        checked = False

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        listeners = [(sock.fileno(), False, "127.0.0.1", "0")]
        try:
            core = _yimmo.Core(app, listeners, print, sys.stderr, workers=1,
                               forwarded_allow_ips=[value])
        except ValueError:
            built = False
        else:
            built = True
            sock.detach()
            core.stop(0)
    assert checked == built

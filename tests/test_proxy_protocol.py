"""--proxy-protocol through real sockets: PROXY v1 and v2 headers from a
trusted peer set REMOTE_ADDR/REMOTE_PORT; a trusted peer without a valid
header, and an untrusted peer with one, are closed; an untrusted peer
without one is served plain HTTP. (The parser's own table tests are
tests/proxy/test_proxy_protocol.c.)"""

import json
import socket
import struct
import time

import pytest

from helpers import assert_closed, connect, read_response

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def app(environ, start_response):
    body = json.dumps({k: environ.get(k) for k in (
        "REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme")}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def v2(cmd, fam, block, tlvs=b""):
    body = block + tlvs
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack(">H", len(body)) + body


def v2_tcp4(src, sport, dst="127.0.0.1", dport=80, tlvs=b""):
    block = socket.inet_aton(src) + socket.inet_aton(dst) + \
        struct.pack(">HH", sport, dport)
    return v2(1, 0x11, block, tlvs)


def v2_tcp6(src, sport, dst="::1", dport=80):
    block = socket.inet_pton(socket.AF_INET6, src) + \
        socket.inet_pton(socket.AF_INET6, dst) + struct.pack(">HH", sport,
                                                             dport)
    return v2(1, 0x21, block)


def env_of(sock):
    resp = read_response(sock)
    assert resp.status == 200, resp
    return json.loads(resp.body)


def send(addr, data, source=None):
    if source is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(addr)
    else:
        sock = connect(addr)
    sock.sendall(data)
    return sock


@pytest.fixture
def server(yimmo_server):
    return yimmo_server(app, proxy_protocol=True, workers=2,
                        header_timeout=1.0)


@pytest.mark.parametrize("header, addr, port", [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", "192.0.2.1",
     "56324"),
    (b"PROXY TCP6 2001:db8::1 ::1 4711 443\r\n", "2001:db8::1", "4711"),
    (b"PROXY TCP6 ::ffff:192.0.2.5 ::1 7 443\r\n", "192.0.2.5", "7"),
    (v2_tcp4("203.0.113.9", 1234), "203.0.113.9", "1234"),
    (v2_tcp4("203.0.113.9", 1234,
             tlvs=b"\x04\x00\x02ab\x05\x00\x00\xea\x00\x03xyz"),
     "203.0.113.9", "1234"),
    (v2_tcp6("2001:db8::7", 65535), "2001:db8::7", "65535"),
])
def test_proxy_header_sets_remote_addr(server, header, addr, port):
    with send(server.address, header + REQUEST) as sock:
        env = env_of(sock)
    assert env["REMOTE_ADDR"] == addr
    assert env["REMOTE_PORT"] == port


def test_header_applies_to_every_request_of_the_connection(server):
    with send(server.address,
              b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n" + REQUEST) as sock:
        assert env_of(sock)["REMOTE_ADDR"] == "192.0.2.1"
        # A second PROXY line is not a header any more: it is a bad
        # request line.
        sock.sendall(REQUEST)
        assert env_of(sock)["REMOTE_ADDR"] == "192.0.2.1"
        sock.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.2 1 2\r\n" + REQUEST)
        assert read_response(sock).status == 400


@pytest.mark.parametrize("header", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
    v2(0, 0x00, b""),                           # LOCAL: a health check
    v2(0, 0x11, b"\x00" * 12),
    v2(1, 0x00, b""),                           # PROXY, AF_UNSPEC
])
def test_local_and_unknown_keep_the_peer_address(server, header):
    with send(server.address, header + REQUEST) as sock:
        env = env_of(sock)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()


def test_header_split_across_writes(server):
    data = v2_tcp4("192.0.2.44", 4444) + REQUEST
    with connect(server.address) as sock:
        for i in range(0, len(data), 3):
            sock.sendall(data[i:i + 3])
            time.sleep(0.002)
        assert env_of(sock)["REMOTE_ADDR"] == "192.0.2.44"


@pytest.mark.parametrize("data", [
    REQUEST,                                    # no header at all
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n" + REQUEST,
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 99999\r\n" + REQUEST,
    b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n" + REQUEST,
    b"PROXY " + b"x" * 200,
    v2(1, 0x12, b"\x00" * 12) + REQUEST,        # UDP
    v2(1, 0x11, b"\x00" * 11) + REQUEST,        # short block
    v2_tcp4("192.0.2.1", 1, tlvs=b"\x04\x00\x09ab") + REQUEST,
    SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12 + REQUEST,  # version 3
])
def test_trusted_peer_without_valid_header_is_closed(server, data):
    with send(server.address, data) as sock:
        assert_closed(sock)


def test_incomplete_header_times_out_with_a_close(server):
    with send(server.address, b"PROXY TCP4 192.0.2.1") as sock:
        start = time.monotonic()
        assert_closed(sock, timeout=5)
        assert time.monotonic() - start < 3


def test_silent_trusted_peer_times_out(server):
    with connect(server.address) as sock:
        start = time.monotonic()
        assert_closed(sock, timeout=5)
        assert time.monotonic() - start < 3


def test_untrusted_peer(yimmo_server):
    """An untrusted peer: plain HTTP is served with its own address, and a
    PROXY header (either version) closes the connection."""
    addr = yimmo_server(app, proxy_protocol=True,
                        forwarded_allow_ips="10.0.0.0/8").address
    with send(addr, REQUEST) as sock:
        assert env_of(sock)["REMOTE_ADDR"] == "127.0.0.1"
    for header in (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
                   v2_tcp4("192.0.2.1", 1)):
        with send(addr, header + REQUEST) as sock:
            assert_closed(sock)
    # Even a PROXY signature split over writes.
    with connect(addr) as sock:
        sock.sendall(b"PRO")
        time.sleep(0.05)
        sock.sendall(b"XY TCP4 192.0.2.1 198.51.100.2 1 2\r\n" + REQUEST)
        assert_closed(sock)
    # Methods that start like the signature are still HTTP.
    with send(addr, b"PROPFIND / HTTP/1.1\r\nHost: h\r\n\r\n") as sock:
        assert read_response(sock).status == 200


def test_untrusted_second_loopback_address(yimmo_server):
    addr = yimmo_server(app, proxy_protocol=True).address
    try:
        sock = send(addr, b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n" +
                    REQUEST, source="127.0.0.2")
    except OSError as exc:
        pytest.skip("cannot bind 127.0.0.2: %s" % exc)
    with sock:
        assert_closed(sock)
    with send(addr, REQUEST, source="127.0.0.2") as sock:
        assert env_of(sock)["REMOTE_ADDR"] == "127.0.0.2"


def test_forwarding_fields_are_judged_by_the_proxied_client(yimmo_server):
    """Behind a layer-4 proxy the HTTP fields come from the client itself:
    X-Forwarded-For is believed only if the PROXY header names a trusted
    client."""
    addr = yimmo_server(app, proxy_protocol=True,
                        forwarded_allow_ips="127.0.0.1,10.0.0.0/8").address
    xff = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.99\r\n" \
        b"X-Forwarded-Proto: https\r\n\r\n"
    with send(addr, b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n" + xff) \
            as sock:
        env = env_of(sock)
    assert env["REMOTE_ADDR"] == "192.0.2.1"
    assert env["wsgi.url_scheme"] == "http"
    with send(addr, b"PROXY TCP4 10.1.1.1 198.51.100.2 1 2\r\n" + xff) \
            as sock:
        env = env_of(sock)
    assert env["REMOTE_ADDR"] == "198.51.100.99"
    assert env["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("header", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
    v2(1, 0x00, b""),                           # PROXY, AF_UNSPEC
    # LOCAL: what HAProxy sends for a client on a unix socket too (wire
    # review 2 of s18).
    v2(0, 0x00, b""),
    v2(0, 0x11, b"\x00" * 12),
])
def test_a_header_that_names_no_client_leaves_it_untrusted(server, header):
    """After UNKNOWN, LOCAL, or v2 PROXY with no address, a client the
    proxy does not name may speak: its X-Forwarded-* fields named any
    address and scheme it liked (wire reviews of s18)."""
    xff = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.99\r\n" \
        b"X-Forwarded-Proto: https\r\n\r\n"
    with send(server.address, header + xff) as sock:
        env = env_of(sock)
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == \
        ("127.0.0.1", "http")


def test_unix_socket_peer_must_send_header(yimmo_server, tmp_path):
    path = str(tmp_path / "s.sock")
    yimmo_server(app, bind="unix:" + path, proxy_protocol=True)
    with send(path, v2_tcp4("192.0.2.3", 33) + REQUEST) as sock:
        env = env_of(sock)
    assert env["REMOTE_ADDR"] == "192.0.2.3"
    assert env["REMOTE_PORT"] == "33"
    with send(path, REQUEST) as sock:
        assert_closed(sock)


def test_server_keeps_serving_after_bad_headers(server):
    for _ in range(20):
        with send(server.address, b"PROXY garbage\r\n") as sock:
            assert_closed(sock)
    with send(server.address,
              b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n" + REQUEST) as sock:
        assert env_of(sock)["REMOTE_ADDR"] == "192.0.2.1"


# -- found by review ----------------------------------------------------------

def test_full_server_never_answers_before_the_proxy_header(yimmo_server):
    """The server is full: a connection whose PROXY header is only partly
    in (a trusted peer's, or an untrusted peer's that starts like a v2
    signature) is not queued for room and answered 503 at the queue
    timeout; it waits for its header, and is closed without a word at the
    header timeout."""
    import threading
    gate = threading.Event()

    def slow(environ, start_response):
        gate.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    addr = yimmo_server(slow, proxy_protocol=True, workers=1, max_pending=0,
                        queue_timeout=0.5, header_timeout=2.0).address
    socks = []
    try:
        busy = send(addr, b"PROXY UNKNOWN\r\n" + REQUEST)
        socks.append(busy)
        time.sleep(0.2)
        partial = send(addr, b"PROXY TCP4")
        socks.append(partial)
        try:
            untrusted = send(addr, SIG[:5], source="127.0.0.2")
            socks.append(untrusted)
        except OSError:
            untrusted = None            # no second loopback address
        start = time.monotonic()
        assert_closed(partial, timeout=5)
        assert time.monotonic() - start > 1.0     # the header timeout
        if untrusted is not None:
            assert_closed(untrusted, timeout=5)
        gate.set()
        assert read_response(busy).status == 200
    finally:
        gate.set()
        for sock in socks:
            sock.close()


def test_head_size_limit_holds_for_a_whole_header(yimmo_server):
    """--limit-request-head-size bounds a PROXY header however it arrives:
    one just over the limit in a single write is refused like one that
    came in pieces; one at the limit is read."""
    addr = yimmo_server(app, proxy_protocol=True, workers=2,
                        limit_request_head_size=4096).address

    def header(size):
        noop = size - 16 - 12 - 3
        return v2_tcp4("203.0.113.9", 7,
                       tlvs=b"\x04" + struct.pack(">H", noop) + b"x" * noop)

    assert len(header(4096)) == 4096
    with send(addr, header(4096) + REQUEST) as sock:
        assert env_of(sock)["REMOTE_ADDR"] == "203.0.113.9"
    with send(addr, header(4097) + REQUEST) as sock:
        assert_closed(sock)
    with send(addr, header(4113) + REQUEST) as sock:
        assert_closed(sock)

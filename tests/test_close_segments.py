"""How a connection's last response leaves: with our FIN in its last
segment, and never so early that a client's stray byte could reset it.

A response after which the connection closes (the client said close, an
HTTP/1.0 client, an error) is written with MSG_MORE, so that its last
segment waits for the FIN and carries it: one segment less for each side
(conn.c, conn_last_write). These tests watch the segments themselves on
the interface (an AF_PACKET socket: root only, skipped otherwise), and
check that holding the last bytes back never lets the close drop them: a
peer on this host whose window is full, and one on another "host" (a
network namespace the test creates, reached over a veth pair), where the
connection lingers for the client's close.
"""

import ctypes
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from helpers import (APPS_DIR, NetnsHost, ServerProcess, build_request,
                     netns_usable, parse_response, read_until_close,
                     subprocess_env)

WAIT = 10
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
FIN, SYN, RST = 0x01, 0x02, 0x04


class Capture:
    """The TCP segments sent from one port that an interface sees,
    as (flags, payload length), in order."""

    def __init__(self, ifname, port):
        self.port = port
        # Protocol 0: the socket takes no frame until bind() names one,
        # after the filter is attached. (Made with ETH_P_IP, it queued
        # every frame of every interface until the filter came: with
        # suites side by side a busy loopback filled its buffer in that
        # moment, and the test's own segments were dropped.)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:    # root may pass net.core.rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                 8 << 20)
        # Only TCP segments from the port are queued (classic BPF, "tcp
        # src port PORT"): a busy loopback (suites side by side) would
        # fill the buffer with other traffic before segments() reads it.
        insns = [
            (0x28, 0, 0, 12),            # ldh [12]: ethertype
            (0x15, 0, 8, 0x0800),        # IPv4, else drop
            (0x30, 0, 0, 23),            # ldb [23]: protocol
            (0x15, 0, 6, 6),             # TCP, else drop
            (0x28, 0, 0, 20),            # ldh [20]: fragment offset
            (0x45, 4, 0, 0x1fff),        # a later fragment: drop
            (0xb1, 0, 0, 14),            # x = IP header length
            (0x48, 0, 0, 14),            # ldh [x + 14]: source port
            (0x15, 0, 1, port),          # ours, else drop
            (0x06, 0, 0, 0x40000),       # keep
            (0x06, 0, 0, 0),             # drop
        ]
        code = ctypes.create_string_buffer(
            b"".join(struct.pack("HBBI", *i) for i in insns))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                             struct.pack("HL", len(insns),
                                         ctypes.addressof(code)))
        self.sock.bind((ifname, 0x0800))   # IPv4 (Python orders the bytes)

    def segments(self):
        """What arrived until the port has sent nothing for 0.3 s. (Not
        the interface: other tests, side by side, keep loopback busy.)"""
        out = []
        quiet_until = time.monotonic() + 0.3
        deadline = time.monotonic() + WAIT
        while True:
            now = time.monotonic()
            if now >= quiet_until or now >= deadline:
                break
            self.sock.settimeout(min(quiet_until, deadline) - now)
            try:
                frame, addr = self.sock.recvfrom(1 << 17)
            except socket.timeout:
                break
            # Loopback shows a packet twice: as sent and as received.
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            ip = frame[14:]
            ihl = (ip[0] & 15) * 4
            if ip[9] != socket.IPPROTO_TCP:
                continue
            total = struct.unpack("!H", ip[2:4])[0]
            tcp = ip[ihl:]
            if struct.unpack("!H", tcp[0:2])[0] != self.port:
                continue
            out.append((tcp[13], total - ihl - (tcp[12] >> 4) * 4))
            quiet_until = time.monotonic() + 0.3
        return out

    def close(self):
        self.sock.close()


def capture_usable():
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
    except (OSError, AttributeError) as exc:
        return "cannot capture packets (AF_PACKET needs root): %s" % exc
    return None


@pytest.fixture
def capture():
    reason = capture_usable()
    if reason:
        pytest.skip(reason)
    made = []

    def start(ifname, port):
        made.append(Capture(ifname, port))
        return made[-1]

    yield start
    for c in made:
        c.close()


def exchange(address, request):
    """Send one request, read the response until the server closes."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(request)
        return read_until_close(sock, WAIT)


def assert_fin_in_last_segment(segments, body_bytes):
    data = [(f, n) for f, n in segments if n > 0]
    assert data, segments
    assert not any(f & RST for f, _ in segments), segments
    fins = [(f, n) for f, n in segments if f & FIN]
    # One FIN, in the segment with the response's last bytes.
    assert fins == [data[-1]], segments
    assert sum(n for _, n in data) >= body_bytes, segments


def hello(environ, start_response):
    body = b"hello"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def big(environ, start_response):
    body = b"y" * 200000
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("request_bytes, status, body", [
    (build_request("GET", "/", headers=[("Connection", "close")]), 200,
     b"hello"),
    (b"GET / HTTP/1.0\r\n\r\n", 200, b"hello"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400, None),
], ids=["connection-close", "http-1.0", "error-400"])
def test_the_last_segment_carries_the_fin(yimmo_server, capture,
                                          request_bytes, status, body):
    server = yimmo_server(hello, workers=1)
    cap = capture("lo", server.address[1])
    raw = exchange(server.address, request_bytes)
    response = parse_response(raw)
    assert response.status == status
    if body is not None:
        assert response.body == body
    assert_fin_in_last_segment(cap.segments(), len(raw))


def test_a_response_of_many_segments_ends_with_the_fin(yimmo_server,
                                                       capture):
    # Written in more than one go (the socket takes part, the rest after
    # the client's ACKs), the last bytes still go out, and the one FIN
    # after them. (It may travel alone: an ACK that arrives before the
    # shutdown sends the held segment by itself.)
    server = yimmo_server(big, workers=1)
    cap = capture("lo", server.address[1])
    t0 = time.monotonic()
    raw = exchange(server.address,
                   build_request("GET", "/", headers=[("Connection",
                                                       "close")]))
    assert time.monotonic() - t0 < 0.15      # nothing waited for a timer
    assert parse_response(raw).body == b"y" * 200000
    segments = cap.segments()
    assert not any(f & RST for f, _ in segments), segments
    fins = [i for i, (f, _) in enumerate(segments) if f & FIN]
    assert len(fins) == 1, segments
    assert all(n == 0 for _, n in segments[fins[0] + 1:]), segments
    assert sum(n for _, n in segments) >= 200000, segments


def test_a_kept_connection_sends_each_response_at_once(yimmo_server,
                                                       capture):
    # Only the last response of a connection waits for the FIN: one the
    # connection outlives goes out by itself, with no FIN.
    server = yimmo_server(hello, workers=1)
    cap = capture("lo", server.address[1])
    with socket.create_connection(server.address, timeout=WAIT) as sock:
        sock.sendall(build_request("GET", "/"))
        got = b""
        while not got.endswith(b"hello"):
            chunk = sock.recv(65536)
            assert chunk
            got += chunk
        segments = cap.segments()
        assert [f & FIN for f, n in segments if n > 0] == [0], segments
        assert not any(f & FIN for f, _ in segments), segments
        sock.sendall(build_request("GET", "/", headers=[("Connection",
                                                         "close")]))
        read_until_close(sock, WAIT)
    assert_fin_in_last_segment(cap.segments(), 5)


def stray_crlf_from_a_stalled_client(address, target):
    """GET target with Connection: close from a client with a tiny window
    (2 KB) that reads nothing for 0.3 s, then sends a stray CRLF; then
    all it receives until the server closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    with sock:
        sock.settimeout(WAIT)
        sock.connect(address)
        sock.sendall(build_request("GET", target, headers=[("Connection",
                                                            "close")]))
        time.sleep(0.3)
        sock.sendall(b"\r\n")
        time.sleep(0.2)
        return read_until_close(sock, WAIT)


def test_a_held_response_survives_a_stray_byte_from_a_stalled_client(
        yimmo_server):
    # The response fits in the server's send buffer (16 KB on a fresh
    # connection) in one write, so its last bytes are held for the FIN;
    # but this client has a tiny window and reads nothing yet, so most of
    # it cannot leave the server's kernel when the client's stray CRLF
    # arrives. The server must not have closed (its socket would answer
    # the CRLF with a reset, which drops what it still holds): it
    # lingers, discards the CRLF, and the client gets every byte.
    size = 12000

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(size))])
        return [b"y" * size]

    server = yimmo_server(app, workers=1)
    for _ in range(3):
        raw = stray_crlf_from_a_stalled_client(server.address, "/")
        assert parse_response(raw).body == b"y" * size


@pytest.fixture
def other_host():
    """A yimmo on another "host": a network namespace, its address reached
    over a veth pair, serving tests/apps/sized.py on port 8000."""
    reason = netns_usable()
    if reason:
        pytest.skip(reason)
    host = NetnsHost(3, "c")
    host.create()
    try:
        server = ServerProcess(
            [*host.exec_prefix, sys.executable, "-m", "yimmo", "--bind",
             "%s:8000" % host.address, "--workers", "1", "sized:app"],
            cwd=APPS_DIR, env=subprocess_env())
        with server:
            server.wait_listening()
            yield host, (host.address, 8000)
            server.signal(15)
            assert server.wait(15) == 0, server.stderr
    finally:
        host.destroy()


def test_a_client_on_another_host_gets_the_fin_with_the_response(
        other_host, capture):
    host, address = other_host
    cap = capture(host.outer, address[1])
    raw = exchange(address, build_request("GET", "/", headers=[
        ("Connection", "close")]))
    assert parse_response(raw).body == b"hello"
    assert_fin_in_last_segment(cap.segments(), len(raw))


def test_a_client_on_another_host_that_sends_a_stray_byte_gets_it_all(
        other_host):
    # From another host the server cannot know that the client has the
    # response until it says so: it shuts down its side (the FIN goes
    # with the held bytes) and lingers, so that the stray CRLF is read
    # and discarded, not answered with a reset. (As in the test above,
    # the client's tiny window keeps most of the response in the
    # server's kernel until the client reads.)
    host, address = other_host
    raw = stray_crlf_from_a_stalled_client(address, "/12000")
    assert parse_response(raw).body == b"y" * 12000


def server_socket(port, client_port, prefix=()):
    """`ss`'s line for the server's end of the connection from client_port
    to port ("" when there is none), with its owner if a process still
    has it open: users:(("python",...))."""
    out = subprocess.run(
        [*prefix, "ss", "-tnpH", "state", "all", "( sport = :%d and "
         "dport = :%d )" % (port, client_port)],
        capture_output=True, text=True, timeout=10).stdout
    return out.strip()


def test_a_peer_over_loopback_is_closed_at_once(yimmo_server):
    # A client on this host, over loopback, has the response once it was
    # sent: the server closes without waiting for the client's close (or
    # for an acknowledgement the client delays until it closes).
    if shutil.which("ss") is None:
        pytest.skip("iproute2's ss is not installed")
    server = yimmo_server(hello, workers=1)
    with socket.create_connection(server.address, timeout=WAIT) as sock:
        sock.sendall(build_request("GET", "/", headers=[("Connection",
                                                         "close")]))
        assert parse_response(read_until_close(sock, WAIT)).body == b"hello"
        # Still open on the client's side: the server's end is an
        # orphan, no process owns it. (The FIN came from the shutdown()
        # just before the close(): allow the close a moment, far less
        # than the 2 s a lingering close would wait.)
        deadline = time.monotonic() + 0.5
        while True:
            line = server_socket(server.address[1], sock.getsockname()[1])
            if "users:" not in line or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert "users:" not in line, line


def test_a_peer_with_a_loopback_address_on_a_real_link_gets_a_lingering_close():
    # A 127.x address does not mean loopback: with route_localnet, two
    # namespaces talk over a veth with 127.1.0.1 and 127.1.0.2. Segments
    # can be lost there after they left the server's socket, so the server
    # may not close once they are sent, as it does for a peer over its own
    # loopback (conn_over_loopback): a lost one would wait in an orphaned
    # socket, which answers a stray byte from the client with a reset. It
    # may close only once the client acknowledged everything, our FIN
    # included, which a client that keeps the connection open does late
    # (it hopes to send the ACK with its own FIN): so the server lingers,
    # still holding its end while the client, which has the whole
    # response, keeps the connection open.
    reason = netns_usable()
    if reason:
        pytest.skip(reason)
    if shutil.which("ss") is None:
        pytest.skip("iproute2's ss is not installed")
    server_ns = "ymo-ls-%d" % os.getpid()
    client_ns = "ymo-lc-%d" % os.getpid()
    veth = "yml%d" % (os.getpid() % 100000)

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True, timeout=10)

    made = []
    try:
        for ns in (server_ns, client_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "link", "add", veth + "s", "netns", server_ns, "type",
           "veth", "peer", "name", veth + "c", "netns", client_ns)
        for ns, end, address in ((server_ns, veth + "s", "127.1.0.1"),
                                 (client_ns, veth + "c", "127.1.0.2")):
            run = ("ip", "netns", "exec", ns)
            sh(*run, "ip", "link", "set", "lo", "up")
            sh(*run, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1",
               "net.ipv4.conf.default.route_localnet=1",
               "net.ipv4.conf.all.rp_filter=0",
               "net.ipv4.conf.default.rp_filter=0")
            # 127/8 is all local by default; only 127.0.0.1 stays so.
            sh(*run, "ip", "route", "del", "local", "127.0.0.0/8", "dev",
               "lo", "table", "local")
            sh(*run, "ip", "route", "replace", "local", "127.0.0.1", "dev",
               "lo", "table", "local")
            sh(*run, "sysctl", "-qw",
               "net.ipv4.conf.%s.route_localnet=1" % end,
               "net.ipv4.conf.%s.rp_filter=0" % end)
            sh(*run, "ip", "addr", "add", address + "/24", "dev", end)
            sh(*run, "ip", "link", "set", end, "up")
        server = ServerProcess(
            ["ip", "netns", "exec", server_ns, sys.executable, "-m", "yimmo",
             "--bind", "127.1.0.1:8000", "--workers", "1", "sized:app"],
            cwd=APPS_DIR, env=subprocess_env())
        with server:
            server.wait_listening()
            client = subprocess.run(
                ["ip", "netns", "exec", client_ns, sys.executable, "-c",
                 LOOPBACK_LINK_CLIENT, server_ns],
                capture_output=True, text=True, timeout=30)
            assert client.returncode == 0, client.stderr
            body, line = client.stdout.split("\n", 1)
            assert body == "5", client.stdout
            assert "users:" in line, line
            server.signal(15)
            assert server.wait(15) == 0, server.stderr
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                           timeout=10)


# Runs in the client's namespace: one request that says close, the whole
# response read, the connection kept open for a moment while `ss` (in the
# server's namespace) looks at the server's end.
LOOPBACK_LINK_CLIENT = r"""
import socket, subprocess, sys
s = socket.create_connection(("127.1.0.1", 8000), timeout=5)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(len(got.partition(b"\r\n\r\n")[2]))
out = subprocess.run(
    ["ip", "netns", "exec", sys.argv[1], "ss", "-tnpH", "state", "all",
     "( sport = :8000 and dport = :%d )" % s.getsockname()[1]],
    capture_output=True, text=True, timeout=10).stdout
print(out.strip())
s.close()
"""

"""Connections accepted together in one accept callback (ext/server.c):
their requests run in arrival order, and a burst of hostile clients in
one accept leaves the server serving. From the review of an experiment
that read each connection at accept (its first version ran them newest
first; it was dropped as it saved nothing: bench/README.md)."""

import signal
import sys
import textwrap
import time

import pytest

from helpers import ServerProcess, build_request, connect, read_response
from test_standby import ORDER_APP


# test_standby.test_one_turn_runs_in_arrival_order, with connections that
# are new: accepted (and read) in one accept callback.
def test_new_connections_in_one_turn_run_in_arrival_order(tmp_path):
    (tmp_path / "order_app.py").write_text(ORDER_APP)
    with ServerProcess([sys.executable, "-m", "yimmo", "-b", "127.0.0.1:0",
                        "--workers", "1", "order_app:app"],
                       cwd=tmp_path) as server:
        addr = server.wait_listening()
        s = connect(addr, 15)
        s.sendall(build_request("GET", "/warm"))
        assert read_response(s).status == 200
        s.close()
        socks = []
        server.pause()
        try:
            for i in range(8):
                s = connect(addr, 15)
                s.sendall(build_request("GET", "/%d" % i))
                socks.append(s)
                time.sleep(0.01)
            time.sleep(0.2)
        finally:
            server.signal(signal.SIGCONT)
        last = max((read_response(s).body.decode() for s in socks), key=len)
        for s in socks:
            s.close()
        order = [p for p in last.split(",") if p != "/warm"]
        assert order == ["/%d" % i for i in range(8)], order


HELLO_APP = textwrap.dedent("""
    import time

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.5)
        body = b"ok " + environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")

PROXY_V1 = b"PROXY TCP4 10.1.2.3 10.0.0.1 1234 80\r\n"


def _burst(addr, family, proxy):
    """Connections of every kind, made while the server is stopped: the
    loop accepts (and reads) them all in one callback."""
    import socket
    import struct

    def new():
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(addr)
        return s

    pre = PROXY_V1 if proxy else b""
    kinds = {}
    # closes at once
    s = new(); s.close()
    # resets at once
    s = new()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    kinds["partial"] = new(); kinds["partial"].sendall(pre + b"GET / HT")
    kinds["idle"] = new()
    kinds["garbage"] = new(); kinds["garbage"].sendall(pre + b"\x00\x01junk\r\n\r\n")
    if proxy:
        kinds["proxy_only"] = new(); kinds["proxy_only"].sendall(pre)
        kinds["proxy_bad"] = new(); kinds["proxy_bad"].sendall(b"PROXY XYZ\r\n")
    kinds["full"] = [new() for _ in range(5)]
    for i, s in enumerate(kinds["full"]):
        s.sendall(pre + build_request("GET", "/slow" if i == 0 else "/f%d" % i))
    kinds["half"] = new()
    kinds["half"].sendall(pre + b"GET /half HTTP/1.1\r\nHost: h\r\n"
                          b"Connection: close\r\n\r\n")
    kinds["half"].shutdown(socket.SHUT_WR)
    kinds["eof_partial"] = new()
    kinds["eof_partial"].sendall(pre + b"GET / HTTP/1.1\r\nHo")
    kinds["eof_partial"].shutdown(socket.SHUT_WR)
    return kinds


@pytest.mark.parametrize("mode", ["tcp", "proxy", "full", "unix"])
def test_hostile_burst_in_one_accept(tmp_path, mode):
    import socket
    (tmp_path / "hello_app.py").write_text(HELLO_APP)
    bind = "127.0.0.1:0"
    if mode == "unix":
        bind = "unix:%s" % (tmp_path / "s.sock")
    args = [sys.executable, "-m", "yimmo", "-b", bind, "--workers", "1",
            "--header-timeout", "1", "--graceful-timeout", "5"]
    if mode == "proxy":
        args += ["--proxy-protocol"]
    if mode == "full":
        args += ["--max-pending", "1"]
    with ServerProcess(args + ["hello_app:app"], cwd=tmp_path) as server:
        if mode == "unix":
            server.wait_for_line("Listening at unix:")
            addr, family = str(tmp_path / "s.sock"), socket.AF_UNIX
        else:
            addr, family = server.wait_listening(), socket.AF_INET
        for rnd in range(3):
            server.pause()
            try:
                kinds = _burst(addr, family, mode == "proxy")
                time.sleep(0.1)
            finally:
                server.signal(signal.SIGCONT)
            for s in kinds["full"]:
                r = read_response(s)
                assert r.status == 200, r
            r = read_response(kinds["half"])
            assert r.status == 200 and r.body == b"ok /half"
            for k in ("partial", "idle", "garbage", "eof_partial",
                      "proxy_only", "proxy_bad"):
                if k not in kinds:
                    continue
                s = kinds[k]
                s.settimeout(5)
                data = b""
                while True:
                    try:
                        d = s.recv(65536)
                    except (ConnectionResetError, socket.timeout) as e:
                        assert not isinstance(e, socket.timeout), k
                        break
                    if not d:
                        break
                    data += d
                if k == "garbage":
                    assert data.startswith(b"HTTP/1.1 400"), data
                s.close()
            for s in kinds["full"]:
                s.close()
            kinds["half"].close()
        server.signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
        err = "\n".join(server.stderr_lines)
        assert "AddressSanitizer" not in err and "runtime error" not in err

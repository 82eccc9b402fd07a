"""One connection cannot hold the loop: a response going out to a reader
as fast as the server (a proxy on the same host, over loopback or a unix
socket) never fills its socket, and used to be written whole in one turn
of the loop while every other connection waited (ext/conn.c,
YMO_FLUSH_TURN)."""

import socket
import threading
import time

import pytest

from helpers import build_request, connect, read_response

WAIT = 20
SIZE = 64 << 30         # sparse: longer than the test lets it run


def _file_or_hello(path):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/big":
            f = open(path, "rb")
            start_response("200 OK", [("Content-Length", str(SIZE))])
            return environ["wsgi.file_wrapper"](f)
        if environ["PATH_INFO"] == "/gen":
            chunk = b"x" * (4 << 20)
            start_response("200 OK", [])
            return iter(lambda: chunk, None)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    return app


class _FastReader(threading.Thread):
    """Downloads `target` as fast as it can until stopped."""

    def __init__(self, address, target):
        super().__init__(daemon=True)
        self.sock = connect(address, WAIT)
        self.sock.sendall(build_request("GET", target))
        self.received = 0
        self.stop = threading.Event()

    def run(self):
        buf = bytearray(4 << 20)
        while not self.stop.is_set():
            n = self.sock.recv_into(buf)
            if n == 0:
                return
            self.received += n


@pytest.mark.parametrize("target", ["/big", "/gen"])
@pytest.mark.parametrize("bind", ["tcp", "unix"])
def test_a_big_response_to_a_fast_reader_does_not_hold_up_others(
        yimmo_server, tmp_path, target, bind):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(SIZE)
    kw = {} if bind == "tcp" else {"bind": "unix:%s" % (tmp_path / "s")}
    server = yimmo_server(_file_or_hello(str(big)), workers=2, **kw)
    reader = _FastReader(server.address, target)
    reader.start()
    try:
        deadline = time.monotonic() + WAIT
        while reader.received < (256 << 20):
            assert reader.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        # The download is in full flow: requests on another connection
        # are answered as they come, not after it. (Before, over
        # loopback, one waited up to 2.5 s behind the file.)
        worst = 0.0
        with connect(server.address, WAIT) as sock:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                t0 = time.monotonic()
                sock.sendall(build_request("GET", "/"))
                resp = read_response(sock)
                worst = max(worst, time.monotonic() - t0)
                assert resp.status == 200 and resp.body == b"ok"
        still = reader.received
        assert reader.is_alive()
        assert worst < 0.5, "a hello waited %.2f s" % worst
    finally:
        reader.stop.set()
        reader.sock.shutdown(socket.SHUT_RDWR)  # wakes its recv
        reader.join(WAIT)
        reader.sock.close()
    assert still < SIZE

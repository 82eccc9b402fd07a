"""Clients that reset their connection while the server writes to it never
kill the server, whatever the process's SIGPIPE disposition: an embedding
program or a CLI may restore SIG_DFL, under which a write to a reset
socket would end every thread with exit status 141.

The server runs in a subprocess with SIGPIPE set to SIG_DFL, serving large
responses from memory (written with sendmsg) and from a file through
wsgi.file_wrapper (written with sendfile, which has no MSG_NOSIGNAL).
"""

import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import ServerProcess, connect, get

WAIT = 10

APP = textwrap.dedent('''
    import logging, os, signal, sys, tempfile
    import yimmo

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    MEMORY = b"m" * (8 << 20)
    fd, PATH = tempfile.mkstemp()
    os.write(fd, b"f" * (16 << 20))
    os.close(fd)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        query = environ["QUERY_STRING"]
        if query:
            # Answer only once the test says so (its client is gone).
            print("entered " + query, flush=True)
            sys.stdin.readline()
        if path == "/memory":
            start_response("200 OK", [("Content-Length", str(len(MEMORY)))])
            return [MEMORY]
        if path == "/file":
            f = open(PATH, "rb")
            start_response("200 OK",
                           [("Content-Length", str(os.fstat(f.fileno())
                                                   .st_size))])
            return environ["wsgi.file_wrapper"](f)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    try:
        yimmo.serve(app, bind="127.0.0.1:0", workers=2)
    finally:
        os.unlink(PATH)
''')


def reset(sock):
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


def assert_alive(proc, addr):
    # Give a fatal signal time to land before looking.
    time.sleep(0.05)
    assert proc.proc.poll() is None, (
        "the server died (exit %r) after a client reset: %s"
        % (proc.proc.returncode, proc.stderr))
    assert get(addr, "/").body == b"ok"


@pytest.mark.parametrize("body", ["memory", "file"])
def test_client_reset_while_writing_does_not_kill_the_server(tmp_path,
                                                            body):
    script = tmp_path / "resetapp.py"
    script.write_text(APP)
    with ServerProcess([sys.executable, str(script)],
                       stdin=subprocess.PIPE) as proc:
        addr = proc.wait_listening()
        assert get(addr, "/").body == b"ok"

        # Reset in the middle of a response: the client has a tiny receive
        # buffer, so the server is still writing when the RST arrives.
        for _ in range(10):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(WAIT)
            sock.connect(addr)
            sock.sendall(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"
                         % body.encode())
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")
            reset(sock)
            assert_alive(proc, addr)

        # Reset before the response starts, after a FIN the server could
        # not see (it stopped reading an upload the app leaves unread): the
        # socket is then in CLOSE_WAIT, and the RST makes the very first
        # write fail with EPIPE rather than ECONNRESET.
        for i in range(3):
            sock = connect(addr, WAIT)
            sock.sendall(b"POST /%s?%d HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 10000000\r\n\r\n"
                         % (body.encode(), i) + b"u" * 400000)
            sock.shutdown(socket.SHUT_WR)
            proc.wait_for_line("^entered %d$" % i, stream="stdout",
                               timeout=WAIT)
            time.sleep(0.1)
            reset(sock)
            time.sleep(0.1)
            proc.proc.stdin.write(b"go\n")
            proc.proc.stdin.flush()
            assert_alive(proc, addr)

        proc.signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, proc.stderr
        assert "Traceback" not in proc.stderr

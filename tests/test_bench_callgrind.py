"""bench/callgrind.py's client (drive): the requests it counts are
answered, one at a time on one connection, or each on its own connection
when the request says Connection: close (the accept and close path)."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import callgrind  # noqa: E402


def counting_app(ports):
    def app(environ, start_response):
        ports.append(environ["REMOTE_PORT"])
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", "5")])
        return [b"hello"]
    return app


@pytest.fixture
def alive():
    """A running process, for drive's check that the server still is."""
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_drive_counts_answered_requests(yimmo_server, alive, close):
    ports = []
    server = yimmo_server(counting_app(ports), workers=1)
    headers = ["Connection: close"] if close else []
    request = callgrind.request_bytes(headers, bare=True)
    callgrind.drive(server.address[1], 20, request, alive, deadline=20)
    assert len(ports) == 20
    # Each on a connection of its own for Connection: close, else one.
    assert len(set(ports)) == (20 if close else 1)


def test_drive_refuses_a_connection_closed_early(yimmo_server, alive):
    # A server that closes a kept connection (here: after each response,
    # though the client did not ask) is an error, not a count.
    def closing(environ, start_response):
        start_response("200 OK", [("Content-Length", "2"),
                                  ("Connection", "close")])
        return [b"ok"]
    server = yimmo_server(closing, workers=1)
    request = callgrind.request_bytes([], bare=True)
    with pytest.raises(RuntimeError, match="closed the connection"):
        callgrind.drive(server.address[1], 3, request, alive, deadline=20)


@pytest.mark.parametrize("name", callgrind.SERVERS)
def test_server_commands_leave_only_the_port_to_fill(name, tmp_path):
    """bench.py's commands gained "{host}" (for --net veth) and callgrind
    filled only "{port}": every yimmo and bjoern server it started was
    told to bind "{host}:PORT" and exited at once."""
    argv, cwd = callgrind.server_argv(name, "hello:app", sys.executable,
                                      tmp_path, tmp_path, [])
    placeholders = [a for a in argv + [cwd]
                    if "{" in a.replace("{port}", "")]
    assert placeholders == [], argv
    assert any("{port}" in a for a in argv), argv

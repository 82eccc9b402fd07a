"""An app that calls os.fork() in a request (ext/server.c,
ymo_forked_on_worker; YMO_FORK_GUARD in wsgi.h).

In the child only the forking worker thread exists: no loop, no other
worker, and any lock they held at the fork stays held. A child that comes
back into the server (returns from the app, iterates its body, reads
wsgi.input, ...) must not serve: before the guard it ran the parent's queued
requests a second time and then waited for ever for a loop. Now it flushes
Python's stdout and stderr, says so in one line on stderr and exits with
status 0, and the parent serves as if nothing happened. Each server runs in
a child process (`python -m yimmo --workers 1`), and the app logs each run
of a request with its pid to a file, so a request run twice shows."""

import os
import signal
import sys
import textwrap
import threading
import time

import pytest

from helpers import (ServerProcess, build_request, connect, read_response,
                     subprocess_env)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"),
                                reason="no os.fork")

APP = textwrap.dedent("""
    import os, time

    LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")

    def note(what):
        with open(LOG, "a") as f:
            f.write("%s %d\\n" % (what, os.getpid()))

    def reap(pid):
        # Bounded: the test fails on "status=none" rather than hangs.
        for _ in range(1000):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return "status=%d" % os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        return "status=none"

    def gen(pid_box):
        yield b"first "
        pid = os.fork()
        if pid == 0:
            note("child-gen")
            yield b"from-the-child "
            note("child-gen-after")
            return
        pid_box.append(pid)
        yield b"parent " + reap(pid).encode()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        note("run " + path + "?" + environ["QUERY_STRING"])
        if path == "/fork":
            time.sleep(float(environ.get("HTTP_X_DELAY", "0")))
            pid = os.fork()
            if pid == 0:
                note("child")
                print("child stdout line", flush=False)
                if environ.get("HTTP_X_EXIT"):
                    os._exit(int(environ["HTTP_X_EXIT"]))
                if environ.get("HTTP_X_READ"):
                    environ["wsgi.input"].read()
                    note("child-read-returned")
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"from-the-child"]
            body = ("parent " + reap(pid)).encode()
            if environ.get("HTTP_X_READ"):
                body += b" read=" + environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/gen":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return gen([])
        time.sleep(0.02)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", "2")])
        return [b"ok"]
""")

CHILD_LINE = r"yimmo: a process the app forked came back from the app"


def runs(tmp_path):
    path = tmp_path / "runs.log"
    return path.read_text().splitlines() if path.exists() else []


def get(addr, target, headers=(), body=None):
    with connect(addr, 20) as s:
        s.sendall(build_request("POST" if body is not None else "GET",
                                target, headers=headers, body=body))
        return read_response(s)


@pytest.fixture
def server(tmp_path):
    (tmp_path / "fork_app.py").write_text(APP)
    # Buffered stdout: the child's print must be flushed on its way out.
    env = subprocess_env(PYTHONUNBUFFERED="")
    with ServerProcess([sys.executable, "-W", "ignore", "-m", "yimmo",
                        "-b", "127.0.0.1:0", "--workers", "1",
                        "fork_app:app"], cwd=tmp_path, env=env) as proc:
        try:
            proc.addr = proc.wait_listening()
            yield proc
            proc.signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            # A child that did not exit (the defect this tests) holds the
            # server's stdout and stderr open: end it, by its pid.
            for line in runs(tmp_path):
                what, pid = line.rsplit(" ", 1)
                if what.startswith("child"):
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass


def test_child_returning_from_the_app_exits_and_runs_nothing_queued(
        server, tmp_path):
    # /fork waits 0.5 s before it forks, and the 6 requests sent meanwhile
    # queue behind it (one worker): the child must not run them.
    results = {}

    def send(name, target, headers=()):
        results[name] = get(server.addr, target, headers)

    fork = threading.Thread(target=send, args=(
        "fork", "/fork", [("X-Delay", "0.5")]))
    fork.start()
    time.sleep(0.2)
    others = [threading.Thread(target=send, args=("w%d" % i, "/w?%d" % i))
              for i in range(6)]
    for t in others:
        t.start()
    for t in [fork] + others:
        t.join(30)
    assert results["fork"].status == 200
    assert results["fork"].body == b"parent status=0"
    for i in range(6):
        assert results["w%d" % i].body == b"ok"
    server.wait_for_line(CHILD_LINE)
    server.wait_for_line("^child stdout line$", stream="stdout")
    lines = runs(tmp_path)
    pids = {line.split()[-1] for line in lines if line.startswith("run ")}
    assert len(pids) == 1, lines          # every run in the server itself
    for i in range(6):
        assert sum(line.startswith("run /w?%d " % i)
                   for line in lines) == 1, lines
    assert sum(line.startswith("child ") for line in lines) == 1, lines
    # The server goes on serving on the same worker.
    assert get(server.addr, "/w?after").body == b"ok"


def test_child_of_a_generator_body_exits_at_its_next_chunk(server,
                                                           tmp_path):
    r = get(server.addr, "/gen")
    assert r.status == 200
    assert r.body == b"first parent status=0"
    server.wait_for_line(CHILD_LINE)
    lines = runs(tmp_path)
    assert sum(line.startswith("child-gen ") for line in lines) == 1
    # It stopped at the chunk it yielded: the generator did not go on.
    assert not any(line.startswith("child-gen-after") for line in lines)
    assert get(server.addr, "/w?after").body == b"ok"


def test_child_reading_the_request_body_exits(server, tmp_path):
    r = get(server.addr, "/fork", [("X-Read", "1")], body=b"x" * 5000)
    assert r.status == 200
    assert r.body == b"parent status=0 read=" + b"x" * 5000
    server.wait_for_line(CHILD_LINE)
    assert not any(line.startswith("child-read-returned")
                   for line in runs(tmp_path))


def test_child_ending_itself_with_os_exit_is_left_alone(server, tmp_path):
    r = get(server.addr, "/fork", [("X-Exit", "7")])
    assert r.body == b"parent status=7"
    assert get(server.addr, "/w?after").body == b"ok"
    assert CHILD_LINE.split(":")[1] not in server.stderr

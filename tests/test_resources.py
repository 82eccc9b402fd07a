"""Resources under pressure: running out of file descriptors neither spins
nor kills the server, and idle keep-alive connections cost little memory."""

import re
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import ServerProcess, skip_under_asan, subprocess_env

APP = textwrap.dedent('''
    import resource, sys, yimmo

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    if len(sys.argv) > 1:
        n = int(sys.argv[1])
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    yimmo.serve(app, bind="127.0.0.1:0", workers=2)
''')


def serve(tmp_path, *args):
    script = tmp_path / "resapp.py"
    script.write_text(APP)
    return ServerProcess([sys.executable, str(script)] + list(args))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def get(addr):
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            part = s.recv(4096)
            if not part:
                return data
            data += part


def stop(proc):
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_out_of_descriptors_pauses_accepting_then_recovers(tmp_path):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 256:
        pytest.skip("needs 256 descriptors for the client side")
    clients = []
    with serve(tmp_path, "64") as proc:
        addr = proc.wait_listening()
        assert get(addr).endswith(b"ok")
        try:
            # More idle connections than the server has descriptors for.
            for _ in range(100):
                clients.append(socket.create_connection(addr, timeout=5))
            time.sleep(0.3)
            before = cpu_seconds(proc.proc.pid)
            time.sleep(1.0)
            spent = cpu_seconds(proc.proc.pid) - before
            assert spent < 0.5, "the server spins while out of descriptors"
        finally:
            for c in clients:
                c.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                if get(addr).endswith(b"ok"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.1)
        stop(proc)


@skip_under_asan
def test_idle_keepalive_connections_cost_little_memory(tmp_path):
    """An idle keep-alive connection keeps no input buffer: 2000 of them
    (each after one request) add well under 2 KB apiece."""
    n = 2000
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n + 200:
        pytest.skip("needs %d descriptors" % (n + 200))
    clients = []
    with serve(tmp_path) as proc:
        addr = proc.wait_listening()
        assert get(addr).endswith(b"ok")
        before = rss_kb(proc.proc.pid)
        try:
            for _ in range(n):
                c = socket.create_connection(addr, timeout=10)
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                clients.append(c)
            for c in clients:
                data = b""
                while not data.endswith(b"ok"):
                    part = c.recv(4096)
                    assert part, "connection closed"
                    data += part
            after = rss_kb(proc.proc.pid)
        finally:
            for c in clients:
                c.close()
        assert after - before < n * 2, (before, after)
        stop(proc)


def test_too_few_descriptors_to_start_say_so_and_never_abort(tmp_path):
    """A descriptor limit that leaves one or two past the listener: libev
    abort()ed when it could not make its wake-up descriptor, and the
    process died of SIGABRT with a core dump and libev's own line
    (hostile review s22). Each limit from the descriptors open to a few
    more (set once the modules are imported): the server serves, or exits
    1 with one yimmo: error: line naming the limit."""
    (tmp_path / "app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'x']\n")
    script = textwrap.dedent('''
        import os, resource, sys
        import app, yimmo.__main__
        spare = int(sys.argv[1])
        n = len(os.listdir("/proc/self/fd")) - 1 + spare
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        sys.exit(yimmo.__main__.main(
            ["-w", "2", "-b", "127.0.0.1:0", "app:app"]))
    ''')
    outcomes = {}
    for spare in range(8):
        proc = ServerProcess([sys.executable, "-c", script, str(spare)],
                             cwd=str(tmp_path))
        with proc:
            deadline = time.monotonic() + 15
            while proc.proc.poll() is None and "Listening at" not in \
                    proc.stderr:
                assert time.monotonic() < deadline, proc._describe()
                time.sleep(0.01)
            if proc.proc.poll() is None:
                stop(proc)
                outcomes[spare] = "served"
                break
            status = proc.wait(15)
            errors = [line for line in proc.stderr.splitlines()
                      if line.startswith("yimmo: error:")]
            assert status == 1 and len(errors) == 1, (spare,
                                                      proc._describe())
            assert "Traceback" not in proc.stderr, (spare, proc.stderr)
            outcomes[spare] = errors[0]
    assert "served" in outcomes.values(), outcomes
    # Each says which limit to raise, also where the signal set-up's
    # socket pair was the descriptor too many (a bare "Too many open
    # files" before).
    assert all("raise the limit (ulimit -n)" in line
               for line in outcomes.values() if line != "served"), outcomes
    # One limit fails at the event loop, and says so.
    assert any("for the server's event loop: raise the limit (ulimit -n)"
               in line for line in outcomes.values()), outcomes


def test_out_of_descriptors_the_api_says_which_limit(tmp_path):
    """Server() and serve_forever() out of descriptors raised a bare
    "Too many open files" to a program using the API (the socket, the
    signal set-up's socket pair; hostile review s23): each OSError names
    the limit, or the server serves."""
    script = textwrap.dedent('''
        import os, resource, signal, sys
        import yimmo
        app = lambda e, s: (s("200 OK", []), [b"x"])[1]
        spare = int(sys.argv[1])
        bind = sys.argv[2]
        n = len(os.listdir("/proc/self/fd")) - 1 + spare
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        # No thread of its own: one that exits out of descriptors aborts
        # (glibc loads libgcc_s for it).
        signal.signal(signal.SIGALRM,
                      lambda *a: os.kill(os.getpid(), signal.SIGTERM))
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        try:
            yimmo.Server(app, bind=bind, workers=1,
                         log_level="warning").serve_forever()
            print("served")
        except OSError as exc:
            print("OSError:", exc)
        signal.setitimer(signal.ITIMER_REAL, 0)
    ''')
    outcomes = []
    for bind in ("127.0.0.1:0", "unix:" + str(tmp_path / "s.sock")):
        for spare in range(-1, 6):
            proc = subprocess.run(
                [sys.executable, "-c", script, str(spare), bind],
                cwd=str(tmp_path), env=subprocess_env(),
                capture_output=True, text=True, timeout=30)
            assert proc.returncode == 0, (spare, bind, proc.stderr)
            outcomes.append(proc.stdout.strip())
    assert "served" in outcomes, outcomes
    for line in outcomes:
        assert line == "served" or ("OSError:" in line and
                                    "(ulimit -n)" in line), outcomes

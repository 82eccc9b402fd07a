"""Running out of file descriptors: the server neither spins nor dies; it
serves again once descriptors are free."""

import re
import resource
import socket
import subprocess
import sys
import textwrap
import time

import pytest

APP = textwrap.dedent('''
    import resource, yimmo

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    yimmo.serve(app, bind="127.0.0.1:0", workers=2)
''')


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            part = s.recv(4096)
            if not part:
                return data
            data += part


def test_out_of_descriptors_pauses_accepting_then_recovers(tmp_path):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 256:
        pytest.skip("needs 256 descriptors for the client side")
    script = tmp_path / "fdapp.py"
    script.write_text(APP)
    proc = subprocess.Popen([sys.executable, str(script)],
                            stderr=subprocess.PIPE, text=True)
    clients = []
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"Listening at http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "server did not start"
        assert get(port).endswith(b"ok")
        # More idle connections than the server has descriptors for.
        for _ in range(100):
            clients.append(socket.create_connection(("127.0.0.1", port),
                                                    timeout=5))
        time.sleep(0.3)
        before = cpu_seconds(proc.pid)
        time.sleep(1.0)
        spent = cpu_seconds(proc.pid) - before
        assert spent < 0.5, "the server spins while out of descriptors"
        for c in clients:
            c.close()
        clients = []
        deadline = time.monotonic() + 10
        while True:
            try:
                if get(port).endswith(b"ok"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.1)
        assert proc.poll() is None
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


IDLE_APP = textwrap.dedent('''
    import yimmo

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    yimmo.serve(app, bind="127.0.0.1:0", workers=2)
''')


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


@pytest.mark.skipif("libasan" in __import__("os").environ.get("LD_PRELOAD",
                                                                 ""),
                    reason="RSS is meaningless under ASan's quarantine")
def test_idle_keepalive_connections_cost_little_memory(tmp_path):
    """An idle keep-alive connection keeps no input buffer: 2000 of them
    (each after one request) add well under 2 KB apiece."""
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        pytest.skip("needs %d descriptors" % (n + 200))
    script = tmp_path / "idleapp.py"
    script.write_text(IDLE_APP)
    proc = subprocess.Popen([sys.executable, str(script)],
                            stderr=subprocess.PIPE, text=True)
    clients = []
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"Listening at http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "server did not start"
        assert get(port).endswith(b"ok")
        before = rss_kb(proc.pid)
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(c)
        for c in clients:
            data = b""
            while not data.endswith(b"ok"):
                part = c.recv(4096)
                assert part, "connection closed"
                data += part
        after = rss_kb(proc.pid)
        assert after - before < n * 2, (before, after)
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

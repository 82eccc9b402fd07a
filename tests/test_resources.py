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

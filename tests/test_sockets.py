"""Listening sockets from elsewhere and unix socket files: --bind fd://N,
systemd socket activation (LISTEN_FDS/LISTEN_PID), --reuse-port, and
unix:PATH (stale file replaced, live one refused, --unix-socket-mode, the
file removed on exit). Real `python -m yimmo` processes; bounded waits.
"""

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from helpers import ACTIVATE, UNDER_ASAN, ServerProcess, connect, get, \
    read_response, subprocess_env

from test_supervisor import APP, count_lines, wait_port, wait_ready, \
    write_app


def listening_socket(family=socket.AF_INET, path=None):
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET:
        sock.bind(("127.0.0.1", 0))
    else:
        sock.bind(path)
    sock.listen(16)
    return sock


def serve_inherited(tmp_path, sock, args, activate=False):
    write_app(tmp_path)
    fd = sock.fileno()
    if activate:
        cmd = [sys.executable, "-c", ACTIVATE, "-m", "yimmo"] + args + \
            ["supapp:app"]
        env = subprocess_env(TEST_FD=str(fd))
    else:
        cmd = [sys.executable, "-m", "yimmo", "--bind", "fd://%d" % fd] + \
            args + ["supapp:app"]
        env = subprocess_env()
    return ServerProcess(cmd, cwd=str(tmp_path), env=env, pass_fds=[fd])


@pytest.mark.parametrize("processes", [1, 2])
def test_bind_fd_serves_an_inherited_socket(tmp_path, processes):
    sock = listening_socket()
    port = sock.getsockname()[1]
    with serve_inherited(tmp_path, sock, ["--processes", str(processes)]) \
            as proc:
        sock.close()  # the server's copy is what listens now
        if processes == 1:
            proc.wait_listening()
        else:
            wait_port(proc)
            wait_ready(proc, 2)
        resp = get(("127.0.0.1", port))
        assert resp.status == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.parametrize("processes", [1, 2])
def test_systemd_socket_activation(tmp_path, processes):
    sock = listening_socket()
    port = sock.getsockname()[1]
    with serve_inherited(tmp_path, sock, ["--processes", str(processes)],
                         activate=True) as proc:
        sock.close()
        proc.wait_for_line("Using 1 socket\\(s\\) from systemd socket "
                           "activation")
        if processes == 1:
            proc.wait_listening()
        else:
            wait_ready(proc, 2)
        resp = get(("127.0.0.1", port))
        assert resp.status == 200
        # The variables are gone before the app runs: its own children
        # must not take the sockets for theirs.
        assert get(("127.0.0.1", port), "/env").body == b"[]"
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_activation_for_another_pid_is_ignored(tmp_path):
    write_app(tmp_path)
    env = subprocess_env(LISTEN_PID="1", LISTEN_FDS="1")
    with ServerProcess([sys.executable, "-m", "yimmo", "--bind",
                        "127.0.0.1:0", "supapp:app"], cwd=str(tmp_path),
                       env=env) as proc:
        host, port = proc.wait_listening()
        assert get((host, port), "/env").body == b"[]"
        assert "systemd" not in proc.stderr
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_bind_fd_that_is_not_a_listening_socket_is_one_error_line(tmp_path):
    write_app(tmp_path)
    r, w = os.pipe()
    try:
        os.set_inheritable(r, True)
        res = subprocess.run(
            [sys.executable, "-m", "yimmo", "--bind", "fd://%d" % r,
             "supapp:app"], cwd=str(tmp_path), env=subprocess_env(),
            capture_output=True, text=True, timeout=30, close_fds=False)
    finally:
        os.close(r)
        os.close(w)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("yimmo: error: ")
    assert "fd://%d" % r in lines[-1]
    assert sum(l.startswith("yimmo: error") for l in lines) == 1


@pytest.mark.parametrize("processes", [1, 2])
def test_unix_socket_mode_stale_file_and_removal(tmp_path, processes):
    write_app(tmp_path)
    path = tmp_path / "s.sock"
    # A stale file: bound, then the "server" died without removing it.
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with ServerProcess([sys.executable, "-m", "yimmo", "--processes",
                        str(processes), "--bind", "unix:%s" % path,
                        "--unix-socket-mode", "660", "supapp:app"],
                       cwd=str(tmp_path)) as proc:
        proc.wait_for_line("Removing stale socket file")
        if processes == 1:
            proc.wait_for_line("Listening at unix:")
        else:
            wait_ready(proc, 2)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert get(str(path)).status == 200
        # A second server on the live socket: one clear line, exit 1.
        res = subprocess.run(
            [sys.executable, "-m", "yimmo", "--bind", "unix:%s" % path,
             "supapp:app"], cwd=str(tmp_path), env=subprocess_env(),
            capture_output=True, text=True, timeout=30)
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1] == (
            "yimmo: error: cannot bind unix:%s: a server is listening on "
            "it already" % path)
        assert get(str(path)).status == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not path.exists()


def test_unix_socket_survives_a_reload(tmp_path):
    """Under a supervisor the file is the supervisor's: a reload (old
    processes exit) leaves it in place."""
    write_app(tmp_path)
    path = tmp_path / "r.sock"
    with ServerProcess([sys.executable, "-m", "yimmo", "--processes", "2",
                        "--bind", "unix:%s" % path, "supapp:app"],
                       cwd=str(tmp_path)) as proc:
        wait_ready(proc, 2)
        proc.signal(signal.SIGHUP)
        wait_ready(proc, 4)
        deadline = time.monotonic() + 10
        while count_lines(proc, r"exited with status 0") < 2:
            assert time.monotonic() < deadline, proc._describe()
            time.sleep(0.02)
        assert path.exists()
        assert get(str(path)).status == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not path.exists()


def test_reuse_port_each_process_has_its_own_socket(tmp_path):
    write_app(tmp_path)
    with ServerProcess([sys.executable, "-m", "yimmo", "--processes", "2",
                        "--reuse-port", "--bind", "127.0.0.1:0",
                        "supapp:app"], cwd=str(tmp_path)) as proc:
        port = wait_port(proc)
        wait_ready(proc, 2)
        pids = set()
        for _ in range(60):
            resp = get(("127.0.0.1", port))
            assert resp.status == 200
            pids.add(resp.body.split()[0])
        # The kernel hashes connections across both processes' sockets.
        assert len(pids) == 2
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.parametrize("processes", [1, 2])
def test_bind_the_same_fd_twice_is_a_usage_error(tmp_path, processes):
    write_app(tmp_path)
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        fd = sock.fileno()
        os.set_inheritable(fd, True)
        res = subprocess.run(
            [sys.executable, "-m", "yimmo", "--processes", str(processes),
             "--bind", "fd://%d" % fd, "--bind", "fd://%d" % fd,
             "supapp:app"], cwd=str(tmp_path), env=subprocess_env(),
            capture_output=True, text=True, timeout=30, close_fds=False)
    finally:
        sock.close()
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == ("yimmo: error: option 'bind': fd://%d is given "
                         "more than once" % fd)
    assert sum(l.startswith("yimmo: error") for l in lines) == 1


@pytest.mark.parametrize("pid,fds,word", [
    ("self", "two", "LISTEN_FDS='two'"),
    ("self", "-1", "LISTEN_FDS='-1'"),
    ("nobody", "1", "LISTEN_PID='nobody'"),
])
def test_socket_activation_garbage_is_one_error_line(tmp_path, pid, fds,
                                                      word):
    # sd_listen_fds(3) refuses these; binding --bind instead would serve
    # on an address the unit never meant.
    write_app(tmp_path)
    script = ("import os, sys, runpy\n"
              "os.environ['LISTEN_PID'] = %r if %r != 'self' "
              "else str(os.getpid())\n"
              "os.environ['LISTEN_FDS'] = %r\n"
              "sys.argv = ['yimmo', '--bind', '127.0.0.1:0', 'supapp:app']\n"
              "runpy.run_module('yimmo', run_name='__main__')\n"
              % (pid, pid, fds))
    res = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path),
                         env=subprocess_env(), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("yimmo: error: ")
    assert word in lines[-1]
    assert sum(l.startswith("yimmo: error") for l in lines) == 1


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_unix_path_that_is_not_a_socket_is_a_clear_error(tmp_path, kind):
    write_app(tmp_path)
    path = tmp_path / "s.sock"
    if kind == "file":
        path.write_text("keep me")
    else:
        path.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "yimmo", "--bind", "unix:%s" % path,
         "supapp:app"], cwd=str(tmp_path), env=subprocess_env(),
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("yimmo: error: ")
    assert "exists and is not a socket" in lines[-1]
    assert sum(l.startswith("yimmo: error") for l in lines) == 1
    if kind == "file":
        assert path.read_text() == "keep me"


@pytest.mark.parametrize("processes", [1, 2])
def test_unix_path_too_long_is_a_clear_error(tmp_path, processes):
    # bind() says only "AF_UNIX path too long", an OSError without a
    # strerror: the line ended in ": None" (hostile review).
    write_app(tmp_path)
    path = tmp_path / ("s" * 120 + ".sock")
    res = subprocess.run(
        [sys.executable, "-m", "yimmo", "--processes", str(processes),
         "--bind", "unix:%s" % path, "supapp:app"], cwd=str(tmp_path),
        env=subprocess_env(), capture_output=True, text=True, timeout=30)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert sum(l.startswith("yimmo: error") for l in lines) == 1, lines
    assert lines[-1].startswith("yimmo: error: cannot bind unix:"), lines
    assert lines[-1].endswith(
        "the path is %d bytes long; a unix socket's can be at most 107"
        % len(os.fsencode(str(path)))), lines
    assert "None" not in lines[-1]


LAUNCHER = """
import os, signal, sys, yimmo
app = lambda e, s: (s("200 OK", [("Content-Length", "2")]), [b"ok"])[1]
server = yimmo.Server(app, bind="unix:" + sys.argv[1], error_log=os.devnull)
pid = os.fork()
if pid == 0:
    signal.alarm(30)            # bounded whatever happens
    try:
        server.serve_forever()
    finally:
        os._exit(0)
open(sys.argv[2], "w").write(str(pid))
"""


def test_a_launcher_that_forked_its_server_away_leaves_the_socket_file(
        tmp_path):
    """README: a server created and not started may be forked and served in
    the child. The launcher's exit removed the socket file the child
    listened at: nobody could reach it (operations review s20)."""

    path = str(tmp_path / "app.sock")
    pidfile = tmp_path / "child.pid"
    # (No pipes: the serving child would hold them open.)
    subprocess.run([sys.executable, "-c", LAUNCHER, path, str(pidfile)],
                   env=subprocess_env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=30, check=True)
    child = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as c:
                    c.settimeout(5)
                    c.connect(path)
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    assert c.recv(15).startswith(b"HTTP/1.1 200")
                break
            except (ConnectionRefusedError, FileNotFoundError):
                # (FileNotFoundError only while the child starts: the file
                # exists from the Server() on, so this is the defect.)
                assert os.path.exists(path), "the socket file is gone"
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        os.kill(child, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path), "the serving child's stop removes it"


@pytest.mark.skipif(UNDER_ASAN, reason="ASan's allocator is not fork-safe "
                    "in a multi-threaded process")
def test_a_helper_child_of_a_serving_process_leaves_its_socket_file(
        tmp_path):
    """A child forked from a serving process that ends with sys.exit() ran
    the server's finalizer, which removed the parent's socket file."""

    code = """
import os, sys, yimmo
path = sys.argv[1]
app = lambda e, s: (s("200 OK", []), [b"ok"])[1]
server = yimmo.Server(app, bind="unix:" + path, error_log=os.devnull).start()
pid = os.fork()
if pid == 0:
    sys.exit(0)
os.waitpid(pid, 0)
print("after-child", os.path.exists(path))
server.stop()
print("after-stop", os.path.exists(path))
"""
    path = str(tmp_path / "s.sock")
    out = subprocess.run([sys.executable, "-c", code, path],
                         env=subprocess_env(), capture_output=True,
                         text=True, timeout=30).stdout
    assert "after-child True" in out and "after-stop False" in out, out


TWO_CHILDREN_UNIX = r"""
import os, signal, socket, sys, time, yimmo
path = sys.argv[1]
app = lambda e, s: (s("200 OK", [("Content-Length", "2")]), [b"ok"])[1]
server = yimmo.Server(app, bind="unix:" + path, error_log=os.devnull,
                      graceful_timeout=1)
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)
        try:
            server.serve_forever()
        finally:
            os._exit(0)
    kids.append(pid)

def ask():
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(5)
        c.connect(path)
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return c.recv(15)

time.sleep(0.5)
os.kill(kids[0], signal.SIGTERM)
os.waitpid(kids[0], 0)
print("after-first", os.path.exists(path), ask())
os.kill(kids[1], signal.SIGTERM)
os.waitpid(kids[1], 0)
print("after-second", os.path.exists(path))     # the launcher listens too
server.stop()
print("after-launcher", os.path.exists(path))
"""


def test_two_children_serving_one_unix_server_keep_the_file_while_one_serves(
        tmp_path):
    """The first child to stop removed the socket file the other still
    served (review s20): a file is removed only once nobody listens."""
    path = str(tmp_path / "s.sock")
    out = subprocess.run([sys.executable, "-c", TWO_CHILDREN_UNIX, path],
                         env=subprocess_env(), capture_output=True,
                         text=True, timeout=60).stdout
    assert "after-first True b'HTTP/1.1 200 OK'" in out, out
    assert "after-launcher False" in out, out


def test_an_unstarted_server_of_a_process_that_forked_removes_its_file(
        tmp_path):
    """Once the creator has forked (multiprocessing, a helper), a child may
    be serving its unstarted server; stopped, with nobody listening, the
    file still goes (review s20)."""
    code = """
import os, sys, yimmo
path = sys.argv[1]
server = yimmo.Server(lambda e, s: [], bind="unix:" + path,
                      error_log=os.devnull)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
server.stop()
print("after-stop", os.path.exists(path))
"""
    path = str(tmp_path / "u.sock")
    out = subprocess.run([sys.executable, "-c", code, path],
                         env=subprocess_env(), capture_output=True,
                         text=True, timeout=30).stdout
    assert "after-stop False" in out, out


@pytest.mark.parametrize("how", ["start", "serve_forever on a thread"])
def test_a_server_running_at_exit_removes_its_socket_file(tmp_path, how):
    """atexit ran the socket file's finalizer before the hook that stops
    running servers: the file was looked at while the server still
    listened, and left (review s20)."""
    code = """
import os, sys, threading, time, yimmo
path = sys.argv[1]
server = yimmo.Server(lambda e, s: [], bind="unix:" + path,
                      error_log=os.devnull)
if sys.argv[2] == "start":
    server.start()
else:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    time.sleep(0.3)
print("serving", os.path.exists(path))
"""
    path = str(tmp_path / "x.sock")
    out = subprocess.run([sys.executable, "-c", code, path, how],
                         env=subprocess_env(), capture_output=True,
                         text=True, timeout=30).stdout
    assert "serving True" in out, out
    assert not os.path.exists(path)

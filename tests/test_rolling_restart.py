"""Beyond one machine: a rolling restart behind a real load balancer.

Two yimmo "hosts", each a network namespace this test creates (joined to
the root namespace by a veth pair), each running `--processes 2`, sit
behind a real nginx upstream in the root namespace. Under a steady loop of
requests through nginx (keep-alive clients and a new connection per
request), host A is drained with SIGTERM and started again, then host B.
No request may fail: a draining host refuses new connections at once (its
listener closes when the stop begins), nginx moves on to the other host,
and requests already on their way are answered. The requests are POSTs,
which nginx never retries once it has sent them upstream: a request a
draining host drops (an in-flight one, or one that arrives on a keep-alive
upstream connection as the host closes it) reaches the client as a 502 and
fails the test. (With SIGKILL instead of SIGTERM it fails, as it should.)

This is the deployment README describes: a balancer in front, hosts x
processes x threads. Needs root (network namespaces) and Debian's nginx;
skipped with the reason otherwise. CI runs as root and installs nginx.
"""

import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import (APPS_DIR, NetnsHost, ServerProcess, netns_usable,
                     subprocess_env)

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
PROCESSES = 2
PORT = 8000
GRACE = 5


class Host(NetnsHost):
    """A yimmo "host": a NetnsHost that runs `--processes 2` of hostid:app
    on PORT of its address."""

    def __init__(self, index, tag):
        super().__init__(index, tag)
        self.tag = tag
        self.server = None
        self.generation = 0

    def destroy(self):
        self.stop(kill=True)
        super().destroy()

    def start(self):
        self.generation += 1
        env = subprocess_env(YIMMO_TEST_HOST=self.tag,
                             YIMMO_TEST_GEN=str(self.generation))
        self.server = ServerProcess(
            ["ip", "netns", "exec", self.name, sys.executable, "-m", "yimmo",
             "--bind", "%s:%d" % (self.address, PORT),
             "--processes", str(PROCESSES), "--workers", "4",
             "--graceful-timeout", str(GRACE), "hostid:app"],
            cwd=APPS_DIR, env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((self.address, PORT),
                                         timeout=1).close()
                return
            except OSError:
                if self.server.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    raise AssertionError("host %s did not start: %s"
                                         % (self.tag,
                                            self.server._describe()))
                time.sleep(0.05)

    def stop(self, kill=False):
        if self.server is None:
            return None
        server, self.server = self.server, None
        if kill:
            server.kill()
            return None
        server.signal(15)
        code = server.wait(GRACE + 10)
        server.kill()
        return code, server


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream yimmo {{
        # max_fails=0: a host that refuses (it is draining) is skipped for
        # this request only, and is used again as soon as it answers.
        server {a}:{port} max_fails=0;
        server {b}:{port} max_fails=0;
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://yimmo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Steady requests through nginx until stopped: two clients on
    keep-alive connections, one with a new connection per request. Counts
    answers per (host, generation) and every failure."""

    def __init__(self, port):
        self.port = port
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.answers = {}
        self.failures = []
        self.threads = [threading.Thread(target=self._run, args=(keep,),
                                         daemon=True)
                        for keep in (True, True, False)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, keep_alive):
        conn = None
        n = 0
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=10)
                payload = b"x" * (1000 + n % 1000)
                n += 1
                conn.request("POST", "/", body=payload,
                             headers={"X-Sleep": "0.005"})
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    raise AssertionError("status %d: %r" % (resp.status,
                                                            body))
                host, gen, _, length = body.split()
                assert int(length) == len(payload), body
                with self.lock:
                    key = (host, int(gen))
                    self.answers[key] = self.answers.get(key, 0) + 1
                if not keep_alive:
                    conn.close()
                    conn = None
            except Exception as exc:  # every failure counts
                with self.lock:
                    self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def count(self, host, generation):
        with self.lock:
            return self.answers.get((host, generation), 0)

    def wait_for(self, host, generation, n=20, timeout=15):
        deadline = time.monotonic() + timeout
        while self.count(host, generation) < n:
            assert time.monotonic() < deadline, (
                "host %s generation %d got no traffic: %r"
                % (host, generation, self.answers))
            time.sleep(0.05)

    def finish(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(15)


@pytest.fixture
def hosts():
    reason = netns_usable()
    if reason:
        pytest.skip(reason)
    made = [Host(1, "a"), Host(2, "b")]
    try:
        for host in made:
            host.create()
        yield made
    finally:
        for host in made:
            host.destroy()


@pytest.fixture
def nginx(tmp_path, hosts):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    port = _free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp_path, a=hosts[0].address,
                                      b=hosts[1].address, port=PORT,
                                      listen=port))
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port),
                                         timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    "nginx did not start: %s" % proc.stderr.read().decode()
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


def test_rolling_restart_behind_nginx_loses_no_request(hosts, nginx):
    a, b = hosts
    a.start()
    b.start()
    load = Load(nginx).start()
    try:
        load.wait_for("a", 1)
        load.wait_for("b", 1)
        for host in (a, b):
            code, server = host.stop()
            assert code == 0, server._describe()
            # While it was down the other host carried the load.
            other = b if host is a else a
            before = load.count(other.tag, other.generation)
            load.wait_for(other.tag, other.generation, n=before + 20)
            host.start()
            load.wait_for(host.tag, host.generation)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:10]
    # Both hosts served in both generations.
    for host in (a, b):
        for gen in (1, 2):
            assert load.count(host.tag, gen) > 0, load.answers

"""A real nginx (Debian's package) in front of yimmo: nginx is started by
the test as a foreground process with a configuration it writes into
tmp_path, listening on 127.0.0.1, and proxies to yimmo on a unix socket
with upstream keep-alive. Requests pass, nginx's X-Forwarded-For/-Proto
are honoured, and the same fields sent straight to yimmo by an untrusted
peer are not. With nginx's stream module, `proxy_protocol on` in front of
yimmo --proxy-protocol gives yimmo the client's address and port.

The configuration is the one README.rst's "Behind a proxy" section shows.
Skipped (with the reason) where the nginx binary is absent; CI installs
it (nginx, libnginx-mod-stream)."""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from helpers import connect, read_response

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
     if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx "
    "libnginx-mod-stream)")

KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTPS",
        "HTTP_HOST", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO",
        "REQUEST_METHOD", "CONTENT_LENGTH")


def app(environ, start_response):
    info = {k: environ.get(k) for k in KEYS}
    info["body"] = len(environ["wsgi.input"].read())
    body = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


# Near-verbatim the README's snippet ("Behind a proxy"); {placeholders}
# are filled in per test.
HTTP_CONF = """
    upstream yimmo {{
        server unix:{sock};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        {ssl_listen}
        location / {{
            proxy_pass http://yimmo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
"""

STREAM_CONF = """
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass unix:{sock};
        proxy_protocol on;
    }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_build():
    out = subprocess.run([NGINX, "-V"], capture_output=True, text=True,
                         timeout=10)
    return out.stderr + out.stdout


def stream_module_line():
    """The load_module line the stream module needs ("" when it is built
    in), or None when this nginx has no stream module."""
    build = nginx_build()
    if re.search(r"--with-stream(\s|$)", build):
        return ""
    if "--with-stream=dynamic" in build:
        for d in ("/usr/lib/nginx/modules", "/usr/share/nginx/modules",
                  "/usr/lib64/nginx/modules"):
            path = os.path.join(d, "ngx_stream_module.so")
            if os.path.exists(path):
                return "load_module %s;" % path
    return None


class Nginx:
    """nginx in the foreground (daemon off, master_process off: one
    process, stopped by its PID), everything it writes under tmp_path."""

    def __init__(self, tmp_path, http="", stream="", preamble=""):
        self.dir = tmp_path
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp_path / d).mkdir(exist_ok=True)
        t = str(tmp_path)
        conf = """
{preamble}
daemon off;
master_process off;
worker_processes 1;
pid {t}/nginx.pid;
error_log {t}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {t}/access.log;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
{http}
}}
{stream}
""".format(preamble=preamble, t=t, http=http, stream=stream)
        self.conf = tmp_path / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen(
            [NGINX, "-p", t, "-c", str(self.conf), "-e",
             str(tmp_path / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)

    def wait_listening(self, port, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited (%s): %s %s" % (
                    self.proc.returncode, self.proc.stderr.read().decode(),
                    self.error_log()))
            try:
                with socket.create_connection(("127.0.0.1", port), 0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx is not listening on %d: %s"
                             % (port, self.error_log()))

    def error_log(self):
        try:
            return (self.dir / "error.log").read_text()[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stderr.close()


@pytest.fixture
def nginx_factory(tmp_path):
    started = []

    def start(port, **conf):
        server = Nginx(tmp_path, **conf)
        started.append(server)
        server.wait_listening(port)
        return server

    yield start
    for server in started:
        server.stop()


def http_get(port, headers=(), source=None, tls=False, body=None,
             method="GET"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    with sock:
        head = "%s / HTTP/1.1\r\nHost: shop.test\r\n" % method
        head += "".join("%s: %s\r\n" % h for h in headers)
        if body is not None:
            head += "Content-Length: %d\r\n" % len(body)
        head += "Connection: close\r\n\r\n"
        sock.sendall(head.encode() + (body or b""))
        resp = read_response(sock)
    assert resp.status == 200, resp
    return json.loads(resp.body)


def upstream_connections(path):
    """Connected unix sockets bound to path (the server's ends of the
    connections nginx holds open to yimmo), from /proc/net/unix."""
    count = 0
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; St 03:
            # connected.
            if len(fields) >= 8 and fields[7] == path and fields[5] == "03":
                count += 1
    return count


def make_cert(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1",
         "-subj", "/CN=localhost"], capture_output=True, timeout=60)
    if proc.returncode != 0:
        return None
    return key, crt


def test_nginx_in_front_over_unix_socket(yimmo_server, nginx_factory,
                                          tmp_path):
    sock_path = str(tmp_path / "yimmo.sock")
    # Trust nothing that can reach the TCP listener: only the unix socket
    # (nginx) is a trusted peer.
    server = yimmo_server(app, bind=["unix:" + sock_path, "127.0.0.1:0"],
                          forwarded_allow_ips="192.0.2.0/24", workers=4)
    direct = server.addresses[1]
    port, tls_port = free_port(), free_port()
    cert = make_cert(tmp_path)
    ssl_listen = ""
    if cert is not None:
        ssl_listen = ("listen 127.0.0.1:%d ssl; ssl_certificate %s; "
                      "ssl_certificate_key %s;" % (tls_port, cert[1],
                                                   cert[0]))
    nginx_factory(port, http=HTTP_CONF.format(
        sock=sock_path, port=port, ssl_listen=ssl_listen))

    # Through nginx: the client's address from X-Forwarded-For (without
    # it, a unix socket peer's REMOTE_ADDR would be empty).
    env = http_get(port)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HOST"] == "shop.test"
    # A client's own X-Forwarded-For is extended by nginx; the rightmost
    # address not itself trusted (the one nginx saw) wins over the
    # client's claim.
    env = http_get(port, [("X-Forwarded-For", "203.0.113.66")])
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.66, 127.0.0.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    # Fields nginx passes on from the client as they are name nothing:
    # they named any address, scheme and host (wire review s18).
    env = http_get(port, [("Forwarded",
                           "for=6.6.6.6;proto=https;host=admin.internal"),
                          ("X-Forwarded-Host", "admin.internal")])
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"],
            env["HTTP_HOST"]) == ("127.0.0.1", "http", "shop.test")
    try:
        env = http_get(port, source="127.0.0.2")
    except OSError:
        pass
    else:
        assert env["REMOTE_ADDR"] == "127.0.0.2"

    if cert is not None:
        env = http_get(tls_port, tls=True)
        assert env["wsgi.url_scheme"] == "https"
        assert env["HTTPS"] == "on"
        assert env["REMOTE_ADDR"] == "127.0.0.1"

    # Many requests and a body pass, over kept-alive upstream connections.
    for i in range(30):
        env = http_get(port, method="POST", body=b"x" * (i * 1000))
        assert env["body"] == i * 1000
    open_conns = upstream_connections(os.path.abspath(sock_path))
    assert 1 <= open_conns <= 8, open_conns

    # Straight to yimmo over TCP: not a trusted peer, so the same fields
    # are plain headers.
    with connect(direct) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: shop.test\r\n"
                     b"X-Forwarded-For: 203.0.113.66\r\n"
                     b"X-Forwarded-Proto: https\r\n\r\n")
        resp = read_response(sock)
    env = json.loads(resp.body)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTPS"] is None
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.66"


def test_nginx_stream_proxy_protocol(yimmo_server, nginx_factory, tmp_path):
    load = stream_module_line()
    if load is None:
        pytest.skip("this nginx has no stream module (apt-get install "
                    "libnginx-mod-stream)")
    sock_path = str(tmp_path / "pp.sock")
    yimmo_server(app, bind="unix:" + sock_path, proxy_protocol=True,
                 workers=2)
    port = free_port()
    nginx_factory(port, preamble=load,
                  stream=STREAM_CONF.format(sock=sock_path, port=port))
    for source in (None, "127.0.0.2"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            if source:
                sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            if source:
                continue        # no 127.0.0.2 here
            raise AssertionError(exc)
        with sock:
            client_addr, client_port = sock.getsockname()
            for _ in range(3):          # keep-alive: one header, 3 requests
                sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                env = json.loads(read_response(sock).body)
                assert env["REMOTE_ADDR"] == client_addr
                assert env["REMOTE_PORT"] == str(client_port)

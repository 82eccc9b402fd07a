"""A million-request soak of yimmo (run on demand, not in CI).

Serves a mixed app in a subprocess and drives it from several client
processes with a mix of traffic: keep-alive runs, pipelined batches,
uploads and downloads up to 10 MB (Content-Length and chunked, both ways),
clients that vanish in the middle of a request or of a response (FIN or
reset), and slow readers. Every body is checked. After a warm-up the
server's RSS is sampled; at the end the RSS growth and the server's open
file descriptors (against the baseline before any traffic) are reported,
and the run fails if a body was wrong, RSS grew by more than --max-growth
MB after the warm-up, or descriptors were left open.

    python bench/soak.py                      # 10^6 requests
    python bench/soak.py --requests 100000 --clients 2

Only 127.0.0.1 is used; the run is bounded by --requests and --deadline.
"""

import argparse
import hashlib
import multiprocessing
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP = textwrap.dedent('''
    import hashlib, logging, sys
    sys.path.insert(0, %(root)r)
    import yimmo

    def pattern(n, seed):
        """n deterministic bytes; the client computes the same."""
        block = hashlib.sha256(b"%%d" %% seed).digest() * 2048   # 64 KB
        whole, rest = divmod(n, len(block))
        for _ in range(whole):
            yield block
        if rest:
            yield block[:rest]

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        qs = dict(p.split("=") for p in environ["QUERY_STRING"].split("&")
                  if "=" in p)
        if path == "/hello":
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", "12")])
            return [b"hello, soak!"]
        if path == "/download":
            n, seed = int(qs["n"]), int(qs["seed"])
            headers = [("Content-Type", "application/octet-stream")]
            if qs.get("cl") == "1":
                headers.append(("Content-Length", str(n)))
            start_response("200 OK", headers)
            return pattern(n, seed)
        if path == "/upload":
            inp = environ["wsgi.input"]
            digest = hashlib.sha256()
            total = 0
            while True:
                piece = inp.read(65536)
                if not piece:
                    break
                digest.update(piece)
                total += len(piece)
            body = ("%%d %%s" %% (total, digest.hexdigest())).encode()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/echo":
            # chunked both ways: the body goes back as it arrives
            inp = environ["wsgi.input"]
            start_response("200 OK", [("Content-Type",
                                       "application/octet-stream")])
            def gen():
                while True:
                    piece = inp.read(65536)
                    if not piece:
                        return
                    yield piece
            return gen()
        start_response("404 Not Found", [("Content-Length", "0")])
        return []

    logging.basicConfig(level=logging.WARNING)
    server = yimmo.Server(app, bind="127.0.0.1:0", workers=%(workers)d)
    print(server.address[1], flush=True)
    server.serve_forever()
''')


def pattern_bytes(n, seed):
    block = hashlib.sha256(b"%d" % seed).digest() * 2048
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


class Wrong(Exception):
    pass


class Conn:
    """A raw HTTP/1.1 client connection with a strict response reader."""

    def __init__(self, port, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.buf = bytearray()

    def close(self, rst=False):
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise Wrong("connection closed early")
        self.buf += data

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill()

    def _exact(self, n, slow=False):
        while len(self.buf) < n:
            if slow:
                time.sleep(0.002)
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def response(self, slow=False):
        status = self._line()
        if not status.startswith(b"HTTP/1.1 "):
            raise Wrong("bad status line %r" % status)
        code = int(status[9:12])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = self._exact(int(headers[b"content-length"]), slow)
        elif headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exact(size, slow))
                if self._exact(2) != b"\r\n":
                    raise Wrong("bad chunk end")
            body = b"".join(parts)
        else:
            raise Wrong("no framing in %r" % headers)
        return code, headers, body


def request(method, target, body=None, chunked=False, close=False):
    head = [b"%s %s HTTP/1.1" % (method, target), b"Host: soak"]
    if close:
        head.append(b"Connection: close")
    payload = b""
    if body is not None:
        if chunked:
            head.append(b"Transfer-Encoding: chunked")
            out = bytearray()
            pos = 0
            while pos < len(body):
                n = min(65536 if pos % 3 else 1000, len(body) - pos)
                out += b"%x\r\n" % n + body[pos:pos + n] + b"\r\n"
                pos += n
            payload = bytes(out) + b"0\r\n\r\n"
        else:
            head.append(b"Content-Length: %d" % len(body))
            payload = body
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


def expect(cond, what):
    if not cond:
        raise Wrong(what)


def big_size(rng):
    # Mostly small, now and then up to 10 MB.
    r = rng.random()
    if r < 0.9:
        return rng.randrange(0, 65536)
    if r < 0.99:
        return rng.randrange(65536, 1 << 20)
    return rng.randrange(1 << 20, 10 << 20)


def scenario_keepalive(port, rng):
    c = Conn(port)
    n = rng.randrange(10, 100)
    for _ in range(n):
        c.sock.sendall(request(b"GET", b"/hello"))
        code, _, body = c.response()
        expect(code == 200 and body == b"hello, soak!", "hello body")
    c.close()
    return n


def scenario_pipelined(port, rng):
    c = Conn(port)
    n = rng.randrange(2, 32)
    c.sock.sendall(b"".join(request(b"GET", b"/hello") for _ in range(n)))
    for _ in range(n):
        code, _, body = c.response()
        expect(code == 200 and body == b"hello, soak!", "pipelined body")
    c.close()
    return n


def scenario_upload(port, rng):
    c = Conn(port)
    data = rng.randbytes(big_size(rng))
    c.sock.sendall(request(b"POST", b"/upload", data,
                           chunked=rng.random() < 0.5))
    code, _, body = c.response()
    expect(code == 200 and body == b"%d %s" % (
        len(data), hashlib.sha256(data).hexdigest().encode()),
        "upload digest")
    c.close()
    return 1


def scenario_download(port, rng, slow=False):
    c = Conn(port)
    n = big_size(rng) if not slow else rng.randrange(1 << 18, 1 << 20)
    seed = rng.randrange(1 << 30)
    cl = rng.random() < 0.5
    c.sock.sendall(request(b"GET", b"/download?n=%d&seed=%d&cl=%d"
                           % (n, seed, cl)))
    code, _, body = c.response(slow=slow)
    expect(code == 200 and body == pattern_bytes(n, seed),
           "download body")
    c.close()
    return 1


def scenario_echo(port, rng):
    # Full duplex: the body comes back while it is being sent, so the
    # client must read while it sends (sending all first deadlocks once
    # the body outgrows the socket buffers on both sides).
    c = Conn(port)
    data = rng.randbytes(big_size(rng))
    errors = []

    def send():
        try:
            c.sock.sendall(request(b"POST", b"/echo", data, chunked=True))
        except OSError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        code, _, body = c.response()
    finally:
        sender.join(30)
    expect(not errors, "echo send failed: %r" % errors)
    expect(code == 200 and body == data, "echo body")
    c.close()
    return 1


def scenario_vanish_request(port, rng):
    c = Conn(port)
    data = request(b"POST", b"/upload", rng.randbytes(100000),
                   chunked=rng.random() < 0.5)
    c.sock.sendall(data[:rng.randrange(1, len(data) - 1)])
    c.close(rst=rng.random() < 0.5)
    return 1


def scenario_vanish_response(port, rng):
    c = Conn(port)
    c.sock.sendall(request(b"GET", b"/download?n=%d&seed=1&cl=%d"
                           % (5 << 20, rng.random() < 0.5)))
    c.sock.recv(rng.randrange(1, 100000))
    c.close(rst=rng.random() < 0.5)
    return 1


SCENARIOS = [
    (scenario_keepalive, 40),
    (scenario_pipelined, 40),
    (scenario_upload, 6),
    (scenario_download, 6),
    (scenario_echo, 3),
    (scenario_vanish_request, 2),
    (scenario_vanish_response, 2),
    (lambda port, rng: scenario_download(port, rng, slow=True), 1),
]


def client(port, seed, budget, deadline, counter, errors):
    rng = random.Random(seed)
    funcs = [f for f, _ in SCENARIOS]
    weights = [w for _, w in SCENARIOS]
    done = 0
    while done < budget and time.monotonic() < deadline:
        f = rng.choices(funcs, weights)[0]
        try:
            n = f(port, rng)
        except Wrong as exc:
            with errors.get_lock():
                errors.value += 1
            print("WRONG: %s in %s" % (exc, f.__name__), file=sys.stderr)
            n = 1
        except OSError as exc:
            with errors.get_lock():
                errors.value += 1
            print("ERROR: %r in %s" % (exc, f.__name__), file=sys.stderr)
            n = 1
        done += n
        with counter.get_lock():
            counter.value += n


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=0.1,
                    help="share of the requests before RSS is sampled")
    ap.add_argument("--max-growth", type=float, default=5.0,
                    help="MB of RSS growth allowed after the warm-up")
    ap.add_argument("--deadline", type=float, default=3600,
                    help="seconds after which the run stops regardless")
    args = ap.parse_args()

    script = APP % {"root": ROOT, "workers": args.workers}
    # The server's stderr goes to ours (warnings and errors only).
    proc = subprocess.Popen([sys.executable, "-c", script],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        sys.exit("the server did not start")
    port = int(line)
    base_fds = fds(proc.pid)
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    counter = multiprocessing.Value("q", 0)
    errors = multiprocessing.Value("q", 0)
    per = args.requests // args.clients
    procs = [multiprocessing.Process(
        target=client, args=(port, 1000 + i, per, deadline, counter, errors))
        for i in range(args.clients)]
    for p in procs:
        p.start()
    warm = args.requests * args.warmup
    rss_warm = None
    rss_max = 0
    while any(p.is_alive() for p in procs):
        time.sleep(1)
        rss = rss_kb(proc.pid)
        rss_max = max(rss_max, rss)
        if rss_warm is None and counter.value >= warm:
            rss_warm = rss
            print("warm-up done at %d requests: RSS %.1f MB"
                  % (counter.value, rss / 1024), flush=True)
    for p in procs:
        p.join()
    elapsed = time.monotonic() - t0
    time.sleep(2)   # lingering closes and keep-alive timeouts settle
    deadline_fd = time.monotonic() + 10
    while fds(proc.pid) > base_fds and time.monotonic() < deadline_fd:
        time.sleep(0.5)
    rss_end = rss_kb(proc.pid)
    end_fds = fds(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "killed"
    growth = (rss_end - (rss_warm or rss_end)) / 1024
    print("requests: %d in %.0f s (%.0f req/s)"
          % (counter.value, elapsed, counter.value / elapsed))
    print("wrong bodies or errors: %d" % errors.value)
    print("RSS: %.1f MB after warm-up, %.1f MB at the end (%+.1f MB), "
          "peak %.1f MB" % ((rss_warm or 0) / 1024, rss_end / 1024, growth,
                            rss_max / 1024))
    print("open fds: %d before, %d after" % (base_fds, end_fds))
    print("server exit status: %s" % rc)
    ok = (errors.value == 0 and growth <= args.max_growth
          and end_fds <= base_fds and rc == 0
          and counter.value >= args.requests - args.clients)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

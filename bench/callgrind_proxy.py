"""Instructions per request for a hello-world app, counted by callgrind:
the whole server process (loop thread and worker) runs under valgrind
--tool=callgrind, serves N and then (in a second run) 2N requests on one
keep-alive connection, and the difference of the two totals over N is the
cost of one request, startup and shutdown cancelling out.

    python bench/callgrind_proxy.py [--requests N] [--repo DIR]

Cases: plain requests (no forwarding fields); nginx-like X-Forwarded-For
and X-Forwarded-Proto from a trusted peer (applied); the same fields from
an untrusted peer (left as headers); a Forwarded field from a trusted
peer. --repo points at another checkout (built in place) to measure it the
same way, e.g. the commit before proxies were added (its server accepts no
--forwarded-allow-ips: only the cases without it run there). The totals
vary by a few hundred instructions per request from run to run (thread
wake-ups); --toggle ymo_wsgi_environ counts only the environ builder,
where the forwarding fields are applied, and is exact.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    ("plain", [], []),
    ("xff+proto, trusted", [("X-Forwarded-For", "203.0.113.7"),
                            ("X-Forwarded-Proto", "https")], []),
    ("xff+proto, untrusted", [("X-Forwarded-For", "203.0.113.7"),
                              ("X-Forwarded-Proto", "https")],
     ["--forwarded-allow-ips", "10.0.0.0/8"]),
    ("forwarded, trusted", [("Forwarded", "for=203.0.113.7;proto=https")],
     []),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(port, n, headers, deadline=300):
    end = time.monotonic() + deadline
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
    sock.settimeout(60)
    req = ("GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\n"
           "Accept: */*\r\n" + "".join("%s: %s\r\n" % h for h in headers)
           + "\r\n").encode()
    buf = b""
    with sock:
        for _ in range(n):
            sock.sendall(req)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    m = re.search(rb"Content-Length: (\d+)", buf[:head_end])
                    total = head_end + 4 + int(m.group(1))
                    if len(buf) >= total:
                        assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
                        buf = buf[total:]
                        break
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed")
                buf += chunk


def total_ir(repo, n, headers, extra, toggle=None):
    port = free_port()
    out = tempfile.mktemp(prefix="callgrind.", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=repo)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
         *(["--toggle-collect=" + toggle] if toggle else []),
         sys.executable, "-m", "yimmo", "--bind", "127.0.0.1:%d" % port,
         "--workers", "1", "--log-level", "warning", *extra,
         "examples.hello:app"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        drive(port, n, headers)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    m = re.search(rb"Collected : (\d+)", err)
    if os.environ.get("KEEP_CALLGRIND"):
        print("kept", out)
    else:
        os.unlink(out)
    if m is None:
        raise RuntimeError(err.decode(errors="replace")[-2000:])
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repo", default=HERE)
    ap.add_argument("--toggle", default=None,
                    help="count only inside this function (callgrind "
                    "--toggle-collect), e.g. ymo_wsgi_environ")
    ap.add_argument("--cases", default=None,
                    help="comma-separated case numbers (0-based)")
    args = ap.parse_args()
    n = args.requests
    picked = range(len(CASES)) if args.cases is None else \
        [int(c) for c in args.cases.split(",")]
    for i in picked:
        name, headers, extra = CASES[i]
        one = total_ir(args.repo, n, headers, extra, args.toggle)
        two = total_ir(args.repo, 2 * n, headers, extra, args.toggle)
        print("%-22s %8.0f instructions/request  (N=%d: %d, 2N: %d)"
              % (name, (two - one) / n, n, one, two), flush=True)


if __name__ == "__main__":
    main()

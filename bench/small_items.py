#!/usr/bin/env python3
"""Streams of small items: what they cost in time to a client that reads,
and in memory to clients that read nothing.

    python bench/small_items.py [--items 300000] [--size 1] [--rounds 5]
                                [--stalled 1] [--seconds 5]

The app is a generator of --items items of --size bytes (chunked, no
Content-Length), each posted on its own as an SSE or CSV endpoint's are.
First one client on 127.0.0.1 reads the whole response, --rounds times:
the best time. Then --stalled clients each send one request and read
nothing for --seconds: the server's RSS growth (this process's, where the
server runs, in MB). The yimmo imported is the one on sys.path: to
compare two builds, run with PYTHONPATH=DIR for each.
"""

import argparse
import socket
import sys
import time

import yimmo


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=300000)
    ap.add_argument("--size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--stalled", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    item = b"x" * args.size
    count = {"n": args.items}

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (item for _ in range(count["n"]))

    workers = max(1, args.stalled)
    with yimmo.Server(app, bind="127.0.0.1:0", workers=workers,
                      timeout=0, write_timeout=args.seconds + 30) as srv:
        best = None
        received = 0
        for _ in range(args.rounds):
            with socket.create_connection(srv.address, timeout=60) as s:
                t0 = time.perf_counter()
                s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\n"
                          b"Connection: close\r\n\r\n")
                received = 0
                while True:
                    data = s.recv(1 << 20)
                    if not data:
                        break
                    received += len(data)
                t = time.perf_counter() - t0
            best = t if best is None else min(best, t)
        print("yimmo %s: %d items of %d B to a reading client: best %.3f s "
              "of %d (%d bytes on the wire)"
              % (yimmo.__file__, args.items, args.size, best, args.rounds,
                 received))
        # A stream that does not end while the clients read nothing.
        count["n"] = 10 ** 12
        before = rss_mb()
        stalled = []
        try:
            for _ in range(args.stalled):
                s = socket.create_connection(srv.address, timeout=10)
                s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
                stalled.append(s)
            time.sleep(args.seconds)
            grew = rss_mb() - before
        finally:
            for s in stalled:
                s.close()
        print("%d client(s) reading nothing for %g s: server RSS +%.1f MB "
              "(%.1f MB each)" % (args.stalled, args.seconds, grew,
                                  grew / max(1, args.stalled)))
        srv.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

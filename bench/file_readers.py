#!/usr/bin/env python3
"""How evenly a server shares a big file among connections whose client
reads at a given size: the matrix's 10 MB file row seen from each
connection, where wrk only reports one latency distribution.

    python bench/file_readers.py [--read-size 8192,1048576] [--duration 5]
                                 [--only yimmo,granian] [--connections 16]

For each read size and server: the server (bench.py's command, pinned to
CPU 1, serving matrix_app:file10m) sends a 10 MB file to --connections
keep-alive connections, each a thread of this process (on CPU 0) that asks
for the file again as soon as it has it, reading with recv_into of the
read size. Prints the responses, p50/p99/max latency, and how many
responses each connection got (equal counts: every connection was served
alike). wrk reads 8 KB at a time and empties one readable socket before
the next, so 8192 is the matrix's client; 1 MB a client that takes what
the kernel holds. Run it with bench.py's venv (where matrix.py installed
yimmo and the peers): bench/.venv/bin/python bench/file_readers.py
"""

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench
import matrix

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def reader(port, read_size, until, latencies, errors):
    """One connection: GET the file until `until`, append each response's
    latency in seconds to latencies."""
    buf = bytearray(read_size)
    view = memoryview(buf)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            while time.monotonic() < until:
                t0 = time.monotonic()
                s.sendall(REQUEST)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("connection closed in the head")
                    head += chunk
                head, _, rest = head.partition(b"\r\n\r\n")
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise OSError("no Content-Length")
                left = length - len(rest)
                while left > 0:
                    n = s.recv_into(view, min(left, read_size))
                    if n == 0:
                        raise OSError("connection closed in the body")
                    left -= n
                latencies.append(time.monotonic() - t0)
    except OSError as exc:
        errors.append(str(exc))


def run_once(port, args, read_size):
    """Each connection's list of latencies, and the errors."""
    until = time.monotonic() + args.duration
    per_conn = [[] for _ in range(args.connections)]
    errors = []
    threads = [threading.Thread(target=reader,
                                args=(port, read_size, until, lat, errors))
               for lat in per_conn]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + 60)
    return per_conn, errors


def report(name, read_size, per_conn, errors):
    every = sorted(x for lat in per_conn for x in lat)
    if not every:
        print("%-8s read %7d: no response (%s)" % (name, read_size,
                                                   errors[:1]))
        return

    def ms(q):
        return every[min(len(every) - 1, int(q * len(every)))] * 1000
    counts = sorted(len(lat) for lat in per_conn)
    print("%-8s read %7d: %5d responses, p50 %6.1f p99 %6.1f max %6.1f ms;"
          " per connection %d-%d%s" % (
              name, read_size, len(every), ms(0.5), ms(0.99),
              every[-1] * 1000, counts[0], counts[-1],
              ", %d errors" % len(errors) if errors else ""), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read-size", default="8192,1048576",
                        help="comma-separated read sizes in bytes")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default="yimmo,granian",
                        help="comma-separated servers (matrix.py's names)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.read_size.split(",")]
    only = args.only.split(",")
    logs = Path(tempfile.mkdtemp(prefix="yimmo-file-readers-"))
    work = Path(tempfile.mkdtemp(prefix="yimmo-file-readers-work-"))
    matrix.prepare_files(work, [])  # sets YIMMO_BENCH_FILE
    row = [r for r in matrix.ROWS if r.name == "file10m"][0]
    venv_bin = Path(sys.executable).parent
    servers = [s for s in matrix.servers_for(row, sys.executable, venv_bin,
                                             None) if s.name in only]
    # This process is the client: on the CPU bench.py gives wrk.
    if bench.can_pin():
        os.sched_setaffinity(0, {int(bench.CLIENT_CPU)})
    for read_size in sizes:
        for server in servers:
            port = bench.free_port()
            proc = bench.start(server, port, logs, None)
            try:
                if not bench.wait_ready(proc, port, 30):
                    print("%-8s did not start (logs in %s)" % (server.name,
                                                               logs))
                    continue
                run_once(port, argparse.Namespace(
                    duration=1.0, connections=args.connections), read_size)
                per_conn, errors = run_once(port, args, read_size)
                report(server.name, read_size, per_conn, errors)
            finally:
                bench.stop(proc)


if __name__ == "__main__":
    main()
